//! The Asterisk backend: AMI (TCP 5038) to originate and follow calls, and a FastAGI server (TCP
//! 4573) that the shipped dialplan hands answered voice calls to, for the prompts.
//!
//! Files: `ami` (AMI codec), `client` (one AMI connection kept up), `calls` (which events are whose
//! and what they mean), `agi` + `fastagi` (FastAGI codec and server), and here the settings and the
//! driver task that ties them to the engine's `Command`s and `CallEvent`s.
//!
//! A call goes out as `Originate` `Local/<number>@<context>` (`callcode-out` for flash calls,
//! `callcode-voice-out` for voice) with `ChannelId` = our `CallId`, the ANI as `CallerID` and
//! `VERIFICATION_ID` as a channel variable; see `dialplan/asterisk/` and `docs/asterisk.md`. Voice
//! prompts are `STREAM FILE <sounds_dir>/<language>/<stem>` on the call's FastAGI session.
//! Several Asterisk servers may serve one backend: new calls go to the connected one with the
//! fewest calls.

pub mod agi;
pub mod ami;
pub mod calls;
pub mod client;
pub mod fastagi;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use self::ami::{Action, Event, Kind, Message};
use self::calls::{Calls, ListedChannel, Out};
use self::client::{AmiServer, Report, Timers};
use self::fastagi::{AgiSession, FastAgiServer, FastAgiSettings};
use super::{Backend, BackendError, BackendEvent, CallEvent, Command, EventSender, Hangup};
use crate::call::{CallId, EndedBy, Method, Prompt};

/// Q.850 "network out of order": a call accepted while every AMI connection just went down.
const NO_SERVER_CAUSE: u16 = 38;
/// Most channels of our calls kept from one `CoreShowChannels` listing (a call has 3 to 5:
/// `;1`, `;2`, the callee, a forwarded callee): bounds what a peer repeating entries can cost.
const MAX_LISTED_CHANNELS: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsteriskSettings {
    /// The Asterisk servers (at least one), each with its AMI login.
    pub servers: Vec<AmiServer>,
    /// Dialplan context of flash calls: `Local/<number>@<flash_context>`.
    pub flash_context: String,
    /// Dialplan context of voice calls (its `Dial()` hands the answered callee to FastAGI).
    pub voice_context: String,
    /// What the originated `;1` half runs once the far end answered (`<context>,s,1`).
    pub hold_context: String,
    /// The prompts directory as Asterisk sees it; prompts play as `<sounds_dir>/<language>/<stem>`.
    pub sounds_dir: String,
    pub connect_timeout_ms: u64,
    /// Idle time before a `Ping`; three of them without any traffic drop the connection.
    pub keepalive_ms: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// Calls of a server that stays unreachable this long are reported lost.
    pub lost_after_ms: u64,
    pub fastagi: FastAgiSettings,
}

impl Default for AsteriskSettings {
    fn default() -> Self {
        AsteriskSettings {
            servers: vec![],
            flash_context: "callcode-out".into(),
            voice_context: "callcode-voice-out".into(),
            hold_context: "callcode-hold".into(),
            sounds_dir: "/var/lib/asterisk/sounds/callcode".into(),
            connect_timeout_ms: 5000,
            keepalive_ms: 10_000,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            lost_after_ms: 30_000,
            fastagi: FastAgiSettings::default(),
        }
    }
}

