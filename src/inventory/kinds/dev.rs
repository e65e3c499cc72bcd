//! The dev plugin: any device node the node really has, by pattern. Each
//! `--device NAME=PATTERN[:SHARE]` is one resource `<domain>/NAME`; every
//! character or block node under the dev dir whose path matches PATTERN is
//! one device, shared by SHARE pods (IDs `<id>-0`..`<id>-{SHARE-1}`, or
//! `<id>` alone when SHARE is 1).
//!
//! The device set follows the node: a node that appears and matches joins
//! (the health thread probes on every inotify event of the dirs in
//! [`Plugin::watch_dirs`]); one that disappears stays listed as Unhealthy
//! (a pod may still hold it) until [`Plugin::forget_missing`] (SIGHUP) or a
//! restart. A symlink that PATTERN matches (udev's `serial/by-id/...`) is
//! followed: the device is the link, its health is its target's, and the
//! container gets the target node at the link's path.
//!
//! Device IDs come from the node's path under the dev dir (see [`node_id`])
//! and are the same after a restart.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{Affected, Flags, Kind, KindFlag, MAX_DEVICES, Plugin};
use crate::{
    error::{Error, Result},
    inventory::{
        device::{Device, DeviceNode, NodeId, NodeKind, Reason},
        devnode,
        glob::{check_glob, glob_match},
    },
    k8s_names::{self, hash8},
};

/// The dev kind: one plugin per `--device` flag.
pub const KIND: Kind = Kind {
    name: "dev",
    help: "the node's own devices by pattern, one resource <domain>/NAME per --device",
    flags: &[KindFlag {
        name: "--device",
        value: "NAME=PATTERN[:SHARE]",
        default: None,
        repeatable: true,
        number: false,
        help: "a resource <domain>/NAME of the character or block nodes under --dev-dir matching the glob PATTERN (e.g. ttyUSB*, serial/by-id/*), each shared by SHARE pods (default 1); repeatable",
    }],
    by_plugin_flag: false,
    build: |f: &Flags| {
        let mut names = HashSet::new();
        let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
        for flag in f.values("--device") {
            let spec = DeviceFlag::parse(flag)?;
            if !names.insert(spec.name.clone()) {
                return Err(Error::Invalid(format!(
                    "--device {flag:?}: NAME {:?} given twice",
                    spec.name
                )));
            }
            plugins.push(Arc::new(Dev::new(f.domain, f.dev_dir, spec)));
        }
        Ok(plugins)
    },
};

/// The longest device ID the kubelet documents.
const ID_MAX: usize = 63;

/// A parsed `--device NAME=PATTERN[:SHARE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFlag {
    /// The resource's name part.
    pub name: String,
    /// The dirs PATTERN goes through (no glob in them), relative.
    pub dir: PathBuf,
    /// PATTERN's last component: a shell glob.
    pub glob: String,
    /// How many pods may share each node.
    pub share: usize,
}

