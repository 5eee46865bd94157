//! The inbound ESL connection to one FreeSWITCH server: a thin tokio driver around `codec`,
//! `command` and `calls::Tracker`.
//!
//! - Connects, answers `auth/request` with the password, subscribes to exactly the events the
//!   tracker reads (plain format: the zero-copy path).
//! - A reader task drains the socket all the time (FreeSWITCH drops listeners that fall far
//!   behind) into a bounded queue. When the queue is full, non-essential messages are dropped
//!   and counted in `callcode_freeswitch_messages_dropped_total`; replies, answers, call ends,
//!   job results and forwarding wait in a held backlog of the same size, and past that the
//!   connection is reset and its calls reconciled (`pump`).
//! - Replies (`command/reply`, `api/response`) come back in command order, so what each one
//!   answers is kept in a FIFO.
//! - Liveness: an idle connection is probed with `api status`; silence past the liveness timeout
//!   drops it. Reconnects use `Backoff` (exponential, jittered); after reconnecting, every call in
//!   flight is checked with `uuid_exists` and the ones that are gone are reported `Lost`.
//!
//! It must not decide outcomes or block the engine: commands come in over an unbounded channel and
//! results go out as `CallEvent`s.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use super::calls::{AnsweredCalls, HangupHow, Tracker};
use super::codec::{EslCodec, Limits};
use super::command::Command as Esl;
use super::event::Message;
use super::{FreeswitchSettings, ServerLink, Shared};
use crate::backend::backoff::Backoff;
use crate::backend::{BackendEvent, CallEvent, Command, Hangup, Originate};
use crate::call::{CallId, EndedBy, Prompt};

/// The events the tracker reads. HEARTBEAT keeps an idle connection visibly alive.
pub const SUBSCRIBED: &[&str] = &[
    "CHANNEL_CREATE",
    "CHANNEL_PROGRESS",
    "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_ANSWER",
    "CHANNEL_EXECUTE_COMPLETE",
    "CHANNEL_HANGUP_COMPLETE",
    "BACKGROUND_JOB",
    "HEARTBEAT",
    "CUSTOM",
    "sofia::notify_watched_header",
];

/// Headers FreeSWITCH reports for forwarding once they are watched (fixture -53-, -54-).
const WATCHED_HEADERS: &str = "^^:Diversion:History-Info:Contact";

/// Q.850 38, network out of order: a call submitted while its server was down.
const SERVER_DOWN_CAUSE: u16 = 38;

/// What a reply in the FIFO answers.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Originate(CallId),
    Kill(CallId),
    HangupMsg(CallId),
    Play,
    Exists(CallId),
    Status,
    /// `uuid_kill` of a call from before a restart; whatever the answer, nothing follows.
    Release,
}

pub(crate) struct Driver {
    index: usize,
    link: Arc<ServerLink>,
    password: String,
    settings: Arc<FreeswitchSettings>,
    /// `host:port` for `'&socket(... async full)'` in socket mode.
    socket_target: Option<String>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    tracker: Tracker,
    backoff: Backoff,
    deferred_hangups: Vec<(CallId, u16)>,
}

type Io = std::io::Result<()>;

/// The read half of a connection, framed.
type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, EslCodec>;

