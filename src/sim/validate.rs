//! The kubelet's checks of a RegisterRequest, in the kubelet's order and
//! with its error texts: version, extended resource name, endpoint; and of
//! the PluginInfo its plugin watcher gets from a registration socket.

/// The versions the kubelet accepts.
pub const SUPPORTED_VERSIONS: &[&str] = &["v1beta1"];

/// Checks `version` exactly (case-sensitive) against [`SUPPORTED_VERSIONS`].
pub fn version(version: &str) -> Result<(), String> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    Err(format!(
        "requested API version {version:?} is not supported by kubelet. Supported version is {:?}",
        SUPPORTED_VERSIONS
    ))
}

pub use crate::k8s_names::resource_name;

/// The kubelet joins the endpoint onto its own dir; only a bare socket file
/// name reaches the plugin's socket, so anything else is refused here.
pub fn endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.is_empty() || endpoint.contains('/') || endpoint == "." || endpoint == ".." {
        return Err(format!(
            "invalid endpoint {endpoint:?}: must be a socket file name in the device plugin directory"
        ));
    }
    Ok(())
}

/// The plugin watcher's checks of a device plugin's GetInfo answer, in the
/// kubelet's order and with its texts: the type picks the handler, then the
/// device plugin handler checks the versions and the name. Returns the
/// endpoint to dial: the one given, or the registration socket itself when
/// it is empty. The endpoint is dialled as it is, so it must be absolute.
pub fn plugin_info(
    type_: &str,
    name: &str,
    endpoint: &str,
    versions: &[String],
    socket: &str,
) -> Result<String, String> {
    if type_ != "DevicePlugin" {
        return Err(format!("no handler registered for plugin type: {type_}"));
    }
    if !versions
        .iter()
        .any(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
    {
        return Err(format!(
            "manager version, {}, is not among plugin supported versions {versions:?}",
            SUPPORTED_VERSIONS[0]
        ));
    }
    resource_name(name).map_err(|e| format!("invalid name of device plugin socket: {e}"))?;
    match endpoint {
        "" => Ok(socket.to_string()),
        e if e.starts_with('/') => Ok(e.to_string()),
        e => Err(format!(
            "failed to dial device plugin: endpoint {e:?} is not an absolute path"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_version_and_endpoint() {
        assert!(version("v1beta1").is_ok());
        assert_eq!(
            version("v1").unwrap_err(),
            "requested API version \"v1\" is not supported by kubelet. Supported version is [\"v1beta1\"]"
        );
        assert!(endpoint("crand.sock").is_ok());
        assert!(endpoint("/abs/crand.sock").is_err());
        assert!(endpoint("").is_err());
    }

    #[test]
    fn test_plugin_info_like_the_plugin_watcher() {
        let v1beta1 = ["v1beta1".to_string()];
        let ok = |endpoint| {
            plugin_info(
                "DevicePlugin",
                "example.com/x",
                endpoint,
                &v1beta1,
                "/r.sock",
            )
        };
        assert_eq!(ok("").unwrap(), "/r.sock");
        assert_eq!(ok("/dp/x.sock").unwrap(), "/dp/x.sock");
        assert!(ok("x.sock").unwrap_err().contains("not an absolute path"));
        assert_eq!(
            plugin_info("CSIPlugin", "example.com/x", "", &v1beta1, "/r").unwrap_err(),
            "no handler registered for plugin type: CSIPlugin"
        );
        assert!(
            plugin_info("DevicePlugin", "example.com/x", "", &["v1".into()], "/r")
                .unwrap_err()
                .starts_with("manager version, v1beta1, is not among plugin supported versions")
        );
        assert_eq!(
            plugin_info("DevicePlugin", "x", "", &v1beta1, "/r").unwrap_err(),
            "invalid name of device plugin socket: the ResourceName \"x\" is invalid"
        );
    }
}
