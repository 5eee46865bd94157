//! The FastAGI codec against every captured transcript (tests/fixtures/asterisk/agi-*,
//! callcode-path/agi-*): Asterisk's side decoded whole and in random chunks, our commands encoded
//! byte-exact to the captured ones, encode→decode round-trips, and arbitrary bytes never panic
//! (the same entry point as fuzz/fuzz_targets/agi_decode.rs).

#[path = "support/agi_transcript.rs"]
mod agi_transcript;

use agi_transcript::{load, load_side, Dir, AGI_TRANSCRIPTS};
use bytes::BytesMut;
use callcode::backend::asterisk::agi::{
    parse_command_args, AgiCommand, AgiDecodeError, AgiDecoder, AgiEncodeError, AgiEnvironment,
    AgiEvent, AgiReply, MAX_LINE_LEN,
};
use proptest::prelude::*;

/// Feeds `bytes` in chunks of the given sizes (cycled), collecting every event.
fn decode_chunked(bytes: &[u8], sizes: &[usize]) -> Result<Vec<AgiEvent>, AgiDecodeError> {
    let mut decoder = AgiDecoder::new();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let end = (at + size).min(bytes.len());
        buf.extend_from_slice(&bytes[at..end]);
        at = end;
        i += 1;
        while let Some(event) = decoder.decode(&mut buf)? {
            events.push(event);
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(events)
}

/// The events encoded back to the wire (the environment as Asterisk writes it).
fn encode_events(events: &[AgiEvent]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for event in events {
        match event {
            AgiEvent::Environment(env) => env.encode(&mut out).unwrap(),
            AgiEvent::Reply(reply) => reply.encode(&mut out).unwrap(),
            AgiEvent::Hangup => out.extend_from_slice(b"HANGUP\n"),
        }
    }
    out.to_vec()
}

/// `bytes` without the free-text lines of `520-` usage blocks, which the codec does not keep.
fn without_usage_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"520-") {
            in_block = true;
            out.extend_from_slice(line);
        } else if line.starts_with(b"520 ") {
            in_block = false;
            out.extend_from_slice(line);
        } else if !in_block {
            out.extend_from_slice(line);
        }
    }
    out
}

struct Expected {
    name: &'static str,
    uniqueid: &'static str,
    arg_1: Option<&'static str>,
    hangup_lines: usize,
}

const EXPECTED: &[Expected] = &[
    Expected {
        name: "agi-basic",
        uniqueid: "vc-agi-0001",
        arg_1: None,
        hangup_lines: 1,
    },
    Expected {
        name: "agi-farhangup-default",
        uniqueid: "vc-agi-0002",
        arg_1: Some("default"),
        hangup_lines: 1,
    },
    Expected {
        name: "agi-farhangup-exitonhangup",
        uniqueid: "vc-agi-0004",
        arg_1: Some("exitonhangup"),
        hangup_lines: 2,
    },
    Expected {
        name: "agi-password-4821",
        uniqueid: "vc-agi-0005",
        arg_1: Some("4821"),
        hangup_lines: 1,
    },
    Expected {
        name: "agi-password-viaapp",
        uniqueid: "vc-app-0001",
        arg_1: Some("viaapp"),
        hangup_lines: 1,
    },
    Expected {
        name: "callcode-path/agi-voice-vid-voice-44dd",
        uniqueid: "1795436473.40",
        arg_1: Some("vid-voice-44dd"),
        hangup_lines: 1,
    },
    Expected {
        name: "callcode-path/agi-voice-noinherit",
        uniqueid: "1795436491.46",
        arg_1: Some(""),
        hangup_lines: 1,
    },
];

#[test]
fn transcripts_match_their_client_and_server_files() {
    for name in AGI_TRANSCRIPTS {
        let t = load(name);
        assert_eq!(
            t.stream(Dir::FromAsterisk),
            load_side(name, Dir::FromAsterisk),
            "{name}"
        );
        assert_eq!(
            t.stream(Dir::ToAsterisk),
            load_side(name, Dir::ToAsterisk),
            "{name}"
        );
    }
    assert_eq!(EXPECTED.len(), AGI_TRANSCRIPTS.len());
}

