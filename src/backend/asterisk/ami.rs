//! AMI (Asterisk Manager Interface) codec, sans-IO: the banner line, `Key: Value` messages ended
//! by an empty line, responses and events, and the actions callcode sends.
//!
//! Wire facts it follows (`tests/fixtures/asterisk/README.md`, captured from Asterisk 22.10.1):
//! - the first line on connect is the banner `Asterisk Call Manager/11.0.0\r\n`, with no blank
//!   line after it;
//! - every line ends in `\r\n`, a message ends with an empty line, and TCP reads split and merge
//!   messages freely;
//! - keys repeat (`Variable:` in Originate, `Output:` once per CLI line), so a message is an
//!   ordered multimap, kept as offsets into the received bytes (no copy per field);
//! - `Response:` first means a response (it carries our `ActionID`), `Event:` first an event;
//!   list actions answer `EventList: start`, then events, then `...Complete`.
//!
//! Peer bytes never panic this module: sizes are capped, non-UTF-8 is replaced, lines without a
//! colon are kept as keys with an empty value. It does no I/O and knows nothing about calls.

use std::fmt::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use md5::Digest;
use tokio_util::codec::{Decoder, Encoder};

/// Largest message accepted (a `CoreShowChannel` event is ~600 bytes; `Command` output of a big
/// `pjsip show endpoints` can reach tens of kilobytes).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most `Key: Value` lines in one message.
pub const MAX_FIELDS: usize = 4096;
/// Longest banner line.
pub const MAX_BANNER_BYTES: usize = 256;
/// What every Asterisk banner starts with.
pub const BANNER_PREFIX: &[u8] = b"Asterisk Call Manager/";

#[derive(Debug, thiserror::Error)]
pub enum AmiError {
    #[error("the peer is not an Asterisk manager: first line {0:?}")]
    NotAmi(String),
    #[error("banner line longer than {MAX_BANNER_BYTES} bytes")]
    BannerTooLong,
    #[error("message longer than {0} bytes")]
    MessageTooLarge(usize),
    #[error("message with more than {MAX_FIELDS} lines")]
    TooManyFields,
    /// An action value holding CR or LF would smuggle extra headers or actions into the stream.
    #[error("value of `{0}` contains a line break")]
    LineBreakInValue(String),
    #[error("invalid key `{0}`")]
    InvalidKey(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One decoded unit of the AMI stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `Asterisk Call Manager/<version>` without the line end.
    Banner(Bytes),
    Message(Message),
}

/// One message: an ordered multimap over the bytes it arrived in.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's lines without the terminating empty line; always valid UTF-8.
    raw: Bytes,
    /// Offsets into `raw`: key start, key end, value start, value end.
    fields: Vec<[u32; 4]>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_list();
        for (k, v) in self.fields() {
            // Never log secrets of our own actions when a message is printed.
            if k.eq_ignore_ascii_case("Secret") || k.eq_ignore_ascii_case("Key") {
                m.entry(&(k, "[redacted]"));
            } else {
                m.entry(&(k, v));
            }
        }
        m.finish()
    }
}

