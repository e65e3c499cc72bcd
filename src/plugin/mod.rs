//! Device logic: what each plugin's devices are, which host node backs each,
//! how healthy they are, and what an allocation hands to a container; and
//! the registry of plugin kinds ([`KINDS`]) that `run`, `cdi`, `status`,
//! the fuzz harnesses and the tests iterate.
//!
//! This layer knows nothing of gRPC, threads or the kubelet. A new plugin
//! is one file implementing [`Plugin`] with a [`Kind`], plus its line in
//! [`KINDS`]; [`allocate`] is shared by all of them.

pub mod crand;
pub mod dev;
pub mod kvm;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    device::{Device, NodeId, NodeKind},
    error::{Error, Result},
    sim::validate,
};

/// The most devices one plugin may announce. Each device costs about 25
/// bytes in a ListAndWatch message and the kubelet refuses messages over
/// 4 MiB; this limit keeps a message far below that.
pub const MAX_DEVICES: usize = 16_384;

/// A host device node as a container gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// The CDI device name inside the plugin's kind: `crand1`, `kvm`.
    pub cdi_name: String,
    /// The node's path in the container: `/dev/crand1`.
    pub container_path: String,
    /// The node's path on the host: `<dev-dir>/crand1`.
    pub host_path: PathBuf,
    /// Character or block device.
    pub kind: NodeKind,
    /// The device number of the node.
    pub id: NodeId,
}

/// Which devices a change of one dev-dir entry concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Affected {
    /// None of the plugin's.
    Nothing,
    /// These device IDs.
    Devices(Vec<String>),
    /// Possibly any, or the device set itself: probe them all.
    All,
}

/// One device plugin: a resource and its devices.
pub trait Plugin: Send + Sync + fmt::Debug {
    /// The name of its [`Kind`]: `crand`, `kvm`, `dev`.
    fn kind(&self) -> &'static str;
    /// The resource's name part, used for the socket, the CDI class and
    /// log lines: `crand`, or a `dev` resource's NAME.
    fn name(&self) -> &str;
    /// The extended resource name: `<domain>/<name>`.
    fn resource(&self) -> &str;
    /// Makes what the devices need on the host (crand makes its nodes).
    fn prepare(&self) -> Result<()>;
    /// Checks every device now, in a stable order. For a plugin whose
    /// device set can change (`dev`) this also takes in new devices.
    fn probe(&self) -> Vec<Device>;
    /// Which devices depend on the dev-dir entry `entry` (a path relative
    /// to the dev dir), so that a change to it re-probes only those. With
    /// 10,000 crand nodes a full probe is what made a health change slow.
    fn affected(&self, _entry: &Path) -> Affected {
        Affected::All
    }
    /// Checks device `id` alone; `None` for an ID the plugin lacks.
    fn probe_device(&self, id: &str) -> Option<Device> {
        self.probe().into_iter().find(|d| d.id == id)
    }
    /// The node behind a device ID, or `None` for an ID the plugin lacks.
    fn node(&self, id: &str) -> Option<DeviceNode>;
    /// Every distinct node the plugin's devices use (for the CDI spec).
    fn nodes(&self) -> Vec<DeviceNode>;
    /// Changes whenever [`Plugin::nodes`] does, so that the CDI spec is
    /// written again before the devices that need it are announced. A
    /// plugin with a fixed set keeps 0.
    fn nodes_version(&self) -> u64 {
        0
    }
    /// Drops the devices whose node is gone (at SIGHUP; a device that
    /// vanishes stays listed as Unhealthy until then, since a pod may hold
    /// it). Nothing to do for a fixed set.
    fn forget_missing(&self) {}
    /// Subdirectories of the dev dir (relative) whose entries matter, to
    /// be watched besides the dev dir itself, also once they appear.
    fn watch_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// What the plugin was built from, to tell at a config reload whether a
    /// resource of the same name is still the same: by default its
    /// resource.
    fn identity(&self) -> String {
        self.resource().to_string()
    }
    /// The socket file name in the device plugin dir.
    fn socket_name(&self) -> String {
        format!("{}.sock", self.name())
    }
}

/// What the plugin kinds are built from: the flags of `run` and `cdi`.
#[derive(Clone, Debug)]
pub struct Flags<'a> {
    /// `--plugin`: the kinds chosen by name (none: every one that can be).
    pub plugins: &'a [String],
    /// `--device NAME=PATTERN[:SHARE]`.
    pub devices: &'a [String],
    /// `--resource-domain`.
    pub domain: &'a str,
    /// `--dev-dir`.
    pub dev_dir: &'a Path,
    /// `--crand-count`.
    pub crand_count: usize,
    /// `--kvm-count`.
    pub kvm_count: usize,
}

