//! Arbitrary bytes as what an OpenSSH ControlMaster sends, and as a forward's destination.
#![no_main]

use ferry_mux::fuzzing::check_ssh_master_messages;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_ssh_master_messages(data));
