//! FastAGI codec, sans-IO: the environment block Asterisk sends on connect, the commands callcode
//! sends, and the replies (`200 result=...`, `510`, `511`, multi-line `520-` usage blocks) and the
//! unsolicited `HANGUP` line Asterisk sends. Pure functions over `bytes`; no tokio, no sockets.
//!
//! It must never panic on peer bytes, and every size a peer controls is capped. It does not know
//! what a command is for: the order of commands and the meaning of a reply belong to `fastagi`.
//!
//! Wire facts (Asterisk 22, `fixtures/asterisk/README.md`, "FastAGI observations"): every line ends
//! in `\n` alone; the environment block is `agi_<key>: <value>` lines ended by an empty line and may
//! arrive in several reads; a reply is complete at the first line matching `^\d{3} `, so a `520-`
//! usage block with free-text lines in between is one reply; `HANGUP` is an out-of-band line that
//! can arrive between a command and its reply.
//!
//! CONTRACT (fixed; the Asterisk backend codes against it — extend, do not rename):
//! - `AgiEnvironment::get("uniqueid")` etc. take the key without the `agi_` prefix;
//!   `AgiEnvironment::arg(1)` is `agi_arg_1`.
//! - `AgiCommand::encode` writes one `\n`-terminated command line.
//! - `AgiReply` is one complete reply.

use std::fmt::Write as _;

use bytes::{Buf, BufMut, BytesMut};

/// Longest line accepted from Asterisk, `\n` included. The longest seen is a 520 usage text line
/// of ~460 bytes; a GET VARIABLE value is echoed in one line, so leave room for long values.
pub const MAX_LINE_LEN: usize = 8 * 1024;
/// Largest environment block (the captured ones are ~520 bytes).
pub const MAX_ENV_LEN: usize = 16 * 1024;
/// Most `agi_*` lines in one environment block (Asterisk sends 21 plus one per argument).
pub const MAX_ENV_FIELDS: usize = 256;
/// Most lines in one multi-line (`520-`) reply (the captured ones have 3 to 7).
pub const MAX_REPLY_LINES: usize = 256;

/// The `agi_*` variables of one session, in the order Asterisk sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgiEnvironment {
    /// Keys (without `agi_`) and values back to back, so a block costs two allocations, not two
    /// per line.
    text: String,
    /// Per field, where its key and its value end in `text`; a key starts where the previous
    /// value ended.
    ends: Vec<(usize, usize)>,
}

impl AgiEnvironment {
    /// The value of `agi_<key>`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields().find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// `agi_arg_<n>`, 1-based.
    pub fn arg(&self, n: usize) -> Option<&str> {
        let mut key = String::with_capacity(8);
        // Writing to a String cannot fail.
        let _ = write!(key, "arg_{n}");
        self.get(&key)
    }

    /// Builds an environment from `(key, value)` pairs, keys without the `agi_` prefix (for a peer
    /// that plays Asterisk, e.g. in tests).
    pub fn from_fields<K: AsRef<str>, V: AsRef<str>>(
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> AgiEnvironment {
        let mut env = AgiEnvironment::default();
        for (k, v) in fields {
            env.push(k.as_ref(), v.as_ref());
        }
        env
    }

    fn push(&mut self, key: &str, value: &str) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((key_end, self.text.len()));
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// All fields in wire order, keys without the `agi_` prefix.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|&(_, value_end)| value_end));
        starts
            .zip(&self.ends)
            .map(|(start, &(key_end, value_end))| {
                // The offsets were taken from pushes of whole `str`s, so they are char boundaries.
                let key = self.text.get(start..key_end).unwrap_or("");
                let value = self.text.get(key_end..value_end).unwrap_or("");
                (key, value)
            })
    }

