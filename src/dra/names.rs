//! The names and attributes of our devices in a ResourceSlice: each
//! device of every resource is one DRA device of the node's pool, named
//! after its device plugin ID as a DNS label, with attributes a
//! DeviceClass selects on (`resource`, `kind`) and that tell what it is
//! (`id`, `path`, `major`, `minor`, `byId`). Pure: no I/O.
//!
//! The names are stable: the same device gets the same name at every
//! start, as the device plugin's IDs are.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::{
    inventory::{Resource, device::Device},
    k8s_names::{self, hash8},
};

/// The longest a string attribute may be (the API refuses longer ones).
const ATTRIBUTE_MAX: usize = 64;

/// One of our devices as DRA sees it.
#[derive(Clone, Debug)]
pub struct DraDevice {
    /// Its name in the pool: a DNS label.
    pub name: String,
    /// The resource it belongs to: `github.com.ihcsim/crand`.
    pub resource: String,
    /// The resource's name part: `crand`, or a `--device` NAME.
    pub resource_name: String,
    /// Its plugin kind: `crand`, `kvm`, `dev`.
    pub kind: &'static str,
    /// The device as the inventory has it: ID, health, node.
    pub device: Device,
}

impl DraDevice {
    /// The fully qualified CDI name of its node, which a container gets.
    pub fn cdi_id(&self) -> String {
        format!("{}={}", self.resource, self.device.node.cdi_name)
    }

    /// Its attributes, as the API's `attributes` map (names in the driver's
    /// domain).
    pub fn attributes(&self) -> Value {
        let node = &self.device.node;
        let mut attrs = Map::new();
        let mut string = |key: &str, value: &str| {
            // A longer value is refused by the API; it is left out rather
            // than cut, which would name another node.
            if value.len() <= ATTRIBUTE_MAX {
                attrs.insert(key.into(), json!({ "string": value }));
            }
        };
        string("resource", &self.resource_name);
        string("kind", self.kind);
        string("id", &self.device.id);
        string("path", &node.host_path.display().to_string());
        if let Some(link) = &node.by_id {
            // udev's stable name of the hardware (`/dev/serial/by-id/..`).
            string("byId", link);
        }
        attrs.insert("major".into(), json!({ "int": node.id.major }));
        attrs.insert("minor".into(), json!({ "int": node.id.minor }));
        if let Some(numa) = node.numa {
            // For a claim's constraints (matchAttribute: devices of one NUMA
            // node), as the device plugin's TopologyInfo is for the kubelet.
            attrs.insert("numaNode".into(), json!({ "int": numa }));
        }
        Value::Object(attrs)
    }
}

/// A device ID as a DNS label: itself when it is one (`crand0`, `kvm1`,
/// `ttyusb0` is not: IDs keep their case); otherwise lowercased, every
/// character but letters, digits and `-` made `-`, cut to 54 and `-` plus
/// 8 hex digits of a hash of the ID added, so IDs that read alike stay
/// apart (`ttyUSB0` -> `ttyusb0-4452f912`).
pub fn label(id: &str) -> String {
    if k8s_names::dns_label(id) {
        return id.to_string();
    }
    let mut s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(54);
    let s = s.trim_matches('-');
    if s.is_empty() {
        format!("dev-{}", hash8(id))
    } else {
        format!("{s}-{}", hash8(id))
    }
}

/// Every device of `resources`, named, in resource then device order. A
/// name two resources would give (two `--device` patterns matching one
/// node) stays with the first resource; the later ones' devices get a hash
/// of their resource added.
pub fn devices(resources: &[Resource]) -> Vec<DraDevice> {
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        for d in r.devices.get().iter() {
            let mut name = label(&d.id);
            if *owner.entry(name.clone()).or_insert(i) != i {
                name.truncate(54);
                name = format!(
                    "{}-{}",
                    name.trim_end_matches('-'),
                    hash8(&format!("{}/{}", r.name(), d.id))
                );
            }
            out.push(DraDevice {
                name,
                resource: r.name().to_string(),
                resource_name: r.plugin.name().to_string(),
                kind: r.plugin.kind(),
                device: d.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_labels_are_dns_labels_stable_and_apart() {
        assert_eq!(label("crand0"), "crand0");
        assert_eq!(label("kvm12"), "kvm12");
        let tty = label("ttyUSB0");
        assert!(tty.starts_with("ttyusb0-") && tty.len() == 16, "{tty}");
        assert_ne!(tty, label("ttyusb0"), "case kept apart by the hash");
        assert_eq!(label("ttyusb0"), "ttyusb0");
        for id in [
            "serial-by-id-usb-FTDI_x_y-2a32fdbf",
            "input-event3",
            &"A".repeat(63),
            "_",
            "x.y",
        ] {
            let l = label(id);
            assert!(k8s_names::dns_label(&l), "{id} -> {l}");
            assert_eq!(l, label(id));
        }
    }
}