impl DeviceFlag {
    /// Parses and checks a `--device` value; the error names the flag.
    pub fn parse(flag: &str) -> Result<DeviceFlag> {
        let bad = |why: String| Error::Invalid(format!("--device {flag:?}: {why}"));
        let (name, rest) = flag
            .split_once('=')
            .ok_or_else(|| bad("want NAME=PATTERN[:SHARE]".into()))?;
        if name.is_empty() {
            return Err(bad("empty NAME".into()));
        }
        if super::KINDS
            .iter()
            .any(|k| k.by_plugin_flag && k.name == name)
        {
            return Err(bad(format!(
                "NAME {name:?} is the resource of the {name} plugin"
            )));
        }
        k8s_names::resource_name(&format!("example.com/{name}")).map_err(|_| {
            bad(format!(
                "NAME {name:?} is no resource name: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            ))
        })?;
        let (pattern, share) = match rest.rsplit_once(':') {
            Some((p, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let share = n.parse::<usize>().unwrap_or(0);
                if share == 0 || share > MAX_DEVICES {
                    return Err(bad(format!(
                        "SHARE {n}: must be between 1 and {MAX_DEVICES}"
                    )));
                }
                (p, share)
            }
            _ => (rest, 1),
        };
        let path = Path::new(pattern);
        if pattern.is_empty() || path.is_absolute() {
            return Err(bad(format!(
                "PATTERN {pattern:?} must be a path relative to --dev-dir"
            )));
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        if parts
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(bad(format!(
                "PATTERN {pattern:?}: empty, '.' or '..' components are not allowed"
            )));
        }
        let (glob, dirs) = parts.split_last().expect("not empty");
        if let Some(d) = dirs.iter().find(|d| d.contains(['*', '?', '['])) {
            return Err(bad(format!(
                "PATTERN {pattern:?}: a glob may only be in the last component, not in {d:?}"
            )));
        }
        check_glob(glob).map_err(|why| bad(format!("PATTERN {pattern:?}: {why}")))?;
        Ok(DeviceFlag {
            name: name.to_string(),
            dir: dirs.iter().collect(),
            glob: glob.to_string(),
            share,
        })
    }
}

/// The device ID of the node at `rel` (a path under the dev dir).
///
/// The rule, documented in the README: each `/` becomes `-`; letters,
/// digits, `-`, `_` and `.` are kept, any other character becomes `_`;
/// leading and trailing characters that are not letters or digits are
/// dropped. If anything but a `/` was changed or dropped, or the result is
/// longer than 63 characters, it is cut to 54 characters and `-` plus 8
/// hex digits of a hash of the whole path are added, so two paths that
/// read alike stay apart. `ttyUSB0` stays `ttyUSB0`, `input/event3`
/// becomes `input-event3`.
pub fn node_id(rel: &str) -> String {
    let mut id = String::with_capacity(rel.len());
    let mut lossy = false;
    for c in rel.chars() {
        match c {
            '/' => id.push('-'),
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => id.push(c),
            _ => {
                id.push('_');
                lossy = true;
            }
        }
    }
    let trimmed = id.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    lossy |= trimmed.len() != id.len();
    let mut id = trimmed.to_string();
    if lossy || id.len() > ID_MAX || id.is_empty() {
        id.truncate(ID_MAX - 9);
        let id = id.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        return if id.is_empty() {
            format!("dev-{}", hash8(rel))
        } else {
            format!("{id}-{}", hash8(rel))
        };
    }
    id
}

/// What a matched path leads to: the node's kind, number and real path.
type Found = (NodeKind, NodeId, PathBuf);

/// A node the plugin knows: found matching once, kept until forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    /// The matched path under the dev dir (a link stays the link).
    rel: PathBuf,
    /// What it was when last seen.
    found: Found,
    /// The node its devices hand out, made from `found`.
    node: Arc<DeviceNode>,
    /// Why it is unhealthy now.
    broken: Option<Reason>,
}

#[derive(Debug, Default)]
struct State {
    /// By node ID, in order.
    known: BTreeMap<String, Known>,
    /// Whether "too many devices" was said.
    capped: bool,
}

/// A `dev` resource.
#[derive(Debug)]
pub struct Dev {
    spec: DeviceFlag,
    resource: String,
    dev_dir: PathBuf,
    /// Where the nodes' NUMA nodes are read.
    sysfs: PathBuf,
    state: Mutex<State>,
}

impl Dev {
    /// The resource `<domain>/<NAME>` of the nodes under `dev_dir` that
    /// `spec` matches.
    pub fn new(domain: &str, dev_dir: &Path, spec: DeviceFlag) -> Self {
        Dev {
            resource: format!("{domain}/{}", spec.name),
            dev_dir: dev_dir.to_path_buf(),
            sysfs: devnode::sysfs_root(),
            spec,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dev state lock poisoned")
    }

    /// The matching entries now, by relative path, sorted.
    fn matching(&self) -> Vec<PathBuf> {
        let dir = self.dev_dir.join(&self.spec.dir);
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| glob_match(&self.spec.glob, &e.file_name().to_string_lossy()))
            .map(|e| self.spec.dir.join(e.file_name()))
            .collect();
        found.sort();
        found
    }

    /// The node behind `rel` (its link target when it is a link).
    fn look(&self, rel: &Path) -> std::result::Result<Found, Reason> {
        let path = self.dev_dir.join(rel);
        let (kind, id) = devnode::inspect(&path)?;
        let real = std::fs::canonicalize(&path).unwrap_or(path);
        Ok((kind, id, real))
    }

    fn device_ids(&self, node: &str) -> Vec<String> {
        if self.spec.share == 1 {
            vec![node.to_string()]
        } else {
            (0..self.spec.share)
                .map(|k| format!("{node}-{k}"))
                .collect()
        }
    }

    /// The node a container gets for node ID `id` at `rel`: the real node,
    /// at the matched path under `/dev`.
    fn device_node(&self, id: &str, rel: &Path, (kind, number, real): &Found) -> Arc<DeviceNode> {
        Arc::new(DeviceNode {
            cdi_name: id.to_string(),
            container_path: Path::new("/dev").join(rel).display().to_string(),
            host_path: real.clone(),
            kind: *kind,
            id: *number,
            by_id: self.by_id(rel, real),
            numa: devnode::numa_node(&self.sysfs, *kind, *number),
        })
    }

    /// The udev by-id link of the node at `rel` (real path `real`): `rel`
    /// itself when the pattern matched one, else a link in one of the dev
    /// dir's `*/by-id` dirs that leads to it; as the container sees it.
    fn by_id(&self, rel: &Path, real: &Path) -> Option<String> {
        let in_by_id = |p: &Path| p.parent().and_then(Path::file_name) == Some("by-id".as_ref());
        if in_by_id(rel) {
            return Some(Path::new("/dev").join(rel).display().to_string());
        }
        let dirs = std::fs::read_dir(&self.dev_dir).ok()?.flatten();
        let links = dirs
            .map(|d| d.path().join("by-id"))
            .filter(|d| d.is_dir())
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten());
        let mut found: Vec<PathBuf> = links
            .map(|l| l.path())
            .filter(|l| std::fs::canonicalize(l).is_ok_and(|t| t == real))
            .collect();
        found.sort();
        let link = found.into_iter().next()?;
        let rel = link.strip_prefix(&self.dev_dir).ok()?;
        Some(Path::new("/dev").join(rel).display().to_string())
    }

    /// Looks at every known node again: healthy while it is there, its
    /// node followed when it changed.
    fn recheck(&self, state: &mut State, present: &HashSet<&PathBuf>) {
        for (id, known) in state.known.iter_mut() {
            let now = if present.contains(&known.rel) {
                self.look(&known.rel)
            } else {
                Err(Reason::Missing)
            };
            match now {
                Ok(found) => {
                    if found != known.found {
                        log::info!(
                            "device node changed resource={} device={id} node={}",
                            self.resource,
                            found.2.display()
                        );
                        known.node = self.device_node(id, &known.rel, &found);
                        known.found = found;
                    }
                    known.broken = None;
                }
                Err(why) => known.broken = Some(why),
            }
        }
    }

    /// Takes in the device nodes among `found` not known yet; files that
    /// are not nodes are skipped.
    fn admit(&self, state: &mut State, found: &[PathBuf]) {
        let taken: HashSet<PathBuf> = state.known.values().map(|k| k.rel.clone()).collect();
        let mut devices_total = state.known.len() * self.spec.share;
        for rel in found.iter().filter(|r| !taken.contains(*r)) {
            let Ok(node) = self.look(rel) else { continue };
            if devices_total + self.spec.share > MAX_DEVICES {
                if !state.capped {
                    log::warn!(
                        "more than {MAX_DEVICES} devices match; the rest are left out resource={}",
                        self.resource
                    );
                    state.capped = true;
                }
                break;
            }
            let rel_str = rel.to_string_lossy();
            let mut id = node_id(&rel_str);
            if state.known.contains_key(&id) {
                // Two paths that read alike: the later one gets a hash.
                id = format!("{}-{}", &id[..id.len().min(ID_MAX - 9)], hash8(&rel_str));
            }
            log::info!(
                "device found resource={} device={id} path={} node={}",
                self.resource,
                self.dev_dir.join(rel).display(),
                node.2.display()
            );
            let shown = self.device_node(&id, rel, &node);
            state.known.insert(
                id,
                Known {
                    rel: rel.clone(),
                    found: node,
                    node: shown,
                    broken: None,
                },
            );
            devices_total += self.spec.share;
        }
    }
}

impl Plugin for Dev {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn resource(&self) -> &str {
        &self.resource
    }

