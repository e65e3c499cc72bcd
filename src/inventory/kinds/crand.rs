//! The crand plugin: `crand0`..`crand{N-1}`, character nodes in the dev dir
//! that clone the host's `/dev/random` (same major:minor).

use std::{path::Path, sync::Arc};

use super::{Affected, Flags, Kind, KindFlag, Plugin, parse_index};
use crate::{
    error::Result,
    inventory::{
        device::{Device, DeviceNode},
        devnode::{self, NodeId, NodeKind},
    },
};

/// The host node every crand device clones.
pub const HOST_RANDOM: &str = "/dev/random";

/// The crand kind: one plugin of `--crand-count` devices.
pub const KIND: Kind = Kind {
    name: "crand",
    help: "crand0.. : character nodes made in the dev dir, clones of the host's /dev/random",
    flags: &[KindFlag {
        name: "--crand-count",
        value: "N",
        default: Some("3"),
        repeatable: false,
        number: true,
        help: "number of crand devices",
    }],
    by_plugin_flag: true,
    build: |f: &Flags| {
        let n = f.count("--crand-count")?;
        Ok(vec![
            Arc::new(Crand::new(f.domain, f.dev_dir, n)?) as Arc<dyn Plugin>
        ])
    },
};

/// The crand plugin.
#[derive(Debug)]
pub struct Crand {
    resource: String,
    /// Node i of device `crand<i>`.
    nodes: Vec<Arc<DeviceNode>>,
    id: NodeId,
    /// The host node's permission bits, which the clones get too.
    mode: u32,
}

impl Crand {
    /// A crand plugin of `count` devices in `dev_dir`. Reads the number of
    /// the host's `/dev/random` once: it is 1:8 on Linux, but read, not
    /// assumed; its mode (0666 on Linux) too.
    pub fn new(domain: &str, dev_dir: &Path, count: usize) -> Result<Self> {
        let id = devnode::host_node(Path::new(HOST_RANDOM))?;
        let nodes = (0..count)
            .map(|i| {
                let name = format!("crand{i}");
                Arc::new(DeviceNode {
                    container_path: format!("/dev/{name}"),
                    host_path: dev_dir.join(&name),
                    cdi_name: name,
                    kind: NodeKind::Char,
                    id,
                    by_id: None,
                    // A clone of /dev/random: no hardware behind it.
                    numa: None,
                })
            })
            .collect();
        Ok(Crand {
            resource: format!("{domain}/crand"),
            nodes,
            id,
            mode: devnode::host_mode(Path::new(HOST_RANDOM))?,
        })
    }

    fn probe_index(&self, index: usize) -> Device {
        let node = &self.nodes[index];
        let check = devnode::check_char(&node.host_path, self.id);
        Device::new(node.cdi_name.clone(), node.clone(), check)
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
        for node in &self.nodes {
            if devnode::ensure_char(&node.host_path, self.id, self.mode)? {
                log::debug!("made node={} id={}", node.host_path.display(), self.id);
            }
        }
        Ok(())
    }

    fn probe(&self) -> Vec<Device> {
        (0..self.nodes.len()).map(|i| self.probe_index(i)).collect()
    }

    fn affected(&self, entry: &Path) -> Affected {
        // Device i is node crandI and nothing else.
        match entry
            .to_str()
            .and_then(|e| parse_index(e, "crand", self.nodes.len()))
        {
            Some(i) => Affected::Devices(vec![format!("crand{i}")]),
            None => Affected::Nothing,
        }
    }

    fn probe_device(&self, id: &str) -> Option<Device> {
        parse_index(id, "crand", self.nodes.len()).map(|i| self.probe_index(i))
    }
}