/// What a message is, by its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `Response: Success|Error|Goodbye|...`
    Response(&'a str),
    /// `Event: <name>`
    Event(&'a str),
    /// Anything else (a message callcode did not expect).
    Other,
}

impl Message {
    /// Parses the lines of one message (`raw` holds no terminating blank line).
    pub fn parse(raw: Bytes) -> Result<Message, AmiError> {
        if raw.len() > MAX_MESSAGE_BYTES {
            return Err(AmiError::MessageTooLarge(MAX_MESSAGE_BYTES));
        }
        let raw = match std::str::from_utf8(&raw) {
            Ok(_) => raw,
            Err(_) => Bytes::from(String::from_utf8_lossy(&raw).into_owned()),
        };
        let mut fields = Vec::with_capacity(24);
        let mut start = 0usize;
        let bytes = &raw[..];
        while start < bytes.len() {
            // Lines end in CRLF; a bare LF inside a line is kept as part of it.
            let end =
                memchr::memmem::find(&bytes[start..], b"\r\n").map_or(bytes.len(), |i| start + i);
            if end > start {
                if fields.len() == MAX_FIELDS {
                    return Err(AmiError::TooManyFields);
                }
                let line = &bytes[start..end];
                let field = match memchr::memchr(b':', line) {
                    Some(colon) => {
                        let value_start = if line.get(colon + 1) == Some(&b' ') {
                            colon + 2
                        } else {
                            colon + 1
                        };
                        [start, start + colon, start + value_start, end]
                    }
                    None => [start, end, end, end],
                };
                // Offsets fit: the message is capped far below u32::MAX.
                fields.push(field.map(|o| o as u32));
            }
            start = end + 2;
        }
        Ok(Message { raw, fields })
    }

    fn bytes(&self, from: u32, to: u32) -> &[u8] {
        self.raw.get(from as usize..to as usize).unwrap_or_default()
    }

    fn text(&self, from: u32, to: u32) -> &str {
        // `raw` is valid UTF-8 and every offset sits next to an ASCII byte (CR, LF, ':' or ' ').
        std::str::from_utf8(self.bytes(from, to)).unwrap_or_default()
    }

    /// Offsets of the fields named `key`, compared as bytes (no UTF-8 work for the others).
    fn named<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a [u32; 4]> + 'a {
        self.fields
            .iter()
            .filter(move |f| self.bytes(f[0], f[1]).eq_ignore_ascii_case(key.as_bytes()))
    }

    /// Every field in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|f| (self.text(f[0], f[1]), self.text(f[2], f[3])))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The first value of `key` (keys compare case-insensitively, as Asterisk's own lookup does).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.named(key).next().map(|f| self.text(f[2], f[3]))
    }

    /// Every value of a repeated key, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.named(key).map(|f| self.text(f[2], f[3]))
    }

    /// The bytes the message was parsed from.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn kind(&self) -> Kind<'_> {
        let first = self
            .fields
            .first()
            .map(|f| (self.bytes(f[0], f[1]), self.text(f[2], f[3])));
        match first {
            Some((k, v)) if k.eq_ignore_ascii_case(b"Response") => Kind::Response(v),
            Some((k, v)) if k.eq_ignore_ascii_case(b"Event") => Kind::Event(v),
            _ => Kind::Other,
        }
    }

    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }

    /// The typed view of an event (`Event::Unknown` for responses and unmodelled events).
    pub fn event(&self) -> Event<'_> {
        Event::from_message(self)
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }
}

/// A channel as events name it; `Dest*` fields for the callee side of dial events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chan<'a> {
    pub channel: &'a str,
    pub uniqueid: &'a str,
    pub linkedid: &'a str,
    /// `ChannelState`: 0 Down, 4 Ring, 5 Ringing, 6 Up, ...
    pub state: Option<u8>,
}

/// Asterisk channel states (`ChannelState`) callcode reacts to.
pub const STATE_RINGING: u8 = 5;
pub const STATE_UP: u8 = 6;

impl<'a> Chan<'a> {
    const PLAIN: [&'static str; 4] = ["Channel", "Uniqueid", "Linkedid", "ChannelState"];
    const DEST: [&'static str; 4] = [
        "DestChannel",
        "DestUniqueid",
        "DestLinkedid",
        "DestChannelState",
    ];

    fn read(m: &'a Message, keys: [&'static str; 4]) -> Option<Chan<'a>> {
        let uniqueid = m.get(keys[1])?;
        Some(Chan {
            channel: m.get(keys[0]).unwrap_or_default(),
            uniqueid,
            linkedid: m.get(keys[2]).unwrap_or(uniqueid),
            state: m.number(keys[3]),
        })
    }

    /// A `Local/...;1` or `;2` half rather than a real (PJSIP, SIP, DAHDI...) channel.
    pub fn is_local(&self) -> bool {
        self.channel.starts_with("Local/")
    }
}