#[test]
fn every_client_transcript_decodes_to_its_environment_and_replies() {
    for expected in EXPECTED {
        let name = expected.name;
        let t = load(name);
        let client = load_side(name, Dir::FromAsterisk);
        let events =
            decode_chunked(&client, &[client.len()]).unwrap_or_else(|e| panic!("{name}: {e}"));

        let AgiEvent::Environment(env) = &events[0] else {
            panic!("{name}: first event {:?}", events[0])
        };
        assert_eq!(env.get("network"), Some("yes"), "{name}");
        assert!(
            env.get("request")
                .unwrap()
                .starts_with("agi://127.0.0.1:4573/"),
            "{name}"
        );
        assert_eq!(env.get("uniqueid"), Some(expected.uniqueid), "{name}");
        assert_eq!(env.get("accountcode"), Some(""), "{name}");
        assert_eq!(env.get("version"), Some("22.10.1"), "{name}");
        assert_eq!(env.arg(1), expected.arg_1, "{name}");
        assert_eq!(env.arg(2), None, "{name}");
        assert_eq!(
            env.fields().last().unwrap().0,
            if expected.arg_1.is_some() {
                "arg_1"
            } else {
                "threadid"
            }
        );

        // One reply per command, except the command Asterisk closed the socket on.
        let commands = t.chunks.iter().filter(|c| c.dir == Dir::ToAsterisk).count();
        let replies = events
            .iter()
            .filter(|e| matches!(e, AgiEvent::Reply(_)))
            .count();
        assert_eq!(replies, commands - usize::from(t.asterisk_closed), "{name}");
        let hangups = events.iter().filter(|e| **e == AgiEvent::Hangup).count();
        assert_eq!(hangups, expected.hangup_lines, "{name}");
        assert!(events[1..]
            .iter()
            .all(|e| !matches!(e, AgiEvent::Environment(_))));

        // What was decoded, written back, is the transcript byte for byte.
        assert_eq!(
            String::from_utf8_lossy(&encode_events(&events)),
            String::from_utf8_lossy(&without_usage_text(&client)),
            "{name}"
        );
    }
}

#[test]
fn captured_read_boundaries_decode_like_the_whole_stream() {
    for name in AGI_TRANSCRIPTS {
        let t = load(name);
        let client = load_side(name, Dir::FromAsterisk);
        let whole = decode_chunked(&client, &[client.len()]).unwrap();
        let mut decoder = AgiDecoder::new();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for chunk in t.chunks.iter().filter(|c| c.dir == Dir::FromAsterisk) {
            buf.extend_from_slice(&chunk.bytes);
            while let Some(e) = decoder.decode(&mut buf).unwrap() {
                events.push(e);
            }
        }
        assert_eq!(events, whole, "{name}");
    }
}

#[test]
fn voice_transcript_replies_are_read_as_captured() {
    let client = load_side("callcode-path/agi-voice-vid-voice-44dd", Dir::FromAsterisk);
    let events = decode_chunked(&client, &[client.len()]).unwrap();
    let stream = |endpos| {
        AgiEvent::Reply(AgiReply {
            endpos: Some(endpos),
            ..AgiReply::ok(0)
        })
    };
    assert_eq!(
        events[1..],
        [
            AgiEvent::Reply(AgiReply {
                data: Some("vid-voice-44dd".into()),
                ..AgiReply::ok(1)
            }),
            AgiEvent::Reply(AgiReply::ok(6)),
            stream(8000),
            stream(6560),
            stream(5600),
            stream(6080),
            stream(7360),
            AgiEvent::Reply(AgiReply::ok(1)),
            AgiEvent::Hangup,
        ]
    );
}

#[test]
fn far_hangup_transcripts_show_result_minus_one_then_hangup_and_511() {
    let client = load_side("agi-farhangup-default", Dir::FromAsterisk);
    let events = decode_chunked(&client, &[7]).unwrap();
    let after_env = &events[1..];
    assert_eq!(
        after_env[1],
        AgiEvent::Reply(AgiReply {
            endpos: Some(0),
            ..AgiReply::ok(-1)
        })
    );
    assert_eq!(
        after_env[2],
        AgiEvent::Reply(AgiReply {
            endpos: Some(24160),
            ..AgiReply::ok(-1)
        })
    );
    assert_eq!(after_env[3], AgiEvent::Hangup);
    assert_eq!(
        after_env[4],
        AgiEvent::Reply(AgiReply {
            code: 511,
            ..AgiReply::ok(0)
        })
    );

    let client = load_side("agi-farhangup-exitonhangup", Dir::FromAsterisk);
    let events = decode_chunked(&client, &[3]).unwrap();
    assert_eq!(
        events[events.len() - 2..],
        [AgiEvent::Hangup, AgiEvent::Hangup]
    );
}

