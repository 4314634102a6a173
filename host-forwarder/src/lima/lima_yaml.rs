//! The changes ferry makes to an instance's lima.yaml, both undone byte
//! for byte by [`restore`] (`limactl ferry stop`):
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

/// The first line of ferry's block.
pub const BEGIN: &str = "# >>> ferry: Lima's own port forwarding is off; `limactl ferry stop` removes this block";
/// The last line of ferry's block.
pub const END: &str = "# <<< ferry";

fn block(indent: &str) -> String {
    let rule = |proto: &str| {
        format!(
            "{indent}- guestIP: 0.0.0.0\n{indent}  guestIPMustBeZero: false\n{indent}  guestPortRange: [1, 65535]\n{indent}  proto: {proto}\n{indent}  ignore: true\n"
        )
    };
    format!("{indent}{BEGIN}\n{}{}{indent}{END}\n", rule("tcp"), rule("udp"))
}

/// The prefix of each line of a socket rule ferry took over from Lima.
pub const MOVED: &str = "#ferry-moved# ";

/// The marker line that keeps a `portForwards: []` key line ferry turned
/// into a block key, so that `restore` gives it back byte for byte.
const WAS: &str = "# ferry: the key line was: ";

/// `text` with ferry's block at the head of `portForwards` (unchanged if it
/// is there). Only forms ferry fully understands are edited: no key, the
/// block form `portForwards:` (a comment on the key line is kept) and the
/// empty flow sequence `portForwards: []`. Anything else (a non-empty flow
/// sequence, an alias, a tag, two such keys) is refused with what to
/// change, so that ferry never writes a file Lima would reject.
pub fn disable_lima_forwarding(text: &str) -> Result<String, String> {
    let text = &move_socket_rules(text);
    if text.contains(BEGIN) {
        return Ok(text.to_string());
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let keys: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| l.starts_with("portForwards:")).map(|(i, _)| i).collect();
    let at = match keys[..] {
        [] => {
            let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
            return Ok(format!("{text}{sep}portForwards:\n{}", block("")));
        }
        [at] => at,
        _ => return Err("it has more than one top-level portForwards key; keep one".into()),
    };
    let line = lines[at];
    let rest = &line["portForwards:".len()..];
    let (value, comment) = split_comment(rest);
    let mut out: String = lines[..at].concat();
    match value {
        "" => {
            // Indent like the first existing item (YAML allows "- " at the key's column or deeper).
            let indent: String = lines[at + 1..]
                .iter()
                .find(|l| l.trim_start().starts_with('-'))
                .map(|l| l[..l.len() - l.trim_start().len()].to_string())
                .unwrap_or_default();
            out.push_str(line);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&block(&indent));
        }
        "[]" => {
            let original = line.strip_suffix('\n').unwrap_or(line);
            let comment = if comment.is_empty() { String::new() } else { format!(" {comment}") };
            out.push_str(&format!("portForwards:{comment}\n{WAS}{original}\n{}", block("")));
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
    let rest = rest.trim_end_matches(['\n', '\r']);
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
    let Some(key) = lines.iter().position(|l| l.starts_with("portForwards:")) else { return text.to_string() };
    // The section runs to the next top-level key (a line at column 0 that
    // is not an item, a comment or blank).
    let end = lines[key + 1..]
        .iter()
        .position(|l| !l.starts_with(['-', '#', ' ', '\t', '\n', '\r']))
        .map_or(lines.len(), |i| key + 1 + i);
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
    text.contains(BEGIN)
}

/// `text` as the user wrote it: without ferry's block (and without the
/// `portForwards:` key ferry added when there was none), its socket rules
/// given back.
pub fn restore(text: &str) -> String {
    let unmoved: String = text.split_inclusive('\n').map(|l| l.strip_prefix(MOVED).unwrap_or(l)).collect();
    remove_block(&unmoved)
}

fn remove_block(text: &str) -> String {
    if let Some(was) = text.find(WAS) {
        // `portForwards: []` became a block key: give the line back.
        let key_start = text[..was].rfind("portForwards:").unwrap_or(was);
        let original_end = text[was..].find('\n').map_or(text.len(), |i| was + i);
        let original = &text[was + WAS.len()..original_end];
        let Some(end_rel) = text[was..].find(END) else { return text.to_string() };
        let end = was + end_rel + END.len();
        let newline = if text[end..].starts_with('\n') { "\n" } else { "" };
        return format!("{}{original}{newline}{}", &text[..key_start], &text[end + newline.len()..]);
    }
    let Some(start) = text.find(BEGIN) else { return text.to_string() };
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let Some(end_rel) = text[start..].find(END) else { return text.to_string() };
    let end = start + end_rel + END.len();
    let end = if text[end..].starts_with('\n') { end + 1 } else { end };
    let before = &text[..line_start];
    let after = &text[end..];
    // A portForwards key ferry added at the very end, now empty: drop it too.
    if after.is_empty() {
        if let Some(stripped) = before.strip_suffix("portForwards:\n") {
            if stripped.is_empty() || stripped.ends_with('\n') {
                return stripped.to_string();
            }
        }
    }
    format!("{before}{after}")
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

    #[test]
    fn the_user_rules_keep_their_order() {
        let r = rules(&disable_lima_forwarding(WITH_RULES).unwrap());
        assert_eq!((r[2].guest_port, r[2].host_port), (8080, 18080));
    }
}
