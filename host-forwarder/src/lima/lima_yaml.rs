//! The changes ferry makes to an instance's lima.yaml, both undone by
//! [`restore`] (`limactl ferry stop`), byte for byte when the user changed
//! nothing, and keeping every change the user made otherwise:
//!
//! - a marked block of leading `portForwards` rules that ignore every TCP
//!   and UDP port, which is how Lima's own port forwarding is switched off
//!   (it has no other switch);
//! - the instance's socket rules (`guestSocket`, docker.sock and friends)
//!   commented out line by line with [`MOVED`], because Lima forwards those
//!   over its ssh ControlMaster whatever the other rules say, and those
//!   forwards die for good with the master (lima#5420). ferry forwards them
//!   instead, at the same host paths.
//!
//! Lima reads lima.yaml when the instance starts, so the changes take
//! effect at the next `limactl start`; until then Lima may hold some ports
//! and sockets, and ferry reports those as taken and retries them. ferry
//! itself reads the file as the user wrote it ([`restore`] first), so the
//! user's rules keep their meaning.
//!
//! The edit works on lines, so that comments and layout survive; both
//! directions check that the result still parses ([`check`]) and refuse
//! rather than write a file Lima would reject.

use std::borrow::Cow;

use crate::ports::rules::RuleSpec;

/// The first line of ferry's block.
pub const BEGIN: &str = "# >>> ferry: Lima's own port forwarding is off; `limactl ferry stop` removes this block";
/// The last line of ferry's block.
pub const END: &str = "# <<< ferry";

/// One of the block's two rules, at `indent`.
fn block_rule(indent: &str, proto: &str) -> String {
    format!(
        "{indent}- guestIP: 0.0.0.0\n{indent}  guestIPMustBeZero: false\n{indent}  guestPortRange: [1, 65535]\n{indent}  proto: {proto}\n{indent}  ignore: true\n"
    )
}

fn block(indent: &str) -> String {
    format!("{indent}{BEGIN}\n{}{}{indent}{END}\n", block_rule(indent, "tcp"), block_rule(indent, "udp"))
}

/// The prefix of each line of a socket rule ferry took over from Lima.
pub const MOVED: &str = "#ferry-moved# ";

/// The marker line that keeps a `portForwards: []` key line ferry turned
/// into a block key, so that `restore` gives it back byte for byte.
const WAS: &str = "# ferry: the key line was: ";

/// The key line ferry adds when the file has no `portForwards` key.
const ADDED_KEY: &str = "portForwards: # ferry added this key";
/// The same, when ferry also added the newline before it (the file did not
/// end with one).
const ADDED_KEY_AND_NEWLINE: &str = "portForwards: # ferry added this key and the newline before it";

/// A line without its line break.
fn bare(line: &str) -> &str {
    line.trim_end_matches(['\n', '\r'])
}

