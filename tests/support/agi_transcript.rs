//! Reads the captured FastAGI transcripts under tests/fixtures/asterisk/ (the combined `.txt`
//! files): `### C>S <n> +<s>` / `### S>C <n> +<s>` markers each followed by exactly `<n>` bytes as
//! one TCP read saw them, `### EOF C>S` when Asterisk closed the socket, `### NOTE` lines.
//! C>S is Asterisk (the client) to the AGI server, S>C the AGI server's commands.
//!
//! Shared by tests/agi_codec.rs, tests/fastagi.rs and benches/fastagi.rs through `#[path]`; it only
//! reads fixtures, it plays nobody's side.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Who sent a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Asterisk to the AGI server (environment block, replies, `HANGUP`).
    FromAsterisk,
    /// The AGI server's commands.
    ToAsterisk,
}

#[derive(Debug, Clone)]
pub struct Chunk {
    pub dir: Dir,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Transcript {
    pub name: String,
    pub chunks: Vec<Chunk>,
    /// Asterisk closed the socket itself (`### EOF C>S`).
    pub asterisk_closed: bool,
}

impl Transcript {
    /// Everything one side sent, concatenated.
    pub fn stream(&self, dir: Dir) -> Vec<u8> {
        self.chunks
            .iter()
            .filter(|c| c.dir == dir)
            .flat_map(|c| c.bytes.iter().copied())
            .collect()
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/asterisk")
}

/// Every FastAGI transcript of both fixture folders, by path relative to tests/fixtures/asterisk.
pub const AGI_TRANSCRIPTS: &[&str] = &[
    "agi-basic",
    "agi-farhangup-default",
    "agi-farhangup-exitonhangup",
    "agi-password-4821",
    "agi-password-viaapp",
    "callcode-path/agi-voice-vid-voice-44dd",
    "callcode-path/agi-voice-noinherit",
];

/// Loads `<name>.txt`.
pub fn load(name: &str) -> Transcript {
    let path = fixtures_dir().join(format!("{name}.txt"));
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse(name, &text)
}

/// Loads `<name>.client.txt` or `<name>.server.txt`.
pub fn load_side(name: &str, dir: Dir) -> Vec<u8> {
    let suffix = match dir {
        Dir::FromAsterisk => "client",
        Dir::ToAsterisk => "server",
    };
    let path = fixtures_dir().join(format!("{name}.{suffix}.txt"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(name: &str, text: &[u8]) -> Transcript {
    let mut chunks = Vec::new();
    let mut asterisk_closed = false;
    let mut at = 0;
    while at < text.len() {
        let end = text[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| at + i);
        let marker = std::str::from_utf8(&text[at..end]).expect("marker is text");
        at = end + 1;
        let mut words = marker.split(' ');
        assert_eq!(
            words.next(),
            Some("###"),
            "{name}: not a marker: {marker:?}"
        );
        let dir = match words.next() {
            Some("C>S") => Dir::FromAsterisk,
            Some("S>C") => Dir::ToAsterisk,
            Some("EOF") => {
                asterisk_closed |= words.next() == Some("C>S");
                continue;
            }
            Some("NOTE") => continue,
            other => panic!("{name}: unknown marker {other:?}"),
        };
        let len: usize = words
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no length in {marker:?}"));
        chunks.push(Chunk {
            dir,
            bytes: text[at..at + len].to_vec(),
        });
        at += len;
    }
    Transcript {
        name: name.to_owned(),
        chunks,
        asterisk_closed,
    }
}
