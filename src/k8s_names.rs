//! Kubernetes' name rules, as the kubelet and the API server apply them:
//! DNS subdomains and labels, qualified names and extended resource names.
//! Product code checks its flags with these before anything starts; the
//! simulator checks what plugins send it with the same rules.

// No 63-character limit per label: the kubelet's IsDNS1123Subdomain checks
// only the regex and the total length, so a 64-character label passes there
// (found by fuzzing: the simulator refused a name the kubelet takes).
fn subdomain_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Whether `s` is a DNS-1123 subdomain: lowercase labels joined by dots,
/// at most 253 characters.
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(subdomain_label)
}

/// Whether `s` is a DNS-1123 label: at most 63 lowercase letters, digits
/// and `-`, starting and ending with a letter or digit (the names of
/// devices in a ResourceSlice).
pub fn dns_label(s: &str) -> bool {
    s.len() <= 63 && subdomain_label(s)
}

/// Whether `name` is the name part of a qualified name: at most 63
/// letters, digits, `-`, `_` or `.`, starting and ending with a letter or
/// digit.
pub fn qualified_name_part(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// The kubelet's extended resource name rule: a `/`, nothing in the
/// `kubernetes.io/` namespace, no `requests.` prefix, and
/// `requests.<name>` a qualified name (a DNS subdomain prefix and a name
/// part of at most 63 characters). The error is the kubelet's text.
pub fn resource_name(name: &str) -> Result<(), String> {
    let invalid = || Err(format!("the ResourceName {name:?} is invalid"));
    if !name.contains('/') || name.contains("kubernetes.io/") || name.starts_with("requests.") {
        return invalid();
    }
    let qualified = format!("requests.{name}");
    let mut parts = qualified.split('/');
    let (Some(prefix), Some(part), None) = (parts.next(), parts.next(), parts.next()) else {
        return invalid();
    };
    if !dns_subdomain(prefix) || !qualified_name_part(part) {
        return invalid();
    }
    Ok(())
}

/// A resource name as a file name: its `/` as `-`
/// (`github.com.ihcsim-crand`). A domain has no `-` at a label's end and a
/// name part no `/`, so it names one resource; CDI specs and the plugin
/// watcher's sockets are named so.
pub fn file_stem(resource: &str) -> String {
    resource.replace('/', "-")
}

/// 8 hex digits of a stable hash of `s` (FNV-1a, 32 bits): the suffix that
/// keeps apart names made from strings that read alike (device IDs from
/// paths, DNS labels from IDs). The same at every start.
pub fn hash8(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_resource_names_like_the_kubelet() {
        for good in [
            "example.com/foo",
            "nvidia.com/gpu",
            "intel.com/intel_sriov_netdevice",
            "example.com/FOO",
            "github.com.ihcsim/crand",
        ] {
            assert!(resource_name(good).is_ok(), "{good}");
        }
        for bad in [
            "gpu",
            "Example.com/foo",
            "example.com/",
            "example.com/-x",
            "a/b/c",
            "requests.example.com/x",
            "kubernetes.io/x",
            "foo.kubernetes.io/x",
        ] {
            assert_eq!(
                resource_name(bad).unwrap_err(),
                format!("the ResourceName {bad:?} is invalid")
            );
        }
        let long_label = format!("{}.com/x", "a".repeat(64));
        assert!(resource_name(&long_label).is_ok(), "no limit per label");
        let long = format!("{}.com/x", "a".repeat(241));
        assert!(
            resource_name(&long).is_err(),
            "prefix over 253 with requests."
        );
    }

    #[test]
    fn test_dns_labels() {
        assert!(dns_label("crand0") && dns_label("a-b") && dns_label(&"a".repeat(63)));
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(!dns_label(bad), "{bad}");
        }
    }
}
