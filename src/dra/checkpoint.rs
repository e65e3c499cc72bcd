//! The claims this driver prepared, kept in `<dra-plugin-dir>/<driver>/
//! checkpoint.json` so that NodeUnprepareResources works after a restart
//! (also for a claim already deleted from the API: unprepare needs nothing
//! but this file) and a Prepare asked again answers the same.
//!
//! Written atomically (temp file, rename) before any answer that depends
//! on it is sent. A file that cannot be read as a checkpoint is set
//! aside (`checkpoint.json.corrupt-<unix time>`), logged, and the driver
//! starts with none: a claim it prepared before is then prepared again
//! from the API when the kubelet asks, and unprepared without a word.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file's name in the driver's dir.
pub const FILE: &str = "checkpoint.json";
/// The format's version; another is not read (set aside like a corrupt
/// file).
const VERSION: u32 = 1;

/// One device of a prepared claim, as answered to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    /// The claim's requests it serves.
    pub request_names: Vec<String>,
    /// Its pool (the node).
    pub pool: String,
    /// Its name in the pool.
    pub device: String,
    /// The CDI names a container gets.
    pub cdi_device_ids: Vec<String>,
}

/// A prepared claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedClaim {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pods it was reserved for when prepared (`status`'s "which pod").
    #[serde(default)]
    pub pods: Vec<String>,
    /// Its devices of this driver.
    pub devices: Vec<PreparedDevice>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    version: u32,
    driver: String,
    /// By claim UID.
    claims: BTreeMap<String, PreparedClaim>,
}

/// The prepared claims and the file they are kept in.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    driver: String,
    claims: BTreeMap<String, PreparedClaim>,
}

impl Checkpoint {
    /// Reads the checkpoint of `driver` in `dir`: none yet is an empty one;
    /// one that does not parse, or is another driver's or version's, is
    /// set aside with an error line and an empty one starts.
    pub fn load(dir: &Path, driver: &str) -> Checkpoint {
        let path = dir.join(FILE);
        let empty = |path: PathBuf| Checkpoint {
            path,
            driver: driver.to_string(),
            claims: BTreeMap::new(),
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return empty(path),
            Err(e) => {
                log::error!(
                    "cannot read {}: {e}; starting with no prepared claims",
                    path.display()
                );
                return empty(path);
            }
        };
        match serde_json::from_slice::<File>(&text) {
            Ok(f) if f.version == VERSION && f.driver == driver => Checkpoint {
                path,
                driver: driver.to_string(),
                claims: f.claims,
            },
            Ok(f) => {
                set_aside(
                    &path,
                    &format!("version {} of driver {:?}", f.version, f.driver),
                );
                empty(path)
            }
            Err(e) => {
                set_aside(&path, &e.to_string());
                empty(path)
            }
        }
    }

    /// The claim `uid`, if prepared.
    pub fn get(&self, uid: &str) -> Option<&PreparedClaim> {
        self.claims.get(uid)
    }

    /// Every prepared claim, by UID.
    pub fn claims(&self) -> &BTreeMap<String, PreparedClaim> {
        &self.claims
    }

    /// Records claim `uid` as prepared and writes the file.
    pub fn insert(&mut self, uid: &str, claim: PreparedClaim) -> Result<()> {
        let old = self.claims.insert(uid.to_string(), claim);
        self.save().inspect_err(|_| {
            // Not on disk: not prepared either.
            match old {
                Some(o) => self.claims.insert(uid.to_string(), o),
                None => self.claims.remove(uid),
            };
        })
    }

    /// Forgets claim `uid` and writes the file; whether it was there.
    pub fn remove(&mut self, uid: &str) -> Result<bool> {
        let Some(old) = self.claims.remove(uid) else {
            return Ok(false);
        };
        self.save().inspect_err(|_| {
            self.claims.insert(uid.to_string(), old);
        })?;
        Ok(true)
    }

    fn save(&self) -> Result<()> {
        let file = File {
            version: VERSION,
            driver: self.driver.clone(),
            claims: self.claims.clone(),
        };
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Invalid(format!("encode the checkpoint: {e}")))?;
        // Atomic, not synced: a process killed at any point leaves the old
        // file or the new one. A power loss may lose the last entries, which
        // costs nothing: a claim missing here is prepared again from the API
        // when asked, and unprepared (successfully) without a word; and a
        // sync of file and dir would double NodePrepareResources' latency.
        crate::atomic::write(&self.path, &text, false)
            .map_err(|e| Error::io("write the DRA checkpoint", &self.path, e))
    }
}

/// Moves a checkpoint that cannot be used out of the way, saying why.
fn set_aside(path: &Path, why: &str) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = path.with_file_name(format!("{FILE}.corrupt-{secs}"));
    match std::fs::rename(path, &aside) {
        Ok(()) => log::error!(
            "checkpoint {} is not usable ({why}); set aside as {}, starting with no prepared claims",
            path.display(),
            aside.display()
        ),
        Err(e) => log::error!(
            "checkpoint {} is not usable ({why}) and cannot be set aside: {e}; starting with no prepared claims",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str) -> PreparedClaim {
        PreparedClaim {
            namespace: "default".into(),
            name: name.into(),
            pods: vec!["pod1".into()],
            devices: vec![PreparedDevice {
                request_names: vec!["rng".into()],
                pool: "node1".into(),
                device: "crand0".into(),
                cdi_device_ids: vec!["example.com/crand=crand0".into()],
            }],
        }
    }

    #[test]
    fn test_claims_survive_a_restart_and_go_when_unprepared() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::load(dir.path(), "example.com");
        assert!(c.claims().is_empty());
        c.insert("uid-1", claim("a")).unwrap();
        c.insert("uid-2", claim("b")).unwrap();
        let again = Checkpoint::load(dir.path(), "example.com");
        assert_eq!(again.get("uid-1"), Some(&claim("a")));
        assert_eq!(again.claims().len(), 2);
        let mut again = again;
        assert!(again.remove("uid-1").unwrap());
        assert!(!again.remove("uid-1").unwrap(), "unknown: nothing to do");
        let last = Checkpoint::load(dir.path(), "example.com");
        assert_eq!(last.claims().keys().collect::<Vec<_>>(), ["uid-2"]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn test_a_corrupt_or_foreign_checkpoint_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        let c = Checkpoint::load(dir.path(), "example.com");
        assert!(c.claims().is_empty());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(
            names[0].starts_with("checkpoint.json.corrupt-"),
            "{names:?}"
        );
        // Another driver's file is not ours to use either.
        let mut other = Checkpoint::load(dir.path(), "other.com");
        other.insert("uid-1", claim("a")).unwrap();
        assert!(
            Checkpoint::load(dir.path(), "example.com")
                .claims()
                .is_empty()
        );
    }

    #[test]
    fn test_a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::load(&dir.path().join("missing-dir"), "example.com");
        assert!(c.insert("uid-1", claim("a")).is_err());
        assert!(c.get("uid-1").is_none());
    }
}
