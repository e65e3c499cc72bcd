//! Fuzz harnesses: one function per cargo-fuzz target in `src/fuzz/`, each
//! taking arbitrary bytes, driving one part of the crate with them and
//! panicking, with a message naming the broken rule, when an invariant fails.
//! The `fuzz` test replays the corpus in `testdata/fuzz/<target>/` (and
//! mutations of it) through the same functions, so `cargo test` keeps them
//! honest without nightly or cargo-fuzz.
//!
//! | target | input | code under test |
//! |---|---|---|
//! | [`allocate`] | a protobuf `AllocateRequest` | [`Service::allocate_response`] of every kind `--plugin` chooses |
//! | [`names`] | one string | [`validate`], the `--resource-domain` check, CDI kinds, names and specs of every kind |
//! | [`flags`] | arguments split on NUL | [`cli::parse`] (`split_equals`, argh, the kinds' flags), [`kinds::build`] |
//!
//! The harnesses take the kinds from the registry ([`KINDS`]): a new kind
//! is fuzzed with the others, built from its own flags.
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

use protobuf::Message as _;

use crate::{
    api::api,
    cli,
    deviceplugin::{
        allocate::{AllocError, Injection},
        server::Service,
    },
    error::Error,
    inventory::{
        Resource, cdi,
        device::{Device, Health, Reason},
        kinds::{self, Flags, KINDS, KindValues, MAX_DEVICES, Plugin},
    },
    sim::validate,
    watch::Watch,
};

/// The domain the allocate harness's plugins use.
const DOMAIN: &str = "github.com.ihcsim";
/// A dev dir that does not exist: nothing may be made or read there.
const NO_DIR: &str = "/nonexistent/kubelet-plugin-fuzz/dev";
/// What every count flag of the kinds is set to for the allocate harness.
const COUNT: usize = 6;
/// The count of the `parse_index` check.
const CRAND_COUNT: usize = 6;

// ---------------------------------------------------------------- allocate

/// One plugin with its fixed device snapshot, served with one injection.
struct Case {
    plugin: Arc<dyn Plugin>,
    devices: Vec<Device>,
    injection: Injection,
    service: Service,
}

/// Every device `plugin` lists, with its node, and every third one (1, 4,
/// ..) Unhealthy, the others Healthy.
fn snapshot(plugin: &dyn Plugin) -> Vec<Device> {
    plugin
        .probe()
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let check = if i % 3 == 1 {
                Err(Reason::Missing)
            } else {
                Ok(())
            };
            Device::new(d.id, d.node, check)
        })
        .collect()
}

