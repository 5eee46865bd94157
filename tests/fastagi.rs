//! The FastAGI server on loopback against a peer that plays Asterisk by replaying the captured
//! transcripts (tests/fixtures/asterisk/): the voice-password flow, far-end hang-up during STREAM
//! FILE (default and `AGIEXITONHANGUP=yes`), `511` on a dead channel, the connection limit, the
//! command and environment timeouts, a backend that cannot take a session, and shutdown. Every
//! wait is bounded.

#[path = "support/agi_transcript.rs"]
mod agi_transcript;

#[path = "support/agi_peer.rs"]
mod agi_peer;

use std::net::SocketAddr;
use std::time::Duration;

use agi_peer::{replay, replay_on, Replayed};
use agi_transcript::{load, load_side, Chunk, Dir};
use callcode::backend::asterisk::agi::{AgiCommand, AgiReply};
use callcode::backend::asterisk::fastagi::{AgiError, AgiSession, FastAgiServer, FastAgiSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn settings() -> FastAgiSettings {
    FastAgiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..FastAgiSettings::default()
    }
}

async fn start(
    settings: FastAgiSettings,
    capacity: usize,
) -> (FastAgiServer, mpsc::Receiver<AgiSession>) {
    let (tx, rx) = mpsc::channel(capacity);
    let server = timeout(WAIT, FastAgiServer::bind(settings, tx))
        .await
        .unwrap()
        .unwrap();
    (server, rx)
}

async fn next_session(rx: &mut mpsc::Receiver<AgiSession>) -> AgiSession {
    timeout(WAIT, rx.recv())
        .await
        .expect("a session in time")
        .expect("server alive")
}

fn spawn_replay(addr: SocketAddr, chunks: Vec<Chunk>) -> tokio::task::JoinHandle<Replayed> {
    tokio::spawn(async move { timeout(WAIT, replay(addr, &chunks)).await.unwrap().unwrap() })
}

/// The server's commands of a transcript's first `steps` chunks, concatenated.
fn commands_in(chunks: &[Chunk]) -> Vec<u8> {
    chunks
        .iter()
        .filter(|c| c.dir == Dir::ToAsterisk)
        .flat_map(|c| c.bytes.clone())
        .collect()
}

/// The chunks up to and including the first Asterisk chunk that starts with `marker`.
fn prefix_through(chunks: &[Chunk], marker: &[u8]) -> Vec<Chunk> {
    let end = chunks
        .iter()
        .position(|c| c.dir == Dir::FromAsterisk && c.bytes.starts_with(marker))
        .expect("marker in transcript");
    chunks[..=end].to_vec()
}

/// Reads until the server closes; true if it did (EOF or reset) before `WAIT`.
async fn server_closes(stream: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    match timeout(WAIT, stream.read_to_end(&mut sink)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Err(_) => false,
    }
}

async fn connect_with_env(addr: SocketAddr) -> TcpStream {
    let mut stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let env = load_side("callcode-path/agi-voice-vid-voice-44dd", Dir::FromAsterisk);
    let end = env.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    // A refused connection may already be closed by the server; the caller checks for that.
    let _ = stream.write_all(&env[..end]).await;
    stream
}

/// The voice script callcode runs, on both captured voice calls: the commands sent are the
/// captured ones byte for byte and the replies are read as captured.
#[tokio::test]
async fn voice_password_flow_sends_the_captured_commands() {
    for (name, verification) in [
        (
            "callcode-path/agi-voice-vid-voice-44dd",
            Some("vid-voice-44dd"),
        ),
        ("callcode-path/agi-voice-noinherit", None),
    ] {
        let (server, mut rx) = start(settings(), 4).await;
        let t = load(name);
        let peer = spawn_replay(server.local_addr(), t.chunks.clone());

        let mut session = next_session(&mut rx).await;
        assert_eq!(session.env.get("network_script"), Some("voice"));
        assert_eq!(session.env.get("context"), Some("callcode-voice"));
        assert_eq!(session.env.arg(1), Some(verification.unwrap_or("")));
        let var = session
            .command(AgiCommand::GetVariable("VERIFICATION_ID"))
            .await
            .unwrap();
        assert_eq!(var.data.as_deref(), verification, "{name}");
        assert_eq!(var.result, i64::from(verification.is_some()));
        let status = session.command(AgiCommand::ChannelStatus).await.unwrap();
        assert_eq!(status, AgiReply::ok(6));
        let mut endpos = Vec::new();
        for file in ["silence/1", "digits/4", "digits/8", "digits/2", "digits/1"] {
            let reply = session.stream_file(file).await.unwrap();
            assert_eq!(reply.result, 0);
            endpos.push(reply.endpos.unwrap());
        }
        assert_eq!(endpos, [8000, 6560, 5600, 6080, 7360]);
        assert!(!session.hung_up());
        session.hangup().await.unwrap();
        assert!(session.hung_up());
        assert!(session.is_closed());
        assert!(matches!(
            session.command(AgiCommand::Noop).await,
            Err(AgiError::HungUp)
        ));
        drop(session);

        let replayed = timeout(WAIT, peer).await.unwrap().unwrap();
        assert_eq!(replayed.mismatch, None, "{name}");
        assert_eq!(
            replayed.received,
            load_side(name, Dir::ToAsterisk),
            "{name}"
        );
        assert!(replayed.server_closed, "{name}");
        timeout(WAIT, server.shutdown(Duration::from_secs(1)))
            .await
            .unwrap();
    }
}

