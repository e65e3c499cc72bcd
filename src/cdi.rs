//! CDI specs: renders one spec per plugin (kind = the resource name, one
//! CDI device per device node) and writes it atomically into the CDI dir.
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
    json::json_str,
    plugin::Plugin,
};

/// The lowest CDI version that has `hostPath`; runtimes still in use
/// (podman 4.3) drop specs newer than 0.5.0 without a word.
pub const CDI_VERSION: &str = "0.5.0";

/// The spec's file name: `<vendor>-<class>.json`, the name the CDI
/// library's own writer uses.
pub fn file_name(plugin: &dyn Plugin) -> String {
    format!("{}.json", plugin.resource().replace('/', "-"))
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

/// The spec of `plugin` as JSON, one device per line group, stable byte for
/// byte for the same plugin and host.
pub fn render(plugin: &dyn Plugin) -> String {
    let mut out = String::new();
    out.push_str("{\n");
    let _ = writeln!(out, "  \"cdiVersion\": {},", json_str(CDI_VERSION));
    let _ = writeln!(out, "  \"kind\": {},", json_str(plugin.resource()));
    out.push_str("  \"devices\": [");
    for (i, node) in plugin.nodes().iter().enumerate() {
        let fq = format!("{}={}", plugin.resource(), node.cdi_name);
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

/// Writes `plugin`'s spec into `dir` atomically with mode 0644 and returns
/// its path. An unchanged spec is left as it is.
pub fn write(dir: &Path, plugin: &dyn Plugin) -> Result<PathBuf> {
    let path = dir.join(file_name(plugin));
    let spec = render(plugin);
    if fs::read(&path).is_ok_and(|old| old == spec.as_bytes()) {
        return Ok(path);
    }
    crate::atomic::write(&path, spec.as_bytes(), true)
        .map_err(|e| Error::io("write CDI spec", &path, e))?;
    Ok(path)
}