#[test]
fn basic_transcript_usage_blocks_are_single_520_replies() {
    let client = load_side("agi-basic", Dir::FromAsterisk);
    let events = decode_chunked(&client, &[client.len()]).unwrap();
    let codes: Vec<u16> = events
        .iter()
        .filter_map(|e| match e {
            AgiEvent::Reply(r) => Some(r.code),
            _ => None,
        })
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 520).count(), 3);
    assert_eq!(codes.iter().filter(|&&c| c == 510).count(), 1);
    assert_eq!(codes.iter().filter(|&&c| c == 511).count(), 2);
    let values: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            AgiEvent::Reply(r) => r.data.as_deref(),
            _ => None,
        })
        .collect();
    assert_eq!(
        values,
        [
            "PJSIP/sipp-00000014",
            "4821",
            "+15550001111-Up",
            "PJSIP/sipp-00000014"
        ]
    );
}

#[test]
fn usage_block_split_like_the_capture_is_one_reply() {
    // The captured 520 came in two reads ~40 ms apart; the first read alone is no reply yet.
    let t = load("agi-basic");
    let mut decoder = AgiDecoder::new();
    let mut buf = BytesMut::new();
    let mut saw_open_block = false;
    for chunk in t.chunks.iter().filter(|c| c.dir == Dir::FromAsterisk) {
        buf.extend_from_slice(&chunk.bytes);
        let mut events = Vec::new();
        while let Some(e) = decoder.decode(&mut buf).unwrap() {
            events.push(e);
        }
        if chunk.bytes.starts_with(b"520-") {
            assert!(events.is_empty());
            assert!(decoder.in_reply());
            saw_open_block = true;
        }
    }
    assert!(saw_open_block);
}

/// The commands callcode can send, encoded, are the captured lines byte for byte; the captured
/// lines it has no variant for are listed.
#[test]
fn encoded_commands_match_the_captured_server_lines() {
    let mut matched = 0;
    let mut unsupported = Vec::new();
    for name in AGI_TRANSCRIPTS {
        let server = load_side(name, Dir::ToAsterisk);
        for line in server.split_inclusive(|&b| b == b'\n') {
            let text = std::str::from_utf8(line).unwrap();
            let args = parse_command_args(text.trim_end_matches('\n'));
            match AgiCommand::from_args(&args) {
                Some(cmd) => {
                    let mut out = BytesMut::new();
                    cmd.encode(&mut out).unwrap();
                    assert_eq!(String::from_utf8_lossy(&out), text, "{name}");
                    matched += 1;
                }
                None => unsupported.push(text.trim_end().to_owned()),
            }
        }
    }
    assert_eq!(
        unsupported,
        [
            "STREAM FILE digits/3 \"0123456789#*\" 0",
            "SAY NUMBER 4821 \"\"",
            "WAIT FOR DIGIT 200",
            "FOOBAR",
            "STREAM FILE",
            "SAY DIGITS",
            "GET VARIABLE",
        ]
    );
    // 72 captured command lines in all.
    assert_eq!(matched, 72 - unsupported.len());
}

#[test]
fn the_voice_script_encodes_to_the_captured_bytes() {
    let mut out = BytesMut::new();
    AgiCommand::GetVariable("VERIFICATION_ID")
        .encode(&mut out)
        .unwrap();
    AgiCommand::ChannelStatus.encode(&mut out).unwrap();
    for file in ["silence/1", "digits/4", "digits/8", "digits/2", "digits/1"] {
        AgiCommand::StreamFile {
            file,
            escape_digits: "",
        }
        .encode(&mut out)
        .unwrap();
    }
    AgiCommand::Hangup.encode(&mut out).unwrap();
    assert_eq!(
        out,
        load_side("callcode-path/agi-voice-vid-voice-44dd", Dir::ToAsterisk)
    );
}

fn line_safe_string() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[^\r\n\u{0}]{0,40}").unwrap()
}

fn nonempty_line_safe_string() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[^\r\n\u{0}]{1,40}").unwrap()
}

fn reply() -> impl Strategy<Value = AgiReply> {
    prop_oneof![
        (
            any::<i64>(),
            proptest::option::of(line_safe_string()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(result, data, endpos)| AgiReply {
                code: 200,
                result,
                data,
                endpos
            }),
        prop_oneof![Just(510u16), Just(511), Just(520)].prop_map(|code| AgiReply {
            code,
            ..AgiReply::ok(0)
        }),
    ]
}

fn event_after_env() -> impl Strategy<Value = AgiEvent> {
    prop_oneof![4 => reply().prop_map(AgiEvent::Reply), 1 => Just(AgiEvent::Hangup)]
}

fn env() -> impl Strategy<Value = AgiEnvironment> {
    proptest::collection::vec(
        (
            "[a-z_0-9]{1,12}",
            proptest::string::string_regex("[^\r\n\u{0}]{0,30}").unwrap(),
        ),
        0..30,
    )
    .prop_map(|fields| {
        // A value starting with a space would lose it (Asterisk writes one space after the colon).
        AgiEnvironment::from_fields(
            fields
                .into_iter()
                .map(|(k, v)| (k, v.trim_start().to_owned())),
        )
    })
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..64, 1..16)
}