/// `agi-farhangup-default` replayed in full with the captured script: a missing file on a live
/// channel is a plain `-1`, the far-end hang-up mid-file is `-1 endpos=24160`, the `HANGUP` line
/// arriving between the next command and its `511` is noted and not taken for the reply, and
/// commands that Asterisk still allows on the dead channel work.
#[tokio::test]
async fn far_hangup_default_hangup_line_then_511_on_the_dead_channel() {
    let (server, mut rx) = start(settings(), 4).await;
    let name = "agi-farhangup-default";
    let t = load(name);
    let peer = spawn_replay(server.local_addr(), t.chunks.clone());
    let mut s = next_session(&mut rx).await;
    assert_eq!(s.env.arg(1), Some("default"));

    assert_eq!(
        s.command(AgiCommand::Answer).await.unwrap(),
        AgiReply::ok(0)
    );
    let list = "digits/1&digits/2&digits/3&digits/4&digits/5&digits/6&digits/7&digits/8&digits/9";
    let missing = s.stream_file(list).await.unwrap();
    assert_eq!((missing.result, missing.endpos), (-1, Some(0)));
    assert!(!s.hung_up());
    let cut = s
        .command(AgiCommand::StreamFile {
            file: "tt-monkeys",
            escape_digits: "",
        })
        .await
        .unwrap();
    assert_eq!((cut.result, cut.endpos), (-1, Some(24160)));
    assert!(!s.hung_up(), "the HANGUP line has not arrived yet");
    let dead = s
        .command(AgiCommand::StreamFile {
            file: "tt-monkeys",
            escape_digits: "",
        })
        .await;
    assert!(matches!(dead, Err(AgiError::HungUp)), "{dead:?}");
    assert!(s.hung_up());
    let channel = s.command(AgiCommand::GetVariable("CHANNEL")).await.unwrap();
    assert_eq!(channel.data.as_deref(), Some("PJSIP/sipp-00000015"));
    assert!(matches!(
        s.stream_file("digits/1").await,
        Err(AgiError::HungUp)
    ));
    let say = s
        .command(AgiCommand::SayDigits {
            digits: "1234",
            escape_digits: "",
        })
        .await;
    assert!(matches!(say, Err(AgiError::HungUp)));
    let exec = s
        .command(AgiCommand::Exec {
            application: "Playback",
            options: "digits/1",
        })
        .await;
    assert_eq!(exec.unwrap(), AgiReply::ok(0));
    assert_eq!(s.command(AgiCommand::Noop).await.unwrap(), AgiReply::ok(0));
    drop(s);

    let replayed = timeout(WAIT, peer).await.unwrap().unwrap();
    assert_eq!(replayed.mismatch, None);
    assert_eq!(replayed.received, load_side(name, Dir::ToAsterisk));
    assert!(replayed.server_closed);
}

/// `stream_file` reports the far-end hang-up on the interrupted file itself, before Asterisk's
/// `HANGUP` line, and the backend's drop closes the connection.
#[tokio::test]
async fn stream_file_is_hung_up_when_playback_was_cut() {
    for name in ["agi-farhangup-default", "agi-farhangup-exitonhangup"] {
        let (server, mut rx) = start(settings(), 4).await;
        let chunks = prefix_through(&load(name).chunks, b"200 result=-1 endpos=24160");
        let peer = spawn_replay(server.local_addr(), chunks.clone());
        let mut s = next_session(&mut rx).await;
        s.command(AgiCommand::Answer).await.unwrap();
        let list =
            "digits/1&digits/2&digits/3&digits/4&digits/5&digits/6&digits/7&digits/8&digits/9";
        assert!(
            s.stream_file(list).await.is_ok(),
            "a missing file on a live channel is Ok"
        );
        assert!(
            matches!(s.stream_file("tt-monkeys").await, Err(AgiError::HungUp)),
            "{name}"
        );
        assert!(s.hung_up());
        s.hangup().await.unwrap();
        drop(s);
        let replayed = timeout(WAIT, peer).await.unwrap().unwrap();
        assert_eq!(replayed.mismatch, None);
        assert_eq!(
            replayed.received,
            commands_in(&chunks),
            "{name}: no HANGUP command on a hung-up channel"
        );
        assert!(replayed.server_closed);
    }
}

