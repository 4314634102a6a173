//! The one change ferry makes to an instance's lima.yaml: a marked block of
//! leading `portForwards` rules that ignore every TCP and UDP port, which
//! is how Lima's own port forwarding is switched off (it has no other
//! switch). Lima reads lima.yaml when the instance starts, so the block
//! takes effect at the next `limactl start`; until then Lima may hold some
//! ports and ferry reports those as taken and retries them. `limactl ferry
//! stop` removes the block again, leaving the file byte for byte as it was.
//! ferry itself skips these leading rules when it reads the file, so the
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

/// `text` with ferry's block at the head of `portForwards` (unchanged if it is there).
pub fn disable_lima_forwarding(text: &str) -> String {
    if text.contains(BEGIN) {
        return text.to_string();
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(at) = lines.iter().position(|l| l.trim_end() == "portForwards:") else {
        let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
        return format!("{text}{sep}portForwards:\n{}", block(""));
    };
    // Indent like the first existing item (YAML allows "- " at the key's column or deeper).
    let indent: String = lines[at + 1..]
        .iter()
        .find(|l| l.trim_start().starts_with('-'))
        .map(|l| l[..l.len() - l.trim_start().len()].to_string())
        .unwrap_or_default();
    let mut out: String = lines[..=at].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&block(&indent));
    out.push_str(&lines[at + 1..].concat());
    out
}

/// `text` without ferry's block (and without the `portForwards:` key ferry
/// added when there was none).
pub fn restore(text: &str) -> String {
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
            let edited = disable_lima_forwarding(text);
            let r = rules(&edited);
            assert!(disables_lima(&r[0]) && disables_lima(&r[1]), "{edited}");
            assert_eq!(r.len(), 2 + rules_or_empty(text).len(), "{edited}");
            assert_eq!(disable_lima_forwarding(&edited), edited, "idempotent");
            assert_eq!(restore(&edited), text, "restored byte for byte");
        }
    }

    fn rules_or_empty(text: &str) -> Vec<RuleSpec> {
        serde_saphyr::from_str::<F>(text).map(|f| f.port_forwards).unwrap_or_default()
    }

    #[test]
    fn the_user_rules_keep_their_order() {
        let r = rules(&disable_lima_forwarding(WITH_RULES));
        assert_eq!((r[2].guest_port, r[2].host_port), (8080, 18080));
    }
}
