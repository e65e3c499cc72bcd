//! The kubelet's checks of a RegisterRequest, in the kubelet's order and
//! with its error texts: version, extended resource name, endpoint; of
//! the PluginInfo its plugin watcher gets from a registration socket (a
//! device plugin's or a DRA driver's); and of a DRA driver's answers to
//! NodePrepareResources and NodeUnprepareResources. Pure functions.

use super::dra::{DraService, KubeletVersion};

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

/// The DRA services a 1.36 kubelet calls, in its order
/// (`servicesSupportedByKubelet`).
pub const DRA_SERVICES: [DraService; 2] = [DraService::V1, DraService::V1beta1];

/// Go's `%q` of a `[]string`, as the kubelet's texts print lists:
/// `["a" "b"]`.
pub fn go_quote_list<S: AsRef<str>>(list: &[S]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("{:?}", s.as_ref())).collect();
    format!("[{}]", quoted.join(" "))
}

/// The 1.36 kubelet's choice of a DRA service (`validateSupportedServices`):
/// it walks the plugin's list in the plugin's order and takes the first
/// entry it supports, so a plugin listing `v1beta1.DRAPlugin` first gets
/// v1beta1 even when it offers v1 too.
pub fn dra_service(versions: &[String]) -> Result<DraService, String> {
    if versions.is_empty() {
        return Err("empty list of supported gRPC services (aka supported versions)".into());
    }
    versions
        .iter()
        .find_map(|v| DraService::from_name(v))
        .ok_or_else(|| {
            format!(
                "none of services supported by the plugin ({}) are supported by the kubelet ({})",
                go_quote_list(versions),
                go_quote_list(&DRA_SERVICES.map(DraService::name))
            )
        })
}

/// The plugin watcher's and the DRA handler's checks of a DRA driver's
/// GetInfo answer; the error is what follows `plugin validation failed with
/// err: `. Returns the endpoint to dial (the registration socket itself when
/// none is named, as the plugin watcher does) and the service to call.
///
/// The versions come first, with the kubelet's text (1.32 ignores them and
/// always calls v1beta1, measured). The kubelet itself does not check the
/// name or the endpoint at registration: it registers an empty name and
/// fails every later call with `DRA driver name is empty`, and dials a
/// relative endpoint from its own working dir; the simulator refuses both
/// at once, with those facts in its text.
pub fn dra_plugin_info(
    version: KubeletVersion,
    name: &str,
    endpoint: &str,
    versions: &[String],
    socket: &str,
) -> Result<(String, DraService), String> {
    let endpoint = if endpoint.is_empty() {
        socket
    } else {
        endpoint
    };
    let service = match version {
        KubeletVersion::V1_32 => DraService::V1beta1,
        KubeletVersion::V1_36 => dra_service(versions).map_err(|e| {
            format!(
                "invalid supported gRPC versions of DRA driver plugin {name} at endpoint {endpoint}: {e}"
            )
        })?,
    };
    if name.is_empty() {
        return Err("DRA driver name is empty".into());
    }
    if !endpoint.starts_with('/') {
        return Err(format!(
            "endpoint {endpoint:?} of DRA driver plugin {name} is not an absolute path (the kubelet would dial it from its own working directory)"
        ));
    }
    Ok((endpoint.to_string(), service))
}

/// The kubelet's checks of the claims map of a `method` answer
/// (NodePrepareResources, NodeUnprepareResources) against the claim UIDs
/// asked for: no UID that was not asked for, then none left out, with the
/// kubelet's texts (1.32's last one differs).
pub fn dra_answer<'a>(
    method: &str,
    version: KubeletVersion,
    requested: &[&str],
    answered: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    let mut answered: Vec<&str> = answered.into_iter().map(String::as_str).collect();
    answered.sort_unstable();
    if let Some(unknown) = answered.iter().find(|uid| !requested.contains(uid)) {
        return Err(format!(
            "{method} returned result for unknown claim UID {unknown}"
        ));
    }
    match requested.len().saturating_sub(answered.len()) {
        0 => Ok(()),
        n => Err(match version {
            KubeletVersion::V1_32 => format!("{method} left out {n} claims"),
            KubeletVersion::V1_36 => format!("{method} skipped {n} ResourceClaims"),
        }),
    }
}

/// The kubelet's text for a claim whose answer carries `error`.
pub fn dra_claim_error(
    method: &str,
    version: KubeletVersion,
    namespace: &str,
    name: &str,
    error: &str,
) -> String {
    match version {
        KubeletVersion::V1_32 => format!("{method} failed for claim {namespace}/{name}: {error}"),
        KubeletVersion::V1_36 => format!("{method} failed for ResourceClaim {name}: {error}"),
    }
}

/// The kubelet's text for a `method` call that failed as a whole.
pub fn dra_call_error(method: &str, version: KubeletVersion, error: &str) -> String {
    match version {
        KubeletVersion::V1_32 => format!("{method} failed: {error}"),
        KubeletVersion::V1_36 => format!("{method}: {error}"),
    }
}

