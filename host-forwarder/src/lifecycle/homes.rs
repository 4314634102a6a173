//! Where Lima instances live: the Lima homes ferry follows and the
//! instances in them, found from the directories alone (no `limactl list`).
//!
//! A Lima home is `$LIMA_HOME`, else `~/.lima`; Colima runs Lima with its
//! own home, `$COLIMA_HOME/_lima`, else `~/.colima/_lima`. An instance is a
//! directory in a home holding a `lima.yaml`, whose name does not start
//! with `_` (Lima's `_config`, `_disks`, `_networks`) or `.`.

use std::path::{Path, PathBuf};

/// A Lima home.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
    /// Whether it is Colima's (`<colima home>/_lima`): Colima rewrites its
    /// instances' lima.yaml at every `colima start`, so ferry's rules go to
    /// the home's `_config/override.yaml` instead.
    pub colima: bool,
}

impl Home {
    /// `_config/override.yaml`, read by Lima at every start of every instance in this home.
    pub fn override_yaml(&self) -> PathBuf {
        self.dir.join("_config/override.yaml")
    }

    /// The instances in this home: (name, directory), sorted by name.
    pub fn instances(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut found: Vec<(String, PathBuf)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let dir = e.path();
                (is_instance_name(&name) && dir.join("lima.yaml").exists()).then_some((name, dir))
            })
            .collect();
        found.sort();
        found
    }
}

/// Whether `name` can be an instance's directory name (Lima skips `_*` and dot files).
pub fn is_instance_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(['_', '.'])
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

/// The Lima homes ferry follows: Lima's own, then Colima's (once, if both are the same).
pub fn homes() -> Vec<Home> {
    let lima = std::env::var_os("LIMA_HOME").map(PathBuf::from).unwrap_or_else(|| home_dir().join(".lima"));
    let colima = std::env::var_os("COLIMA_HOME").map(PathBuf::from).unwrap_or_else(|| home_dir().join(".colima"));
    let colima = colima.join("_lima");
    let mut out = vec![Home { colima: is_colima_home(&lima), dir: lima.clone() }];
    if colima != lima {
        out.push(Home { dir: colima, colima: true });
    }
    out
}

/// Whether a Lima home is Colima's (its directory is named `_lima`).
pub fn is_colima_home(dir: &Path) -> bool {
    dir.file_name().is_some_and(|n| n == "_lima")
}

/// The home and directory of instance `name`: the first home that has it.
pub fn find(name: &str) -> anyhow::Result<(Home, PathBuf)> {
    if !is_instance_name(name) || name.contains('/') {
        anyhow::bail!("{name:?} is not an instance name");
    }
    let homes = homes();
    for home in &homes {
        let dir = home.dir.join(name);
        if dir.join("lima.yaml").exists() {
            return Ok((home.clone(), dir));
        }
    }
    anyhow::bail!(
        "no Lima or Colima instance named {name:?} in {} (see `limactl list`)",
        homes.iter().map(|h| h.dir.display().to_string()).collect::<Vec<_>>().join(" or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_directories_with_a_lima_yaml_and_not_limas_own() {
        let dir = tempfile::tempdir().unwrap();
        for (name, yaml) in [("dev", true), ("_config", true), (".hidden", true), ("empty", false), ("b", true)] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            if yaml {
                std::fs::write(dir.path().join(name).join("lima.yaml"), "").unwrap();
            }
        }
        let home = Home { dir: dir.path().into(), colima: false };
        let names: Vec<String> = home.instances().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "dev"]);
        assert!(is_colima_home(Path::new("/Users/me/.colima/_lima")));
        assert!(!is_colima_home(Path::new("/Users/me/.lima")));
    }
}
