//! A test FreeSWITCH on loopback: an ESL server that authenticates and answers like the captures
//! in tests/fixtures/freeswitch, and on `bgapi originate` replays the FreeSWITCH side of the
//! captured scenario chosen by the dialled number's last four digits, then *follows* callcode's
//! commands with the captured answers to the same commands (`sendmsg` playback → the capture's
//! playback events, `uuid_kill` → the flash-cancel capture's hang-up, `sendmsg` hangup → the
//! answered capture's hang-up).
//!
//! Replayed bytes are the captured ones with the captured channel UUID, Job-UUID, verification
//! variable, dialled number and Application-UUID replaced by callcode's, and every Content-Length
//! recomputed. Captured delays are divided by 20 (at most 400 ms). Cases without a transcript
//! (gateway down, uuid_exists, the socket cut) are built from captured messages and the fixture
//! README's facts, named where used.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "test-secret";

/// Dialled-number suffix → capture.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("0010", "esl-inbound-10-answered-plain"),
    ("0020", "esl-inbound-20-busy486-plain"),
    ("0030", "esl-inbound-30-noanswer-timeout-plain"),
    ("0040", "esl-inbound-40-reject403-plain"),
    ("0041", "esl-inbound-41-decline603-plain"),
    ("0044", "esl-inbound-44-notfound404-plain"),
    ("0045", "esl-inbound-45-unreachable-port-plain"),
    ("0051", "esl-inbound-51-redirect302-followed-plain"),
    ("0053", "esl-inbound-53-forward181-watchheaders-plain"),
    (
        "0062",
        "esl-inbound-62-early183-busy-ignore-early-media-plain",
    ),
    ("0070", "esl-inbound-70-flashcall-cancel-plain"),
    ("0080", "esl-inbound-80-remote-bye-plain"),
    (BYE_DURING_PLAYBACK, "esl-inbound-80-remote-bye-plain"),
    ("0095", "esl-inbound-95-outbound-controller-1"),
    // The socket app as FreeSWITCH runs it when its argument was not quoted (static mode).
    ("0097", "esl-inbound-97-outbound-controller-static-1"),
];

/// Suffix whose originate fails with `-ERR GATEWAY_DOWN` and no channel.
pub const GATEWAY_DOWN: &str = "0609";

/// Suffix of the remote-BYE capture (-80-) whose far end hangs up while callcode's
/// `BYE_AT_PROMPT`th prompt plays: the capture's own CHANNEL_HANGUP .. CHANNEL_HANGUP_COMPLETE
/// are held back until that playback is asked for, and answered by them instead of its playback
/// events (in -96- the hang-up, too, cut a running playback short).
pub const BYE_DURING_PLAYBACK: &str = "0081";
pub const BYE_AT_PROMPT: usize = 3;

/// The number the captures dialled, the ANI and the custom variable they set.
const CAPTURED_NUMBER: &str = "79990001122";
const CAPTURED_VAR: &str = "some_custom_var";
const CAPTURED_VAR_VALUE: &str = "otp-4821";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/freeswitch")
}

#[derive(Debug, Clone)]
struct Block {
    to_client: bool,
    t: f64,
    bytes: Vec<u8>,
}

