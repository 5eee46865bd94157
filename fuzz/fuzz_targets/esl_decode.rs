//! Feeds arbitrary bytes to the ESL frame decoder, the message parser and the command decoder.
//! The same entry points run under proptest in tests/freeswitch_codec.rs.
#![no_main]

use bytes::BytesMut;
use callcode::backend::freeswitch::codec::{decode_all, decode_command, Limits};
use callcode::backend::freeswitch::event::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((frames, _)) = decode_all(data, Limits::default()) {
        for f in frames {
            let _ = Message::from_frame(f, 4096);
        }
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_command(&mut buf, Limits::default()) {}
});
