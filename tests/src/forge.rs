//! What an attacker without the secret can make: well-formed ferry
//! messages under keys of its own.

use ferry_protocol::{
    auth::Secret,
    data_conn::{DataProof, DATA_NONCE_LEN},
    keys::{SessionKeys, Transcript},
    Hello, Role, Target,
};

/// A data-connection proof and request for the guest TCP address `target`,
/// MAC'd with the keys of a session that never existed.
pub fn data_hello(target: &str) -> (Vec<u8>, Vec<u8>) {
    let transcript =
        Transcript::new(&Hello::ours(Role::Host).encode(), &Hello::ours(Role::Agent).encode(), &[7; 32], &[8; 32]);
    let keys = SessionKeys::derive(Some(&Secret::generate().expect("randomness")), &transcript);
    let proof = DataProof {
        version: ferry_protocol::PROTOCOL_VERSION,
        session: keys.session_id,
        conn: 1,
        nonce: [3; DATA_NONCE_LEN],
    };
    let target = Target::Tcp(target.parse().expect("a socket address"));
    (proof.encode(&keys.data).to_vec(), proof.encode_request(&keys.data, &target))
}