    /// Writes the block as Asterisk does: `agi_<key>: <value>\n` per field, then an empty line.
    /// A key or value holding `\n` or `\r` (which could not have come from Asterisk) is refused.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), AgiEncodeError> {
        for (k, v) in self.fields() {
            check_line_safe(k)?;
            check_line_safe(v)?;
        }
        for (k, v) in self.fields() {
            dst.reserve(k.len() + v.len() + 7);
            dst.put_slice(b"agi_");
            dst.put_slice(k.as_bytes());
            dst.put_slice(b": ");
            dst.put_slice(v.as_bytes());
            dst.put_u8(b'\n');
        }
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// A command callcode sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgiCommand<'a> {
    Answer,
    ChannelStatus,
    GetVariable(&'a str),
    /// `STREAM FILE <file> "<escape digits>"`; `file` has no extension.
    StreamFile {
        file: &'a str,
        escape_digits: &'a str,
    },
    Hangup,
    Noop,
    /// `SAY DIGITS <digits> "<escape digits>"`.
    SayDigits {
        digits: &'a str,
        escape_digits: &'a str,
    },
    /// `SET VARIABLE <name> "<value>"`.
    SetVariable {
        name: &'a str,
        value: &'a str,
    },
    /// `GET FULL VARIABLE <expression>`: the expression is evaluated like in the dialplan.
    GetFullVariable(&'a str),
    /// `VERBOSE "<message>" <level>`.
    Verbose {
        message: &'a str,
        level: u8,
    },
    /// `EXEC <application> <options>`.
    Exec {
        application: &'a str,
        options: &'a str,
    },
}

/// Why a command or an environment block could not be encoded. Nothing is written then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgiEncodeError {
    /// `\n` or `\r` would end the line early and let the value inject a second command; NUL would
    /// end Asterisk's C string.
    #[error("argument holds a line break or NUL")]
    LineBreak,
    /// An argument that must name something (a file, a variable, an application) was empty.
    #[error("empty argument")]
    Empty,
    /// Escape digits other than `0-9`, `*`, `#`, `A-D`.
    #[error("invalid escape digits {0:?}")]
    EscapeDigits(String),
}

impl AgiCommand<'_> {
    /// Appends the command line, `\n`-terminated, to `dst`. Arguments are written bare when they
    /// are plain words (as Asterisk's own examples and the captured scripts do) and quoted with
    /// `\"` / `\\` escapes otherwise, which Asterisk's `parse_args()` (res/res_agi.c) undoes; a
    /// value can therefore never split into two arguments or two lines.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), AgiEncodeError> {
        self.validate()?;
        match *self {
            AgiCommand::Answer => dst.put_slice(b"ANSWER"),
            AgiCommand::ChannelStatus => dst.put_slice(b"CHANNEL STATUS"),
            AgiCommand::GetVariable(name) => {
                dst.put_slice(b"GET VARIABLE ");
                put_word(dst, name);
            }
            AgiCommand::StreamFile {
                file,
                escape_digits,
            } => {
                dst.put_slice(b"STREAM FILE ");
                put_word(dst, file);
                dst.put_u8(b' ');
                put_quoted(dst, escape_digits);
            }
            AgiCommand::Hangup => dst.put_slice(b"HANGUP"),
            AgiCommand::Noop => dst.put_slice(b"NOOP"),
            AgiCommand::SayDigits {
                digits,
                escape_digits,
            } => {
                dst.put_slice(b"SAY DIGITS ");
                put_word(dst, digits);
                dst.put_u8(b' ');
                put_quoted(dst, escape_digits);
            }
            AgiCommand::SetVariable { name, value } => {
                dst.put_slice(b"SET VARIABLE ");
                put_word(dst, name);
                dst.put_u8(b' ');
                put_quoted(dst, value);
            }
            AgiCommand::GetFullVariable(expression) => {
                dst.put_slice(b"GET FULL VARIABLE ");
                put_word(dst, expression);
            }
            AgiCommand::Verbose { message, level } => {
                dst.put_slice(b"VERBOSE ");
                put_quoted(dst, message);
                dst.put_u8(b' ');
                dst.put_slice(level.to_string().as_bytes());
            }
            AgiCommand::Exec {
                application,
                options,
            } => {
                dst.put_slice(b"EXEC ");
                put_word(dst, application);
                if !options.is_empty() {
                    dst.put_u8(b' ');
                    put_word(dst, options);
                }
            }
        }
        dst.put_u8(b'\n');
        Ok(())
    }

    fn validate(&self) -> Result<(), AgiEncodeError> {
        match *self {
            AgiCommand::Answer
            | AgiCommand::ChannelStatus
            | AgiCommand::Hangup
            | AgiCommand::Noop => Ok(()),
            AgiCommand::GetVariable(name) => check_name(name),
            AgiCommand::GetFullVariable(expression) => check_name(expression),
            AgiCommand::StreamFile {
                file,
                escape_digits,
            } => {
                check_name(file)?;
                check_escape_digits(escape_digits)
            }
            AgiCommand::SayDigits {
                digits,
                escape_digits,
            } => {
                check_name(digits)?;
                check_escape_digits(escape_digits)
            }
            AgiCommand::SetVariable { name, value } => {
                check_name(name)?;
                check_line_safe(value)
            }
            AgiCommand::Verbose { message, .. } => check_line_safe(message),
            AgiCommand::Exec {
                application,
                options,
            } => {
                check_name(application)?;
                check_line_safe(options)
            }
        }
    }

    /// The command a parsed line stands for, if it is one of ours with the argument count we
    /// write (for a peer that plays Asterisk). `args` comes from [`parse_command_args`].
    pub fn from_args(args: &[String]) -> Option<AgiCommand<'_>> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let command = match words.as_slice() {
            ["ANSWER"] => AgiCommand::Answer,
            ["CHANNEL", "STATUS"] => AgiCommand::ChannelStatus,
            ["GET", "VARIABLE", _] => AgiCommand::GetVariable(&args[2]),
            ["GET", "FULL", "VARIABLE", _] => AgiCommand::GetFullVariable(&args[3]),
            ["STREAM", "FILE", _, _] => AgiCommand::StreamFile {
                file: &args[2],
                escape_digits: &args[3],
            },
            ["SAY", "DIGITS", _, _] => AgiCommand::SayDigits {
                digits: &args[2],
                escape_digits: &args[3],
            },
            ["SET", "VARIABLE", _, _] => AgiCommand::SetVariable {
                name: &args[2],
                value: &args[3],
            },
            ["VERBOSE", _, level] => AgiCommand::Verbose {
                message: &args[1],
                level: level.parse().ok()?,
            },
            ["EXEC", _] => AgiCommand::Exec {
                application: &args[1],
                options: "",
            },
            ["EXEC", _, _] => AgiCommand::Exec {
                application: &args[1],
                options: &args[2],
            },
            ["HANGUP"] => AgiCommand::Hangup,
            ["NOOP"] => AgiCommand::Noop,
            _ => return None,
        };
        Some(command)
    }
}

