//! A test Asterisk on loopback: an AMI server that replays the captured Asterisk 22 event streams
//! of `tests/fixtures/asterisk/callcode-path/` for the call callcode originates, and a FastAGI
//! client that connects to callcode's FastAGI port as Asterisk's `AGI()` does.
//!
//! What it sends is the captured bytes with only these substitutions: the capture's ChannelId,
//! OtherChannelId, VERIFICATION_ID, dialled number, ANI and Originate ActionID become the ones
//! callcode sent. Delays between messages are the captured ones, compressed ten times. It follows
//! callcode's actions: an AMI `Hangup` of the call's ChannelId at any point stops the replay and
//! emits what Asterisk sent after the captured flash hang-up (`ami-callcode-flash-hangup`, after the
//! client's `Action: Hangup`); FastAGI commands are answered like `agi-voice-vid-voice-44dd`.
//! Events are filtered by the login's `Events:` classes against each event's `Privilege:`, as
//! Asterisk does.
//!
//! The scenario is chosen by the dialled number's last three digits:
//!
//! | digits | scenario | source |
//! |---|---|---|
//! | 171 | answers; voice prompts over FastAGI | `ami-callcode-voice-agi` + `agi-voice-vid-voice-44dd` |
//! | 172 | answers; the far end hangs up during the 2nd prompt | same, the cut as in `agi-farhangup-default` (*) |
//! | 178 | rings until callcode hangs up | `ami-callcode-flash-hangup` |
//! | 179 | rings; the AMI socket is cut; the call is still up after the reconnect | same (*) |
//! | 180 | rings; the AMI socket is cut; the call is gone after the reconnect | same (*) |
//! | 181 | 181 + Diversion, then answers | `ami-callcode-redirect181` |
//! | 302 | 302 followed by Dial, the new target answers | `ami-callcode-redirect302` |
//! | 486 | busy | `ami-callcode-busy` |
//! | 403, 603, 404 | rejected / unallocated (*) | `ami-callcode-busy` with the causes of the README table |
//! | 000 | no channel at all (unreachable endpoint) | `ami-originate-badchannel` |
//!
//! (*) Not captured through the callcode path; built from captured messages and the fixture
//! README's facts, as each builder's comment says.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use callcode::backend::asterisk::ami::{md5_key, AmiCodec, Frame, Message};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::FramedRead;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/asterisk");
/// Captured delays are divided by this.
const SPEED_UP: f64 = 10.0;
/// The challenge the peer hands out for MD5 logins (any string works; Asterisk uses a number).
pub const CHALLENGE: &str = "840415273";

/// The S>C messages of one capture with the time (s) each one's last byte arrived, and the time
/// the client sent each action.
struct Capture {
    messages: Vec<(f64, String)>,
    client: Vec<(f64, String)>,
}