fn transcript(name: &str) -> Vec<Block> {
    let data = std::fs::read(fixtures().join(format!("{name}.txt"))).expect("transcript");
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let end = data[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(data.len(), |i| pos + i);
        let line = String::from_utf8_lossy(&data[pos..end]).to_string();
        pos = end + 1;
        if let Some(rest) = line.strip_prefix("#### ") {
            let mut parts = rest.split(' ');
            let dir = parts.next().unwrap();
            let t: f64 = parts
                .next()
                .unwrap()
                .trim_start_matches("t=+")
                .parse()
                .unwrap();
            let len: usize = rest.rsplit("len=").next().unwrap().parse().unwrap();
            out.push(Block {
                to_client: dir == "S->C",
                t,
                bytes: data[pos..pos + len].to_vec(),
            });
            pos += len + 1;
        }
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A header's value in a block (first match, raw).
fn header(block: &[u8], name: &str) -> Option<String> {
    let t = text(block);
    let prefix = format!("{name}: ");
    t.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        return hay.to_vec();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Re-frames a message after substitution: the outer Content-Length becomes the body's length,
/// and a plain event's inner Content-Length its own body's (fact 6).
fn reframe(msg: &[u8]) -> Vec<u8> {
    let Some(split) = msg.windows(2).position(|w| w == b"\n\n") else {
        return msg.to_vec();
    };
    let head = text(&msg[..split]);
    let body = &msg[split + 2..];
    if !head.lines().any(|l| l.starts_with("Content-Length: ")) {
        return msg.to_vec();
    }
    let mut body = body.to_vec();
    if head.contains("text/event-plain") {
        if let Some(inner) = body.windows(2).position(|w| w == b"\n\n") {
            let ih = text(&body[..inner]);
            if ih.lines().any(|l| l.starts_with("Content-Length: ")) {
                let rest = body[inner + 2..].to_vec();
                let ih: Vec<String> = ih
                    .lines()
                    .map(|l| {
                        if l.starts_with("Content-Length: ") {
                            format!("Content-Length: {}", rest.len())
                        } else {
                            l.to_string()
                        }
                    })
                    .collect();
                body = format!("{}\n\n", ih.join("\n")).into_bytes();
                body.extend_from_slice(&rest);
            }
        }
    }
    let head: Vec<String> = head
        .lines()
        .map(|l| {
            if l.starts_with("Content-Length: ") {
                format!("Content-Length: {}", body.len())
            } else {
                l.to_string()
            }
        })
        .collect();
    let mut out = format!("{}\n\n", head.join("\n")).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The S->C blocks of a capture cut into segments: the one answering the originate, then one
/// per later client command, keyed by what that command was.
#[derive(Debug, Clone)]
struct Scenario {
    channel: String,
    job: String,
    originate: Vec<Block>,
    follow: HashMap<&'static str, Vec<Block>>,
    /// Application-UUID and file of the captured playback the `playback` segment answers.
    playback_app_uuid: Option<String>,
    playback_file: Option<String>,
}

fn command_kind(c: &str) -> Option<&'static str> {
    if c == "connect" {
        Some("connect")
    } else if c == "myevents" {
        Some("myevents")
    } else if c == "linger" {
        Some("linger")
    } else if c.starts_with("api uuid_kill") {
        Some("kill")
    } else if c.starts_with("sendmsg") && c.contains("call-command: hangup") {
        Some("hangup")
    } else if c.starts_with("sendmsg") && c.contains("execute-app-name: playback\n") {
        Some("playback")
    } else {
        None
    }
}

fn scenario(name: &str) -> Scenario {
    let blocks = transcript(name);
    let bg = blocks
        .iter()
        .position(|b| !b.to_client && text(&b.bytes).starts_with("bgapi originate"))
        .expect("originate in capture");
    let bg_text = text(&blocks[bg].bytes);
    // The capture's own Job-UUID, or the one FreeSWITCH chose and named in its reply (-95-).
    let job = header(&blocks[bg].bytes, "Job-UUID")
        .or_else(|| header(&blocks[bg + 1].bytes, "Job-UUID"))
        .expect("captured Job-UUID");
    let channel = bg_text
        .split("origination_uuid=")
        .nth(1)
        .map(|s| s[..36].to_string())
        .expect("captured origination_uuid");
    let segments = segments(&blocks[bg..]);
    let follow = Follow::of(&segments[1..]);
    Scenario {
        channel,
        job,
        originate: segments[0].1.clone(),
        follow: follow.segments,
        playback_app_uuid: follow.playback_app_uuid,
        playback_file: follow.playback_file,
    }
}

/// Blocks from a client command on, cut at every client command: (command, FreeSWITCH's blocks
/// after it).
fn segments(blocks: &[Block]) -> Vec<(String, Vec<Block>)> {
    let mut out: Vec<(String, Vec<Block>)> = Vec::new();
    for b in blocks {
        if b.to_client {
            if let Some(last) = out.last_mut() {
                last.1.push(b.clone());
            }
        } else {
            out.push((text(&b.bytes).trim_end().to_string(), Vec::new()));
        }
    }
    out
}

/// FreeSWITCH's answer to each kind of command, as first captured.
struct Follow {
    segments: HashMap<&'static str, Vec<Block>>,
    playback_app_uuid: Option<String>,
    playback_file: Option<String>,
}

impl Follow {
    fn of(segments: &[(String, Vec<Block>)]) -> Follow {
        let mut f = Follow {
            segments: HashMap::new(),
            playback_app_uuid: None,
            playback_file: None,
        };
        for (cmd, blocks) in segments {
            let Some(kind) = command_kind(cmd) else {
                continue;
            };
            if f.segments.contains_key(kind) {
                continue;
            }
            if kind == "playback" {
                f.playback_file = header(cmd.as_bytes(), "execute-app-arg");
                f.playback_app_uuid = blocks.iter().find_map(|b| {
                    let t = text(&b.bytes);
                    t.contains("Event-Name: CHANNEL_EXECUTE_COMPLETE")
                        .then(|| header(&b.bytes, "Application-UUID"))
                        .flatten()
                });
            }
            f.segments.insert(kind, blocks.clone());
        }
        f
    }
}

/// A message with callcode's identifiers in place of the captured ones.
fn substitute(bytes: &[u8], subs: &[(String, String)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (from, to) in subs {
        out = replace_all(&out, from.as_bytes(), to.as_bytes());
    }
    reframe(&out)
}

/// One thing callcode sent, as the peer read it.
#[derive(Debug, Clone)]
pub struct Received {
    pub connection: usize,
    pub text: String,
}

#[derive(Debug, Clone)]
struct Channel {
    scenario: Option<Scenario>,
    /// callcode's identifiers: channel UUID, Job-UUID, verification id, dialled number.
    ids: Ids,
    alive: bool,
    /// Playbacks asked for so far.
    playbacks: usize,
    /// The hang-up held back for `BYE_DURING_PLAYBACK`.
    bye: Option<Vec<Block>>,
}

#[derive(Debug, Clone)]
struct Ids {
    uuid: String,
    job: String,
    vid: String,
    number: String,
}

/// Substitutions that put callcode's identifiers into a capture's messages.
fn subs_for(sc: &Scenario, ids: &Ids) -> Vec<(String, String)> {
    vec![
        (sc.channel.clone(), ids.uuid.clone()),
        (sc.job.clone(), ids.job.clone()),
        (
            CAPTURED_VAR.to_string(),
            "callcode_verification_id".to_string(),
        ),
        (CAPTURED_VAR_VALUE.to_string(), ids.vid.clone()),
        (CAPTURED_NUMBER.to_string(), ids.number.clone()),
    ]
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    channels: HashMap<String, Channel>,
    /// Where events go: the connection that subscribed last.
    current: Option<mpsc::UnboundedSender<Vec<u8>>>,
    connections: Vec<JoinHandle<()>>,
    auths: usize,
    /// Channels the next cut makes disappear.
    vanish_on_cut: Vec<String>,
    /// A hung FreeSWITCH: commands are read and never answered.
    muted: bool,
    /// (channel, Event-Name) of every event handed to the event connection's writer, in order.
    emitted: Vec<(String, String)>,
}

pub struct Peer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(s) = self.state.lock() {
            for c in &s.connections {
                c.abort();
            }
        }
    }
}

fn reply(text: &str) -> Vec<u8> {
    format!("Content-Type: command/reply\nReply-Text: {text}\n\n").into_bytes()
}

fn api_response(body: &str) -> Vec<u8> {
    format!(
        "Content-Type: api/response\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Fact 12: the notice after `exit`.
const DISCONNECT: &[u8] = b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\nDisconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";

impl Peer {
    pub async fn start() -> Peer {
        Peer::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> Peer {
        let listener = TcpListener::bind(addr).await.expect("bind peer");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                let h = tokio::spawn(connection(stream, n, st.clone()));
                st.lock().unwrap().connections.push(h);
            }
        });
        Peer {
            addr,
            state,
            accept,
        }
    }

    /// Everything callcode sent so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn auths(&self) -> usize {
        self.state.lock().unwrap().auths
    }

    /// Commands whose text contains `needle`.
    pub fn sent_containing(&self, needle: &str) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.text.contains(needle))
            .map(|r| r.text)
            .collect()
    }

    /// The `execute-app-arg` of every playback for `channel`, in order.
    pub fn playbacks(&self, channel: &str) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| {
                r.text.starts_with(&format!("sendmsg {channel}"))
                    && r.text.contains("execute-app-name: playback")
            })
            .filter_map(|r| header(r.text.as_bytes(), "execute-app-arg"))
            .collect()
    }

    /// What callcode said on outbound (`socket` application) connections, in order.
    pub fn outbound_commands(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.connection == 0)
            .map(|r| r.text)
            .collect()
    }

    /// Channel UUIDs callcode originated, by dialled number.
    pub fn originated(&self) -> Vec<(String, String)> {
        self.received()
            .into_iter()
            .filter(|r| r.text.starts_with("bgapi originate"))
            .filter_map(|r| {
                let uuid = r
                    .text
                    .split("origination_uuid=")
                    .nth(1)?
                    .get(..36)?
                    .to_string();
                let number = r
                    .text
                    .split("/carrier/")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .to_string();
                Some((number, uuid))
            })
            .collect()
    }

    /// Waits until `f` holds for what callcode sent, or panics after `secs`.
    pub async fn wait_until(&self, secs: u64, what: &str, f: impl Fn(&Peer) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !f(self) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "peer: {what} did not happen within {secs} s; got {:#?}",
                    self.received()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether event `name` of `channel` went out on the event connection (its writer sends
    /// everything it was given before a cut closes the socket).
    pub fn emitted(&self, channel: &str, name: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .emitted
            .iter()
            .any(|(c, n)| c == channel && n == name)
    }

    /// Stops answering anything (a hung switch), or starts again.
    pub fn mute(&self, muted: bool) {
        self.state.lock().unwrap().muted = muted;
    }

    /// FreeSWITCH is shut down and started again (esl-inbound-99): the SHUTDOWN event and the
    /// disconnect notice go out, the connections close, and new ones are accepted as before.
    /// Channels survive only in this fake (a real restart ends them): `uuid_exists` says so.
    pub fn restart(&self) {
        let blocks = transcript("esl-inbound-99-shutdown");
        let tail: Vec<Vec<u8>> = blocks
            .iter()
            .filter(|b| {
                let t = text(&b.bytes);
                b.to_client
                    && (t.contains("Event-Name: SHUTDOWN") || t.contains("text/disconnect-notice"))
            })
            .map(|b| b.bytes.clone())
            .collect();
        assert_eq!(tail.len(), 2, "SHUTDOWN and the notice");
        let mut s = self.state.lock().unwrap();
        if let Some(tx) = s.current.take() {
            for b in tail {
                let _ = tx.send(b);
            }
        }
    }

    /// FreeSWITCH goes away for good: no more connections, every current one cut.
    pub fn stop(&self) {
        self.accept.abort();
        self.cut(&[]);
    }

    /// Cuts every connection, as a network failure would; `vanish` channels end during the gap
    /// (their events are lost, and `uuid_exists` says false afterwards).
    pub fn cut(&self, vanish: &[String]) {
        let mut s = self.state.lock().unwrap();
        s.vanish_on_cut = vanish.to_vec();
        for v in vanish {
            if let Some(c) = s.channels.get_mut(v) {
                c.alive = false;
            }
        }
        s.current = None;
        for c in s.connections.drain(..) {
            c.abort();
        }
    }
}

fn emit(state: &Arc<Mutex<State>>, bytes: Vec<u8>) {
    let mut s = state.lock().unwrap();
    if let Some(tx) = &s.current {
        let name = header(&bytes, "Event-Name");
        let channel = header(&bytes, "Unique-ID");
        if tx.send(bytes).is_ok() {
            if let (Some(c), Some(n)) = (channel, name) {
                s.emitted.push((c, n));
            }
        }
    }
}

/// Plays a segment's blocks with compressed delays in the background.
fn play_segment(
    state: Arc<Mutex<State>>,
    channel: String,
    blocks: Vec<Block>,
    subs: Vec<(String, String)>,
) {
    tokio::spawn(play_blocks(state, channel, blocks, subs, None));
}

/// Plays blocks with compressed delays to the event connection (or `to`); stops early if the
/// channel disappears.
async fn play_blocks(
    state: Arc<Mutex<State>>,
    channel: String,
    blocks: Vec<Block>,
    subs: Vec<(String, String)>,
    to: Option<mpsc::UnboundedSender<Vec<u8>>>,
) {
    {
        let mut last = blocks.first().map_or(0.0, |b| b.t);
        for b in blocks {
            let gap = ((b.t - last).max(0.0) / 20.0).min(0.4);
            last = b.t;
            if gap > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            }
            let alive = state
                .lock()
                .unwrap()
                .channels
                .get(&channel)
                .is_none_or(|c| c.alive);
            if !alive {
                return;
            }
            let msg = substitute(&b.bytes, &subs);
            if to.is_none() && text(&msg).contains("Event-Name: CHANNEL_HANGUP_COMPLETE") {
                if let Some(c) = state.lock().unwrap().channels.get_mut(&channel) {
                    c.alive = false;
                }
            }
            match &to {
                Some(tx) => {
                    let _ = tx.send(msg);
                }
                None => emit(&state, msg),
            }
        }
    }
}

