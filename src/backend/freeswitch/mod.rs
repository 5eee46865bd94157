//! The FreeSWITCH backend: calls placed through the event socket (ESL).
//!
//! Sans-IO parts: `codec` (framing), `event` (messages), `command` (what we send), `calls` (events
//! → `CallEvent`s), `cause` (cause names → codes). Thin tokio drivers: `client` (one inbound
//! connection per configured server) and `outbound` (listener for the `socket` application).
//!
//! Calls are spread over the connected servers (fewest calls in flight first); a call stays with
//! the server that placed it. Nothing here decides outcomes.

pub mod calls;
pub mod cause;
pub mod client;
pub mod codec;
pub mod command;
pub mod event;
pub mod outbound;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Backend, BackendError, Command, EventSender};
use crate::call::CallId;

/// `[backends.settings]` of a `kind = "freeswitch"` backend. Every key and default is described
/// in docs/configuration.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeswitchSettings {
    /// The event sockets to place calls through (at least one).
    pub servers: Vec<ServerSettings>,
    /// Dial string with `{number}` for the destination, e.g. `sofia/gateway/carrier/{number}`.
    pub endpoint: String,
    /// The prompts directory as FreeSWITCH sees it: `<sounds_dir>/<language>/<prompt>.wav`.
    pub sounds_dir: String,
    /// Who plays the prompts of an answered call: `park` (over the inbound connection) or
    /// `socket` (FreeSWITCH hands the call to callcode's outbound listener).
    #[serde(default)]
    pub answered_calls: AnsweredCallsSetting,
    /// Where callcode listens for FreeSWITCH's `socket` application (`answered_calls = "socket"`).
    #[serde(default = "default_outbound_listen")]
    pub outbound_listen: SocketAddr,
    /// The address FreeSWITCH connects to for the `socket` application; `outbound_listen` when
    /// absent (set it when callcode listens on 0.0.0.0 or behind NAT).
    #[serde(default)]
    pub outbound_address: Option<String>,
    /// Outbound sessions open at once; further connections are closed at once.
    #[serde(default = "default_outbound_max")]
    pub outbound_max_sessions: usize,
    /// `ignore_early_media=true` on every originate, so the job result reports the final answer
    /// (fixture -61-/-62-). Progress with early media is reported either way.
    #[serde(default = "default_true")]
    pub ignore_early_media: bool,
    /// Extra channel variables for every originate, `name=value` (no commas or braces).
    #[serde(default)]
    pub originate_variables: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Idle connections are probed with `api status` this often.
    #[serde(default = "default_ping")]
    pub ping_interval_ms: u64,
    /// A connection that has said nothing for this long is dropped and reconnected.
    #[serde(default = "default_liveness")]
    pub liveness_timeout_ms: u64,
    /// Calls of a server that stays unreachable this long are closed as lost.
    #[serde(default = "default_lost_after")]
    pub lost_after_ms: u64,
    /// Messages buffered between the socket reader and the call logic; beyond it the overflow
    /// policy of `client::pump` applies (non-essential messages dropped and counted, essential
    /// ones held in a backlog of the same size).
    #[serde(default = "default_queue")]
    pub event_queue: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// `host:port` of mod_event_socket.
    pub address: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnsweredCallsSetting {
    #[default]
    Park,
    Socket,
}

fn default_outbound_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8084))
}
fn default_outbound_max() -> usize {
    1024
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> u64 {
    5000
}
fn default_reconnect_initial() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_ping() -> u64 {
    10_000
}
fn default_liveness() -> u64 {
    30_000
}
fn default_lost_after() -> u64 {
    30_000
}
fn default_queue() -> usize {
    16_384
}

impl FreeswitchSettings {
    /// Checks what serde cannot: run by `check-config` and at start.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: at least one FreeSWITCH server is needed".into());
        }
        if !self.endpoint.contains("{number}") {
            return Err(format!(
                "endpoint: `{}` has no {{number}} placeholder",
                self.endpoint
            ));
        }
        let bad = |s: &str| s.contains(['\n', '\r', ' ', '{', '}', ',', '\'']);
        if bad(&self.endpoint.replace("{number}", ""))
            || self.sounds_dir.is_empty()
            || bad(&self.sounds_dir)
        {
            return Err("endpoint and sounds_dir may not contain spaces, quotes, commas, braces or line breaks".into());
        }
        for v in &self.originate_variables {
            if !v.contains('=') || bad(v) {
                return Err(format!(
                    "originate_variables: `{v}` is not name=value without spaces, commas or braces"
                ));
            }
        }
        for s in &self.servers {
            if s.address
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!("servers: address `{}` is not host:port", s.address));
            }
            if s.password.contains(['\n', '\r']) {
                return Err("servers: a password may not contain line breaks".into());
            }
        }
        if self.event_queue == 0 || self.outbound_max_sessions == 0 {
            return Err("event_queue and outbound_max_sessions must be above zero".into());
        }
        Ok(())
    }

    pub(crate) fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// One configured server as the backend sees it.
