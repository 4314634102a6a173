//! Property test of [`super::lima_yaml`]: over generated lima.yaml files
//! (every form ferry edits, comments, indentation, quoted keys), ferry's
//! edit, then a change by the user, then ferry's restore keeps the user's
//! change, parses (as YAML and with ferry's rule reader), and moves
//! nothing else.

use proptest::prelude::*;

use super::lima_yaml::{check, disable_lima_forwarding, restore, restore_checked, END};

/// How the file holds `portForwards`.
#[derive(Debug, Clone)]
enum Form {
    /// No key at all.
    None,
    /// `KEY:` followed by items at `indent`.
    Block { key: &'static str, comment: bool, indent: usize, items: Vec<Item> },
    /// `KEY: []`.
    EmptyFlow { key: &'static str, comment: bool },
}

#[derive(Debug, Clone)]
enum Item {
    Port(u16, u16),
    Socket(u8),
    Comment,
}

/// What the user does to the file while ferry runs.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// A rule right under the key line (before ferry's block).
    RuleUnderKey,
    /// A rule right after ferry's block.
    RuleAfterBlock,
    /// A rule at the end of the portForwards section.
    RuleAtSectionEnd,
    /// A top-level key appended to the file.
    KeyAtEnd,
    /// A comment at the top of the file.
    CommentAtTop,
}

const KEYS: [&str; 5] = ["portForwards:", "\"portForwards\":", "'portForwards':", "portForwards :", "portForwards  :"];
const OTHERS: [&str; 6] = [
    "vmType: vz\n",
    "# my instance\n",
    "cpus: 4\n",
    "mounts:\n- location: \"~\"\n  writable: true\n",
    "\n",
    "ssh:\n  localPort: 60022 # fixed\n",
];

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (1u16..60000, 1u16..60000).prop_map(|(g, h)| Item::Port(g, h)),
        (0u8..3).prop_map(Item::Socket),
        Just(Item::Comment),
    ]
}