    fn prepare(&self) -> Result<()> {
        // The nodes are the host's: never made here.
        Ok(())
    }

    fn probe(&self) -> Vec<Device> {
        let mut state = self.lock();
        let found = self.matching();
        let present: HashSet<&PathBuf> = found.iter().collect();
        self.recheck(&mut state, &present);
        self.admit(&mut state, &found);
        state
            .known
            .iter()
            .flat_map(|(id, k)| {
                let check = k.broken.map_or(Ok(()), Err);
                self.device_ids(id)
                    .into_iter()
                    .map(move |d| Device::new(d, k.node.clone(), check))
            })
            .collect()
    }

    fn affected(&self, entry: &Path) -> Affected {
        // Entries of the pattern's dirs, their way there, and the dev dir
        // itself (where link targets live) may change the set.
        let parent = entry.parent().unwrap_or(Path::new(""));
        if parent == self.spec.dir
            || parent.as_os_str().is_empty()
            || self.spec.dir.starts_with(entry)
        {
            Affected::All
        } else {
            Affected::Nothing
        }
    }

    fn forget_missing(&self) {
        let resource = &self.resource;
        self.lock().known.retain(|id, k| {
            let keep = k.broken.is_none();
            if !keep {
                log::info!("device dropped resource={resource} device={id}");
            }
            keep
        });
    }