/// Splits one command line (without its `\n`) into arguments the way Asterisk's `parse_args()`
/// in res/res_agi.c does: spaces and tabs separate arguments, `"` groups (and `""` is an empty
/// argument), `\` makes the next character literal.
pub fn parse_command_args(line: &str) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '"' if !escaped => {
                quoted = !quoted;
                if quoted && !in_word {
                    args.push(String::new());
                    in_word = true;
                }
            }
            ' ' | '\t' if !quoted && !escaped => in_word = false,
            '\\' if !escaped => escaped = true,
            _ => {
                if !in_word {
                    args.push(String::new());
                    in_word = true;
                }
                if let Some(last) = args.last_mut() {
                    last.push(c);
                }
                escaped = false;
            }
        }
    }
    args
}

fn check_line_safe(value: &str) -> Result<(), AgiEncodeError> {
    if value.bytes().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(AgiEncodeError::LineBreak);
    }
    Ok(())
}

fn check_name(value: &str) -> Result<(), AgiEncodeError> {
    check_line_safe(value)?;
    if value.is_empty() {
        return Err(AgiEncodeError::Empty);
    }
    Ok(())
}

fn check_escape_digits(digits: &str) -> Result<(), AgiEncodeError> {
    if digits
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D'))
    {
        Ok(())
    } else {
        Err(AgiEncodeError::EscapeDigits(digits.to_owned()))
    }
}