fn load(name: &str) -> Capture {
    let raw = std::fs::read(format!("{FIXTURES}/{name}.txt")).expect("capture");
    let mut messages = vec![];
    let mut client = vec![];
    let (mut s_buf, mut c_buf) = (String::new(), String::new());
    let mut at = 0usize;
    while at < raw.len() {
        let end = raw[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(raw.len(), |i| at + i);
        let header = String::from_utf8_lossy(&raw[at..end]).to_string();
        at = end + 1;
        let parts: Vec<&str> = header.split_whitespace().collect();
        if parts.len() < 4 || parts[0] != "###" || !(parts[1] == "S>C" || parts[1] == "C>S") {
            continue;
        }
        let n: usize = parts[2].parse().expect("byte count");
        let t: f64 = parts[3].trim_start_matches('+').parse().expect("time");
        let payload = String::from_utf8_lossy(&raw[at..at + n]).to_string();
        at += n;
        if !payload.ends_with('\n') {
            at += 1;
        }
        let (buf, out) = if parts[1] == "S>C" {
            (&mut s_buf, &mut messages)
        } else {
            (&mut c_buf, &mut client)
        };
        buf.push_str(&payload);
        // The banner is a line of its own, not a message.
        if buf.starts_with("Asterisk Call Manager/") {
            if let Some(i) = buf.find("\r\n") {
                buf.drain(..i + 2);
            }
        }
        while let Some(i) = buf.find("\r\n\r\n") {
            let m: String = buf.drain(..i + 4).collect();
            out.push((t, m));
        }
    }
    Capture { messages, client }
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.split("\r\n")
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}

/// The identifiers of the Originate a capture's client sent.
#[derive(Debug, Clone)]
struct Ids {
    action_id: String,
    channel_id: String,
    other_id: String,
    vid: String,
    number: String,
    ani: String,
    context: String,
}

fn ids_of(c: &Capture) -> Ids {
    let o = &c
        .client
        .iter()
        .find(|(_, m)| m.starts_with("Action: Originate"))
        .expect("an Originate in the capture")
        .1;
    let channel = field(o, "Channel").unwrap_or_default();
    let dial = channel.split('/').nth(1).unwrap_or_default();
    let (number, context) = dial.split_once('@').unwrap_or((dial, ""));
    let vid = o
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("Variable: "))
        .find_map(|v| v.strip_prefix("VERIFICATION_ID="))
        .unwrap_or("no-vid");
    Ids {
        action_id: field(o, "ActionID").unwrap_or_default().into(),
        channel_id: field(o, "ChannelId").unwrap_or_default().into(),
        other_id: field(o, "OtherChannelId").unwrap_or("no-other-id").into(),
        vid: vid.into(),
        number: number.into(),
        ani: field(o, "CallerID").unwrap_or_default().into(),
        context: context.into(),
    }
}

fn substitute(text: &str, from: &Ids, to: &Ids) -> String {
    let mut s = text
        .replace(&from.action_id, &to.action_id)
        .replace(&from.other_id, &to.other_id)
        .replace(&from.channel_id, &to.channel_id)
        .replace(&from.vid, &to.vid)
        .replace(&from.number, &to.number)
        .replace(&from.ani, &to.ani);
    if !from.context.is_empty() && from.context != to.context {
        s = s.replace(&from.context, &to.context);
    }
    s
}

/// A channel as the peer lists it for `CoreShowChannels`.
#[derive(Debug, Clone)]
struct Listed {
    channel: String,
    uniqueid: String,
    state: (u8, &'static str),
}

struct PeerCall {
    hangup: Option<oneshot::Sender<String>>,
    /// Listed after a reconnect (empty once the call is over).
    channels: Vec<Listed>,
}

#[derive(Default)]
struct Recorded {
    actions: Vec<Vec<(String, String)>>,
    agi: HashMap<String, Vec<String>>,
}

/// The connection's writer and the event classes its login asked for (`None` = all).
type LoggedIn = (mpsc::UnboundedSender<Vec<u8>>, Option<Vec<String>>);

struct Shared {
    secret: String,
    fastagi: SocketAddr,
    /// The writer of the logged-in connection and its event classes (`None` = all).
    writer: Mutex<Option<LoggedIn>>,
    calls: Mutex<HashMap<String, PeerCall>>,
    recorded: Mutex<Recorded>,
    logins: AtomicUsize,
    cut: Notify,
}

/// The running test Asterisk.
pub struct Peer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Listens on a loopback port; the voice scenarios connect to `fastagi` (callcode's listener).
    pub async fn start(secret: &str, fastagi: SocketAddr) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind AMI");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            secret: secret.into(),
            fastagi,
            writer: Mutex::new(None),
            calls: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Recorded::default()),
            logins: AtomicUsize::new(0),
            cut: Notify::new(),
        });
        let s = shared.clone();
        let acceptor = tokio::spawn(async move {
            // Bounded: a test never needs more than a few connections.
            for _ in 0..64 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(s.clone(), stream));
            }
        });
        Peer {
            addr,
            shared,
            acceptor,
        }
    }

    /// The Asterisk goes away for good: the connection is cut and new ones are refused.
    pub fn go_away(&self) {
        self.acceptor.abort();
        cut(&self.shared);
    }

    /// Cuts the logged-in AMI connection (as a crashed or restarted Asterisk would).
    pub fn cut(&self) {
        cut(&self.shared);
    }

    /// Every action of this name received, as its fields in order.
    pub fn actions(&self, name: &str) -> Vec<Vec<(String, String)>> {
        let r = self.shared.recorded.lock().unwrap();
        r.actions
            .iter()
            .filter(|a| a.first().is_some_and(|(k, v)| k == "Action" && v == name))
            .cloned()
            .collect()
    }

    /// The FastAGI commands callcode sent on the session of this verification id.
    pub fn agi_commands(&self, vid: &str) -> Vec<String> {
        let r = self.shared.recorded.lock().unwrap();
        r.agi.get(vid).cloned().unwrap_or_default()
    }

    /// Connects to callcode's FastAGI port as Asterisk would for a call callcode does not know
    /// (`agi_arg_1` = `vid`) and returns the commands callcode sent before closing.
    pub async fn stray_agi(&self, vid: &str) -> Vec<String> {
        let ids = Ids {
            action_id: String::new(),
            channel_id: String::new(),
            other_id: String::new(),
            vid: vid.into(),
            number: "79990000171".into(),
            ani: String::new(),
            context: String::new(),
        };
        agi_dialog(&self.shared, &ids, false)
            .await
            .expect("FastAGI connect");
        self.agi_commands(vid)
    }

    pub fn logins(&self) -> usize {
        self.shared.logins.load(Ordering::SeqCst)
    }
}

