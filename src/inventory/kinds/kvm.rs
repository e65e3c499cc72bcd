//! The kvm plugin: `kvm0`..`kvm{N-1}`, slots that let N pods share the one
//! `<dev-dir>/kvm` node.

use std::{fs::OpenOptions, path::Path, sync::Arc};

use super::{Affected, Flags, Kind, KindFlag, Plugin};
use crate::{
    error::Result,
    inventory::{
        device::{Device, DeviceNode, Reason},
        devnode::{self, NodeId, NodeKind},
    },
};

/// The kvm kind: one plugin of `--kvm-count` slots.
pub const KIND: Kind = Kind {
    name: "kvm",
    help: "kvm0.. : slots sharing the host's /dev/kvm (<dev-dir>/kvm)",
    flags: &[KindFlag {
        name: "--kvm-count",
        value: "N",
        default: Some("1"),
        repeatable: false,
        number: true,
        help: "number of pods that may share /dev/kvm",
    }],
    by_plugin_flag: true,
    build: |f: &Flags| {
        let n = f.count("--kvm-count")?;
        Ok(vec![
            Arc::new(Kvm::new(f.domain, f.dev_dir, n)) as Arc<dyn Plugin>
        ])
    },
};

/// The host's KVM node.
pub const HOST_KVM: &str = "/dev/kvm";

/// The number Linux gives `/dev/kvm` (misc major 10, KVM_MINOR 232); used
/// only when the host has no `/dev/kvm` to read it from.
const KVM_FALLBACK: NodeId = NodeId {
    major: 10,
    minor: 232,
};

/// The kvm plugin.
#[derive(Debug)]
pub struct Kvm {
    resource: String,
    node: Arc<DeviceNode>,
    count: usize,
}

impl Kvm {
    /// A kvm plugin of `count` slots on `<dev_dir>/kvm`.
    pub fn new(domain: &str, dev_dir: &Path, count: usize) -> Self {
        let id = devnode::host_node(Path::new(HOST_KVM)).unwrap_or(KVM_FALLBACK);
        Kvm {
            resource: format!("{domain}/kvm"),
            node: Arc::new(DeviceNode {
                cdi_name: "kvm".into(),
                container_path: HOST_KVM.into(),
                host_path: dev_dir.join("kvm"),
                kind: NodeKind::Char,
                id,
                by_id: None,
                // The CPUs' own virtualisation: on every NUMA node alike.
                numa: None,
            }),
            count,
        }
    }

    fn check(&self) -> std::result::Result<(), Reason> {
        devnode::check_char(&self.node.host_path, self.node.id)?;
        // A node with the right number can still be unusable (no module,
        // no permission): KVM is usable only if it opens read-write.
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.node.host_path)
            .map(drop)
            .map_err(|e| {
                Reason::OpenFailed(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            })
    }
}

impl Plugin for Kvm {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn name(&self) -> &str {
        "kvm"
    }

    fn resource(&self) -> &str {
        &self.resource
    }

    fn prepare(&self) -> Result<()> {
        // The kvm node belongs to the host's kernel module: never made here.
        Ok(())
    }

    fn probe(&self) -> Vec<Device> {
        let state = self.check();
        (0..self.count)
            .map(|i| Device::new(format!("kvm{i}"), self.node.clone(), state))
            .collect()
    }

    fn affected(&self, entry: &Path) -> Affected {
        // Every slot shares the one node; other entries are not ours (and
        // probing opens /dev/kvm, which is worth sparing).
        if self.node.host_path.file_name() == Some(entry.as_os_str()) {
            Affected::All
        } else {
            Affected::Nothing
        }
    }
}
