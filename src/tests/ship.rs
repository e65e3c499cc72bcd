//! Tests of the ways the plugin ships: the static binary, the init script,
//! the systemd unit, the manifests in `kubelet/` and the make targets that
//! move them. Real processes, real sockets, real device nodes, temp dirs
//! only; every wait is bounded.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

mod common;

use common::{Dirs, dirs};
use kubelet_plugin::sim::Sim;
use nix::sys::{
    signal::Signal,
    stat::{Mode, SFlag, mknod, stat},
};
use serde::Deserialize as _;
use serde_yaml::Value;

const CRAND: &str = "github.com.ihcsim/crand";
const KVM: &str = "github.com.ihcsim/kvm";
const WAIT: Duration = Duration::from_secs(5);
/// For whole commands (make, the init script): generous, but bounded.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn plugin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubelet-plugin")
}

/// Runs `cmd` to the end, at most [`COMMAND_LIMIT`]; stdin is empty.
fn run(cmd: Command) -> Output {
    common::output(cmd, COMMAND_LIMIT)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn make_kvm_node(d: &Dirs) {
    let host = stat("/dev/kvm").expect("the host has /dev/kvm");
    mknod(
        &d.dev.join("kvm"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        host.st_rdev,
    )
    .unwrap();
}

/// Whether this build is the static one `make test` builds (crt-static,
/// the shipped release profile): the binaries under test are then the
/// ones that ship.
const STATIC: bool = cfg!(target_feature = "crt-static");

#[test]
fn test_static_binary_has_no_dynamic_deps_and_serves() {
    let bin = PathBuf::from(plugin_bin());
    if !STATIC {
        return common::skip(
            "test_static_binary_has_no_dynamic_deps_and_serves",
            "not a static build; `make test` builds one (crt-static)",
        );
    }
    let mut file = Command::new("file");
    file.arg("-b").arg(&bin);
    let file = text(&run(file));
    assert!(file.contains("static-pie linked"), "{file}");
    assert!(!file.contains("interpreter") && !file.contains("not stripped"));
    let mut ldd = Command::new("ldd");
    ldd.arg(&bin);
    let ldd = text(&run(ldd));
    assert!(ldd.contains("statically linked"), "{ldd}");
    assert!(!ldd.contains("=>"), "ldd lists libraries: {ldd}");
    let mut version = Command::new(&bin);
    version.arg("--version");
    let version = text(&run(version));
    assert!(
        version.starts_with(&format!("kubelet-plugin {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let mut p = common::start(&bin, &d, &["--plugin", "crand"]);
    let devices = sim.wait_ready(CRAND, WAIT).unwrap();
    assert_eq!(devices.len(), 3, "{devices:?}");
    let resp = sim.allocate(CRAND, &["crand1".into()]).unwrap();
    let names: Vec<_> = resp.container_responses[0]
        .cdi_devices
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["github.com.ihcsim/crand=crand1"]);
    p.signal(Signal::SIGTERM);
    let status = p.wait_exit(WAIT).expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", p.log());
    assert!(!d.plugin.join("crand.sock").exists());
}

/// The init script under `shell`, configured by a copy of the shipped
/// defaults with the paths pointed into a temp dir.
struct Init {
    shell: &'static [&'static str],
    config: PathBuf,
    pidfile: PathBuf,
    logfile: PathBuf,
}

impl Init {
    fn new(shell: &'static [&'static str], d: &Dirs, dev_dir: &Path) -> Init {
        let shipped =
            std::fs::read_to_string(repo().join("kubelet/default/kubelet-plugin")).unwrap();
        let tmp = d.tmp.path();
        let (config, pidfile, logfile) = (
            tmp.join("defaults"),
            tmp.join("run/kubelet-plugin.pid"),
            tmp.join("kubelet-plugin.log"),
        );
        std::fs::create_dir(tmp.join("run")).unwrap();
        let overrides = format!(
            "DAEMON=\"{}\"\nDEVICE_PLUGIN_DIR=\"{}\"\nDEV_DIR=\"{}\"\nCDI_DIR=\"{}\"\n\
             PIDFILE=\"{}\"\nLOGFILE=\"{}\"\nKUBELET_PLUGIN_ARGS=\"--plugin crand --log-level debug\"\n",
            plugin_bin(),
            d.plugin.display(),
            dev_dir.display(),
            d.cdi.display(),
            pidfile.display(),
            logfile.display(),
        );
        std::fs::write(&config, shipped + &overrides).unwrap();
        Init {
            shell,
            config,
            pidfile,
            logfile,
        }
    }

    /// Runs one action; returns the exit code and the output.
    fn run(&self, action: &str) -> (i32, String) {
        let mut cmd = Command::new(self.shell[0]);
        cmd.args(&self.shell[1..])
            .arg(repo().join("kubelet/init.d/kubelet-plugin"))
            .arg(action)
            .env("KUBELET_PLUGIN_CONFIG", &self.config);
        let out = run(cmd);
        (out.status.code().unwrap_or(-1), text(&out))
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(&self.pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.logfile).unwrap_or_default()
    }
}

/// start, status, a second start, stop, status, under dash and busybox.
#[test]
fn test_init_script_start_status_stop() {
    for shell in [&["sh"][..], &["busybox", "sh"][..]] {
        let d = dirs();
        let init = Init::new(shell, &d, &d.dev);
        let sim = Sim::start(&d.plugin).unwrap();
        assert_eq!(init.run("status").0, 3, "{shell:?}: status before start");

        let (code, out) = init.run("start");
        assert_eq!(code, 0, "{shell:?}: {out}{}", init.log());
        let pid = init.pid();
        assert!(out.contains(&format!("started (pid {pid})")), "{out}");
        sim.wait_ready(CRAND, WAIT).unwrap();

        let (code, out) = init.run("status");
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("is running (pid {pid})")), "{out}");
        assert!(
            out.contains(
                "github.com.ihcsim/crand (crand.sock, kubelet-sock, registered): 3 devices, 3 healthy"
            ),
            "{out}"
        );

        let (code, out) = init.run("start");
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("already running (pid {pid})")),
            "{out}"
        );
        assert_eq!(init.pid(), pid);
        assert!(alive(pid));
        // A second copy would have logged its refusal by the pid file lock.
        assert!(!init.log().contains("second one"), "{}", init.log());

        let (code, out) = init.run("stop");
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("stopped"), "{out}");
        assert!(!alive(pid), "pid {pid} still runs after stop");
        assert!(!init.pidfile.exists());
        assert!(!d.plugin.join("crand.sock").exists());
        assert!(init.log().contains("stopped"), "{}", init.log());

        let (code, out) = init.run("status");
        assert_eq!(code, 3, "{out}");
        assert!(out.contains("is not running"), "{out}");
        assert_eq!(init.run("stop").0, 0, "stop when stopped is no error");
    }
}