async fn connection(stream: TcpStream, n: usize, state: Arc<Mutex<State>>) {
    let (mut r, mut w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            // Fact 12: the socket closes after the notice.
            let last = b.starts_with(b"Content-Type: text/disconnect-notice");
            if w.write_all(&b).await.is_err() || last {
                return;
            }
        }
    });
    let _ = tx.send(b"Content-Type: auth/request\n\n".to_vec());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut authed = false;
    loop {
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let cmd = text(&buf[..end]);
            buf.drain(..end + 2);
            state.lock().unwrap().received.push(Received {
                connection: n,
                text: cmd.clone(),
            });
            if state.lock().unwrap().muted {
                continue;
            }
            if !authed {
                // Fact 2.
                if cmd == format!("auth {PASSWORD}") {
                    authed = true;
                    state.lock().unwrap().auths += 1;
                    let _ = tx.send(reply("+OK accepted"));
                } else {
                    let _ = tx.send(reply("-ERR invalid"));
                    let _ = tx.send(DISCONNECT.to_vec());
                    drop(tx);
                    let _ = writer.await;
                    return;
                }
                continue;
            }
            if !command(&cmd, &tx, &state) {
                drop(tx);
                let _ = writer.await;
                return;
            }
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// Answers one command; false to close the connection.
fn command(cmd: &str, tx: &mpsc::UnboundedSender<Vec<u8>>, state: &Arc<Mutex<State>>) -> bool {
    let first = cmd.lines().next().unwrap_or("");
    if first.starts_with("event plain") {
        // Fact 15.
        state.lock().unwrap().current = Some(tx.clone());
        let _ = tx.send(reply("+OK event listener enabled plain"));
    } else if first == "exit" {
        let _ = tx.send(reply("+OK bye"));
        let _ = tx.send(DISCONNECT.to_vec());
        return false;
    } else if first == "api status" {
        let status = transcript("esl-inbound-01-basics")
            .into_iter()
            .find(|b| b.to_client && text(&b.bytes).contains("is ready"))
            .expect("captured status");
        let _ = tx.send(status.bytes);
    } else if let Some(uuid) = first.strip_prefix("api uuid_exists ") {
        // Not captured: mod_commands' uuid_exists answers `true` or `false` in an api/response
        // (FreeSWITCH docs, mod_commands "uuid_exists").
        let alive = state
            .lock()
            .unwrap()
            .channels
            .get(uuid.trim())
            .is_some_and(|c| c.alive);
        let _ = tx.send(api_response(if alive { "true" } else { "false" }));
    } else if let Some(rest) = first.strip_prefix("api uuid_kill ") {
        let uuid = rest.split(' ').next().unwrap_or("").to_string();
        follow(state, tx, &uuid, "kill", None, || {
            api_response("-ERR No such channel!\n")
        });
    } else if let Some(uuid) = first.strip_prefix("sendmsg ") {
        let uuid = uuid.trim().to_string();
        if cmd.contains("call-command: hangup") {
            follow(state, tx, &uuid, "hangup", None, || {
                reply(&format!("-ERR invalid session id [{uuid}]"))
            });
        } else {
            let arg = header(cmd.as_bytes(), "execute-app-arg").unwrap_or_default();
            let event_uuid = header(cmd.as_bytes(), "Event-UUID").unwrap_or_default();
            follow(
                state,
                tx,
                &uuid,
                "playback",
                Some((event_uuid, arg)),
                || reply(&format!("-ERR invalid session id [{uuid}]")),
            );
        }
    } else if first.starts_with("bgapi originate") {
        originate(cmd, tx, state);
    } else {
        let _ = tx.send(reply("-ERR command not found"));
    }
    true
}

/// Answers a command on a channel with the capture's segment for it, or `gone` when the channel
/// does not exist (any more).
fn follow(
    state: &Arc<Mutex<State>>,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    uuid: &str,
    kind: &str,
    playback: Option<(String, String)>,
    gone: impl Fn() -> Vec<u8>,
) {
    if kind == "playback" {
        let bye = {
            let mut s = state.lock().unwrap();
            s.channels
                .get_mut(uuid)
                .filter(|c| c.alive)
                .and_then(|c| {
                    c.playbacks += 1;
                    (c.playbacks == BYE_AT_PROMPT)
                        .then(|| c.bye.take())
                        .flatten()
                })
                .map(|bye| {
                    let c = &s.channels[uuid];
                    (bye, subs_for(c.scenario.as_ref().unwrap(), &c.ids))
                })
        };
        if let Some((bye, subs)) = bye {
            // Fact 14: the execute is acknowledged with `+OK` before anything plays.
            let _ = tx.send(reply("+OK"));
            play_segment(state.clone(), uuid.to_string(), bye, subs);
            return;
        }
    }
    let found = {
        let s = state.lock().unwrap();
        s.channels.get(uuid).filter(|c| c.alive).and_then(|c| {
            let own = c.scenario.as_ref()?;
            // The segment comes with the ids of the capture it was taken from.
            let sc = if own.follow.contains_key(kind) {
                own.clone()
            } else {
                donor(kind)
            };
            let seg = sc.follow.get(kind).cloned()?;
            let mut subs = subs_for(&sc, &c.ids);
            if let Some((event_uuid, arg)) = &playback {
                if let Some(a) = &sc.playback_app_uuid {
                    subs.push((a.clone(), event_uuid.clone()));
                }
                if let Some(f) = &sc.playback_file {
                    subs.push((f.clone(), arg.clone()));
                }
            }
            Some((seg, subs))
        })
    };
    let Some((mut seg, subs)) = found else {
        let _ = tx.send(gone());
        return;
    };
    // The first block is the reply to this very command: it goes on this connection now.
    if !seg.is_empty() {
        let first = seg.remove(0);
        let _ = tx.send(substitute(&first.bytes, &subs));
    }
    play_segment(state.clone(), uuid.to_string(), seg, subs);
}

/// Scenarios whose capture never got this command borrow it from the one that did: a kill before
/// answer from the flash-cancel capture (-70-), playback and hangup from the answered one (-10-).
fn donor(kind: &str) -> Scenario {
    scenario(match kind {
        "kill" => "esl-inbound-70-flashcall-cancel-plain",
        _ => "esl-inbound-10-answered-plain",
    })
}

fn originate(cmd: &str, tx: &mpsc::UnboundedSender<Vec<u8>>, state: &Arc<Mutex<State>>) {
    let job = header(cmd.as_bytes(), "Job-UUID").unwrap_or_default();
    let first = cmd.lines().next().unwrap_or("");
    let uuid = first
        .split("origination_uuid=")
        .nth(1)
        .and_then(|s| s.get(..36))
        .unwrap_or("")
        .to_string();
    let vid = first
        .split("callcode_verification_id=")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .unwrap_or("")
        .to_string();
    let number = first
        .split("/carrier/")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("")
        .to_string();
    // Fact 5: the reply names our Job-UUID.
    let _ = tx.send(
        format!(
            "Content-Type: command/reply\nReply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n"
        )
        .into_bytes(),
    );
    if number.ends_with(GATEWAY_DOWN) {
        // No transcript: the README's gotcha says GATEWAY_DOWN arrives only as the BACKGROUND_JOB
        // body, with no channel events; the message is -01-'s INVALID_PROFILE job result.
        let captured = transcript("esl-inbound-01-basics")
            .into_iter()
            .find(|b| b.to_client && text(&b.bytes).contains("-ERR INVALID_PROFILE"))
            .expect("captured INVALID_PROFILE job");
        let captured_job = text(&captured.bytes)
            .lines()
            .find_map(|l| l.strip_prefix("Job-UUID: ").map(str::to_string))
            .unwrap();
        let subs = vec![
            (captured_job, job),
            ("INVALID_PROFILE".to_string(), "GATEWAY_DOWN".to_string()),
        ];
        emit(state, substitute(&captured.bytes, &subs));
        return;
    }
    let Some((_, name)) = SCENARIOS.iter().find(|(s, _)| number.ends_with(s)) else {
        panic!("peer: no scenario for {number}");
    };
    let sc = scenario(name);
    let ids = Ids {
        uuid: uuid.clone(),
        job,
        vid,
        number,
    };
    let subs = subs_for(&sc, &ids);
    let mut blocks = sc.originate.clone();
    // The reply to bgapi was sent above.
    if blocks
        .first()
        .is_some_and(|b| text(&b.bytes).starts_with("Content-Type: command/reply"))
    {
        blocks.remove(0);
    }
    let socket = first
        .split("'&socket(")
        .nth(1)
        .and_then(|s| s.strip_suffix(" async full)'"))
        .map(str::to_string);
    let bye = if ids.number.ends_with(BYE_DURING_PLAYBACK) {
        let at = blocks
            .iter()
            .position(|b| text(&b.bytes).contains("Event-Name: CHANNEL_HANGUP\n"))
            .expect("hang-up in -80-");
        Some(blocks.split_off(at))
    } else {
        None
    };
    state.lock().unwrap().channels.insert(
        uuid.clone(),
        Channel {
            scenario: Some(sc),
            ids,
            alive: true,
            playbacks: 0,
            bye,
        },
    );
    match socket {
        None => play_segment(state.clone(), uuid, blocks, subs),
        Some(addr) => {
            // -95-: the inbound side sees the call up to its answer and job result; then the
            // socket app connects out (-outbound-01-), and the inbound side sees the hang-up.
            let answered = blocks
                .iter()
                .position(|b| text(&b.bytes).contains("Event-Name: BACKGROUND_JOB"))
                .expect("job result in -95-");
            let hangup = blocks
                .iter()
                .position(|b| text(&b.bytes).contains("Event-Name: CHANNEL_HANGUP\n"))
                .expect("hang-up in -95-");
            let tail = blocks[hangup..].to_vec();
            let outbound = if name.contains("static") {
                "esl-outbound-03-static-mode-unquoted-args"
            } else {
                "esl-outbound-01-answer-playback-linger"
            };
            blocks.truncate(answered + 1);
            let state = state.clone();
            tokio::spawn(async move {
                play_blocks(state.clone(), uuid.clone(), blocks, subs.clone(), None).await;
                outbound_session(state.clone(), outbound, &addr, &uuid, &subs).await;
                play_blocks(state, uuid, tail, subs, None).await;
            });
        }
    }
}

/// FreeSWITCH's `socket` application in async full mode, as in esl-outbound-01: connects to
/// callcode, answers `connect`/`myevents`/`linger`, follows playbacks and the hang-up, then
/// closes after the linger notice. Returns when the session is over.
async fn outbound_session(
    state: Arc<Mutex<State>>,
    capture: &str,
    addr: &str,
    uuid: &str,
    subs: &[(String, String)],
) {
    // The outbound capture's channel is its inbound controller's, so `subs` covers its ids.
    let blocks = transcript(capture);
    let follow = Follow::of(&segments(&blocks));
    let subs = subs.to_vec();
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { return };
                let done = text(&out).contains("text/disconnect-notice");
                if stream.write_all(&out).await.is_err() || done {
                    return;
                }
            }
            cmd = read_command(&mut stream, &mut buf) => {
                let Some(cmd) = cmd else { return };
                state.lock().unwrap().received.push(Received { connection: 0, text: cmd.clone() });
                let Some(kind) = command_kind(&cmd) else {
                    let _ = tx.send(reply("-ERR command not found"));
                    continue;
                };
                let mut subs = subs.clone();
                if kind == "playback" {
                    let arg = header(cmd.as_bytes(), "execute-app-arg").unwrap_or_default();
                    let event_uuid = header(cmd.as_bytes(), "Event-UUID").unwrap_or_default();
                    if let Some(a) = &follow.playback_app_uuid {
                        subs.push((a.clone(), event_uuid));
                    }
                    if let Some(f) = &follow.playback_file {
                        subs.push((f.clone(), arg));
                    }
                }
                let seg = follow.segments.get(kind).cloned().unwrap_or_default();
                let tx = tx.clone();
                let (state, uuid) = (state.clone(), uuid.to_string());
                tokio::spawn(play_blocks(state, uuid, seg, subs, Some(tx)));
            }
        }
    }
}