/// The kinds' flags with every count at `count`, the rest at defaults.
fn counts(count: usize) -> KindValues {
    KINDS
        .iter()
        .flat_map(|k| k.flags)
        .filter(|f| f.number)
        .map(|f| (f.name, vec![count.to_string()]))
        .collect()
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let values = counts(COUNT);
        let plugins = kinds::build(&Flags::new(&[], DOMAIN, Path::new(NO_DIR), &values))
            .unwrap_or_else(|e| panic!("building the kinds' plugins failed: {e}"));
        let mut cases = Vec::new();
        for plugin in plugins {
            let devices = snapshot(plugin.as_ref());
            for injection in [Injection::Cdi, Injection::DeviceSpec, Injection::Both] {
                let resource = Resource {
                    plugin: plugin.clone(),
                    devices: Watch::new(devices.clone()),
                };
                let service = Service::new(
                    resource,
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

/// Why Allocate must refuse `req`, by the rules `allocate::allocate` and the
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

/// The node behind a device ID, as the snapshot has it.
fn node_of<'a>(case: &'a Case, id: &str) -> &'a crate::inventory::device::DeviceNode {
    &case
        .devices
        .iter()
        .find(|d| d.id == id)
        .expect("answered IDs are checked to be known first")
        .node
}

fn check_container(case: &Case, ids: &[String], resp: &api::ContainerAllocateResponse, what: &str) {
    let resource = case.plugin.resource();
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
    let mut nodes = Vec::new();
    for id in ids {
        let node = node_of(case, id);
        if !nodes
            .iter()
            .any(|n: &&crate::inventory::device::DeviceNode| n.cdi_name == node.cdi_name)
        {
            nodes.push(node);
        }
    }
    let cdi: Vec<&str> = resp.cdi_devices.iter().map(|c| c.name.as_str()).collect();
    let want_cdi: Vec<String> = match case.injection.cdi() {
        true => nodes
            .iter()
            .map(|n| format!("{resource}={}", n.cdi_name))
            .collect(),
        false => Vec::new(),
    };
    assert_eq!(cdi, want_cdi, "{what}: CDI names");
    for full in &cdi {
        let (kind, device) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("{what}: CDI name {full:?} has no '='"));
        assert_eq!(kind, resource, "{what}: CDI kind of {full:?}");
        assert!(
            ids.iter().any(|id| node_of(case, id).cdi_name == device),
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
            .map(|n| {
                assert!(
                    n.host_path.starts_with(NO_DIR),
                    "{what}: {n:?} is not under the dev dir"
                );
                (n.container_path.clone(), n.host_path.display().to_string())
            })
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
/// skipped), answered by the plugin of every kind `--plugin` chooses (every
/// count flag at 6: crand0..5, kvm0..5), each with every injection mode,
/// from a fixed snapshot in which every third device (`crand1`, `crand4`,
/// `kvm1`, ..) is Unhealthy.
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
    let file = cdi::file_name(resource);
    assert!(
        !file.contains('/') && file.ends_with(".json") && file.len() > ".json".len(),
        "spec file name {file:?} of {resource:?}"
    );
    let devices = p.probe();
    let spec = cdi::render(resource, &devices);
    assert!(
        spec.contains(&format!("\"kind\": \"{resource}\",")),
        "the spec of {resource:?} lacks its kind:\n{spec}"
    );
    assert!(
        !spec.chars().any(|c| c.is_control() && c != '\n'),
        "raw control character in the spec of {resource:?}"
    );
    for node in cdi::nodes(&devices) {
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
        crate::k8s_names::dns_subdomain(s),
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

    // `--resource-domain`: what kinds::build accepts, the simulator and
    // CDI runtimes must accept too.
    let names = kinds::plugin_names();
    let domain_ok = names
        .iter()
        .all(|n| extended_resource_name(&format!("{s}/{n}")))
        && cdi_vendor_or_class(s);
    let defaults = KindValues::new();
    match kinds::build(&Flags::new(&[], s, Path::new(NO_DIR), &defaults)) {
        Ok(plugins) => {
            assert_eq!(
                plugins.len(),
                names.len(),
                "--resource-domain {s:?}: every kind"
            );
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

    // --dev-dir is free text, and it ends up in the CDI specs.
    let plugins = kinds::build(&Flags::new(&[], DOMAIN, Path::new(s), &defaults))
        .unwrap_or_else(|e| panic!("--dev-dir {s:?}: {e}"));
    for p in &plugins {
        let devices = p.probe();
        let spec = cdi::render(p.resource(), &devices);
        let host_paths: Vec<String> = spec
            .split("\"hostPath\": ")
            .skip(1)
            .map(|rest| {
                json_string(rest).unwrap_or_else(|| {
                    panic!("--dev-dir {s:?}: hostPath is not a JSON string:\n{spec}")
                })
            })
            .collect();
        let want: Vec<String> = cdi::nodes(&devices)
            .iter()
            .map(|n| n.host_path.display().to_string())
            .collect();
        assert_eq!(
            host_paths,
            want,
            "--dev-dir {s:?}: hostPath of {}",
            p.resource()
        );
        assert!(
            want.iter().all(|h| h.starts_with(s)),
            "--dev-dir {s:?}: a node outside it: {want:?}"
        );
    }

    check_env_name(s);

    match kinds::parse_index(s, "crand", CRAND_COUNT) {
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

/// The flag `kinds::build` must name in its refusal, by its documented
/// rules, or `None` when it must build the plugins: `--plugin` names only
/// a kind of the registry or none; the domain must make valid resource
/// names and a CDI vendor; each count flag of a chosen kind is
/// 1..=MAX_DEVICES; each `--device` parses and names a resource once.
fn build_refusal(asked: &[String], domain: &str, values: &KindValues) -> Option<&'static str> {
    let names = kinds::plugin_names();
    if asked
        .iter()
        .any(|p| p != kinds::NO_PLUGIN && !names.contains(&p.as_str()))
    {
        return Some("--plugin");
    }
    if !extended_resource_name(&format!("{domain}/x")) || !cdi_vendor_or_class(domain) {
        return Some("--resource-domain");
    }
    let chosen = |k: &&kinds::Kind| {
        !k.by_plugin_flag || asked.is_empty() || asked.iter().any(|p| p == k.name)
    };
    let flags = Flags::new(asked, domain, Path::new(NO_DIR), values);
    for flag in KINDS.iter().filter(chosen).flat_map(|k| k.flags) {
        if flag.number {
            let n = flags.value(flag.name).and_then(|v| v.parse::<usize>().ok());
            if !n.is_some_and(|n| (1..=MAX_DEVICES).contains(&n)) {
                return Some(flag.name);
            }
        }
    }
    let mut names = Vec::new();
    for d in flags.values("--device") {
        match kinds::dev::DeviceFlag::parse(d) {
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

fn check_build(what: &str, asked: &[String], domain: &str, values: &KindValues) {
    let flags = Flags::new(asked, domain, Path::new(NO_DIR), values);
    match (kinds::build(&flags), build_refusal(asked, domain, values)) {
        (Ok(plugins), None) => {
            let mut names: Vec<&str> = plugins.iter().map(|p| p.resource()).collect();
            for p in &plugins {
                assert_eq!(
                    p.resource(),
                    format!("{domain}/{}", p.name()),
                    "{what}: resource"
                );
                assert!(
                    KINDS.iter().any(|k| k.name == p.kind()),
                    "{what}: {p:?} of no kind"
                );
            }
            names.sort();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "{what}: a plugin built twice");
        }
        (Err(Error::Invalid(e)), Some(flag)) => assert!(
            e.starts_with(&format!("{flag} ")),
            "{what}: refused without naming {flag}: {e}"
        ),
        (Ok(_), Some(flag)) => panic!("{what}: accepted, but {flag} is invalid"),
        (Err(e), _) => panic!("{what}: refused: {e}"),
    }
}

/// The arguments that give `r` (and the kinds' `values`) back, in the
/// `--flag=value` form.
fn run_args(r: &cli::RunArgs, values: &KindValues) -> Vec<String> {
    let mut args = vec!["kubelet-plugin".to_string(), "run".to_string()];
    args.extend(r.plugin.iter().map(|p| format!("--plugin={p}")));
    for (flag, vs) in values {
        args.extend(vs.iter().map(|v| format!("{flag}={v}")));
    }
    args.push(format!(
        "--device-plugin-dir={}",
        r.device_plugin_dir.display()
    ));
    args.push(format!("--dev-dir={}", r.dev_dir.display()));
    args.push(format!("--cdi-dir={}", r.cdi_dir.display()));
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
    for api in &r.api {
        args.push(
            match api {
                cli::ApiFlag::DevicePlugin => "--api=device-plugin",
                cli::ApiFlag::Dra => "--api=dra",
            }
            .to_string(),
        );
    }
    if let Some(k) = &r.kubeconfig {
        args.push(format!("--kubeconfig={}", k.display()));
    }
    if let Some(n) = &r.node_name {
        args.push(format!("--node-name={n}"));
    }
    args.push(format!("--dra-plugin-dir={}", r.dra_plugin_dir.display()));
    args
}

/// `args` (without the program) through `kubelet-plugin`'s own parsing.
fn parse(args: &[String]) -> Option<cli::Parsed> {
    check_split(args, &cli::split_equals(args.iter().cloned()));
    let mut all = vec!["kubelet-plugin".to_string()];
    all.extend(args.iter().cloned());
    cli::parse(all).ok()
}

/// Arbitrary bytes split on NUL into arguments (none for no bytes), through
/// [`cli::parse`] as `kubelet-plugin` parses its command line (no
/// `--config`: that reads a file), then `kinds::build` for a parsed `run`
/// or `cdi`.
///
/// Invariants: no panic; `split_equals` splits exactly the `--flag=value`
/// arguments before `--`; `kinds::build` refuses an unknown `--plugin`, a
/// bad `--resource-domain`, a count flag of a chosen kind outside
/// 1..=16384, a bad or repeated `--device`, naming the flag, and builds
/// every chosen plugin once otherwise; a parsed `run` written back as
/// `--flag=value` arguments parses to the same flags.
pub fn flags(data: &[u8]) {
    let args: Vec<String> = match data {
        [] => Vec::new(),
        _ => data
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    };
    // `--config` reads a file: not from fuzz input.
    if args.iter().any(|a| a.starts_with("--config")) {
        return;
    }
    let Some(parsed) = parse(&args) else {
        return;
    };
    let what = format!("kubelet-plugin {args:?}");
    match &parsed.cli.command {
        Some(cli::Command::Run(r)) => {
            check_build(&what, &r.plugin, &r.resource_domain, &parsed.kinds);
            let again = run_args(r, &parsed.kinds);
            match cli::parse(again.clone()) {
                Ok(cli::Parsed {
                    cli:
                        cli::Cli {
                            command: Some(cli::Command::Run(r2)),
                            ..
                        },
                    kinds,
                }) => {
                    assert_eq!(
                        format!("{r2:?}"),
                        format!("{r:?}"),
                        "{what}: written back as {again:?}"
                    );
                    assert_eq!(kinds, parsed.kinds, "{what}: written back as {again:?}");
                }
                Ok(other) => panic!("{what}: written back as {again:?}, parsed as {other:?}"),
                Err(e) => panic!("{what}: written back as {again:?}, refused: {}", e.output),
            }
        }
        Some(cli::Command::Cdi(c)) => {
            check_build(&what, &c.plugin, &c.resource_domain, &parsed.kinds)
        }
        Some(cli::Command::Status(_) | cli::Command::Reload(_)) | None => {}
    }
}
