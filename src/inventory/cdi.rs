//! CDI specs: renders one spec per resource (kind = the resource name, one
//! CDI device per device node of its device list) and writes it atomically
//! into the CDI dir.
//!
//! Runtimes watch that dir and may read a file while it is written, so the
//! spec goes to a temp file whose name does not end in `.json`, is synced,
//! then renamed over the target ([`crate::atomic`]). Specs stay at
//! shutdown: the kubelet replays old Allocate answers when containers
//! restart.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    inventory::device::{Device, DeviceNode},
    json::json_str,
    k8s_names,
};

/// The lowest CDI version that has `hostPath`; runtimes still in use
/// (podman 4.3) drop specs newer than 0.5.0 without a word.
pub const CDI_VERSION: &str = "0.5.0";

/// The spec's file name: `<vendor>-<class>.json`, the name the CDI
/// library's own writer uses.
pub fn file_name(resource: &str) -> String {
    format!("{}.json", k8s_names::file_stem(resource))
}

/// The distinct nodes of `devices`, in order: devices that share a node
/// (kvm slots, SHARE slots) give it once.
pub fn nodes(devices: &[Device]) -> Vec<&DeviceNode> {
    let mut seen = std::collections::HashSet::new();
    devices
        .iter()
        .map(|d| d.node.as_ref())
        .filter(|n| seen.insert(n.cdi_name.as_str()))
        .collect()
}

/// The environment variable a container gets for a device:
/// `CDI_DEVICE_<NAME>` holding the fully qualified CDI name.
pub fn env_name(cdi_name: &str) -> String {
    let name: String = cdi_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("CDI_DEVICE_{name}")
}

/// The spec of `resource` whose devices are `devices` as JSON, one device
/// per line group, stable byte for byte for the same devices.
pub fn render(resource: &str, devices: &[Device]) -> String {
    let mut out = String::new();
    out.push_str("{\n");
    let _ = writeln!(out, "  \"cdiVersion\": {},", json_str(CDI_VERSION));
    let _ = writeln!(out, "  \"kind\": {},", json_str(resource));
    out.push_str("  \"devices\": [");
    for (i, node) in nodes(devices).iter().enumerate() {
        let fq = format!("{resource}={}", node.cdi_name);
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "    {{\n      \"name\": {},\n      \"containerEdits\": {{\n        \"env\": [{}],\n        \"deviceNodes\": [\n          {{\"path\": {}, \"hostPath\": {}, \"type\": \"{}\", \"major\": {}, \"minor\": {}, \"permissions\": \"rw\"}}\n        ]\n      }}\n    }}",
            json_str(&node.cdi_name),
            json_str(&format!("{}={fq}", env_name(&node.cdi_name))),
            json_str(&node.container_path),
            json_str(&node.host_path.display().to_string()),
            node.kind.letter(),
            node.id.major,
            node.id.minor,
        );
    }
    out.push_str("\n  ]\n}\n");
    out
}

/// Writes the spec of `resource` with `devices` into `dir` atomically with
/// mode 0644 and returns its path. An unchanged spec is left as it is.
pub fn write(dir: &Path, resource: &str, devices: &[Device]) -> Result<PathBuf> {
    let path = dir.join(file_name(resource));
    let spec = render(resource, devices);
    if fs::read(&path).is_ok_and(|old| old == spec.as_bytes()) {
        return Ok(path);
    }
    crate::atomic::write(&path, spec.as_bytes(), true)
        .map_err(|e| Error::io("write CDI spec", &path, e))?;
    Ok(path)
}
