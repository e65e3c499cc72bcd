//! The crand plugin: `crand0`..`crand{N-1}`, character nodes in the dev dir
//! that clone the host's `/dev/random` (same major:minor).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{Affected, DeviceNode, Flags, Kind, Plugin, count, parse_index};
use crate::{
    device::Device,
    devnode::{self, NodeId, NodeKind},
    error::Result,
};

/// The host node every crand device clones.
pub const HOST_RANDOM: &str = "/dev/random";

/// The crand kind: one plugin of `--crand-count` devices.
pub const KIND: Kind = Kind {
    name: "crand",
    flags: &["--crand-count"],
    by_plugin_flag: true,
    build: |f: &Flags| {
        let n = count("--crand-count", f.crand_count)?;
        Ok(vec![
            Arc::new(Crand::new(f.domain, f.dev_dir, n)?) as Arc<dyn Plugin>
        ])
    },
};

/// The crand plugin.
#[derive(Debug)]
pub struct Crand {
    resource: String,
    dev_dir: PathBuf,
    count: usize,
    id: NodeId,
    /// The host node's permission bits, which the clones get too.
    mode: u32,
}

impl Crand {
    /// A crand plugin of `count` devices in `dev_dir`. Reads the number of
    /// the host's `/dev/random` once: it is 1:8 on Linux, but read, not
    /// assumed; its mode (0666 on Linux) too.
    pub fn new(domain: &str, dev_dir: &Path, count: usize) -> Result<Self> {
        Ok(Crand {
            resource: format!("{domain}/crand"),
            dev_dir: dev_dir.to_path_buf(),
            count,
            id: devnode::host_node(Path::new(HOST_RANDOM))?,
            mode: devnode::host_mode(Path::new(HOST_RANDOM))?,
        })
    }

    fn node_of(&self, index: usize) -> DeviceNode {
        let name = format!("crand{index}");
        DeviceNode {
            container_path: format!("/dev/{name}"),
            host_path: self.dev_dir.join(&name),
            cdi_name: name,
            kind: NodeKind::Char,
            id: self.id,
        }
    }

    fn probe_index(&self, index: usize) -> Device {
        let node = self.node_of(index);
        Device::checked(node.cdi_name, devnode::check_char(&node.host_path, self.id))
    }
}

impl Plugin for Crand {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn name(&self) -> &str {
        "crand"
    }

    fn resource(&self) -> &str {
        &self.resource
    }

    fn prepare(&self) -> Result<()> {
        for node in self.nodes() {
            if devnode::ensure_char(&node.host_path, self.id, self.mode)? {
                log::debug!("made node={} id={}", node.host_path.display(), self.id);
            }
        }
        Ok(())
    }

    fn probe(&self) -> Vec<Device> {
        (0..self.count).map(|i| self.probe_index(i)).collect()
    }

    fn affected(&self, entry: &Path) -> Affected {
        // Device i is node crandI and nothing else.
        match entry
            .to_str()
            .and_then(|e| parse_index(e, "crand", self.count))
        {
            Some(i) => Affected::Devices(vec![format!("crand{i}")]),
            None => Affected::Nothing,
        }
    }

    fn probe_device(&self, id: &str) -> Option<Device> {
        parse_index(id, "crand", self.count).map(|i| self.probe_index(i))
    }

    fn node(&self, id: &str) -> Option<DeviceNode> {
        parse_index(id, "crand", self.count).map(|i| self.node_of(i))
    }

    fn nodes(&self) -> Vec<DeviceNode> {
        (0..self.count).map(|i| self.node_of(i)).collect()
    }
}
