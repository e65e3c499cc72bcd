//! The kvm plugin: `kvm0`..`kvm{N-1}`, slots that let N pods share the one
//! `<dev-dir>/kvm` node.

use std::{fs::OpenOptions, path::Path};

use super::{DeviceNode, Plugin, parse_index};
use crate::{
    device::Device,
    devnode::{self, NodeId},
    error::Result,
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
    node: DeviceNode,
    count: usize,
}

impl Kvm {
    /// A kvm plugin of `count` slots on `<dev_dir>/kvm`.
    pub fn new(domain: &str, dev_dir: &Path, count: usize) -> Self {
        let id = devnode::host_node(Path::new(HOST_KVM)).unwrap_or(KVM_FALLBACK);
        Kvm {
            resource: format!("{domain}/kvm"),
            node: DeviceNode {
                cdi_name: "kvm".into(),
                container_path: HOST_KVM.into(),
                host_path: dev_dir.join("kvm"),
                id,
            },
            count,
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        devnode::check_char(&self.node.host_path, self.node.id)?;
        // A node with the right number can still be unusable (no module,
        // no permission): KVM is usable only if it opens read-write.
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.node.host_path)
            .map(drop)
            .map_err(|e| format!("cannot open read-write: {e}"))
    }
}

impl Plugin for Kvm {
    fn name(&self) -> &'static str {
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
            .map(|i| match &state {
                Ok(()) => Device::healthy(format!("kvm{i}")),
                Err(why) => Device::unhealthy(format!("kvm{i}"), why.clone()),
            })
            .collect()
    }

    fn devices_of_entry(&self, name: &str) -> Option<Vec<usize>> {
        // Every slot shares the one node; other entries are not ours (and
        // probing opens /dev/kvm, which is worth sparing).
        let ours = self.node.host_path.file_name().is_some_and(|n| n == name);
        if ours { None } else { Some(Vec::new()) }
    }

    fn node(&self, id: &str) -> Option<DeviceNode> {
        parse_index(id, "kvm", self.count).map(|_| self.node.clone())
    }

    fn nodes(&self) -> Vec<DeviceNode> {
        vec![self.node.clone()]
    }
}
