//! ESL messages as meaning: replies, api responses, events in their three formats, disconnect
//! notices, log lines, and anything else surfaced as `Message::Other` (never fatal).
//!
//! Events are flat multimaps of strings: duplicate names occur (`Hangup-Cause` twice in
//! CHANNEL_HANGUP_COMPLETE, in plain *and* json; fixture README fact 8), so nothing here
//! deserialises into a struct with named fields. Plain events stay zero-copy: the header lines are
//! located in the received buffer and a value is percent-decoded only when read, and only if it
//! contains `%` (fact 6; `+` never means space). JSON and XML events are converted into the same
//! shape once, when parsed. No I/O, no panics on peer bytes.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use super::codec::{header_spans, CodecError, Frame, Headers, Span};

/// How an event's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Json,
    Xml,
}

/// One event, any format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    headers: Headers,
    percent_encoded: bool,
    /// The event's own body (BACKGROUND_JOB output, a log line), empty when there is none.
    pub body: Bytes,
    pub format: Format,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("json event: {0}")]
    Json(String),
    #[error("xml event: no <headers> element")]
    Xml,
}

/// Percent-decodes FreeSWITCH's `switch_url_encode` output. Invalid escapes are kept as they are,
/// invalid UTF-8 is replaced: a header value is text.
pub fn percent_decode(raw: &[u8]) -> Cow<'_, str> {
    if memchr::memchr(b'%', raw).is_none() {
        return String::from_utf8_lossy(raw);
    }
    match percent_encoding::percent_decode(raw).decode_utf8_lossy() {
        Cow::Borrowed(s) => Cow::Owned(s.to_owned()),
        Cow::Owned(s) => Cow::Owned(s),
    }
}

impl Event {
    /// Parses the body of a `text/event-plain` frame: header lines, a blank line, then the
    /// event's own body of its own (inner) Content-Length.
    pub fn parse_plain(body: Bytes, max_headers: usize) -> Result<Event, EventError> {
        let (block_len, rest_start) = match memchr::memmem::find(&body, b"\n\n") {
            Some(i) => (i, i + 2),
            None => (body.len(), body.len()),
        };
        let block = body.slice(..block_len);
        let headers = Headers::parse(block, max_headers)?;
        let inner = match headers.get("Content-Length") {
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(0),
            None => 0,
        };
        let rest = body.slice(rest_start..);
        let body = rest.slice(..inner.min(rest.len()));
        Ok(Event {
            headers,
            percent_encoded: true,
            body,
            format: Format::Plain,
        })
    }

    /// Parses a `text/event-json` body: one flat object of strings, duplicate keys kept, `_body`
    /// taken as the body.
    pub fn parse_json(body: &[u8], max_headers: usize) -> Result<Event, EventError> {
        if let Some((block, spans, event_body)) = scan_flat_json(body, max_headers) {
            let event_body = event_body
                .map(|(a, b)| block.slice(a..b))
                .unwrap_or_default();
            return Ok(Event {
                headers: Headers::from_parts(block, spans),
                percent_encoded: false,
                body: event_body,
                format: Format::Json,
            });
        }
        Event::parse_json_serde(body, max_headers)
    }