fn needs_quotes(word: &str) -> bool {
    word.is_empty()
        || word
            .bytes()
            .any(|b| matches!(b, b' ' | b'\t' | b'"' | b'\\'))
}

fn put_word(dst: &mut BytesMut, word: &str) {
    if needs_quotes(word) {
        put_quoted(dst, word);
    } else {
        dst.put_slice(word.as_bytes());
    }
}

fn put_quoted(dst: &mut BytesMut, value: &str) {
    dst.reserve(value.len() + 2);
    dst.put_u8(b'"');
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\') {
            dst.put_u8(b'\\');
        }
        dst.put_u8(b);
    }
    dst.put_u8(b'"');
}

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgiReply {
    /// 200, 510, 511, 520.
    pub code: u16,
    /// `result=<n>`; 0 when the reply has none (510/511/520).
    pub result: i64,
    /// The text in parentheses after the result, e.g. the value of GET VARIABLE.
    pub data: Option<String>,
    /// `endpos=<sample>` of STREAM FILE.
    pub endpos: Option<u64>,
}

impl AgiReply {
    /// A `200 result=<n>` reply without data or endpos.
    pub fn ok(result: i64) -> AgiReply {
        AgiReply {
            code: 200,
            result,
            data: None,
            endpos: None,
        }
    }

    /// Appends the reply as Asterisk writes it (for a peer that plays Asterisk). 200 replies are
    /// `200 result=<n>[ (<data>)][ endpos=<n>]`; the others carry the texts Asterisk 22 sent
    /// (fixtures `agi-basic.txt`), and a 520 is the two-line frame around no usage text.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), AgiEncodeError> {
        if let Some(data) = &self.data {
            check_line_safe(data)?;
        }
        let mut line = String::with_capacity(32);
        match self.code {
            200 => {
                let _ = write!(line, "200 result={}", self.result);
                if let Some(data) = &self.data {
                    let _ = write!(line, " ({data})");
                }
                if let Some(endpos) = self.endpos {
                    let _ = write!(line, " endpos={endpos}");
                }
            }
            510 => line.push_str("510 Invalid or unknown command"),
            511 => {
                line.push_str("511 Command Not Permitted on a dead channel or intercept routine")
            }
            520 => line.push_str(
                "520-Invalid command syntax.  Proper usage follows:\n520 End of proper usage.",
            ),
            code => {
                let _ = write!(line, "{code} ");
            }
        }
        line.push('\n');
        dst.put_slice(line.as_bytes());
        Ok(())
    }
}

/// What the decoder found next on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgiEvent {
    /// The environment block, once per connection and always first.
    Environment(AgiEnvironment),
    /// The reply to the command in flight.
    Reply(AgiReply),
    /// Asterisk's out-of-band `HANGUP` line: the channel went away.
    Hangup,
}

/// Why the bytes from Asterisk could not be decoded. The connection cannot be trusted after one:
/// the decoder keeps returning the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgiDecodeError {
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    #[error("environment block larger than {MAX_ENV_LEN} bytes or {MAX_ENV_FIELDS} lines")]
    EnvironmentTooLarge,
    #[error("reply of more than {MAX_REPLY_LINES} lines")]
    ReplyTooLong,
    /// A line in the environment block that is not `agi_<key>: <value>`.
    #[error("not an environment line: {0:?}")]
    EnvironmentLine(String),
    /// A line where a reply or `HANGUP` should start.
    #[error("unexpected line: {0:?}")]
    UnexpectedLine(String),
    /// A `200` line whose `result=` part does not parse.
    #[error("malformed reply: {0:?}")]
    MalformedReply(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Environment,
    Replies,
    Failed(AgiDecodeError),
}

