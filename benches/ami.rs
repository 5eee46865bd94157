//! AMI parsing throughput on captured Asterisk 22 traffic, callcode's codec beside the
//! `asterisk-rs-ami` crate's on the same bytes.
//!
//! Input: every `tests/fixtures/asterisk/callcode-path/ami-callcode-*.server.txt` (what Asterisk
//! sent during the callcode-path captures), each with its banner: 7 streams, 255,411 bytes, 631
//! messages (609 of them events), fed in 1,460-byte pieces (one Ethernet MSS) as a socket would.
//!
//! - `ami_parse/callcode`: `ami::AmiCodec` (tokio-util `Decoder`) → `Message` (offsets over
//!   `Bytes`) → `Message::event()` (the typed view the backend matches on).
//! - `ami_parse/asterisk_rs_ami`: `asterisk_rs_ami::AmiCodec` (its public tokio-util `Decoder`) →
//!   `RawAmiMessage` (owned `String` pairs) → `AmiEvent::from_raw` (its typed event enum).
//!
//! Both decode every message and build a typed event for every event message; the message counts
//! are checked to be equal before measuring. Throughput is in bytes of AMI stream.

use std::hint::black_box;

use bytes::BytesMut;
use callcode::backend::asterisk::ami::{AmiCodec, Frame};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio_util::codec::Decoder;

const MSS: usize = 1460;

fn stream() -> Vec<Vec<u8>> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/asterisk/callcode-path"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().into_string().expect("name"))
        .filter(|n| n.starts_with("ami-callcode-") && n.ends_with(".server.txt"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| std::fs::read(format!("{dir}/{n}")).expect("capture"))
        .collect()
}

/// Messages decoded and events typed by callcode's codec.
fn callcode(captures: &[Vec<u8>]) -> (usize, usize) {
    let (mut messages, mut events) = (0, 0);
    for capture in captures {
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::with_capacity(8192);
        for piece in capture.chunks(MSS) {
            buf.extend_from_slice(piece);
            while let Some(frame) = codec.decode(&mut buf).expect("valid capture") {
                if let Frame::Message(m) = frame {
                    messages += 1;
                    if !matches!(
                        m.event(),
                        callcode::backend::asterisk::ami::Event::Unknown("")
                    ) {
                        events += 1;
                    }
                    black_box(&m);
                }
            }
        }
    }
    (messages, events)
}

fn asterisk_rs(captures: &[Vec<u8>]) -> (usize, usize) {
    let (mut messages, mut events) = (0, 0);
    for capture in captures {
        let mut codec = asterisk_rs_ami::AmiCodec::new();
        let mut buf = BytesMut::with_capacity(8192);
        for piece in capture.chunks(MSS) {
            buf.extend_from_slice(piece);
            while let Some(raw) = codec.decode(&mut buf).expect("valid capture") {
                messages += 1;
                if let Some(e) = asterisk_rs_ami::AmiEvent::from_raw(&raw) {
                    events += 1;
                    black_box(&e);
                }
                black_box(&raw);
            }
        }
    }
    (messages, events)
}

fn bench(c: &mut Criterion) {
    let captures = stream();
    let bytes: usize = captures.iter().map(Vec::len).sum();
    let ours = callcode(&captures);
    let theirs = asterisk_rs(&captures);
    assert_eq!(
        ours, theirs,
        "both codecs must see the same messages and events"
    );
    eprintln!(
        "ami_parse input: {} captures, {bytes} bytes, {} messages, {} events",
        captures.len(),
        ours.0,
        ours.1
    );
    let mut g = c.benchmark_group("ami_parse");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("callcode", |b| b.iter(|| callcode(black_box(&captures))));
    g.bench_function("asterisk_rs_ami", |b| {
        b.iter(|| asterisk_rs(black_box(&captures)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