    /// The general JSON path (any escape, non-string values, and every error report).
    pub fn parse_json_serde(body: &[u8], max_headers: usize) -> Result<Event, EventError> {
        use serde::de::{Deserializer, MapAccess, Visitor};
        // Keys and values are copied straight into one buffer; strings without escapes are
        // borrowed from the input on the way, so no String is built per header.
        struct Flat {
            buf: BytesMut,
            spans: Vec<Span>,
            body: Option<(usize, usize)>,
            max: usize,
        }
        impl<'de> Visitor<'de> for &mut Flat {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a flat JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                while let Some(k) = map.next_key::<JsonText<'de>>()? {
                    if self.spans.len() >= self.max {
                        return Err(serde::de::Error::custom("too many keys"));
                    }
                    let n0 = self.buf.len();
                    self.buf.extend_from_slice(k.0.as_bytes());
                    let n1 = self.buf.len();
                    let v = map.next_value::<JsonText<'de>>()?;
                    self.buf.extend_from_slice(v.0.as_bytes());
                    let v1 = self.buf.len();
                    if k.0 == "_body" {
                        self.body = Some((n1, v1));
                    } else {
                        self.spans.push(Span {
                            name: (n0 as u32, n1 as u32),
                            value: (n1 as u32, v1 as u32),
                        });
                    }
                }
                Ok(())
            }
        }
        let mut flat = Flat {
            buf: BytesMut::with_capacity(body.len()),
            spans: Vec::with_capacity(64),
            body: None,
            max: max_headers,
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        de.deserialize_map(&mut flat)
            .and_then(|_| de.end())
            .map_err(|e| EventError::Json(e.to_string()))?;
        let block = flat.buf.freeze();
        let event_body = flat
            .body
            .map(|(a, b)| block.slice(a..b))
            .unwrap_or_default();
        Ok(Event {
            headers: Headers::from_parts(block, flat.spans),
            percent_encoded: false,
            body: event_body,
            format: Format::Json,
        })
    }

    /// Parses a `text/event-xml` body: `<event><headers><Name>value</Name>...</headers>` and an
    /// optional `<body>`. Values are percent-encoded as in plain events, and XML-escaped.
    pub fn parse_xml(body: &[u8], max_headers: usize) -> Result<Event, EventError> {
        let text = String::from_utf8_lossy(body);
        let start = text.find("<headers>").ok_or(EventError::Xml)? + "<headers>".len();
        let end = text[start..]
            .find("</headers>")
            .map_or(text.len(), |i| start + i);
        let mut pairs = Vec::new();
        let mut rest = &text[start..end];
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else { break };
            let name = &after[..close];
            let tail = &after[close + 1..];
            let end_tag = format!("</{name}>");
            let Some(v_end) = tail.find(&end_tag) else {
                break;
            };
            if pairs.len() >= max_headers {
                return Err(CodecError::TooManyHeaders(max_headers).into());
            }
            pairs.push((name.to_string(), xml_unescape(&tail[..v_end])));
            rest = &tail[v_end + end_tag.len()..];
        }
        let event_body = text
            .find("<body>")
            .and_then(|b| {
                let from = b + "<body>".len();
                text[from..]
                    .rfind("</body>")
                    .map(|e| Bytes::from(xml_unescape(&text[from..from + e])))
            })
            .unwrap_or_default();
        Ok(Event {
            headers: owned_headers(pairs.into_iter()),
            percent_encoded: true,
            body: event_body,
            format: Format::Xml,
        })
    }

    /// The first value of `name`, decoded.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let raw = self.headers.get(name)?;
        Some(if self.percent_encoded {
            percent_decode(raw)
        } else {
            String::from_utf8_lossy(raw)
        })
    }

    /// The first value of `name` exactly as received (still percent-encoded in plain events).
    pub fn get_raw(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }

    /// Whether the first value of `name` equals `expected` after decoding, without allocating for
    /// values that need no decoding.
    pub fn is(&self, name: &str, expected: &str) -> bool {
        match self.headers.get(name) {
            Some(raw) if self.percent_encoded && memchr::memchr(b'%', raw).is_some() => {
                percent_decode(raw) == expected
            }
            Some(raw) => raw == expected.as_bytes(),
            None => false,
        }
    }

    /// Every value of `name`, decoded, in wire order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| *n == name.as_bytes())
            .map(move |(_, v)| {
                if self.percent_encoded {
                    percent_decode(v)
                } else {
                    String::from_utf8_lossy(v)
                }
            })
    }

    /// Every `(name, value)` in wire order, values decoded.
    pub fn decoded(&self) -> impl Iterator<Item = (&[u8], Cow<'_, str>)> {
        self.headers.iter().map(move |(n, v)| {
            let v = if self.percent_encoded {
                percent_decode(v)
            } else {
                String::from_utf8_lossy(v)
            };
            (n, v)
        })
    }

    pub fn name(&self) -> Option<Cow<'_, str>> {
        self.get("Event-Name")
    }

    pub fn header_count(&self) -> usize {
        self.headers.len()
    }
}

/// The fast path for what FreeSWITCH sends: one flat object whose values are all strings, with
/// only the short escapes (`\"`, `\\`, `\/`, `\n`, `\r`, `\t`, `\b`, `\f`). Keys and values are
/// copied (unescaped) into one buffer. Anything else (`\u` escapes, numbers, nesting, a syntax
/// error, too many keys) returns `None` and goes to the serde path, which also reports errors.
/// Lenient where serde is strict in one way only: raw control bytes inside strings are kept.
/// The headers' buffer, their spans, and the `_body` range in the buffer.
type Scanned = (Bytes, Vec<Span>, Option<(usize, usize)>);