/// A pid file naming another live program, and a plugin that cannot start.
#[test]
fn test_init_script_stale_pid_file_and_failed_start() {
    let d = dirs();
    let init = Init::new(&["sh"], &d, &d.dev);
    let sim = Sim::start(&d.plugin).unwrap();
    // Our own pid: alive, but not kubelet-plugin.
    std::fs::write(&init.pidfile, format!("{}\n", std::process::id())).unwrap();
    let (code, out) = init.run("status");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("dead but"), "{out}");
    let (code, out) = init.run("start");
    assert_eq!(code, 0, "{out}{}", init.log());
    assert_ne!(init.pid(), std::process::id());
    sim.wait_ready(CRAND, WAIT).unwrap();
    assert_eq!(init.run("stop").0, 0);
    assert!(alive(std::process::id()));

    let missing = d.tmp.path().join("no-such-dev");
    let d3 = dirs();
    let broken = Init::new(&["sh"], &d3, &missing);
    let (code, out) = broken.run("start");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("failed to start"), "{out}");
    assert!(
        out.contains("--dev-dir"),
        "the plugin's own error is shown: {out}"
    );
    assert!(!broken.pidfile.exists());
    assert_eq!(broken.run("status").0, 3);
}

#[test]
fn test_systemd_unit_verifies_and_orders_around_the_kubelet() {
    let unit =
        std::fs::read_to_string(repo().join("kubelet/systemd/kubelet-plugin.service")).unwrap();
    let value = |key: &str| -> String {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(value("Restart"), "always");
    assert!(value("After").contains("containerd.service"), "{unit}");
    assert_eq!(value("Before"), "kubelet.service");
    // Reload through the plugin's own binary: no kill binary needed.
    assert_eq!(
        value("ExecReload"),
        "/usr/local/bin/kubelet-plugin reload $MAINPID"
    );
    // The unit, the init script and its config agree on the binary.
    let defaults = std::fs::read_to_string(repo().join("kubelet/default/kubelet-plugin")).unwrap();
    assert!(defaults.contains("DAEMON=\"/usr/local/bin/kubelet-plugin\""));
    assert!(value("ExecStart").starts_with("/usr/local/bin/kubelet-plugin run "));

    // systemd's own check, with the binary where the unit expects it.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("kubelet-plugin.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/kubelet-plugin", plugin_bin()),
    )
    .unwrap();
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").arg(&copy);
    let out = run(verify);
    assert!(out.status.success(), "{}", text(&out));

    // Never gives up, tells when it is ready, and is hardened: systemd's
    // own exposure score at most 2.0.
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("StartLimitIntervalSec"), "0");
    let mut security = Command::new("systemd-analyze");
    security.args(["security", "--offline=true"]).arg(&copy);
    let out = text(&run(security));
    let score: f64 = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for kubelet-plugin.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in\n{out}"));
    eprintln!("systemd exposure score: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");

    // The capabilities the unit leaves are enough: the plugin with only
    // those (setpriv) makes its nodes, opens kvm and registers both.
    let caps: Vec<String> = value("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let d = dirs();
    make_kvm_node(&d);
    std::fs::set_permissions(
        d.dev.join("kvm"),
        std::os::unix::fs::PermissionsExt::from_mode(0o660),
    )
    .unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    let cmd = common::plugin_cmd("setpriv", &d, &["--log-level", "debug"]);
    // setpriv [its options] kubelet-plugin run [the dirs...]
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg("--inh-caps=-all")
        .arg(plugin_bin())
        .args(args);
    let p = common::Plugin::spawn(&mut cmd);
    let listed = wait_listed(&sim, &[CRAND, KVM]);
    assert_eq!(listed[CRAND], 3, "{}", p.log());
    let kvm = sim.devices(KVM).unwrap();
    assert!(
        kvm.iter().all(|(_, h)| h == "Healthy"),
        "{kvm:?}\n{}",
        p.log()
    );
}