proptest! {
    #[test]
    fn client_transcripts_decode_the_same_in_any_chunking(which in 0..AGI_TRANSCRIPTS.len(), sizes in sizes()) {
        let client = load_side(AGI_TRANSCRIPTS[which], Dir::FromAsterisk);
        let whole = decode_chunked(&client, &[client.len()]).unwrap();
        prop_assert_eq!(decode_chunked(&client, &sizes).unwrap(), whole);
    }

    #[test]
    fn events_round_trip(env in env(), events in proptest::collection::vec(event_after_env(), 0..20), sizes in sizes()) {
        let mut all = vec![AgiEvent::Environment(env)];
        all.extend(events);
        let wire = encode_events(&all);
        prop_assert_eq!(decode_chunked(&wire, &sizes).unwrap(), all);
    }

    #[test]
    fn commands_round_trip_through_asterisks_argument_parser(
        a in nonempty_line_safe_string(),
        b in line_safe_string(),
        digits in "[0-9*#A-D]{0,12}",
        level in any::<u8>(),
    ) {
        let commands = [
            AgiCommand::GetVariable(&a),
            AgiCommand::GetFullVariable(&a),
            AgiCommand::StreamFile { file: &a, escape_digits: &digits },
            AgiCommand::SayDigits { digits: &a, escape_digits: &digits },
            AgiCommand::SetVariable { name: &a, value: &b },
            AgiCommand::Verbose { message: &b, level },
            AgiCommand::Exec { application: &a, options: &b },
            AgiCommand::Answer,
            AgiCommand::ChannelStatus,
            AgiCommand::Hangup,
            AgiCommand::Noop,
        ];
        for cmd in commands {
            let mut out = BytesMut::new();
            cmd.encode(&mut out).unwrap();
            prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            prop_assert_eq!(out.last(), Some(&b'\n'));
            let line = std::str::from_utf8(&out[..out.len() - 1]).unwrap();
            let args = parse_command_args(line);
            prop_assert_eq!(AgiCommand::from_args(&args), Some(cmd));
        }
    }

    #[test]
    fn values_with_line_breaks_are_refused(a in "[a-z]{0,5}", brk in "[\r\n\u{0}]", b in "[a-z]{0,5}") {
        let value = format!("{a}{brk}{b}");
        let mut out = BytesMut::new();
        let commands = [
            AgiCommand::GetVariable(&value),
            AgiCommand::SetVariable { name: "X", value: &value },
            AgiCommand::StreamFile { file: &value, escape_digits: "" },
            AgiCommand::Exec { application: "Playback", options: &value },
        ];
        for cmd in commands {
            prop_assert_eq!(cmd.encode(&mut out), Err(AgiEncodeError::LineBreak));
        }
        prop_assert!(out.is_empty());
    }

    /// The fuzz target's entry point: any bytes in any chunking end in events or a typed error,
    /// never a panic, and the buffer never holds more than a line's cap of unconsumed bytes.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), sizes in sizes()) {
        let _ = decode_chunked_lenient(&data, &sizes);
    }

    #[test]
    fn mutated_transcripts_never_panic(which in 0..AGI_TRANSCRIPTS.len(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), sizes in sizes()) {
        let mut client = load_side(AGI_TRANSCRIPTS[which], Dir::FromAsterisk);
        for (at, byte) in flips {
            let len = client.len();
            client[at % len] = byte;
        }
        let _ = decode_chunked_lenient(&client, &sizes);
    }
}

/// Like `decode_chunked` but stops at the first error and tolerates a partial last line.
fn decode_chunked_lenient(bytes: &[u8], sizes: &[usize]) -> Result<usize, AgiDecodeError> {
    let mut decoder = AgiDecoder::new();
    let mut buf = BytesMut::new();
    let mut events = 0;
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size.max(&1)).min(bytes.len());
        buf.extend_from_slice(&bytes[at..end]);
        at = end;
        while decoder.decode(&mut buf)?.is_some() {
            events += 1;
        }
        assert!(buf.len() < MAX_LINE_LEN);
    }
    Ok(events)
}