/// The key of a top-level mapping entry on `line` (column 0: plain,
/// `"double"` or `'single'` quoted, blanks allowed before the colon) and
/// what follows its colon; `None` for anything else (items, comments,
/// indented lines, document markers).
fn top_level_key(line: &str) -> Option<(Cow<'_, str>, &str)> {
    let line = bare(line);
    let (key, after): (Cow<str>, &str) = match line.chars().next()? {
        '"' => {
            let body = &line[1..];
            let mut escaped = false;
            let close = body.char_indices().find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })?;
            (Cow::Borrowed(&body[..close.0]), &body[close.0 + 1..])
        }
        '\'' => {
            let body = &line[1..];
            let mut i = 0;
            let close = loop {
                let at = i + body[i..].find('\'')?;
                if body[at + 1..].starts_with('\'') {
                    i = at + 2;
                } else {
                    break at;
                }
            };
            (Cow::Owned(body[..close].replace("''", "'")), &body[close + 1..])
        }
        '#' | '-' | ' ' | '\t' | '{' | '[' | '?' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`' => return None,
        _ => {
            let colon = line
                .char_indices()
                .find(|&(i, c)| c == ':' && line[i + 1..].chars().next().is_none_or(|n| n == ' ' || n == '\t'))?;
            (Cow::Borrowed(line[..colon.0].trim_end()), &line[colon.0..])
        }
    };
    let rest = after.trim_start_matches([' ', '\t']).strip_prefix(':')?;
    rest.chars().next().is_none_or(|c| c == ' ' || c == '\t').then_some((key, rest))
}

/// What follows the colon if `line` is the top-level `portForwards` key.
fn port_forwards_key(line: &str) -> Option<&str> {
    top_level_key(line).and_then(|(k, rest)| (k == "portForwards").then_some(rest))
}

/// The lines of the `portForwards` section that starts at `key`: up to the
/// next line at column 0 that is not an item, a comment or blank.
fn section_end(lines: &[&str], key: usize) -> usize {
    lines[key + 1..]
        .iter()
        .position(|l| !l.starts_with(['-', '#', ' ', '\t', '\n', '\r']) && !l.is_empty())
        .map_or(lines.len(), |i| key + 1 + i)
}

/// Whether any of `lines` carries YAML content (not blank, not a comment).
fn has_content<S: AsRef<str>>(lines: &[S]) -> bool {
    lines.iter().any(|l| {
        let t = l.as_ref().trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

/// The leading blanks of `line`.
fn indent_of(line: &str) -> &str {
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

/// `text` with ferry's block at the head of `portForwards` (unchanged if it
/// is there). Only forms ferry fully understands are edited: no key, the
/// block form `portForwards:` (a comment on the key line is kept; the key
/// may be quoted) and the empty flow sequence `portForwards: []`. Anything
/// else (a non-empty flow sequence, an alias, a tag, two such keys) is
/// refused with what to change, and so is an edit whose result would not
/// parse with the same rules behind ferry's, so that ferry never writes a
/// file Lima would reject.
pub fn disable_lima_forwarding(text: &str) -> Result<String, String> {
    let edited = edit(text)?;
    if edited != text {
        if let Ok(before) = check(text) {
            let after =
                check(&edited).map_err(|e| format!("ferry's edit would not parse ({e}); please report this"))?;
            let sockets = before.iter().filter(|r| r.guest_socket.is_some()).count();
            let ok = after.len() == before.len() + 2 - sockets
                && after.iter().take(2).all(crate::config::disables_lima)
                && after.iter().skip(2).all(|r| r.guest_socket.is_none());
            if !ok && !has_ferry_block(text) {
                return Err("ferry's edit would change the user's rules (an unusual layout of portForwards); \
                            write it as a block sequence (portForwards: followed by \"- \" items)"
                    .into());
            }
        }
    }
    Ok(edited)
}

fn edit(text: &str) -> Result<String, String> {
    let text = &move_socket_rules(text);
    if has_ferry_block(text) {
        return Ok(text.to_string());
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let keys: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| port_forwards_key(l).is_some()).map(|(i, _)| i).collect();
    let at = match keys[..] {
        [] => {
            let key = if text.is_empty() || text.ends_with('\n') { ADDED_KEY } else { ADDED_KEY_AND_NEWLINE };
            let sep = if key == ADDED_KEY { "" } else { "\n" };
            return Ok(format!("{text}{sep}{key}\n{}", block("")));
        }
        [at] => at,
        _ => return Err("it has more than one top-level portForwards key; keep one".into()),
    };
    let line = lines[at];
    let (value, comment) = split_comment(port_forwards_key(line).unwrap_or_default());
    let mut out: String = lines[..at].concat();
    match value {
        "" => {
            // Indent like the first existing item (YAML allows "- " at the key's column or deeper).
            let indent = lines[at + 1..section_end(&lines, at)]
                .iter()
                .find(|l| l.trim_start().starts_with('-'))
                .map(|l| indent_of(l).to_string())
                .unwrap_or_default();
            out.push_str(line);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&block(&indent));
            if !line.ends_with('\n') {
                // The key was the file's last line, without a newline: so is the block's end.
                out.pop();
            }
        }
        "[]" => {
            let comment = if comment.is_empty() { String::new() } else { format!(" {comment}") };
            // The key as the user wrote it (quoted, spaced), up to its colon.
            let key = &bare(line)[..bare(line).len() - port_forwards_key(line).unwrap_or_default().len()];
            out.push_str(&format!("{key}{comment}\n{WAS}{}\n{}", bare(line), block("")));
            if !line.ends_with('\n') {
                // The key was the file's last line, without a newline: so is the block's end.
                out.pop();
            }
        }
        v if v.starts_with('[') => {
            return Err("its portForwards is a flow sequence ([...]); write each rule as a block item \
                        (a line starting with \"- \" under portForwards:) and run `limactl ferry start` again"
                .into())
        }
        v => {
            return Err(format!(
                "its portForwards key has a value ferry does not edit ({v:?}); make it a block sequence \
                 (portForwards: followed by \"- \" items) or remove it, and run `limactl ferry start` again"
            ))
        }
    }
    out.push_str(&lines[at + 1..].concat());
    Ok(out)
}

/// Splits what follows a key into its value and a trailing `# comment`
/// (a `#` at the start or after a blank), both trimmed.
fn split_comment(rest: &str) -> (&str, &str) {
    let rest = bare(rest);
    let hash = rest.char_indices().find(|&(i, c)| c == '#' && (i == 0 || rest[..i].ends_with([' ', '\t'])));
    match hash {
        Some((i, _)) => (rest[..i].trim(), rest[i..].trim()),
        None => (rest.trim(), ""),
    }
}