impl AsteriskSettings {
    /// Cross-checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: at least one Asterisk server is needed".into());
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.username.is_empty() || s.secret.is_empty() {
                return Err(format!("servers[{i}]: username and secret must be set"));
            }
            let classes: Vec<String> = s
                .events
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect();
            let has = |class: &str| classes.iter().any(|c| c == class);
            // manager.c: `on` (or any true word) and the class `all` switch every class on.
            let everything = ["on", "yes", "true", "all"].iter().any(|w| has(w));
            let enough = everything || (has("call") && has("user"));
            if !enough {
                // Without `call` there is not even an OriginateResponse; without `user` no
                // forwarding UserEvent (fixture README).
                return Err(format!(
                    "servers[{i}].events: `{}` must be `on`, `all` or include `call` and `user`",
                    s.events
                ));
            }
            if [&s.username, &s.secret, &s.events]
                .iter()
                .any(|v| v.contains(['\r', '\n']))
            {
                return Err(format!("servers[{i}]: values must be on one line"));
            }
        }
        for (key, value) in [
            ("flash_context", &self.flash_context),
            ("voice_context", &self.voice_context),
            ("hold_context", &self.hold_context),
        ] {
            let ok = !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !ok {
                return Err(format!(
                    "{key}: `{value}` is not a dialplan context name (letters, digits, - and _)"
                ));
            }
        }
        if self.sounds_dir.is_empty() || self.sounds_dir.contains(['\r', '\n', ' ', '"']) {
            return Err(format!(
                "sounds_dir: `{}` must be a path without spaces or quotes",
                self.sounds_dir
            ));
        }
        if self.keepalive_ms == 0 || self.connect_timeout_ms == 0 || self.reconnect_initial_ms == 0
        {
            return Err(
                "keepalive_ms, connect_timeout_ms and reconnect_initial_ms must be above zero"
                    .into(),
            );
        }
        Ok(())
    }

    /// How long after our hang-up request a call whose end Asterisk never reported is kept (the
    /// engine closed it as unconfirmed long before; this only keeps the tables bounded). Until
    /// then a reconnect may still resend the hang-up, so: the call's own Originate `Timeout`
    /// (Asterisk's limit on its ringing) or `lost_after_ms` (how long a server may stay away
    /// before its calls are lost), whichever is longer.
    fn forget_unconfirmed_after(&self, pbx_timeout: Duration) -> Duration {
        pbx_timeout.max(Duration::from_millis(self.lost_after_ms))
    }

    fn timers(&self) -> Timers {
        Timers {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            keepalive: Duration::from_millis(self.keepalive_ms),
            reconnect_initial: Duration::from_millis(self.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        }
    }

    /// The file `STREAM FILE` gets for a prompt (Asterisk adds the extension itself).
    pub fn prompt_file(&self, language: &str, prompt: Prompt) -> String {
        format!(
            "{}/{}/{}",
            self.sounds_dir.trim_end_matches('/'),
            language,
            prompt.file_stem()
        )
    }
}

/// Everything the driver task hears.
enum Input {
    Command(Command),
    Ami(Report),
    Agi(Box<AgiSession>),
    /// A server stayed down since its `down` count was `epoch`.
    GiveUp {
        server: usize,
        epoch: u64,
    },
    /// The hang-up of this call was asked long ago.
    Forget(CallId),
    Close,
}

pub struct Asterisk {
    name: String,
    input: mpsc::UnboundedSender<Input>,
    connected: Vec<Arc<AtomicBool>>,
    /// The driver and the AMI connections, awaited at close.
    tasks: TaskTracker,
}

impl Asterisk {
    /// Binds the FastAGI listener, starts one AMI connection per server and the driver.
    pub async fn start(
        name: &str,
        settings: AsteriskSettings,
        events: EventSender,
    ) -> std::io::Result<Asterisk> {
        let (input, rx) = mpsc::unbounded_channel();
        let (sessions_tx, mut sessions) = mpsc::channel::<AgiSession>(256);
        let fastagi = FastAgiServer::bind(settings.fastagi, sessions_tx).await?;
        info!(backend = name, fastagi = %fastagi.local_addr(), "FastAGI listening");
        let to_driver = input.clone();
        tokio::spawn(async move {
            while let Some(s) = sessions.recv().await {
                if to_driver.send(Input::Agi(Box::new(s))).is_err() {
                    break;
                }
            }
        });

        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (reports_tx, reports) = mpsc::channel::<Report>(4096);
        let mut connected = vec![];
        for (i, server) in settings.servers.iter().enumerate() {
            let flag = Arc::new(AtomicBool::new(false));
            connected.push(flag.clone());
            tasks.spawn(client::run(
                i,
                server.clone(),
                settings.timers(),
                reports_tx.clone(),
                flag,
                stop.clone(),
            ));
        }
        drop(reports_tx);

        let driver = Driver {
            servers: settings
                .servers
                .iter()
                .map(|_| ServerState::default())
                .collect(),
            settings,
            events,
            input: input.clone(),
            calls: Calls::new(),
            live: HashMap::new(),
            fastagi,
            stop,
        };
        tasks.spawn(driver.run(rx, reports));
        Ok(Asterisk {
            name: name.to_string(),
            input,
            connected,
            tasks,
        })
    }
}

impl Backend for Asterisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn submit(&self, command: Command) -> Result<(), BackendError> {
        if matches!(command, Command::Originate(_)) && !self.is_available() {
            return Err(BackendError::Unavailable(self.name.clone()));
        }
        self.input
            .send(Input::Command(command))
            .map_err(|_| BackendError::Unavailable(self.name.clone()))
    }

    fn is_available(&self) -> bool {
        !self.input.is_closed() && self.connected.iter().any(|c| c.load(Ordering::SeqCst))
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let _ = self.input.send(Input::Close);
        let tasks = self.tasks.clone();
        tasks.close();
        Box::pin(async move { tasks.wait().await })
    }
}

