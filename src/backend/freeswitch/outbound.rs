//! callcode's listener for FreeSWITCH's `socket` application in async full mode (ESL outbound):
//! with `answered_calls = "socket"`, an answered call runs `'&socket(host:port async full)'` and
//! FreeSWITCH connects here, as Asterisk's dialplan does with FastAGI.
//!
//! Per connection (fixture esl-outbound-01): `connect` → the CHANNEL_DATA reply (whose
//! `Unique-ID` is our call), `myevents`, `linger` (so the hang-up events still arrive after the
//! channel is gone); then the call is reported `Answered`, prompts are played with `sendmsg`
//! (no uuid needed) and matched by `Application-UUID`, and the hang-up is a `sendmsg hangup`.
//! The call's end is still reported by the inbound connection's CHANNEL_HANGUP_COMPLETE, which
//! carries the causes; this module never reports a hang-up.
//!
//! Limits: at most `outbound_max_sessions` at once (further connections are closed), a bounded
//! handshake, a session closed once its call is over (even if FreeSWITCH keeps it open), and a
//! clean stop when the backend closes. Connections for calls that are not ours
//! are told `exit`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tracing::{info, warn};

use super::codec::{EslCodec, Limits};
use super::command::Command as Esl;
use super::event::Message;
use super::{FreeswitchSettings, Shared};
use crate::backend::{BackendEvent, CallEvent};
use crate::call::CallId;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a session checks that its call is still in flight. A session lives no longer than
/// its call (whose own deadlines end it even when FreeSWITCH goes silent), plus at most this.
const OWNERSHIP_CHECK: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) enum SessionCommand {
    Play { seq: u16, path: String },
    Hangup { cause: &'static str },
}

/// Open outbound sessions by call.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<CallId, mpsc::UnboundedSender<SessionCommand>>>);

impl Sessions {
    fn send(&self, call: CallId, c: SessionCommand) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(&call).map(|tx| tx.send(c).is_ok()))
            .unwrap_or(false)
    }

    /// Plays through the call's session; false when it has none.
    pub fn play(&self, call: CallId, seq: u16, path: String) -> bool {
        self.send(call, SessionCommand::Play { seq, path })
    }

    pub fn hangup(&self, call: CallId, cause: &'static str) -> bool {
        self.send(call, SessionCommand::Hangup { cause })
    }

    fn insert(&self, call: CallId, tx: mpsc::UnboundedSender<SessionCommand>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(call, tx);
        }
    }

    fn remove(&self, call: CallId) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&call);
        }
    }
}

/// Binds the listener and serves it until the backend stops. Returns the bound address.
pub(crate) async fn listen(
    settings: &FreeswitchSettings,
    shared: Arc<Shared>,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(settings.outbound_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.outbound_listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    info!(%addr, backend = %shared.name, "FreeSWITCH outbound socket listening");
    let limit = Arc::new(Semaphore::new(settings.outbound_max_sessions));
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let stop = shared.stop.clone();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                metrics::counter!("callcode_freeswitch_outbound_refused_total").increment(1);
                warn!(%peer, "outbound session limit reached; connection closed");
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = session(stream, shared).await {
                    warn!(%peer, error = %e, "outbound session ended");
                }
            });
        }
    });
    Ok(addr)
}

async fn write(w: &mut tokio::net::tcp::OwnedWriteHalf, c: Esl<'_>) -> Result<(), String> {
    let mut buf = BytesMut::new();
    c.encode(&mut buf).map_err(|e| e.to_string())?;
    w.write_all(&buf).await.map_err(|e| e.to_string())
}

