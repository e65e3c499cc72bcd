//! Fuzz harnesses: one function per cargo-fuzz target in `src/fuzz/`, each
//! taking arbitrary bytes, driving one part of the crate with them and
//! panicking, with a message naming the broken rule, when an invariant fails.
//! The `fuzz` test replays the corpus in `testdata/fuzz/<target>/` (and
//! mutations of it) through the same functions, so `cargo test` keeps them
//! honest without nightly or cargo-fuzz.
//!
//! | target | input | code under test |
//! |---|---|---|
//! | [`allocate`] | a protobuf `AllocateRequest` | [`Service::allocate_response`] of a crand and a kvm plugin |
//! | [`names`] | one string | [`validate`], the `--resource-domain` check, CDI kinds, names and specs |
//! | [`flags`] | arguments split on NUL | [`cli::split_equals`], the argh parser, [`plugin::build`] |
//!
//! The expectations are written from the rules the code documents (and
//! `kubelet-contract.md`), not from the code itself. Nothing here writes to
//! the file system: plugins get a dev dir that does not exist, and building
//! one only reads the device numbers of the host's `/dev/random` and
//! `/dev/kvm`, as `kubelet-plugin run` does.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, OnceLock},
};

use argh::FromArgs as _;
use protobuf::Message as _;

use crate::{
    api::api,
    cdi, cli,
    device::{Device, Health, Reason},
    error::Error,
    plugin::{self, AllocError, Injection, MAX_DEVICES, Plugin},
    server::Service,
    sim::validate,
    watch::Watch,
};

/// The domain the allocate harness's plugins use.
const DOMAIN: &str = "github.com.ihcsim";
/// A dev dir that does not exist: nothing may be made or read there.
const NO_DIR: &str = "/nonexistent/kubelet-plugin-fuzz/dev";
/// Devices of the allocate harness's crand and kvm plugins.
const CRAND_COUNT: usize = 6;
const KVM_COUNT: usize = 4;

// ---------------------------------------------------------------- allocate

/// One plugin with its fixed device snapshot, served with one injection.
struct Case {
    plugin: Arc<dyn Plugin>,
    devices: Vec<Device>,
    injection: Injection,
    service: Service,
}

/// Every device of a plugin, `<name>0`..`<name>{count-1}` as `probe` lists
/// them, with every third one (1, 4, ..) Unhealthy.
fn snapshot(name: &str, count: usize) -> Vec<Device> {
    (0..count)
        .map(|i| {
            let id = format!("{name}{i}");
            if i % 3 == 1 {
                Device::unhealthy(id, Reason::Missing)
            } else {
                Device::healthy(id)
            }
        })
        .collect()
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let plugins = plugin::build(&plugin_flags(&[], &[], DOMAIN, CRAND_COUNT, KVM_COUNT))
            .unwrap_or_else(|e| panic!("building the crand and kvm plugins failed: {e}"));
        let mut cases = Vec::new();
        for plugin in plugins {
            let count = match plugin.name() {
                "crand" => CRAND_COUNT,
                _ => KVM_COUNT,
            };
            let devices = snapshot(plugin.name(), count);
            for injection in [Injection::Cdi, Injection::DeviceSpec, Injection::Both] {
                let service = Service::new(
                    plugin.clone(),
                    Watch::new(devices.clone()),
                    Watch::new(None),
                    injection,
                    Arc::new(|_| {}),
                    crate::metrics::Metrics::new(),
                );
                cases.push(Case {
                    plugin: plugin.clone(),
                    devices: devices.clone(),
                    injection,
                    service,
                });
            }
        }
        cases
    })
}

