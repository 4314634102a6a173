//! A test binary of its own: it lowers the process's descriptor limit.

use std::{io::Read, os::unix::net::UnixStream, time::Duration};

use ferry_mux::{transport::RawConn, unix_conn::UnixConn};

#[tokio::test]
async fn a_blocked_write_survives_a_process_out_of_descriptors() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut a = RawConn::Unix(UnixConn::from_std(a).unwrap());
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    // The far side reads everything, after a pause that makes the write block.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut back = vec![0u8; expected.len()];
        b.read_exact(&mut back).unwrap();
        back == expected
    });
    // Use up every descriptor the process may open, as a flood of connections does.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit for getrlimit.
    unsafe { assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0) };
    lim.rlim_cur = 64;
    // SAFETY: as above; lowering the soft limit needs no privilege.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0) };
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    let wrote = tokio::time::timeout(Duration::from_secs(30), a.write_all(&data)).await.expect("the write hung");
    drop(hog);
    wrote.expect("a live connection failed only because the process had no descriptor to spare");
    assert!(reader.join().unwrap(), "bytes in order");
}
