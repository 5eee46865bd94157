//! ESL framing, sans-IO: splits a byte stream into messages (a header block ended by an empty
//! line, then exactly `Content-Length` body bytes) and splits a client's command stream the same
//! way for the test peer and the outbound listener.
//!
//! Pure functions over `BytesMut`/`Bytes`: no sockets, no tokio, no allocation per header (header
//! positions are offsets into the frozen block). Peer bytes never panic here: every size is capped
//! and every index is checked. What a message *means* (events, replies) is `event.rs`'s business.
//!
//! Wire facts relied on (fixture README, facts 1, 6, 13): LF only, never CRLF; header order is not
//! fixed (Content-Length comes first in events, last in `connect` replies); messages without
//! Content-Length have no body; bodies contain blank lines, so they are read by length only.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// Caps on what one message may be. FreeSWITCH's largest message in the captures is an event of
/// about 12 KB and the outbound `connect` reply is a 7.3 KB header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest header block, blank line included.
    pub max_header_bytes: usize,
    /// Most header lines in one block.
    pub max_headers: usize,
    /// Largest `Content-Length`.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 4096,
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("header block longer than {0} bytes")]
    HeaderTooLong(usize),
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("Content-Length {0} above the limit")]
    BodyTooLarge(u64),
    #[error("Content-Length is not a number")]
    BadContentLength,
}

/// One header line as offsets into its block: `name` and `value` ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

/// Splits `block` (header lines, without the final blank line) into spans. A line without `:` is
/// kept as a name with an empty value: FreeSWITCH never sends one, and it is not worth dropping the
/// connection over.
pub(crate) fn header_spans(block: &[u8], max: usize) -> Result<Vec<Span>, CodecError> {
    let mut spans = Vec::with_capacity(16.min(max));
    let mut start = 0usize;
    while start < block.len() {
        let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |i| start + i);
        let line = &block[start..end];
        if !line.is_empty() {
            if spans.len() >= max {
                return Err(CodecError::TooManyHeaders(max));
            }
            let (name, value) = match memchr::memchr(b':', line) {
                Some(c) => {
                    let v = if line.get(c + 1) == Some(&b' ') {
                        c + 2
                    } else {
                        c + 1
                    };
                    ((start, start + c), (start + v, end))
                }
                None => ((start, end), (end, end)),
            };
            spans.push(Span {
                name: (name.0 as u32, name.1 as u32),
                value: (value.0 as u32, value.1 as u32),
            });
        }
        start = end + 1;
    }
    Ok(spans)
}

/// A header block with its lines located: lookups are linear (blocks are short) and return slices
/// of the block. Names compare case-sensitively, as FreeSWITCH writes them.
#[derive(Clone, PartialEq, Eq)]
pub struct Headers {
    block: Bytes,
    spans: Vec<Span>,
}

impl Headers {
    pub(crate) fn from_parts(block: Bytes, spans: Vec<Span>) -> Headers {
        Headers { block, spans }
    }

    pub fn parse(block: Bytes, max: usize) -> Result<Headers, CodecError> {
        let spans = header_spans(&block, max)?;
        Ok(Headers { block, spans })
    }

    fn slice(&self, span: (u32, u32)) -> &[u8] {
        span_bytes(&self.block, span)
    }

    /// The first value of `name`, raw.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.spans
            .iter()
            .find(|s| self.slice(s.name) == name.as_bytes())
            .map(|s| self.slice(s.value))
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every `(name, value)` in wire order, duplicates included.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|s| (self.slice(s.name), self.slice(s.value)))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// One ESL message: its outer headers and its body (empty when there was no Content-Length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub headers: Headers,
    pub body: Bytes,
}

impl Frame {
    pub fn content_type(&self) -> Option<&str> {
        self.headers.get_str("Content-Type")
    }
}

/// Where the header block ends: the index just past its blank line. `from` lets a caller resume
/// the scan where the previous, incomplete attempt stopped.
fn block_end(buf: &[u8], from: usize) -> Option<usize> {
    // Start one byte back: the previous scan may have stopped between the two LFs.
    let from = from.saturating_sub(1);
    memchr::memmem::find(buf.get(from..)?, b"\n\n").map(|i| from + i + 2)
}

fn parse_length(v: &[u8]) -> Result<u64, CodecError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(CodecError::BadContentLength);
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(CodecError::BadContentLength)
    })
}

