//! Arbitrary bytes as a control message and as an open target.
#![no_main]

use ferry_protocol::fuzzing::check_messages;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_messages(data));
