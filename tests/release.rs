//! The release that `scripts/dist.sh` makes (scripts/test.sh builds it
//! first): the layout `limactl ferry start` expects, and agents that are
//! static Linux ELF executables of the architecture their names say.

use std::path::{Path, PathBuf};

/// The release directory for this host: `dist/ferry-<version>-<host target>`.
fn release_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let host = if cfg!(target_arch = "aarch64") { "aarch64-unknown-linux-gnu" } else { "x86_64-unknown-linux-gnu" };
    let dir = root.join("dist").join(format!("ferry-{}-{host}", env!("CARGO_PKG_VERSION")));
    assert!(dir.is_dir(), "{} is missing: run scripts/dist.sh (scripts/test.sh does)", dir.display());
    dir
}

/// (e_machine, has a PT_INTERP program header) of a 64-bit little-endian ELF.
fn elf_facts(path: &Path) -> (u16, bool) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not an ELF file", path.display());
    assert_eq!((bytes[4], bytes[5]), (2, 1), "{} is not a 64-bit little-endian ELF", path.display());
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56) as usize);
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    (u16_at(18), interp)
}

#[test]
fn the_release_carries_a_static_agent_for_each_guest_architecture() {
    let dir = release_dir();
    for (arch, machine) in [("x86_64", 62u16), ("aarch64", 183)] {
        let agent = dir.join(format!("share/ferry/ferry-agent.Linux-{arch}"));
        let (m, interp) = elf_facts(&agent);
        assert_eq!(m, machine, "{} is not an {arch} binary", agent.display());
        assert!(!interp, "{} asks for a dynamic loader: not static", agent.display());
    }
    // The x86_64 agent runs here: it is the release's own, and it says its version.
    let out =
        std::process::Command::new(dir.join("share/ferry/ferry-agent.Linux-x86_64")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ferry-agent {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_release_has_ferry_the_lima_plugin_link_and_a_tarball() {
    let dir = release_dir();
    let out = std::process::Command::new(dir.join("bin/ferry")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read_link(dir.join("bin/limactl-ferry")).unwrap(), Path::new("ferry"));
    let tarball = dir.with_file_name(format!("{}.tar.gz", dir.file_name().unwrap().to_string_lossy()));
    let list = std::process::Command::new("tar").arg("-tzf").arg(&tarball).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for f in [
        "bin/ferry",
        "bin/limactl-ferry",
        "share/ferry/ferry-agent.Linux-x86_64",
        "share/ferry/ferry-agent.Linux-aarch64",
        "share/man/man1/ferry.1",
        "share/man/man1/ferry-run.1",
        "share/man/man1/ferry-lima-start.1",
        "share/bash-completion/completions/ferry",
        "share/zsh/site-functions/_ferry",
        "share/fish/vendor_completions.d/ferry.fish",
    ] {
        assert!(list.lines().any(|l| l.ends_with(f)), "{f} missing from {}: {list}", tarball.display());
    }
}

#[test]
fn the_release_carries_man_pages_for_every_subcommand() {
    let dir = release_dir();
    let man1 = dir.join("share/man/man1");
    for page in
        ["ferry", "ferry-run", "ferry-secret", "ferry-status", "ferry-lima-start", "ferry-completions", "ferry-man"]
    {
        let path = man1.join(format!("{page}.1"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // A roff page with a title, a name and a synopsis.
        assert!(text.contains(".TH "), "{} has no .TH title: {text}", path.display());
        assert!(text.contains(".SH NAME") && text.contains(".SH SYNOPSIS"), "{}: {text}", path.display());
    }
    // ferry(1) names its subcommands' pages, and run's page its options.
    let ferry1 = std::fs::read_to_string(man1.join("ferry.1")).unwrap();
    assert!(ferry1.contains("ferry\\-run(1)"), "ferry.1 does not point to ferry-run(1): {ferry1}");
    let run1 = std::fs::read_to_string(man1.join("ferry-run.1")).unwrap();
    assert!(run1.contains("\\-\\-agent"), "ferry-run.1 does not document --agent: {run1}");
    // `man` formats the page (man-db, from scripts/install-test-deps.sh).
    let out = std::process::Command::new("man").arg("-l").arg(man1.join("ferry-run.1")).env("MANPAGER", "cat").output();
    let out = out.expect("man (man-db) is missing: run scripts/install-test-deps.sh");
    assert!(out.status.success(), "man -l ferry-run.1 failed: {}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("SYNOPSIS") && shown.contains("--agent"), "man -l ferry-run.1 printed: {shown}");
}

#[test]
fn the_release_carries_completions_each_shell_accepts() {
    let dir = release_dir();
    let scripts = [
        ("bash", "share/bash-completion/completions/ferry"),
        ("zsh", "share/zsh/site-functions/_ferry"),
        ("fish", "share/fish/vendor_completions.d/ferry.fish"),
    ];
    for (shell, rel) in scripts {
        let path = dir.join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Each script knows the subcommands and the flags of `ferry run`.
        for word in ["run", "status", "secret", "lima", "completions", "--agent", "--rules"] {
            assert!(text.contains(word), "{shell} completion {} lacks {word}", path.display());
        }
    }
    // Each shell loads its script (zsh and fish from scripts/install-test-deps.sh):
    // bash registers the completion, zsh and fish parse it.
    let path = |i: usize| dir.join(scripts[i].1).display().to_string();
    let checks = [
        ("bash", vec!["-c".to_string(), format!("source {} && complete -p ferry", path(0))]),
        ("zsh", vec!["-n".to_string(), path(1)]),
        ("fish", vec!["--no-execute".to_string(), path(2)]),
    ];
    for (shell, args) in checks {
        let out = std::process::Command::new(shell)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{shell}: {e} (run scripts/install-test-deps.sh)"));
        assert!(
            out.status.success(),
            "{shell} rejects its completion script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
