//! Replays the fuzz corpus and every past finding (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same checks the fuzz targets run.

use ferry_protocol::fuzzing::{check_frame_stream, check_handshakes, check_messages, replay_corpus};

#[test]
fn frame_decoder_corpus() {
    assert!(replay_corpus("frame_decoder", check_frame_stream) > 0, "the corpus is checked in");
}

#[test]
fn control_message_corpus() {
    assert!(replay_corpus("control_message", check_messages) > 0, "the corpus is checked in");
}

#[test]
fn handshake_corpus() {
    assert!(replay_corpus("handshake", check_handshakes) > 0, "the corpus is checked in");
}