/// Incremental decoder of what Asterisk sends on one FastAGI connection: feed it the bytes read
/// so far, take events out. Consumes complete lines only; a partial line stays in the buffer.
#[derive(Debug)]
pub struct AgiDecoder {
    state: State,
    env: AgiEnvironment,
    env_len: usize,
    /// Lines of the multi-line reply read so far; 0 when no reply is open.
    reply_lines: usize,
    /// Bytes of the buffer already searched for `\n` without finding one.
    scanned: usize,
}

impl Default for AgiDecoder {
    fn default() -> Self {
        AgiDecoder::new()
    }
}

impl AgiDecoder {
    /// A decoder that expects the environment block first.
    pub fn new() -> AgiDecoder {
        AgiDecoder {
            state: State::Environment,
            env: AgiEnvironment::default(),
            env_len: 0,
            reply_lines: 0,
            scanned: 0,
        }
    }

    /// A decoder for a connection whose environment block is already read.
    pub fn after_environment() -> AgiDecoder {
        AgiDecoder {
            state: State::Replies,
            ..AgiDecoder::new()
        }
    }

    /// True once the environment block was returned.
    pub fn environment_done(&self) -> bool {
        !matches!(self.state, State::Environment)
    }

    /// True while a multi-line reply has started but not ended.
    pub fn in_reply(&self) -> bool {
        self.reply_lines > 0
    }

