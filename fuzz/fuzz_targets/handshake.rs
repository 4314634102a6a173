//! Arbitrary bytes as a hello, a data-connection hello and a secret.
#![no_main]

use ferry_protocol::fuzzing::check_handshakes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_handshakes(data));
