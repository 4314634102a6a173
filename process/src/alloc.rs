//! Allocator tuning for the data path.
//!
//! Multiplexed streams read into buffers of up to 256 KiB
//! (`ferry_protocol::connection::MAX_DATA_FRAME`) that live until the frame is
//! written. glibc serves blocks that large with a fresh mmap each time, so
//! every read faults in and zeroes 64 new pages and every free unmaps them
//! again: measured at about 4% of the forwarder's CPU in bulk transfers.
//! Raising the mmap threshold (and the trim threshold with it) keeps such
//! blocks in the heap, where freed ones are reused.

/// Blocks below this size come from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 4 << 20;

/// Applies the tuning; call once at start-up, before the runtime starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * MMAP_THRESHOLD);
    }
}