    /// The next complete event in `buf`, consuming its bytes; `Ok(None)` when more bytes are
    /// needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<AgiEvent>, AgiDecodeError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let result = self.decode_inner(buf);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<AgiEvent>, AgiDecodeError> {
        loop {
            let Some(line_len) = self.next_line_len(buf)? else {
                return Ok(None);
            };
            // `line_len` includes the `\n`, so this never fails; `get` keeps it panic-free anyway.
            let line = buf.get(..line_len - 1).unwrap_or(&[]);
            let event = match self.state {
                State::Environment => self.environment_line(line)?,
                State::Replies => self.reply_line(line)?,
                State::Failed(ref e) => return Err(e.clone()),
            };
            buf.advance(line_len);
            if event.is_some() {
                return Ok(event);
            }
        }
    }

    /// Length of the first line in `buf` including its `\n`, if complete.
    fn next_line_len(&mut self, buf: &BytesMut) -> Result<Option<usize>, AgiDecodeError> {
        let from = self.scanned.min(buf.len());
        match buf.get(from..).and_then(|rest| memchr(b'\n', rest)) {
            Some(i) => {
                self.scanned = 0;
                let len = from + i + 1;
                if len > MAX_LINE_LEN {
                    return Err(AgiDecodeError::LineTooLong);
                }
                Ok(Some(len))
            }
            None => {
                self.scanned = buf.len();
                if buf.len() >= MAX_LINE_LEN {
                    return Err(AgiDecodeError::LineTooLong);
                }
                Ok(None)
            }
        }
    }

    fn environment_line(&mut self, line: &[u8]) -> Result<Option<AgiEvent>, AgiDecodeError> {
        if line.is_empty() {
            self.state = State::Replies;
            self.env_len = 0;
            let env = std::mem::take(&mut self.env);
            return Ok(Some(AgiEvent::Environment(env)));
        }
        self.env_len += line.len() + 1;
        if self.env_len > MAX_ENV_LEN || self.env.len() >= MAX_ENV_FIELDS {
            return Err(AgiDecodeError::EnvironmentTooLarge);
        }
        let bad = || AgiDecodeError::EnvironmentLine(excerpt(line));
        let rest = line.strip_prefix(b"agi_").ok_or_else(bad)?;
        let colon = memchr(b':', rest).ok_or_else(bad)?;
        let key = rest.get(..colon).ok_or_else(bad)?;
        let value = rest.get(colon + 1..).ok_or_else(bad)?;
        // Asterisk writes `agi_<key>: <value>`; an empty value leaves the trailing space.
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if key.is_empty() {
            return Err(bad());
        }
        if self.env.is_empty() {
            self.env.text.reserve(MAX_LINE_LEN / 16);
            self.env.ends.reserve(32);
        }
        // Asterisk sends what the channel holds (a caller name may not be UTF-8): keep it readable.
        self.env.push(
            &String::from_utf8_lossy(key),
            &String::from_utf8_lossy(value),
        );
        Ok(None)
    }

    fn reply_line(&mut self, line: &[u8]) -> Result<Option<AgiEvent>, AgiDecodeError> {
        let code = status_code(line);
        let continues = code.is_some() && line.get(3) == Some(&b'-');
        let ends = code.is_some() && line.get(3) == Some(&b' ');
        if self.reply_lines == 0 {
            if line == b"HANGUP" {
                return Ok(Some(AgiEvent::Hangup));
            }
            if continues {
                self.reply_lines = 1;
                return Ok(None);
            }
            if !ends {
                return Err(AgiDecodeError::UnexpectedLine(excerpt(line)));
            }
        } else if !ends {
            // Free text inside a usage block (not prefixed, may hold anything but a `\d{3} ` start).
            self.reply_lines += 1;
            if self.reply_lines >= MAX_REPLY_LINES {
                return Err(AgiDecodeError::ReplyTooLong);
            }
            return Ok(None);
        }
        self.reply_lines = 0;
        let code = code.unwrap_or(0);
        let reply = if code == 200 {
            parse_200(line.get(4..).unwrap_or(&[]))
                .ok_or_else(|| AgiDecodeError::MalformedReply(excerpt(line)))?
        } else {
            AgiReply {
                code,
                result: 0,
                data: None,
                endpos: None,
            }
        };
        Ok(Some(AgiEvent::Reply(reply)))
    }
}

/// The three-digit code at the start of `line`, if it starts with three ASCII digits.
fn status_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
    )
}

/// `result=<n>[ (<data>)][ endpos=<n>]`, the part of a 200 line after `200 `. The data is what
/// lies between the first `(` and the last `)`, so a variable's value may itself hold parentheses.
fn parse_200(rest: &[u8]) -> Option<AgiReply> {
    let rest = std::str::from_utf8(rest).ok()?;
    let rest = rest.strip_prefix("result=")?;
    let number_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    let result: i64 = rest.get(..number_len)?.parse().ok()?;
    let mut rest = rest.get(number_len..)?;

    let mut endpos = None;
    if let Some(at) = rest.rfind(" endpos=") {
        let digits = rest.get(at + " endpos=".len()..)?;
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            endpos = Some(digits.parse().ok()?);
            rest = rest.get(..at)?;
        }
    }
    let data = if rest.is_empty() {
        None
    } else {
        let inner = rest.strip_prefix(" (")?.strip_suffix(')')?;
        Some(inner.to_owned())
    };
    Some(AgiReply {
        code: 200,
        result,
        data,
        endpos,
    })
}

