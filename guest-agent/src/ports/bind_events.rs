//! Instant discovery: the kernel's `bind()` and `listen()` syscall-exit
//! tracepoints wake the scanner the moment any process on the guest binds a
//! port or starts listening, so new ports need no polling.
//!
//! How: one perf event per CPU and tracepoint (`syscalls:sys_exit_bind`,
//! `syscalls:sys_exit_listen`), sampling every hit into a small ring buffer
//! whose file descriptor becomes readable on each sample. No eBPF program,
//! no BTF and no BPF toolchain: only `perf_event_open`, which needs
//! CAP_PERFMON (root in the guest) and a kernel with syscall tracepoints.
//! The scanner polls the descriptors itself; the samples are skipped unread
//! (which process bound what does not matter: the scan that follows finds
//! out).
//!
//! The tracepoint ids come from tracefs. Where tracefs is not mounted
//! (systemd mounts it; a minimal init may not), it is mounted for a moment
//! on a private temporary directory to read them, and unmounted again.

use std::{
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    ptr::NonNull,
};

use perf_event_open_sys::bindings::{
    perf_event_attr, perf_event_mmap_page, PERF_FLAG_FD_CLOEXEC, PERF_TYPE_TRACEPOINT,
};

/// The tracepoints that mean "a port may have appeared".
const TRACEPOINTS: [&str; 2] = ["syscalls/sys_exit_bind", "syscalls/sys_exit_listen"];

/// Where tracefs is usually mounted.
const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Perf events on the bind/listen tracepoints of every online CPU, each
/// descriptor readable after a hit.
pub struct BindEvents {
    binds: Vec<SampleRing>,
    listens: Vec<SampleRing>,
}

/// Which syscalls were hit since the last drain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hits {
    /// `bind()`: a UDP socket may now be listening.
    pub bind: bool,
    /// `listen()`: a TCP socket is now listening.
    pub listen: bool,
}

impl BindEvents {
    /// Subscribes to the tracepoints. Fails where the kernel, tracefs or the
    /// agent's privileges do not allow it.
    pub fn open() -> io::Result<Self> {
        let [bind, listen] = tracepoint_ids()?;
        let cpus = online_cpus()?;
        let open = |id| cpus.iter().map(|&cpu| SampleRing::open(id, cpu)).collect::<io::Result<Vec<_>>>();
        Ok(Self { binds: open(bind)?, listens: open(listen)? })
    }

    /// The descriptors to poll for reading.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.binds.iter().chain(&self.listens).map(|r| r.fd.as_raw_fd())
    }

    /// Consumes every pending hit and says which syscalls they were.
    pub fn drain(&self) -> Hits {
        let drain = |rings: &[SampleRing]| rings.iter().fold(false, |any, ring| ring.skip_samples() | any);
        Hits { bind: drain(&self.binds), listen: drain(&self.listens) }
    }
}

/// One CPU's perf event on one tracepoint, with its mapped ring buffer.
struct SampleRing {
    fd: OwnedFd,
    page: NonNull<perf_event_mmap_page>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only touched through it.
unsafe impl Send for SampleRing {}

impl SampleRing {
    /// Samples every hit of tracepoint `id` on `cpu`, waking readers each time.
    fn open(id: u64, cpu: i32) -> io::Result<Self> {
        // SAFETY: perf_event_attr is plain data; all-zero is its default.
        let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
        attr.type_ = PERF_TYPE_TRACEPOINT;
        attr.size = std::mem::size_of::<perf_event_attr>() as u32;
        attr.config = id;
        attr.__bindgen_anon_1.sample_period = 1;
        attr.__bindgen_anon_2.wakeup_events = 1;
        // SAFETY: attr is initialised; pid -1 with a cpu counts every process there.
        let fd = unsafe {
            perf_event_open_sys::perf_event_open(&mut attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC as libc::c_ulong)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The metadata page plus one data page: samples are never read,
        // only skipped, so one page of room is plenty.
        let page_size = page_size();
        let len = 2 * page_size;
        // SAFETY: mapping a perf descriptor as the kernel documents.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { fd, page, len })
    }

    /// Marks every sample in the ring as consumed; returns whether there
    /// was any.
    fn skip_samples(&self) -> bool {
        let page = self.page.as_ptr();
        // SAFETY: the page stays mapped while self lives; the kernel writes
        // data_head and reads data_tail, as the perf ABI defines.
        unsafe {
            let head = std::ptr::addr_of!((*page).data_head).read_volatile();
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let tail = std::ptr::addr_of!((*page).data_tail).read_volatile();
            if head == tail {
                return false;
            }
            std::ptr::addr_of_mut!((*page).data_tail).write_volatile(head);
            true
        }
    }
}

impl Drop for SampleRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// The ids of [`TRACEPOINTS`], from a mounted tracefs or a transient one.
fn tracepoint_ids() -> io::Result<[u64; 2]> {
    for root in TRACEFS_MOUNTS {
        if let Ok(ids) = read_ids(Path::new(root)) {
            return Ok(ids);
        }
    }
    let dir = tempfile::Builder::new().prefix("ferry-tracefs").tempdir()?;
    mount_tracefs(dir.path())?;
    let ids = read_ids(dir.path());
    unmount(dir.path());
    ids
}

fn read_ids(root: &Path) -> io::Result<[u64; 2]> {
    let read = |tp: &str| -> io::Result<u64> {
        let text = fs::read_to_string(root.join("events").join(tp).join("id"))?;
        text.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("tracepoint {tp}: {e}")))
    };
    Ok([read(TRACEPOINTS[0])?, read(TRACEPOINTS[1])?])
}

fn mount_tracefs(dir: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(dir: &Path) {
    let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::warn!("could not unmount the transient tracefs at {}: {}", dir.display(), io::Error::last_os_error());
    }
}

/// The online CPUs, from `/sys/devices/system/cpu/online` ("0-3,6").
fn online_cpus() -> io::Result<Vec<i32>> {
    parse_cpu_list(fs::read_to_string("/sys/devices/system/cpu/online")?.trim())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable list of online CPUs"))
}

fn parse_cpu_list(text: &str) -> Option<Vec<i32>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<i32>().ok()?..=b.parse::<i32>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn binding_and_listening_are_seen_at_once() {
        // The test suites run as root on a kernel with syscall tracepoints,
        // as a guest agent does; anything less is a failure here.
        let events = BindEvents::open().expect("bind/listen tracepoints");
        let _l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // The hits are in the rings as soon as the syscalls return.
        assert_eq!(events.drain(), Hits { bind: true, listen: true });
        let fds: Vec<RawFd> = events.fds().collect();
        assert_eq!(fds.len(), 2 * online_cpus().unwrap().len());
        // A bind after a drain is seen again (other processes may add hits).
        events.drain();
        let _u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(events.drain().bind, "a hit for the bound UDP socket");
    }
}