#[test]
fn test_scripts_are_posix_and_shellcheck_clean() {
    let scripts = [
        "kubelet/init.d/kubelet-plugin",
        "kubelet/default/kubelet-plugin",
        "kubelet/openrc/kubelet-plugin",
    ];
    for script in scripts {
        let path = repo().join(script);
        for shell in ["dash", "sh"] {
            let mut syntax = Command::new(shell);
            syntax.arg("-n").arg(&path);
            let out = run(syntax);
            assert!(out.status.success(), "{shell} -n {script}: {}", text(&out));
        }
        let mut check = Command::new("shellcheck");
        check.arg(&path);
        let out = run(check);
        assert!(out.status.success(), "shellcheck {script}:\n{}", text(&out));
    }
    // The README's inittab line and OpenRC service are these files'.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("::respawn:/usr/local/bin/kubelet-plugin run"),
        "inittab line"
    );
    assert!(readme.contains("kubelet/openrc/kubelet-plugin"));
}

#[test]
fn test_systemd_is_told_ready_status_and_stopping() {
    for abstract_ns in [false, true] {
        let d = dirs();
        let (sock, name) = if abstract_ns {
            let name = format!("@kubelet-plugin-test-{}", std::process::id());
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
            (
                std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap(),
                name,
            )
        } else {
            let path = d.tmp.path().join("notify");
            (
                std::os::unix::net::UnixDatagram::bind(&path).unwrap(),
                path.display().to_string(),
            )
        };
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let next = || {
            let mut buf = [0u8; 4096];
            let n = sock.recv(&mut buf).expect("a notification in time");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        // No kubelet yet: ready all the same, waiting for it.
        let mut cmd = common::plugin_cmd(plugin_bin(), &d, &["--plugin", "crand"]);
        cmd.env("NOTIFY_SOCKET", &name);
        let mut p = common::Plugin::spawn(&mut cmd);
        assert_eq!(next(), "READY=1\nSTATUS=crand waiting for the kubelet");
        let sim = Sim::start(&d.plugin).unwrap();
        sim.wait_ready(CRAND, WAIT).unwrap();
        while next() != "STATUS=crand registered" {}
        p.signal(Signal::SIGTERM);
        assert_eq!(next(), "STOPPING=1\nSTATUS=shutting down");
        assert_eq!(p.wait_exit(WAIT).unwrap().code(), Some(0), "{}", p.log());
    }
}

/// Every document of every YAML file under `kubelet/`, by file.
fn manifests() -> Vec<(PathBuf, Value)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && p.file_name().unwrap() != "run" {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("kubelet"), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            docs.push((f.clone(), v));
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, v)| v["kind"] == kind)
        .map(|(_, v)| v)
        .collect()
}

