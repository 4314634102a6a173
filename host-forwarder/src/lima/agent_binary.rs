//! Which `ferry-agent` binary goes into a guest: the one built for the
//! guest's architecture, checked by its ELF header before it is copied.
//!
//! A release (`scripts/dist.sh`) carries an agent per guest architecture in
//! Lima's own layout for its guest agents, `share/ferry/ferry-agent.Linux-<arch>`
//! beside `bin/ferry`. A development build has one `ferry-agent` next to
//! `ferry`, used only if it is an ELF for the guest's architecture (on a Mac,
//! a `ferry-agent` built there would be a macOS binary).

use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// A Linux guest architecture the agent is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestArch {
    /// x86_64 (Intel and AMD guests).
    X86_64,
    /// aarch64 (Apple Silicon guests, ARM servers).
    Aarch64,
}

impl GuestArch {
    /// Parses what `uname -m` prints in the guest.
    pub fn from_uname(machine: &str) -> Result<Self, String> {
        match machine.trim() {
            "x86_64" | "amd64" => Ok(Self::X86_64),
            "aarch64" | "arm64" => Ok(Self::Aarch64),
            other => Err(format!("the guest is {other:?}; ferry-agent is built for x86_64 and aarch64 guests only")),
        }
    }

    /// The name `uname -m` gives it (and Lima's file suffix).
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// The ELF `e_machine` of its binaries.
    fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Aarch64 => 183,
        }
    }
}

/// What the ELF header of `path` says: `Ok(true)` for a 64-bit
/// little-endian ELF executable of `arch`, `Ok(false)` for any other file.
pub fn is_elf_for(path: &Path, arch: GuestArch) -> std::io::Result<bool> {
    let mut header = [0u8; 20];
    let mut f = std::fs::File::open(path)?;
    if f.read_exact(&mut header).is_err() {
        return Ok(false);
    }
    let elf64_le = header[..4] == *b"\x7fELF" && header[4] == 2 && header[5] == 1;
    Ok(elf64_le && u16::from_le_bytes([header[18], header[19]]) == arch.elf_machine())
}

/// The agent binary for `arch`: `explicit` if given (it must match), else
/// `<dir of ferry>/../share/ferry/ferry-agent.Linux-<arch>`, else
/// `<dir of ferry>/ferry-agent` if it is an ELF for `arch`. The error says
/// what was looked at and how to get a matching agent.
pub fn find(explicit: Option<&Path>, ferry_exe: &Path, arch: GuestArch) -> Result<PathBuf, String> {
    let check = |p: &Path| is_elf_for(p, arch).map_err(|e| format!("{}: {e}", p.display()));
    if let Some(p) = explicit {
        return match check(p)? {
            true => Ok(p.to_path_buf()),
            false => Err(format!("{} is not a Linux {} ELF binary", p.display(), arch.name())),
        };
    }
    let bin = ferry_exe.parent().unwrap_or(Path::new("."));
    let shared = bin.join("../share/ferry").join(format!("ferry-agent.Linux-{}", arch.name()));
    let beside = bin.join("ferry-agent");
    let mut looked = Vec::new();
    for candidate in [shared, beside] {
        match check(&candidate) {
            Ok(true) => return Ok(candidate),
            Ok(false) => looked.push(format!("{} (not a Linux {} ELF)", candidate.display(), arch.name())),
            Err(_) => looked.push(format!("{} (missing)", candidate.display())),
        }
    }
    Err(format!(
        "no ferry-agent for this Linux {} guest; looked at {}. Install a ferry release (scripts/dist.sh builds \
         one with an agent for every guest), or build one with `cargo build --release --target {}-unknown-linux-musl \
         -p ferry-agent` and pass it with --agent-binary",
        arch.name(),
        looked.join(", "),
        arch.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file starting with a 64-bit little-endian ELF header for `machine`.
    fn fake_elf(path: &Path, machine: u16) {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        h.resize(18, 0);
        h.extend_from_slice(&machine.to_le_bytes());
        h.resize(64, 0);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, h).unwrap();
    }

    #[test]
    fn uname_names_map_to_architectures() {
        assert_eq!(GuestArch::from_uname("x86_64\n").unwrap(), GuestArch::X86_64);
        assert_eq!(GuestArch::from_uname("aarch64").unwrap(), GuestArch::Aarch64);
        assert!(GuestArch::from_uname("riscv64").unwrap_err().contains("riscv64"));
    }

    #[test]
    fn the_release_layout_wins_and_a_wrong_binary_is_never_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("bin/ferry");
        fake_elf(&exe, 62);
        // Only an x86_64 agent beside ferry: right for x86_64, refused for aarch64.
        fake_elf(&dir.path().join("bin/ferry-agent"), 62);
        assert_eq!(find(None, &exe, GuestArch::X86_64).unwrap(), dir.path().join("bin/ferry-agent"));
        let err = find(None, &exe, GuestArch::Aarch64).unwrap_err();
        assert!(err.contains("no ferry-agent for this Linux aarch64 guest"), "{err}");
        assert!(err.contains("not a Linux aarch64 ELF"), "{err}");
        // A release's share/ferry has one per architecture.
        let arm = dir.path().join("bin/../share/ferry/ferry-agent.Linux-aarch64");
        fake_elf(&arm, 183);
        assert_eq!(find(None, &exe, GuestArch::Aarch64).unwrap(), arm);
        // A mislabelled file is refused.
        let x86 = dir.path().join("share/ferry/ferry-agent.Linux-x86_64");
        fake_elf(&x86, 183);
        assert_eq!(find(None, &exe, GuestArch::X86_64).unwrap(), dir.path().join("bin/ferry-agent"));
        // An explicit binary must match too; a script is no agent.
        assert!(find(Some(&arm), &exe, GuestArch::X86_64).unwrap_err().contains("not a Linux x86_64 ELF"));
        let script = dir.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(!is_elf_for(&script, GuestArch::X86_64).unwrap());
    }

    #[test]
    fn this_test_binary_is_recognised() {
        let me = std::env::current_exe().unwrap();
        let arch = if cfg!(target_arch = "aarch64") { GuestArch::Aarch64 } else { GuestArch::X86_64 };
        assert_eq!(is_elf_for(&me, arch).unwrap(), cfg!(target_os = "linux"));
    }
}
