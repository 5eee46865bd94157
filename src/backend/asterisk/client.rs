//! One AMI connection, kept up: connect, read the banner, log in (plain or MD5 challenge), then
//! pass every message to the backend's driver and write the actions it hands over; ping while
//! idle; on any failure wait (`Backoff` with jitter) and start again.
//!
//! Thin tokio driver over the `ami` codec. It owns no call state: the driver hears `Up` (with a
//! writer) after each successful login and `Down` when the connection is gone, and reconciles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ami::{md5_key, Action, AmiCodec, AmiError, Frame, Kind, Message, Outgoing};
use crate::backend::backoff::Backoff;

/// How callcode logs in to one Asterisk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmiServer {
    /// `host:port` of the manager interface (Asterisk's default port is 5038).
    pub address: SocketAddr,
    pub username: String,
    pub secret: String,
    /// `plain` sends the secret; `md5` answers a challenge and never sends it.
    #[serde(default)]
    pub auth: AuthMethod,
    /// The `Events:` filter of the login. callcode needs the `call` class (channel, dial,
    /// hang-up and Originate events) and `user` (the forwarding `UserEvent`).
    #[serde(default = "default_events")]
    pub events: String,
}

fn default_events() -> String {
    "call,user".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    #[default]
    Plain,
    Md5,
}

/// Timers of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub connect_timeout: Duration,
    /// A `Ping` is sent after this long without traffic; the connection is dropped after three.
    pub keepalive: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

/// What a connection tells the driver.
#[derive(Debug)]
pub enum Report {
    /// Logged in; actions written to `writer` go to this Asterisk.
    Up {
        server: usize,
        writer: mpsc::UnboundedSender<Bytes>,
    },
    Message {
        server: usize,
        message: Message,
    },
    Down {
        server: usize,
    },
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("connection closed by Asterisk")]
    Closed,
    #[error("no traffic for {0:?}")]
    Silent(Duration),
    #[error(transparent)]
    Ami(#[from] AmiError),
    #[error("stopped")]
    Stopped,
}