/// The events the Asterisk backend uses; everything else is `Unknown` with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    FullyBooted,
    Newchannel(Chan<'a>),
    Newstate(Chan<'a>),
    /// A channel is gone. `tech_cause` is the SIP status for PJSIP when a response ended it.
    Hangup {
        chan: Chan<'a>,
        cause: Option<u16>,
        tech_cause: Option<u16>,
    },
    /// Hang-up asked by the channel driver (the far end).
    HangupRequest {
        chan: Chan<'a>,
        cause: Option<u16>,
        tech_cause: Option<u16>,
    },
    /// Hang-up asked locally (dialplan, AMI, AGI).
    SoftHangupRequest {
        chan: Chan<'a>,
        cause: Option<u16>,
    },
    /// `caller` is absent for the dial Originate itself makes (only `Dest*` fields).
    DialBegin {
        caller: Option<Chan<'a>>,
        dest: Chan<'a>,
    },
    DialState {
        caller: Option<Chan<'a>>,
        dest: Chan<'a>,
        status: &'a str,
    },
    /// `forward` is the new dial string when the callee redirected (302).
    DialEnd {
        caller: Option<Chan<'a>>,
        dest: Chan<'a>,
        status: &'a str,
        forward: Option<&'a str>,
    },
    /// Result of an `Async` Originate: Reason 4 answered, 3 ring timeout, 0 anything else.
    OriginateResponse {
        action_id: Option<&'a str>,
        success: bool,
        reason: u16,
        channel: &'a str,
        uniqueid: Option<&'a str>,
    },
    /// `UserEvent(<name>,...)` from the dialplan; its own fields are read from the message.
    UserEvent {
        name: &'a str,
        chan: Option<Chan<'a>>,
    },
    VarSet {
        chan: Chan<'a>,
        variable: &'a str,
        value: &'a str,
    },
    CoreShowChannel {
        action_id: Option<&'a str>,
        chan: Chan<'a>,
    },
    CoreShowChannelsComplete {
        action_id: Option<&'a str>,
        items: u32,
    },
    Unknown(&'a str),
}

impl<'a> Event<'a> {
    pub fn from_message(m: &'a Message) -> Event<'a> {
        let Kind::Event(name) = m.kind() else {
            return Event::Unknown("");
        };
        let chan = || Chan::read(m, Chan::PLAIN);
        let dest = || Chan::read(m, Chan::DEST);
        let parsed = match name {
            "FullyBooted" => Some(Event::FullyBooted),
            "Newchannel" => chan().map(Event::Newchannel),
            "Newstate" => chan().map(Event::Newstate),
            "Hangup" => chan().map(|chan| Event::Hangup {
                chan,
                cause: m.number("Cause"),
                tech_cause: m.number("TechCause"),
            }),
            "HangupRequest" => chan().map(|chan| Event::HangupRequest {
                chan,
                cause: m.number("Cause"),
                tech_cause: m.number("TechCause"),
            }),
            "SoftHangupRequest" => chan().map(|chan| Event::SoftHangupRequest {
                chan,
                cause: m.number("Cause"),
            }),
            "DialBegin" => dest().map(|dest| Event::DialBegin {
                caller: chan(),
                dest,
            }),
            "DialState" => dest().map(|dest| Event::DialState {
                caller: chan(),
                dest,
                status: m.get("DialStatus").unwrap_or_default(),
            }),
            "DialEnd" => dest().map(|dest| Event::DialEnd {
                caller: chan(),
                dest,
                status: m.get("DialStatus").unwrap_or_default(),
                forward: m.get("Forward").filter(|f| !f.is_empty()),
            }),
            "OriginateResponse" => Some(Event::OriginateResponse {
                action_id: m.action_id(),
                success: m
                    .get("Response")
                    .is_some_and(|r| r.eq_ignore_ascii_case("Success")),
                reason: m.number("Reason").unwrap_or(0),
                channel: m.get("Channel").unwrap_or_default(),
                uniqueid: m.get("Uniqueid"),
            }),
            "UserEvent" => Some(Event::UserEvent {
                name: m.get("UserEvent").unwrap_or_default(),
                chan: chan(),
            }),
            "VarSet" => chan().map(|chan| Event::VarSet {
                chan,
                variable: m.get("Variable").unwrap_or_default(),
                value: m.get("Value").unwrap_or_default(),
            }),
            "CoreShowChannel" => chan().map(|chan| Event::CoreShowChannel {
                action_id: m.action_id(),
                chan,
            }),
            "CoreShowChannelsComplete" => Some(Event::CoreShowChannelsComplete {
                action_id: m.action_id(),
                items: m.number("ListItems").unwrap_or(0),
            }),
            _ => None,
        };
        parsed.unwrap_or(Event::Unknown(name))
    }
}

/// Splits the byte stream into the banner and messages. Implements `tokio_util`'s `Decoder`; feed
/// it any chunking of the stream.
#[derive(Debug, Default)]
pub struct AmiCodec {
    banner_seen: bool,
    /// Bytes of the buffer already searched for the message end.
    scanned: usize,
}

impl AmiCodec {
    pub fn new() -> AmiCodec {
        AmiCodec::default()
    }

    /// For the Asterisk side of a connection (test peers, proxies): the client sends no banner.
    pub fn after_banner() -> AmiCodec {
        AmiCodec {
            banner_seen: true,
            scanned: 0,
        }
    }
}

impl Decoder for AmiCodec {
    type Item = Frame;
    type Error = AmiError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, AmiError> {
        if !self.banner_seen {
            let Some(end) = memchr::memchr(b'\n', src) else {
                if src.len() > MAX_BANNER_BYTES {
                    return Err(AmiError::BannerTooLong);
                }
                return Ok(None);
            };
            if end > MAX_BANNER_BYTES {
                return Err(AmiError::BannerTooLong);
            }
            let line = src.split_to(end + 1).freeze();
            let text_end = line.len() - 1 - usize::from(line.ends_with(b"\r\n"));
            let banner = line.slice(..text_end);
            if !banner.starts_with(BANNER_PREFIX) {
                return Err(AmiError::NotAmi(
                    String::from_utf8_lossy(&banner).into_owned(),
                ));
            }
            self.banner_seen = true;
            return Ok(Some(Frame::Banner(banner)));
        }
        loop {
            // A stray empty line between messages is not a message.
            while src.starts_with(b"\r\n") {
                src.advance(2);
                self.scanned = 0;
            }
            let from = self.scanned.saturating_sub(3);
            let Some(at) = memchr::memmem::find(src.get(from..).unwrap_or_default(), b"\r\n\r\n")
                .map(|i| from + i)
            else {
                if src.len() > MAX_MESSAGE_BYTES {
                    return Err(AmiError::MessageTooLarge(MAX_MESSAGE_BYTES));
                }
                self.scanned = src.len();
                return Ok(None);
            };
            self.scanned = 0;
            if at > MAX_MESSAGE_BYTES {
                return Err(AmiError::MessageTooLarge(MAX_MESSAGE_BYTES));
            }
            let mut message = src.split_to(at + 4);
            message.truncate(at);
            let message = Message::parse(message.freeze())?;
            if !message.is_empty() {
                return Ok(Some(Frame::Message(message)));
            }
        }
    }
}

/// The parameters of an `Originate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Originate<'a> {
    pub channel: &'a str,
    pub context: &'a str,
    pub exten: &'a str,
    pub priority: u32,
    pub caller_id: &'a str,
    pub timeout_ms: u64,
    pub channel_id: &'a str,
    pub other_channel_id: Option<&'a str>,
    /// `NAME=value` pairs, one `Variable:` line each.
    pub variables: &'a [(&'a str, &'a str)],
}

/// An action callcode sends. Each is written with the `ActionID` given to `encode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Plain-text login. `events` is the `Events:` filter (`on`, or class names).
    Login {
        username: &'a str,
        secret: &'a str,
        events: Option<&'a str>,
    },
    /// Asks for an MD5 challenge (answered with a `Challenge:` field).
    Challenge,
    /// Login with `Key: md5(challenge + secret)` (see [`md5_key`]).
    LoginMd5 {
        username: &'a str,
        key: &'a str,
        events: Option<&'a str>,
    },
    /// Always `Async: true`: the result comes as an `OriginateResponse` event.
    Originate(Originate<'a>),
    Hangup {
        channel: &'a str,
        cause: u16,
    },
    Ping,
    CoreShowChannels,
    Status {
        channel: Option<&'a str>,
    },
    Logoff,
}

impl Action<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Login { .. } | Action::LoginMd5 { .. } => "Login",
            Action::Challenge => "Challenge",
            Action::Originate(_) => "Originate",
            Action::Hangup { .. } => "Hangup",
            Action::Ping => "Ping",
            Action::CoreShowChannels => "CoreShowChannels",
            Action::Status { .. } => "Status",
            Action::Logoff => "Logoff",
        }
    }

    /// Writes the action with its `ActionID` and the closing empty line. Nothing is written when a
    /// value holds a line break.
    pub fn encode(&self, action_id: &str, dst: &mut BytesMut) -> Result<(), AmiError> {
        let mut w = Writer::new(dst);
        w.field("Action", self.name())?;
        w.field("ActionID", action_id)?;
        match *self {
            Action::Login {
                username,
                secret,
                events,
            } => {
                w.field("Username", username)?;
                w.field("Secret", secret)?;
                if let Some(e) = events {
                    w.field("Events", e)?;
                }
            }
            Action::Challenge => w.field("AuthType", "MD5")?,
            Action::LoginMd5 {
                username,
                key,
                events,
            } => {
                w.field("AuthType", "MD5")?;
                w.field("Username", username)?;
                w.field("Key", key)?;
                if let Some(e) = events {
                    w.field("Events", e)?;
                }
            }
            Action::Originate(o) => {
                w.field("Channel", o.channel)?;
                w.field("Context", o.context)?;
                w.field("Exten", o.exten)?;
                w.number("Priority", u64::from(o.priority))?;
                w.field("CallerID", o.caller_id)?;
                w.number("Timeout", o.timeout_ms)?;
                w.field("Async", "true")?;
                w.field("ChannelId", o.channel_id)?;
                if let Some(other) = o.other_channel_id {
                    w.field("OtherChannelId", other)?;
                }
                for (name, value) in o.variables {
                    if name.is_empty() || name.contains('=') {
                        return w.fail(AmiError::InvalidKey((*name).to_string()));
                    }
                    w.variable(name, value)?;
                }
            }
            Action::Hangup { channel, cause } => {
                w.field("Channel", channel)?;
                w.number("Cause", u64::from(cause))?;
            }
            Action::Status { channel } => {
                if let Some(c) = channel {
                    w.field("Channel", c)?;
                }
            }
            Action::Ping | Action::CoreShowChannels | Action::Logoff => {}
        }
        w.finish();
        Ok(())
    }
}

