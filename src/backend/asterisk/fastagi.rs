//! The FastAGI server: accepts Asterisk's connections (default `127.0.0.1:4573`), reads the
//! environment block, and hands each session to the Asterisk backend through a channel; the
//! backend then drives it command by command (`STREAM FILE` per prompt, `HANGUP`).
//!
//! Thin tokio driver over the sans-IO codec in `agi`: connection limit, per-command timeout,
//! graceful shutdown. It knows nothing of verifications or the engine, and it never waits on the
//! backend: a session the backend cannot take at once is closed, so Asterisk's `AGI()` returns
//! and the dialplan goes on.
//!
//! CONTRACT (fixed; the Asterisk backend codes against it — extend, do not rename).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::agi::{AgiCommand, AgiDecoder, AgiEnvironment, AgiEvent, AgiReply};

/// The environment block is sent by Asterisk as soon as it connects (within a millisecond in the
/// captures); waiting for it at most this long, or the command timeout if shorter, keeps a silent
/// peer from holding a connection slot.
const MAX_ENVIRONMENT_WAIT: Duration = Duration::from_secs(5);
/// Read buffer reserve; a reply line is ~25 bytes, an environment block ~520.
const READ_CHUNK: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastAgiSettings {
    pub listen: SocketAddr,
    /// Sessions open at once; connections beyond it are refused.
    pub max_connections: usize,
    /// How long one command may wait for its reply (a STREAM FILE lasts as long as its file).
    pub command_timeout_ms: u64,
}

impl Default for FastAgiSettings {
    fn default() -> Self {
        FastAgiSettings {
            listen: "127.0.0.1:4573".parse().expect("literal address"),
            max_connections: 1024,
            command_timeout_ms: 60_000,
        }
    }
}

impl FastAgiSettings {
    fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgiError {
    /// The channel hung up (`HANGUP` line, `511`, or `result=-1` of an interrupted command).
    #[error("the channel hung up")]
    HungUp,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Asterisk closed the connection.
    #[error("connection closed")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A running FastAGI listener. Dropping it stops accepting (like [`FastAgiServer::shutdown`]
/// without the wait); sessions already handed out live on.
#[must_use = "dropping the server stops accepting connections"]
pub struct FastAgiServer {
    local_addr: SocketAddr,
    /// Ends the accept loop, which drops the listener.
    stop_accepting: CancellationToken,
    /// Makes every open session's commands fail with `Closed` and shut its socket.
    close_sessions: CancellationToken,
    /// The accept loop, connections still reading their environment block, and every
    /// `AgiSession` not yet dropped (each holds a token).
    open: TaskTracker,
}

impl FastAgiServer {
    /// Binds and starts accepting. Each session, once its environment block is read, is sent on
    /// `sessions`.
    pub async fn bind(
        settings: FastAgiSettings,
        sessions: mpsc::Sender<AgiSession>,
    ) -> std::io::Result<FastAgiServer> {
        let listener = TcpListener::bind(settings.listen).await?;
        let local_addr = listener.local_addr()?;
        let server = FastAgiServer {
            local_addr,
            stop_accepting: CancellationToken::new(),
            close_sessions: CancellationToken::new(),
            open: TaskTracker::new(),
        };
        let acceptor = Acceptor {
            listener,
            settings,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            sessions,
            stop_accepting: server.stop_accepting.clone(),
            close_sessions: server.close_sessions.clone(),
            open: server.open.clone(),
        };
        server.open.spawn(acceptor.run());
        tracing::info!(%local_addr, max_connections = settings.max_connections, "FastAGI listening");
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; sessions still open after `grace` are closed.
    ///
    /// A session is open until the backend drops it. Closing one makes its command in flight (and
    /// any later one) return `Err(Closed)` after shutting the socket, so Asterisk's `AGI()` ends.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop_accepting.cancel();
        self.open.close();
        if tokio::time::timeout(grace, self.open.wait()).await.is_err() {
            tracing::warn!(
                open = self.open.len(),
                ?grace,
                "FastAGI sessions still open after the grace period; closing them"
            );
            self.close_sessions.cancel();
        }
    }
}

impl Drop for FastAgiServer {
    fn drop(&mut self) {
        self.stop_accepting.cancel();
    }
}

struct Acceptor {
    listener: TcpListener,
    settings: FastAgiSettings,
    /// One permit per open connection, held by the connection until its `AgiSession` is dropped.
    slots: Arc<Semaphore>,
    sessions: mpsc::Sender<AgiSession>,
    stop_accepting: CancellationToken,
    close_sessions: CancellationToken,
    open: TaskTracker,
}

impl Acceptor {
    async fn run(self) {
        loop {
            let accepted = tokio::select! {
                _ = self.stop_accepting.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: back off a little instead of spinning.
                    tracing::warn!(error = %e, "FastAGI accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                metrics::counter!("callcode_fastagi_refused_total", "reason" => "limit")
                    .increment(1);
                tracing::warn!(
                    %peer,
                    max_connections = self.settings.max_connections,
                    "FastAGI connection limit reached; closing the new connection"
                );
                drop(stream);
                continue;
            };
            // Commands and replies are single small lines in lock-step: never wait for Nagle.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "FastAGI set_nodelay failed");
            }
            let conn = Conn::new(stream);
            let session = AgiSession {
                env: AgiEnvironment::default(),
                conn,
                peer,
                command_timeout: self.settings.command_timeout(),
                // A token of its own: waiting on it per command then locks nothing shared.
                close: self.close_sessions.child_token(),
                _slot: slot,
                _open: self.open.token(),
            };
            self.open.spawn(handshake(session, self.sessions.clone()));
        }
        tracing::info!(local_addr = ?self.listener.local_addr().ok(), "FastAGI stopped accepting");
    }
}

/// Reads the environment block, then hands the session over, or closes it.
async fn handshake(mut session: AgiSession, sessions: mpsc::Sender<AgiSession>) {
    let wait = session.command_timeout.min(MAX_ENVIRONMENT_WAIT);
    let peer = session.peer;
    let read = tokio::select! {
        _ = session.close.cancelled() => return,
        read = tokio::time::timeout(wait, session.conn.read_environment()) => read,
    };
    match read {
        Ok(Ok(env)) => session.env = env,
        Ok(Err(e)) => {
            metrics::counter!("callcode_fastagi_refused_total", "reason" => "environment")
                .increment(1);
            tracing::warn!(%peer, error = %e, "FastAGI environment block unreadable; closing");
            return;
        }
        Err(_) => {
            metrics::counter!("callcode_fastagi_refused_total", "reason" => "environment")
                .increment(1);
            tracing::warn!(%peer, ?wait, "FastAGI environment block not received in time; closing");
            return;
        }
    }
    tracing::debug!(
        %peer,
        channel = session.env.get("channel").unwrap_or(""),
        script = session.env.get("network_script").unwrap_or(""),
        "FastAGI session"
    );
    if let Err(e) = sessions.try_send(session) {
        let reason = match e {
            mpsc::error::TrySendError::Full(_) => "busy",
            mpsc::error::TrySendError::Closed(_) => "no_receiver",
        };
        metrics::counter!("callcode_fastagi_refused_total", "reason" => reason).increment(1);
        tracing::warn!(%peer, reason, "FastAGI session not taken by the backend; closing");
    }
}

/// The socket and the codec state of one connection.
struct Conn {
    stream: TcpStream,
    decoder: AgiDecoder,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Asterisk sent `HANGUP` or `511`, or a command was cut by a hang-up.
    hung_up: bool,
    /// Nothing more can be exchanged: closed by either side, or out of step after an error.
    closed: bool,
    /// A command was written or is awaiting its reply. Still set when the next command starts,
    /// it means the caller dropped the previous one midway: its reply would be taken for the
    /// next one's, so the connection is out of step.
    in_flight: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            decoder: AgiDecoder::new(),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(128),
            hung_up: false,
            closed: false,
            in_flight: false,
        }
    }

