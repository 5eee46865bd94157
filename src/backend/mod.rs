//! The boundary between the engine and a PBX family: the `Backend` trait, the commands the engine
//! sends, and the `CallEvent`s every backend reports back.
//!
//! The types are shaped by what real PBXs say (see `tests/fixtures/` and the fixture READMEs):
//! - progress comes as ringing (180) or early media (183), and early media may precede a failure;
//! - forwarding shows as a 181, a followed 302, a Diversion/History-Info header, or an Asterisk
//!   `UserEvent` from the shipped dialplan, so it is one event with an optional target;
//! - a failure can arrive with no channel events at all (FreeSWITCH `-ERR GATEWAY_DOWN` in a
//!   BACKGROUND_JOB, Asterisk `OriginateResponse` Reason 0): it is still a `Hangup`, with
//!   `EndedBy::Local`;
//! - our own cancel is reported with a normal-clearing cause by both PBXs, so who ended the call is
//!   a field of its own, never inferred from the cause.
//!
//! A backend never decides outcomes, bills, or speaks HTTP; it turns commands into protocol and
//! protocol into events.

pub mod asterisk;
pub mod backoff;
pub mod freeswitch;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::call::{CallId, EndedBy, Method, Msisdn, Prompt};

/// What happened on a call, as a backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEvent {
    /// The far end is alerting (180) or sent early media (183 with SDP).
    Progress { early_media: bool },
    /// The call is being forwarded; `to` is the new target when the PBX told us.
    Forwarded { to: Option<Msisdn> },
    /// The far end answered.
    Answered,
    /// The prompt the engine asked for with this sequence number finished (or was cut short).
    PromptDone { seq: u16 },
    /// The call is over.
    Hangup(Hangup),
    /// The backend lost track of the call: its PBX connection was cut and, after reconnecting, the
    /// channel no longer exists (or the PBX cannot be reached again). How it ended is unknown, so
    /// the call is closed as interrupted unless the code was already delivered.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hangup {
    /// Q.850 cause as the PBX reports it (values above 127 are PBX-specific and mean "unreachable").
    pub q850: u16,
    /// The SIP final response that ended the call, when there was one.
    pub sip_status: Option<u16>,
    pub ended_by: EndedBy,
}

/// An event tagged with its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEvent {
    pub call: CallId,
    pub event: CallEvent,
}

/// Where a backend reports events. Bounded: a backend that outruns the engine waits.
pub type EventSender = mpsc::Sender<BackendEvent>;

/// Everything a backend needs to place one call.
#[derive(Debug, Clone)]
pub struct Originate {
    pub call: CallId,
    /// Our verification id, set as a channel variable so the PBX side can be correlated.
    pub verification_id: i64,
    pub destination: Msisdn,
    pub ani: Msisdn,
    pub method: Method,
    /// Language directory of the prompts for this call.
    pub language: Arc<str>,
    /// The PBX's own give-up timer; the machine normally drops the call earlier.
    pub pbx_timeout: Duration,
}

/// What the engine asks a backend to do. Results come back as `CallEvent`s, never as return values,
/// so the engine loop never waits on a PBX.
#[derive(Debug, Clone)]
pub enum Command {
    Originate(Originate),
    Play {
        call: CallId,
        seq: u16,
        prompt: Prompt,
    },
    Hangup {
        call: CallId,
        q850: u16,
    },
    /// A call of a previous run that callcode no longer follows (it crashed mid-call): hang its
    /// channel up if a PBX still has it, on every server, and report nothing back.
    Release {
        call: CallId,
    },
}

impl Command {
    pub fn call(&self) -> CallId {
        match self {
            Command::Originate(o) => o.call,
            Command::Play { call, .. }
            | Command::Hangup { call, .. }
            | Command::Release { call } => *call,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("backend {0} is not connected")]
    Unavailable(String),
    #[error("backend {0} is overloaded")]
    Overloaded(String),
}

/// A PBX family's driver. `submit` must not block: it queues the command for the driver's own task.
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn submit(&self, command: Command) -> Result<(), BackendError>;
    /// False while the PBX connection is down; the engine then places no calls here.
    fn is_available(&self) -> bool;
    /// Stops the backend's listeners and connections once the engine has finished every call
    /// (shutdown); the future completes when they are closed (PBX sessions logged off). Calls
    /// still open on the PBX side are not touched: the engine has ended them.
    fn close(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}
