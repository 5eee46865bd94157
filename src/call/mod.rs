//! The hot path, pure: verification codes, numbers, the cause table and the per-call state machine.
//!
//! Nothing in here does I/O, awaits, reads a clock or touches the database; time is passed in as an
//! argument. That is what lets every timing path be tested without sleeping and benchmarked at
//! millions of events per second.

pub mod cause;
pub mod code;
pub mod machine;
pub mod number;

pub use cause::{EndedBy, Outcome};
pub use code::Code;
pub use machine::{Action, Final, Machine};
pub use number::{Destination, Msisdn};

/// Identifies one call attempt end to end: our channel UUID towards the PBX (FreeSWITCH
/// `origination_uuid`, Asterisk `ChannelId`) and the key of its call record.
pub type CallId = uuid::Uuid;

/// How the code reaches the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// The caller ID ends in the code; the call is dropped while it rings.
    Flash,
    /// The code is spoken on answer.
    Voice,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Flash => "flash",
            Method::Voice => "voice",
        }
    }

    pub fn from_stored(s: &str) -> Option<Method> {
        match s {
            "flash" => Some(Method::Flash),
            "voice" => Some(Method::Voice),
            _ => None,
        }
    }
}

/// One recorded prompt. The backend turns it into a file of the call's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prompt {
    /// "Your code is".
    YourCodeIs,
    /// A single digit 0-9.
    Digit(u8),
}

impl Prompt {
    /// Index into per-language tables: digits 0-9, then "your code is".
    pub fn index(self) -> usize {
        match self {
            Prompt::Digit(d) => usize::from(d.min(9)),
            Prompt::YourCodeIs => 10,
        }
    }

    /// File stem inside a language directory (`sounds/<lang>/<stem>.wav`).
    pub fn file_stem(self) -> &'static str {
        const STEMS: [&str; 11] = [
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "7",
            "8",
            "9",
            "your_code_is",
        ];
        STEMS[self.index()]
    }

    pub const ALL: [Prompt; 11] = [
        Prompt::Digit(0),
        Prompt::Digit(1),
        Prompt::Digit(2),
        Prompt::Digit(3),
        Prompt::Digit(4),
        Prompt::Digit(5),
        Prompt::Digit(6),
        Prompt::Digit(7),
        Prompt::Digit(8),
        Prompt::Digit(9),
        Prompt::YourCodeIs,
    ];
}