    /// The error for a connection that cannot carry commands any more.
    fn gone(&self) -> AgiError {
        if self.hung_up {
            AgiError::HungUp
        } else {
            AgiError::Closed
        }
    }

    async fn read_environment(&mut self) -> Result<AgiEnvironment, AgiError> {
        match self.next_event().await? {
            AgiEvent::Environment(env) => Ok(env),
            other => Err(AgiError::Protocol(format!(
                "{other:?} before the environment block"
            ))),
        }
    }

    /// The next event, reading as needed.
    async fn next_event(&mut self) -> Result<AgiEvent, AgiError> {
        loop {
            if let Some(event) = self
                .decoder
                .decode(&mut self.read_buf)
                .map_err(|e| AgiError::Protocol(e.to_string()))?
            {
                return Ok(event);
            }
            self.read_buf.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.read_buf).await {
                Ok(0) => {
                    self.closed = true;
                    return Err(self.gone());
                }
                Ok(_) => {}
                Err(e) if peer_went_away(&e) => {
                    self.closed = true;
                    return Err(self.gone());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes `write_buf` and reads up to the reply, noting `HANGUP` lines on the way.
    async fn exchange(&mut self) -> Result<AgiReply, AgiError> {
        if let Err(e) = self.stream.write_all(&self.write_buf).await {
            self.closed = true;
            return Err(if peer_went_away(&e) {
                self.gone()
            } else {
                e.into()
            });
        }
        loop {
            match self.next_event().await? {
                AgiEvent::Hangup => self.hung_up = true,
                AgiEvent::Reply(reply) => return Ok(reply),
                AgiEvent::Environment(_) => {
                    return Err(AgiError::Protocol("second environment block".into()))
                }
            }
        }
    }

    /// Takes in what Asterisk already sent after the last reply, without waiting: a `HANGUP`
    /// line or the end of the connection.
    fn take_pending(&mut self) {
        if self.closed {
            return;
        }
        loop {
            self.read_buf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.read_buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        while let Ok(Some(event)) = self.decoder.decode(&mut self.read_buf) {
            if event == AgiEvent::Hangup {
                self.hung_up = true;
            }
        }
    }

    async fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            // The FIN tells Asterisk the script is done; the socket itself goes with the session.
            let _ = self.stream.shutdown().await;
        }
    }
}

fn peer_went_away(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
    )
}

/// One FastAGI connection, after its environment block.
pub struct AgiSession {
    pub env: AgiEnvironment,
    conn: Conn,
    peer: SocketAddr,
    command_timeout: Duration,
    /// Cancelled by the server's shutdown once the grace period is over.
    close: CancellationToken,
    _slot: OwnedSemaphorePermit,
    _open: TaskTrackerToken,
}

impl std::fmt::Debug for AgiSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgiSession")
            .field("peer", &self.peer)
            .field("channel", &self.env.get("channel"))
            .field("hung_up", &self.conn.hung_up)
            .field("closed", &self.conn.closed)
            .finish()
    }
}