fn scan_flat_json(body: &[u8], max: usize) -> Option<Scanned> {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            i += 1;
        }
        i
    }
    /// Copies the string starting at `i` (its opening quote) into `out`; returns its range in
    /// `out` and the index after the closing quote.
    fn string(b: &[u8], i: usize, out: &mut BytesMut) -> Option<(usize, usize, usize)> {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = out.len();
        let mut j = i + 1;
        loop {
            let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
            out.extend_from_slice(b.get(j..k)?);
            if b.get(k) == Some(&b'"') {
                return Some((start, out.len(), k + 1));
            }
            let c = match b.get(k + 1)? {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'b' => 0x08,
                b'f' => 0x0c,
                _ => return None,
            };
            out.extend_from_slice(&[c]);
            j = k + 2;
        }
    }
    let mut out = BytesMut::with_capacity(body.len());
    let mut spans = Vec::with_capacity(64);
    let mut event_body = None;
    let mut i = ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(body, i + 1);
    if body.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (n0, n1, next) = string(body, i, &mut out)?;
            i = ws(body, next);
            if body.get(i) != Some(&b':') {
                return None;
            }
            i = ws(body, i + 1);
            let (v0, v1, next) = string(body, i, &mut out)?;
            if out.get(n0..n1) == Some(b"_body") {
                event_body = Some((v0, v1));
            } else {
                if spans.len() >= max {
                    return None;
                }
                spans.push(Span {
                    name: (n0 as u32, n1 as u32),
                    value: (v0 as u32, v1 as u32),
                });
            }
            i = ws(body, next);
            match body.get(i) {
                Some(b',') => i = ws(body, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if ws(body, i) != body.len() {
        return None;
    }
    Some((out.freeze(), spans, event_body))
}

/// A JSON scalar as text: strings borrowed when they need no unescaping, numbers and booleans
/// written out. Arrays and objects are refused: FreeSWITCH's events are flat.
struct JsonText<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonText<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(JsonText(Cow::Borrowed("")))
            }
        }
        d.deserialize_any(V)
    }
}

fn owned_headers(pairs: impl Iterator<Item = (String, String)>) -> Headers {
    let mut buf = BytesMut::new();
    let mut spans = Vec::new();
    for (k, v) in pairs {
        let n0 = buf.len() as u32;
        buf.extend_from_slice(k.as_bytes());
        let n1 = buf.len() as u32;
        buf.extend_from_slice(v.as_bytes());
        let v1 = buf.len() as u32;
        spans.push(Span {
            name: (n0, n1),
            value: (n1, v1),
        });
    }
    Headers::from_parts(buf.freeze(), spans)
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// One ESL message by its Content-Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `auth/request`: the inbound greeting.
    AuthRequest,
    /// `command/reply`: `Reply-Text` starts with `+OK` or `-ERR`. `headers` carry the rest
    /// (`Job-UUID` for bgapi; the whole channel for the outbound `connect` reply).
    CommandReply {
        reply: String,
        headers: Headers,
    },
    /// `api/response`: the raw output; the trailing newline is not guaranteed (fact 4).
    ApiResponse(Bytes),
    Event(Event),
    /// `text/disconnect-notice`, with its headers (`Content-Disposition: linger|disconnect`).
    Disconnect {
        headers: Headers,
        body: Bytes,
    },
    /// `log/data`: sent only after `log <level>`; callcode never asks for it.
    Log(Bytes),
    /// Any other Content-Type, surfaced rather than fatal.
    Other {
        content_type: String,
        body: Bytes,
    },
}

impl Message {
    pub fn from_frame(frame: Frame, max_headers: usize) -> Result<Message, EventError> {
        let ct = frame.headers.get("Content-Type").unwrap_or_default();
        Ok(match ct {
            b"auth/request" => Message::AuthRequest,
            b"command/reply" => {
                // Inbound replies are not encoded (fact 3); the outbound `connect` reply is
                // (fact 13). Decoding is harmless for the former: they never contain `%`.
                let reply = frame
                    .headers
                    .get("Reply-Text")
                    .map(|v| percent_decode(v).trim_end().to_string())
                    .unwrap_or_default();
                Message::CommandReply {
                    reply,
                    headers: frame.headers,
                }
            }
            b"api/response" => Message::ApiResponse(frame.body),
            b"text/event-plain" => Message::Event(Event::parse_plain(frame.body, max_headers)?),
            b"text/event-json" => Message::Event(Event::parse_json(&frame.body, max_headers)?),
            b"text/event-xml" => Message::Event(Event::parse_xml(&frame.body, max_headers)?),
            b"text/disconnect-notice" => Message::Disconnect {
                headers: frame.headers,
                body: frame.body,
            },
            b"log/data" => Message::Log(frame.body),
            other => Message::Other {
                content_type: String::from_utf8_lossy(other).into_owned(),
                body: frame.body,
            },
        })
    }
}