/// `text` with every `portForwards` item that has a `guestSocket` key
/// commented out with [`MOVED`] (items of ferry's block and items already
/// moved are left alone).
fn move_socket_rules(text: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(key) = lines.iter().position(|l| port_forwards_key(l).is_some()) else { return text.to_string() };
    let end = section_end(&lines, key);
    let indent = |l: &str| l.len() - l.trim_start().len();
    let item_indent = lines[key + 1..end].iter().find(|l| l.trim_start().starts_with('-')).map(|l| indent(l));
    let Some(item_indent) = item_indent else { return text.to_string() };
    let is_item_start = |l: &str| indent(l) == item_indent && l.trim_start().starts_with('-');
    let mut out: Vec<String> = lines[..=key].iter().map(|l| l.to_string()).collect();
    let mut i = key + 1;
    while i < end {
        if !is_item_start(lines[i]) {
            out.push(lines[i].to_string());
            i += 1;
            continue;
        }
        // Comment lines up to the next item go with this one (and are
        // commented out with it, to come back with it).
        let item_end = (i + 1..end).find(|&j| is_item_start(lines[j])).unwrap_or(end);
        let item = &lines[i..item_end];
        let first = item[0].trim_start().trim_start_matches('-').trim_start();
        let socket = std::iter::once(first)
            .chain(item[1..].iter().map(|l| l.trim_start()))
            .any(|l| l.starts_with("guestSocket:"));
        out.extend(item.iter().map(|l| if socket { format!("{MOVED}{l}") } else { l.to_string() }));
        i = item_end;
    }
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    out.concat()
}

/// How many socket rules ferry has taken over from Lima in `text`.
pub fn moved_socket_rules(text: &str) -> usize {
    text.lines().filter(|l| l.strip_prefix(MOVED).is_some_and(|l| l.trim_start().starts_with('-'))).count()
}

/// Whether `text` has ferry's block (Lima's own port forwarding is off
/// once Lima has read it).
pub fn has_ferry_block(text: &str) -> bool {
    text.lines().any(|l| l.trim() == BEGIN)
}

