//! Replays the fuzz corpus and every past finding of this crate's fuzz
//! targets (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through
//! the same checks the targets run.

use ferry_mux::fuzzing::check_ssh_master_messages;
use ferry_protocol::fuzzing::replay_corpus;

#[test]
fn ssh_master_messages_corpus() {
    assert!(replay_corpus("ssh_master_messages", check_ssh_master_messages) > 0, "the corpus is checked in");
}