#[derive(Default)]
struct ServerState {
    writer: Option<mpsc::UnboundedSender<Bytes>>,
    /// Times the connection went down; a give-up timer only acts if none came since.
    downs: u64,
    /// The `CoreShowChannels` in flight after a reconnect and the channels it listed so far.
    listing: Option<(String, Vec<ListedChannel>)>,
}

/// Per-call state the driver keeps beside `Calls`: what the prompts need.
struct Live {
    language: Arc<str>,
    /// The call's FastAGI session task, once Asterisk connected.
    agi: Option<mpsc::UnboundedSender<AgiOp>>,
    /// Prompts asked for before the FastAGI session arrived.
    waiting: Vec<(u16, Prompt)>,
    /// The Originate `Timeout` the call was placed with.
    pbx_timeout: Duration,
}

enum AgiOp {
    Play { seq: u16, file: String },
    Hangup,
}

struct Driver {
    settings: AsteriskSettings,
    servers: Vec<ServerState>,
    events: EventSender,
    input: mpsc::UnboundedSender<Input>,
    calls: Calls,
    live: HashMap<CallId, Live>,
    fastagi: FastAgiServer,
    stop: CancellationToken,
}

impl Driver {
    /// AMI reports are read straight from their bounded channel, never copied into the unbounded
    /// one: when the driver falls behind, the AMI connections stop reading their sockets instead
    /// of queueing whatever Asterisk sends.
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Input>,
        mut reports: mpsc::Receiver<Report>,
    ) {
        let mut reports_open = true;
        loop {
            let input = tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => input,
                    None => break,
                },
                report = reports.recv(), if reports_open => match report {
                    Some(report) => Input::Ami(report),
                    None => {
                        reports_open = false;
                        continue;
                    }
                },
            };
            let mut out = vec![];
            match input {
                Input::Command(c) => self.command(c, &mut out),
                Input::Ami(Report::Up { server, writer }) => self.up(server, writer),
                Input::Ami(Report::Message { server, message }) => {
                    self.message(server, &message, &mut out)
                }
                Input::Ami(Report::Down { server }) => self.down(server),
                Input::GiveUp { server, epoch } => {
                    if self.servers[server].downs == epoch && self.servers[server].writer.is_none()
                    {
                        warn!(server, "Asterisk unreachable; its calls are lost");
                        self.calls.server_gone(server, &mut out);
                    }
                }
                Input::Agi(session) => self.agi(*session, &mut out),
                Input::Forget(call) => {
                    if self.calls.contains(call) {
                        warn!(%call, "Asterisk never confirmed the hang-up; forgetting the call");
                        self.calls.forget(call);
                        self.live.remove(&call);
                    }
                }
                Input::Close => {
                    self.stop.cancel();
                    self.fastagi.shutdown(Duration::from_secs(1)).await;
                    return;
                }
            }
            self.flush(out).await;
        }
    }

    async fn flush(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Event(e) => {
                    if matches!(e.event, CallEvent::Hangup(_) | CallEvent::Lost) {
                        // Dropping the session's sender ends its task after the current prompt.
                        self.live.remove(&e.call);
                    }
                    let _ = self.events.send(e).await;
                }
                Out::Hangup {
                    server,
                    call,
                    cause,
                } => {
                    self.send(
                        server,
                        &format!("hangup-{call}"),
                        Action::Hangup {
                            channel: &call.to_string(),
                            cause,
                        },
                    );
                }
            }
        }
    }

    fn send(&self, server: usize, action_id: &str, action: Action<'_>) -> bool {
        let Some(writer) = self.servers.get(server).and_then(|s| s.writer.as_ref()) else {
            return false;
        };
        let mut buf = BytesMut::new();
        if let Err(e) = action.encode(action_id, &mut buf) {
            warn!(error = %e, action = action.name(), "action not sent");
            return false;
        }
        writer.send(buf.freeze()).is_ok()
    }

    fn command(&mut self, command: Command, out: &mut Vec<Out>) {
        match command {
            Command::Release { call } => {
                // ChannelId made the call's `;1` half carry our call id as its Uniqueid; hanging
                // it up ends `;2` and the callee with it. Which server had it is not known after a
                // restart, so every connected one is asked (`No such channel` elsewhere).
                let channel = call.to_string();
                for server in 0..self.servers.len() {
                    self.send(
                        server,
                        &format!("release-{call}"),
                        Action::Hangup {
                            channel: &channel,
                            cause: crate::call::machine::DROP_CAUSE,
                        },
                    );
                }
            }
            Command::Originate(o) => {
                let server = (0..self.servers.len())
                    .filter(|&i| self.servers[i].writer.is_some())
                    .min_by_key(|&i| self.calls.on_server(i));
                let Some(server) = server else {
                    out.push(Out::Event(BackendEvent {
                        call: o.call,
                        event: CallEvent::Hangup(Hangup {
                            q850: NO_SERVER_CAUSE,
                            sip_status: None,
                            ended_by: EndedBy::Local,
                        }),
                    }));
                    return;
                };
                let context = match o.method {
                    Method::Flash => &self.settings.flash_context,
                    Method::Voice => &self.settings.voice_context,
                };
                let channel = format!("Local/{}@{}", o.destination, context);
                let channel_id = o.call.to_string();
                let other = Calls::other_channel_id(o.call);
                let vid = o.verification_id.to_string();
                let vars = [("VERIFICATION_ID", vid.as_str())];
                let action = Action::Originate(ami::Originate {
                    channel: &channel,
                    context: &self.settings.hold_context,
                    exten: "s",
                    priority: 1,
                    caller_id: &o.ani.to_string(),
                    timeout_ms: o.pbx_timeout.as_millis() as u64,
                    channel_id: &channel_id,
                    other_channel_id: Some(&other),
                    variables: &vars,
                });
                self.calls.originated(o.call, o.verification_id, server);
                self.live.insert(
                    o.call,
                    Live {
                        language: o.language.clone(),
                        agi: None,
                        waiting: vec![],
                        pbx_timeout: o.pbx_timeout,
                    },
                );
                debug!(call = %o.call, server, %channel, "originate");
                if !self.send(server, &format!("orig-{}", o.call), action) {
                    self.calls.originate_refused(o.call, out);
                }
            }
            Command::Play { call, seq, prompt } => {
                let Some(live) = self.live.get_mut(&call) else {
                    return;
                };
                match &live.agi {
                    Some(agi) => {
                        let file = self.settings.prompt_file(&live.language, prompt);
                        let _ = agi.send(AgiOp::Play { seq, file });
                    }
                    None => live.waiting.push((seq, prompt)),
                }
            }
            Command::Hangup { call, q850 } => {
                if let Some(live) = self.live.get(&call) {
                    let after = self.settings.forget_unconfirmed_after(live.pbx_timeout);
                    let input = self.input.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = input.send(Input::Forget(call));
                    });
                }
                if let Some(agi) = self.live.get(&call).and_then(|l| l.agi.as_ref()) {
                    // The answered callee is in our FastAGI session: hang up through it; the AMI
                    // Hangup events that follow end the call.
                    if agi.send(AgiOp::Hangup).is_ok() {
                        self.calls.hangup_asked(call, q850);
                        return;
                    }
                }
                if self.calls.hangup_asked(call, q850) {
                    if let Some(server) = self.calls.server_of(call) {
                        out.push(Out::Hangup {
                            server,
                            call,
                            cause: q850,
                        });
                    }
                }
            }
        }
    }

    fn up(&mut self, server: usize, writer: mpsc::UnboundedSender<Bytes>) {
        let Some(state) = self.servers.get_mut(server) else {
            return;
        };
        state.writer = Some(writer);
        let action_id = format!("csc-{server}-{}", state.downs);
        state.listing = Some((action_id.clone(), vec![]));
        self.send(server, &action_id, Action::CoreShowChannels);
    }

    fn down(&mut self, server: usize) {
        let Some(state) = self.servers.get_mut(server) else {
            return;
        };
        state.writer = None;
        state.listing = None;
        state.downs += 1;
        let (epoch, input) = (state.downs, self.input.clone());
        let after = Duration::from_millis(self.settings.lost_after_ms);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = input.send(Input::GiveUp { server, epoch });
        });
    }

    fn message(&mut self, server: usize, m: &Message, out: &mut Vec<Out>) {
        if let Kind::Response(r) = m.kind() {
            let failed = !r.eq_ignore_ascii_case("Success");
            match m.action_id().and_then(|a| a.split_once('-')) {
                Some(("orig", id)) if failed => {
                    if let Ok(call) = id.parse::<CallId>() {
                        warn!(%call, reason = m.get("Message").unwrap_or(""), "Originate refused");
                        self.calls.originate_refused(call, out);
                    }
                }
                Some(("hangup", id)) if failed => {
                    debug!(
                        call = id,
                        reason = m.get("Message").unwrap_or(""),
                        "Hangup refused"
                    );
                }
                Some(("csc", _)) if failed => {
                    warn!(server, "CoreShowChannels refused; calls stay as they are");
                    self.servers[server].listing = None;
                }
                _ => {}
            }
            return;
        }
        match m.event() {
            Event::CoreShowChannel { action_id, chan } => {
                let ours = self.calls.listed(server, &chan);
                if let Some((id, list)) = self.servers[server].listing.as_mut() {
                    if action_id == Some(id.as_str()) && list.len() < MAX_LISTED_CHANNELS {
                        list.extend(ours);
                    }
                }
            }
            Event::CoreShowChannelsComplete { action_id, .. } => {
                let matches = self.servers[server]
                    .listing
                    .as_ref()
                    .is_some_and(|(id, _)| action_id == Some(id.as_str()));
                if matches {
                    if let Some((_, list)) = self.servers[server].listing.take() {
                        debug!(server, channels = list.len(), "reconciling after connect");
                        self.calls.reconcile(server, &list, out);
                        for (call, cause) in self.calls.hangups_to_resend(server) {
                            out.push(Out::Hangup {
                                server,
                                call,
                                cause,
                            });
                        }
                    }
                }
            }
            _ => self.calls.on_message(server, m, out),
        }
    }

    fn agi(&mut self, mut session: AgiSession, out: &mut Vec<Out>) {
        let vid = session
            .env
            .arg(1)
            .and_then(|a| a.trim().parse::<i64>().ok());
        let call = vid.and_then(|v| self.calls.agi_arrived(v, out));
        let Some(call) = call.filter(|c| self.live.contains_key(c)) else {
            warn!(
                arg = session.env.arg(1).unwrap_or(""),
                channel = session.env.get("channel").unwrap_or(""),
                "FastAGI session for no live call; hanging it up"
            );
            tokio::spawn(async move {
                let _ = session.hangup().await;
            });
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(live) = self.live.get_mut(&call) {
            for (seq, prompt) in live.waiting.drain(..) {
                let file = self.settings.prompt_file(&live.language, prompt);
                let _ = tx.send(AgiOp::Play { seq, file });
            }
            live.agi = Some(tx);
        }
        tokio::spawn(agi_session(call, session, rx, self.events.clone()));
    }
}