/// Why Allocate must refuse `req`, by the rules `plugin::allocate` and the
/// server document: no container request; then, container by container and
/// ID by ID, a container with no ID, an ID named twice, an ID not in the
/// device list, an Unhealthy device. `None`: it must succeed.
fn refusal(case: &Case, req: &api::AllocateRequest) -> Option<String> {
    if req.container_requests.is_empty() {
        return Some("no container requests".into());
    }
    for creq in &req.container_requests {
        if creq.devices_ids.is_empty() {
            return Some(AllocError::Empty.to_string());
        }
        let mut seen = HashSet::new();
        for id in &creq.devices_ids {
            if !seen.insert(id) {
                return Some(AllocError::Duplicate(id.clone()).to_string());
            }
            match case.devices.iter().find(|d| &d.id == id) {
                None => return Some(AllocError::Unknown(id.clone()).to_string()),
                Some(Device {
                    health: Health::Unhealthy(why),
                    ..
                }) => {
                    return Some(AllocError::Unhealthy(id.clone(), why.to_string()).to_string());
                }
                Some(_) => {}
            }
        }
    }
    None
}

/// The CDI device name (and `/dev` node name) behind a device ID: each
/// crand device has its own node, every kvm slot shares `kvm`.
fn node_name<'a>(plugin: &str, id: &'a str) -> &'a str {
    if plugin == "kvm" { "kvm" } else { id }
}

fn check_container(case: &Case, ids: &[String], resp: &api::ContainerAllocateResponse, what: &str) {
    let (name, resource) = (case.plugin.name(), case.plugin.resource());
    for id in ids {
        let healthy = case
            .devices
            .iter()
            .any(|d| &d.id == id && d.health == Health::Healthy);
        assert!(
            healthy,
            "{what}: answered for {id:?}, not a known Healthy ID"
        );
    }
    // One node per distinct node, in request order.
    let mut nodes: Vec<&str> = Vec::new();
    for id in ids {
        let node = node_name(name, id);
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    let cdi: Vec<&str> = resp.cdi_devices.iter().map(|c| c.name.as_str()).collect();
    let want_cdi: Vec<String> = match case.injection.cdi() {
        true => nodes.iter().map(|n| format!("{resource}={n}")).collect(),
        false => Vec::new(),
    };
    assert_eq!(cdi, want_cdi, "{what}: CDI names");
    for full in &cdi {
        let (kind, device) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("{what}: CDI name {full:?} has no '='"));
        assert_eq!(kind, resource, "{what}: CDI kind of {full:?}");
        assert!(
            ids.iter().any(|id| node_name(name, id) == device),
            "{what}: CDI name {full:?} is not of a requested ID"
        );
        assert!(
            cdi_qualified_name(full),
            "{what}: {full:?} is not a CDI qualified name"
        );
    }
    let specs: Vec<(&str, &str, &str)> = resp
        .devices
        .iter()
        .map(|d| {
            (
                d.container_path.as_str(),
                d.host_path.as_str(),
                d.permissions.as_str(),
            )
        })
        .collect();
    let want_specs: Vec<(String, String)> = match case.injection.specs() {
        true => nodes
            .iter()
            .map(|n| (format!("/dev/{n}"), format!("{NO_DIR}/{n}")))
            .collect(),
        false => Vec::new(),
    };
    let want_specs: Vec<(&str, &str, &str)> = want_specs
        .iter()
        .map(|(c, h)| (c.as_str(), h.as_str(), "rw"))
        .collect();
    assert_eq!(specs, want_specs, "{what}: DeviceSpecs");
    assert!(
        resp.envs.is_empty() && resp.mounts.is_empty() && resp.annotations.is_empty(),
        "{what}: envs, mounts or annotations in {resp:?}"
    );
}

