//! The FastAGI server: accepts Asterisk's connections (default `127.0.0.1:4573`), reads the
//! environment block, and hands each session to the Asterisk backend through a channel; the
//! backend then drives it command by command (`STREAM FILE` per prompt, `HANGUP`).
//!
//! Thin tokio driver over the sans-IO codec in `agi`: connection limit, per-command timeout,
//! graceful shutdown. It knows nothing of verifications or the engine.
//!
//! CONTRACT (fixed; the Asterisk backend codes against it — extend, do not rename).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;

use super::agi::{AgiCommand, AgiEnvironment, AgiReply};

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

/// A running FastAGI listener.
pub struct FastAgiServer {}

impl FastAgiServer {
    /// Binds and starts accepting. Each session, once its environment block is read, is sent on
    /// `sessions`.
    pub async fn bind(
        settings: FastAgiSettings,
        sessions: mpsc::Sender<AgiSession>,
    ) -> std::io::Result<FastAgiServer> {
        let _ = (settings, sessions);
        todo!("agi helper")
    }

    pub fn local_addr(&self) -> SocketAddr {
        todo!("agi helper")
    }

    /// Stops accepting; sessions still open after `grace` are closed.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = grace;
        todo!("agi helper")
    }
}

/// One FastAGI connection, after its environment block.
pub struct AgiSession {
    pub env: AgiEnvironment,
}

impl AgiSession {
    /// Sends one command and waits for its reply (an unsolicited `HANGUP` line in between is
    /// noted, not returned as the reply).
    pub async fn command(&mut self, cmd: AgiCommand<'_>) -> Result<AgiReply, AgiError> {
        let _ = cmd;
        todo!("agi helper")
    }

    /// `STREAM FILE <file> ""`: Ok when it played to the end (or the file is missing: result -1
    /// with endpos 0 on a live channel); Err(HungUp) when the channel went away meanwhile.
    pub async fn stream_file(&mut self, file: &str) -> Result<AgiReply, AgiError> {
        let _ = file;
        todo!("agi helper")
    }

    /// Hangs the channel up and closes the session.
    pub async fn hangup(&mut self) -> Result<(), AgiError> {
        todo!("agi helper")
    }

    /// Asterisk said the channel is gone (`HANGUP` line or a `511` reply).
    pub fn hung_up(&self) -> bool {
        todo!("agi helper")
    }
}