pub(crate) struct ServerLink {
    pub address: String,
    pub connected: AtomicBool,
    pub in_flight: AtomicUsize,
    pub commands: mpsc::UnboundedSender<Command>,
}

/// State shared by the drivers of one backend.
pub(crate) struct Shared {
    pub name: String,
    pub events: EventSender,
    /// Which server placed each call in flight.
    pub owners: Mutex<HashMap<CallId, usize>>,
    /// Outbound sessions by call, when `answered_calls = "socket"`.
    pub sessions: outbound::Sessions,
    pub stop: CancellationToken,
    /// The long-lived tasks (connections, outbound listener), awaited at close.
    pub tasks: TaskTracker,
}

impl Shared {
    pub fn forget(&self, call: CallId) {
        if let Ok(mut o) = self.owners.lock() {
            o.remove(&call);
        }
    }
}

pub struct FreeSwitch {
    shared: Arc<Shared>,
    servers: Vec<Arc<ServerLink>>,
    outbound_addr: Option<SocketAddr>,
}

impl FreeSwitch {
    /// Starts one connection driver per server (and the outbound listener in socket mode).
    /// Returns once the listener is bound; connections come up in the background.
    pub async fn start(
        name: &str,
        settings: FreeswitchSettings,
        events: EventSender,
    ) -> Result<Arc<FreeSwitch>, String> {
        settings.validate()?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            events,
            owners: Mutex::new(HashMap::new()),
            sessions: outbound::Sessions::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let mut outbound_addr = None;
        let mut socket_target = None;
        if settings.answered_calls == AnsweredCallsSetting::Socket {
            let bound = outbound::listen(&settings, shared.clone()).await?;
            outbound_addr = Some(bound);
            socket_target = Some(
                settings
                    .outbound_address
                    .clone()
                    .unwrap_or_else(|| bound.to_string()),
            );
        }
        let settings = Arc::new(settings);
        let mut servers = Vec::new();
        for (index, s) in settings.servers.iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let link = Arc::new(ServerLink {
                address: s.address.clone(),
                connected: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                commands: tx,
            });
            shared.tasks.spawn(client::run(client::Driver::new(
                index,
                link.clone(),
                s.password.clone(),
                settings.clone(),
                socket_target.clone(),
                shared.clone(),
                rx,
            )));
            servers.push(link);
        }
        Ok(Arc::new(FreeSwitch {
            shared,
            servers,
            outbound_addr,
        }))
    }

    /// The bound outbound listener (socket mode).
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound_addr
    }

    fn owner(&self, call: CallId) -> Option<usize> {
        self.shared.owners.lock().ok()?.get(&call).copied()
    }
}

