//! Feeds arbitrary bytes, split at an arbitrary point, through the AMI decoder and the typed event
//! view: it must return frames or an error, never panic. `cargo +nightly fuzz run ami_decode`.
#![no_main]

use bytes::BytesMut;
use callcode::backend::asterisk::ami::{AmiCodec, Frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::new();
    for part in [&data[..split], &data[split..]] {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Frame::Message(m))) => {
                    let _ = m.event();
                    let _ = m.get_all("Variable").count();
                }
                Ok(Some(Frame::Banner(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
