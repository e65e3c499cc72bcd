//! Device logic: the [`Plugin`] trait every kind of plugin implements, and
//! the registry of kinds ([`KINDS`]) that `run`, `cdi`, `--help`, the fuzz
//! harnesses and the tests iterate.
//!
//! This layer knows nothing of gRPC, threads or the kubelet. A new kind is
//! one file declaring a [`Kind`] (its name, its own flags, how its plugins
//! are built) and a [`Plugin`] implementation, plus its name in the
//! `kinds!` line below; the flags it declares are parsed, checked and
//! shown in `--help` by the command line without a line of `cli.rs`.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    error::{Error, Result},
    inventory::device::Device,
    k8s_names,
};

/// Declares the kinds: each name is a module of this dir holding a
/// `KIND`, and [`KINDS`] lists them in this order.
macro_rules! kinds {
    ($($kind:ident),* $(,)?) => {
        $(pub mod $kind;)*
        /// Every plugin kind of this binary, in the order they are built.
        pub const KINDS: &[Kind] = &[$($kind::KIND),*];
    };
}

kinds!(crand, kvm, dev);

/// The most devices one plugin may announce. Each device costs about 25
/// bytes in a ListAndWatch message and the kubelet refuses messages over
/// 4 MiB; this limit keeps a message far below that.
pub const MAX_DEVICES: usize = 16_384;

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

/// One plugin: a resource and its devices.
pub trait Plugin: Send + Sync + fmt::Debug {
    /// The name of its [`Kind`]: `crand`, `kvm`, `dev`.
    fn kind(&self) -> &'static str;
    /// The resource's name part, used for sockets, the CDI class and log
    /// lines: `crand`, or a `dev` resource's NAME.
    fn name(&self) -> &str;
    /// The extended resource name: `<domain>/<name>`.
    fn resource(&self) -> &str;
    /// Makes what the devices need on the host (crand makes its nodes).
    fn prepare(&self) -> Result<()>;
    /// Checks every device now, in a stable order, each with its node. For
    /// a plugin whose device set can change (`dev`) this also takes in new
    /// devices.
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
}

/// Plugins as the rest of the program holds them.
pub type Plugins = Vec<Arc<dyn Plugin>>;

/// A flag a kind reads, declared by the kind: the command line parses,
/// checks and documents it from this.
#[derive(Debug)]
pub struct KindFlag {
    /// The flag: `--crand-count`.
    pub name: &'static str,
    /// What its value is called in `--help`: `N`.
    pub value: &'static str,
    /// The value when it is not given.
    pub default: Option<&'static str>,
    /// Whether it may be given more than once (each value kept).
    pub repeatable: bool,
    /// Whether its value must be a number (else refused as argh refuses
    /// one, exit 1).
    pub number: bool,
    /// One line for `--help`.
    pub help: &'static str,
}

/// A kind of plugin: its name, the flags it reads and how it is built.
#[derive(Debug)]
pub struct Kind {
    /// The name `--plugin` takes (for a kind it can choose).
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// The flags its plugins are built from.
    pub flags: &'static [KindFlag],
    /// Chosen by `--plugin` (crand, kvm); otherwise its own flags say
    /// whether it runs and how many plugins it makes (dev: one plugin per
    /// `--device`), and a `--config` reload may change them.
    pub by_plugin_flag: bool,
    /// Builds its plugins from the flags, checking them.
    pub build: fn(&Flags) -> Result<Plugins>,
}

/// The values of the kinds' flags as given: flag -> values in order.
pub type KindValues = BTreeMap<&'static str, Vec<String>>;

/// The kind flag called `name`.
pub fn kind_flag(name: &str) -> Option<&'static KindFlag> {
    KINDS.iter().flat_map(|k| k.flags).find(|f| f.name == name)
}

/// What the plugin kinds are built from: the flags of `run` and `cdi`.
#[derive(Clone, Debug)]
pub struct Flags<'a> {
    /// `--plugin`: the kinds chosen by name (none: every one that can be).
    pub plugins: &'a [String],
    /// `--resource-domain`.
    pub domain: &'a str,
    /// `--dev-dir`.
    pub dev_dir: &'a Path,
    /// The kinds' own flags.
    pub values: &'a KindValues,
}

