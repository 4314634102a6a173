//! The docs stay honest: every relative link in README.md and docs/*.md
//! resolves (the file, and the heading an `#anchor` names), and every
//! `ferry ...`, `ferry-agent ...` and `limactl ferry ...` command the docs
//! show, with its subcommands and flags, exists in the `--help` of the built
//! binaries (run here, and parsed); and every command's help has a summary,
//! a description and an example.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// README.md and every docs/*.md.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ is missing")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// What the docs test reads out of one markdown file.
#[derive(Default)]
struct Doc {
    /// Link destinations, with the line they are on.
    links: Vec<(usize, String)>,
    /// The anchors its headings get (GitHub's rule, duplicates numbered).
    anchors: BTreeSet<String>,
    /// Shell lines of fenced code blocks (continuations joined), with their line.
    code_lines: Vec<(usize, String)>,
    /// Inline code spans, with their line.
    spans: Vec<(usize, String)>,
}

/// GitHub's heading anchor: lower case, spaces to hyphens, and everything
/// but letters, digits, `-` and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn parse(path: &Path) -> Doc {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut doc = Doc::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    let mut shell_block: Option<(usize, String)> = None;
    for (event, range) in Parser::new(&text).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let n = seen.entry(base.clone()).or_insert(0);
                doc.anchors.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
                *n += 1;
            }
            Event::Text(t) | Event::Code(t) if heading.is_some() => heading.as_mut().unwrap().push_str(&t),
            Event::Start(Tag::Link { dest_url, .. }) => doc.links.push((line_of(range.start), dest_url.to_string())),
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match &kind {
                    CodeBlockKind::Fenced(l) => l.to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                // Shell blocks; an unlabelled block holds commands or output,
                // and only lines that start with a command are checked.
                if matches!(lang.as_str(), "" | "sh" | "bash" | "shell" | "console") {
                    shell_block = Some((line_of(range.start) + 1, String::new()));
                }
            }
            Event::Text(t) if shell_block.is_some() => shell_block.as_mut().unwrap().1.push_str(&t),
            Event::End(TagEnd::CodeBlock) => {
                if let Some((first, body)) = shell_block.take() {
                    let mut joined = String::new();
                    let mut start = first;
                    for (i, line) in body.lines().enumerate() {
                        if joined.is_empty() {
                            start = first + i;
                        }
                        match line.strip_suffix('\\') {
                            Some(head) => joined.push_str(head),
                            None => {
                                joined.push_str(line);
                                doc.code_lines.push((start, std::mem::take(&mut joined)));
                            }
                        }
                    }
                }
            }
            Event::Code(t) => doc.spans.push((line_of(range.start), t.to_string())),
            _ => {}
        }
    }
    doc
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let files = doc_files();
    assert!(files.len() >= 9, "README.md and the eight docs/ files expected, found {files:?}");
    let parsed: BTreeMap<PathBuf, Doc> = files.iter().map(|f| (f.canonicalize().unwrap(), parse(f))).collect();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, doc) in &parsed {
        for (line, dest) in &doc.links {
            if dest.contains("://") || dest.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = dest.split_once('#').map_or((dest.as_str(), None), |(p, a)| (p, Some(a)));
            let target = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            let where_ = format!("{}:{line}: {dest}", file.strip_prefix(root()).unwrap_or(file).display());
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{where_}: no such file"));
                continue;
            };
            let Some(anchor) = anchor else { continue };
            let anchors = match parsed.get(&target) {
                Some(doc) => doc.anchors.clone(),
                None if target.extension().is_some_and(|x| x == "md") => parse(&target).anchors,
                None => {
                    broken.push(format!("{where_}: an anchor into a file that is not markdown"));
                    continue;
                }
            };
            if !anchors.contains(anchor) {
                broken.push(format!("{where_}: no heading makes #{anchor} (there are: {anchors:?})"));
            }
        }
    }
    assert!(checked > 30, "only {checked} relative links found: is the link parser working?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// One command's help: its subcommands and the flags it accepts.
#[derive(Debug, Default)]
struct Help {
    subcommands: BTreeSet<String>,
    flags: BTreeSet<String>,
}

/// Parses clap's `--help` output: the names under "Commands:", and the
/// `-x`/`--name` spellings at the start of each line under "Options:".
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':');
            continue;
        }
        let item = line.trim_start();
        if item.is_empty() || line.len() - item.len() > 6 {
            continue; // a description's continuation, indented deeper
        }
        let head = item.split("  ").next().unwrap();
        match section {
            "Commands" => {
                help.subcommands.insert(head.split_whitespace().next().unwrap().to_string());
            }
            "Options" if item.starts_with('-') => {
                for word in head.split([',', ' ']) {
                    let word = word.trim_end_matches("...");
                    let name = word.split(['=', '[', '<']).next().unwrap();
                    if name.starts_with('-') && name.len() > 1 {
                        help.flags.insert(name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    help
}

/// Every command path of one binary (`[]`, `["run"]`, `["lima", "start"]`, ...)
/// with its help, found by walking `--help` from the top.
fn help_tree(program: &Path) -> BTreeMap<Vec<String>, Help> {
    let mut tree = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let out = Command::new(program).args(&path).arg("--help").output().unwrap();
        assert!(out.status.success(), "{} {} --help failed", program.display(), path.join(" "));
        let help = parse_help(&String::from_utf8_lossy(&out.stdout));
        for sub in &help.subcommands {
            if sub != "help" {
                todo.push(path.iter().cloned().chain([sub.clone()]).collect());
            }
        }
        tree.insert(path, help);
    }
    tree
}

/// The three command-line front doors the docs show, by how a shell line starts.
struct Clis {
    /// `ferry`, `ferry-agent`, `limactl ferry`: each with its help tree.
    by_prefix: Vec<(&'static str, BTreeMap<Vec<String>, Help>)>,
    /// Holds the `limactl-ferry` link to the built ferry.
    plugin_dir: tempfile::TempDir,
}

impl Clis {
    fn load() -> Self {
        let bin = ferry_tests::bin_dir();
        // `limactl ferry` is the ferry binary called as limactl-ferry.
        let plugin_dir = tempfile::tempdir().unwrap();
        let plugin = plugin_dir.path().join("limactl-ferry");
        std::os::unix::fs::symlink(bin.join("ferry"), &plugin).unwrap();
        let by_prefix = vec![
            ("ferry", help_tree(&bin.join("ferry"))),
            ("ferry-agent", help_tree(&bin.join("ferry-agent"))),
            ("limactl ferry", help_tree(&plugin)),
        ];
        let clis = Clis { by_prefix, plugin_dir };
        // The parser finds what the binaries have: a check that it is not blind.
        let ferry = &clis.by_prefix[0].1;
        assert!(ferry[&vec![]].subcommands.contains("run"), "ferry --help parsed as {:?}", ferry[&vec![]]);
        assert!(ferry[&vec!["run".to_string()]].flags.contains("--agent"));
        assert!(ferry[&vec!["lima".to_string(), "start".to_string()]].flags.contains("--transport"));
        assert!(clis.by_prefix[2].1[&vec!["stop".to_string()]].flags.contains("--json"));
        assert!(clis.by_prefix[1].1[&vec![]].flags.contains("--listen"));
        clis
    }

    /// Checks one shell line; `None` when it is not a command of ours.
    fn check(&self, line: &str) -> Option<Result<(), String>> {
        self.check_as(line, true)
    }

    /// Checks one line. Not `strict` (inline code in prose, which also quotes
    /// messages such as `ferry already runs for ...`): a line is a command only
    /// when its first word after the program is a subcommand or an option.
    fn check_as(&self, line: &str, strict: bool) -> Option<Result<(), String>> {
        let words = shell_words::split(line).ok()?;
        // Skip environment assignments and sudo in front of the command.
        let mut words: &[String] = &words;
        while let Some(w) = words.first() {
            if w == "sudo" || (w.contains('=') && !w.starts_with('-')) {
                words = &words[1..];
            } else {
                break;
            }
        }
        // The command ends at a pipe, a redirection or a list operator.
        let end = words.iter().position(|w| matches!(w.as_str(), "|" | ">" | ">>" | "<" | "&&" | "||" | ";" | "&"));
        let words = &words[..end.unwrap_or(words.len())];
        let (prefix, tree, rest) = self.by_prefix.iter().find_map(|(prefix, tree)| {
            let n = prefix.split(' ').count();
            let head: Vec<&str> = words.iter().take(n).map(String::as_str).collect();
            (head.join(" ") == *prefix).then(|| (*prefix, tree, &words[n..]))
        })?;
        // Prose names such as `ferry (exec:ssh)` (a bench path) are not commands.
        if rest.first().is_some_and(|w| w.starts_with('(')) {
            return None;
        }
        let top = &tree[&Vec::new()];
        let first_is_ours = rest
            .first()
            .is_none_or(|w| w.starts_with('-') || w.split('|').all(|a| top.subcommands.contains(a)) || w == "...");
        if !strict && !first_is_ours {
            return None;
        }
        let mut path = Vec::new();
        let mut rest = rest.iter().filter(|w| *w != "...").peekable();
        while let Some(word) = rest.peek() {
            let help = &tree[&path];
            // `start|stop|status|logs`: each alternative must be a subcommand.
            let alternatives: Vec<&str> = word.split('|').collect();
            if alternatives.len() > 1 && alternatives.iter().all(|a| help.subcommands.contains(*a)) {
                rest.next();
                break;
            }
            if help.subcommands.contains(word.as_str()) && *word != "help" {
                path.push(word.to_string());
                rest.next();
            } else if !help.subcommands.is_empty() && !word.starts_with('-') {
                return Some(Err(format!("`{prefix} {}`: no subcommand {word:?}", path.join(" "))));
            } else {
                break;
            }
        }
        let help = &tree[&path];
        // After `--` come another command's words (`enable NAME -- --transport ssh`).
        for word in rest.take_while(|w| *w != "--") {
            let name = word.split('=').next().unwrap();
            let is_flag = name.starts_with("--") && name.len() > 2 || name.len() == 2 && name.starts_with('-');
            if is_flag && !help.flags.contains(name) {
                return Some(Err(format!("`{prefix} {}` has no option {name}", path.join(" "))));
            }
        }
        Some(Ok(()))
    }

    /// Whether any of the commands accepts `flag`.
    fn any_has_flag(&self, flag: &str) -> bool {
        self.by_prefix.iter().any(|(_, tree)| tree.values().any(|h| h.flags.contains(flag)))
    }
}

#[test]
fn every_command_and_flag_the_docs_show_exists_in_help() {
    let clis = Clis::load();
    let mut wrong = Vec::new();
    let mut commands = 0;
    for file in doc_files() {
        let doc = parse(&file);
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        // Commands in shell code blocks and in inline code.
        let lines = doc.code_lines.iter().map(|(l, t)| (l, t, true));
        for (line, text, strict) in lines.chain(doc.spans.iter().map(|(l, t)| (l, t, false))) {
            match clis.check_as(text, strict) {
                Some(Ok(())) => commands += 1,
                Some(Err(e)) => wrong.push(format!("{name}:{line}: {text}\n    {e}")),
                None => {}
            }
        }
        // A bare flag in inline code (`--restart-grace-ms`, `--agent ADDR`)
        // is one of ours: some command must accept it.
        for (line, text) in &doc.spans {
            let first = text.split([' ', '=']).next().unwrap();
            if first.starts_with("--") && first.len() > 2 && !clis.any_has_flag(first) {
                wrong.push(format!("{name}:{line}: `{text}`: no command has {first}"));
            }
        }
    }
    assert!(commands > 40, "only {commands} commands found in the docs: is the parser working?");
    assert!(wrong.is_empty(), "the docs show what the CLI does not have:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_catches_a_wrong_subcommand_or_flag() {
    let clis = Clis::load();
    assert_eq!(clis.check("ferry run --agent vsock:3:1024 --rules x.yaml"), Some(Ok(())));
    assert_eq!(clis.check("LIMA_HOME=~/.colima/_lima limactl ferry start colima --transport ssh"), Some(Ok(())));
    assert_eq!(clis.check("ferry completions zsh > ~/.zfunc/_ferry # note"), Some(Ok(())));
    assert!(matches!(clis.check("ferry run --no-such-flag"), Some(Err(_))));
    assert!(matches!(clis.check("ferry strat"), Some(Err(_))));
    assert!(matches!(clis.check("limactl ferry start dev --agent-port 1 --bogus"), Some(Err(_))));
    assert!(matches!(clis.check("ferry-agent --listne unix:/x"), Some(Err(_))));
    assert_eq!(clis.check("limactl start --name=dev ./lima/ferry.yaml"), None);
    assert_eq!(clis.check_as("ferry already runs for NAME", false), None);
    assert!(matches!(clis.check_as("ferry lima strat dev", false), Some(Err(_))));
    assert_eq!(clis.check("limactl ferry start|stop|status|logs"), Some(Ok(())));
    assert!(matches!(clis.check("limactl ferry start|stop|restart"), Some(Err(_))));
    assert!(!clis.any_has_flag("--not-a-flag"));
}

#[test]
fn heading_anchors_follow_githubs_rule() {
    assert_eq!(slug("What ferry changes in lima.yaml"), "what-ferry-changes-in-limayaml");
    assert_eq!(slug("Protocol (version 1)"), "protocol-version-1");
    assert_eq!(slug("DATA_END"), "data_end");
    assert_eq!(slug("Transport: the fastest the instance allows"), "transport-the-fastest-the-instance-allows");
}

#[test]
fn every_command_explains_itself_with_a_summary_a_description_and_an_example() {
    let clis = Clis::load();
    let bin = ferry_tests::bin_dir();
    let plugin = clis.plugin_dir.path().join("limactl-ferry");
    let mut missing = Vec::new();
    for (prefix, tree) in &clis.by_prefix {
        let program = match *prefix {
            "ferry" => bin.join("ferry"),
            "ferry-agent" => bin.join("ferry-agent"),
            _ => plugin.clone(),
        };
        for path in tree.keys() {
            let name = format!("{prefix} {}", path.join(" "));
            let help = |flag: &str| {
                let out = Command::new(&program).args(path).arg(flag).output().unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let (short, long) = (help("-h"), help("--help"));
            // Before "Usage:": the summary, then (long help only) the description.
            let intro = |text: &str| text.split("\nUsage:").next().unwrap_or("").trim().to_string();
            let paragraphs = intro(&long).split("\n\n").filter(|p| !p.trim().is_empty()).count();
            if intro(&short).lines().count() != 1 {
                missing.push(format!("{name}: -h has no one-line summary"));
            }
            if paragraphs < 2 {
                missing.push(format!("{name}: --help has no description beyond the summary"));
            }
            if !long.contains("\nExamples:\n") {
                missing.push(format!("{name}: --help shows no example"));
            }
        }
    }
    assert!(missing.is_empty(), "commands that do not explain themselves:\n{}", missing.join("\n"));
}