    fn watch_dirs(&self) -> Vec<PathBuf> {
        self.spec.dir.ancestors().map(Path::to_path_buf).collect()
    }

    fn identity(&self) -> String {
        format!("{}={:?}", self.resource, self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_device_flags_are_checked_with_clear_messages() {
        let ok = DeviceFlag::parse("serial=serial/by-id/usb-*:4").unwrap();
        assert_eq!(
            ok,
            DeviceFlag {
                name: "serial".into(),
                dir: "serial/by-id".into(),
                glob: "usb-*".into(),
                share: 4
            }
        );
        assert_eq!(DeviceFlag::parse("fuse=fuse").unwrap().share, 1);
        for (flag, want) in [
            ("serial", "want NAME=PATTERN"),
            ("=ttyUSB*", "empty NAME"),
            ("crand=ttyUSB*", "resource of the crand plugin"),
            ("kvm=kvm", "resource of the kvm plugin"),
            ("a/b=ttyUSB*", "no resource name"),
            ("-x=ttyUSB*", "no resource name"),
            ("s=", "relative to --dev-dir"),
            ("s=/dev/ttyUSB0", "relative to --dev-dir"),
            ("s=../etc/x", "'..' components"),
            ("s=*/by-id/x", "only be in the last component"),
            ("s=video[0-9", "unclosed '['"),
            ("s=ttyUSB*:0", "SHARE 0"),
            ("s=ttyUSB*:16385", "SHARE 16385"),
        ] {
            let err = DeviceFlag::parse(flag).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--device {flag:?}: ")), "{err}");
            assert!(err.contains(want), "{flag}: {err}");
        }
    }

    #[test]
    fn test_ids_are_stable_valid_and_apart() {
        assert_eq!(node_id("ttyUSB0"), "ttyUSB0");
        assert_eq!(node_id("input/event3"), "input-event3");
        assert_eq!(node_id("net/tun"), "net-tun");
        let odd = node_id("serial/by-id/usb-FTDI_x:y");
        assert!(odd.starts_with("serial-by-id-usb-FTDI_x_y-"), "{odd}");
        assert_ne!(odd, node_id("serial/by-id/usb-FTDI_x_y"));
        let long = node_id(&format!("serial/by-id/{}", "a".repeat(80)));
        assert_eq!(long.len(), 63);
        assert_eq!(long, node_id(&format!("serial/by-id/{}", "a".repeat(80))));
        assert_ne!(long, node_id(&format!("serial/by-id/{}", "a".repeat(81))));
        for id in [odd, long, node_id(".x"), node_id("_")] {
            let b = id.as_bytes();
            assert!(b.len() <= 63 && b[0].is_ascii_alphanumeric());
            assert!(b[b.len() - 1].is_ascii_alphanumeric(), "{id}");
            assert!(
                k8s_names::resource_name(&format!("example.com/{id}")).is_ok(),
                "{id}"
            );
        }
    }
}