/// Arbitrary bytes as an `AllocateRequest` (bytes that are not one are
/// skipped), answered by a crand plugin (6 devices) and a kvm plugin (4
/// slots), each with every injection mode, from a fixed snapshot in which
/// `crand1`, `crand4` and `kvm1` are Unhealthy.
///
/// Invariants: no panic; the answer is a refusal exactly when the documented
/// rules say so, with the message of the first offending container and ID;
/// an answer has one container response per container request, naming only
/// requested, known, Healthy IDs: CDI names `<resource>=<node>` (valid CDI
/// qualified names) and `rw` DeviceSpecs, each node once, as the injection
/// mode asks; it survives a protobuf round trip; asking again gives the same
/// answer.
pub fn allocate(data: &[u8]) {
    let Ok(req) = api::AllocateRequest::parse_from_bytes(data) else {
        return;
    };
    for case in cases() {
        let what = format!(
            "Allocate {:?} of {} ({:?})",
            req.container_requests
                .iter()
                .map(|c| &c.devices_ids)
                .collect::<Vec<_>>(),
            case.plugin.resource(),
            case.injection
        );
        let answer = case.service.allocate_response(&req);
        match (&answer, refusal(case, &req)) {
            (Ok(resp), None) => {
                assert_eq!(
                    resp.container_responses.len(),
                    req.container_requests.len(),
                    "{what}: one container response per container request"
                );
                for (creq, cresp) in req.container_requests.iter().zip(&resp.container_responses) {
                    check_container(case, &creq.devices_ids, cresp, &what);
                }
                let bytes = resp
                    .write_to_bytes()
                    .unwrap_or_else(|e| panic!("{what}: the answer does not encode: {e}"));
                let back = api::AllocateResponse::parse_from_bytes(&bytes)
                    .unwrap_or_else(|e| panic!("{what}: the answer does not decode: {e}"));
                assert_eq!(&back, resp, "{what}: protobuf round trip");
            }
            (Err(msg), Some(want)) => assert_eq!(msg, &want, "{what}: refusal message"),
            (Ok(resp), Some(want)) => panic!("{what}: answered {resp:?}, but must refuse: {want}"),
            (Err(msg), None) => {
                panic!("{what}: refused ({msg}), but every ID is known, Healthy and named once")
            }
        }
        assert_eq!(
            case.service.allocate_response(&req),
            answer,
            "{what}: a second identical request got another answer"
        );
    }
}

// ------------------------------------------------------------------- names

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A label of a DNS-1123 subdomain: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`. The
/// kubelet's subdomain check (apimachinery's `IsDNS1123Subdomain`) is that
/// regex and the total length only: no 63-character limit per label.
fn dns_label(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    lower_alnum(first) && lower_alnum(last) && s.chars().all(|c| lower_alnum(c) || c == '-')
}

/// DNS-1123 subdomain: labels joined by `.`, at most 253 characters.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// The name part of a qualified name: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`,
/// at most 63 characters.
fn qualified_part(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    s.len() <= 63
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The kubelet's extended resource name rule (kubelet-contract.md §3.2).
fn extended_resource_name(name: &str) -> bool {
    if !name.contains('/') || name.contains("kubernetes.io/") || name.starts_with("requests.") {
        return false;
    }
    let qualified = format!("requests.{name}");
    match qualified.split_once('/') {
        Some((prefix, part)) => {
            !part.contains('/')
                && !prefix.is_empty()
                && dns_subdomain(prefix)
                && qualified_part(part)
        }
        None => false,
    }
}

/// A CDI vendor or class as the reference parser takes it (§13.3): a letter
/// first, a letter or digit last, `[A-Za-z0-9_.-]` between.
fn cdi_vendor_or_class(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    first.is_ascii_alphabetic()
        && last.is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A CDI device name (§13.3): a letter or digit at both ends,
/// `[A-Za-z0-9_.:-]` between.
fn cdi_device_name(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// A fully qualified CDI name `vendor/class=name` (§13.4): split at the
/// first `=`, the qualifier at its first `/`.
fn cdi_qualified_name(s: &str) -> bool {
    let Some((kind, name)) = s.split_once('=') else {
        return false;
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    !s.starts_with('/')
        && cdi_vendor_or_class(vendor)
        && cdi_vendor_or_class(class)
        && cdi_device_name(name)
}

/// Reads the JSON string literal at the start of `s`, as a JSON parser
/// would; `None` if it is not a valid one.
fn json_string(s: &str) -> Option<String> {
    let mut chars = s.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                '/' => out.push('/'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == 4)?;
                    // json_str escapes only control characters: no surrogates.
                    out.push(char::from_u32(code)?);
                }
                _ => return None,
            },
            c if (c as u32) < 0x20 => return None,
            c => out.push(c),
        }
    }
}

