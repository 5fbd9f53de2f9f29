//! Every frame a peer or client can send: `Hello` and `Message` decoding never panics, and
//! what decodes re-encodes to the same bytes (the encoding is canonical).
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitbft_types::codec::{decode_message, encode_message};
use splitbft_types::wire::Hello;

fuzz_target!(|data: &[u8]| {
    let _ = Hello::decode(data);
    if let Ok(msg) = decode_message(data) {
        assert_eq!(decode_message(&encode_message(&msg)).as_ref(), Ok(&msg));
    }
});
