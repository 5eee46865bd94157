//! The ESL codec over every capture in tests/fixtures/freeswitch: each `.rx.txt` (what FreeSWITCH
//! sent) decodes into exactly the messages its annotated transcript lists, whole and in random
//! chunk sizes, and each `.tx.txt` (what the capture client sent) splits into its commands.

use std::path::PathBuf;

use bytes::BytesMut;
use callcode::backend::freeswitch::codec::{decode_all, decode_command, FrameDecoder, Limits};
use callcode::backend::freeswitch::event::{Format, Message};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/freeswitch")
}

fn captures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rx.txt")
                .map(String::from)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 40, "captures missing: {names:?}");
    names
}

/// The blocks of an annotated transcript: (direction, bytes).
fn blocks(name: &str) -> Vec<(String, Vec<u8>)> {
    let data = std::fs::read(fixtures().join(format!("{name}.txt"))).expect("transcript");
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let end = data[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(data.len(), |i| pos + i);
        let line = std::str::from_utf8(&data[pos..end]).unwrap();
        pos = end + 1;
        if let Some(rest) = line.strip_prefix("#### ") {
            let dir = rest.split(' ').next().unwrap().to_string();
            let len: usize = rest.rsplit("len=").next().unwrap().parse().unwrap();
            out.push((dir, data[pos..pos + len].to_vec()));
            pos += len + 1;
        }
    }
    out
}

#[test]
fn every_capture_decodes_into_its_transcript_blocks() {
    let mut events = 0;
    for name in captures() {
        let rx = std::fs::read(fixtures().join(format!("{name}.rx.txt"))).unwrap();
        let expected: Vec<Vec<u8>> = blocks(&name)
            .into_iter()
            .filter(|(d, _)| d == "S->C")
            .map(|(_, b)| b)
            .collect();
        let (frames, rest) = decode_all(&rx, Limits::default()).unwrap();
        assert_eq!(rest, 0, "{name}: trailing bytes");
        assert_eq!(frames.len(), expected.len(), "{name}");
        for (i, (f, block)) in frames.into_iter().zip(&expected).enumerate() {
            // The body is the block's tail, by Content-Length.
            assert!(block.ends_with(&f.body), "{name} #{i}");
            let msg = Message::from_frame(f, 4096).unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
            match msg {
                Message::Event(e) => {
                    events += 1;
                    assert!(e.name().is_some(), "{name} #{i}: no Event-Name");
                    assert!(e.get("Event-Sequence").is_some(), "{name} #{i}");
                    if name.contains("json") && !name.contains("heartbeat") {
                        assert_eq!(e.format, Format::Json, "{name} #{i}");
                    }
                    if e.is("Event-Name", "BACKGROUND_JOB") {
                        assert!(
                            e.body.starts_with(b"+OK")
                                || e.body.starts_with(b"-ERR")
                                || e.body.starts_with(b"UP "),
                            "{name} #{i}: {:?}",
                            e.body
                        );
                    }
                    if e.is("Event-Name", "CHANNEL_HANGUP_COMPLETE") {
                        assert_eq!(e.get_all("Hangup-Cause").count(), 2, "{name} #{i}");
                    }
                }
                Message::Other { content_type, .. } => {
                    panic!("{name} #{i}: unexpected content type {content_type}")
                }
                _ => {}
            }
        }
    }
    assert!(events >= 586, "{events}");
}

#[test]
fn every_command_stream_splits_into_its_transcript_blocks() {
    for name in captures() {
        let tx = std::fs::read(fixtures().join(format!("{name}.tx.txt"))).unwrap();
        let expected = blocks(&name)
            .into_iter()
            .filter(|(d, _)| d == "C->S")
            .count();
        let mut buf = BytesMut::from(&tx[..]);
        let mut n = 0;
        while let Some(c) = decode_command(&mut buf, Limits::default()).unwrap() {
            assert!(!c.line.is_empty(), "{name}");
            n += 1;
        }
        assert!(buf.is_empty(), "{name}");
        assert_eq!(n, expected, "{name}");
    }
}