/// `AGIEXITONHANGUP=yes`: `HANGUP` twice, then Asterisk closes the socket: the command in flight
/// is `Err(HungUp)` (not `Closed`), and so is every later one, at once.
#[tokio::test]
async fn exit_on_hangup_closed_socket_after_hangup_lines_is_hung_up() {
    let (server, mut rx) = start(settings(), 4).await;
    let name = "agi-farhangup-exitonhangup";
    let t = load(name);
    assert!(t.asterisk_closed);
    let addr = server.local_addr();
    let chunks = t.chunks.clone();
    let peer = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        timeout(WAIT, replay_on(&mut stream, &chunks, true))
            .await
            .unwrap()
            .unwrap()
    });
    let mut s = next_session(&mut rx).await;
    s.command(AgiCommand::Answer).await.unwrap();
    let list = "digits/1&digits/2&digits/3&digits/4&digits/5&digits/6&digits/7&digits/8&digits/9";
    s.stream_file(list).await.unwrap();
    let tt = AgiCommand::StreamFile {
        file: "tt-monkeys",
        escape_digits: "",
    };
    assert_eq!(s.command(tt).await.unwrap().endpos, Some(24160));
    let last = s.command(tt).await;
    assert!(matches!(last, Err(AgiError::HungUp)), "{last:?}");
    assert!(s.hung_up());
    assert!(s.is_closed());
    assert!(matches!(
        s.command(AgiCommand::Noop).await,
        Err(AgiError::HungUp)
    ));
    s.hangup().await.unwrap();

    let replayed = timeout(WAIT, peer).await.unwrap().unwrap();
    assert_eq!(replayed.mismatch, None);
    assert_eq!(replayed.received, load_side(name, Dir::ToAsterisk));
}

/// A connection that closes without `HANGUP` is `Closed`.
#[tokio::test]
async fn closed_without_hangup_line_is_closed() {
    let (server, mut rx) = start(settings(), 4).await;
    let mut stream = connect_with_env(server.local_addr()).await;
    let mut s = next_session(&mut rx).await;
    let peer = tokio::spawn(async move {
        let mut line = [0u8; 5];
        stream.read_exact(&mut line).await.unwrap();
        line
    });
    let result = s.command(AgiCommand::Noop).await;
    assert!(matches!(result, Err(AgiError::Closed)), "{result:?}");
    assert!(!s.hung_up());
    assert_eq!(&timeout(WAIT, peer).await.unwrap().unwrap(), b"NOOP\n");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let (server, mut rx) = start(
        FastAgiSettings {
            max_connections: 1,
            ..settings()
        },
        4,
    )
    .await;
    let addr = server.local_addr();
    let _first = connect_with_env(addr).await;
    let held = next_session(&mut rx).await;

    let mut second = connect_with_env(addr).await;
    assert!(
        server_closes(&mut second).await,
        "refused connection closed"
    );
    assert!(
        rx.try_recv().is_err(),
        "no session for the refused connection"
    );

    // The slot comes back when the session is dropped.
    drop(held);
    let mut accepted = None;
    for _ in 0..50 {
        let _third = connect_with_env(addr).await;
        if let Ok(Some(s)) = timeout(Duration::from_millis(200), rx.recv()).await {
            accepted = Some((s, _third));
            break;
        }
    }
    let (s, _stream) = accepted.expect("a connection accepted once the slot is free");
    assert_eq!(s.env.arg(1), Some("vid-voice-44dd"));
}

#[tokio::test]
async fn a_reply_that_never_comes_times_out_and_closes_the_session() {
    let (server, mut rx) = start(
        FastAgiSettings {
            command_timeout_ms: 300,
            ..settings()
        },
        4,
    )
    .await;
    let mut stream = connect_with_env(server.local_addr()).await;
    let mut s = next_session(&mut rx).await;
    let result = timeout(WAIT, s.command(AgiCommand::ChannelStatus))
        .await
        .unwrap();
    assert!(
        matches!(result, Err(AgiError::Timeout(d)) if d == Duration::from_millis(300)),
        "{result:?}"
    );
    assert!(s.is_closed());
    assert!(matches!(
        s.command(AgiCommand::Noop).await,
        Err(AgiError::Closed)
    ));
    let mut got = Vec::new();
    assert!(timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .is_ok());
    assert_eq!(
        got, b"CHANNEL STATUS\n",
        "nothing after the timed-out command"
    );
}

