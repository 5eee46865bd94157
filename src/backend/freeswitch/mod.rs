//! The FreeSWITCH backend: calls placed through the event socket (ESL).
//!
//! Sans-IO parts: `codec` (framing), `event` (messages), `command` (what we send), `calls` (events
//! → `CallEvent`s), `cause` (cause names → codes). Thin tokio drivers: `client` (one inbound
//! connection per configured server) and `outbound` (listener for the `socket` application).

pub mod calls;
pub mod cause;
pub mod codec;
pub mod command;
pub mod event;