async fn session(stream: TcpStream, shared: Arc<Shared>) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let max_headers = Limits::default().max_headers;
    let mut frames = FramedRead::new(r, EslCodec::new(Limits::default()));
    write(&mut w, Esl::Connect).await?;
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, frames.next())
        .await
        .map_err(|_| "no CHANNEL_DATA")?
        .ok_or("closed before CHANNEL_DATA")?
        .map_err(|e| e.to_string())?;
    let Message::CommandReply { headers, .. } =
        Message::from_frame(reply, max_headers).map_err(|e| e.to_string())?
    else {
        return Err("connect: unexpected reply".into());
    };
    let call: CallId = headers
        .get_str("Unique-ID")
        .and_then(|u| u.parse().ok())
        .ok_or("CHANNEL_DATA without Unique-ID")?;
    let ours = shared.owners.lock().is_ok_and(|o| o.contains_key(&call));
    if !ours {
        warn!(%call, "outbound connection for a call that is not ours");
        let _ = write(&mut w, Esl::Exit).await;
        return Ok(());
    }
    if headers.get_str("Socket-Mode") != Some("async") || headers.get_str("Control") != Some("full")
    {
        // -03-: unquoted socket arguments give static, single-channel mode.
        warn!(%call, "outbound socket not in async full mode: quote the socket application's argument");
    }
    write(&mut w, Esl::MyEvents).await?;
    write(&mut w, Esl::Linger).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    shared.sessions.insert(call, tx);
    let emit = |event| BackendEvent { call, event };
    let _ = shared.events.send(emit(CallEvent::Answered)).await;
    let mut playbacks: HashMap<String, u16> = HashMap::new();
    let stop = shared.stop.clone();
    let mut check = tokio::time::interval(OWNERSHIP_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = check.tick() => {
                // The inbound side reported the call's end (or gave it up as lost): nothing more
                // will be played, so a session FreeSWITCH keeps open is not kept for ever.
                if !shared.owners.lock().is_ok_and(|o| o.contains_key(&call)) {
                    break Ok(());
                }
            }
            c = rx.recv() => {
                let Some(c) = c else { break Ok(()) };
                let sent = match c {
                    SessionCommand::Play { seq, path } => {
                        let id = uuid::Uuid::new_v4().to_string();
                        playbacks.insert(id.clone(), seq);
                        write(&mut w, Esl::Execute { uuid: None, app: "playback", arg: &path, event_uuid: &id }).await
                    }
                    SessionCommand::Hangup { cause } => {
                        write(&mut w, Esl::HangupMsg { uuid: None, cause }).await
                    }
                };
                if let Err(e) = sent {
                    break Err(e);
                }
            }
            f = frames.next() => {
                let Some(Ok(f)) = f else { break Ok(()) };
                match Message::from_frame(f, max_headers) {
                    Ok(Message::Event(e)) if e.is("Event-Name", "CHANNEL_EXECUTE_COMPLETE") => {
                        let seq = e.get("Application-UUID").and_then(|a| playbacks.remove(a.as_ref()));
                        if let Some(seq) = seq {
                            let _ = shared.events.send(emit(CallEvent::PromptDone { seq })).await;
                        }
                    }
                    // With linger, the notice comes after the last event; FreeSWITCH then closes.
                    Ok(Message::Disconnect { .. }) => break Ok(()),
                    _ => {}
                }
            }
        }
    };
    shared.sessions.remove(call);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// FreeSWITCH's `connect` reply from esl-outbound-01 (a header block without Content-Length).
    fn channel_data() -> (Vec<u8>, CallId) {
        let rx = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/freeswitch/esl-outbound-01-answer-playback-linger.rx.txt"
        ))
        .unwrap();
        let end = memchr::memmem::find(&rx, b"\n\n").unwrap() + 2;
        let block = rx[..end].to_vec();
        let text = String::from_utf8_lossy(&block);
        let call = text
            .lines()
            .find_map(|l| l.strip_prefix("Unique-ID: "))
            .unwrap()
            .parse()
            .unwrap();
        (block, call)
    }

    async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
        let mut chunk = [0u8; 1024];
        while memchr::memmem::find(buf, needle).is_none() {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("callcode answers")
                .unwrap();
            assert!(
                n > 0,
                "closed early; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A backend's shared state with its outbound listener bound on loopback.
    async fn listening() -> (Arc<Shared>, SocketAddr, mpsc::Receiver<BackendEvent>) {
        let settings: FreeswitchSettings = toml::from_str(
            "endpoint = \"sofia/gateway/g/{number}\"\nsounds_dir = \"/s\"\noutbound_listen = \"127.0.0.1:0\"\n[[servers]]\naddress = \"127.0.0.1:1\"\npassword = \"p\"\n",
        )
        .unwrap();
        let (events, backend_events) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            name: "fs".into(),
            events,
            owners: Mutex::new(HashMap::new()),
            sessions: Sessions::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let addr = listen(&settings, shared.clone()).await.unwrap();
        (shared, addr, backend_events)
    }

    #[tokio::test]
    async fn a_call_callcode_did_not_originate_is_told_exit() {
        let (shared, addr, mut backend_events) = listening().await;
        let (reply, _) = channel_data();
        let mut fs = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut fs, &mut buf, b"connect\n\n").await;
        fs.write_all(&reply).await.unwrap();
        read_until(&mut fs, &mut buf, b"exit\n\n").await;
        assert_eq!(buf, b"connect\n\nexit\n\n");
        let mut chunk = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), fs.read(&mut chunk))
            .await
            .expect("callcode closes the session")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(backend_events.try_recv().is_err(), "nothing reported");
        shared.stop.cancel();
    }

    #[tokio::test]
    async fn a_session_freeswitch_keeps_open_is_closed_once_its_call_is_over() {
        let (shared, addr, mut backend_events) = listening().await;
        let (reply, call) = channel_data();
        shared.owners.lock().unwrap().insert(call, 0);
        let mut fs = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut fs, &mut buf, b"connect\n\n").await;
        fs.write_all(&reply).await.unwrap();
        read_until(&mut fs, &mut buf, b"linger\n\n").await;
        let answered = tokio::time::timeout(Duration::from_secs(5), backend_events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answered.event, CallEvent::Answered);
        assert!(shared.sessions.play(call, 1, "/s/en/1.wav".into()));
        read_until(&mut fs, &mut buf, b"execute-app-arg: /s/en/1.wav\n").await;
        // The inbound side reports the call's end; FreeSWITCH never closes the socket.
        shared.forget(call);
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), fs.read(&mut chunk))
            .await
            .expect("callcode closes the session")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&chunk[..n]));
        assert!(!shared.sessions.play(call, 2, "/s/en/2.wav".into()));
        shared.stop.cancel();
    }
}