/// A configuration pointing callcode at `peers` (one FreeSWITCH server each), with the test
/// timings and sandbox-like account of `sandbox_config`.
pub fn freeswitch_config(
    peers: &[SocketAddr],
    extra_accounts: &str,
    extra_settings: &str,
    timings: &str,
) -> String {
    let servers: String = peers
        .iter()
        .map(|a| {
            format!(
                "\n[[backends.settings.servers]]\naddress = \"{a}\"\npassword = \"{PASSWORD}\"\n"
            )
        })
        .collect();
    super::sandbox_config(extra_accounts, timings, 5)
        .replace("backend = \"sandbox\"", "backend = \"fs\"")
        .replace(
            "[[backends]]\nname = \"sandbox\"\nkind = \"sandbox\"\n[backends.settings]\nring_after_ms = 100\nanswer_after_ms = 400\n",
            &format!(
                "[[backends]]\nname = \"fs\"\nkind = \"freeswitch\"\n[backends.settings]\nendpoint = \"sofia/gateway/carrier/{{number}}\"\nsounds_dir = \"/usr/share/callcode/sounds\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 200\n{extra_settings}\n{servers}"
            ),
        )
}

/// Reads everything one outbound connection says, for the socket-mode peer.
pub async fn read_command(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let cmd = text(&buf[..end]);
            buf.drain(..end + 2);
            return Some(cmd);
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}