/// A kind of plugin: its name, the flags it reads and how it is built.
#[derive(Debug)]
pub struct Kind {
    /// The name `--plugin` takes (for a kind it can choose).
    pub name: &'static str,
    /// The flags its plugins are built from.
    pub flags: &'static [&'static str],
    /// Chosen by `--plugin` (crand, kvm); otherwise its own flags say
    /// whether it runs (dev: one plugin per `--device`).
    pub by_plugin_flag: bool,
    /// Builds its plugins from the flags, checking them.
    pub build: fn(&Flags) -> Result<Plugins>,
}

/// Plugins as the rest of the program holds them.
pub type Plugins = Vec<Arc<dyn Plugin>>;

/// Every plugin kind of this binary.
pub const KINDS: &[Kind] = &[crand::KIND, kvm::KIND, dev::KIND];

/// `--plugin none`: none of the kinds `--plugin` chooses (only `--device`
/// resources).
pub const NO_PLUGIN: &str = "none";

/// The kinds `--plugin` chooses, checked; none asked means all of them.
pub fn chosen(asked: &[String]) -> Result<Vec<&'static str>> {
    let names: Vec<&'static str> = KINDS
        .iter()
        .filter(|k| k.by_plugin_flag)
        .map(|k| k.name)
        .collect();
    if asked.is_empty() {
        return Ok(names);
    }
    let mut chosen = Vec::new();
    for p in asked {
        if p == NO_PLUGIN {
            continue;
        }
        let name = names.iter().find(|n| **n == p).ok_or_else(|| {
            Error::Invalid(format!(
                "--plugin {p:?}: unknown plugin, use {} or {NO_PLUGIN}",
                names.join(", ")
            ))
        })?;
        if !chosen.contains(name) {
            chosen.push(*name);
        }
    }
    Ok(chosen)
}

/// Checks the flags and builds every plugin they ask for, in [`KINDS`]
/// order. Each resource name must be one the kubelet takes, and unique.
pub fn build(flags: &Flags) -> Result<Plugins> {
    // The domain is also the CDI vendor, which the CDI parser wants to
    // start with a letter: `0x.com` passes the kubelet's DNS rule, but
    // runtimes would drop our spec and fail every container asking for
    // its devices (found by fuzzing).
    let chosen = chosen(flags.plugins)?;
    let domain = flags.domain;
    if !domain.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(Error::Invalid(format!(
            "--resource-domain {domain:?}: must start with a letter, as CDI vendor names do"
        )));
    }
    validate::resource_name(&format!("{domain}/x"))
        .map_err(|e| Error::Invalid(format!("--resource-domain {domain:?}: {e}")))?;
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    for kind in KINDS {
        if kind.by_plugin_flag && !chosen.contains(&kind.name) {
            continue;
        }
        plugins.extend((kind.build)(flags)?);
    }
    let mut seen = HashSet::new();
    for p in &plugins {
        validate::resource_name(p.resource())
            .map_err(|e| Error::Invalid(format!("--resource-domain {domain:?}: {e}")))?;
        if !seen.insert(p.resource().to_string()) {
            return Err(Error::Invalid(format!(
                "resource {} asked for twice",
                p.resource()
            )));
        }
    }
    Ok(plugins)
}

/// `n` as the value of a count flag: 1..=[`MAX_DEVICES`].
pub fn count(flag: &str, n: usize) -> Result<usize> {
    if n == 0 || n > MAX_DEVICES {
        return Err(Error::Invalid(format!(
            "{flag} {n}: must be between 1 and {MAX_DEVICES}"
        )));
    }
    Ok(n)
}

/// What `Allocate` puts in a container response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Fully qualified CDI device names only.
    Cdi,
    /// DeviceSpecs only, for runtimes without CDI.
    DeviceSpec,
    /// Both: the runtime uses whichever it understands.
    Both,
}

impl Injection {
    /// Whether CDI names are returned.
    pub fn cdi(self) -> bool {
        self != Injection::DeviceSpec
    }
    /// Whether DeviceSpecs are returned.
    pub fn specs(self) -> bool {
        self != Injection::Cdi
    }
}

impl std::str::FromStr for Injection {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cdi" => Ok(Injection::Cdi),
            "device-spec" => Ok(Injection::DeviceSpec),
            "both" => Ok(Injection::Both),
            _ => Err(format!(
                "unknown device injection {s:?}: use cdi, device-spec or both"
            )),
        }
    }
}

/// What one container gets for its devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Fully qualified CDI names: `<resource>=<cdi name>`.
    pub cdi_devices: Vec<String>,
    /// Nodes to hand over as DeviceSpecs, with permissions `rw`.
    pub nodes: Vec<DeviceNode>,
}