impl<'a> Flags<'a> {
    /// The flags of `run` and `cdi` (and of a `--config` reload) that the
    /// kinds are built from.
    pub fn new(
        plugins: &'a [String],
        domain: &'a str,
        dev_dir: &'a Path,
        values: &'a KindValues,
    ) -> Self {
        Flags {
            plugins,
            domain,
            dev_dir,
            values,
        }
    }

    /// Every value given for `flag`.
    pub fn values(&self, flag: &str) -> &[String] {
        self.values.get(flag).map_or(&[], Vec::as_slice)
    }

    /// The value of the single-valued `flag`, or its default.
    pub fn value(&self, flag: &str) -> Option<&str> {
        self.values(flag)
            .last()
            .map(String::as_str)
            .or_else(|| kind_flag(flag).and_then(|f| f.default))
    }

    /// The value of the count flag `flag`: 1..=[`MAX_DEVICES`].
    pub fn count(&self, flag: &str) -> Result<usize> {
        let raw = self.value(flag).unwrap_or_default();
        match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_DEVICES).contains(&n) => Ok(n),
            _ => Err(Error::Invalid(format!(
                "{flag} {raw}: must be between 1 and {MAX_DEVICES}"
            ))),
        }
    }
}

/// `--plugin none`: none of the kinds `--plugin` chooses (only the other
/// kinds' resources, e.g. `--device`).
pub const NO_PLUGIN: &str = "none";

/// The names `--plugin` takes, from the registry: `crand, kvm`.
pub fn plugin_names() -> Vec<&'static str> {
    KINDS
        .iter()
        .filter(|k| k.by_plugin_flag)
        .map(|k| k.name)
        .collect()
}

/// The kinds `--plugin` chooses, checked; none asked means all of them.
pub fn chosen(asked: &[String]) -> Result<Vec<&'static str>> {
    let names = plugin_names();
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
    k8s_names::resource_name(&format!("{domain}/x"))
        .map_err(|e| Error::Invalid(format!("--resource-domain {domain:?}: {e}")))?;
    let mut plugins: Plugins = Vec::new();
    for kind in KINDS {
        if kind.by_plugin_flag && !chosen.contains(&kind.name) {
            continue;
        }
        plugins.extend((kind.build)(flags)?);
    }
    let mut seen = HashSet::new();
    for p in &plugins {
        k8s_names::resource_name(p.resource())
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
    fn test_every_kind_flag_is_declared_once_with_a_usable_default() {
        let mut names = HashSet::new();
        for kind in KINDS {
            for flag in kind.flags {
                assert!(names.insert(flag.name), "{} declared twice", flag.name);
                assert!(flag.name.starts_with("--"), "{}", flag.name);
                assert!(
                    !(flag.repeatable && flag.default.is_some()),
                    "{}",
                    flag.name
                );
            }
        }
        // Every kind builds from its defaults alone, on a dev dir that does
        // not exist (nothing is made or read there).
        let values = KindValues::new();
        let flags = Flags::new(&[], "example.com", Path::new("/nonexistent"), &values);
        let built = build(&flags).unwrap();
        assert_eq!(
            built.iter().map(|p| p.kind()).collect::<Vec<_>>(),
            plugin_names()
        );
        assert_eq!(flags.count("--crand-count").unwrap(), 3);
    }

    #[test]
    fn test_counts_are_checked() {
        let mut values = KindValues::new();
        values.insert("--kvm-count", vec!["0".into()]);
        let flags = Flags::new(&[], "example.com", Path::new("/nonexistent"), &values);
        let err = build(&flags).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("--kvm-count 0: must be between 1 and {MAX_DEVICES}")
        );
    }

    #[test]
    fn test_resource_domain_must_make_a_cdi_vendor() {
        let values = KindValues::new();
        let kvm = ["kvm".to_string()];
        let flags = |domain| Flags::new(&kvm, domain, Path::new("/nonexistent"), &values);
        let err = build(&flags("0x.com")).unwrap_err();
        assert!(
            err.to_string().contains("must start with a letter"),
            "{err}"
        );
        assert!(build(&flags("x0.com")).is_ok());
    }
}
