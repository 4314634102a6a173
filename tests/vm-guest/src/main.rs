//! Services the real-VM suite runs inside the guest (static, std only):
//!
//! - `echo PORT`: echoes each connection until EOF, then closes;
//! - `sha PORT`: reads each connection to EOF, answers its SHA-256 in hex;
//! - `source PORT BYTES`: sends BYTES of a fixed pattern, then its SHA-256 on a second port (PORT+1);
//! - `ctl PORT`: runs each connection's text as a `sh -c` script, answers its output;
//! - `watch DIR`: prints `INOTIFY <mask> <name>` lines for inotify events on DIR.
//!
//! Every listener binds 127.0.0.1 only: the host reaches them through ferry.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
};

use sha2::{Digest, Sha256};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = || args.get(2).and_then(|p| p.parse::<u16>().ok()).expect("PORT");
    match args.get(1).map(String::as_str) {
        Some("echo") => serve(port(), |mut s| {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
        }),
        Some("sha") => serve(port(), |mut s| {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let _ = s.write_all(hex(&h.finalize()).as_bytes());
        }),
        Some("source") => {
            let bytes: usize = args.get(3).and_then(|b| b.parse().ok()).expect("BYTES");
            let data = pattern(bytes);
            let sum = hex(&Sha256::digest(&data));
            let p = port();
            std::thread::spawn(move || serve(p + 1, move |mut s| drop(s.write_all(sum.as_bytes()))));
            serve(p, move |mut s| drop(s.write_all(&data)));
        }
        Some("ctl") => serve(port(), |mut s| {
            let mut script = String::new();
            let _ = s.read_to_string(&mut script);
            let out = Command::new("sh").arg("-c").arg(&script).output();
            let _ = match out {
                Ok(o) => s.write_all(&[o.stdout, o.stderr].concat()),
                Err(e) => s.write_all(e.to_string().as_bytes()),
            };
        }),
        Some("watch") => watch(args.get(2).expect("DIR")),
        _ => {
            eprintln!("usage: ferry-vm-guest echo|sha|ctl PORT | source PORT BYTES | watch DIR");
            std::process::exit(2);
        }
    }
}

/// Accepts forever on 127.0.0.1:`port`, one thread per connection.
fn serve(port: u16, handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static) {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    for s in l.incoming().flatten() {
        let h = handle.clone();
        std::thread::spawn(move || h(s));
    }
}

/// A fixed, non-repeating-looking pattern.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prints one line per inotify event on `dir`.
fn watch(dir: &str) {
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    let path = std::ffi::CString::new(dir).unwrap();
    let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_ALL_EVENTS) };
    assert!(wd >= 0, "inotify_add_watch {dir}: {}", std::io::Error::last_os_error());
    println!("INOTIFY watching {dir}");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        let mut off = 0usize;
        while off + 16 <= n as usize {
            let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let name = &buf[off + 16..off + 16 + len];
            let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default());
            println!("INOTIFY {mask:#x} {name}");
            off += 16 + len;
        }
    }
}