fn form() -> impl Strategy<Value = Form> {
    let key = proptest::sample::select(KEYS.to_vec());
    prop_oneof![
        Just(Form::None),
        (
            key.clone(),
            any::<bool>(),
            proptest::sample::select(vec![0usize, 2, 4]),
            proptest::collection::vec(item(), 0..4)
        )
            .prop_map(|(key, comment, indent, items)| Form::Block { key, comment, indent, items }),
        (key, any::<bool>()).prop_map(|(key, comment)| Form::EmptyFlow { key, comment }),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    proptest::sample::select(vec![
        Change::RuleUnderKey,
        Change::RuleAfterBlock,
        Change::RuleAtSectionEnd,
        Change::KeyAtEnd,
        Change::CommentAtTop,
    ])
}

fn render_section(form: &Form) -> String {
    match form {
        Form::None => String::new(),
        Form::Block { key, comment, indent, items } => {
            let pad = " ".repeat(*indent);
            let mut s = format!("{key}{}\n", if *comment { " # mine" } else { "" });
            for it in items {
                match it {
                    Item::Port(g, h) => s.push_str(&format!("{pad}- guestPort: {g}\n{pad}  hostPort: {h}\n")),
                    Item::Socket(n) => s.push_str(&format!(
                        "{pad}- guestSocket: /run/s{n}.sock # sock\n{pad}  hostSocket: s{n}.sock\n"
                    )),
                    Item::Comment => s.push_str(&format!("{pad}# a note\n")),
                }
            }
            s
        }
        Form::EmptyFlow { key, comment } => format!("{key} []{}\n", if *comment { " # none yet" } else { "" }),
    }
}

/// The item indent of `form`'s section (the block's, for a user's rule).
fn item_indent(form: &Form) -> usize {
    match form {
        Form::Block { indent, items, .. } if items.iter().any(|i| !matches!(i, Item::Comment)) => *indent,
        _ => 0,
    }
}

fn lines(text: &str) -> Vec<String> {
    text.split_inclusive('\n').map(String::from).collect()
}

/// `lines` with `new` inserted at `at` (a newline first ends the line before it if needed).
fn insert(mut lines: Vec<String>, at: usize, new: &str) -> String {
    if at > 0 && !lines[at - 1].ends_with('\n') {
        lines[at - 1].push('\n');
    }
    lines.insert(at, new.to_string());
    lines.concat()
}

/// The index of the portForwards key line in `lines` (a line starting with one of KEYS).
fn key_line(lines: &[String]) -> Option<usize> {
    lines.iter().position(|l| KEYS.iter().any(|k| l.starts_with(k)))
}

/// The end of the section that starts at `key` (the next top-level key).
fn section_end(lines: &[String], key: usize) -> usize {
    lines[key + 1..].iter().position(|l| !l.starts_with(['-', '#', ' ', '\n'])).map_or(lines.len(), |i| key + 1 + i)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn edit_user_change_restore_keeps_the_change_and_parses(
        others in proptest::sample::subsequence(OTHERS.to_vec(), 0..=OTHERS.len()).prop_shuffle(),
        split in any::<proptest::sample::Index>(),
        form in form(),
        final_newline in any::<bool>(),
        change in change(),
        guest_port in 1u16..60000,
    ) {
        // The other top-level keys, each once, some before the section and some after.
        let (before, after) = others.split_at(split.index(others.len() + 1));
        let mut original = format!("{}{}{}", before.concat(), render_section(&form), after.concat());
        if !final_newline && original.ends_with('\n') {
            original.pop();
        }
        // Only files that parse to begin with (a trailing comment without a newline, say, always does).
        prop_assume!(check(&original).is_ok());
        let edited = disable_lima_forwarding(&original).expect("every generated form is one ferry edits");
        prop_assert!(check(&edited).is_ok(), "the edit parses:\n{edited}");
        prop_assert_eq!(restore(&edited), original.clone(), "untouched, restored byte for byte");

        let pad = " ".repeat(item_indent(&form));
        let rule = format!("{pad}- guestPort: {guest_port}\n{pad}  hostPort: {guest_port}\n");
        let (e, o) = (lines(&edited), lines(&original));
        let ek = key_line(&e).expect("the edit has a key");
        // What the user's file is, and what it would be had ferry never run.
        let (changed, expected) = match change {
            Change::CommentAtTop => (format!("# user note\n{edited}"), format!("# user note\n{original}")),
            Change::KeyAtEnd => {
                let nl = |t: &str| if t.is_empty() || t.ends_with('\n') { "" } else { "\n" };
                (format!("{edited}{}memory: 4GiB\n", nl(&edited)), format!("{original}{}memory: 4GiB\n", nl(&original)))
            }
            Change::RuleUnderKey | Change::RuleAfterBlock | Change::RuleAtSectionEnd => {
                let at = match change {
                    Change::RuleUnderKey => ek + 1,
                    Change::RuleAfterBlock => e.iter().position(|l| l.trim() == END).unwrap() + 1,
                    _ => section_end(&e, ek),
                };
                let changed = insert(e.clone(), at, &rule);
                let expected = match (&form, key_line(&o)) {
                    (Form::None, _) | (_, None) => {
                        let nl = if original.is_empty() || original.ends_with('\n') { "" } else { "\n" };
                        format!("{original}{nl}portForwards:\n{rule}")
                    }
                    (Form::EmptyFlow { key, comment }, Some(ok)) => {
                        let mut o = o.clone();
                        let nl = if o[ok].ends_with('\n') { "\n" } else { "" };
                        o[ok] = format!("{key}{}{nl}", if *comment { " # none yet" } else { "" });
                        let at = if matches!(change, Change::RuleAtSectionEnd) { section_end(&o, ok) } else { ok + 1 };
                        insert(o, at, &rule)
                    }
                    (Form::Block { .. }, Some(ok)) => {
                        let at = if matches!(change, Change::RuleAtSectionEnd) { section_end(&o, ok) } else { ok + 1 };
                        insert(o.clone(), at, &rule)
                    }
                };
                (changed, expected)
            }
        };
        let back = restore_checked(&changed).map_err(|e| TestCaseError::fail(format!("{e}\n{changed}")))?;
        prop_assert_eq!(&back, &expected, "edited and changed:\n{}", changed);
        let rules = check(&back).map_err(|e| TestCaseError::fail(format!("{e}\n{back}")))?;
        if matches!(change, Change::RuleUnderKey | Change::RuleAfterBlock | Change::RuleAtSectionEnd) {
            prop_assert!(rules.iter().any(|r| r.guest_port == guest_port && r.host_port == guest_port));
        }
        // ferry's own reader takes it too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lima.yaml");
        std::fs::write(&path, &back).unwrap();
        prop_assert!(crate::config::load(Some(&path), None, &[]).is_ok(), "ferry's rule reader: {}", back);
    }
}