fn cut(shared: &Shared) {
    *shared.writer.lock().unwrap() = None;
    shared.cut.notify_waiters();
}

/// Sends a message to the logged-in connection if its event classes let it through.
fn send(shared: &Shared, msg: &str) {
    let guard = shared.writer.lock().unwrap();
    let Some((tx, classes)) = guard.as_ref() else {
        return;
    };
    if let (Some(classes), Some(privilege)) = (classes, field(msg, "Privilege")) {
        if !privilege
            .split(',')
            .any(|p| p != "all" && classes.iter().any(|c| c == p))
        {
            return;
        }
    }
    let _ = tx.send(msg.as_bytes().to_vec());
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let _ = tx.send(b"Asterisk Call Manager/11.0.0\r\n".to_vec());
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if write.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    let mut frames = FramedRead::new(read, AmiCodec::after_banner());
    let mut logged_in = false;
    loop {
        let frame = tokio::select! {
            _ = shared.cut.notified(), if logged_in => break,
            f = tokio::time::timeout(Duration::from_secs(60), frames.next()) => f,
        };
        let Ok(Some(Ok(Frame::Message(m)))) = frame else {
            break;
        };
        let fields: Vec<(String, String)> = m
            .fields()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        shared.recorded.lock().unwrap().actions.push(fields);
        let id = m.action_id().unwrap_or("").to_string();
        let reply = |text: String| {
            let _ = tx.send(text.into_bytes());
        };
        match m.get("Action").unwrap_or("") {
            "Challenge" => reply(format!(
                "Response: Success\r\nActionID: {id}\r\nChallenge: {CHALLENGE}\r\n\r\n"
            )),
            "Login" => {
                let ok = match m.get("AuthType") {
                    Some(t) if t.eq_ignore_ascii_case("md5") => {
                        m.get("Key") == Some(md5_key(CHALLENGE, &shared.secret).as_str())
                    }
                    _ => m.get("Secret") == Some(shared.secret.as_str()),
                };
                if !ok {
                    // As captured (ami-login-badsecret): an error after a delay, then closed.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    reply(format!(
                        "Response: Error\r\nActionID: {id}\r\nMessage: Authentication failed\r\n\r\n"
                    ));
                    break;
                }
                let classes = match m.get("Events") {
                    None | Some("on") => None,
                    Some("off") => Some(vec![]),
                    Some(list) => Some(list.split(',').map(|c| c.trim().to_string()).collect()),
                };
                reply(login_reply(&id));
                *shared.writer.lock().unwrap() = Some((tx.clone(), classes));
                logged_in = true;
                shared.logins.fetch_add(1, Ordering::SeqCst);
            }
            "Ping" => reply(format!(
                "Response: Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: 1795433944.409225\r\n\r\n"
            )),
            "Originate" => {
                reply(format!(
                    "Response: Success\r\nActionID: {id}\r\nMessage: Originate successfully queued\r\n\r\n"
                ));
                let (htx, hrx) = oneshot::channel();
                let ids = originate_ids(&m);
                shared.calls.lock().unwrap().insert(
                    ids.channel_id.clone(),
                    PeerCall {
                        hangup: Some(htx),
                        channels: vec![],
                    },
                );
                tokio::spawn(run_call(shared.clone(), ids, hrx));
            }
            "Hangup" => {
                let channel = m.get("Channel").unwrap_or("").to_string();
                let waiting = shared
                    .calls
                    .lock()
                    .unwrap()
                    .get_mut(&channel)
                    .and_then(|c| c.hangup.take());
                match waiting {
                    // The call's task answers with the captured response and events.
                    Some(h) => {
                        let _ = h.send(id);
                    }
                    None => reply(format!(
                        "Response: Error\r\nActionID: {id}\r\nMessage: No such channel\r\n\r\n"
                    )),
                }
            }
            "CoreShowChannels" => reply(channel_list(&shared, &id)),
            "Logoff" => {
                reply(format!(
                    "Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n\r\n"
                ));
                break;
            }
            other => reply(format!(
                "Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command: {other}. Use Action: ListCommands to show available commands.\r\n\r\n"
            )),
        }
    }
    {
        let mut w = shared.writer.lock().unwrap();
        if w.as_ref().is_some_and(|(t, _)| t.same_channel(&tx)) {
            *w = None;
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// The login answer and FullyBooted event as captured (`ami-login.server.txt`).
fn login_reply(action_id: &str) -> String {
    let c = load("ami-login");
    let mut out = String::new();
    for (_, m) in c.messages.iter().take(2) {
        out.push_str(&m.replace("login-1", action_id));
    }
    out
}

/// `CoreShowChannels`: the list envelope as captured (`ami-misc`: `EventList: start` ...
/// `CoreShowChannelsComplete`), one `CoreShowChannel` per live channel with the fields of the
/// Asterisk documentation's CoreShowChannel event (no capture lists a channel).
fn channel_list(shared: &Shared, action_id: &str) -> String {
    let calls = shared.calls.lock().unwrap();
    let mut out = format!(
        "Response: Success\r\nActionID: {action_id}\r\nEventList: start\r\nMessage: Channels will follow\r\n\r\n"
    );
    let mut n = 0;
    for (linkedid, call) in calls.iter() {
        for ch in &call.channels {
            n += 1;
            out.push_str(&format!(
                "Event: CoreShowChannel\r\nActionID: {action_id}\r\nChannel: {}\r\nChannelState: {}\r\nChannelStateDesc: {}\r\nCallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\nConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: callcode-out\r\nExten: s\r\nPriority: 1\r\nUniqueid: {}\r\nLinkedid: {linkedid}\r\nBridgeId: \r\nApplication: Dial\r\nApplicationData: \r\nDuration: 00:00:02\r\n\r\n",
                ch.channel, ch.state.0, ch.state.1, ch.uniqueid
            ));
        }
    }
    out.push_str(&format!(
        "Event: CoreShowChannelsComplete\r\nActionID: {action_id}\r\nEventList: Complete\r\nListItems: {n}\r\n\r\n"
    ));
    out
}

fn originate_ids(m: &Message) -> Ids {
    let channel = m.get("Channel").unwrap_or_default();
    let dial = channel.split('/').nth(1).unwrap_or_default();
    let (number, context) = dial.split_once('@').unwrap_or((dial, ""));
    Ids {
        action_id: m.action_id().unwrap_or_default().into(),
        channel_id: m.get("ChannelId").unwrap_or_default().into(),
        other_id: m.get("OtherChannelId").unwrap_or_default().into(),
        vid: m
            .get_all("Variable")
            .find_map(|v| v.strip_prefix("VERIFICATION_ID="))
            .unwrap_or_default()
            .into(),
        number: number.into(),
        ani: m.get("CallerID").unwrap_or_default().into(),
        context: context.into(),
    }
}

/// Plays messages with their captured (compressed) delays. Returns the ActionID of a `Hangup`
/// callcode sent meanwhile.
async fn replay(
    shared: &Shared,
    messages: &[(f64, String)],
    hangup: &mut oneshot::Receiver<String>,
) -> Option<String> {
    let mut last = messages.first().map_or(0.0, |m| m.0);
    let mut closed = false;
    for (t, m) in messages {
        let wait = Duration::from_secs_f64(((t - last) / SPEED_UP).clamp(0.0, 0.5));
        last = *t;
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                h = &mut *hangup, if !closed => match h {
                    Ok(id) => return Some(id),
                    Err(_) => closed = true,
                },
                _ = &mut sleep => break,
            }
        }
        send(shared, m);
    }
    None
}

