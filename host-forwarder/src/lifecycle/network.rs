//! `enable --network`: Lima's `vzNAT` network added to a `vz` instance's
//! lima.yaml (effective at its next start), so that the guest gets an
//! address the host reaches and ferry takes the TCP route, the fastest
//! (Lima's own figures: ~59 Gbit/s by IP on vzNAT against ~4 over ssh).
//! Added as a marked block at the end of the file, only where there is no
//! `networks` key yet; [`remove`] takes it out byte for byte.

/// The first line of the block.
pub const BEGIN: &str = "# >>> ferry network: `limactl ferry disable` removes this block";
/// The last line of the block.
pub const END: &str = "# <<< ferry network";

/// The instance's `vmType` as lima.yaml says (top-level key), if it does.
pub fn vm_type(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("vmType:")?;
        let v = v.split(" #").next()?.trim().trim_matches(['"', '\'']);
        Some(v.to_string())
    })
}

/// The first line when the file did not end with a newline: [`remove`]
/// then takes the newline ferry added before the block too.
const BEGIN_AFTER_ADDED_NEWLINE: &str = " (ferry ended the line above)";

/// `text` with a vzNAT network; an error (saying what to do) if it has a
/// `networks` key ferry did not write.
pub fn add(text: &str) -> Result<String, String> {
    if text.contains(BEGIN) {
        return Ok(text.to_string());
    }
    if text.lines().any(|l| l.starts_with("networks:") || l.starts_with("\"networks\":")) {
        if text.contains("vzNAT: true") {
            return Ok(text.to_string());
        }
        return Err("it has a networks key already; add `- vzNAT: true` under it yourself".into());
    }
    let (sep, note) =
        if text.is_empty() || text.ends_with('\n') { ("", "") } else { ("\n", BEGIN_AFTER_ADDED_NEWLINE) };
    Ok(format!("{text}{sep}{BEGIN}{note}\nnetworks:\n- vzNAT: true\n{END}\n"))
}

/// `text` without the block [`add`] wrote.
pub fn remove(text: &str) -> String {
    let Some(start) = text.find(BEGIN) else { return text.to_string() };
    let Some(end_rel) = text[start..].find(END) else { return text.to_string() };
    let mut end = start + end_rel + END.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    let mut before = &text[..start];
    if text[start + BEGIN.len()..].starts_with(BEGIN_AFTER_ADDED_NEWLINE) {
        before = before.strip_suffix('\n').unwrap_or(before);
    }
    format!("{before}{}", &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_block_comes_and_goes_byte_for_byte() {
        for text in ["vmType: vz\n", "", "vmType: vz\nmounts: []\n# end\n", "vmType: vz"] {
            let edited = add(text).unwrap();
            assert!(edited.contains("networks:\n- vzNAT: true\n"), "{edited}");
            assert_eq!(add(&edited).unwrap(), edited, "idempotent");
            assert_eq!(remove(&edited), text);
        }
        assert!(add("networks:\n- lima: shared\n").unwrap_err().contains("vzNAT"));
        assert_eq!(add("networks:\n- vzNAT: true\n").unwrap(), "networks:\n- vzNAT: true\n");
        assert_eq!(vm_type("arch: x\nvmType: \"vz\" # fast\n").as_deref(), Some("vz"));
        assert_eq!(vm_type("vmType: qemu\n").as_deref(), Some("qemu"));
        assert_eq!(vm_type("images: []\n"), None);
    }

    #[test]
    fn with_the_forwarding_block_both_come_back_network_first() {
        use crate::lima::lima_yaml;
        for text in ["vmType: vz\nmounts: []\n", "vmType: vz\nportForwards:\n- guestPort: 80\n"] {
            let both = add(&lima_yaml::disable_lima_forwarding(text).unwrap()).unwrap();
            assert_eq!(lima_yaml::restore(&remove(&both)), text);
        }
    }
}