/// Waits until every resource in `want` has registered and listed its
/// devices; returns each one's device count.
fn wait_listed(sim: &Sim, want: &[&str]) -> BTreeMap<String, usize> {
    let lists = sim.wait_lists(want, WAIT).unwrap();
    want.iter()
        .zip(lists)
        .map(|(r, l)| (r.to_string(), l.len()))
        .collect()
}

/// The manifests of the device plugin side (all but `kubelet/dra/`).
fn device_plugin_manifests() -> Vec<(PathBuf, Value)> {
    let dra = repo().join("kubelet/dra");
    manifests()
        .into_iter()
        .filter(|(f, _)| !f.starts_with(&dra))
        .collect()
}

#[test]
fn test_every_yaml_parses_and_pods_request_what_the_plugin_registers() {
    let docs = device_plugin_manifests();
    assert!(docs.len() >= 4, "{docs:?}");

    // The pods' extended resources (the ones with a domain) and counts.
    let mut requested: BTreeMap<String, u64> = BTreeMap::new();
    let pods = of_kind(&docs, "Pod");
    assert_eq!(pods.len(), 3);
    for pod in pods {
        for c in pod["spec"]["containers"].as_sequence().unwrap() {
            for (name, n) in c["resources"]["limits"].as_mapping().unwrap() {
                let name = name.as_str().unwrap();
                if name.contains('/') {
                    *requested.entry(name.into()).or_default() += n.as_u64().unwrap();
                }
            }
        }
    }

    // What the plugin really registers: its default flags, and the serial
    // resource busybox-serial.yaml names, on one USB serial node.
    let d = dirs();
    make_kvm_node(&d);
    mknod(
        &d.dev.join("ttyUSB0"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o660),
        nix::sys::stat::makedev(188, 0),
    )
    .unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = common::start(plugin_bin(), &d, &["--device", "serial=ttyUSB*"]);
    let listed = wait_listed(&sim, &[CRAND, KVM, "github.com.ihcsim/serial"]);
    assert_eq!(
        requested.keys().collect::<BTreeSet<_>>(),
        listed.keys().collect::<BTreeSet<_>>()
    );
    for (name, n) in &requested {
        assert!(
            *n as usize <= listed[name],
            "{name}: pods ask {n}, plugin has {listed:?}"
        );
    }

    // The DaemonSets (kubelet.sock or the plugin watcher): node-critical,
    // privileged pods on the host's paths, without an API token they have
    // no use for, mounting exactly the dirs their args name.
    let sets = of_kind(&docs, "DaemonSet");
    assert_eq!(sets.len(), 2, "one per registration mode");
    let mut modes = BTreeSet::new();
    for ds in sets {
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["priorityClassName"], "system-node-critical");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert!(!spec["tolerations"].as_sequence().unwrap().is_empty());
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], true);
        for key in ["requests", "limits"] {
            assert!(c["resources"][key]["memory"].is_string(), "{key}");
        }
        let args = strings(&c["args"]);
        let probe = strings(&c["livenessProbe"]["exec"]["command"]);
        let mode = flag_value(&args, "--registration").unwrap_or("kubelet-sock".into());
        let socket_flag = match mode.as_str() {
            "kubelet-sock" => "--device-plugin-dir",
            "plugins-registry" => "--plugins-registry-dir",
            other => panic!("unknown mode {other}"),
        };
        let host_dirs: BTreeSet<String> = [socket_flag, "--dev-dir", "--cdi-dir"]
            .iter()
            .map(|f| flag_value(&args, f).unwrap_or_else(|| panic!("{mode}: no {f} in {args:?}")))
            .collect();
        // The probe looks where the plugin put its sockets and locks.
        for f in [socket_flag, "--cdi-dir"] {
            assert_eq!(
                flag_value(&probe, f),
                flag_value(&args, f),
                "{mode}: probe's {f}"
            );
        }
        let host_path = |volume: &str| -> String {
            spec["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == volume)
                .unwrap()["hostPath"]["path"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let mut mounted = BTreeSet::new();
        for m in c["volumeMounts"].as_sequence().unwrap() {
            let path = m["mountPath"].as_str().unwrap();
            // Same path inside and out: the CDI specs name host paths.
            assert_eq!(path, host_path(m["name"].as_str().unwrap()));
            mounted.insert(path.to_string());
        }
        assert_eq!(mounted, host_dirs, "{mode}");
        modes.insert(mode);
    }
    assert_eq!(modes.len(), 2, "{modes:?}");

    // The standalone kubelet's config: static pods where `make deploy`
    // puts them (relative paths are taken from the config file's dir).
    let kc = of_kind(&docs, "KubeletConfiguration");
    assert_eq!(kc.len(), 1);
    assert_eq!(kc[0]["featureGates"]["ResourceHealthStatus"], true);
    assert!(
        kc[0]["containerRuntimeEndpoint"]
            .as_str()
            .unwrap()
            .contains("containerd.sock")
    );
    let static_pods = repo()
        .join("kubelet")
        .join(kc[0]["staticPodPath"].as_str().unwrap());
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let make_default = makefile
        .lines()
        .find_map(|l| l.strip_prefix("STATIC_POD_DIR")?.trim().strip_prefix("?="))
        .unwrap()
        .trim();
    assert_eq!(static_pods, repo().join(make_default));
}

/// The DRA manifests agree with the driver: each DeviceClass selects one
/// resource by the attribute the driver publishes and names its device
/// plugin resource as `extendedResourceName` (v1); the ClusterRole grants
/// exactly the calls the driver makes; the DaemonSet runs `--api dra` with
/// that account, its node's name, and the dirs mounted at the host's paths;
/// the claims name classes that exist. (The DRA suite applies them to real
/// clusters.)
#[test]
fn test_dra_manifests_match_what_the_driver_publishes_and_calls() {
    let dra = repo().join("kubelet/dra");
    let all = manifests();
    for version in ["v1", "v1beta1"] {
        let dir = if version == "v1" {
            dra.clone()
        } else {
            dra.join("v1beta1")
        };
        let docs: Vec<(PathBuf, Value)> = all
            .iter()
            .filter(|(f, _)| f.parent() == Some(dir.as_path()))
            .cloned()
            .collect();
        let classes = of_kind(&docs, "DeviceClass");
        let mut names = BTreeSet::new();
        for c in &classes {
            assert_eq!(c["apiVersion"], format!("resource.k8s.io/{version}"));
            let name = c["metadata"]["name"].as_str().unwrap();
            let resource = name.strip_suffix(".github.com.ihcsim").unwrap();
            let cel = c["spec"]["selectors"][0]["cel"]["expression"]
                .as_str()
                .unwrap();
            assert!(
                cel.contains("device.driver == \"github.com.ihcsim\""),
                "{cel}"
            );
            assert!(
                cel.contains(&format!(
                    "device.attributes[\"github.com.ihcsim\"].resource == \"{resource}\""
                )),
                "{cel}"
            );
            let extended = &c["spec"]["extendedResourceName"];
            match version {
                "v1" => assert_eq!(extended, &format!("github.com.ihcsim/{resource}")),
                _ => assert!(extended.is_null(), "1.32 has no extendedResourceName"),
            }
            names.insert(name.to_string());
        }
        assert_eq!(names.len(), 3, "{names:?}");
        for t in of_kind(&docs, "ResourceClaimTemplate") {
            for r in t["spec"]["spec"]["devices"]["requests"]
                .as_sequence()
                .unwrap()
            {
                let class = match version {
                    "v1" => &r["exactly"]["deviceClassName"],
                    _ => &r["deviceClassName"],
                };
                assert!(names.contains(class.as_str().unwrap()), "{class:?}");
            }
        }
        // claims.yaml's crand and kvm pods, serial.yaml's serial pod.
        assert_eq!(of_kind(&docs, "Pod").len(), 3);
    }

    let docs: Vec<(PathBuf, Value)> = all
        .iter()
        .filter(|(f, _)| f.parent() == Some(dra.as_path()))
        .cloned()
        .collect();
    let role = of_kind(&docs, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role[0]["rules"].as_sequence().unwrap() {
        for r in rule["resources"].as_sequence().unwrap() {
            for v in rule["verbs"].as_sequence().unwrap() {
                granted.insert(format!("{} {}", r.as_str().unwrap(), v.as_str().unwrap()));
            }
        }
    }
    let calls = [
        "nodes get",
        "resourceclaims get",
        "resourceslices create",
        "resourceslices delete",
        "resourceslices get",
        "resourceslices list",
        "resourceslices update",
    ];
    assert_eq!(granted, calls.iter().map(|s| s.to_string()).collect());
    let account = &of_kind(&docs, "ServiceAccount")[0]["metadata"]["name"];
    let binding = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(&binding[0]["subjects"][0]["name"], account);

    let ds = of_kind(&docs, "DaemonSet");
    let spec = &ds[0]["spec"]["template"]["spec"];
    assert_eq!(&spec["serviceAccountName"], account);
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--api=dra"), "{args:?}");
    assert_eq!(c["env"][0]["name"], "NODE_NAME");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let mut mounted = BTreeSet::new();
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let v = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        assert_eq!(m["mountPath"], v["hostPath"]["path"]);
        mounted.insert(m["mountPath"].as_str().unwrap().to_string());
    }
    let want = [
        "/dev",
        "/var/lib/kubelet/plugins",
        "/var/lib/kubelet/plugins_registry",
        "/var/run/cdi",
    ];
    assert_eq!(mounted, want.iter().map(|s| s.to_string()).collect());
}

/// A YAML sequence of strings.
fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The value of `--flag=value` in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
        .map(str::to_string)
}