/// After the client's `Action: Hangup` in `ami-callcode-flash-hangup`: the response and the
/// events of the cancelled call.
fn after_hangup(ours: &Ids, hangup_action_id: &str) -> Vec<(f64, String)> {
    let c = load("callcode-path/ami-callcode-flash-hangup");
    let ids = ids_of(&c);
    let at = c
        .client
        .iter()
        .find(|(_, m)| m.starts_with("Action: Hangup"))
        .expect("the captured hang-up")
        .0;
    c.messages
        .iter()
        .filter(|(t, m)| *t >= at && !m.starts_with("Response: Goodbye"))
        .map(|(t, m)| {
            (
                *t,
                substitute(m, &ids, ours).replace(
                    "ActionID: hangup-1",
                    &format!("ActionID: {hangup_action_id}"),
                ),
            )
        })
        .collect()
}

/// The capture's messages after its Originate was queued, with our ids.
fn call_messages(name: &str, ours: &Ids) -> Vec<(f64, String)> {
    let c = load(name);
    let ids = ids_of(&c);
    let start = c
        .client
        .iter()
        .find(|(_, m)| m.starts_with("Action: Originate"))
        .expect("Originate")
        .0;
    c.messages
        .iter()
        .filter(|(t, m)| {
            *t >= start
                && !m.starts_with("Response: Goodbye")
                && !m.contains("Message: Originate successfully queued")
        })
        .map(|(t, m)| (*t, substitute(m, &ids, ours)))
        .collect()
}

