//! macOS: a launchd agent, `~/Library/LaunchAgents/<LABEL>.plist`, loaded
//! into the user's GUI domain with `launchctl bootstrap gui/UID`, started
//! at login (RunAtLoad) and restarted if it exits (KeepAlive). Its output
//! goes to `~/Library/Logs/ferry/daemon.log`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{query_output, Manager, Spec};

/// The agent's launchd label (and the plist's file name).
pub const LABEL: &str = "dev.ferry.daemon";

/// The launchd implementation.
pub struct Launchd {
    home: PathBuf,
}

impl Launchd {
    /// The agent of the user whose home is `home`.
    pub fn new(home: &Path) -> Self {
        Self { home: home.to_path_buf() }
    }

    fn log_dir(&self) -> PathBuf {
        self.home.join("Library/Logs/ferry")
    }

    fn log_file(&self) -> PathBuf {
        self.log_dir().join("daemon.log")
    }

    fn domain() -> String {
        // SAFETY: getuid(2) cannot fail.
        format!("gui/{}", unsafe { libc::getuid() })
    }

    fn launchctl(args: &[&str]) -> Command {
        let mut c = Command::new("launchctl");
        c.args(args);
        c
    }
}

/// `s` escaped for an XML text node.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Manager for Launchd {
    fn name(&self) -> &'static str {
        "launchd"
    }

    fn definition_path(&self) -> PathBuf {
        self.home.join("Library/LaunchAgents").join(format!("{LABEL}.plist"))
    }

    fn render(&self, spec: &Spec) -> String {
        let string = |s: &str| format!("<string>{}</string>", xml(s));
        let mut args = vec![string(&spec.program.display().to_string())];
        args.extend(spec.args.iter().map(|a| string(a)));
        let env: String =
            spec.env.iter().map(|(k, v)| format!("\t\t<key>{}</key>\n\t\t{}\n", xml(k), string(v))).collect();
        let log = string(&self.log_file().display().to_string());
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n<dict>\n\
             \t<key>Label</key>\n\t{label}\n\
             \t<key>ProgramArguments</key>\n\t<array>\n{args}\t</array>\n\
             \t<key>EnvironmentVariables</key>\n\t<dict>\n{env}\t</dict>\n\
             \t<key>RunAtLoad</key>\n\t<true/>\n\
             \t<key>KeepAlive</key>\n\t<true/>\n\
             \t<key>ThrottleInterval</key>\n\t<integer>5</integer>\n\
             \t<key>ProcessType</key>\n\t<string>Interactive</string>\n\
             \t<key>StandardOutPath</key>\n\t{log}\n\
             \t<key>StandardErrorPath</key>\n\t{log}\n\
             </dict>\n</plist>\n",
            label = string(LABEL),
            args = args.iter().map(|a| format!("\t\t{a}\n")).collect::<String>(),
        )
    }

    fn load_commands(&self) -> Vec<Command> {
        let path = self.definition_path().display().to_string();
        let target = format!("{}/{LABEL}", Self::domain());
        // bootout first: bootstrap of a loaded label fails, and a changed
        // plist is only read at bootstrap.
        let mut bootout = Command::new("sh");
        bootout.args(["-c", "\"$@\" 2>/dev/null || true", "sh", "launchctl", "bootout", &target]);
        vec![bootout, Self::launchctl(&["bootstrap", &Self::domain(), &path])]
    }

    fn unload_commands(&self) -> Vec<Command> {
        vec![Self::launchctl(&["bootout", &format!("{}/{LABEL}", Self::domain())])]
    }

    fn query(&self) -> (bool, Option<u32>) {
        let Some(out) = query_output(Self::launchctl(&["print", &format!("{}/{LABEL}", Self::domain())])) else {
            return (false, None);
        };
        parse_print(&out)
    }

    fn logs(&self) -> String {
        self.log_file().display().to_string()
    }

    fn prepare_dirs(&self) -> Vec<PathBuf> {
        vec![self.log_dir()]
    }
}

/// (running, pid) from `launchctl print` output (`state = running`, `pid = N`).
pub fn parse_print(out: &str) -> (bool, Option<u32>) {
    let value = |key: &str| {
        out.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(" = ")?;
            (k == key).then(|| v.trim().to_string())
        })
    };
    (value("state").as_deref() == Some("running"), value("pid").and_then(|p| p.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            program: "/opt/ferry & co/bin/ferry".into(),
            args: vec!["daemon".into()],
            env: vec![
                ("PATH".into(), "/opt/homebrew/bin:/usr/bin".into()),
                ("LIMA_HOME".into(), "/Users/me/<lima>".into()),
            ],
        }
    }

    #[test]
    fn the_plist_says_what_launchd_needs_escaped() {
        let l = Launchd::new(Path::new("/Users/me"));
        assert_eq!(l.definition_path(), PathBuf::from("/Users/me/Library/LaunchAgents/dev.ferry.daemon.plist"));
        let text = l.render(&spec());
        assert!(text.contains("<key>Label</key>\n\t<string>dev.ferry.daemon</string>"), "{text}");
        assert!(text.contains("<string>/opt/ferry &amp; co/bin/ferry</string>\n\t\t<string>daemon</string>"), "{text}");
        assert!(text.contains("<key>LIMA_HOME</key>\n\t\t<string>/Users/me/&lt;lima&gt;</string>"), "{text}");
        assert!(text.contains("<key>KeepAlive</key>\n\t<true/>") && text.contains("<key>RunAtLoad</key>\n\t<true/>"));
        assert!(text.contains("<string>/Users/me/Library/Logs/ferry/daemon.log</string>"), "{text}");
    }

    #[test]
    fn the_plist_parses_as_a_property_list() {
        let text = Launchd::new(Path::new("/Users/me")).render(&spec());
        let script = "import plistlib,sys,json; d=plistlib.loads(sys.stdin.buffer.read()); print(json.dumps(d))";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (scripts/install-test-deps.sh) parses the plist");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "plistlib refused the plist:\n{text}");
        let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(d["Label"], LABEL);
        assert_eq!(d["ProgramArguments"], serde_json::json!(["/opt/ferry & co/bin/ferry", "daemon"]));
        assert_eq!(d["EnvironmentVariables"]["LIMA_HOME"], "/Users/me/<lima>");
        assert_eq!((d["KeepAlive"].as_bool(), d["RunAtLoad"].as_bool()), (Some(true), Some(true)));
        assert_eq!(d["StandardErrorPath"], "/Users/me/Library/Logs/ferry/daemon.log");
    }

    #[test]
    fn launchctl_print_gives_state_and_pid() {
        let out = "gui/501/dev.ferry.daemon = {\n\tactive count = 1\n\tpath = /Users/me/x.plist\n\tstate = running\n\n\tprogram = /bin/ferry\n\tpid = 4242\n}\n";
        assert_eq!(parse_print(out), (true, Some(4242)));
        assert_eq!(parse_print("\tstate = not running\n"), (false, None));
    }
}