fn check_env_name(s: &str) {
    let env = cdi::env_name(s);
    let rest = env
        .strip_prefix("CDI_DEVICE_")
        .unwrap_or_else(|| panic!("env_name({s:?}) = {env:?}: no CDI_DEVICE_ prefix"));
    assert_eq!(
        rest.chars().count(),
        s.chars().count(),
        "env_name({s:?}) = {env:?}: one character per character"
    );
    assert!(
        rest.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
        "env_name({s:?}) = {env:?}: not a portable environment variable name"
    );
}

/// Checks a plugin built for an accepted `--resource-domain`: its resource
/// name, CDI kind, qualified names, env names, spec file name and spec.
fn check_plugin_names(domain: &str, p: &dyn Plugin) {
    let resource = p.resource();
    assert_eq!(
        resource,
        format!("{domain}/{}", p.name()),
        "resource of {p:?}"
    );
    assert!(
        validate::resource_name(resource).is_ok(),
        "--resource-domain {domain:?} accepted, but the simulator refuses {resource:?}"
    );
    let file = cdi::file_name(p);
    assert!(
        !file.contains('/') && file.ends_with(".json") && file.len() > ".json".len(),
        "spec file name {file:?} of {resource:?}"
    );
    let spec = cdi::render(p);
    assert!(
        spec.contains(&format!("\"kind\": \"{resource}\",")),
        "the spec of {resource:?} lacks its kind:\n{spec}"
    );
    assert!(
        !spec.chars().any(|c| c.is_control() && c != '\n'),
        "raw control character in the spec of {resource:?}"
    );
    for node in p.nodes() {
        let full = format!("{resource}={}", node.cdi_name);
        assert!(
            cdi_qualified_name(&full),
            "--resource-domain {domain:?} accepted, but {full:?} is not a CDI qualified name \
             (vendor and class start with a letter; kubelet-contract.md §13.3)"
        );
        check_env_name(&node.cdi_name);
        assert!(
            spec.contains(&format!("\"name\": \"{}\",", node.cdi_name)),
            "the spec of {resource:?} lacks device {:?}",
            node.cdi_name
        );
    }
}

