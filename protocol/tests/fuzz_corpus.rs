//! Replays the fuzz corpus and every past finding (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same checks the fuzz targets run.

use std::path::Path;

use ferry_protocol::fuzzing::{check_frame_stream, check_handshakes, check_messages};

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            check(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn frame_decoder_corpus() {
    assert!(replay("frame_decoder", check_frame_stream) > 0, "the corpus is checked in");
}

#[test]
fn control_message_corpus() {
    assert!(replay("control_message", check_messages) > 0, "the corpus is checked in");
}

#[test]
fn handshake_corpus() {
    assert!(replay("handshake", check_handshakes) > 0, "the corpus is checked in");
}