#[test]
fn known_values_from_the_captures() {
    let rx = std::fs::read(fixtures().join("esl-inbound-53-forward181-watchheaders-plain.rx.txt"))
        .unwrap();
    let (frames, _) = decode_all(&rx, Limits::default()).unwrap();
    let watched: Vec<_> = frames
        .into_iter()
        .filter_map(|f| match Message::from_frame(f, 4096).unwrap() {
            Message::Event(e) if e.is("Event-Subclass", "sofia::notify_watched_header") => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(watched.len(), 3);
    assert_eq!(
        watched[0].get("SIP-Message").as_deref(),
        Some("SIP/2.0 181 Call Is Being Forwarded")
    );
    assert_eq!(
        watched[0].get("Header-Value").as_deref(),
        Some("<sip:79990001122@127.0.0.1>;reason=unconditional;counter=1;privacy=off")
    );
    // Plain decoding is lossy for values that already held escapes (fact 6).
    assert!(watched[1]
        .get("Header-Value")
        .unwrap()
        .contains("Reason=SIP;cause=302"));
}

#[test]
fn outbound_connect_reply_and_an_api_body_without_newline() {
    let rx =
        std::fs::read(fixtures().join("esl-outbound-01-answer-playback-linger.rx.txt")).unwrap();
    let (frames, _) = decode_all(&rx, Limits::default()).unwrap();
    let mut messages = frames
        .into_iter()
        .map(|f| Message::from_frame(f, 4096).unwrap());
    // Fact 13: one header block without Content-Length; even Reply-Text is URL-encoded
    // (`%2BOK%0A`), and the mode headers come last.
    let Some(Message::CommandReply { reply, headers }) = messages.next() else {
        panic!("connect reply first")
    };
    assert_eq!(reply, "+OK");
    assert_eq!(headers.get_str("Event-Name"), Some("CHANNEL_DATA"));
    assert_eq!(headers.get_str("Socket-Mode"), Some("async"));
    assert_eq!(headers.get_str("Control"), Some("full"));
    assert!(headers.get_str("Unique-ID").is_some_and(|u| u.len() == 36));
    assert!(headers.len() > 100, "the whole channel state");
    // Fact 4: `uuid_getvar` answers without a trailing newline.
    let api: Vec<_> = messages
        .filter_map(|m| match m {
            Message::ApiResponse(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(api.len(), 1);
    assert_eq!(&api[0][..], b"otp-4821");
}

/// A decoded frame as owned bytes: header pairs and body.
type OwnedFrame = (Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

fn chunked_frames(data: &[u8], sizes: &[usize]) -> Vec<OwnedFrame> {
    let mut d = FrameDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = sizes[i % sizes.len()].max(1).min(data.len() - pos);
        i += 1;
        buf.extend_from_slice(&data[pos..pos + n]);
        pos += n;
        while let Some(f) = d.decode(&mut buf).unwrap() {
            let h = f
                .headers
                .iter()
                .map(|(a, b)| (a.to_vec(), b.to_vec()))
                .collect();
            out.push((h, f.body.to_vec()));
        }
    }
    assert!(buf.is_empty());
    out
}

#[test]
fn disconnect_notices_carry_their_disposition() {
    for (name, disposition) in [
        ("esl-inbound-99-shutdown", None),
        ("esl-outbound-01-answer-playback-linger", Some("linger")),
        ("esl-outbound-02-remote-bye-json", Some("disconnect")),
    ] {
        let rx = std::fs::read(fixtures().join(format!("{name}.rx.txt"))).unwrap();
        let (frames, _) = decode_all(&rx, Limits::default()).unwrap();
        let last = Message::from_frame(frames.last().unwrap().clone(), 4096).unwrap();
        let Message::Disconnect { headers, body } = last else {
            panic!("{name}: last message is not a disconnect notice")
        };
        assert_eq!(
            headers.get_str("Content-Disposition"),
            disposition,
            "{name}"
        );
        if disposition.is_none() {
            assert_eq!(&body[..], b"The system is being shut down.\n");
        }
    }
}

/// FreeSWITCH's `switch_url_encode` (fixture README, fact 6).
fn fs_url_encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if !(0x20..=0x7e).contains(&b) || b"\r\n #%&+:;<=>?@[\\]^`{|}\"".contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn frames_round_trip(
        headers in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,40}"), 0..20),
        body in prop::collection::vec(any::<u8>(), 0..2000),
    ) {
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(n, _)| n != "Content-Length")
            .map(|(n, v)| (n, v.trim_start().to_string()))
            .collect();
        let mut wire = Vec::new();
        for (n, v) in &headers {
            wire.extend_from_slice(format!("{n}: {v}\n").as_bytes());
        }
        wire.extend_from_slice(format!("Content-Length: {}\n\n", body.len()).as_bytes());
        wire.extend_from_slice(&body);
        let (frames, rest) = decode_all(&wire, Limits::default()).unwrap();
        prop_assert_eq!(rest, 0);
        prop_assert_eq!(frames.len(), 1);
        let got: Vec<(String, String)> = frames[0]
            .headers
            .iter()
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        prop_assert_eq!(&got[..headers.len()], &headers[..]);
        prop_assert_eq!(&frames[0].body[..], &body[..]);
    }

    #[test]
    fn plain_event_values_round_trip_through_percent_encoding(
        values in prop::collection::vec("\\PC{0,30}", 1..10),
    ) {
        let mut body = String::from("Event-Name: CUSTOM\n");
        for (i, v) in values.iter().enumerate() {
            body.push_str(&format!("H{i}: {}\n", fs_url_encode(v)));
        }
        body.push('\n');
        let wire = format!("Content-Length: {}\nContent-Type: text/event-plain\n\n{body}", body.len());
        let (frames, _) = decode_all(wire.as_bytes(), Limits::default()).unwrap();
        let Message::Event(e) = Message::from_frame(frames[0].clone(), 4096).unwrap() else {
            panic!("not an event");
        };
        for (i, v) in values.iter().enumerate() {
            let name = format!("H{i}");
            let got = e.get(&name).map(|c| c.into_owned());
            prop_assert_eq!(got.as_deref(), Some(v.as_str()));
        }
    }

    #[test]
    fn every_capture_in_random_chunks_gives_the_same_frames(
        sizes in prop::collection::vec(1usize..3000, 1..16),
    ) {
        for name in captures() {
            let rx = std::fs::read(fixtures().join(format!("{name}.rx.txt"))).unwrap();
            let whole = chunked_frames(&rx, &[rx.len()]);
            let pieces = chunked_frames(&rx, &sizes);
            prop_assert_eq!(whole, pieces, "{}", name);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok((frames, _)) = decode_all(&data, Limits::default()) {
            for f in frames {
                let _ = Message::from_frame(f, 4096);
            }
        }
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = decode_command(&mut buf, Limits::default()) {}
    }

    #[test]
    fn mutated_captures_never_panic(
        seed in 0usize..40,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..20),
    ) {
        let names = captures();
        let name = &names[seed % names.len()];
        let mut rx = std::fs::read(fixtures().join(format!("{name}.rx.txt"))).unwrap();
        rx.truncate(20_000);
        for (at, b) in flips {
            let n = rx.len();
            rx[at % n] = b;
        }
        if let Ok((frames, _)) = decode_all(&rx, Limits::default()) {
            for f in frames {
                let _ = Message::from_frame(f, 4096);
            }
        }
    }
}
