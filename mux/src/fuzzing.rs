//! Property checks run by the fuzz targets (`fuzz/`) and by the replay of
//! their corpus in the normal test suite, for the decoders of this crate.
//! Each takes arbitrary bytes and panics only if a decoder breaks one of
//! its promises.

use crate::ssh_master::messages::{self, Destination, Reply};

/// Reads `data` as a ControlMaster's byte stream, message by message, the
/// way the client does. Promises: no panic; [`messages::message_len`]
/// delimits a whole message of at most [`messages::MAX_MESSAGE`] bytes
/// inside what it was given, or says it is incomplete only when it is;
/// whatever [`messages::parse`] reads re-encodes to a message that parses
/// equal. Then uses the bytes as a forward's destination: the request is
/// one whole message of the type it claims.
pub fn check_ssh_master_messages(data: &[u8]) {
    let mut buf = data;
    loop {
        match messages::message_len(buf) {
            Ok(Some(len)) => {
                assert!((8..=4 + messages::MAX_MESSAGE).contains(&len) && len <= buf.len(), "length {len}");
                if let Ok(reply) = messages::parse(&buf[..len]) {
                    check_reencode(&reply);
                }
                buf = &buf[len..];
            }
            Ok(None) => {
                let whole = buf.first_chunk::<4>().map(|p| 4 + u32::from_be_bytes(*p) as usize);
                assert!(whole.is_none_or(|w| w > buf.len()), "a whole message reported incomplete");
                break;
            }
            Err(_) => break,
        }
    }
    let _ = messages::parse(data);

    let (port, text) = match data.split_first_chunk::<2>() {
        Some((p, rest)) => (u16::from_be_bytes(*p), String::from_utf8_lossy(rest)),
        None => (0, String::from_utf8_lossy(data)),
    };
    if text.len() + 64 <= messages::MAX_MESSAGE {
        for to in [Destination::Tcp(&text, port), Destination::Unix(&text)] {
            let request = messages::stdio_forward(7, to);
            assert_eq!(messages::message_len(&request), Ok(Some(request.len())));
            assert_eq!(messages::parse(&request), Ok(Reply::Other { kind: messages::MUX_C_NEW_STDIO_FWD }));
        }
    }
}

/// `reply` laid out as a master sends it parses back equal.
fn check_reencode(reply: &Reply) {
    let mut body = Vec::new();
    let u32 = |v: u32, body: &mut Vec<u8>| body.extend_from_slice(&v.to_be_bytes());
    match reply {
        Reply::Hello { version } => {
            u32(messages::MUX_MSG_HELLO, &mut body);
            u32(*version, &mut body);
        }
        Reply::Opened { request_id } => {
            u32(messages::MUX_S_SESSION_OPENED, &mut body);
            u32(*request_id, &mut body);
        }
        Reply::Refused { request_id, denied, reason } => {
            let kind = if *denied { messages::MUX_S_PERMISSION_DENIED } else { messages::MUX_S_FAILURE };
            u32(kind, &mut body);
            u32(*request_id, &mut body);
            u32(reason.len() as u32, &mut body);
            body.extend_from_slice(reason.as_bytes());
        }
        Reply::Other { kind } => u32(*kind, &mut body),
    }
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    if wire.len() > 4 + messages::MAX_MESSAGE {
        return; // a lossy reason can outgrow the limit (U+FFFD is 3 bytes)
    }
    assert_eq!(messages::message_len(&wire), Ok(Some(wire.len())));
    assert_eq!(messages::parse(&wire).as_ref(), Ok(reply), "re-encoded reply differs");
}