/// Writes fields into a buffer and undoes everything on a bad value.
struct Writer<'b> {
    dst: &'b mut BytesMut,
    start: usize,
}

impl<'b> Writer<'b> {
    fn new(dst: &'b mut BytesMut) -> Writer<'b> {
        let start = dst.len();
        Writer { dst, start }
    }

    fn fail(&mut self, e: AmiError) -> Result<(), AmiError> {
        self.dst.truncate(self.start);
        Err(e)
    }

    fn field(&mut self, key: &str, value: &str) -> Result<(), AmiError> {
        if value.contains(['\r', '\n']) {
            return self.fail(AmiError::LineBreakInValue(key.to_string()));
        }
        self.dst.reserve(key.len() + value.len() + 4);
        self.dst.put_slice(key.as_bytes());
        self.dst.put_slice(b": ");
        self.dst.put_slice(value.as_bytes());
        self.dst.put_slice(b"\r\n");
        Ok(())
    }

    fn number(&mut self, key: &str, value: u64) -> Result<(), AmiError> {
        let mut s = String::with_capacity(20);
        let _ = write!(s, "{value}");
        self.field(key, &s)
    }

    fn variable(&mut self, name: &str, value: &str) -> Result<(), AmiError> {
        if name.contains(['\r', '\n']) || value.contains(['\r', '\n']) {
            return self.fail(AmiError::LineBreakInValue(format!("Variable {name}")));
        }
        self.dst.put_slice(b"Variable: ");
        self.dst.put_slice(name.as_bytes());
        self.dst.put_u8(b'=');
        self.dst.put_slice(value.as_bytes());
        self.dst.put_slice(b"\r\n");
        Ok(())
    }

    fn finish(self) {
        self.dst.put_slice(b"\r\n");
    }
}

/// An action and its `ActionID`, for `tokio_util`'s `FramedWrite`.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub action_id: &'a str,
    pub action: Action<'a>,
}

