//! Fuzzes the FastAGI decoder with what a peer posing as Asterisk could send: the first byte picks
//! the read size, the rest is fed in reads of that size. It must end in events or a typed error,
//! never a panic, and never keep more than a line's cap of bytes unconsumed. The same entry point
//! runs as a proptest in tests/agi_codec.rs (`arbitrary_bytes_never_panic`).
#![no_main]

use bytes::BytesMut;
use callcode::backend::asterisk::agi::{AgiDecoder, MAX_LINE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = AgiDecoder::new();
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(usize::from(size).max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() < MAX_LINE_LEN);
    }
});