#[tokio::test]
async fn silent_or_garbled_peers_get_no_session() {
    let (server, mut rx) = start(
        FastAgiSettings {
            command_timeout_ms: 300,
            ..settings()
        },
        4,
    )
    .await;
    let addr = server.local_addr();
    let mut silent = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    assert!(server_closes(&mut silent).await);
    let mut garbled = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    garbled.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(server_closes(&mut garbled).await);
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn a_backend_that_cannot_take_the_session_gets_it_closed() {
    let (server, rx) = start(settings(), 1).await;
    let addr = server.local_addr();
    let _queued = connect_with_env(addr).await;
    // Wait until the first session sits in the channel, so the next one finds it full.
    let mut waited = 0;
    while rx.is_empty() && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(rx.len(), 1);
    let mut full = connect_with_env(addr).await;
    assert!(
        server_closes(&mut full).await,
        "closed when the channel is full"
    );

    drop(rx);
    let mut gone = connect_with_env(addr).await;
    assert!(
        server_closes(&mut gone).await,
        "closed when the receiver is gone"
    );
}

/// Shutdown stops accepting at once and lets an open session finish its script within the grace.
#[tokio::test]
async fn shutdown_lets_open_sessions_finish() {
    let (server, mut rx) = start(settings(), 4).await;
    let addr = server.local_addr();
    let name = "callcode-path/agi-voice-vid-voice-44dd";
    let peer = spawn_replay(addr, load(name).chunks);
    let mut s = next_session(&mut rx).await;
    s.command(AgiCommand::GetVariable("VERIFICATION_ID"))
        .await
        .unwrap();

    let server = std::sync::Arc::new(server);
    let shutting = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown(Duration::from_secs(30)).await })
    };
    // New connections are no longer served: refused, or closed without a session.
    let mut refused = false;
    for _ in 0..100 {
        match TcpStream::connect(addr).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(refused, "listener closed");
    assert!(
        !shutting.is_finished(),
        "shutdown waits for the open session"
    );

    s.command(AgiCommand::ChannelStatus).await.unwrap();
    for file in ["silence/1", "digits/4", "digits/8", "digits/2", "digits/1"] {
        s.stream_file(file).await.unwrap();
    }
    s.hangup().await.unwrap();
    drop(s);
    timeout(WAIT, shutting)
        .await
        .expect("shutdown ends once the session is done")
        .unwrap();
    let replayed = timeout(WAIT, peer).await.unwrap().unwrap();
    assert_eq!(replayed.received, load_side(name, Dir::ToAsterisk));
    assert!(rx.try_recv().is_err());
}

/// Sessions still open after the grace period are closed: the command in flight fails with
/// `Closed` and Asterisk sees the connection end.
#[tokio::test]
async fn shutdown_closes_sessions_left_open_after_the_grace() {
    let (server, mut rx) = start(settings(), 4).await;
    let mut stream = connect_with_env(server.local_addr()).await;
    let mut s = next_session(&mut rx).await;
    let in_flight = tokio::spawn(async move {
        let result = s.stream_file("tt-monkeys").await;
        (result, s)
    });
    // The command is on the wire before shutdown starts.
    let mut line = [0u8; 26];
    timeout(WAIT, stream.read_exact(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&line, b"STREAM FILE tt-monkeys \"\"\n");

    timeout(WAIT, server.shutdown(Duration::from_millis(100)))
        .await
        .unwrap();
    let (result, s) = timeout(WAIT, in_flight).await.unwrap().unwrap();
    assert!(matches!(result, Err(AgiError::Closed)), "{result:?}");
    assert!(s.is_closed());
    assert!(server_closes(&mut stream).await);
}

/// A command whose future is dropped midway (e.g. lost in a `select!`) leaves its reply on the
/// wire; the next command must not take it for its own.
#[tokio::test]
async fn an_abandoned_command_puts_the_session_out_of_step() {
    let (server, mut rx) = start(settings(), 4).await;
    let mut stream = connect_with_env(server.local_addr()).await;
    let mut s = next_session(&mut rx).await;
    let abandoned = timeout(
        Duration::from_millis(50),
        s.command(AgiCommand::ChannelStatus),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "no reply was sent, so the command was still waiting"
    );
    stream.write_all(b"200 result=6\n").await.unwrap();
    let next = s.command(AgiCommand::GetVariable("CHANNEL")).await;
    assert!(matches!(next, Err(AgiError::Protocol(_))), "{next:?}");
    assert!(s.is_closed());
    let mut got = Vec::new();
    assert!(timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .is_ok());
    assert_eq!(
        got, b"CHANNEL STATUS\n",
        "the second command was never sent"
    );
}