/// The `portForwards` rules of `text`, read the way ferry reads its rules
/// file; an error if `text` is not a YAML mapping (a repeated key
/// included) or a rule does not parse.
pub fn check(text: &str) -> Result<Vec<RuleSpec>, String> {
    #[derive(serde::Deserialize)]
    struct Rules {
        #[serde(rename = "portForwards", default)]
        port_forwards: Option<Vec<RuleSpec>>,
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_saphyr::from_str::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(text)
        .map_err(|e| e.to_string())?;
    let rules: Rules = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(rules.port_forwards.unwrap_or_default())
}

/// `text` as the user wrote it: without ferry's block (and without the
/// `portForwards:` key ferry added when there was none), its socket rules
/// given back, and every other line as it is now, so that what the user
/// changed while ferry ran stays.
pub fn restore(text: &str) -> String {
    let unmoved: String = text.split_inclusive('\n').map(|l| l.strip_prefix(MOVED).unwrap_or(l)).collect();
    remove_block(&unmoved)
}

/// [`restore`], refused when its result would not parse while `text` does.
pub fn restore_checked(text: &str) -> Result<String, String> {
    let back = restore(text);
    if back != text && check(text).is_ok() {
        check(&back).map_err(|e| format!("removing ferry's block would leave a file that does not parse: {e}"))?;
    }
    Ok(back)
}

fn remove_block(text: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(begin) = lines.iter().position(|l| l.trim() == BEGIN) else { return text.to_string() };
    let indent = indent_of(lines[begin]);
    let key = lines[..begin].iter().rposition(|l| port_forwards_key(l).is_some());
    let limit = key.map_or(lines.len(), |k| section_end(&lines, k));
    let end = (begin + 1..limit).find(|&i| lines[i].trim() == END);
    let region_end = end.unwrap_or(limit);
    let ended_without_newline = end.is_some_and(|e| e + 1 == lines.len() && !lines[e].ends_with('\n'));
    // What goes: BEGIN, END and ferry's two rules, each matched by its exact
    // lines at the start of an item; a user's lines in between stay.
    let mut drop = vec![false; lines.len()];
    drop[begin] = true;
    if let Some(e) = end {
        drop[e] = true;
    }
    for proto in ["tcp", "udp"] {
        let rule = block_rule(indent, proto);
        let rule: Vec<&str> = rule.split_inclusive('\n').map(bare).collect();
        let found = (begin + 1..region_end.saturating_sub(rule.len() - 1))
            .find(|&i| (0..rule.len()).all(|j| !drop[i + j] && bare(lines[i + j]) == rule[j]));
        if let Some(at) = found {
            drop[at..at + rule.len()].iter_mut().for_each(|d| *d = true);
        }
    }
    let was = key.and_then(|k| (k + 1..limit).find(|&i| lines[i].starts_with(WAS)));
    if let Some(w) = was {
        drop[w] = true;
    }
    // The key line, as it must now read (None: as it is).
    let mut replaced: Option<(usize, String)> = None;
    if let Some(k) = key {
        let remaining: Vec<&str> = (k + 1..limit).filter(|&i| !drop[i]).map(|i| lines[i]).collect();
        let key_line = bare(lines[k]);
        let newline = &lines[k][key_line.len()..];
        let empty = !has_content(&remaining);
        if key_line == ADDED_KEY || key_line == ADDED_KEY_AND_NEWLINE {
            if !empty {
                replaced = Some((k, format!("portForwards:{newline}")));
            } else {
                drop[k] = true;
                let nothing_after = (k + 1..lines.len()).all(|i| drop[i] || lines[i].trim().is_empty());
                if key_line == ADDED_KEY_AND_NEWLINE && nothing_after {
                    // Take back the newline ferry added after what precedes.
                    if let Some(prev) = (0..k).rev().find(|&i| !drop[i]) {
                        replaced = Some((prev, bare(lines[prev]).to_string()));
                    }
                }
            }
        } else if let (Some(w), true) = (was, empty) {
            let original = bare(&lines[w][WAS.len()..]);
            let rest = port_forwards_key(key_line).unwrap_or_default();
            let (_, comment) = split_comment(rest);
            let sep = if comment.is_empty() { String::new() } else { format!(" {comment}") };
            // What ferry wrote for the original line (see `edit`).
            let (_, was_comment) = split_comment(port_forwards_key(original).unwrap_or_default());
            let was_rest = port_forwards_key(original).unwrap_or_default();
            let was_key = &original[..original.len() - was_rest.len()];
            let ferrys = if was_comment.is_empty() { was_key.into() } else { format!("{was_key} {was_comment}") };
            let back = if key_line == ferrys {
                original.to_string()
            } else {
                // The user changed the key line: keep their change, with the empty list.
                format!("{} []{sep}", &key_line[..key_line.len() - rest.len()])
            };
            replaced = Some((k, format!("{back}{newline}")));
        }
    }
    let mut out = String::with_capacity(text.len());
    for (i, l) in lines.iter().enumerate() {
        match &replaced {
            Some((r, line)) if *r == i => out.push_str(line),
            _ if drop[i] => {}
            _ => out.push_str(l),
        }
    }
    // The key line got its newline from ferry when it was the file's last
    // line (so the block's END has none): it takes it back if it is the last again.
    let last_kept = (0..lines.len()).rev().find(|&i| !drop[i]);
    if ended_without_newline && last_kept.is_some() && last_kept == key && out.ends_with('\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::disables_lima;
    use crate::ports::rules::RuleSpec;

    #[derive(serde::Deserialize)]
    struct F {
        #[serde(rename = "portForwards")]
        port_forwards: Vec<RuleSpec>,
    }

    fn rules(text: &str) -> Vec<RuleSpec> {
        serde_saphyr::from_str::<F>(text).unwrap().port_forwards
    }

    const WITH_RULES: &str =
        "vmType: qemu\nportForwards:\n  - guestPort: 8080\n    hostPort: 18080\nmounts:\n- location: \"~\"\n";
    const FLUSH: &str = "portForwards:\n- guestSocket: /run/docker.sock\n  hostSocket: docker.sock\n";
    const WITHOUT: &str = "vmType: vz\nmounts:\n- location: \"~\"\n";

    #[test]
    fn the_block_goes_first_and_parses_as_lima_disabling_rules() {
        for text in [WITH_RULES, FLUSH, WITHOUT, ""] {
            let edited = disable_lima_forwarding(text).unwrap();
            let r = rules(&edited);
            assert!(disables_lima(&r[0]) && disables_lima(&r[1]), "{edited}");
            let sockets = rules_or_empty(text).iter().filter(|r| r.guest_socket.is_some()).count();
            assert_eq!(r.len(), 2 + rules_or_empty(text).len() - sockets, "{edited}");
            assert_eq!(disable_lima_forwarding(&edited).unwrap(), edited, "idempotent");
            assert_eq!(restore(&edited), text, "restored byte for byte");
        }
    }

    fn rules_or_empty(text: &str) -> Vec<RuleSpec> {
        serde_saphyr::from_str::<F>(text).map(|f| f.port_forwards).unwrap_or_default()
    }

    #[test]
    fn an_empty_flow_sequence_and_a_commented_key_are_edited_and_restored() {
        for text in [
            "vmType: vz\nportForwards: []\nmounts: []\n",
            "portForwards: [] # none yet\n",
            "portForwards: []",
            "vmType: vz\nportForwards: # mine\n- guestPort: 80\n  hostPort: 8080\n",
        ] {
            let edited = disable_lima_forwarding(text).unwrap();
            let r = rules(&edited);
            assert!(disables_lima(&r[0]) && disables_lima(&r[1]), "{edited}");
            assert_eq!(r.len(), 2 + rules_or_empty(text).len(), "{edited}");
            assert_eq!(disable_lima_forwarding(&edited).unwrap(), edited, "idempotent");
            assert_eq!(restore(&edited), text, "restored byte for byte");
        }
    }

    #[test]
    fn forms_ferry_does_not_edit_are_refused_with_what_to_change() {
        for (text, says) in [
            ("portForwards: [{guestPort: 80, hostPort: 8080}]\n", "flow sequence"),
            ("portForwards: [\n  {guestPort: 80}\n]\n", "flow sequence"),
            ("portForwards: *rules\n", "does not edit"),
            ("portForwards: null\n", "does not edit"),
            ("portForwards:\n- guestPort: 1\nportForwards:\n- guestPort: 2\n", "more than one"),
        ] {
            let err = disable_lima_forwarding(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn socket_rules_move_out_of_limas_sight_and_come_back_byte_for_byte() {
        let text = "vmType: vz\nportForwards:\n- guestSocket: /run/docker.sock # docker\n  hostSocket: docker.sock\n\
                    - guestPort: 80\n  hostPort: 8080\n-   hostSocket: x.sock\n    guestSocket: /run/x.sock\n\
                    mounts: []\n";
        let edited = disable_lima_forwarding(text).unwrap();
        let r = rules(&edited);
        assert_eq!(r.len(), 3, "the block and the port rule only: {edited}");
        assert_eq!((r[2].guest_port, r[2].host_port), (80, 8080));
        assert!(r.iter().all(|r| r.guest_socket.is_none()), "{edited}");
        assert_eq!(moved_socket_rules(&edited), 2, "{edited}");
        assert_eq!(disable_lima_forwarding(&edited).unwrap(), edited, "idempotent");
        assert_eq!(restore(&edited), text, "restored byte for byte");
        let indented = "portForwards:\n  - guestSocket: /a\n    # a note\n    hostSocket: a\n  - guestPort: 1\n";
        let edited = disable_lima_forwarding(indented).unwrap();
        assert_eq!(moved_socket_rules(&edited), 1, "{edited}");
        assert_eq!(rules(&edited).len(), 3, "a comment inside an item moves with it: {edited}");
        assert_eq!(restore(&edited), indented);
    }

    /// `text` parses as Lima's file and as ferry's rules; its rules.
    fn parses(text: &str) -> Vec<RuleSpec> {
        check(text).unwrap_or_else(|e| panic!("does not parse ({e}):\n{text}"))
    }

    #[test]
    fn rules_the_user_added_to_an_empty_flow_sequence_survive_restore_and_parse() {
        let text = "vmType: vz\nportForwards: [] # none yet\nmounts: []\n";
        let edited = disable_lima_forwarding(text).unwrap();
        // Under the key, before ferry's lines.
        let under = edited.replacen("portForwards: # none yet\n", "portForwards: # none yet\n- guestPort: 80\n", 1);
        let back = restore(&under);
        assert_eq!(parses(&back).len(), 1, "{back}");
        assert_eq!(back, "vmType: vz\nportForwards: # none yet\n- guestPort: 80\nmounts: []\n");
        // After ferry's block.
        let after = edited.replacen(&format!("{END}\n"), &format!("{END}\n- guestPort: 81\n  hostPort: 8081\n"), 1);
        let back = restore(&after);
        let r = parses(&back);
        assert_eq!((r.len(), r[0].guest_port, r[0].host_port), (1, 81, 8081), "{back}");
        assert!(!back.contains("portForwards: []"), "no empty list followed by items: {back}");
        // Inside ferry's block, between its two rules.
        let inside =
            edited.replacen("  proto: tcp\n  ignore: true\n", "  proto: tcp\n  ignore: true\n- guestPort: 82\n", 1);
        let back = restore(&inside);
        assert_eq!(parses(&back)[0].guest_port, 82, "{back}");
        assert!(!back.contains("ferry"), "{back}");
        // The key line's comment changed, nothing added: the empty list comes back with the new comment.
        let recommented = edited.replacen("portForwards: # none yet\n", "portForwards: # still none\n", 1);
        assert_eq!(restore(&recommented), "vmType: vz\nportForwards: [] # still none\nmounts: []\n");
    }

    #[test]
    fn a_quoted_or_spaced_key_is_the_key_and_never_gets_a_second_one() {
        for text in [
            "\"portForwards\":\n- guestPort: 80\n  hostPort: 8080\n",
            "'portForwards':\n- guestPort: 80\n  hostPort: 8080\n",
            "portForwards :\n- guestPort: 80\n  hostPort: 8080\n",
            "vmType: vz\n\"portForwards\": []\n",
            "'portForwards' : [] # x\nvmType: vz\n",
            "portForwards  :   []\n",
        ] {
            let edited = disable_lima_forwarding(text).unwrap();
            let r = parses(&edited);
            assert!(disables_lima(&r[0]) && disables_lima(&r[1]), "{edited}");
            assert_eq!(r.len(), 2 + parses(text).len(), "{edited}");
            assert_eq!(edited.matches("ortForwards").count(), 1 + edited.matches(WAS).count(), "{edited}");
            assert_eq!(restore(&edited), text, "restored byte for byte");
        }
        assert!(disable_lima_forwarding("\"portForwards\": [{guestPort: 1}]\n").unwrap_err().contains("flow"));
        assert!(disable_lima_forwarding("portForwards:\n- guestPort: 1\n'portForwards': []\n")
            .unwrap_err()
            .contains("more than one"));
    }

    #[test]
    fn an_added_key_goes_with_its_block_unless_the_user_filled_it() {
        for text in ["vmType: vz\n", "vmType: vz", ""] {
            let edited = disable_lima_forwarding(text).unwrap();
            assert_eq!(restore(&edited), text);
            // A top-level key the user appended after ferry's block.
            let more = format!("{edited}memory: 4GiB\n");
            let back = restore(&more);
            assert!(back.ends_with("memory: 4GiB\n") && !back.contains("portForwards"), "{back:?}");
            parses(&back);
            // A rule the user appended under ferry's block.
            let rule = format!("{edited}- guestPort: 80\n");
            let back = restore(&rule);
            assert_eq!(parses(&back)[0].guest_port, 80, "{back:?}");
        }
        // A `portForwards:` with no value is the user's: it stays.
        let null = "vmType: vz\nportForwards:\n";
        assert_eq!(restore(&disable_lima_forwarding(null).unwrap()), null);
    }

    #[test]
    fn check_refuses_a_repeated_key_and_a_document_that_is_not_a_mapping() {
        assert!(check("a: 1\na: 2\n").is_err());
        assert!(check("- a\n").is_err());
        assert!(check("portForwards: []\nportForwards:\n- guestPort: 1\n").is_err());
        assert_eq!(check("portForwards:\n- guestPort: 1\n").unwrap().len(), 1);
    }

    #[test]
    fn the_user_rules_keep_their_order() {
        let r = rules(&disable_lima_forwarding(WITH_RULES).unwrap());
        assert_eq!((r[2].guest_port, r[2].host_port), (8080, 18080));
    }
}
