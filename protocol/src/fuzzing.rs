//! Property checks run by the fuzz targets (`fuzz/`) and by the replay of
//! their corpus in the normal test suite. Each takes arbitrary bytes and
//! panics only if a decoder breaks one of its promises.

use std::path::Path;

use bytes::BytesMut;

use crate::{
    auth::Secret,
    data_conn::{DataProof, MAC_LEN, PROOF_LEN},
    frame::MAX_REASON_LEN,
    handshake::HELLO_LEN,
    message, ControlMessage, Frame, FrameDecoder, Hello, Role, Target, MAX_PAYLOAD,
};

/// Feeds `data` to a frame decoder in chunks whose size the first byte
/// picks, once whole-frame and once passing DATA on in fragments.
/// Promises: no panic; no payload over [`MAX_PAYLOAD`]; decoding stops at
/// the first error; every decoded frame re-encodes to one that decodes equal.
pub fn check_frame_stream(data: &[u8]) {
    let Some((&seed, data)) = data.split_first() else { return };
    let chunk = 1 + seed as usize * 7;
    decode_in_chunks(FrameDecoder::default(), data, chunk);
    decode_in_chunks(FrameDecoder::default().with_data_fragments(u32::from(seed)), data, chunk);
}

fn decode_in_chunks(mut dec: FrameDecoder, data: &[u8], chunk: usize) {
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => check_reencode(frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn check_reencode(frame: Frame) {
    let long_reason = match &frame {
        Frame::OpenRefused { reason, .. } | Frame::Reset { reason, .. } | Frame::GoAway { reason } => {
            reason.len() > MAX_REASON_LEN
        }
        _ => false,
    };
    let (_, payload) = frame.clone().into_parts();
    assert!(payload.len() <= MAX_PAYLOAD as usize, "payload over the limit");
    if long_reason {
        return; // re-encoding truncates reasons by design
    }
    let mut wire = BytesMut::new();
    frame.clone().encode(&mut wire);
    let again = FrameDecoder::default().decode(&mut wire).expect("re-encoded frame decodes").expect("complete");
    assert_eq!(again, frame, "re-encoded frame differs");
    assert!(wire.is_empty(), "re-encoded frame left bytes behind");
}

/// Decodes `data` as a control message and as an open target; whatever
/// decodes must re-encode to something that decodes equal.
pub fn check_messages(data: &[u8]) {
    if let Ok(m) = message::decode::<ControlMessage>(data) {
        assert_eq!(message::decode::<ControlMessage>(&message::encode(&m)).expect("re-decode"), m);
    }
    if let Ok(t) = message::decode::<Target>(data) {
        assert_eq!(message::decode::<Target>(&message::encode(&t)).expect("re-decode"), t);
    }
}

/// Decodes `data` as a session hello, a data-connection proof and request
/// and a secret:
/// no panic, and what decodes re-encodes faithfully.
pub fn check_handshakes(data: &[u8]) {
    if let Some(b) = data.get(..HELLO_LEN) {
        let b: &[u8; HELLO_LEN] = b.try_into().expect("length checked");
        if let Ok(h) = Hello::decode(b) {
            assert_eq!(Hello::decode(&h.encode()).expect("re-decode"), h);
            let _ = Hello::ours(Role::Host).negotiate(&h);
            let _ = Hello::ours(Role::Agent).negotiate(&h);
        }
    }
    if let Some(b) = data.get(..PROOF_LEN) {
        let b: &[u8; PROOF_LEN] = b.try_into().expect("length checked");
        if let Ok((p, mac)) = DataProof::decode(b) {
            // Whatever decodes re-encodes to the same fields, and a MAC made
            // up by the input never verifies against a real key.
            let key = fuzz_key();
            assert!(!p.verify(&key, &mac) || p.encode(&key)[PROOF_LEN - MAC_LEN..] == mac[..]);
            let (again, _) = DataProof::decode(&p.encode(&key)).expect("re-decode");
            assert_eq!(again, p);
            if let Some(len) = data.get(PROOF_LEN..PROOF_LEN + 2) {
                if let Ok(rest) = DataProof::request_rest_len([len[0], len[1]]) {
                    if let Some(rest) = data.get(PROOF_LEN + 2..PROOF_LEN + 2 + rest) {
                        let _ = p.open_request(&key, rest);
                    }
                }
            }
        }
    }
    let _ = Secret::from_hex(&String::from_utf8_lossy(data));
}

/// A fixed key for the fuzzer's MAC checks.
fn fuzz_key() -> crate::keys::Key {
    crate::keys::Key([0x5a; crate::keys::KEY_LEN])
}

/// Runs `check` over every input of fuzz target `target` checked in under
/// `fuzz/corpus/` and `fuzz/regressions/` (the corpus replay of each
/// crate's tests); returns how many it ran.
pub fn replay_corpus(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            check(&std::fs::read(e.path()).expect("a corpus file"));
            n += 1;
        }
    }
    n
}