impl<'a> Encoder<Outgoing<'a>> for AmiCodec {
    type Error = AmiError;

    fn encode(&mut self, item: Outgoing<'a>, dst: &mut BytesMut) -> Result<(), AmiError> {
        item.action.encode(item.action_id, dst)
    }
}

/// `Key:` of an MD5 login: the lowercase hex MD5 of the challenge followed by the secret
/// (Asterisk `main/manager.c`, `authenticate()`).
pub fn md5_key(challenge: &str, secret: &str) -> String {
    let mut h = md5::Md5::new();
    h.update(challenge.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/asterisk")
    }

    /// Every `ami-*.server.txt` (what Asterisk sent), top level and callcode-path.
    fn server_captures() -> Vec<(String, Vec<u8>)> {
        let mut out = vec![];
        for dir in [fixture_dir(), fixture_dir().join("callcode-path")] {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("ami-") && n.ends_with(".server.txt"))
                .collect();
            names.sort();
            for n in names {
                out.push((n.clone(), std::fs::read(dir.join(&n)).unwrap()));
            }
        }
        assert!(out.len() >= 30, "fixtures missing: {}", out.len());
        out
    }

    fn decode_chunked(bytes: &[u8], chunks: &[usize]) -> Result<Vec<Frame>, AmiError> {
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::new();
        let mut frames = vec![];
        let mut rest = bytes;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&rest.len())).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(f) = codec.decode(&mut buf)? {
                frames.push(f);
            }
        }
        assert!(buf.is_empty(), "bytes left over: {:?}", buf);
        Ok(frames)
    }

    #[test]
    fn every_capture_decodes_to_its_banner_and_all_its_messages_losslessly() {
        for (name, bytes) in server_captures() {
            let frames = decode_chunked(&bytes, &[bytes.len()]).unwrap();
            let Some(Frame::Banner(b)) = frames.first() else {
                panic!("{name}: no banner first");
            };
            assert_eq!(&b[..], b"Asterisk Call Manager/11.0.0", "{name}");
            let expected = memchr::memmem::find_iter(&bytes, b"\r\n\r\n").count();
            assert_eq!(frames.len() - 1, expected, "{name}");
            let mut rebuilt = b"Asterisk Call Manager/11.0.0\r\n".to_vec();
            for f in &frames[1..] {
                let Frame::Message(m) = f else {
                    panic!("{name}: second banner")
                };
                assert!(
                    !matches!(m.kind(), Kind::Other),
                    "{name}: neither response nor event: {m:?}"
                );
                for (k, v) in m.fields() {
                    rebuilt.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                }
                rebuilt.extend_from_slice(b"\r\n");
            }
            assert_eq!(rebuilt, bytes, "{name}: fields do not rebuild the stream");
        }
    }

    #[test]
    fn responses_carry_the_action_id_and_repeated_output_lines_stay_in_order() {
        let bytes = std::fs::read(fixture_dir().join("ami-misc.server.txt")).unwrap();
        let frames = decode_chunked(&bytes, &[7, 19, 3]).unwrap();
        let msgs: Vec<&Message> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        let ping = msgs
            .iter()
            .find(|m| m.action_id() == Some("ping-1"))
            .unwrap();
        assert_eq!(ping.kind(), Kind::Response("Success"));
        assert_eq!(ping.get("Ping"), Some("Pong"));
        let cmd = msgs
            .iter()
            .find(|m| m.action_id() == Some("cmd-2"))
            .unwrap();
        let output: Vec<&str> = cmd.get_all("Output").collect();
        assert_eq!(output.len(), 20, "{output:?}");
        assert_eq!(output[0], "");
        assert_eq!(output[18], "Objects found: 1");
        let list = msgs
            .iter()
            .find(|m| m.action_id() == Some("csc-1"))
            .unwrap();
        assert_eq!(list.get("EventList"), Some("start"));
        let done = msgs
            .iter()
            .find(|m| m.kind() == Kind::Event("CoreShowChannelsComplete"))
            .unwrap();
        assert_eq!(
            done.event(),
            Event::CoreShowChannelsComplete {
                action_id: Some("csc-1"),
                items: 0
            }
        );
        let getvar = msgs
            .iter()
            .find(|m| m.action_id() == Some("getvar-1"))
            .unwrap();
        assert_eq!(getvar.get("Value"), Some(""), "empty value written `Key: `");
        let unknown = msgs
            .iter()
            .find(|m| m.action_id() == Some("bad-1"))
            .unwrap();
        assert_eq!(unknown.kind(), Kind::Response("Error"));
    }

    fn events_of(path: &str) -> Vec<Message> {
        let bytes = std::fs::read(fixture_dir().join(path)).unwrap();
        decode_chunked(&bytes, &[bytes.len()])
            .unwrap()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Message(m) if matches!(m.kind(), Kind::Event(_)) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn typed_events_of_the_302_forward_through_the_callcode_path() {
        let events = events_of("callcode-path/ami-callcode-redirect302.server.txt");
        let typed: Vec<Event> = events.iter().map(Message::event).collect();
        let user = events
            .iter()
            .find(|m| {
                matches!(
                    m.event(),
                    Event::UserEvent {
                        name: "CallcodeRedirect",
                        ..
                    }
                )
            })
            .unwrap();
        let Event::UserEvent { chan: Some(c), .. } = user.event() else {
            panic!()
        };
        assert_eq!((c.uniqueid, c.linkedid), ("cc-r302-0002", "cc-r302-0001"));
        assert_eq!(user.get("Verification"), Some("vid-302-11aa"));
        assert_eq!(user.get("To"), Some("+15550003333"));
        assert!(typed.iter().any(|e| matches!(
            e,
            Event::DialEnd {
                status: "CANCEL",
                forward: Some("PJSIP/sipp/sip:+15550003333@127.0.0.1:15071"),
                caller: Some(_),
                ..
            }
        )));
        assert!(typed.iter().any(|e| matches!(
            e,
            Event::HangupRequest {
                cause: Some(23),
                tech_cause: Some(302),
                ..
            }
        )));
        assert!(typed.iter().any(|e| matches!(
            e,
            Event::OriginateResponse {
                success: true,
                reason: 4,
                uniqueid: Some("cc-r302-0001"),
                action_id: Some("orig-r302-1"),
                ..
            }
        )));
        // The dial Originate makes has only Dest* fields.
        assert!(typed.iter().any(|e| matches!(
            e,
            Event::DialBegin { caller: None, dest } if dest.uniqueid == "cc-r302-0001"
        )));
        assert!(typed.iter().any(
            |e| matches!(e, Event::Newstate(c) if c.state == Some(STATE_UP) && !c.is_local())
        ));
        assert!(typed
            .iter()
            .any(|e| matches!(e, Event::Unknown("BridgeEnter"))));
    }

    #[test]
    fn typed_hangup_causes_of_busy_and_the_failed_originate() {
        let typed: Vec<(String, Option<u16>, Option<u16>)> =
            events_of("callcode-path/ami-callcode-busy.server.txt")
                .iter()
                .filter_map(|m| match m.event() {
                    Event::Hangup {
                        chan,
                        cause,
                        tech_cause,
                    } => Some((chan.uniqueid.to_string(), cause, tech_cause)),
                    _ => None,
                })
                .collect();
        assert!(typed.contains(&("cc-busy-0001".into(), Some(17), None)));
        assert!(typed.contains(&("1795436485.43".into(), Some(17), Some(486))));
        let bad = events_of("ami-originate-badchannel.server.txt");
        assert!(bad.iter().any(|m| m.event()
            == Event::OriginateResponse {
                action_id: Some("orig-bad-1"),
                success: false,
                reason: 0,
                channel: "PJSIP/nosuchendpoint",
                uniqueid: Some("vc-bad-0001"),
            }));
    }

    #[test]
    fn originate_encodes_like_the_capture_and_round_trips() {
        let vars = [
            ("VERIFICATION_ID", "vid-flash-33cc"),
            ("SIPP_PORT", "15078"),
        ];
        let action = Action::Originate(Originate {
            channel: "Local/79161110178@callcode-out",
            context: "callcode-hold",
            exten: "s",
            priority: 1,
            caller_id: "74951091234",
            timeout_ms: 30000,
            channel_id: "cc-flash-0001",
            other_channel_id: Some("cc-flash-0002"),
            variables: &vars,
        });
        let mut out = BytesMut::new();
        action.encode("orig-flash-1", &mut out).unwrap();
        let client =
            std::fs::read(fixture_dir().join("callcode-path/ami-callcode-flash-hangup.client.txt"))
                .unwrap();
        assert!(
            memchr::memmem::find(&client, &out).is_some(),
            "not byte-exact to the capture:\n{}",
            String::from_utf8_lossy(&out)
        );
        let mut hangup = BytesMut::new();
        Action::Hangup {
            channel: "cc-flash-0001",
            cause: 16,
        }
        .encode("hangup-1", &mut hangup)
        .unwrap();
        assert!(memchr::memmem::find(&client, &hangup).is_some());
        let mut login = BytesMut::new();
        Action::Login {
            username: "flashcall",
            secret: "s3cr3t",
            events: None,
        }
        .encode("login-1", &mut login)
        .unwrap();
        assert!(client.starts_with(&login));

        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\n"[..]);
        buf.extend_from_slice(&out);
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Banner(_))
        ));
        let Some(Frame::Message(m)) = codec.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.get("Action"), Some("Originate"));
        assert_eq!(m.get("Async"), Some("true"));
        assert_eq!(
            m.get_all("Variable").collect::<Vec<_>>(),
            ["VERIFICATION_ID=vid-flash-33cc", "SIPP_PORT=15078"]
        );
    }

    #[test]
    fn values_with_line_breaks_are_refused_and_nothing_is_written() {
        let mut out = BytesMut::from(&b"kept"[..]);
        let err = Action::Hangup {
            channel: "x\r\nAction: Originate",
            cause: 16,
        }
        .encode("h-1", &mut out)
        .unwrap_err();
        assert!(matches!(err, AmiError::LineBreakInValue(_)));
        let vars = [("A", "1\nB=2")];
        let o = Originate {
            channel: "Local/1@c",
            context: "c",
            exten: "s",
            priority: 1,
            caller_id: "1",
            timeout_ms: 1,
            channel_id: "x",
            other_channel_id: None,
            variables: &vars,
        };
        assert!(Action::Originate(o).encode("o-1", &mut out).is_err());
        assert_eq!(&out[..], b"kept");
    }

    #[test]
    fn md5_login_key_is_the_hex_digest_of_challenge_and_secret() {
        // md5("840415273" + "s3cr3t"), computed independently with coreutils md5sum.
        assert_eq!(
            md5_key("840415273", "s3cr3t"),
            "cc5da49435fc4c44ff1252628d392068"
        );
        assert_eq!(md5_key("", ""), "d41d8cd98f00b204e9800998ecf8427e");
        let mut out = BytesMut::new();
        Action::LoginMd5 {
            username: "callcode",
            key: "abc",
            events: Some("call,user"),
        }
        .encode("l-1", &mut out)
        .unwrap();
        assert_eq!(
            &out[..],
            b"Action: Login\r\nActionID: l-1\r\nAuthType: MD5\r\nUsername: callcode\r\nKey: abc\r\nEvents: call,user\r\n\r\n"
        );
    }

    #[test]
    fn a_peer_that_is_not_asterisk_or_floods_is_refused() {
        let mut c = AmiCodec::new();
        let mut b = BytesMut::from(&b"HTTP/1.1 400 Bad Request\r\n"[..]);
        assert!(matches!(c.decode(&mut b), Err(AmiError::NotAmi(_))));
        let mut c = AmiCodec::new();
        let mut b = BytesMut::from(&vec![b'A'; MAX_BANNER_BYTES + 1][..]);
        assert!(matches!(c.decode(&mut b), Err(AmiError::BannerTooLong)));
        let mut c = AmiCodec::new();
        let mut b = BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\n"[..]);
        c.decode(&mut b).unwrap();
        let line =
            b"Output: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";
        for _ in 0..(MAX_MESSAGE_BYTES / line.len() + 1) {
            b.extend_from_slice(line);
        }
        assert!(matches!(
            c.decode(&mut b),
            Err(AmiError::MessageTooLarge(_))
        ));
        let many = "A: b\r\n".repeat(MAX_FIELDS + 1) + "\r\n";
        let mut c = AmiCodec::new();
        let mut b = BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\n"[..]);
        c.decode(&mut b).unwrap();
        b.extend_from_slice(many.as_bytes());
        assert!(matches!(c.decode(&mut b), Err(AmiError::TooManyFields)));
    }

    #[test]
    fn odd_lines_are_kept_without_panicking() {
        let m = Message::parse(Bytes::from_static(
            b"Event: X\r\nnocolon\r\nK:v\r\nE:\r\n\xff: \xfe",
        ))
        .unwrap();
        let f: Vec<(&str, &str)> = m.fields().collect();
        assert_eq!(f[1], ("nocolon", ""));
        assert_eq!(f[2], ("K", "v"));
        assert_eq!(f[3], ("E", ""));
        assert_eq!(f.len(), 5);
        assert_eq!(m.event(), Event::Unknown("X"));
        // An event missing the fields its type needs falls back to Unknown.
        let m = Message::parse(Bytes::from_static(b"Event: Hangup\r\nCause: 16")).unwrap();
        assert_eq!(m.event(), Event::Unknown("Hangup"));
    }

    proptest! {
        #[test]
        fn any_chunking_of_any_capture_gives_the_same_frames(
            which in 0usize..64,
            chunks in proptest::collection::vec(1usize..700, 1..20),
        ) {
            let captures = server_captures();
            let (name, bytes) = &captures[which % captures.len()];
            let whole = decode_chunked(bytes, &[bytes.len()]).unwrap();
            let split = decode_chunked(bytes, &chunks).unwrap();
            prop_assert_eq!(whole, split, "{}", name);
        }

        #[test]
        fn random_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            banner: bool,
        ) {
            let mut codec = AmiCodec::new();
            let mut buf = BytesMut::new();
            if banner {
                buf.extend_from_slice(b"Asterisk Call Manager/11.0.0\r\n");
            }
            buf.extend_from_slice(&data);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                if let Frame::Message(m) = f {
                    let _ = m.event();
                    let _ = m.fields().count();
                }
            }
        }

        #[test]
        fn encoded_actions_decode_to_the_same_fields(
            channel in "[ -~]{0,40}",
            cause in any::<u16>(),
            vars in proptest::collection::vec(("[A-Z_]{1,12}", "[ -~]{0,30}"), 0..5),
        ) {
            let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let o = Originate {
                channel: &channel, context: "ctx", exten: "s", priority: 1, caller_id: "74951091234",
                timeout_ms: 45000, channel_id: "id", other_channel_id: Some("id-2"), variables: &pairs,
            };
            let mut out = BytesMut::new();
            Action::Originate(o).encode("o-1", &mut out).unwrap();
            Action::Hangup { channel: &channel, cause }.encode("h-1", &mut out).unwrap();
            let mut codec = AmiCodec { banner_seen: true, scanned: 0 };
            let Some(Frame::Message(orig)) = codec.decode(&mut out).unwrap() else { panic!() };
            let Some(Frame::Message(hang)) = codec.decode(&mut out).unwrap() else { panic!() };
            prop_assert_eq!(orig.get("Channel"), Some(channel.as_str()));
            let got: Vec<String> = orig.get_all("Variable").map(str::to_string).collect();
            let want: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(hang.get("Cause").and_then(|c| c.parse::<u16>().ok()), Some(cause));
            prop_assert!(out.is_empty());
        }
    }
}
