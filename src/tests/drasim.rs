//! The DRA front end end to end: the real `kubelet-plugin run --api dra`
//! binary, driven by the kubelet simulator's DRA side (its plugin watcher,
//! health stream, NodePrepareResources and NodeUnprepareResources), against
//! a real kube-apiserver on its own etcd: v1.36 (`resource.k8s.io/v1`, the
//! simulator as a 1.36 kubelet) and v1.32 (`v1beta1`, a 1.32 kubelet).
//! Device nodes are made by mknod in a temp dev dir (as root): a clone of
//! the host's `/dev/kvm` when there is one, `ttyUSB*` as clones of
//! `/dev/random`.
//!
//! Per version, on one API server, in this order: registration (the
//! service chosen); the health stream (1.36: every device, Healthy); the
//! ResourceSlices read back as the admin (the version's shape, every
//! device's attributes, pool, owner, generation and slice count, several
//! slices of at most 128 devices, 64 with taints); no write while idle; a
//! crand node removed (Unhealthy, "node missing"; tainted on 1.36, left out
//! on 1.32) and made again; hot-plug in and out; a kubelet restart that
//! deletes the node's slices; claims made and allocated through the API,
//! prepared and unprepared through the simulator (two devices and their
//! CDI names, checkpointed, asked again; one request with a claim of
//! another driver, a device we do not have, a replaced claim and a good
//! one; empty requests; an unknown claim); on 1.36 the API server killed
//! and started again while the driver serves on; `status` in text and
//! JSON (exit 3, then 0); `kill -9` and a start (a claim deleted from the
//! API since is answered and unprepared); SIGTERM; a corrupt checkpoint; a
//! device plugin instance on the same resources refused; SIGTERM. And,
//! with no API server, both APIs at once refused.
//!
//! Every wait is bounded and waits on an event (the simulator's, the
//! driver's log) but for the API server's state, which is polled with a
//! short sleep, and the idle window, which is a window by nature. The two
//! versions take turns, each on its own ports (27443 and 27379/27380;
//! 27444 and 27381/27382: below Linux's ephemeral ports, which a client's
//! connection could hold, and apart from the cluster another suite runs on
//! 6443/2379/2380). Everything started is stopped by pid and every temp
//! dir removed, also when a check fails (the fields' drop order); should
//! the test process be killed, the kernel kills the API servers, etcds and
//! drivers (`PR_SET_PDEATHSIG`). Skipped, in one line, when not root or
//! without etcd (failures under `make test`), or without the kit (a
//! failure with `REQUIRE_REALNODE=1`); the API servers come from
//! `KUBE_APISERVER` and `KUBE_APISERVER_1_32`, else from the kit's
//! `k8s-1.36` and `k8s-1.32`. About 25 s for both versions.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

mod apiserver;
mod common;

use apiserver::{Cluster, Ports, Version};
use common::Plugin;
use kubelet_plugin::{
    dra::names::label,
    kube::Client,
    sim::{DraDeviceHealth, DraService, KubeletVersion, Prepared, PreparedDevice, Sim},
};
use nix::sys::{
    signal::Signal,
    stat::{Mode, SFlag, major, minor, mknod, stat},
};
use serde_json::{Value, json};

const DRIVER: &str = "github.com.ihcsim";
const NODE: &str = "realnode";
const CRANDS: usize = 150;
/// For the driver's and the simulator's events.
const WAIT: Duration = Duration::from_secs(10);
/// For the API server's state to follow.
const API_WAIT: Duration = Duration::from_secs(15);
/// The shortest idle window.
const IDLE: Duration = Duration::from_secs(3);
/// The API's limits on a slice's devices.
const MAX_DEVICES: usize = 128;
const MAX_DEVICES_TAINTED: usize = 64;

/// One Kubernetes version and how the driver meets it.
#[derive(Clone, Copy)]
struct Api {
    name: &'static str,
    version: Version,
    ports: Ports,
    /// The `resource.k8s.io` version served.
    group: &'static str,
    kubelet: KubeletVersion,
    service: DraService,
    /// Unhealthy devices tainted (else left out).
    taints: bool,
}

const API_1_36: Api = Api {
    name: "1.36",
    version: apiserver::V1_36,
    ports: Ports {
        apiserver: 27443,
        etcd: 27379,
        etcd_peer: 27380,
    },
    group: "v1",
    kubelet: KubeletVersion::V1_36,
    service: DraService::V1,
    taints: true,
};

const API_1_32: Api = Api {
    name: "1.32",
    version: apiserver::V1_32,
    ports: Ports {
        apiserver: 27444,
        etcd: 27381,
        etcd_peer: 27382,
    },
    group: "v1beta1",
    kubelet: KubeletVersion::V1_32,
    service: DraService::V1beta1,
    taints: false,
};

/// The two API servers and their drivers take turns: two at once on two
/// shared cores would make every wait here a race with the other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn test_dra_driver_against_kubernetes_1_36() {
    run(API_1_36);
}

#[test]
fn test_dra_driver_against_kubernetes_1_32() {
    run(API_1_32);
}

/// Both APIs at once: refused before anything is made (no API server
/// needed).
#[test]
fn test_both_apis_at_once_refused() {
    let tmp = tempfile::Builder::new()
        .prefix("kp-drasim-")
        .tempdir()
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
    cmd.args(["run", "--api", "device-plugin", "--api", "dra", "--dev-dir"])
        .arg(tmp.path())
        .arg("--cdi-dir")
        .arg(tmp.path().join("cdi"));
    let out = common::output(cmd, WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "--api device-plugin and --api dra: one instance serves its resources through one \
             kubelet API; a node must never offer a resource through both"
        ),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing made"
    );
}

/// Fails with `what` and the driver's last log lines.
fn fail(p: &Plugin, what: impl std::fmt::Display) -> ! {
    let log = p.log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    panic!("{what}\n--- the driver's last log lines ---\n{tail}")
}

/// `assert!` with the driver's log.
macro_rules! check {
    ($p:expr, $cond:expr, $($what:tt)+) => {
        if !$cond {
            fail($p, format!($($what)+))
        }
    };
}