impl Backend for FreeSwitch {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn submit(&self, command: Command) -> Result<(), BackendError> {
        let unavailable = || BackendError::Unavailable(self.shared.name.clone());
        let index = match &command {
            Command::Release { .. } => {
                // Which server had the call is not known after a restart: ask every connected one.
                let mut sent = false;
                for s in self.servers.iter() {
                    if s.connected.load(Ordering::Acquire) {
                        sent |= s.commands.send(command.clone()).is_ok();
                    }
                }
                return if sent { Ok(()) } else { Err(unavailable()) };
            }
            Command::Originate(o) => {
                let index = self
                    .servers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.connected.load(Ordering::Acquire))
                    .min_by_key(|(_, s)| s.in_flight.load(Ordering::Relaxed))
                    .map(|(i, _)| i)
                    .ok_or_else(unavailable)?;
                self.shared
                    .owners
                    .lock()
                    .map_err(|_| unavailable())?
                    .insert(o.call, index);
                // Counted here, not by the driver, so calls submitted back to back spread out.
                if let Some(s) = self.servers.get(index) {
                    s.in_flight.fetch_add(1, Ordering::Relaxed);
                }
                index
            }
            Command::Play { call, .. } | Command::Hangup { call, .. } => {
                match self.owner(*call) {
                    Some(i) => i,
                    // The call is already over on our side; nothing to do.
                    None => return Ok(()),
                }
            }
        };
        let server = self.servers.get(index).ok_or_else(unavailable)?;
        server.commands.send(command).map_err(|_| unavailable())
    }

    fn is_available(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.connected.load(Ordering::Acquire))
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.shared.stop.cancel();
        let tasks = self.shared.tasks.clone();
        tasks.close();
        Box::pin(async move { tasks.wait().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Result<FreeswitchSettings, String> {
        let text = format!(
            "endpoint = \"sofia/gateway/carrier/{{number}}\"\nsounds_dir = \"/usr/share/callcode\"\n{extra}\n[[servers]]\naddress = \"127.0.0.1:8021\"\npassword = \"pw\"\n"
        );
        let s: FreeswitchSettings = toml::from_str(&text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let c = crate::config::Config::parse(include_str!("../../../examples/freeswitch.toml"))
            .unwrap();
        let b = &c.backends[0];
        assert_eq!(b.kind, crate::config::BackendKind::Freeswitch);
        let s: FreeswitchSettings = b.settings.clone().try_into().unwrap();
        s.validate().unwrap();
        assert_eq!(s.servers[0].address, "127.0.0.1:8021");
        assert_eq!(c.route_for("RU").unwrap().backend.get_ref(), "fs");
    }

    /// The files an admin drops into FreeSWITCH unmodified agree with the shipped example
    /// config and the defaults: same event socket and password, same gateway, same listener.
    #[test]
    fn the_shipped_dialplan_files_match_the_example_config() {
        let value = |xml: &str, name: &str| {
            let at = xml.find(&format!("name=\"{name}\" value=\"")).unwrap();
            let rest = &xml[at + name.len() + 15..];
            rest[..rest.find('"').unwrap()].to_string()
        };
        let c = crate::config::Config::parse(include_str!("../../../examples/freeswitch.toml"))
            .unwrap();
        let s: FreeswitchSettings = c.backends[0].settings.clone().try_into().unwrap();
        let esl = include_str!("../../../dialplan/freeswitch/event_socket.conf.xml");
        assert_eq!(
            format!("{}:{}", value(esl, "listen-ip"), value(esl, "listen-port")),
            s.servers[0].address
        );
        assert_eq!(value(esl, "password"), s.servers[0].password);
        let gateway = include_str!("../../../dialplan/freeswitch/gateway-carrier.xml");
        let name = gateway.split("<gateway name=\"").nth(1).unwrap();
        let name = &name[..name.find('"').unwrap()];
        assert_eq!(s.endpoint, format!("sofia/gateway/{name}/{{number}}"));
        let socket = include_str!("../../../dialplan/freeswitch/callcode-socket.xml");
        assert!(socket.contains(&format!(
            "application=\"socket\" data=\"{} async full\"",
            default_outbound_listen()
        )));
    }

    #[test]
    fn defaults_and_checks() {
        let s = settings("").unwrap();
        assert_eq!(s.answered_calls, AnsweredCallsSetting::Park);
        assert!(s.ignore_early_media);
        assert_eq!(s.outbound_listen.port(), 8084);
        assert!(settings("answered_calls = \"socket\"").is_ok());
        assert!(settings("answered_calls = \"bridge\"").is_err());
        assert!(settings("endpnt = \"x\"").unwrap_err().contains("endpnt"));
        assert!(settings("originate_variables = [\"a=b,c=d\"]").is_err());
        let no_number: FreeswitchSettings = toml::from_str(
            "endpoint = \"sofia/gateway/x\"\nsounds_dir = \"/s\"\n[[servers]]\naddress = \"h:1\"\npassword = \"p\"",
        )
        .unwrap();
        assert!(no_number.validate().unwrap_err().contains("{number}"));
    }
}