/// Incremental decoder state: how far the current header block has been scanned, so a slow
/// trickle of bytes costs linear time, and the located header block of a frame whose body is
/// still arriving.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    limits: Limits,
    scanned: usize,
    pending: Option<(Vec<Span>, usize, usize)>,
}

impl FrameDecoder {
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            limits,
            scanned: 0,
            pending: None,
        }
    }

    /// Takes one complete frame off the front of `buf`, or `Ok(None)` until there is one.
    /// Stray blank lines before a header block (none seen from FreeSWITCH) are skipped.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if self.pending.is_none() {
            let skip = buf.iter().take_while(|b| **b == b'\n').count();
            if skip > 0 {
                buf.advance(skip);
                self.scanned = 0;
            }
            let Some(end) = block_end(buf, self.scanned) else {
                self.scanned = buf.len();
                if buf.len() > self.limits.max_header_bytes {
                    return Err(CodecError::HeaderTooLong(self.limits.max_header_bytes));
                }
                return Ok(None);
            };
            self.scanned = 0;
            if end > self.limits.max_header_bytes {
                return Err(CodecError::HeaderTooLong(self.limits.max_header_bytes));
            }
            let block = buf.get(..end - 2).unwrap_or_default();
            let spans = header_spans(block, self.limits.max_headers)?;
            let length = spans
                .iter()
                .find(|s| span_bytes(block, s.name) == b"Content-Length")
                .map(|s| parse_length(span_bytes(block, s.value)))
                .transpose()?;
            let body_len = match length {
                Some(n) if n > self.limits.max_body_bytes as u64 => {
                    return Err(CodecError::BodyTooLarge(n))
                }
                Some(n) => n as usize,
                None => 0,
            };
            self.pending = Some((spans, end, body_len));
        }
        let Some((_, end, body_len)) = &self.pending else {
            return Ok(None);
        };
        let (end, body_len) = (*end, *body_len);
        if buf.len() < end + body_len {
            buf.reserve(end + body_len - buf.len());
            return Ok(None);
        }
        let Some((spans, _, _)) = self.pending.take() else {
            return Ok(None);
        };
        // Zero-copy from here: the block and the body are views of the received buffer.
        let block = buf.split_to(end).freeze().slice(..end - 2);
        let body = buf.split_to(body_len).freeze();
        Ok(Some(Frame {
            headers: Headers { block, spans },
            body,
        }))
    }
}

fn span_bytes(block: &[u8], (a, b): (u32, u32)) -> &[u8] {
    block.get(a as usize..b as usize).unwrap_or_default()
}

/// Decodes a whole byte slice into frames (tests, benches, the fuzz target): the frames, and the
/// number of trailing bytes that did not form a complete frame.
pub fn decode_all(bytes: &[u8], limits: Limits) -> Result<(Vec<Frame>, usize), CodecError> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = FrameDecoder::new(limits);
    let mut frames = Vec::new();
    while let Some(f) = decoder.decode(&mut buf)? {
        frames.push(f);
    }
    Ok((frames, buf.len()))
}

/// tokio-util adapter so the driver can use `FramedRead`; all the work is in `FrameDecoder`.
#[derive(Debug, Default)]
pub struct EslCodec {
    decoder: FrameDecoder,
}