/// The container of the DaemonSet in kubelet/daemonset/`file`: its args
/// and its liveness probe's command, with the host's dirs replaced by
/// `d`'s (the plugin watcher's dir by `registry`).
fn daemonset_commands(file: &str, d: &Dirs, registry: &Path) -> (Vec<String>, Vec<String>) {
    let docs = device_plugin_manifests();
    let path = repo().join("kubelet/daemonset").join(file);
    let (_, ds) = docs
        .iter()
        .find(|(f, v)| *f == path && v["kind"] == "DaemonSet")
        .unwrap_or_else(|| panic!("no DaemonSet in {}", path.display()));
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let local = |list: Vec<String>| -> Vec<String> {
        list.iter()
            .map(|a| {
                a.replace(
                    "=/var/lib/kubelet/device-plugins",
                    &format!("={}", d.plugin.display()),
                )
                .replace(
                    "=/var/lib/kubelet/plugins_registry",
                    &format!("={}", registry.display()),
                )
                .replace("=/var/run/cdi", &format!("={}", d.cdi.display()))
                .replace("=/dev", &format!("={}", d.dev.display()))
            })
            .collect()
    };
    let args = local(strings(&c["args"]));
    let tmp = d.tmp.path().to_str().unwrap();
    assert_eq!(
        args.iter().filter(|a| a.contains(tmp)).count(),
        3,
        "the three dirs: {args:?}"
    );
    (args, local(strings(&c["livenessProbe"]["exec"]["command"])))
}