/// The temp dirs of one node: its dev dir, CDI dir, the kubelet's DRA
/// plugin dir and plugin watcher dir, and the simulator's own dir.
struct Dirs {
    tmp: tempfile::TempDir,
    dev: PathBuf,
    cdi: PathBuf,
    plugins: PathBuf,
    registry: PathBuf,
    kubelet: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::Builder::new()
            .prefix("kp-drasim-")
            .tempdir()
            .unwrap();
        let d = |n: &str| tmp.path().join(n);
        let dirs = Dirs {
            dev: d("dev"),
            cdi: d("cdi"),
            plugins: d("plugins"),
            registry: d("registry"),
            kubelet: d("kubelet"),
            tmp,
        };
        for p in [&dirs.dev, &dirs.cdi, &dirs.kubelet, &dirs.registry] {
            std::fs::create_dir(p).unwrap();
        }
        dirs
    }

    fn driver_dir(&self) -> PathBuf {
        self.plugins.join(DRIVER)
    }

    fn checkpoint(&self) -> PathBuf {
        self.driver_dir().join("checkpoint.json")
    }

    fn dra_socket(&self) -> PathBuf {
        self.driver_dir().join("dra.sock")
    }

    fn registration_socket(&self) -> PathBuf {
        self.registry.join(format!("{DRIVER}-reg.sock"))
    }
}

/// A character node at `path` with number `rdev`.
fn node(path: &Path, rdev: u64) {
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), rdev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// What the pool should say: every device by name with its attributes,
/// and which of them are unhealthy.
struct Want {
    devices: BTreeMap<String, Value>,
    unhealthy: BTreeSet<String>,
}

/// One version's run: the field order is the drop order (the driver
/// first, the API server last).
struct Suite {
    api: Api,
    driver: Option<Plugin>,
    sim: Sim,
    d: Dirs,
    cluster: Cluster,
    admin: Client,
    kubeconfig: PathBuf,
    node_uid: String,
    /// `/dev/random`'s number, which crand and the serial nodes clone.
    random: u64,
    /// `/dev/kvm`'s, when the host has it.
    kvm: Option<u64>,
    started: Instant,
    /// When the simulator last registered the driver.
    registered: Cell<Instant>,
}

fn run(api: Api) {
    let test = format!("DRA driver against kube-apiserver {}", api.name);
    if !nix::unistd::geteuid().is_root() {
        return common::skip(&test, "not root: the device nodes are made by mknod");
    }
    let Some((etcd, apiserver)) = apiserver::binaries(&test, api.version) else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Suite::start(api, &etcd, &apiserver);
    let tmp = s.d.tmp.path().to_path_buf();
    let cluster_dir = s.cluster.dir.path().to_path_buf();

    s.registration();
    s.slices_and_health();
    s.idle();
    s.unhealthy_and_back();
    s.hot_plug();
    s.kubelet_restart();
    s.claims();
    if api.taints {
        // Once is enough: the publisher does not depend on the version.
        s.api_server_away();
    }
    s.status(3);
    s.kill_and_restart();
    s.sigterm();
    s.corrupt_checkpoint();
    s.device_plugin_refused();
    s.sigterm();
    let started = s.started;
    drop(s);
    assert!(!tmp.exists() && !cluster_dir.exists(), "temp dirs left");
    eprintln!(
        "[{} {:>5.1} s] stopped, temp dirs removed",
        api.name,
        started.elapsed().as_secs_f64()
    );
}

impl Suite {
    /// The API server (ready), the Node, the device nodes, the simulator
    /// watching the registry dir, and the driver.
    fn start(api: Api, etcd: &Path, apiserver: &Path) -> Suite {
        let started = Instant::now();
        let mut cluster = Cluster::start(etcd, apiserver, api.ports, api.version);
        let kubeconfig = cluster.admin_kubeconfig();
        let admin = cluster.wait_ready(&kubeconfig);
        eprintln!(
            "[{} {:>5.1} s] API server ready",
            api.name,
            started.elapsed().as_secs_f64()
        );
        let served = admin.served_versions("resource.k8s.io").unwrap();
        assert_eq!(served, [api.group], "resource.k8s.io versions served");
        let created = admin
            .create(
                "/api/v1/nodes",
                &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
            )
            .unwrap();
        let node_uid = created["metadata"]["uid"].as_str().unwrap().to_string();

        let d = Dirs::new();
        let random = stat("/dev/random").unwrap().st_rdev;
        let kvm = stat("/dev/kvm").ok().map(|s| s.st_rdev);
        if let Some(rdev) = kvm {
            node(&d.dev.join("kvm"), rdev);
        }
        node(&d.dev.join("ttyUSB0"), random);
        let mut sim = Sim::start(&d.kubelet).unwrap();
        sim.watch_registry_as(&d.registry, api.kubelet).unwrap();
        let mut s = Suite {
            api,
            driver: None,
            sim,
            d,
            cluster,
            admin,
            kubeconfig,
            node_uid,
            random,
            kvm,
            started,
            registered: Cell::new(started),
        };
        s.start_driver();
        s
    }