/// One string through every name check.
///
/// Invariants: no panic; `version`, `endpoint`, `dns_subdomain` and
/// `resource_name` accept exactly what kubelet-contract.md §3.2 (and the
/// simulator's documented endpoint rule) accepts; an accepted resource name
/// has one `/`, a DNS-subdomain domain of at most 244 characters and a name
/// part of at most 63; the `--resource-domain` check accepts a domain only if
/// the simulator accepts the resource names made from it and they make valid
/// CDI kinds and qualified names, and refuses it otherwise, naming the flag;
/// a dev dir of any text makes a spec whose `hostPath` is a valid JSON
/// string of it; CDI env names are portable; `parse_index` and the
/// injection modes accept only their canonical spellings.
pub fn names(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    assert_eq!(
        validate::version(s).is_ok(),
        s == "v1beta1",
        "version({s:?})"
    );
    let endpoint_ok = !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    assert_eq!(
        validate::endpoint(s).is_ok(),
        endpoint_ok,
        "endpoint({s:?})"
    );
    assert_eq!(
        validate::dns_subdomain(s),
        dns_subdomain(s),
        "dns_subdomain({s:?})"
    );

    match validate::resource_name(s) {
        Ok(()) => {
            assert!(extended_resource_name(s), "resource_name accepted {s:?}");
            assert_eq!(s.matches('/').count(), 1, "accepted {s:?}: one '/'");
            let (domain, part) = s.split_once('/').unwrap_or_default();
            assert!(
                dns_subdomain(domain) && domain.len() <= 244,
                "accepted {s:?}: domain a DNS subdomain of at most 244 characters"
            );
            assert!(part.len() <= 63, "accepted {s:?}: name part of at most 63");
        }
        Err(e) => {
            assert!(!extended_resource_name(s), "resource_name refused {s:?}");
            assert_eq!(e, format!("the ResourceName {s:?} is invalid"));
        }
    }

    // `--resource-domain`: what plugin::build accepts, the simulator and
    // CDI runtimes must accept too.
    let domain_ok = extended_resource_name(&format!("{s}/crand"))
        && extended_resource_name(&format!("{s}/kvm"))
        && cdi_vendor_or_class(s);
    match plugin::build(&plugin_flags(&[], &[], s, 3, 1)) {
        Ok(plugins) => {
            assert_eq!(plugins.len(), 2, "--resource-domain {s:?}: both plugins");
            for p in &plugins {
                check_plugin_names(s, p.as_ref());
            }
            assert!(domain_ok, "--resource-domain {s:?} accepted");
        }
        Err(Error::Invalid(e)) => {
            assert!(
                e.starts_with("--resource-domain "),
                "--resource-domain {s:?} refused without naming the flag: {e}"
            );
            assert!(!domain_ok, "--resource-domain {s:?} refused: {e}");
        }
        Err(e) => panic!("--resource-domain {s:?}: {e}"),
    }

    // --dev-dir is free text, and it ends up in the CDI spec.
    let kvm = plugin::kvm::Kvm::new(DOMAIN, Path::new(s), 1);
    let spec = cdi::render(&kvm);
    let host_path = spec
        .split_once("\"hostPath\": ")
        .and_then(|(_, rest)| json_string(rest))
        .unwrap_or_else(|| panic!("--dev-dir {s:?}: hostPath is not a JSON string:\n{spec}"));
    assert_eq!(
        host_path,
        Path::new(s).join("kvm").display().to_string(),
        "--dev-dir {s:?}: hostPath"
    );

    check_env_name(s);

    match plugin::parse_index(s, "crand", CRAND_COUNT) {
        Some(n) => assert!(
            n < CRAND_COUNT && s == format!("crand{n}"),
            "parse_index({s:?}) = {n}"
        ),
        None => assert!(
            (0..CRAND_COUNT).all(|n| s != format!("crand{n}")),
            "parse_index({s:?}) refused a device ID"
        ),
    }

    assert_eq!(
        s.parse::<Injection>().is_ok(),
        matches!(s, "cdi" | "device-spec" | "both"),
        "--device-injection {s:?}"
    );
}

// ------------------------------------------------------------------- flags

/// `split_equals` by its rule: before a `--` argument, `--flag=value`
/// becomes `--flag`, `value` (split at the first `=`); all else is kept.
fn check_split(args: &[String], split: &[String]) {
    let mut out = split.iter();
    let mut options = true;
    for arg in args {
        options &= arg != "--";
        let next = out.next().map(String::as_str);
        match arg.split_once('=') {
            Some((flag, value)) if options && flag.starts_with("--") => {
                assert_eq!(next, Some(flag), "split_equals({args:?}) = {split:?}");
                assert_eq!(
                    out.next().map(String::as_str),
                    Some(value),
                    "split_equals({args:?}) = {split:?}"
                );
            }
            _ => assert_eq!(
                next,
                Some(arg.as_str()),
                "split_equals({args:?}) = {split:?}"
            ),
        }
    }
    assert!(
        out.next().is_none(),
        "split_equals({args:?}) = {split:?}: extra"
    );
}