/// Re-exported so tests and benches can split an event body without a frame.
pub fn plain_header_count(body: &[u8], max: usize) -> Result<usize, CodecError> {
    let block = memchr::memmem::find(body, b"\n\n").map_or(body, |i| &body[..i]);
    Ok(header_spans(block, max)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_fast_json_path_agrees_with_serde(
            pairs in prop::collection::vec(("\\PC{0,12}", any::<String>()), 0..12),
            body in prop::option::of(any::<String>()),
            spaced in any::<bool>(),
        ) {
            let mut map = Vec::new();
            for (k, v) in &pairs {
                map.push(format!("{}:{}", serde_json::to_string(k).unwrap(), serde_json::to_string(v).unwrap()));
            }
            if let Some(b) = &body {
                map.push(format!("\"_body\":{}", serde_json::to_string(b).unwrap()));
            }
            let sep = if spaced { ", " } else { "," };
            let text = format!("{{{}}}", map.join(sep));
            let fast = Event::parse_json(text.as_bytes(), 64).unwrap();
            let slow = Event::parse_json_serde(text.as_bytes(), 64).unwrap();
            let a: Vec<_> = fast.decoded().map(|(n, v)| (n.to_vec(), v.into_owned())).collect();
            let b: Vec<_> = slow.decoded().map(|(n, v)| (n.to_vec(), v.into_owned())).collect();
            prop_assert_eq!(a, b);
            prop_assert_eq!(fast.body, slow.body);
        }
    }

    #[test]
    fn plain_values_decode_lazily_and_plus_stays() {
        let e = Event::parse_plain(
            Bytes::from_static(
                b"Event-Name: CHANNEL_ANSWER\nA: a%20b+c\nB: 100%25\nB: dup\nBad: %zz%4\n\n",
            ),
            64,
        )
        .unwrap();
        assert_eq!(e.name().as_deref(), Some("CHANNEL_ANSWER"));
        assert!(matches!(e.get("Event-Name"), Some(Cow::Borrowed(_))));
        assert_eq!(e.get("A").as_deref(), Some("a b+c"));
        assert_eq!(e.get("B").as_deref(), Some("100%"));
        assert_eq!(e.get_all("B").collect::<Vec<_>>(), vec!["100%", "dup"]);
        assert_eq!(e.get("Bad").as_deref(), Some("%zz%4"));
        assert!(e.is("A", "a b+c"));
        assert!(!e.is("A", "a%20b+c"));
        assert!(e.body.is_empty());
    }

    #[test]
    fn json_keeps_duplicates_and_the_body() {
        let e = Event::parse_json(
            br#"{"Event-Name":"X","Hangup-Cause":"USER_BUSY","Hangup-Cause":"USER_BUSY","N":5,"_body":"-ERR USER_BUSY\n"}"#,
            64,
        )
        .unwrap();
        assert_eq!(e.get_all("Hangup-Cause").count(), 2);
        assert_eq!(e.get("N").as_deref(), Some("5"));
        assert_eq!(&e.body[..], b"-ERR USER_BUSY\n");
        assert!(Event::parse_json(b"[1]", 64).is_err());
        assert!(Event::parse_json(br#"{"a":{"b":"c"}}"#, 64).is_err());
        assert!(Event::parse_json(br#"{"a":"b""#, 64).is_err());
        assert!(Event::parse_json(b"{\"a\":\"b\"} x", 64).is_err());
        assert!(Event::parse_json(br#"{"a":"1","b":"2"}"#, 1).is_err());
    }

    #[test]
    fn unknown_content_types_are_surfaced_and_log_lines_recognised() {
        use super::super::codec::{decode_all, Limits};
        let (frames, _) = decode_all(
            b"Content-Type: text/rude-rejection\nContent-Length: 3\n\nabc",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(
            Message::from_frame(frames[0].clone(), 64).unwrap(),
            Message::Other {
                content_type: "text/rude-rejection".into(),
                body: Bytes::from_static(b"abc"),
            }
        );
        // -02-: `log 6` gives log/data frames (fact 11), `event xml` gives text/event-xml whose
        // values are percent-encoded like plain ones (fact 10).
        let rx = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/freeswitch/esl-inbound-02-xml-events-and-log.rx.txt"
        ))
        .unwrap();
        let messages: Vec<Message> = decode_all(&rx, Limits::default())
            .unwrap()
            .0
            .into_iter()
            .map(|f| Message::from_frame(f, 4096).unwrap())
            .collect();
        let logs = messages
            .iter()
            .filter(|m| matches!(m, Message::Log(b) if !b.is_empty()))
            .count();
        assert!(logs > 0);
        let xml: Vec<&Event> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Event(e) if e.format == Format::Xml => Some(e),
                _ => None,
            })
            .collect();
        assert!(!xml.is_empty());
        let date = xml[0].get("Event-Date-Local").unwrap();
        assert!(
            date.contains(' ') && date.contains(':') && !date.contains('%'),
            "{date}"
        );
    }
}
