//! Plays Asterisk's side of a FastAGI connection by replaying a captured transcript: connects as
//! Asterisk does, sends each `C>S` chunk as captured (same bytes, same read boundaries), and for
//! each `S>C` chunk reads exactly that many bytes and checks they are what Asterisk received.
//! After the last step it reads until the server closes.
//!
//! Shared by tests/fastagi.rs and benches/fastagi.rs through `#[path]` (with agi_transcript.rs).
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::agi_transcript::{Chunk, Dir};

/// What the replay saw.
#[derive(Debug)]
pub struct Replayed {
    /// Every byte the server sent, in order.
    pub received: Vec<u8>,
    /// The server sent something other than the transcript's next command; the replay stopped.
    pub mismatch: Option<String>,
    /// The server closed the connection after the replayed steps.
    pub server_closed: bool,
}

/// `chunks` with every occurrence of `from` replaced by `to` in Asterisk's chunks (e.g. a
/// per-session `agi_arg_1` and the `GET VARIABLE` reply that echoes it).
pub fn substitute(chunks: &[Chunk], from: &str, to: &str) -> Vec<Chunk> {
    chunks
        .iter()
        .map(|c| match c.dir {
            Dir::FromAsterisk => Chunk {
                dir: c.dir,
                bytes: replace(&c.bytes, from.as_bytes(), to.as_bytes()),
            },
            Dir::ToAsterisk => c.clone(),
        })
        .collect()
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + to.len());
    let mut rest = haystack;
    while let Some(at) = (!from.is_empty())
        .then(|| rest.windows(from.len()).position(|w| w == from))
        .flatten()
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Connects to `addr` and replays `chunks`, then waits for the server to close.
pub async fn replay(addr: SocketAddr, chunks: &[Chunk]) -> std::io::Result<Replayed> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    replay_on(&mut stream, chunks, false).await
}

/// Replays `chunks` on an open connection. With `asterisk_closes` the peer closes the socket
/// itself after the last step, as Asterisk did with `AGIEXITONHANGUP=yes`.
pub async fn replay_on(
    stream: &mut TcpStream,
    chunks: &[Chunk],
    asterisk_closes: bool,
) -> std::io::Result<Replayed> {
    let mut received = Vec::new();
    let mut expected = Vec::new();
    for chunk in chunks {
        match chunk.dir {
            Dir::FromAsterisk => stream.write_all(&chunk.bytes).await?,
            Dir::ToAsterisk => {
                expected.resize(chunk.bytes.len(), 0);
                let n = read_full(stream, &mut expected).await?;
                received.extend_from_slice(&expected[..n]);
                if expected[..n] != chunk.bytes[..] {
                    return Ok(Replayed {
                        mismatch: Some(format!(
                            "expected {:?}, got {:?}",
                            String::from_utf8_lossy(&chunk.bytes),
                            String::from_utf8_lossy(&expected[..n])
                        )),
                        received,
                        server_closed: n < chunk.bytes.len(),
                    });
                }
            }
        }
    }
    if asterisk_closes {
        stream.shutdown().await?;
        return Ok(Replayed {
            received,
            mismatch: None,
            server_closed: false,
        });
    }
    let mut rest = Vec::new();
    let server_closed = match stream.read_to_end(&mut rest).await {
        Ok(_) => true,
        // The server dropped the socket with our last bytes unread (the trailing `HANGUP`).
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) => return Err(e),
    };
    received.extend_from_slice(&rest);
    Ok(Replayed {
        received,
        mismatch: None,
        server_closed,
    })
}

/// Reads until `buf` is full or the server closes; returns how much was read.
async fn read_full(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