/// The image of kubelet/daemonset/Dockerfile, built by podman around the
/// static binary and run as the DaemonSet in `file` runs it (privileged,
/// read-only root, the dirs mounted at the same paths, its args): it
/// registers with the simulator outside the container (through kubelet.sock
/// or the plugin watcher's dir, as the manifest says), its liveness probe
/// passes, and it stops on SIGTERM. Podman runs in a private mount
/// namespace whose /run and /var/lib are fresh tmpfs, so nothing of it is
/// left on the host.
fn daemonset_serves_from_a_container(test: &str, file: &str) {
    // FROM scratch needs a static binary.
    if !STATIC {
        return common::skip(
            test,
            "not a static build; `make test` builds one (crt-static)",
        );
    }
    let bin = PathBuf::from(plugin_bin());
    let d = dirs();
    make_kvm_node(&d);
    let registry = d.tmp.path().join("plugins_registry");
    std::fs::create_dir(&registry).unwrap();
    let (args, probe) = daemonset_commands(file, &d, &registry);
    let watcher = flag_value(&args, "--registration").as_deref() == Some("plugins-registry");
    let base = d.tmp.path().join("podman");
    std::fs::create_dir_all(base.join("context/amd64")).unwrap();
    std::fs::copy(&bin, base.join("context/amd64/kubelet-plugin")).unwrap();
    // The limits and runtime this sandbox allows (runc: cgroup v1 hybrid).
    std::fs::write(
        base.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let podman = format!(
        "podman --root {b}/storage --runroot /run/podman --storage-driver vfs",
        b = base.display()
    );
    let tmp = d.tmp.path().display();
    let script = format!(
        "mount -t tmpfs none /run && mount -t tmpfs none /var/lib && \
         {podman} build -q --isolation chroot --platform linux/amd64 \
           -f {repo}/kubelet/daemonset/Dockerfile -t kubelet-plugin:test {b}/context >/dev/null && \
         test \"$({podman} image inspect --format '{{{{.Architecture}}}}' kubelet-plugin:test)\" = amd64 && \
         exec {podman} run --rm --network none --privileged --read-only -v {tmp}:{tmp} \
           kubelet-plugin:test {args}",
        repo = repo().display(),
        b = base.display(),
        args = args.join(" "),
    );
    let mut sim = Sim::start(&d.plugin).unwrap();
    if watcher {
        sim.watch_registry(&registry).unwrap();
    }
    let mut container = common::Plugin::spawn(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("CONTAINERS_CONF", base.join("containers.conf")),
    );
    // Building and starting a container takes a second or two here.
    let limit = Duration::from_secs(60);
    sim.wait_lists(&[CRAND, KVM], limit)
        .unwrap_or_else(|e| panic!("{e}: {}", container.log()));
    assert!(
        d.dev.join("crand0").exists(),
        "nodes made in the mounted dev dir"
    );
    let sockets = if watcher { &registry } else { &d.plugin };
    let socket = if watcher {
        "github.com.ihcsim-crand.sock"
    } else {
        "crand.sock"
    };
    assert!(sockets.join(socket).exists(), "{file}: no {socket}");
    if watcher {
        let used: Vec<_> = std::fs::read_dir(&d.plugin)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            used,
            ["kubelet.sock"],
            "{file}: the device plugin dir is not used"
        );
    }
    // The manifest's liveness probe, on these dirs, passes against it.
    assert_eq!(probe[0], "/kubelet-plugin");
    assert!(probe.iter().any(|a| a == "--liveness"), "{probe:?}");
    let mut live = Command::new(plugin_bin());
    live.args(&probe[1..]);
    let out = run(live);
    assert!(
        out.status.success(),
        "the liveness probe fails: {}",
        text(&out)
    );
    // And it found the plugins where this mode puts them.
    let mode = if watcher {
        "plugins-registry"
    } else {
        "kubelet-sock"
    };
    let seen = format!("({socket}, {mode}, registered)");
    assert!(text(&out).contains(&seen), "{seen}: {}", text(&out));
    container.signal(Signal::SIGTERM);
    let status = container.wait_exit(limit).expect("the container stops");
    assert_eq!(status.code(), Some(0), "{}", container.log());
    assert!(container.log().contains("stopped"), "{}", container.log());
    assert!(!sockets.join(socket).exists());
}