/// A gRPC status as grpc-go prints it:
/// `rpc error: code = Unavailable desc = ...`.
pub fn go_status(code: i32, message: &str) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    let name = usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("Code({code})"), |n| n.to_string());
    format!("rpc error: code = {name} desc = {message}")
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

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_dra_service_takes_the_plugins_first_known_entry() {
        let pick = |list: &[&str]| dra_service(&strings(list));
        assert_eq!(
            pick(&[
                "v1.DRAPlugin",
                "v1beta1.DRAPlugin",
                "v1alpha1.DRAResourceHealth"
            ]),
            Ok(DraService::V1)
        );
        assert_eq!(pick(&["v1beta1.DRAPlugin"]), Ok(DraService::V1beta1));
        // The plugin's order, not the kubelet's.
        assert_eq!(
            pick(&["v1beta1.DRAPlugin", "v1.DRAPlugin"]),
            Ok(DraService::V1beta1)
        );
        assert_eq!(
            pick(&["v1alpha1.DRAResourceHealth", "v1.DRAPlugin"]),
            Ok(DraService::V1)
        );
        assert_eq!(
            pick(&[]).unwrap_err(),
            "empty list of supported gRPC services (aka supported versions)"
        );
        // The text measured on a 1.36.3 kubelet.
        assert_eq!(
            pick(&["v2.DRAPlugin"]).unwrap_err(),
            r#"none of services supported by the plugin (["v2.DRAPlugin"]) are supported by the kubelet (["v1.DRAPlugin" "v1beta1.DRAPlugin"])"#
        );
    }

    #[test]
    fn test_dra_plugin_info_per_kubelet_version() {
        let v136 = KubeletVersion::V1_36;
        let v1 = strings(&["v1.DRAPlugin"]);
        assert_eq!(
            dra_plugin_info(v136, "example.com", "/p/dra.sock", &v1, "/r/reg.sock"),
            Ok(("/p/dra.sock".into(), DraService::V1))
        );
        assert_eq!(
            dra_plugin_info(v136, "example.com", "", &v1, "/r/reg.sock"),
            Ok(("/r/reg.sock".into(), DraService::V1))
        );
        assert_eq!(
            dra_plugin_info(
                v136,
                "example.com",
                "/p/dra.sock",
                &strings(&["v2.DRAPlugin"]),
                "/r"
            )
            .unwrap_err(),
            r#"invalid supported gRPC versions of DRA driver plugin example.com at endpoint /p/dra.sock: none of services supported by the plugin (["v2.DRAPlugin"]) are supported by the kubelet (["v1.DRAPlugin" "v1beta1.DRAPlugin"])"#
        );
        assert_eq!(
            dra_plugin_info(v136, "", "/p/dra.sock", &v1, "/r").unwrap_err(),
            "DRA driver name is empty"
        );
        assert!(
            dra_plugin_info(v136, "example.com", "dra.sock", &v1, "/r")
                .unwrap_err()
                .contains("\"dra.sock\" of DRA driver plugin example.com is not an absolute path")
        );
        // 1.32 ignores the versions, whatever they say, and calls v1beta1.
        for list in [&[][..], &["v1.DRAPlugin"], &["v2.DRAPlugin"], &["1.0.0"]] {
            assert_eq!(
                dra_plugin_info(
                    KubeletVersion::V1_32,
                    "example.com",
                    "/p",
                    &strings(list),
                    "/r"
                ),
                Ok(("/p".into(), DraService::V1beta1)),
                "{list:?}"
            );
        }
    }

    #[test]
    fn test_dra_answer_checks_and_texts() {
        let (v132, v136) = (KubeletVersion::V1_32, KubeletVersion::V1_36);
        let m = "NodePrepareResources";
        let keys = |list: &[&str]| strings(list);
        assert_eq!(dra_answer(m, v136, &["a", "b"], &keys(&["b", "a"])), Ok(()));
        assert_eq!(dra_answer(m, v136, &[], &keys(&[])), Ok(()));
        assert_eq!(
            dra_answer(m, v136, &["a", "b"], &keys(&["a"])).unwrap_err(),
            "NodePrepareResources skipped 1 ResourceClaims"
        );
        assert_eq!(
            dra_answer("NodeUnprepareResources", v132, &["a", "b"], &keys(&[])).unwrap_err(),
            "NodeUnprepareResources left out 2 claims"
        );
        // An unknown UID is found before a missing one.
        assert_eq!(
            dra_answer(m, v136, &["a", "b"], &keys(&["zz", "a"])).unwrap_err(),
            "NodePrepareResources returned result for unknown claim UID zz"
        );
        assert_eq!(
            dra_claim_error(
                m,
                v136,
                "default",
                "pod1-rngs-kq7hw",
                "get claim: 401 Unauthorized"
            ),
            "NodePrepareResources failed for ResourceClaim pod1-rngs-kq7hw: get claim: 401 Unauthorized"
        );
        assert_eq!(
            dra_claim_error(m, v132, "default", "tpod1-r-pkvvn", "device crand0 is busy"),
            "NodePrepareResources failed for claim default/tpod1-r-pkvvn: device crand0 is busy"
        );
        assert_eq!(dra_call_error(m, v136, "x"), "NodePrepareResources: x");
        assert_eq!(
            dra_call_error(m, v132, "x"),
            "NodePrepareResources failed: x"
        );
    }

    #[test]
    fn test_go_texts() {
        assert_eq!(
            go_status(12, "Method not found!"),
            "rpc error: code = Unimplemented desc = Method not found!"
        );
        assert_eq!(go_status(14, "x"), "rpc error: code = Unavailable desc = x");
        assert_eq!(go_status(99, "x"), "rpc error: code = Code(99) desc = x");
        assert_eq!(go_status(-1, "x"), "rpc error: code = Code(-1) desc = x");
        assert_eq!(go_quote_list::<&str>(&[]), "[]");
        assert_eq!(go_quote_list(&["a\"b", "c"]), r#"["a\"b" "c"]"#);
    }
}
