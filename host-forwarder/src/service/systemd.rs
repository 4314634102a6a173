//! Linux: a systemd user unit, `~/.config/systemd/user/ferry.service`
//! (`$XDG_CONFIG_HOME` honoured), enabled for `default.target` so that the
//! user manager starts it at login, restarted if it exits. Its output goes
//! to the journal (`journalctl --user -u ferry.service`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{query_output, Manager, Spec};

/// The unit's name.
pub const UNIT: &str = "ferry.service";

/// The systemd implementation.
pub struct Systemd {
    config_dir: PathBuf,
}

impl Systemd {
    /// The unit of the user whose home is `home`.
    pub fn new(home: &Path) -> Self {
        let config_dir = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".config"));
        Self { config_dir }
    }

    fn systemctl(args: &[&str]) -> Command {
        let mut c = Command::new("systemctl");
        c.arg("--user").args(args);
        c
    }
}

/// One word of a unit file's command line or Environment= assignment: in
/// double quotes, with `\`, `"` escaped and `%` doubled (systemd's
/// specifier character), `$` doubled (its variable expansion).
pub fn quote(word: &str) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Manager for Systemd {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn definition_path(&self) -> PathBuf {
        self.config_dir.join("systemd/user").join(UNIT)
    }

    fn render(&self, spec: &Spec) -> String {
        let mut exec = vec![quote(&spec.program.display().to_string())];
        exec.extend(spec.args.iter().map(|a| quote(a)));
        let env: String =
            spec.env.iter().map(|(k, v)| format!("Environment={}\n", quote(&format!("{k}={v}")))).collect();
        format!(
            "[Unit]\n\
             Description=ferry: forwards the ports of the enabled Lima and Colima instances\n\n\
             [Service]\n\
             Type=simple\n\
             ExecStart={}\n\
             {env}\
             Restart=always\n\
             RestartSec=2\n\n\
             [Install]\n\
             WantedBy=default.target\n",
            exec.join(" ")
        )
    }

    fn load_commands(&self) -> Vec<Command> {
        vec![
            Self::systemctl(&["daemon-reload"]),
            Self::systemctl(&["enable", UNIT]),
            Self::systemctl(&["restart", UNIT]),
        ]
    }

    fn unload_commands(&self) -> Vec<Command> {
        vec![Self::systemctl(&["disable", "--now", UNIT])]
    }

    fn query(&self) -> (bool, Option<u32>) {
        let Some(out) = query_output(Self::systemctl(&["show", "--property=ActiveState,MainPID", UNIT])) else {
            return (false, None);
        };
        parse_show(&out)
    }

    fn logs(&self) -> String {
        format!("journalctl --user -u {UNIT}")
    }
}

/// (running, pid) from `systemctl show --property=ActiveState,MainPID` output.
pub fn parse_show(out: &str) -> (bool, Option<u32>) {
    let value = |key: &str| out.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='));
    let pid = value("MainPID").and_then(|p| p.trim().parse().ok()).filter(|&p| p != 0);
    (value("ActiveState").map(str::trim) == Some("active"), pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str) -> Spec {
        Spec {
            program: program.into(),
            args: vec!["daemon".into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("LIMA_HOME".into(), "/home/me/100% \"lima\" $x".into()),
            ],
        }
    }

    #[test]
    fn words_are_quoted_for_systemd() {
        assert_eq!(quote("/a b/ferry"), "\"/a b/ferry\"");
        assert_eq!(quote("50%"), "\"50%%\"");
        assert_eq!(quote("a\"b\\c$d"), "\"a\\\"b\\\\c$$d\"");
    }

    #[test]
    fn the_unit_says_what_systemd_needs() {
        let s = Systemd { config_dir: "/home/me/.config".into() };
        assert_eq!(s.definition_path(), PathBuf::from("/home/me/.config/systemd/user/ferry.service"));
        let text = s.render(&spec("/opt/ferry/bin/ferry"));
        assert!(text.contains("ExecStart=\"/opt/ferry/bin/ferry\" \"daemon\"\n"), "{text}");
        assert!(text.contains("Environment=\"LIMA_HOME=/home/me/100%% \\\"lima\\\" $$x\"\n"), "{text}");
        assert!(text.contains("Restart=always") && text.contains("WantedBy=default.target"), "{text}");
    }

    #[test]
    fn systemd_analyze_verify_accepts_the_unit() {
        let dir = tempfile::tempdir().unwrap();
        // verify checks that ExecStart's program exists and is executable.
        let program = dir.path().join("ferry with space");
        std::fs::copy("/bin/true", &program).unwrap();
        let s = Systemd { config_dir: dir.path().into() };
        let unit = dir.path().join(UNIT);
        std::fs::write(&unit, s.render(&spec(program.to_str().unwrap()))).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--user"])
            .arg(&unit)
            .env("XDG_RUNTIME_DIR", dir.path())
            .output()
            .expect("systemd-analyze (scripts/install-test-deps.sh installs systemd)");
        let err = String::from_utf8_lossy(&out.stderr);
        // Only the unit's own findings count; the host's other units are not ours.
        let ours: Vec<&str> = err.lines().filter(|l| l.contains(UNIT)).collect();
        assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {}\n{err}", out.status);
    }

    #[test]
    fn systemctl_show_gives_state_and_pid() {
        assert_eq!(parse_show("ActiveState=active\nMainPID=321\n"), (true, Some(321)));
        assert_eq!(parse_show("MainPID=0\nActiveState=inactive\n"), (false, None));
    }
}
