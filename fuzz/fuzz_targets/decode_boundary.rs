//! Every input the environment can push across the enclave boundary decodes to a value or
//! a typed error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitbft_types::boundary::{Input, Output};
use splitbft_types::codec::from_bytes;
use splitbft_types::msg::Request;

fuzz_target!(|data: &[u8]| {
    let _ = from_bytes::<Input>(data);
    let _ = from_bytes::<Output>(data);
    let _ = from_bytes::<Vec<Request>>(data);
});