/// The flags of a `run` or `cdi` with these values, the others empty.
fn plugin_flags<'a>(
    plugins: &'a [String],
    devices: &'a [String],
    domain: &'a str,
    crand: usize,
    kvm: usize,
) -> plugin::Flags<'a> {
    plugin::Flags {
        plugins,
        devices,
        domain,
        dev_dir: Path::new(NO_DIR),
        crand_count: crand,
        kvm_count: kvm,
    }
}

/// The flag `plugin::build` must name in its refusal, by its documented
/// rules, or `None` when it must build the plugins: `--plugin` names only
/// crand, kvm or none; the domain must make valid resource names and a CDI
/// vendor; each chosen plugin's count is 1..=MAX_DEVICES; each `--device`
/// parses and names a resource once.
fn build_refusal(
    asked: &[String],
    devices: &[String],
    domain: &str,
    crand: usize,
    kvm: usize,
) -> Option<&'static str> {
    if asked
        .iter()
        .any(|p| p != "crand" && p != "kvm" && p != "none")
    {
        return Some("--plugin");
    }
    if !extended_resource_name(&format!("{domain}/x")) || !cdi_vendor_or_class(domain) {
        return Some("--resource-domain");
    }
    let mut chosen: Vec<&str> = Vec::new();
    for p in asked.iter().filter(|p| *p != "none") {
        if !chosen.contains(&p.as_str()) {
            chosen.push(p);
        }
    }
    if asked.is_empty() {
        chosen = vec!["crand", "kvm"];
    }
    for name in ["crand", "kvm"].iter().filter(|n| chosen.contains(n)) {
        let (flag, n) = match *name {
            "crand" => ("--crand-count", crand),
            _ => ("--kvm-count", kvm),
        };
        if !(1..=MAX_DEVICES).contains(&n) {
            return Some(flag);
        }
    }
    let mut names = Vec::new();
    for d in devices {
        match plugin::dev::DeviceFlag::parse(d) {
            Ok(f) if !names.contains(&f.name) => names.push(f.name),
            _ => return Some("--device"),
        }
    }
    for name in &names {
        if !extended_resource_name(&format!("{domain}/{name}")) {
            return Some("--resource-domain");
        }
    }
    None
}

fn check_build(
    what: &str,
    asked: &[String],
    devices: &[String],
    domain: &str,
    crand: usize,
    kvm: usize,
) {
    let result = plugin::build(&plugin_flags(asked, devices, domain, crand, kvm));
    match (result, build_refusal(asked, devices, domain, crand, kvm)) {
        (Ok(plugins), None) => {
            let names: Vec<&str> = plugins.iter().map(|p| p.name()).collect();
            for p in &plugins {
                assert_eq!(
                    p.resource(),
                    format!("{domain}/{}", p.name()),
                    "{what}: resource"
                );
            }
            if names.contains(&"crand") {
                assert!(
                    (1..=MAX_DEVICES).contains(&crand),
                    "{what}: --crand-count {crand} accepted"
                );
            }
            if names.contains(&"kvm") {
                assert!(
                    (1..=MAX_DEVICES).contains(&kvm),
                    "{what}: --kvm-count {kvm} accepted"
                );
            }
            let mut unique = names.clone();
            unique.dedup();
            assert_eq!(unique, names, "{what}: a plugin built twice");
        }
        (Err(Error::Invalid(e)), Some(flag)) => assert!(
            e.starts_with(&format!("{flag} ")),
            "{what}: refused without naming {flag}: {e}"
        ),
        (Ok(_), Some(flag)) => panic!("{what}: accepted, but {flag} is invalid"),
        (Err(e), _) => panic!("{what}: refused: {e}"),
    }
}