impl Driver {
    pub(crate) fn new(
        index: usize,
        link: Arc<ServerLink>,
        password: String,
        settings: Arc<FreeswitchSettings>,
        socket_target: Option<String>,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Driver {
        let backoff = Backoff::new(
            FreeswitchSettings::ms(settings.reconnect_initial_ms),
            FreeswitchSettings::ms(settings.reconnect_max_ms),
        );
        let mode = if socket_target.is_some() {
            AnsweredCalls::Socket
        } else {
            AnsweredCalls::Park
        };
        Driver {
            index,
            link,
            password,
            settings,
            socket_target,
            shared,
            commands,
            tracker: Tracker::new(mode),
            backoff,
            deferred_hangups: Vec::new(),
        }
    }

    async fn emit(&mut self, events: Vec<BackendEvent>) {
        for e in events {
            if matches!(e.event, CallEvent::Hangup(_) | CallEvent::Lost) {
                self.shared.forget(e.call);
                self.link.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            if self.shared.events.send(e).await.is_err() {
                return;
            }
        }
    }

    /// TCP connect, auth and subscription, bounded by the connect timeout.
    async fn connect(&self) -> Result<(Reader, OwnedWriteHalf), String> {
        let timeout = FreeswitchSettings::ms(self.settings.connect_timeout_ms);
        let handshake = async {
            let stream = TcpStream::connect(&self.link.address)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (r, mut w) = stream.into_split();
            let mut frames = FramedRead::new(r, EslCodec::new(Limits::default()));
            match next_message(&mut frames).await? {
                Message::AuthRequest => {}
                other => return Err(format!("expected auth/request, got {other:?}")),
            }
            let auth = Esl::Auth(&self.password)
                .to_bytes()
                .map_err(|e| e.to_string())?;
            w.write_all(&auth).await.map_err(|e| e.to_string())?;
            match next_message(&mut frames).await? {
                Message::CommandReply { reply, .. } if reply.starts_with("+OK") => {}
                Message::CommandReply { reply, .. } => {
                    return Err(format!("authentication refused: {reply}"))
                }
                other => return Err(format!("unexpected answer to auth: {other:?}")),
            }
            let sub = Esl::Events {
                format: "plain",
                names: SUBSCRIBED,
            }
            .to_bytes()
            .map_err(|e| e.to_string())?;
            w.write_all(&sub).await.map_err(|e| e.to_string())?;
            match next_message(&mut frames).await? {
                Message::CommandReply { reply, .. } if reply.starts_with("+OK") => {}
                other => return Err(format!("subscription refused: {other:?}")),
            }
            Ok((frames, w))
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| "handshake timed out".to_string())?
    }

    fn originate_command(&self, o: &Originate) -> String {
        let number = o.destination.to_string();
        let endpoint = self.settings.endpoint.replace("{number}", &number);
        let mut vars = vec![
            format!("origination_uuid={}", o.call),
            format!("origination_caller_id_number={}", o.ani),
            format!("callcode_verification_id={}", o.verification_id),
            format!("sip_watch_headers={WATCHED_HEADERS}"),
            format!("ignore_early_media={}", self.settings.ignore_early_media),
            format!("originate_timeout={}", o.pbx_timeout.as_secs().max(1)),
        ];
        vars.extend(self.settings.originate_variables.iter().cloned());
        // The socket app's argument has spaces: unquoted, originate splits it and the session
        // silently runs in static mode (fixture -03-/-04-).
        let app = match &self.socket_target {
            Some(target) => format!("'&socket({target} async full)'"),
            None => "&park()".to_string(),
        };
        format!("originate {{{}}}{endpoint} {app}", vars.join(","))
    }

    fn prompt_path(&self, language: &str, prompt: Prompt) -> String {
        format!(
            "{}/{language}/{}.wav",
            self.settings.sounds_dir.trim_end_matches('/'),
            prompt.file_stem()
        )
    }

    /// Writes one command; `Ok(false)` when it could not be encoded and was not sent, so that no
    /// reply is expected for it (replies pair with commands by order).
    async fn write(w: &mut OwnedWriteHalf, c: Esl<'_>) -> std::io::Result<bool> {
        let mut buf = BytesMut::new();
        match c.encode(&mut buf) {
            Ok(()) => w.write_all(&buf).await.map(|()| true),
            Err(e) => {
                warn!(error = %e, "ESL command not sent");
                Ok(false)
            }
        }
    }

    async fn command(
        &mut self,
        c: Command,
        w: &mut OwnedWriteHalf,
        pending: &mut VecDeque<Pending>,
    ) -> Io {
        match c {
            Command::Originate(o) => {
                let job = uuid::Uuid::new_v4();
                let text = self.originate_command(&o);
                let expires = std::time::Instant::now()
                    + o.pbx_timeout
                    + FreeswitchSettings::ms(self.settings.lost_after_ms);
                self.tracker
                    .originate(o.call, o.destination, o.language.clone(), job, expires);
                debug!(call = %o.call, server = %self.link.address, "originate");
                let job_text = job.to_string();
                let sent = Self::write(
                    w,
                    Esl::BgApi {
                        command: &text,
                        job_uuid: &job_text,
                    },
                )
                .await?;
                if sent {
                    pending.push_back(Pending::Originate(o.call));
                } else {
                    let mut out = Vec::new();
                    self.tracker.originate_refused(o.call, "-ERR", &mut out);
                    self.emit(out).await;
                }
            }
            Command::Play { call, seq, prompt } => {
                let Some(language) = self.tracker.language(call) else {
                    return Ok(());
                };
                let path = self.prompt_path(&language, prompt);
                if self.shared.sessions.play(call, seq, path.clone()) {
                    return Ok(());
                }
                let Some(event_uuid) = self.tracker.play(call, seq) else {
                    return Ok(());
                };
                let (uuid, ev) = (call.to_string(), event_uuid.to_string());
                if Self::write(
                    w,
                    Esl::Execute {
                        uuid: Some(&uuid),
                        app: "playback",
                        arg: &path,
                        event_uuid: &ev,
                    },
                )
                .await?
                {
                    pending.push_back(Pending::Play);
                }
            }
            Command::Release { call } => {
                let cmd = format!("uuid_kill {call} NORMAL_CLEARING");
                if Self::write(w, Esl::Api(&cmd)).await? {
                    pending.push_back(Pending::Release);
                }
            }
            Command::Hangup { call, q850 } => {
                let uuid = call.to_string();
                match self.tracker.hangup(call, q850) {
                    None => {}
                    Some(HangupHow::Cancel) => {
                        let cmd = format!("uuid_kill {uuid} ORIGINATOR_CANCEL");
                        if Self::write(w, Esl::Api(&cmd)).await? {
                            pending.push_back(Pending::Kill(call));
                        }
                    }
                    Some(HangupHow::Clear(cause)) => {
                        if self.shared.sessions.hangup(call, cause) {
                            return Ok(());
                        }
                        if Self::write(
                            w,
                            Esl::HangupMsg {
                                uuid: Some(&uuid),
                                cause,
                            },
                        )
                        .await?
                        {
                            pending.push_back(Pending::HangupMsg(call));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A command while the server is down: new calls fail at once, hang-ups wait for the
    /// reconnect, prompts are skipped (the machine's prompt deadline moves on).
    async fn offline_command(&mut self, c: Command) {
        match c {
            Command::Originate(o) => {
                let h = Hangup {
                    q850: SERVER_DOWN_CAUSE,
                    sip_status: None,
                    ended_by: EndedBy::Local,
                };
                self.emit(vec![BackendEvent {
                    call: o.call,
                    event: CallEvent::Hangup(h),
                }])
                .await;
            }
            Command::Hangup { call, q850 } => self.deferred_hangups.push((call, q850)),
            Command::Play { call, .. } => debug!(%call, "prompt skipped: server down"),
            Command::Release { call } => debug!(%call, "release skipped: server down"),
        }
    }

    async fn on_message(&mut self, m: Message, pending: &mut VecDeque<Pending>) -> bool {
        let mut out = Vec::new();
        match m {
            Message::Event(e) => self.tracker.on_event(&e, &mut out),
            Message::CommandReply { reply, .. } => match pending.pop_front() {
                Some(Pending::Originate(call)) if reply.starts_with("-ERR") => {
                    self.tracker.originate_refused(call, &reply, &mut out)
                }
                Some(Pending::HangupMsg(call)) if reply.starts_with("-ERR") => {
                    self.tracker.kill_failed(call, &mut out)
                }
                _ => {}
            },
            Message::ApiResponse(body) => {
                let text = String::from_utf8_lossy(&body);
                match pending.pop_front() {
                    Some(Pending::Kill(call)) if text.starts_with("-ERR") => {
                        self.tracker.kill_failed(call, &mut out)
                    }
                    Some(Pending::Exists(call)) if text.trim() == "false" => {
                        info!(%call, "channel gone after reconnect");
                        self.tracker.lose(call, &mut out)
                    }
                    _ => {}
                }
            }
            Message::Disconnect { body, .. } => {
                info!(server = %self.link.address, notice = %String::from_utf8_lossy(&body).trim(), "FreeSWITCH disconnected us");
                return false;
            }
            Message::AuthRequest | Message::Log(_) => {}
            Message::Other { content_type, .. } => {
                debug!(%content_type, "unknown ESL message ignored")
            }
        }
        self.emit(out).await;
        true
    }

    /// One connected session, until the connection fails or the backend stops. Returns false
    /// when the backend is stopping.
    async fn session(&mut self, frames: Reader, mut w: OwnedWriteHalf) -> bool {
        let (queue_tx, mut queue) = mpsc::channel::<Message>(self.settings.event_queue);
        let server = self.link.address.clone();
        let held_cap = self.settings.event_queue;
        let reader = tokio::spawn(async move {
            let (_, held) = pump(frames, &queue_tx, &server, held_cap).await;
            // The stream is over: what was held still goes, the disconnect notice last.
            for m in held {
                if queue_tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        let mut pending = VecDeque::new();
        let result = self.run_session(&mut w, &mut queue, &mut pending).await;
        reader.abort();
        result
    }

    async fn run_session(
        &mut self,
        w: &mut OwnedWriteHalf,
        queue: &mut mpsc::Receiver<Message>,
        pending: &mut VecDeque<Pending>,
    ) -> bool {
        // Reconcile: which of our channels survived the gap.
        for call in self.tracker.in_flight() {
            let cmd = format!("uuid_exists {call}");
            if Self::write(w, Esl::Api(&cmd)).await.is_err() {
                return true;
            }
            pending.push_back(Pending::Exists(call));
        }
        for (call, q850) in std::mem::take(&mut self.deferred_hangups) {
            if self
                .command(Command::Hangup { call, q850 }, w, pending)
                .await
                .is_err()
            {
                return true;
            }
        }
        let ping_every = FreeswitchSettings::ms(self.settings.ping_interval_ms);
        let liveness = FreeswitchSettings::ms(self.settings.liveness_timeout_ms);
        let mut tick =
            tokio::time::interval(ping_every.min(liveness / 2).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut last_ping = Instant::now();
        let stop = self.shared.stop.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    let _ = Self::write(w, Esl::Exit).await;
                    return false;
                }
                m = queue.recv() => {
                    let Some(m) = m else { return true };
                    last_rx = Instant::now();
                    if !self.on_message(m, pending).await {
                        return true;
                    }
                }
                c = self.commands.recv() => {
                    let Some(c) = c else { return false };
                    if self.command(c, w, pending).await.is_err() {
                        return true;
                    }
                }
                _ = tick.tick() => {
                    let mut expired = Vec::new();
                    self.tracker.expire(std::time::Instant::now(), &mut expired);
                    self.emit(expired).await;
                    if last_rx.elapsed() > liveness {
                        warn!(server = %self.link.address, "FreeSWITCH silent past the liveness timeout; reconnecting");
                        return true;
                    }
                    if last_rx.elapsed() >= ping_every && last_ping.elapsed() >= ping_every {
                        last_ping = Instant::now();
                        if Self::write(w, Esl::Api("status")).await.is_err() {
                            return true;
                        }
                        pending.push_back(Pending::Status);
                    }
                }
            }
        }
    }

    async fn lose_all(&mut self) {
        let mut out = Vec::new();
        for call in self.tracker.in_flight() {
            self.tracker.lose(call, &mut out);
        }
        self.deferred_hangups.clear();
        self.emit(out).await;
    }
}

/// What the reader did with the messages of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// Handed to the call logic (directly or after waiting in the held backlog).
    pub queued: u64,
    /// Non-essential messages dropped because the queue was full.
    pub dropped: u64,
    /// Essential messages that had to wait in the held backlog.
    pub held: u64,
    /// Framed but unreadable (a bad JSON event, too many headers): skipped and counted.
    pub unreadable: u64,
    /// The held backlog overflowed too: the reader gave the connection up so that the reconnect
    /// reconciles the calls in flight instead of losing their ends silently.
    pub gave_up: bool,
}

/// Whether a message must reach the call logic even when the queue is full. Replies pair with
/// our commands by order (one lost reply would misattribute every later one); the rest decide
/// a call's outcome: its answer, its end, its job result, its forwarding, the connection's end.
/// Progress, prompt completions, heartbeats and anything unknown may be dropped: the call
/// machine's own deadlines cover them.
pub fn essential(m: &Message) -> bool {
    match m {
        Message::Event(e) => e.get_raw("Event-Name").is_some_and(|name| {
            matches!(
                name,
                b"CHANNEL_ANSWER" | b"CHANNEL_HANGUP_COMPLETE" | b"BACKGROUND_JOB"
            ) || (name == b"CUSTOM" && e.is("Event-Subclass", "sofia::notify_watched_header"))
        }),
        Message::AuthRequest
        | Message::CommandReply { .. }
        | Message::ApiResponse(_)
        | Message::Disconnect { .. } => true,
        Message::Log(_) | Message::Other { .. } => false,
    }
}

/// Reads frames until the stream ends or fails, never waiting on the consumer, so the socket is
/// always drained. The overflow policy, when the queue is full: a non-essential message is
/// dropped and counted; an essential one (see `essential`) waits in a held backlog of at most
/// `held_cap` messages, which is handed on in order as the queue frees up (and every later
/// message waits behind it, so order is kept). Past `held_cap` the reader gives the connection
/// up: the driver reconnects and reconciles the calls in flight with `uuid_exists`.
///
/// Returns, with the counts, what is still held when the stream is over: the caller hands it on
/// (it may wait for the consumer then; the socket is no longer being read).
pub async fn pump<S>(
    mut frames: S,
    queue: &mpsc::Sender<Message>,
    server: &str,
    held_cap: usize,
) -> (Pumped, VecDeque<Message>)
where
    S: futures_util::Stream<Item = Result<super::codec::Frame, super::codec::StreamError>> + Unpin,
{
    let mut stats = Pumped::default();
    let mut held: VecDeque<Message> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            permit = queue.reserve(), if !held.is_empty() => {
                let Ok(permit) = permit else { return (stats, held) };
                if let Some(m) = held.pop_front() {
                    permit.send(m);
                    stats.queued += 1;
                }
            }
            frame = frames.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => {
                        warn!(%server, error = %e, "ESL stream error");
                        break;
                    }
                    None => break,
                };
                let m = match Message::from_frame(frame, Limits::default().max_headers) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(%server, error = %e, "unreadable ESL message skipped");
                        stats.unreadable += 1;
                        metrics::counter!("callcode_freeswitch_messages_unreadable_total").increment(1);
                        continue;
                    }
                };
                let m = if held.is_empty() {
                    match queue.try_send(m) {
                        Ok(()) => {
                            stats.queued += 1;
                            continue;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return (stats, held),
                        Err(mpsc::error::TrySendError::Full(m)) => m,
                    }
                } else {
                    m
                };
                if !essential(&m) {
                    stats.dropped += 1;
                    metrics::counter!("callcode_freeswitch_messages_dropped_total").increment(1);
                } else if held.len() < held_cap {
                    held.push_back(m);
                    stats.held += 1;
                } else {
                    warn!(%server, held = held.len(), "call logic too far behind; dropping the connection to reconcile");
                    metrics::counter!("callcode_freeswitch_backlog_resets_total").increment(1);
                    stats.gave_up = true;
                    break;
                }
            }
        }
    }
    (stats, held)
}

async fn next_message(frames: &mut Reader) -> Result<Message, String> {
    let f = frames
        .next()
        .await
        .ok_or("closed during the handshake")?
        .map_err(|e| e.to_string())?;
    Message::from_frame(f, Limits::default().max_headers).map_err(|e| e.to_string())
}

/// The driver's life: connect, serve, wait, reconnect, until the backend closes.
pub(crate) async fn run(mut d: Driver) {
    let stop = d.shared.stop.clone();
    let mut down_since = Instant::now();
    loop {
        if stop.is_cancelled() {
            return;
        }
        match d.connect().await {
            Ok((frames, w)) => {
                info!(backend = %d.shared.name, server = %d.link.address, index = d.index, "FreeSWITCH connected");
                d.backoff.reset();
                d.link.connected.store(true, Ordering::Release);
                let go_on = d.session(frames, w).await;
                d.link.connected.store(false, Ordering::Release);
                down_since = Instant::now();
                if !go_on {
                    return;
                }
                warn!(server = %d.link.address, calls = d.tracker.len(), "FreeSWITCH connection lost");
            }
            Err(e) => {
                warn!(server = %d.link.address, error = %e, "FreeSWITCH connection failed");
            }
        }
        let delay = d.backoff.next_delay(&mut rand::rng());
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(until) => break,
                c = d.commands.recv() => match c {
                    Some(c) => d.offline_command(c).await,
                    None => return,
                },
            }
        }
        if !d.tracker.is_empty()
            && down_since.elapsed() >= FreeswitchSettings::ms(d.settings.lost_after_ms)
        {
            warn!(server = %d.link.address, calls = d.tracker.len(), "FreeSWITCH unreachable; calls in flight are lost");
            d.lose_all().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn capture(name: &str) -> Vec<super::super::codec::Frame> {
        let rx = std::fs::read(format!(
            "{}/tests/fixtures/freeswitch/{name}.rx.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        super::super::codec::decode_all(&rx, Limits::default())
            .unwrap()
            .0
    }

    fn message(f: &super::super::codec::Frame) -> Message {
        Message::from_frame(f.clone(), Limits::default().max_headers).unwrap()
    }

    /// Runs the reader over `frames` with a queue of `capacity` that nobody reads; returns the
    /// counts and what reached the consumer (the queue, then the held rest), in order.
    async fn pump_unread(
        frames: Vec<super::super::codec::Frame>,
        capacity: usize,
        held_cap: usize,
    ) -> (Pumped, Vec<Message>) {
        let (tx, mut queue) = mpsc::channel(capacity);
        let frames = stream::iter(frames.into_iter().map(Ok));
        let (stats, held) =
            tokio::time::timeout(Duration::from_secs(10), pump(frames, &tx, "test", held_cap))
                .await
                .expect("the reader must not wait for the consumer");
        let mut got = Vec::new();
        while let Ok(m) = queue.try_recv() {
            got.push(m);
        }
        got.extend(held);
        (stats, got)
    }

    #[tokio::test]
    async fn a_full_queue_drops_only_non_essential_messages_and_keeps_the_order() {
        // -10- then -20- (busy: its CHANNEL_HANGUP_COMPLETE and BACKGROUND_JOB come late).
        let mut all = capture("esl-inbound-10-answered-plain");
        all.extend(capture("esl-inbound-20-busy486-plain"));
        let expected: Vec<Message> = all.iter().map(message).collect();
        let name_count = |ms: &[Message], wanted: &str| {
            ms.iter()
                .filter(|m| matches!(m, Message::Event(e) if e.is("Event-Name", wanted)))
                .count()
        };
        let (stats, got) = pump_unread(all, 4, 10_000).await;
        // The first four went straight in; after that the essentials, all of them, in order.
        assert_eq!(got[..4], expected[..4]);
        let essential_after: Vec<&Message> =
            expected[4..].iter().filter(|m| essential(m)).collect();
        assert_eq!(got[4..].iter().collect::<Vec<_>>(), essential_after);
        for kept in [
            "CHANNEL_ANSWER",
            "CHANNEL_HANGUP_COMPLETE",
            "BACKGROUND_JOB",
        ] {
            assert_eq!(
                name_count(&got, kept),
                name_count(&expected, kept),
                "{kept}"
            );
            assert!(name_count(&got, kept) >= 1, "{kept}");
        }
        assert_eq!(name_count(&got, "PLAYBACK_START"), 0);
        assert_eq!(stats.queued, 4);
        assert_eq!(stats.held as usize, got.len() - 4);
        assert_eq!(stats.dropped as usize, expected.len() - got.len());
        assert!(stats.dropped > 0 && !stats.gave_up);
    }

    #[tokio::test]
    async fn a_held_backlog_past_its_cap_gives_the_connection_up() {
        let all = capture("esl-inbound-10-answered-plain");
        let (stats, got) = pump_unread(all.clone(), 1, 2).await;
        assert!(stats.gave_up);
        // The one in the queue and the two held are still handed on.
        assert_eq!(got.len(), 3);
        assert_eq!((stats.queued, stats.held), (1, 2));
        assert!(got[1..].iter().all(essential));
        // With room for every essential the same stream is read to its end.
        let (stats, _) = pump_unread(all, 1, 10_000).await;
        assert!(!stats.gave_up);
    }

    #[tokio::test]
    async fn unreadable_messages_are_counted_and_the_rest_goes_on() {
        let bad_json = b"Content-Length: 5\nContent-Type: text/event-json\n\n{\"a\":";
        let mut wire = bad_json.to_vec();
        wire.extend_from_slice(b"Content-Type: command/reply\nReply-Text: +OK\n\n");
        let (frames, _) = super::super::codec::decode_all(&wire, Limits::default()).unwrap();
        let (stats, got) = pump_unread(frames, 4, 4).await;
        assert_eq!(stats.unreadable, 1);
        assert!(matches!(&got[..], [Message::CommandReply { reply, .. }] if reply == "+OK"));
    }

    #[tokio::test]
    async fn a_command_that_cannot_be_written_expects_no_reply() {
        use super::super::outbound::Sessions;
        use std::collections::HashMap;
        use std::sync::Mutex;
        let settings: FreeswitchSettings = toml::from_str(
            "endpoint = \"sofia/gateway/g/{number}\"\nsounds_dir = \"/s\"\n[[servers]]\naddress = \"127.0.0.1:1\"\npassword = \"p\"\n",
        )
        .unwrap();
        let (events, _backend_events) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            name: "fs".into(),
            events,
            owners: Mutex::new(HashMap::new()),
            sessions: Sessions::default(),
            stop: tokio_util::sync::CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let link = Arc::new(ServerLink {
            address: "127.0.0.1:1".into(),
            connected: std::sync::atomic::AtomicBool::new(true),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            commands: commands_tx,
        });
        let mut d = Driver::new(
            0,
            link,
            "p".into(),
            Arc::new(settings),
            None,
            shared,
            commands,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_r, mut w) = client.into_split();
        let call = uuid::Uuid::new_v4();
        let far = std::time::Instant::now() + Duration::from_secs(3600);
        let n = "79990001122".parse().unwrap();
        // A language directory with a line break: its prompt paths cannot be sent.
        d.tracker
            .originate(call, n, "r\nu".into(), uuid::Uuid::new_v4(), far);
        let mut pending = VecDeque::new();
        d.command(
            Command::Play {
                call,
                seq: 1,
                prompt: Prompt::Digit(4),
            },
            &mut w,
            &mut pending,
        )
        .await
        .unwrap();
        assert!(pending.is_empty(), "{pending:?}");
        // A command that was sent does wait for its reply.
        d.command(Command::Hangup { call, q850: 16 }, &mut w, &mut pending)
            .await
            .unwrap();
        assert!(matches!(pending.pop_front(), Some(Pending::Kill(c)) if c == call));
    }
}