/// The start of a line for an error message, lossy and bounded.
fn excerpt(line: &[u8]) -> String {
    let cut = line.get(..80).unwrap_or(line);
    String::from_utf8_lossy(cut).into_owned()
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<AgiEvent>, AgiDecodeError> {
        let mut decoder = AgiDecoder::new();
        let mut buf = BytesMut::from(bytes);
        let mut events = Vec::new();
        while let Some(event) = decoder.decode(&mut buf)? {
            events.push(event);
        }
        Ok(events)
    }

    #[test]
    fn empty_value_and_replies() {
        let events =
            decode_all(b"agi_network: yes\nagi_accountcode: \n\n200 result=1 (a (b) c)\nHANGUP\n")
                .unwrap();
        let AgiEvent::Environment(env) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(env.get("network"), Some("yes"));
        assert_eq!(env.get("accountcode"), Some(""));
        assert_eq!(
            events[1],
            AgiEvent::Reply(AgiReply {
                code: 200,
                result: 1,
                data: Some("a (b) c".into()),
                endpos: None
            })
        );
        assert_eq!(events[2], AgiEvent::Hangup);
    }

    #[test]
    fn usage_block_is_one_reply_and_hangup_inside_is_text() {
        let events = decode_all(
            b"\n520-Invalid command syntax.  Proper usage follows:\nHANGUP\nExample return code: 200 result=1 (x)\n520 End of proper usage.\n",
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            AgiEvent::Reply(AgiReply {
                code: 520,
                ..AgiReply::ok(0)
            })
        );
    }

    #[test]
    fn malformed_lines_are_typed_errors_and_stick() {
        let mut decoder = AgiDecoder::new();
        let mut buf = BytesMut::from(&b"network: yes\n"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(AgiDecodeError::EnvironmentLine(_))
        ));
        assert!(matches!(
            decoder.decode(&mut BytesMut::from(&b"agi_x: y\n"[..])),
            Err(AgiDecodeError::EnvironmentLine(_))
        ));
        for bad in [
            &b"\n200 result=x\n"[..],
            b"\n200 result=1 junk\n",
            b"\nhello\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_line_without_newline_is_refused_before_the_cap_is_exceeded() {
        let mut decoder = AgiDecoder::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'a'; MAX_LINE_LEN - 1]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"a");
        assert_eq!(decoder.decode(&mut buf), Err(AgiDecodeError::LineTooLong));
    }

    #[test]
    fn values_cannot_inject_a_line() {
        let mut buf = BytesMut::new();
        for cmd in [
            AgiCommand::GetVariable("X\nHANGUP"),
            AgiCommand::StreamFile {
                file: "a\rb",
                escape_digits: "",
            },
            AgiCommand::SetVariable {
                name: "A",
                value: "v\0",
            },
        ] {
            assert_eq!(cmd.encode(&mut buf), Err(AgiEncodeError::LineBreak));
        }
        assert!(buf.is_empty());
        assert_eq!(
            AgiCommand::StreamFile {
                file: "x",
                escape_digits: "1\""
            }
            .encode(&mut buf),
            Err(AgiEncodeError::EscapeDigits("1\"".into()))
        );
        assert_eq!(
            AgiCommand::GetVariable("").encode(&mut buf),
            Err(AgiEncodeError::Empty)
        );
    }

    #[test]
    fn quoting_follows_parse_args() {
        let mut buf = BytesMut::new();
        AgiCommand::SetVariable {
            name: "A B",
            value: "say \"hi\" \\ bye",
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(
            &buf[..],
            &b"SET VARIABLE \"A B\" \"say \\\"hi\\\" \\\\ bye\"\n"[..]
        );
        let line = std::str::from_utf8(&buf[..buf.len() - 1]).unwrap();
        assert_eq!(
            parse_command_args(line),
            ["SET", "VARIABLE", "A B", "say \"hi\" \\ bye"]
        );
    }

    #[test]
    fn verbose_level_is_written_in_decimal() {
        for (level, text) in [(0u8, "0"), (7, "7"), (42, "42"), (255, "255")] {
            let mut buf = BytesMut::new();
            AgiCommand::Verbose {
                message: "m",
                level,
            }
            .encode(&mut buf)
            .unwrap();
            assert_eq!(buf, format!("VERBOSE \"m\" {text}\n").as_bytes());
        }
    }
}