/// Why an allocation was refused. Each names the offending device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// The request named no device.
    Empty,
    /// An ID the plugin does not have.
    Unknown(String),
    /// An ID named twice in one request.
    Duplicate(String),
    /// A device that is unhealthy now, and why.
    Unhealthy(String, String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Empty => f.write_str("no device IDs in the container request"),
            AllocError::Unknown(id) => write!(f, "unknown device ID {}", Shown(id)),
            AllocError::Duplicate(id) => write!(f, "device ID {} requested twice", Shown(id)),
            AllocError::Unhealthy(id, why) => write!(f, "device {} is unhealthy: {why}", Shown(id)),
        }
    }
}

/// The longest ID an error shows in full; the kubelet's IDs have at most 63
/// characters.
const SHOWN_ID: usize = 64;

/// An ID as an error shows it: quoted, and cut after [`SHOWN_ID`]
/// characters. The error goes back as the gRPC status message, a header
/// that gRPC clients limit (grpc's C core to 16 KiB): echoing a 1 MiB ID in
/// full turned a clear INVALID_ARGUMENT into "received metadata size exceeds
/// hard limit", and logged a 1 MiB line.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN_ID) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}... ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Builds the allocation of `ids` for one container, checking each ID
/// against the plugin and its latest health in `devices`. Devices that share
/// a node (kvm slots) yield that node once.
pub fn allocate(
    plugin: &dyn Plugin,
    devices: &[Device],
    ids: &[String],
    injection: Injection,
) -> std::result::Result<Allocation, AllocError> {
    if ids.is_empty() {
        return Err(AllocError::Empty);
    }
    // Runs on grpc's one poll thread, which every client and stream waits
    // on, so it must stay linear: a request naming all 16384 devices (or
    // 100,000 IDs) held it 4 s (debug build) when each ID scanned the device
    // list and the nodes so far. A few IDs scan; more use an index made once.
    let index: HashMap<&str, &Device> = if ids.len() > 8 {
        devices.iter().map(|d| (d.id.as_str(), d)).collect()
    } else {
        HashMap::new()
    };
    let device = |id: &str| {
        if index.is_empty() {
            devices.iter().find(|d| d.id == id)
        } else {
            index.get(id).copied()
        }
    };
    let mut seen = HashSet::with_capacity(ids.len());
    let mut nodes_seen = HashSet::new();
    let mut alloc = Allocation::default();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(AllocError::Duplicate(id.clone()));
        }
        let node = plugin
            .node(id)
            .ok_or_else(|| AllocError::Unknown(id.clone()))?;
        if let Some(d) = device(id)
            && let Some(why) = d.health.reason()
        {
            return Err(AllocError::Unhealthy(id.clone(), why.to_string()));
        }
        // A CDI name is unique in the plugin's kind: one per node.
        if !nodes_seen.insert(node.cdi_name.clone()) {
            continue;
        }
        if injection.cdi() {
            alloc
                .cdi_devices
                .push(format!("{}={}", plugin.resource(), node.cdi_name));
        }
        alloc.nodes.push(node);
    }
    if !injection.specs() {
        alloc.nodes.clear();
    }
    Ok(alloc)
}

/// Parses `<prefix><n>` with `n < count`, without leading zeros: the IDs
/// `crand0`.. and `kvm0`.. that plugins hand out.
pub fn parse_index(id: &str, prefix: &str, count: usize) -> Option<usize> {
    let digits = id.strip_prefix(prefix)?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n < count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_index_accepts_only_canonical_ids() {
        assert_eq!(parse_index("crand0", "crand", 3), Some(0));
        assert_eq!(parse_index("crand2", "crand", 3), Some(2));
        for bad in [
            "crand3", "crand", "crand01", "crand-1", "crand+1", "kvm0", "crand1x",
        ] {
            assert_eq!(parse_index(bad, "crand", 3), None, "{bad}");
        }
    }

    #[test]
    fn test_alloc_errors_cut_long_ids() {
        let id = "é".repeat(100);
        let msg = AllocError::Unknown(id.clone()).to_string();
        assert_eq!(
            msg,
            format!("unknown device ID {:?}... (200 bytes)", "é".repeat(64))
        );
        let short = "x".repeat(64);
        assert_eq!(
            AllocError::Duplicate(short.clone()).to_string(),
            format!("device ID {short:?} requested twice")
        );
    }

    #[test]
    fn test_injection_parses_the_three_modes() {
        assert_eq!("cdi".parse::<Injection>().unwrap(), Injection::Cdi);
        assert_eq!(
            "device-spec".parse::<Injection>().unwrap(),
            Injection::DeviceSpec
        );
        assert_eq!("both".parse::<Injection>().unwrap(), Injection::Both);
        assert!(
            "all"
                .parse::<Injection>()
                .unwrap_err()
                .contains("cdi, device-spec or both")
        );
    }
}
