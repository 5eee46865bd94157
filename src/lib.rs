//! callcode: a self-hosted phone-verification engine.
//!
//! Data flows one way: `api` → `engine` → `backend`; backend events flow back into the engine, which
//! feeds each call's pure `call::machine` and executes the actions it returns. See `DESIGN.md`.

pub mod api;
pub mod backend;
pub mod call;
pub mod config;
pub mod engine;
pub mod pool;
pub mod server;
pub mod sounds;
pub mod store;
pub mod webhook;