/// Rejections through the callcode path were not captured: the busy capture (same Local + Dial
/// path, 180 then a final response) with the causes the fixture README's outcome table gives for
/// that SIP status (403 → 21, 603 → 21, 404 → 1; DIALSTATUS CHANUNAVAIL / DialEnd NOANSWER).
fn rejected(ours: &Ids, sip: u16) -> Vec<(f64, String)> {
    let (cause, text) = match sip {
        404 => ("1", "Unallocated (unassigned) number"),
        _ => ("21", "Call Rejected"),
    };
    call_messages("callcode-path/ami-callcode-busy", ours)
        .into_iter()
        .map(|(t, m)| {
            let m = m
                .replace("Cause: 17\r\n", &format!("Cause: {cause}\r\n"))
                .replace("Cause-txt: User busy", &format!("Cause-txt: {text}"))
                .replace("TechCause: 486", &format!("TechCause: {sip}"))
                .replace("DialStatus: BUSY", "DialStatus: NOANSWER")
                .replace("Value: BUSY", "Value: CHANUNAVAIL");
            (t, m)
        })
        .collect()
}

/// An Originate whose channel cannot be created (`ami-originate-badchannel`): no channel events,
/// only `OriginateResponse` Failure, Reason 0.
fn unreachable(ours: &Ids) -> Vec<(f64, String)> {
    let c = load("ami-originate-badchannel");
    let ids = ids_of(&c);
    let dial = format!("Local/{}@{}", ours.number, ours.context);
    c.messages
        .iter()
        .filter(|(_, m)| m.starts_with("Event: OriginateResponse"))
        .map(|(t, m)| {
            let m = m
                .replace("PJSIP/nosuchendpoint", &dial)
                .replace(&ids.channel_id, &ours.channel_id)
                .replace(&ids.action_id, &ours.action_id)
                .replace(&ids.ani, &ours.ani);
            (*t, m)
        })
        .collect()
}

fn set_channels(shared: &Shared, ours: &Ids, channels: Vec<Listed>) {
    if let Some(c) = shared.calls.lock().unwrap().get_mut(&ours.channel_id) {
        c.channels = channels;
    }
}