    fn step(&self, what: &str) {
        eprintln!(
            "[{} {:>5.1} s] {what}",
            self.api.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// `kubelet-plugin run --api dra` on this node's dirs.
    fn command(&self, api: &str) -> Command {
        let d = &self.d;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
        cmd.args(["run", "--api", api, "--node-name", NODE, "--kubeconfig"])
            .arg(&self.kubeconfig)
            .arg("--dra-plugin-dir")
            .arg(&d.plugins)
            .arg("--plugins-registry-dir")
            .arg(&d.registry)
            .arg("--dev-dir")
            .arg(&d.dev)
            .arg("--cdi-dir")
            .arg(&d.cdi)
            .args(["--crand-count", &CRANDS.to_string()])
            .args(["--device", "serial=ttyUSB*", "--log-level", "debug"]);
        // kvm's slots share a clone of the host's /dev/kvm; a host without
        // one serves crand and the serial nodes alone.
        match self.kvm {
            Some(_) => cmd.args(["--kvm-count", "2"]),
            None => cmd.args(["--plugin", "crand"]),
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // no memory of the parent; it runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Starts the driver; the simulator's events of the one before (a
    /// start's second registration, deregistrations) are dropped first, so
    /// that the waits to come see this one's.
    fn start_driver(&mut self) {
        assert!(self.driver.is_none(), "a driver runs already");
        self.sim.take_events();
        self.driver = Some(Plugin::spawn(&mut self.command("dra")));
    }

    fn p(&self) -> &Plugin {
        self.driver.as_ref().expect("the driver runs")
    }

    /// Waits for the simulator to register the driver, through the
    /// service this kubelet version chooses.
    fn wait_registered(&self) {
        let reg = self
            .sim
            .wait_dra_registered(DRIVER, WAIT)
            .unwrap_or_else(|e| fail(self.p(), e));
        self.registered.set(Instant::now());
        check!(
            self.p(),
            reg.service == self.api.service,
            "registered through {}, not {}",
            reg.service,
            self.api.service
        );
        check!(
            self.p(),
            Path::new(&reg.endpoint) == self.d.dra_socket(),
            "endpoint {} is not the DRA socket {}",
            reg.endpoint,
            self.d.dra_socket().display()
        );
    }

    fn registration(&self) {
        self.wait_registered();
        self.p()
            .wait_log("registered driver=github.com.ihcsim node=realnode", WAIT);
        self.step(&format!("registered through {}", self.api.service));
    }

    // --- the pool -------------------------------------------------------

    /// The devices there are with the serial nodes `ttys` listed
    /// (`ttyUSB<i>`), those named in `unhealthy` unhealthy.
    fn want(&self, ttys: &[usize], unhealthy: &[&str]) -> Want {
        let attrs = |resource: &str, kind: &str, id: &str, path: &Path, rdev: u64| {
            json!({
                "resource": {"string": resource},
                "kind": {"string": kind},
                "id": {"string": id},
                "path": {"string": path.display().to_string()},
                "major": {"int": major(rdev)},
                "minor": {"int": minor(rdev)},
            })
        };
        let mut devices = BTreeMap::new();
        for i in 0..CRANDS {
            let id = format!("crand{i}");
            let a = attrs("crand", "crand", &id, &self.d.dev.join(&id), self.random);
            devices.insert(id, a);
        }
        if let Some(rdev) = self.kvm {
            for i in 0..2 {
                let id = format!("kvm{i}");
                let a = attrs("kvm", "kvm", &id, &self.d.dev.join("kvm"), rdev);
                devices.insert(id, a);
            }
        }
        for i in ttys {
            let id = format!("ttyUSB{i}");
            let a = attrs("serial", "dev", &id, &self.d.dev.join(&id), self.random);
            devices.insert(label(&id), a);
        }
        Want {
            devices,
            unhealthy: unhealthy.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The serial nodes there are now: `i` of each `ttyUSB<i>`.
    fn plugged(&self) -> Vec<usize> {
        let mut ttys: Vec<usize> = std::fs::read_dir(&self.d.dev)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_prefix("ttyUSB")?.parse().ok()
            })
            .collect();
        ttys.sort_unstable();
        ttys
    }

    /// Every ResourceSlice on the server, by name.
    fn slices(&self) -> Vec<Value> {
        let list = self
            .admin
            .list(&format!(
                "/apis/resource.k8s.io/{}/resourceslices",
                self.api.group
            ))
            .unwrap_or_else(|e| fail(self.p(), format!("list ResourceSlices: {e}")));
        let mut items = list["items"].as_array().cloned().unwrap_or_default();
        items.sort_by_key(|s| {
            s["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        items
    }

    /// Why `slices` are not the pool `want` says, if they are not.
    fn mismatch(&self, slices: &[Value], want: &Want) -> Option<String> {
        if slices.is_empty() {
            return Some("no slices".into());
        }
        let count = slices.len();
        let generation = &slices[0]["spec"]["pool"]["generation"];
        let owner = json!([{
            "apiVersion": "v1", "kind": "Node", "name": NODE, "uid": self.node_uid, "controller": true,
        }]);
        let mut seen = BTreeMap::new();
        for (i, s) in slices.iter().enumerate() {
            let name = s["metadata"]["name"].as_str().unwrap_or_default();
            let spec = &s["spec"];
            let expected = format!("{NODE}-{DRIVER}-{i}");
            if name != expected {
                return Some(format!("slice {i} is {name}, not {expected}"));
            }
            if spec["driver"] != DRIVER || spec["nodeName"] != NODE || spec["pool"]["name"] != NODE
            {
                return Some(format!("slice {name}: driver, node or pool wrong: {spec}"));
            }
            if &spec["pool"]["generation"] != generation
                || spec["pool"]["resourceSliceCount"] != json!(count)
            {
                return Some(format!(
                    "slice {name}: pool {} with {count} slices of generation {generation}",
                    spec["pool"]
                ));
            }
            if s["metadata"]["ownerReferences"] != owner {
                return Some(format!(
                    "slice {name}: owners {}, not the Node {}",
                    s["metadata"]["ownerReferences"], self.node_uid
                ));
            }
            let devices = spec["devices"].as_array().cloned().unwrap_or_default();
            let tainted = devices.iter().any(|d| !d["taints"].is_null());
            let limit = if tainted {
                MAX_DEVICES_TAINTED
            } else {
                MAX_DEVICES
            };
            if devices.len() > limit {
                return Some(format!(
                    "slice {name} has {} devices, over the API's {limit}",
                    devices.len()
                ));
            }
            for d in devices {
                let dev = d["name"].as_str().unwrap_or_default().to_string();
                // v1: the device's fields directly under devices[];
                // v1beta1: under devices[].basic.
                let (body, other) = match self.api.group {
                    "v1" => (d.clone(), &d["basic"]),
                    _ => (d["basic"].clone(), &d["attributes"]),
                };
                if body.is_null() || !other.is_null() {
                    return Some(format!(
                        "device {dev} not in the {} shape: {d}",
                        self.api.group
                    ));
                }
                if seen.insert(dev.clone(), body).is_some() {
                    return Some(format!("device {dev} twice in the pool"));
                }
            }
        }
        let listed: BTreeSet<&String> = want
            .devices
            .keys()
            .filter(|n| self.api.taints || !want.unhealthy.contains(*n))
            .collect();
        let got: BTreeSet<&String> = seen.keys().collect();
        if listed != got {
            let missing: Vec<_> = listed.difference(&got).collect();
            let extra: Vec<_> = got.difference(&listed).collect();
            return Some(format!(
                "devices missing from the pool: {missing:?}; not expected there: {extra:?}"
            ));
        }
        for (name, body) in &seen {
            if body["attributes"] != want.devices[name] {
                return Some(format!(
                    "device {name}: attributes {}, not {}",
                    body["attributes"], want.devices[name]
                ));
            }
            let taints = &body["taints"];
            if want.unhealthy.contains(name) {
                // Only with taints is an unhealthy device listed at all.
                let t = &taints[0];
                if taints.as_array().map(Vec::len) != Some(1)
                    || t["key"] != format!("{DRIVER}/unhealthy")
                    || t["value"] != "missing"
                    || t["effect"] != "NoSchedule"
                {
                    return Some(format!("device {name} not tainted as unhealthy: {taints}"));
                }
            } else if !taints.is_null() {
                return Some(format!("healthy device {name} tainted: {taints}"));
            }
        }
        None
    }

    /// Polls the API server until the pool is `want` (bounded); the slices.
    fn wait_pool(&self, want: &Want, what: &str) -> Vec<Value> {
        let deadline = Instant::now() + API_WAIT;
        loop {
            let slices = self.slices();
            let Some(why) = self.mismatch(&slices, want) else {
                return slices;
            };
            if Instant::now() > deadline {
                let summary: Vec<String> = slices
                    .iter()
                    .map(|s| {
                        format!(
                            "{} generation {} devices {}",
                            s["metadata"]["name"],
                            s["spec"]["pool"]["generation"],
                            s["spec"]["devices"].as_array().map_or(0, Vec::len)
                        )
                    })
                    .collect();
                fail(
                    self.p(),
                    format!(
                        "{what}: the slices are not right after {API_WAIT:?}: {why}\nslices: {summary:#?}"
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the health stream (1.36) to say what `accept` takes: the
    /// last message if it does already, else the next one that does.
    fn wait_health(&self, what: &str, accept: impl Fn(&[DraDeviceHealth]) -> bool) {
        if self.sim.dra_health(DRIVER).is_some_and(|h| accept(&h)) {
            return;
        }
        if let Err(e) = self.sim.wait_dra_health(DRIVER, WAIT, |h| accept(h)) {
            let last = self.sim.dra_health(DRIVER).map(|h| {
                h.iter()
                    .filter(|d| d.health != "Healthy")
                    .map(|d| format!("{}: {} {}", d.device, d.health, d.message))
                    .collect::<Vec<_>>()
            });
            fail(
                self.p(),
                format!("{what}: {e}; the last message's not healthy devices: {last:?}"),
            );
        }
    }

    fn slices_and_health(&self) {
        let want = self.want(&[0], &[]);
        if self.api.kubelet == KubeletVersion::V1_36 {
            // Every device of every resource, Healthy, in the node's pool.
            let names: BTreeSet<String> = want.devices.keys().cloned().collect();
            self.wait_health("every device Healthy", |h| {
                h.len() == names.len()
                    && h.iter().all(|d| {
                        d.pool == NODE && d.health == "Healthy" && names.contains(&d.device)
                    })
            });
            self.step(&format!("health stream: {} devices Healthy", names.len()));
        } else {
            check!(
                self.p(),
                self.sim.dra_health(DRIVER).is_none(),
                "a 1.32 kubelet opens no health stream"
            );
        }
        self.p().wait_log("ResourceSlices published", WAIT);
        let slices = self.wait_pool(&want, "first publication");
        // 150 crand, 2 kvm, 1 serial: several slices of one pool, each as
        // full as the API lets it be (64 on a server with taints, whether
        // or not a slice has one: the README says why).
        let per_slice = if self.api.taints {
            MAX_DEVICES_TAINTED
        } else {
            MAX_DEVICES
        };
        let expected = want.devices.len().div_ceil(per_slice);
        check!(
            self.p(),
            slices.len() == expected,
            "{} slices for {} devices, not {expected}",
            slices.len(),
            want.devices.len()
        );
        self.step(&format!(
            "{} ResourceSlices of {} devices, resource.k8s.io/{} shape",
            slices.len(),
            want.devices.len(),
            self.api.group
        ));
    }

    /// The API requests in the driver's log after byte `from` whose method
    /// is not `GET`, and how many lists of our slices there were.
    fn requests_since(&self, from: usize) -> (Vec<String>, usize) {
        let log = self.p().log();
        let lines = log[from..]
            .lines()
            .filter(|l| l.contains("api request method="));
        let (mut writes, mut reads) = (Vec::new(), 0);
        for l in lines {
            if l.contains("method=GET") {
                reads += usize::from(l.contains(&self.list_line()));
            } else {
                writes.push(l.to_string());
            }
        }
        (writes, reads)
    }

    /// The start of the driver's log lines of its list of our slices.
    fn list_line(&self) -> String {
        format!(
            "method=GET path=/apis/resource.k8s.io/{}/resourceslices?fieldSelector=",
            self.api.group
        )
    }

    /// No write while nothing changes: over a window of at least [`IDLE`]
    /// that lasts until after the read back 5 s after the registration
    /// (and holds at least one read back), nothing is written.
    fn idle(&self) {
        let log = self.p().log();
        let (mark, lists) = (log.len(), log.matches(&self.list_line()).count());
        let from = Instant::now();
        let until = (from + IDLE).max(self.registered.get() + Duration::from_secs(6));
        std::thread::sleep(until.saturating_duration_since(from));
        self.p().wait_log_count(&self.list_line(), lists + 1, WAIT);
        let (writes, reads) = self.requests_since(mark);
        check!(
            self.p(),
            writes.is_empty(),
            "writes while idle: {writes:#?}"
        );
        self.step(&format!(
            "idle {:.1} s: no write, {reads} read(s) of the slices",
            from.elapsed().as_secs_f64()
        ));
    }

    fn unhealthy_and_back(&self) {
        let crand3 = self.d.dev.join("crand3");
        std::fs::remove_file(&crand3).unwrap();
        if self.api.kubelet == KubeletVersion::V1_36 {
            self.wait_health("crand3 Unhealthy", |h| {
                h.iter().any(|d| {
                    d.device == "crand3" && d.health == "Unhealthy" && d.message == "node missing"
                })
            });
        }
        let how = if self.api.taints {
            "tainted NoSchedule"
        } else {
            "left out"
        };
        self.wait_pool(&self.want(&[0], &["crand3"]), &format!("crand3 {how}"));
        self.step(&format!("crand3 removed: Unhealthy, {how}"));
        node(&crand3, self.random);
        if self.api.kubelet == KubeletVersion::V1_36 {
            self.wait_health("crand3 Healthy again", |h| {
                h.iter().all(|d| d.health == "Healthy")
            });
        }
        self.wait_pool(&self.want(&[0], &[]), "crand3 back");
        self.step("crand3 made again: Healthy, back in its slice");
    }

    fn hot_plug(&self) {
        let tty1 = self.d.dev.join("ttyUSB1");
        node(&tty1, self.random);
        self.wait_pool(&self.want(&[0, 1], &[]), "ttyUSB1 plugged");
        let name = label("ttyUSB1");
        std::fs::remove_file(&tty1).unwrap();
        if self.api.kubelet == KubeletVersion::V1_36 {
            self.wait_health("ttyUSB1 Unhealthy", |h| {
                h.iter()
                    .any(|d| d.device == name && d.health == "Unhealthy")
            });
        }
        self.wait_pool(&self.want(&[0, 1], &[&name]), "ttyUSB1 unplugged");
        self.step(&format!("hot-plug: {name} in, then out (Unhealthy)"));
    }

    /// A kubelet restart: the plugin watcher registers the driver again,
    /// and the kubelet deletes the node's slices (here just after the
    /// registration, the harder order): the driver reads them back after
    /// the registration and publishes them again.
    fn kubelet_restart(&mut self) {
        let want = self.want(&[0, 1], &[&label("ttyUSB1")]);
        self.sim.restart().unwrap();
        self.wait_registered();
        let deleted = self
            .admin
            .delete(&format!(
                "/apis/resource.k8s.io/{}/resourceslices?fieldSelector=spec.nodeName%3D{NODE}",
                self.api.group
            ))
            .unwrap_or_else(|e| fail(self.p(), format!("delete the node's slices: {e}")));
        let gone = deleted["items"].as_array().map_or(0, Vec::len);
        check!(self.p(), gone > 1, "deleted {gone} slices: {deleted}");
        self.wait_pool(&want, "published again after a kubelet restart");
        self.step(&format!(
            "kubelet restart: registered again; {gone} slices deleted, published again"
        ));
    }

    // --- claims ---------------------------------------------------------

    fn claims_path(&self, name: Option<&str>) -> String {
        let base = format!(
            "/apis/resource.k8s.io/{}/namespaces/default/resourceclaims",
            self.api.group
        );
        match name {
            Some(n) => format!("{base}/{n}"),
            None => base,
        }
    }

    /// A claim `name` asking for as many crand devices as `devices` names,
    /// made through the API as the admin and allocated to `devices`
    /// (driver, device) of this node's pool, reserved for pod `pod-<name>`,
    /// as the scheduler would; its UID.
    fn claim(&self, name: &str, devices: &[(&str, &str)]) -> String {
        let count = devices.len().max(1);
        // v1 puts a request's one-device form under `exactly`; v1beta1 has
        // the fields in the request itself.
        let request = match self.api.group {
            "v1" => json!({"name": "rng", "exactly": {
                "deviceClassName": "crand.github.com.ihcsim", "allocationMode": "ExactCount", "count": count}}),
            _ => json!({"name": "rng",
                "deviceClassName": "crand.github.com.ihcsim", "allocationMode": "ExactCount", "count": count}),
        };
        let mut claim = self
            .admin
            .create(
                &self.claims_path(None),
                &json!({
                    "apiVersion": format!("resource.k8s.io/{}", self.api.group),
                    "kind": "ResourceClaim",
                    "metadata": {"name": name},
                    "spec": {"devices": {"requests": [request]}},
                }),
            )
            .unwrap_or_else(|e| fail(self.p(), format!("create claim {name}: {e}")));
        let uid = claim["metadata"]["uid"].as_str().unwrap().to_string();
        let results: Vec<Value> = devices
            .iter()
            .map(|(driver, device)| {
                json!({"request": "rng", "driver": driver, "pool": NODE, "device": device})
            })
            .collect();
        claim["status"] = json!({
            "allocation": {
                "devices": {"results": results},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [NODE]}]}]},
            },
            "reservedFor": [{"resource": "pods", "name": format!("pod-{name}"),
                             "uid": format!("uid-of-pod-{name}")}],
        });
        self.admin
            .update(&format!("{}/status", self.claims_path(Some(name))), &claim)
            .unwrap_or_else(|e| fail(self.p(), format!("allocate claim {name}: {e}")));
        uid
    }

    /// NodePrepareResources through the simulator. Right after a start,
    /// the plugin watcher may still be busy with the sockets the start
    /// replaced (it handles the stale socket's removal and the new one's
    /// creation one by one, and registers the driver again for each, where
    /// a kubelet's reconciler takes both at its next 1 s tick): a call
    /// that finds the driver between two registrations waits for the next.
    fn prepare(&self, claims: &[(&str, &str, &str)]) -> Prepared {
        self.between_registrations(|| self.sim.prepare(DRIVER, claims))
            .unwrap_or_else(|e| fail(self.p(), format!("NodePrepareResources {claims:?}: {e}")))
    }

    fn unprepare(&self, claims: &[(&str, &str, &str)]) {
        let answer = self
            .between_registrations(|| self.sim.unprepare(DRIVER, claims))
            .unwrap_or_else(|e| fail(self.p(), format!("NodeUnprepareResources {claims:?}: {e}")));
        for (_, uid, name) in claims {
            check!(
                self.p(),
                answer.get(*uid) == Some(&Ok(())),
                "unprepare of {name}: {:?}",
                answer.get(*uid)
            );
        }
    }

    /// `call`, again after the next registration when it finds the driver
    /// not registered (see [`Suite::prepare`]).
    fn between_registrations<T>(&self, call: impl Fn() -> Result<T, String>) -> Result<T, String> {
        let not_registered = format!("DRA driver {DRIVER} is not registered");
        for _ in 0..2 {
            match call() {
                Err(e) if e.contains(&not_registered) => self.wait_registered(),
                answer => return answer,
            }
        }
        call()
    }

    /// The claims in the checkpoint, by UID.
    fn checkpoint(&self) -> serde_json::Map<String, Value> {
        let text = std::fs::read(self.d.checkpoint())
            .unwrap_or_else(|e| fail(self.p(), format!("read the checkpoint: {e}")));
        let file: Value = serde_json::from_slice(&text).unwrap();
        check!(self.p(), file["driver"] == DRIVER, "checkpoint {file}");
        file["claims"].as_object().cloned().unwrap_or_default()
    }

    /// What the driver answers for crand devices `ids` of request `rng`.
    fn crand_answer(ids: &[usize]) -> Vec<PreparedDevice> {
        ids.iter()
            .map(|i| PreparedDevice {
                request_names: vec!["rng".into()],
                pool: NODE.into(),
                device: format!("crand{i}"),
                cdi_ids: vec![format!("{DRIVER}/crand=crand{i}")],
            })
            .collect()
    }

    fn claims(&self) {
        let p = self.p();
        // Two crand devices: their CDI names, recorded.
        let uid = self.claim("two-crand", &[(DRIVER, "crand0"), (DRIVER, "crand1")]);
        let two = ("default", uid.as_str(), "two-crand");
        let answer = self.prepare(&[two]);
        let want = Self::crand_answer(&[0, 1]);
        check!(
            p,
            answer.get(&uid) == Some(&Ok(want.clone())),
            "prepare two-crand: {answer:?}"
        );
        let recorded = &self.checkpoint()[&uid];
        check!(
            p,
            recorded["name"] == "two-crand"
                && recorded["pods"] == json!(["pod-two-crand"])
                && recorded["devices"][1]["cdiDeviceIds"]
                    == json!([format!("{DRIVER}/crand=crand1")]),
            "checkpoint entry of two-crand: {recorded}"
        );
        // Asked again: the same, from the checkpoint, with no API call.
        let get = format!("method=GET path={}", self.claims_path(Some("two-crand")));
        let reads = p.log().matches(&get).count();
        let again = self.prepare(&[two]);
        check!(
            p,
            again == answer,
            "prepare two-crand again: {again:?}, before {answer:?}"
        );
        p.wait_log("claim already prepared claim=default/two-crand", WAIT);
        check!(
            p,
            p.log().matches(&get).count() == reads,
            "the claim was read again"
        );
        self.step("prepare: two crand devices, their CDI names checkpointed; again the same");

        // One request, four claims, each its own answer.
        let other = self.claim("other-driver", &[("gpu.example.com", "gpu0")]);
        let missing = self.claim("no-such-device", &[(DRIVER, "crand999")]);
        let replaced = self.claim("replaced", &[(DRIVER, "crand5")]);
        let good = self.claim("good", &[(DRIVER, "crand4")]);
        let wrong_uid = "00000000-0000-0000-0000-000000000000";
        let answer = self.prepare(&[
            ("default", &other, "other-driver"),
            ("default", &missing, "no-such-device"),
            ("default", wrong_uid, "replaced"),
            ("default", &good, "good"),
        ]);
        check!(p, answer.len() == 4, "four answers: {answer:#?}");
        check!(
            p,
            answer[&other] == Ok(vec![]),
            "a claim of another driver: no devices, no error: {:?}",
            answer[&other]
        );
        check!(
            p,
            answer[&missing]
                .as_ref()
                .is_err_and(|e| e.contains("no-such-device")
                    && e.contains("device \"crand999\" is no device of this driver on this node")),
            "a device we do not have: {:?}",
            answer[&missing]
        );
        check!(
            p,
            answer[wrong_uid]
                .as_ref()
                .is_err_and(|e| e.contains(&format!(
                    "claim default/replaced has UID \"{replaced}\", not \"{wrong_uid}\""
                ))),
            "a replaced claim: {:?}",
            answer[wrong_uid]
        );
        check!(
            p,
            answer[&good] == Ok(Self::crand_answer(&[4])),
            "the good claim: {:?}",
            answer[&good]
        );
        let recorded = self.checkpoint();
        check!(
            p,
            recorded.contains_key(&good)
                && recorded.contains_key(&other)
                && !recorded.contains_key(&missing)
                && !recorded.contains_key(wrong_uid),
            "checkpoint: {:?}",
            recorded.keys()
        );
        self.step("prepare of four claims: another driver's, a missing device, a replaced claim, a good one");

        // An empty request: an empty answer.
        let empty = self.prepare(&[]);
        check!(p, empty.is_empty(), "an empty request: {empty:?}");
        let empty = self.between_registrations(|| self.sim.unprepare(DRIVER, &[]));
        check!(
            p,
            empty.as_ref().is_ok_and(|e| e.is_empty()),
            "an empty unprepare: {empty:?}"
        );
        // Unprepare: out of the checkpoint; an unknown claim: success.
        self.unprepare(&[
            two,
            (
                "default",
                "11111111-2222-3333-4444-555555555555",
                "never-seen",
            ),
        ]);
        check!(
            p,
            !self.checkpoint().contains_key(&uid),
            "two-crand still in the checkpoint"
        );
        p.wait_log(
            "claim unprepared (was not prepared here) claim=default/never-seen",
            WAIT,
        );
        self.step(
            "empty request: empty answer; unprepare: out of the checkpoint; unknown: success",
        );
    }

    // --- status ---------------------------------------------------------

    /// `kubelet-plugin status`, text and JSON: the driver, its slices, its
    /// devices and its claims; the exit code `code` (3: a device is
    /// unhealthy).
    fn status(&self, code: i32) {
        let status = |json: bool| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
            cmd.arg("status")
                .arg("--cdi-dir")
                .arg(&self.d.cdi)
                .arg("--dra-plugin-dir")
                .arg(&self.d.plugins);
            if json {
                cmd.args(["--output", "json"]);
            }
            let out = common::output(cmd, WAIT);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            check!(
                self.p(),
                out.status.code() == Some(code),
                "status exited {:?}, not {code}:\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        };
        let slices = self.slices();
        let published: usize = slices
            .iter()
            .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
            .sum();
        let text = status(false);
        let head = format!(
            "{DRIVER} (DRA driver, node {NODE}, resource.k8s.io/{}, registered): ",
            self.api.group
        );
        check!(
            self.p(),
            text.contains(&head),
            "status text lacks {head:?}:\n{text}"
        );
        for s in &slices {
            let line = format!(
                "slice {} generation {}: {} devices",
                s["metadata"]["name"].as_str().unwrap(),
                s["spec"]["pool"]["generation"],
                s["spec"]["devices"].as_array().map_or(0, Vec::len)
            );
            check!(
                self.p(),
                text.contains(&line),
                "status text lacks {line:?}:\n{text}"
            );
        }
        let json: Value = serde_json::from_str(&status(true)).unwrap();
        let dra = &json["dra"][0];
        check!(
            self.p(),
            json["dra"].as_array().map(Vec::len) == Some(1)
                && dra["driver"] == DRIVER
                && dra["node"] == NODE
                && dra["apiVersion"] == format!("resource.k8s.io/{}", self.api.group)
                && dra["state"] == "registered"
                && dra["publishError"].is_null(),
            "status json: {dra}"
        );
        let sum: u64 = dra["slices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["devices"].as_u64().unwrap())
            .sum();
        check!(
            self.p(),
            sum == published as u64,
            "status counts {sum} published devices, the API server {published}"
        );
        let devices = dra["devices"].as_array().unwrap();
        let unhealthy: Vec<&Value> = devices
            .iter()
            .filter(|d| d["health"] != "Healthy")
            .collect();
        check!(
            self.p(),
            (code == 3) != unhealthy.is_empty()
                && unhealthy
                    .iter()
                    .all(|d| d["reason"] == "missing" && d["why"] == "node missing"),
            "status devices not healthy: {unhealthy:?}"
        );
        let claims = dra["claims"].as_array().unwrap();
        let cp = self.checkpoint();
        check!(
            self.p(),
            claims.len() == cp.len()
                && claims
                    .iter()
                    .all(|c| cp.contains_key(c["uid"].as_str().unwrap())),
            "status claims {claims:?}, checkpoint {:?}",
            cp.keys()
        );
        if let Some(good) = claims.iter().find(|c| c["name"] == "good") {
            check!(
                self.p(),
                good["devices"] == json!(["crand4"]) && good["pods"] == json!(["pod-good"]),
                "status of claim good: {good}"
            );
        }
        self.step(&format!(
            "status: {} devices ({} unhealthy), {} slices, {} claims; exit {code}",
            devices.len(),
            unhealthy.len(),
            slices.len(),
            claims.len()
        ));
    }

    // --- lifecycle ------------------------------------------------------

    /// `kill -9`, then a start: the checkpoint holds; a claim prepared
    /// before and deleted from the API since is answered from it and
    /// unprepared.
    fn kill_and_restart(&mut self) {
        let good = self
            .checkpoint()
            .iter()
            .find(|(_, c)| c["name"] == "good")
            .map(|(u, _)| u.clone())
            .unwrap_or_else(|| fail(self.p(), "claim good not in the checkpoint"));
        self.admin.delete(&self.claims_path(Some("good"))).unwrap();
        let mut old = self.driver.take().unwrap();
        old.signal(Signal::SIGKILL);
        let status = old.wait_exit(WAIT).expect("killed");
        assert_eq!(status.signal(), Some(9));
        drop(old);
        self.start_driver();
        self.wait_registered();
        // A hot-plugged node gone before the start is forgotten.
        let want = self.want(&self.plugged(), &[]);
        if self.api.kubelet == KubeletVersion::V1_36 {
            let names: BTreeSet<String> = want.devices.keys().cloned().collect();
            self.wait_health("the health stream of the new driver", |h| {
                h.len() == names.len()
                    && h.iter()
                        .all(|d| d.health == "Healthy" && names.contains(&d.device))
            });
        }
        let claim = ("default", good.as_str(), "good");
        let answer = self.prepare(&[claim]);
        check!(
            self.p(),
            answer[&good] == Ok(Self::crand_answer(&[4])),
            "a claim deleted from the API, prepared before the kill: {answer:?}"
        );
        self.unprepare(&[claim]);
        check!(
            self.p(),
            !self.checkpoint().contains_key(&good),
            "good still in the checkpoint"
        );
        self.wait_pool(&want, "after kill -9 and a new start");
        self.step("kill -9 and a new start: a claim deleted from the API answered and unprepared");
        self.status(0);
    }

    /// SIGTERM: exit 0, both sockets gone, the checkpoint kept.
    fn sigterm(&mut self) {
        let kept = std::fs::read(self.d.checkpoint()).ok();
        self.p().signal(Signal::SIGTERM);
        let status = self.driver.as_mut().unwrap().wait_exit(WAIT);
        let status = status.unwrap_or_else(|| fail(self.p(), "no exit within 10 s of SIGTERM"));
        check!(
            self.p(),
            status.code() == Some(0),
            "SIGTERM: exit {status:?}"
        );
        for sock in [self.d.dra_socket(), self.d.registration_socket()] {
            check!(
                self.p(),
                !sock.exists(),
                "{} left after SIGTERM",
                sock.display()
            );
        }
        check!(
            self.p(),
            kept.is_some() && std::fs::read(self.d.checkpoint()).ok() == kept,
            "the checkpoint was not kept as it was"
        );
        // Deregistered: older deregistrations (of a start's socket
        // replacement) may still wait in the simulator's events.
        while self.sim.dra_registration(DRIVER).is_some() {
            self.sim
                .wait_dra_deregistered(DRIVER, WAIT)
                .unwrap_or_else(|e| fail(self.p(), e));
        }
        let claims = self.checkpoint().len();
        self.driver = None;
        self.step(&format!(
            "SIGTERM: exit 0, sockets gone, checkpoint kept ({claims} claims)"
        ));
    }

    /// A checkpoint that is garbage at start: logged, set aside, started.
    fn corrupt_checkpoint(&mut self) {
        std::fs::write(self.d.checkpoint(), "garbage{").unwrap();
        self.start_driver();
        self.p().wait_log("is not usable", WAIT);
        self.wait_registered();
        let aside: Vec<PathBuf> = std::fs::read_dir(self.d.driver_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("checkpoint.json.corrupt-")
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let time = |p: &Path| -> Option<u64> {
            let name = p.file_name()?.to_string_lossy().into_owned();
            name.strip_prefix("checkpoint.json.corrupt-")?.parse().ok()
        };
        check!(
            self.p(),
            aside.len() == 1
                && std::fs::read(&aside[0]).unwrap() == b"garbage{"
                && time(&aside[0]).is_some_and(|t| t.abs_diff(now) < 60),
            "set aside: {aside:?}"
        );
        check!(
            self.p(),
            self.p()
                .log()
                .contains(&format!("set aside as {}", aside[0].display())),
            "the log does not say where it was set aside"
        );
        // Nothing changed since the last driver stopped: its slices are
        // found (fixed names) and nothing is written, by the time they are
        // read a second time (after the registration).
        self.p().wait_log_count(&self.list_line(), 2, WAIT);
        let (writes, _) = self.requests_since(0);
        check!(
            self.p(),
            writes.is_empty(),
            "a start with nothing changed wrote: {writes:#?}"
        );
        // Preparing works with the new, empty checkpoint.
        let uid = self.claim("survivor", &[(DRIVER, "crand6")]);
        let answer = self.prepare(&[("default", &uid, "survivor")]);
        check!(
            self.p(),
            answer[&uid] == Ok(Self::crand_answer(&[6])) && self.checkpoint().len() == 1,
            "prepare after the corrupt checkpoint: {answer:?}"
        );
        self.step("a corrupt checkpoint: logged, set aside, started (no write); a new one written");
    }

    /// The API server killed (etcd kept): the driver logs why, serves on
    /// (a prepared claim answers from the checkpoint), retries, and
    /// publishes a hot-plug made meanwhile once the server is back.
    fn api_server_away(&mut self) {
        let good = self
            .checkpoint()
            .iter()
            .find(|(_, c)| c["name"] == "good")
            .map(|(u, _)| u.clone())
            .unwrap_or_else(|| fail(self.p(), "claim good not in the checkpoint"));
        let claim = ("default", good.as_str(), "good");
        let before = self.prepare(&[claim]);
        let mark = self.p().log().len();
        self.cluster.stop_apiserver();
        self.step("API server killed");
        let again = self.prepare(&[claim]);
        check!(
            self.p(),
            again == before,
            "a prepared claim without the API server: {again:?}, before {before:?}"
        );
        // A hot-plug meanwhile: the publisher fails, says why, retries.
        node(&self.d.dev.join("ttyUSB2"), self.random);
        self.p().wait_log(
            "cannot publish ResourceSlices (retrying, first in 1 s)",
            WAIT,
        );
        let log = self.p().log();
        let errors: Vec<&str> = log[mark..]
            .lines()
            .filter(|l| l.contains("[ERROR]"))
            .collect();
        check!(
            self.p(),
            errors
                .iter()
                .all(|l| l.contains(&format!("https://127.0.0.1:{}", self.api.ports.apiserver))),
            "the errors do not say which server: {errors:#?}"
        );
        self.cluster.start_apiserver();
        let kubeconfig = self.kubeconfig.clone();
        self.cluster.wait_ready(&kubeconfig);
        self.step("API server started again");
        // The retries back off 1 s, 2 s, 4 s, ... (at most 30 s).
        self.p().wait_log(
            "ResourceSlices published again; the API server answers",
            Duration::from_secs(40),
        );
        let want = self.want(&[0, 1, 2], &[&label("ttyUSB1")]);
        self.wait_pool(&want, "ttyUSB2 plugged while the API server was away");
        // A claim the driver must read, on its first try: its client's
        // connection from before the kill is dead.
        let uid = self.claim("after-outage", &[(DRIVER, "crand7")]);
        let answer = self.prepare(&[("default", &uid, "after-outage")]);
        check!(
            self.p(),
            answer[&uid] == Ok(Self::crand_answer(&[7])),
            "the first claim read after the API server came back: {answer:?}"
        );
        let log = self.p().log();
        let errors = log[mark..].matches("cannot publish ResourceSlices").count();
        self.step(&format!(
            "the driver served on, retried ({errors} distinct error(s) logged), published ttyUSB2"
        ));
    }

    /// A device plugin instance on the same resources, while the DRA
    /// driver serves them: refused, naming the other API.
    fn device_plugin_refused(&self) {
        let mut cmd = self.command("device-plugin");
        cmd.arg("--device-plugin-dir")
            .arg(self.d.tmp.path().join("dp"));
        let out = common::output(cmd, WAIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        check!(
            self.p(),
            out.status.code() == Some(3),
            "exit {:?}: {stderr}",
            out.status
        );
        let pid = self.p().child.id();
        check!(
            self.p(),
            stderr.contains(&format!(
                "another kubelet-plugin (pid {pid}) serves {DRIVER}/"
            )) && stderr.contains(
                "through --api dra: a node must never offer one resource through two kubelet APIs"
            ),
            "refusal: {stderr}"
        );
        self.step("a device plugin instance on the same resources: refused (exit 3)");
    }
}
