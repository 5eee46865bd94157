//! ESL event parsing throughput on captured events (tests/fixtures/freeswitch), callcode's codec
//! side by side with the `freeswitch-esl-tokio` crate on the same bytes.
//!
//! That crate's frame parser and event parsers are crate-private (`pub(crate) mod protocol`).
//! Its public entry point that runs the same plain-event decoder (`decode_serialized_event`) is
//! `parse_channel_dump`, measured here on the event body (after framing, so it is spared the
//! framing work callcode's numbers include). For JSON it has no public parser; its private
//! `parse_json_event` starts with `serde_json::from_str::<Value>`, measured as its lower bound.
//!
//! Run: `cargo bench --bench esl -- --warm-up-time 1 --measurement-time 3`

use bytes::BytesMut;
use callcode::backend::freeswitch::codec::{FrameDecoder, Limits};
use callcode::backend::freeswitch::event::{Event, Message};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/freeswitch");

/// The complete frame (outer headers + body) of the first `event` in a capture.
fn frame(capture: &str, event: &str) -> Vec<u8> {
    let rx = std::fs::read(format!("{FIXTURES}/{capture}.rx.txt")).expect("capture");
    let mut buf = BytesMut::from(&rx[..]);
    let mut d = FrameDecoder::new(Limits::default());
    let mut offset = 0;
    while let Some(f) = d.decode(&mut buf).expect("frame") {
        let len = rx.len() - buf.len() - offset;
        let start = offset;
        offset += len;
        if let Ok(Message::Event(e)) = Message::from_frame(f, 4096) {
            if e.is("Event-Name", event) {
                return rx[start..start + len].to_vec();
            }
        }
    }
    panic!("{event} not in {capture}");
}

fn body_of(frame: &[u8]) -> &[u8] {
    let i = frame
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("header end");
    &frame[i + 2..]
}

/// callcode: frame + event, values located but decoded only when read (one read here).
fn ours(frame: &[u8]) -> usize {
    let mut buf = BytesMut::from(frame);
    let mut d = FrameDecoder::new(Limits::default());
    let f = d.decode(&mut buf).expect("frame").expect("complete");
    match Message::from_frame(f, 4096).expect("message") {
        Message::Event(e) => e.get("Unique-ID").map_or(0, |v| v.len()) + e.header_count(),
        _ => 0,
    }
}

/// callcode with every value percent-decoded, the work the crate does eagerly.
fn ours_decode_all(frame: &[u8]) -> usize {
    let mut buf = BytesMut::from(frame);
    let mut d = FrameDecoder::new(Limits::default());
    let f = d.decode(&mut buf).expect("frame").expect("complete");
    let body = f.body;
    let e = match body.first() {
        Some(b'{') => Event::parse_json(&body, 4096).expect("json"),
        _ => Event::parse_plain(body, 4096).expect("plain"),
    };
    e.decoded().map(|(_, v)| v.len()).sum()
}

fn bench(c: &mut Criterion) {
    let inputs = [
        (
            "hangup_complete_plain",
            frame("esl-inbound-20-busy486-plain", "CHANNEL_HANGUP_COMPLETE"),
        ),
        (
            "progress_plain",
            frame("esl-inbound-20-busy486-plain", "CHANNEL_PROGRESS"),
        ),
        (
            "hangup_complete_json",
            frame("esl-inbound-21-busy486-json", "CHANNEL_HANGUP_COMPLETE"),
        ),
        (
            "progress_json",
            frame("esl-inbound-21-busy486-json", "CHANNEL_PROGRESS"),
        ),
    ];
    for (unit, throughput) in [("bytes", true), ("events", false)] {
        let mut g = c.benchmark_group(format!("esl_parse_{unit}"));
        for (name, frame) in &inputs {
            g.throughput(if throughput {
                Throughput::Bytes(frame.len() as u64)
            } else {
                Throughput::Elements(1)
            });
            g.bench_function(format!("{name}/callcode"), |b| {
                b.iter(|| ours(black_box(frame)))
            });
            g.bench_function(format!("{name}/callcode_decode_all"), |b| {
                b.iter(|| ours_decode_all(black_box(frame)))
            });
            let body = std::str::from_utf8(body_of(frame)).expect("utf8");
            if name.ends_with("plain") {
                g.bench_function(format!("{name}/freeswitch_esl_tokio"), |b| {
                    b.iter(|| {
                        freeswitch_esl_tokio::parse_channel_dump(black_box(body))
                            .expect("parse")
                            .headers()
                            .len()
                    })
                });
            } else {
                g.bench_function(format!("{name}/serde_json_value"), |b| {
                    b.iter(|| {
                        serde_json::from_str::<serde_json::Value>(black_box(body))
                            .expect("json")
                            .as_object()
                            .map_or(0, |m| m.len())
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
