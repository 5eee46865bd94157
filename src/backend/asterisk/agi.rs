//! FastAGI codec, sans-IO: the environment block Asterisk sends on connect, the commands callcode
//! sends, and the replies (`200 result=...`, `510`, `511`, multi-line `520-` usage blocks) and the
//! unsolicited `HANGUP` line Asterisk sends. Pure functions over `bytes`; no tokio, no sockets.
//!
//! CONTRACT (fixed; the Asterisk backend codes against it — extend, do not rename):
//! - `AgiEnvironment::get("uniqueid")` etc. take the key without the `agi_` prefix;
//!   `AgiEnvironment::arg(1)` is `agi_arg_1`.
//! - `AgiCommand::encode` writes one `\n`-terminated command line.
//! - `AgiReply` is one complete reply.

/// The `agi_*` variables of one session, in the order Asterisk sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgiEnvironment {
    fields: Vec<(String, String)>,
}

impl AgiEnvironment {
    /// The value of `agi_<key>`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `agi_arg_<n>`, 1-based.
    pub fn arg(&self, n: usize) -> Option<&str> {
        self.get(&format!("arg_{n}"))
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