#[test]
fn test_daemonset_image_serves_from_a_container() {
    daemonset_serves_from_a_container(
        "test_daemonset_image_serves_from_a_container",
        "daemonset.yaml",
    );
}

#[test]
fn test_plugins_registry_daemonset_serves_from_a_container() {
    daemonset_serves_from_a_container(
        "test_plugins_registry_daemonset_serves_from_a_container",
        "daemonset-plugins-registry.yaml",
    );
}

fn make(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("make");
    cmd.arg("--no-print-directory")
        .arg("-C")
        .arg(repo())
        .args(args)
        // Not the outer make's (make test): its jobserver is not ours.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("KUBELET");
    let out = run(cmd);
    (out.status.code().unwrap_or(-1), text(&out))
}

#[test]
fn test_make_deploy_undeploy_and_the_kubelet_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    let dir_arg = format!("STATIC_POD_DIR={}", pods.display());

    let (code, out) = make(&["deploy", &dir_arg]);
    assert_ne!(code, 0);
    assert!(out.contains("no static pod dir"), "{out}");

    std::fs::create_dir(&pods).unwrap();
    let (code, out) = make(&["deploy", &dir_arg]);
    assert_eq!(code, 0, "{out}");
    let mut names: Vec<_> = std::fs::read_dir(&pods)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["busybox-crand.yaml", "busybox-kvm.yaml"]);
    for n in &names {
        assert_eq!(
            std::fs::read(pods.join(n)).unwrap(),
            std::fs::read(repo().join("kubelet/pods").join(n)).unwrap()
        );
    }
    let (code, out) = make(&["undeploy", &dir_arg]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_dir(&pods).unwrap().count(), 0);

    for args in [
        &["kubelet"][..],
        &["kubelet", "KUBELET=/no/such/kubelet"][..],
    ] {
        let (code, out) = make(args);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("v1.31 or newer"), "{out}");
        assert!(out.contains("https://dl.k8s.io/release/"), "{out}");
    }
}