impl AgiSession {
    /// Sends one command and waits for its reply (an unsolicited `HANGUP` line in between is
    /// noted, not returned as the reply).
    ///
    /// `511` (the command is not allowed on a dead channel) is `Err(HungUp)`. A connection that
    /// closes is `Err(Closed)`, or `Err(HungUp)` if Asterisk said `HANGUP` first. After a
    /// timeout, an I/O or a protocol error, or when the previous command's future was dropped
    /// before its reply, the connection is out of step and is closed: later commands fail at once.
    pub async fn command(&mut self, cmd: AgiCommand<'_>) -> Result<AgiReply, AgiError> {
        if self.conn.closed {
            return Err(self.conn.gone());
        }
        if self.conn.in_flight {
            self.conn.close().await;
            return Err(AgiError::Protocol(
                "the previous command was abandoned before its reply".into(),
            ));
        }
        self.conn.write_buf.clear();
        cmd.encode(&mut self.conn.write_buf)
            .map_err(|e| AgiError::Protocol(format!("cannot encode {cmd:?}: {e}")))?;
        let timeout = self.command_timeout;
        self.conn.in_flight = true;
        let result = tokio::select! {
            biased;
            _ = self.close.cancelled() => Err(AgiError::Closed),
            r = tokio::time::timeout(timeout, self.conn.exchange()) => {
                r.unwrap_or(Err(AgiError::Timeout(timeout)))
            }
        };
        self.conn.in_flight = false;
        match result {
            Ok(reply) if reply.code == 511 => {
                self.conn.hung_up = true;
                Err(AgiError::HungUp)
            }
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.conn.close().await;
                Err(e)
            }
        }
    }

    /// `STREAM FILE <file> ""`: Ok when it played to the end (or the file is missing: result -1
    /// with endpos 0 on a live channel); Err(HungUp) when the channel went away meanwhile.
    ///
    /// `result=-1` is "error or the channel was disconnected" (res_agi's STREAM FILE docs,
    /// quoted in the 520 usage of `agi-basic.txt`). A missing file gives `endpos=0` and no
    /// `HANGUP`; a far-end hang-up mid-file gives the position reached (`endpos=24160` in
    /// `agi-farhangup-*.txt`), and Asterisk's `HANGUP` line may come only after our next command.
    pub async fn stream_file(&mut self, file: &str) -> Result<AgiReply, AgiError> {
        let reply = self
            .command(AgiCommand::StreamFile {
                file,
                escape_digits: "",
            })
            .await?;
        if reply.code != 200 {
            return Err(AgiError::Protocol(format!(
                "STREAM FILE {file}: reply {}",
                reply.code
            )));
        }
        if reply.result == -1 {
            self.conn.take_pending();
            if self.conn.hung_up || self.conn.closed || reply.endpos.unwrap_or(0) > 0 {
                self.conn.hung_up = true;
                return Err(AgiError::HungUp);
            }
            tracing::warn!(
                file,
                channel = self.env.get("channel").unwrap_or(""),
                "STREAM FILE failed on a live channel (missing sound file?)"
            );
        }
        Ok(reply)
    }

    /// Hangs the channel up and closes the session.
    ///
    /// Sends `HANGUP`, reads its `200 result=1` and closes the connection; Asterisk's own
    /// `HANGUP` line that follows (~40 ms later in the captures) is not waited for. A channel
    /// that is already gone is not an error.
    pub async fn hangup(&mut self) -> Result<(), AgiError> {
        if self.conn.closed {
            return Ok(());
        }
        let result = if self.conn.hung_up {
            Ok(AgiReply::ok(1))
        } else {
            self.command(AgiCommand::Hangup).await
        };
        self.conn.hung_up = true;
        self.conn.close().await;
        match result {
            Ok(reply) if reply.code == 200 => Ok(()),
            Ok(reply) => Err(AgiError::Protocol(format!("HANGUP: reply {}", reply.code))),
            Err(AgiError::HungUp | AgiError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Asterisk said the channel is gone (`HANGUP` line or a `511` reply).
    pub fn hung_up(&self) -> bool {
        self.conn.hung_up
    }

    /// The connection can carry no more commands.
    pub fn is_closed(&self) -> bool {
        self.conn.closed
    }

    /// Asterisk's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}