fn ringing_channels(ours: &Ids) -> Vec<Listed> {
    vec![
        Listed {
            channel: format!("Local/{}@{}-0000000b;1", ours.number, ours.context),
            uniqueid: ours.channel_id.clone(),
            state: (5, "Ringing"),
        },
        Listed {
            channel: format!("Local/{}@{}-0000000b;2", ours.number, ours.context),
            uniqueid: ours.other_id.clone(),
            state: (4, "Ring"),
        },
        Listed {
            channel: "PJSIP/trunk-0000000d".into(),
            uniqueid: "1795436466.37".into(),
            state: (5, "Ringing"),
        },
    ]
}

async fn finish(shared: &Shared, ours: &Ids) {
    shared.calls.lock().unwrap().remove(&ours.channel_id);
}

async fn run_call(shared: Arc<Shared>, ours: Ids, mut hangup: oneshot::Receiver<String>) {
    let digits = ours.number[ours.number.len().saturating_sub(3)..].to_string();
    let digits = digits.as_str();
    let script: Vec<(f64, String)> = match digits {
        "171" | "172" => return voice(shared, ours, hangup, digits == "172").await,
        "178" | "179" | "180" => {
            let all = call_messages("callcode-path/ami-callcode-flash-hangup", &ours);
            let c = load("callcode-path/ami-callcode-flash-hangup");
            let hang_at = c
                .client
                .iter()
                .find(|(_, m)| m.starts_with("Action: Hangup"))
                .expect("hang-up")
                .0;
            let ringing: Vec<_> = all.into_iter().filter(|(t, _)| *t < hang_at).collect();
            set_channels(&shared, &ours, ringing_channels(&ours));
            if let Some(id) = replay(&shared, &ringing, &mut hangup).await {
                return hung_up(&shared, &ours, &id).await;
            }
            if digits == "179" || digits == "180" {
                // The socket is cut while the phone rings; with 180 the call ends meanwhile.
                if digits == "180" {
                    finish(&shared, &ours).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                cut(&shared);
                if digits == "180" {
                    return;
                }
            }
            match tokio::time::timeout(Duration::from_secs(30), &mut hangup).await {
                Ok(Ok(id)) => return hung_up(&shared, &ours, &id).await,
                _ => return finish(&shared, &ours).await,
            }
        }
        "181" => call_messages("callcode-path/ami-callcode-redirect181", &ours),
        "302" => call_messages("callcode-path/ami-callcode-redirect302", &ours),
        "486" => call_messages("callcode-path/ami-callcode-busy", &ours),
        "403" => rejected(&ours, 403),
        "603" => rejected(&ours, 603),
        "404" => rejected(&ours, 404),
        "000" => unreachable(&ours),
        other => panic!("test peer: no scenario for a number ending in {other}"),
    };
    set_channels(&shared, &ours, ringing_channels(&ours));
    if let Some(id) = replay(&shared, &script, &mut hangup).await {
        return hung_up(&shared, &ours, &id).await;
    }
    finish(&shared, &ours).await;
}

async fn hung_up(shared: &Shared, ours: &Ids, action_id: &str) {
    let (_, mut never) = oneshot::channel();
    replay(shared, &after_hangup(ours, action_id), &mut never).await;
    finish(shared, ours).await;
}

/// The voice path: ringing and the callee's answer as captured, then the FastAGI session callcode
/// drives, then the hang-up events of the capture.
async fn voice(
    shared: Arc<Shared>,
    ours: Ids,
    mut hangup: oneshot::Receiver<String>,
    far_end_hangs_up: bool,
) {
    let all = call_messages("callcode-path/ami-callcode-voice-agi", &ours);
    let agi_start = all
        .iter()
        .find(|(_, m)| m.starts_with("Event: AGIExecStart"))
        .map(|(t, _)| *t)
        .expect("AGI in the capture");
    // After the AGI: from its own HANGUP (SoftHangupRequest 32) on; when the far end hangs up
    // instead, from the far end's HangupRequest 16 on (a BYE, README: HangupRequest 16 / Hangup 16).
    let tail_from = if far_end_hangs_up {
        all.iter()
            .find(|(_, m)| {
                m.starts_with("Event: HangupRequest")
                    && field(m, "Channel").is_some_and(|c| c.starts_with("PJSIP/"))
            })
            .map(|(t, _)| *t)
    } else {
        all.iter()
            .find(|(_, m)| m.starts_with("Event: SoftHangupRequest") && m.contains("Cause: 32\r\n"))
            .map(|(t, _)| *t)
    }
    .expect("hang-up in the capture");
    let answer: Vec<_> = all
        .iter()
        .filter(|(t, _)| *t < agi_start)
        .cloned()
        .collect();
    let tail: Vec<_> = all
        .iter()
        .filter(|(t, m)| *t >= tail_from && !m.starts_with("Event: AGIExec"))
        .cloned()
        .collect();
    set_channels(&shared, &ours, ringing_channels(&ours));
    if let Some(id) = replay(&shared, &answer, &mut hangup).await {
        return hung_up(&shared, &ours, &id).await;
    }
    if let Err(e) = agi_dialog(&shared, &ours, far_end_hangs_up).await {
        eprintln!("test peer: FastAGI session of {}: {e}", ours.vid);
    }
    let (_, mut never) = oneshot::channel();
    replay(&shared, &tail, &mut never).await;
    finish(&shared, &ours).await;
}

/// Connects to callcode's FastAGI port like `AGI(agi://...)` on the answered callee: the captured
/// environment block (our verification id as `agi_arg_1`), then a reply per command as captured.
async fn agi_dialog(shared: &Shared, ours: &Ids, far_end_hangs_up: bool) -> std::io::Result<()> {
    let env = std::fs::read_to_string(format!(
        "{FIXTURES}/callcode-path/agi-voice-vid-voice-44dd.client.txt"
    ))?;
    let end = env.find("\n\n").map_or(env.len(), |i| i + 2);
    let env = env[..end]
        .replace("vid-voice-44dd", &ours.vid)
        .replace("79161110171", &ours.number);
    let stream = TcpStream::connect(shared.fastagi).await?;
    let (read, mut write) = stream.into_split();
    // In two chunks, as captured.
    let split = env.find("agi_extension").unwrap_or(env.len() / 2);
    write.write_all(&env.as_bytes()[..split]).await?;
    write.write_all(&env.as_bytes()[split..]).await?;
    let mut lines = BufReader::new(read).lines();
    let mut streams = 0;
    let mut dead = false;
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            _ => return Ok(()),
        };
        shared
            .recorded
            .lock()
            .unwrap()
            .agi
            .entry(ours.vid.clone())
            .or_default()
            .push(line.clone());
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let mut reply = BytesMut::new();
        if dead && verb != "GET" && verb != "NOOP" {
            // agi-farhangup-default: commands on the dead channel.
            reply.extend_from_slice(
                b"511 Command Not Permitted on a dead channel or intercept routine\n",
            );
        } else if line.starts_with("STREAM FILE") {
            streams += 1;
            if far_end_hangs_up && streams == 2 {
                // agi-farhangup-default: the interrupted STREAM FILE, then HANGUP by itself.
                reply.extend_from_slice(b"200 result=-1 endpos=24160\nHANGUP\n");
                dead = true;
            } else {
                // agi-voice-vid-voice-44dd: a prompt played to its end (after a short wait).
                tokio::time::sleep(Duration::from_millis(30)).await;
                reply.extend_from_slice(b"200 result=0 endpos=7360\n");
            }
        } else if verb == "HANGUP" {
            reply.extend_from_slice(b"200 result=1\n");
            write.write_all(&reply).await?;
            tokio::time::sleep(Duration::from_millis(40)).await;
            let _ = write.write_all(b"HANGUP\n").await;
            // Asterisk keeps the socket until the AGI server closes it.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = l;
                }
            })
            .await;
            return Ok(());
        } else if line.starts_with("GET VARIABLE VERIFICATION_ID") {
            reply.extend_from_slice(format!("200 result=1 ({})\n", ours.vid).as_bytes());
        } else if verb == "CHANNEL" {
            reply.extend_from_slice(b"200 result=6\n");
        } else {
            reply.extend_from_slice(b"200 result=0\n");
        }
        write.write_all(&reply).await?;
    }
}
