//! Replays the fuzz corpus and every past finding of this crate's fuzz
//! targets (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through
//! the same checks the targets run.

use std::path::Path;

use ferry_mux::fuzzing::check_ssh_master_messages;

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
fn ssh_master_messages_corpus() {
    assert!(replay("ssh_master_messages", check_ssh_master_messages) > 0, "the corpus is checked in");
}
