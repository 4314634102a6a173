//! Arbitrary bytes, fed to the frame decoder in arbitrary splits: never a
//! panic, never a frame over the limit, and every frame re-encodes to bytes
//! that decode to the same frame.
#![no_main]

use ferry_protocol::fuzzing::check_frame_stream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_frame_stream(data);
});