/// Runs the prompts of one call on its FastAGI session, in order.
async fn agi_session(
    call: CallId,
    mut session: AgiSession,
    mut ops: mpsc::UnboundedReceiver<AgiOp>,
    events: EventSender,
) {
    while let Some(op) = ops.recv().await {
        match op {
            AgiOp::Play { seq, file } => match session.stream_file(&file).await {
                Ok(_) => {
                    let done = BackendEvent {
                        call,
                        event: CallEvent::PromptDone { seq },
                    };
                    if events.send(done).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The callee hung up mid-prompt: AMI's Hangup event reports how it ended.
                    debug!(%call, seq, error = %e, "prompt cut short");
                    return;
                }
            },
            AgiOp::Hangup => {
                if let Err(e) = session.hangup().await {
                    debug!(%call, error = %e, "AGI hang-up");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfirmed_call_is_kept_for_its_own_timeout_or_the_lost_window() {
        let settings = AsteriskSettings {
            lost_after_ms: 30_000,
            ..AsteriskSettings::default()
        };
        // A long Originate Timeout: Asterisk may still ring the call that long.
        assert_eq!(
            settings.forget_unconfirmed_after(Duration::from_secs(45)),
            Duration::from_secs(45)
        );
        // A short one: a reconnect within lost_after_ms may still resend the hang-up.
        assert_eq!(
            settings.forget_unconfirmed_after(Duration::from_secs(7)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_login_that_would_receive_no_originate_response_is_refused() {
        let server = |events: &str| AmiServer {
            address: "127.0.0.1:5038".parse().unwrap(),
            username: "callcode".into(),
            secret: "s".into(),
            auth: client::AuthMethod::Md5,
            events: events.into(),
        };
        let with = |events: &str| AsteriskSettings {
            servers: vec![server(events)],
            ..AsteriskSettings::default()
        };
        // `Events: off` gets no OriginateResponse at all (ami-login-events-off); `call` alone
        // misses the forwarding UserEvent (class `user`).
        for refused in ["off", "no", "call", "user", "system,user", "call,\r\nuser"] {
            let err = with(refused).validate().unwrap_err();
            assert!(err.contains("servers[0]"), "{refused:?}: {err}");
        }
        for accepted in [
            "on",
            "ON",
            "all",
            "yes",
            "call,user",
            "user, call",
            "call,user,dialplan",
        ] {
            assert_eq!(with(accepted).validate(), Ok(()), "{accepted:?}");
        }
    }
}