/// Keeps one server's connection up until `stop`.
pub async fn run(
    server: usize,
    settings: AmiServer,
    timers: Timers,
    reports: mpsc::Sender<Report>,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(timers.reconnect_initial, timers.reconnect_max);
    loop {
        let result = session(
            server,
            &settings,
            timers,
            &reports,
            &connected,
            &mut backoff,
            &stop,
        )
        .await;
        if connected.swap(false, Ordering::SeqCst) {
            let _ = reports.send(Report::Down { server }).await;
        }
        match result {
            Err(ConnError::Stopped) => return,
            Err(e) => warn!(server, address = %settings.address, error = %e, "AMI connection lost"),
            Ok(()) => {}
        }
        let delay = backoff.next_delay(&mut rand::rng());
        debug!(
            server,
            ?delay,
            attempt = backoff.attempts(),
            "AMI reconnect after"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    server: usize,
    settings: &AmiServer,
    timers: Timers,
    reports: &mpsc::Sender<Report>,
    connected: &AtomicBool,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Result<(), ConnError> {
    let stream = tokio::select! {
        _ = stop.cancelled() => return Err(ConnError::Stopped),
        r = timeout(timers.connect_timeout, TcpStream::connect(settings.address)) => {
            r.map_err(|_| ConnError::Timeout)?.map_err(ConnError::Connect)?
        }
    };
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, AmiCodec::new());
    let mut sink = FramedWrite::new(write, AmiCodec::new());

    let limit = timers.connect_timeout;
    let banner = timeout(limit, frames.next())
        .await
        .map_err(|_| ConnError::Timeout)?
        .ok_or(ConnError::Closed)??;
    match banner {
        Frame::Banner(b) => debug!(server, banner = %String::from_utf8_lossy(&b), "AMI banner"),
        Frame::Message(_) => return Err(ConnError::Auth("no banner".into())),
    }
    let events = Some(settings.events.as_str());
    let key;
    let login = match settings.auth {
        AuthMethod::Plain => Action::Login {
            username: &settings.username,
            secret: &settings.secret,
            events,
        },
        AuthMethod::Md5 => {
            sink.send(Outgoing {
                action_id: "challenge-1",
                action: Action::Challenge,
            })
            .await?;
            let reply = response_to(&mut frames, "challenge-1", limit).await?;
            let Some(challenge) = reply.get("Challenge").filter(|_| is_success(&reply)) else {
                return Err(ConnError::Auth(message_of(&reply)));
            };
            key = md5_key(challenge, &settings.secret);
            Action::LoginMd5 {
                username: &settings.username,
                key: &key,
                events,
            }
        }
    };
    sink.send(Outgoing {
        action_id: "login-1",
        action: login,
    })
    .await?;
    let reply = response_to(&mut frames, "login-1", limit).await?;
    if !is_success(&reply) {
        return Err(ConnError::Auth(message_of(&reply)));
    }
    info!(server, address = %settings.address, "AMI logged in");
    backoff.reset();
    let (writer, mut actions) = mpsc::unbounded_channel::<Bytes>();
    connected.store(true, Ordering::SeqCst);
    if reports.send(Report::Up { server, writer }).await.is_err() {
        return Err(ConnError::Stopped);
    }

    let mut raw = sink.into_inner();
    let mut last_heard = Instant::now();
    let mut pings = 0u64;
    let mut tick = tokio::time::interval(timers.keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                logoff(&mut raw).await;
                return Err(ConnError::Stopped);
            }
            frame = frames.next() => {
                last_heard = Instant::now();
                match frame {
                    None => return Err(ConnError::Closed),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Frame::Banner(_))) => {}
                    Some(Ok(Frame::Message(message))) => {
                        if matches!(message.kind(), Kind::Response(_))
                            && message.action_id().is_some_and(|a| a.starts_with("ping-"))
                        {
                            continue;
                        }
                        if reports.send(Report::Message { server, message }).await.is_err() {
                            return Err(ConnError::Stopped);
                        }
                    }
                }
            }
            bytes = actions.recv() => {
                let Some(bytes) = bytes else {
                    // The driver is gone (closing): log off all the same.
                    logoff(&mut raw).await;
                    return Err(ConnError::Stopped);
                };
                raw.write_all(&bytes).await.map_err(AmiError::from)?;
            }
            _ = tick.tick() => {
                let quiet = last_heard.elapsed();
                if quiet >= timers.keepalive * 3 {
                    return Err(ConnError::Silent(quiet));
                }
                if quiet >= timers.keepalive {
                    pings += 1;
                    let mut ping = BytesMut::new();
                    let _ = Action::Ping.encode(&format!("ping-{pings}"), &mut ping);
                    raw.write_all(&ping).await.map_err(AmiError::from)?;
                }
            }
        }
    }
}

/// Says goodbye, so Asterisk does not log a dropped manager session.
async fn logoff<W: tokio::io::AsyncWrite + Unpin>(raw: &mut W) {
    let mut bye = BytesMut::new();
    let _ = Action::Logoff.encode("logoff-1", &mut bye);
    let _ = timeout(Duration::from_millis(500), raw.write_all(&bye)).await;
}

/// Reads until the response carrying `action_id` (events before it are dropped: nothing is
/// followed before the login).
async fn response_to<R>(
    frames: &mut FramedRead<R, AmiCodec>,
    action_id: &str,
    limit: Duration,
) -> Result<Message, ConnError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let deadline = Instant::now() + limit;
    loop {
        let frame = tokio::time::timeout_at(deadline, frames.next())
            .await
            .map_err(|_| ConnError::Timeout)?
            .ok_or(ConnError::Closed)??;
        if let Frame::Message(m) = frame {
            if matches!(m.kind(), Kind::Response(_)) && m.action_id() == Some(action_id) {
                return Ok(m);
            }
        }
    }
}

fn is_success(m: &Message) -> bool {
    matches!(m.kind(), Kind::Response(r) if r.eq_ignore_ascii_case("Success"))
}

fn message_of(m: &Message) -> String {
    m.get("Message").unwrap_or("no message").to_string()
}