impl EslCodec {
    pub fn new(limits: Limits) -> EslCodec {
        EslCodec {
            decoder: FrameDecoder::new(limits),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl tokio_util::codec::Decoder for EslCodec {
    type Item = Frame;
    type Error = StreamError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, StreamError> {
        Ok(self.decoder.decode(src)?)
    }
}

/// A command as a client sends it: the first line (`api status`, `sendmsg <uuid>`), the header
/// lines after it, and a body when one was announced. Used by the outbound listener's tests and
/// the test peer to read what callcode wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFrame {
    pub line: Bytes,
    pub headers: Headers,
    pub body: Bytes,
}

impl CommandFrame {
    pub fn line_str(&self) -> &str {
        std::str::from_utf8(&self.line).unwrap_or("")
    }
}

/// Takes one command off the front of `buf`. The first line is not a header (`bgapi originate
/// {...}'&socket(127.0.0.1:8084 async full)'` contains colons), so it is split off first.
pub fn decode_command(
    buf: &mut BytesMut,
    limits: Limits,
) -> Result<Option<CommandFrame>, CodecError> {
    let skip = buf.iter().take_while(|b| **b == b'\n').count();
    buf.advance(skip);
    let Some(end) = block_end(buf, 0) else {
        if buf.len() > limits.max_header_bytes {
            return Err(CodecError::HeaderTooLong(limits.max_header_bytes));
        }
        return Ok(None);
    };
    if end > limits.max_header_bytes {
        return Err(CodecError::HeaderTooLong(limits.max_header_bytes));
    }
    let block = buf.get(..end - 2).unwrap_or_default();
    let line_end = memchr::memchr(b'\n', block).unwrap_or(block.len());
    let line = Bytes::copy_from_slice(block.get(..line_end).unwrap_or_default());
    let rest = Bytes::copy_from_slice(block.get(line_end + 1..).unwrap_or_default());
    let headers = Headers::parse(rest, limits.max_headers)?;
    let body_len = match headers.get("content-length") {
        Some(v) => {
            let n = parse_length(v)?;
            if n > limits.max_body_bytes as u64 {
                return Err(CodecError::BodyTooLarge(n));
            }
            n as usize
        }
        None => 0,
    };
    if buf.len() < end + body_len {
        return Ok(None);
    }
    buf.advance(end);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(CommandFrame {
        line,
        headers,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_without_body_and_an_event_with_one() {
        let wire = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\nContent-Length: 5\nContent-Type: api/response\n\na\n\nbc";
        let (frames, rest) = decode_all(wire, Limits::default()).unwrap();
        assert_eq!(rest, 0);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].content_type(), Some("command/reply"));
        assert_eq!(
            frames[0].headers.get_str("Reply-Text"),
            Some("+OK accepted")
        );
        assert!(frames[0].body.is_empty());
        assert_eq!(&frames[1].body[..], b"a\n\nbc");
    }

    #[test]
    fn partial_input_waits_and_resumes() {
        let wire = b"Content-Length: 3\nContent-Type: text/event-plain\n\nabc";
        let mut d = FrameDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = d.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == wire.len() - 1, "at byte {i}");
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn caps_are_enforced() {
        let limits = Limits {
            max_header_bytes: 32,
            max_headers: 2,
            max_body_bytes: 10,
        };
        let too_long = vec![b'a'; 40];
        assert_eq!(
            decode_all(&too_long, limits).unwrap_err(),
            CodecError::HeaderTooLong(32)
        );
        assert_eq!(
            decode_all(b"A: 1\nB: 2\nC: 3\n\n", limits).unwrap_err(),
            CodecError::TooManyHeaders(2)
        );
        assert_eq!(
            decode_all(b"Content-Length: 11\n\n", limits).unwrap_err(),
            CodecError::BodyTooLarge(11)
        );
        for bad in [
            &b"Content-Length: -1\n\n"[..],
            b"Content-Length: x\n\n",
            b"Content-Length: 99999999999999999999999\n\n",
            b"Content-Length: \n\n",
        ] {
            assert_eq!(
                decode_all(bad, Limits::default()).unwrap_err(),
                CodecError::BadContentLength
            );
        }
    }

    #[test]
    fn duplicate_headers_are_kept_in_order() {
        let (f, _) = decode_all(b"A: 1\nA: 2\nodd line\n\n", Limits::default()).unwrap();
        let all: Vec<_> = f[0].headers.iter().collect();
        assert_eq!(
            all,
            vec![
                (&b"A"[..], &b"1"[..]),
                (&b"A"[..], &b"2"[..]),
                (&b"odd line"[..], &b""[..])
            ]
        );
        assert_eq!(f[0].headers.get("A"), Some(&b"1"[..]));
    }

    #[test]
    fn a_command_with_a_colon_in_its_first_line() {
        let mut buf = BytesMut::from(
            &b"bgapi originate {a=b}sofia/x '&socket(127.0.0.1:8084 async full)'\nJob-UUID: j1\n\nexit\n\n"[..],
        );
        let c = decode_command(&mut buf, Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            c.line_str(),
            "bgapi originate {a=b}sofia/x '&socket(127.0.0.1:8084 async full)'"
        );
        assert_eq!(c.headers.get_str("Job-UUID"), Some("j1"));
        let c = decode_command(&mut buf, Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(c.line_str(), "exit");
        assert!(c.headers.is_empty());
        assert!(decode_command(&mut buf, Limits::default())
            .unwrap()
            .is_none());
    }
}