/// What the plugin creates, and with which mode, even under umask 000:
/// sockets 0600, CDI specs and the pid file 0644, crand nodes with the mode
/// of the `/dev/random` they clone, nothing else, nothing else
/// world-writable.
#[test]
fn test_files_made_have_safe_modes_under_any_umask() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let d = dirs();
    make_kvm_node(&d);
    let sim = Sim::start(&d.plugin).unwrap();
    let pid_file = d.tmp.path().join("kp.pid");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(plugin_bin())
        .args(["run", "--pid-file"])
        .arg(&pid_file);
    for (flag, dir) in [
        ("--device-plugin-dir", &d.plugin),
        ("--dev-dir", &d.dev),
        ("--cdi-dir", &d.cdi),
    ] {
        cmd.arg(flag).arg(dir);
    }
    let _p = common::Plugin::spawn(&mut cmd);
    wait_listed(&sim, &[CRAND, KVM]);

    let random = std::fs::metadata("/dev/random")
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    let mut seen = BTreeMap::new();
    for dir in [&d.plugin, &d.dev, &d.cdi, &d.tmp.path().to_path_buf()] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                continue;
            }
            let name = e.file_name().into_string().unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let kind = meta.file_type();
            let want = match name.as_str() {
                "kubelet.sock" | "defaults" => continue, // the simulator's
                "kvm" => continue,                       // made by this test
                "crand.sock" | "kvm.sock" => {
                    assert!(kind.is_socket(), "{name}");
                    0o600
                }
                n if n.starts_with("crand") => {
                    assert!(kind.is_char_device(), "{name}");
                    random
                }
                n if n.ends_with(".json") || n.ends_with(".lock") || n == "kp.pid" => {
                    assert!(kind.is_file(), "{name}");
                    0o644
                }
                _ => panic!("unexpected file {}", e.path().display()),
            };
            assert_eq!(mode, want, "{}: {mode:o}", e.path().display());
            if !kind.is_char_device() {
                assert_eq!(mode & 0o002, 0, "{name} is world-writable");
            }
            seen.insert(name, mode);
        }
    }
    let names: Vec<_> = seen.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            ".kubelet-plugin-github.com.ihcsim_crand.lock",
            ".kubelet-plugin-github.com.ihcsim_kvm.lock",
            "crand.sock",
            "crand0",
            "crand1",
            "crand2",
            "github.com.ihcsim-crand.json",
            "github.com.ihcsim-kvm.json",
            "kp.pid",
            "kvm.sock"
        ]
    );
}