/// The arguments that give `r` back, in the `--flag=value` form.
fn run_args(r: &cli::RunArgs) -> Vec<String> {
    let mut args = vec!["run".to_string()];
    args.extend(r.plugin.iter().map(|p| format!("--plugin={p}")));
    args.extend(r.device.iter().map(|d| format!("--device={d}")));
    args.push(format!(
        "--device-plugin-dir={}",
        r.device_plugin_dir.display()
    ));
    args.push(format!("--dev-dir={}", r.dev_dir.display()));
    args.push(format!("--cdi-dir={}", r.cdi_dir.display()));
    args.push(format!("--crand-count={}", r.crand_count));
    args.push(format!("--kvm-count={}", r.kvm_count));
    args.push(format!("--resource-domain={}", r.resource_domain));
    let injection = match r.device_injection {
        Injection::Cdi => "cdi",
        Injection::DeviceSpec => "device-spec",
        Injection::Both => "both",
    };
    args.push(format!("--device-injection={injection}"));
    args.push(format!(
        "--log-level={}",
        r.log_level.as_str().to_ascii_lowercase()
    ));
    if let Some(pid) = &r.pid_file {
        args.push(format!("--pid-file={}", pid.display()));
    }
    let registration = match r.registration {
        cli::Registration::KubeletSock => "kubelet-sock",
        cli::Registration::PluginsRegistry => "plugins-registry",
    };
    args.push(format!("--registration={registration}"));
    args.push(format!(
        "--plugins-registry-dir={}",
        r.plugins_registry_dir.display()
    ));
    if let Some(f) = &r.metrics_file {
        args.push(format!("--metrics-file={}", f.display()));
    }
    if let Some(a) = &r.metrics_listen {
        args.push(format!("--metrics-listen={a}"));
    }
    if let Some(c) = &r.config {
        args.push(format!("--config={}", c.display()));
    }
    args
}

fn parse(args: &[String]) -> Result<cli::Cli, argh::EarlyExit> {
    let split = cli::split_equals(args.iter().cloned());
    check_split(args, &split);
    let strs: Vec<&str> = split.iter().map(String::as_str).collect();
    cli::Cli::from_args(&["kubelet-plugin"], &strs)
}

/// Arbitrary bytes split on NUL into arguments (none for no bytes), through
/// `split_equals` and argh as `kubelet-plugin` parses its command line, then
/// `plugin::build` for a parsed `run` or `cdi`.
///
/// Invariants: no panic; `split_equals` splits exactly the `--flag=value`
/// arguments before `--`; `plugin::build` refuses an unknown `--plugin`, a
/// bad `--resource-domain`, a `--crand-count` or `--kvm-count` of a chosen
/// plugin outside 1..=16384, a bad or repeated `--device`, naming the
/// flag, and builds every chosen plugin once otherwise; a parsed `run` written back as `--flag=value`
/// arguments parses to the same flags.
pub fn flags(data: &[u8]) {
    let args: Vec<String> = match data {
        [] => Vec::new(),
        _ => data
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    };
    let Ok(cli) = parse(&args) else {
        return;
    };
    let what = format!("kubelet-plugin {args:?}");
    match &cli.command {
        Some(cli::Command::Run(r)) => {
            check_build(
                &what,
                &r.plugin,
                &r.device,
                &r.resource_domain,
                r.crand_count,
                r.kvm_count,
            );
            let again = run_args(r);
            match parse(&again) {
                Ok(cli::Cli {
                    command: Some(cli::Command::Run(r2)),
                    ..
                }) => assert_eq!(
                    format!("{r2:?}"),
                    format!("{r:?}"),
                    "{what}: written back as {again:?}"
                ),
                Ok(other) => panic!("{what}: written back as {again:?}, parsed as {other:?}"),
                Err(e) => panic!("{what}: written back as {again:?}, refused: {}", e.output),
            }
        }
        Some(cli::Command::Cdi(c)) => check_build(
            &what,
            &c.plugin,
            &c.device,
            &c.resource_domain,
            c.crand_count,
            c.kvm_count,
        ),
        Some(cli::Command::Status(_)) | None => {}
    }
}
