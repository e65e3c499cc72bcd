//! The DRA suite: our static binary as a DRA driver (`run --api dra`) in
//! real one-node clusters, v1.36 and then v1.32, each started by the
//! `shared/realnode` kit's `cluster` script: etcd, the API server,
//! scheduler and controller manager, containerd 2.3 with CDI and the
//! kubelet of that version. The driver runs on the cluster's dirs (the
//! kubelet's `plugins/` and `plugins_registry/`, containerd's CDI dir), a
//! scratch dev dir and node `realnode`; on 1.36 with the token of
//! `kubelet/dra/rbac.yaml`'s ServiceAccount (its ClusterRole must be
//! enough), on 1.32 as the node (the Node authorizer). The manifests of
//! `kubelet/dra/` (`v1beta1/` on 1.32) are applied as they ship, only the
//! pods' image made the kit's local busybox.
//!
//! Checked, in order, each failure showing the driver's and the kubelet's
//! log lines that matter: the slice the API returns (every device and
//! attribute, in the version's shape); the claim pods (two crand devices,
//! a kvm slot, a serial adapter of `--device`) and, on 1.36, the seed pod
//! `kubelet/pods/busybox-crand.yaml` (through the class's
//! `extendedResourceName`) run and see exactly the devices of their
//! claim's allocation; `status` shows the slice and the prepared claims
//! with their pods; a kubelet restart (containers kept, no second prepare,
//! the driver registered again and its slice back); a crand node removed
//! (the holder's pod status Unhealthy on 1.36, the device tainted or left
//! out, a new pod needing it Pending) and made again (Healthy, the pod
//! runs); a pod deleted (unprepared, out of the checkpoint); `kill -9` of
//! the driver and a new start (registered, and a claim of before
//! unprepared by the new one); a serial adapter plugged in; the API server
//! stopped while a device appears (logged, retried, the slice right once
//! it is back); SIGTERM (exit 0, sockets gone).
//!
//! Why the kit's script rather than a port of it: it is the measured,
//! working recipe for both versions (feature gates, runtime config,
//! credentials, CNI, containerd's config), and the suite follows it when
//! the kit changes. Its pitfalls, measured on these machines, are worked
//! around from outside: the host dirs whose absence makes `up` fail
//! silently are made first; the pods are deleted (and gone) before
//! `down`, and shims it misses are killed by their command line; the
//! processes are stopped in parallel before `down` (which waits for each
//! in turn, and init here reaps orphans only every second or two); and
//! what the kubelet, containerd and CNI leave on the host is recorded
//! before and removed after.
//!
//! The cluster dir is `/tmp/kp-dra-*`, not under the target dir: there
//! (`target/x86_64-unknown-linux-gnu/tmp`) the kubelet's registration
//! socket path would pass the 107 bytes a unix socket path may have, and
//! the device paths the 64 characters of a slice attribute. The kit's
//! binaries are unpacked once under the target dir, where the node and
//! kube suites unpack them too, and hard-linked into each cluster dir.
//!
//! It refuses to run (a skip, or a failure under `REQUIRE_REALNODE=1`)
//! when a kubelet runs, `/var/lib/kubelet` is someone else's, or the
//! cluster's ports (6443, 2379, 2380) are taken. [`Cluster`]'s drop stops
//! everything it started and removes everything it made, also when a
//! check fails; what a killed run left is cleaned up by the next one.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{Plugin, gone, mentioning, remove, running, unmount_below, wait_until};
use kubelet_plugin::kube::{Client, Config};
use nix::{
    sys::{
        signal::{Signal, kill},
        stat::{Mode, SFlag, makedev, mknod, stat},
    },
    unistd::Pid,
};
use serde::Deserialize as _;
use serde_json::{Value as Json, json};
use serde_yaml::Value as Yaml;

const TEST: &str = "DRA cluster suite";
const NODE: &str = "realnode";
const DRIVER: &str = "github.com.ihcsim";
/// The pool's one slice (`<node>-<driver>-<i>`).
const SLICE: &str = "realnode-github.com.ihcsim-0";
const BUSYBOX: &str = "docker.io/library/busybox:latest";
const CRAND_COUNT: usize = 6;
const KVM_COUNT: usize = 2;
/// `ttyUSB0`'s name in the pool, as the README gives it: an ID that is no
/// DNS label is lowercased and gets 8 hex digits of a hash.
const TTYUSB0: &str = "ttyusb0-4452f912";
/// The major number of USB serial adapters (`ttyUSB*`).
const TTYUSB_MAJOR: u64 = 188;
/// The longest string attribute the API takes: a longer path is left out.
const ATTRIBUTE_MAX: usize = 64;
/// The cluster's ports: the API server's and etcd's.
const PORTS: [u16; 3] = [6443, 2379, 2380];
/// Host paths the kit, the kubelet, containerd or CNI make: removed at the
/// end when they were not there before.
const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/netns",
    "/run/containerd",
    "/run/nri",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
];
/// Host dirs that may be there already, where a run adds entries
/// (network namespaces, shim sockets, runc state): what it added goes.
const ENTRY_DIRS: &[&str] = &[
    "/run/netns",
    "/run/containerd/s",
    "/run/containerd/runc/k8s.io",
];
const SHORT: Duration = Duration::from_secs(20);
/// For containers, restarts and the scheduler.
const LONG: Duration = Duration::from_secs(60);

fn plugin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubelet-plugin")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn target_tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// What a run made, written before it makes it: the next run cleans up
/// after one that was killed.
fn made_list() -> PathBuf {
    target_tmp().join("dracluster/made.txt")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V136,
    V132,
}

impl Version {
    fn number(self) -> &'static str {
        match self {
            Version::V136 => "1.36",
            Version::V132 => "1.32",
        }
    }

    /// The `resource.k8s.io` version the cluster serves.
    fn api(self) -> &'static str {
        match self {
            Version::V136 => "v1",
            Version::V132 => "v1beta1",
        }
    }

    /// Its manifests in `kubelet/dra`.
    fn manifests(self) -> PathBuf {
        match self {
            Version::V136 => repo().join("kubelet/dra"),
            Version::V132 => repo().join("kubelet/dra/v1beta1"),
        }
    }
}

/// The kit's sets, unpacked once where the other real-node suites unpack
/// them: `bin` (node.rs), `k8s-1.36` (kube.rs, node.rs), `k8s-1.32`.
fn unpacked(set: &str) -> PathBuf {
    match set {
        "bin" => target_tmp().join("realnode/bin"),
        other => target_tmp().join(other),
    }
}

fn unpack(kit: &Path) -> Result<(), String> {
    for set in ["bin", "k8s-1.36", "k8s-1.32"] {
        let mut cmd = Command::new(kit.join("unpack"));
        cmd.arg(unpacked(set)).arg(set);
        let out = common::output(cmd, Duration::from_secs(300));
        if !out.status.success() {
            return Err(format!(
                "{}/unpack {set} failed: {}",
                kit.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// Hard-links (else copies) every file of `from` into `to`: the kit's
/// `unpack` then finds them there and newer than their archives.
fn link_all(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if std::fs::hard_link(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Why this machine is not ours to run a cluster on, if it is not.
fn refusal() -> Option<String> {
    let kubelets = running("kubelet");
    if !kubelets.is_empty() {
        return Some(format!(
            "refusing to run: a kubelet runs already (pid {kubelets:?}); this suite needs the machine's kubelet paths"
        ));
    }
    let kubelet_dir = Path::new("/var/lib/kubelet");
    if kubelet_dir.exists() && !kubelet_dir.join(common::REALNODE_MARKER).exists() {
        return Some(
            "refusing to run: /var/lib/kubelet exists and is not a real-node suite's (a kubelet's state must not be touched)".into(),
        );
    }
    for port in PORTS {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Some(format!(
                "refusing to run: port {port} is taken ({e}): another cluster runs"
            ));
        }
    }
    None
}

/// What a run made: its cluster dir, the host paths that were not there,
/// and the entries of [`ENTRY_DIRS`] that were.
#[derive(Debug, Default)]
struct Made {
    cluster: Option<PathBuf>,
    host: Vec<PathBuf>,
    keep: BTreeSet<PathBuf>,
}

impl Made {
    fn entries() -> BTreeSet<PathBuf> {
        ENTRY_DIRS
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .collect()
    }

    fn write(&self) {
        let mut text = String::new();
        if let Some(p) = &self.cluster {
            text.push_str(&format!("cluster {}\n", p.display()));
        }
        for p in &self.host {
            text.push_str(&format!("host {}\n", p.display()));
        }
        for p in &self.keep {
            text.push_str(&format!("keep {}\n", p.display()));
        }
        std::fs::create_dir_all(made_list().parent().unwrap()).unwrap();
        std::fs::write(made_list(), text).unwrap();
    }

    fn read() -> Option<Made> {
        let text = std::fs::read_to_string(made_list()).ok()?;
        let mut made = Made::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("cluster", p)) => made.cluster = Some(p.into()),
                Some(("host", p)) => made.host.push(p.into()),
                Some(("keep", p)) => {
                    made.keep.insert(p.into());
                }
                _ => {}
            }
        }
        Some(made)
    }
}

/// Signals the processes of `names` (their `state/<name>.pid`, when the
/// process's command line names the cluster dir), then waits until each
/// has ended; SIGKILL for one that has not after 10 s.
fn stop_all(dir: &Path, names: &[(&str, Signal)]) {
    let text = dir.display().to_string();
    let mut pids = Vec::new();
    for (name, sig) in names {
        let Ok(pid) = std::fs::read_to_string(dir.join(format!("state/{name}.pid"))) else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&text) {
            let _ = kill(Pid::from_raw(pid), *sig);
            pids.push(pid);
        }
    }
    for limit in [Duration::from_secs(10), Duration::from_secs(5)] {
        if wait_until("exit", limit, || {
            pids.iter().all(|p| gone(*p)).then_some(())
        })
        .is_ok()
        {
            return;
        }
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
}

/// Stops and removes a cluster and what it left on the host: the kubelet
/// first (so that it makes no sandbox anew), the pods' sandboxes while
/// containerd still runs, the other processes at once (the API server
/// killed: its graceful stop takes 20 s, for a cluster thrown away), then
/// the kit's `cluster down` (mounts, the bridge, what it added below host
/// dirs, `/var/log` as it was), then what `down` misses: shims and their
/// containers (found by the cluster dir in their command line), mounts
/// left below the dir, new network namespaces, shim sockets and runc
/// state, the host paths the run made, the dir.
fn teardown(kit: &Path, made: &Made) {
    if let Some(dir) = &made.cluster {
        stop_all(dir, &[("kubelet", Signal::SIGTERM)]);
        let crictl = dir.join("rn-bin/crictl");
        let socket = dir.join("run/containerd.sock");
        if crictl.exists() && socket.exists() {
            let mut cmd = Command::new(crictl);
            cmd.args(["--timeout", "60s", "--runtime-endpoint"])
                .arg(format!("unix://{}", socket.display()))
                .args(["rmp", "-fa"]);
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                common::output(cmd, Duration::from_secs(90))
            }));
        }
        stop_all(
            dir,
            &[
                ("containerd", Signal::SIGTERM),
                ("kcm", Signal::SIGTERM),
                ("scheduler", Signal::SIGTERM),
                ("apiserver", Signal::SIGKILL),
                ("etcd", Signal::SIGTERM),
            ],
        );
        let mut down = Command::new(kit.join("cluster"));
        down.arg("down").env("CLUSTER_DIR", dir);
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            common::output(down, Duration::from_secs(180))
        })) {
            Ok(out) if !out.status.success() => eprintln!(
                "cluster down failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Ok(_) => {}
            Err(_) => eprintln!("cluster down did not finish"),
        }
        let left = common::with_descendants(&mentioning(&dir.display().to_string()));
        for pid in &left {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = wait_until("leftover processes to end", SHORT, || {
            left.iter().all(|p| gone(*p)).then_some(())
        });
        unmount_below(&[dir.as_path()]);
    }
    let new: Vec<PathBuf> = Made::entries().difference(&made.keep).cloned().collect();
    let roots: Vec<&Path> = new.iter().map(PathBuf::as_path).collect();
    unmount_below(&roots);
    for p in new.iter().chain(&made.host).chain(&made.cluster) {
        if let Err(e) = remove(p) {
            eprintln!("cannot remove {}: {e}", p.display());
        }
    }
    let _ = std::fs::remove_file(made_list());
}

/// What a killed earlier run left.
fn clean_leftovers(kit: &Path) {
    if let Some(made) = Made::read() {
        eprintln!("cleaning up after an earlier run that did not finish: {made:?}");
        teardown(kit, &made);
    }
}

/// A process of the cluster as it was started, to start it again.
struct Started {
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

/// A device the driver publishes, as the suite expects it.
#[derive(Clone, Debug)]
struct Dev {
    name: String,
    resource: &'static str,
    kind: &'static str,
    id: String,
    host_path: PathBuf,
    major: u64,
    minor: u64,
}

/// A claim the driver prepared, and the pod it was made for.
#[derive(Clone, Debug)]
struct Held {
    pod: String,
    claim: String,
    uid: String,
    devices: Vec<String>,
}

/// One cluster of one version, the driver, and what the suite made;
/// dropping it stops and removes everything.
struct Cluster {
    version: Version,
    kit: PathBuf,
    dir: PathBuf,
    made: Made,
    admin: Option<Client>,
    driver: Option<Plugin>,
    driver_args: Vec<String>,
    /// The logs of the driver's earlier runs.
    old_logs: String,
    devices: Vec<Dev>,
    held: Vec<Held>,
    started: Instant,
}

impl Cluster {
    /// Starts a cluster of `version` with the kit's script, after making
    /// what it needs on the host.
    fn start(kit: &Path, version: Version) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("kp-dra-")
            .tempdir()
            .unwrap()
            .keep();
        let kubelet_dir = Path::new("/var/lib/kubelet");
        // Ours: one with the marker is what a killed real-node run left.
        let host: Vec<PathBuf> = HOST_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| {
                !p.exists() || (p == kubelet_dir && p.join(common::REALNODE_MARKER).exists())
            })
            .collect();
        let made = Made {
            cluster: Some(dir.clone()),
            host,
            keep: Made::entries(),
        };
        made.write();
        let mut c = Cluster {
            version,
            kit: kit.to_path_buf(),
            dir,
            made,
            admin: None,
            driver: None,
            driver_args: Vec::new(),
            old_logs: String::new(),
            devices: Vec::new(),
            held: Vec::new(),
            started: Instant::now(),
        };
        // Kit pitfall: without these `cluster up` fails silently after
        // "apiserver ready" (an `ls` of them under `set -e`).
        std::fs::create_dir_all(kubelet_dir.join("device-plugins")).unwrap();
        std::fs::write(kubelet_dir.join(common::REALNODE_MARKER), "").unwrap();
        for d in ["/var/log/pods", "/var/log/containers"] {
            std::fs::create_dir_all(d).unwrap();
        }
        link_all(&unpacked("bin"), &c.dir.join("rn-bin"));
        let bin = c.dir.join(format!("bin-{}", version.number()));
        link_all(&unpacked(&format!("k8s-{}", version.number())), &bin);
        if version == Version::V132 {
            // The script takes 1.36's kubectl for 1.32 too.
            link_all(&unpacked("k8s-1.36"), &c.dir.join("kubectl-1.36"));
            std::fs::rename(c.dir.join("kubectl-1.36/kubectl"), bin.join("kubectl")).unwrap();
        }
        let mut up = Command::new(kit.join("cluster"));
        up.args(["up", version.number()])
            .env("CLUSTER_DIR", &c.dir)
            .env("KUBELET_V", "4");
        let out = common::output(up, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "cluster up {}: {}{}\n--- kubelet log:\n{}",
            version.number(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&c.dir.join("state/kubelet.log"), 30)
        );
        let config = Config::from_kubeconfig(&c.dir.join("kubeconfig")).unwrap();
        c.admin = Some(Client::new(config).unwrap());
        c
    }

    fn phase(&self, what: &str) {
        eprintln!(
            "[{} {:>5.1} s] {what}",
            self.version.number(),
            self.started.elapsed().as_secs_f64()
        );
    }

    fn api(&self) -> &Client {
        self.admin.as_ref().expect("the cluster runs")
    }

    fn dev_dir(&self) -> PathBuf {
        self.dir.join("dev")
    }

    fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet-root")
    }

    fn driver_dir(&self) -> PathBuf {
        self.kubelet_root().join("plugins").join(DRIVER)
    }

    fn registration_socket(&self) -> PathBuf {
        self.kubelet_root()
            .join("plugins_registry")
            .join(format!("{DRIVER}-reg.sock"))
    }

    fn kubelet_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("state/kubelet.log")).unwrap_or_default()
    }

    /// How many kubelet log lines hold every one of `parts`.
    fn kubelet_count(&self, parts: &[&str]) -> usize {
        self.kubelet_log()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    fn driver_log(&self) -> String {
        let now = self.driver.as_ref().map(Plugin::log).unwrap_or_default();
        format!("{}{now}", self.old_logs)
    }

    /// How many times `what` is in the driver's log (every run).
    fn driver_count(&self, what: &str) -> usize {
        self.driver_log().matches(what).count()
    }

    /// The log lines a failure shows: the driver's (but its successful API
    /// requests) and the kubelet's about DRA, claims and errors.
    fn context(&self) -> String {
        let driver = self.driver_log();
        let d: Vec<&str> = driver
            .lines()
            .filter(|l| !(l.contains("api request") && l.contains(" status=2")))
            .collect();
        let kubelet = self.kubelet_log();
        let keys = ["DRA", "dra_", "ResourceSlice", "Prepare", "esourceClaim"];
        let k: Vec<String> = kubelet
            .lines()
            // Errors, warnings and what is about DRA; not cAdvisor's
            // complaints about /proc.
            .filter(|l| {
                (l.starts_with('E') || l.starts_with('W') || keys.iter().any(|k| l.contains(k)))
                    && !l.contains("error while reading")
            })
            .map(|l| l.chars().take(400).collect())
            .collect();
        format!(
            "--- driver log (last lines):\n{}\n--- kubelet log (last lines about DRA, claims, errors):\n{}",
            d[d.len().saturating_sub(40)..].join("\n"),
            k[k.len().saturating_sub(40)..].join("\n")
        )
    }

    /// Polls `probe` until it gives a value, at most `limit`; panics with
    /// `what` and the logs otherwise.
    fn wait<T>(&self, what: &str, limit: Duration, probe: impl FnMut() -> Option<T>) -> T {
        wait_until(what, limit, probe).unwrap_or_else(|e| panic!("{e}\n{}", self.context()))
    }

    /// Panics with `msg` and the logs unless `ok`.
    fn ensure(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            panic!("{}\n{}", msg(), self.context());
        }
    }

    /// Runs the cluster's kubectl as admin; its output.
    fn kubectl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(self.dir.join("bin/kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            // Not ~/.kube/cache: nothing of ours outside the dir.
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .args(args);
        let out = common::output(cmd, LONG);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        self.ensure(out.status.success(), || {
            format!(
                "kubectl {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        text
    }

    /// Applies `docs` (written to `<dir>/<name>.yaml`).
    fn apply(&self, name: &str, docs: &[Yaml]) {
        let text: Vec<String> = docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text.join("---\n")).unwrap();
        self.kubectl(&["apply", "-f", &path.display().to_string()]);
    }

    fn get(&self, path: &str) -> Option<Json> {
        self.api().get(path).ok()
    }

    fn pod(&self, name: &str) -> Option<Json> {
        self.get(&format!("/api/v1/namespaces/default/pods/{name}"))
    }

    fn claim(&self, name: &str) -> Option<Json> {
        self.get(&format!(
            "/apis/resource.k8s.io/{}/namespaces/default/resourceclaims/{name}",
            self.version.api()
        ))
    }

    /// The node's slices, as the API lists them (in a
    /// `ResourceSliceList` of this version).
    fn slices(&self) -> Option<Vec<Json>> {
        let list = self.get(&format!(
            "/apis/resource.k8s.io/{}/resourceslices?fieldSelector=spec.nodeName%3D{NODE}",
            self.version.api()
        ))?;
        let version = format!("resource.k8s.io/{}", self.version.api());
        (list["apiVersion"] == version.as_str() && list["kind"] == "ResourceSliceList")
            .then(|| list["items"].as_array().cloned())
            .flatten()
    }

    // --- the driver

    /// Makes the dev dir (a clone of the host's /dev/kvm, ttyUSB0) and
    /// the driver's credentials; starts it.
    fn start_driver(&mut self) {
        let dev = self.dev_dir();
        std::fs::create_dir_all(&dev).unwrap();
        let kvm = stat("/dev/kvm").unwrap().st_rdev;
        mknod(
            &dev.join("kvm"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o660),
            kvm,
        )
        .unwrap();
        self.plug_serial(0);
        let kubeconfig = match self.version {
            Version::V136 => {
                // The DaemonSet's account: its ClusterRole must suffice.
                let rbac = self.dir.join("rbac.yaml");
                std::fs::copy(repo().join("kubelet/dra/rbac.yaml"), &rbac).unwrap();
                self.kubectl(&["apply", "-f", &rbac.display().to_string()]);
                let token =
                    self.kubectl(&["create", "token", "kubelet-plugin-dra", "-n", "kube-system"]);
                let path = self.dir.join("driver.kubeconfig");
                let ca = self.dir.join("pki/serving/apiserver.crt");
                std::fs::write(
                    &path,
                    format!(
                        "apiVersion: v1\nkind: Config\n\
                         clusters: [{{name: local, cluster: {{server: \"https://127.0.0.1:6443\", certificate-authority: \"{}\"}}}}]\n\
                         users: [{{name: driver, user: {{token: {}}}}}]\n\
                         contexts: [{{name: driver, context: {{cluster: local, user: driver}}}}]\n\
                         current-context: driver\n",
                        ca.display(),
                        token.trim()
                    ),
                )
                .unwrap();
                path
            }
            // The node's own identity (the Node authorizer).
            Version::V132 => self.dir.join("kubelet.kubeconfig"),
        };
        let path = |p: PathBuf| p.display().to_string();
        self.driver_args = vec![
            "run".into(),
            "--api".into(),
            "dra".into(),
            "--dra-plugin-dir".into(),
            path(self.kubelet_root().join("plugins")),
            "--plugins-registry-dir".into(),
            path(self.kubelet_root().join("plugins_registry")),
            "--cdi-dir".into(),
            path(self.dir.join("cdi")),
            "--dev-dir".into(),
            path(dev.clone()),
            "--device".into(),
            "serial=ttyUSB*".into(),
            "--crand-count".into(),
            CRAND_COUNT.to_string(),
            "--kvm-count".into(),
            KVM_COUNT.to_string(),
            "--node-name".into(),
            NODE.into(),
            "--kubeconfig".into(),
            path(kubeconfig),
            "--log-level".into(),
            "debug".into(),
        ];
        self.devices = (0..CRAND_COUNT)
            .map(|i| Dev {
                name: format!("crand{i}"),
                resource: "crand",
                kind: "crand",
                id: format!("crand{i}"),
                host_path: dev.join(format!("crand{i}")),
                major: 1,
                minor: 8,
            })
            .chain((0..KVM_COUNT).map(|i| Dev {
                name: format!("kvm{i}"),
                resource: "kvm",
                kind: "kvm",
                id: format!("kvm{i}"),
                host_path: dev.join("kvm"),
                major: nix::sys::stat::major(kvm),
                minor: nix::sys::stat::minor(kvm),
            }))
            .chain([Dev {
                name: TTYUSB0.into(),
                resource: "serial",
                kind: "dev",
                id: "ttyUSB0".into(),
                host_path: dev.join("ttyUSB0"),
                major: TTYUSB_MAJOR,
                minor: 0,
            }])
            .collect();
        self.run_driver();
    }

    fn run_driver(&mut self) {
        assert!(self.driver.is_none(), "one driver at a time");
        let mut cmd = Command::new(plugin_bin());
        cmd.args(&self.driver_args).stdout(Stdio::null());
        self.driver = Some(Plugin::spawn(&mut cmd));
    }

    /// Waits for the `n`th registration of the driver (counted over its
    /// runs).
    fn wait_registered(&self, n: usize) {
        self.wait(
            &format!("registration {n} of the driver with the kubelet"),
            SHORT,
            || (self.driver_count(&format!("registered driver={DRIVER}")) >= n).then_some(()),
        );
    }

    /// How many of the publisher's API requests got no answer (the
    /// driver's debug line of each request says `status=none`).
    fn publish_failures(&self) -> usize {
        self.driver_log()
            .lines()
            .filter(|l| l.contains("(dra-publish) api request") && l.contains("status=none"))
            .count()
    }

    /// Makes `<dev>/ttyUSB<n>`, a USB serial adapter's node.
    fn plug_serial(&self, n: u64) {
        mknod(
            &self.dev_dir().join(format!("ttyUSB{n}")),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o660),
            makedev(TTYUSB_MAJOR, n),
        )
        .unwrap();
    }

    // --- the slice

    /// `d` as the API returns it in this version, tainted if `reason`.
    fn device_json(&self, d: &Dev, reason: Option<&str>) -> Json {
        let mut attrs = json!({
            "resource": {"string": d.resource},
            "kind": {"string": d.kind},
            "id": {"string": d.id},
            "major": {"int": d.major},
            "minor": {"int": d.minor},
        });
        let path = d.host_path.display().to_string();
        if path.len() <= ATTRIBUTE_MAX {
            attrs["path"] = json!({ "string": path });
        }
        let mut body = json!({ "attributes": attrs });
        if let Some(why) = reason {
            // The server adds timeAdded, which the comparison drops.
            body["taints"] = json!([{
                "key": format!("{DRIVER}/unhealthy"),
                "value": why,
                "effect": "NoSchedule",
            }]);
        }
        match self.version {
            Version::V136 => {
                body["name"] = json!(d.name);
                body
            }
            Version::V132 => json!({ "name": d.name, "basic": body }),
        }
    }

    /// The devices the slice should hold with `unhealthy` (device names)
    /// removed: tainted on 1.36, left out on 1.32.
    fn want_devices(&self, unhealthy: &BTreeSet<String>) -> BTreeMap<String, Json> {
        self.devices
            .iter()
            .filter_map(|d| {
                let bad = unhealthy.contains(&d.name);
                match (bad, self.version) {
                    (true, Version::V132) => None,
                    (true, Version::V136) => Some(self.device_json(d, Some("missing"))),
                    (false, _) => Some(self.device_json(d, None)),
                }
            })
            .map(|d| (d["name"].as_str().unwrap().to_string(), d))
            .collect()
    }

    /// The devices of the node's one slice of ours, by name, with what
    /// the server adds to a taint (`timeAdded`) checked and dropped.
    fn slice_devices(slice: &Json) -> BTreeMap<String, Json> {
        let mut out = BTreeMap::new();
        for d in slice["spec"]["devices"].as_array().into_iter().flatten() {
            let mut d = d.clone();
            let taints = d.get_mut("taints").and_then(Json::as_array_mut);
            for t in taints.into_iter().flatten() {
                if let Some(t) = t.as_object_mut() {
                    assert!(t.remove("timeAdded").is_some(), "{t:?}");
                }
            }
            out.insert(d["name"].as_str().unwrap_or_default().to_string(), d);
        }
        out
    }

    /// Waits until the node has exactly one slice, ours, holding exactly
    /// the devices expected (`unhealthy` tainted or left out), and checks
    /// the rest of it; returns it.
    fn wait_slice(&self, what: &str, unhealthy: &BTreeSet<String>, limit: Duration) -> Json {
        let want = self.want_devices(unhealthy);
        let mut last = None;
        let found = wait_until(what, limit, || {
            let slices = self.slices()?;
            last = Some(slices.clone());
            let [slice] = slices.as_slice() else {
                return None;
            };
            (Self::slice_devices(slice) == want).then(|| slice.clone())
        });
        let slice = found.unwrap_or_else(|e| {
            panic!(
                "{e}: want devices\n{}\ngot slices\n{}\n{}",
                serde_json::to_string_pretty(&want).unwrap(),
                serde_json::to_string_pretty(&last).unwrap(),
                self.context()
            )
        });
        let node_uid = self
            .get(&format!("/api/v1/nodes/{NODE}"))
            .map(|n| n["metadata"]["uid"].clone())
            .unwrap_or_default();
        let meta = &slice["metadata"];
        let spec = &slice["spec"];
        let owner = json!([{
            "apiVersion": "v1",
            "kind": "Node",
            "name": NODE,
            "uid": node_uid,
            "controller": true,
        }]);
        self.ensure(
            meta["name"] == SLICE
                && meta["ownerReferences"] == owner
                && spec["driver"] == DRIVER
                && spec["nodeName"] == NODE
                && spec["pool"]["name"] == NODE
                && spec["pool"]["resourceSliceCount"] == 1
                && spec["pool"]["generation"].as_i64().unwrap_or(0) >= 1,
            || {
                format!(
                    "the slice is not as published:\n{}",
                    serde_json::to_string_pretty(&slice).unwrap()
                )
            },
        );
        slice
    }

    // --- pods

    /// The manifest docs of `file` (in this version's dir), the pods made
    /// to run here: the kit's busybox, never pulled.
    fn docs(&self, path: &Path) -> Vec<Yaml> {
        let text = std::fs::read_to_string(path).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| Yaml::deserialize(d).unwrap())
            .filter(|d| !d.is_null())
            .map(|mut d| {
                if d["kind"] == "Pod" {
                    for c in d["spec"]["containers"].as_sequence_mut().unwrap() {
                        c["image"] = BUSYBOX.into();
                        c.as_mapping_mut()
                            .unwrap()
                            .insert("imagePullPolicy".into(), "Never".into());
                    }
                }
                d
            })
            .collect()
    }

    /// The lines the container `busybox` of pod `name` (uid `uid`) wrote.
    fn container_log(name: &str, uid: &str) -> Vec<String> {
        let path = format!("/var/log/pods/default_{name}_{uid}/busybox/0.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            // "<time> stdout F <text>"
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(str::to_string)
            .collect()
    }

    /// Waits until pod `name` runs and its log is what `done` accepts;
    /// returns the pod and its container's log lines.
    fn running_pod(&self, name: &str, done: impl Fn(&[String]) -> bool) -> (Json, Vec<String>) {
        self.wait(
            &format!("pod {name} running, its output complete"),
            LONG,
            || {
                let pod = self.pod(name)?;
                pod["status"]["containerStatuses"][0]["state"]["running"].as_object()?;
                let lines = Self::container_log(name, pod["metadata"]["uid"].as_str()?);
                done(&lines).then_some((pod, lines))
            },
        )
    }

    /// The claim of `pod`: its claim `pod_claim`, or with none the claim
    /// the scheduler made for its extended resources.
    fn claim_of(pod: &Json, pod_claim: Option<&str>) -> String {
        let status = &pod["status"];
        let name = match pod_claim {
            Some(n) => status["resourceClaimStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == n)
                .map(|s| s["resourceClaimName"].clone()),
            None => Some(status["extendedResourceClaimStatus"]["resourceClaimName"].clone()),
        };
        name.and_then(|n| n.as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no claim {pod_claim:?} in {status}"))
    }

    /// The UID of claim `name` and the devices of ours its allocation
    /// names, sorted.
    fn allocated(&self, name: &str) -> (String, Vec<String>) {
        let claim = self
            .claim(name)
            .unwrap_or_else(|| panic!("no claim {name}\n{}", self.context()));
        let mut devices: Vec<String> = claim["status"]["allocation"]["devices"]["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["driver"] == DRIVER && r["pool"] == NODE)
            .filter_map(|r| r["device"].as_str().map(str::to_string))
            .collect();
        devices.sort();
        let uid = claim["metadata"]["uid"].as_str().unwrap().to_string();
        (uid, devices)
    }

    /// Where the container finds device `name`: its node's path under
    /// `/dev` as on the host under the dev dir.
    fn container_path(&self, name: &str) -> String {
        let d = self
            .devices
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no device {name} published"));
        let rel = d.host_path.strip_prefix(self.dev_dir()).unwrap();
        format!("/dev/{}", rel.display())
    }

    /// A pod of two crand devices: it must read exactly the nodes of its
    /// claim's allocation, each giving 8 bytes, with the CDI variables of
    /// exactly those devices.
    fn check_crand_pod(&mut self, pod: &str, pod_claim: Option<&str>) -> Held {
        let (p, lines) = self.running_pod(pod, |l| {
            l.iter().filter(|l| l.starts_with("read ")).count() >= 2
        });
        let claim = Self::claim_of(&p, pod_claim);
        let (uid, devices) = self.allocated(&claim);
        self.ensure(
            devices.len() == 2 && devices.iter().all(|d| d.starts_with("crand")),
            || format!("{pod}: claim {claim} got {devices:?}, not two crand devices"),
        );
        let mut read = Vec::new();
        for l in lines.iter().filter(|l| l.starts_with("read ")) {
            let (node, bytes) = l["read ".len()..].split_once(": ").unwrap();
            self.ensure(bytes.len() == 16, || {
                format!("{pod}: {node} did not give 8 bytes: {l:?}")
            });
            read.push(node.to_string());
        }
        read.sort();
        let want: Vec<String> = devices.iter().map(|d| self.container_path(d)).collect();
        self.ensure(read == want, || {
            format!("{pod}: read {read:?}, its claim {claim} has {devices:?}: {lines:?}")
        });
        let env: BTreeSet<&str> = lines
            .iter()
            .filter(|l| l.starts_with("CDI_DEVICE_"))
            .map(String::as_str)
            .collect();
        let want_env: BTreeSet<String> = devices
            .iter()
            .map(|d| format!("CDI_DEVICE_{}={DRIVER}/crand={d}", d.to_uppercase()))
            .collect();
        self.ensure(env == want_env.iter().map(String::as_str).collect(), || {
            format!("{pod}: CDI variables {env:?}, want {want_env:?}")
        });
        self.hold(pod, claim, uid, devices)
    }

    fn hold(&mut self, pod: &str, claim: String, uid: String, devices: Vec<String>) -> Held {
        let held = Held {
            pod: pod.into(),
            claim,
            uid,
            devices,
        };
        self.held.push(held.clone());
        held
    }

    /// The kvm pod: one slot, and `/dev/kvm` opens read-write.
    fn check_kvm_pod(&mut self) -> Held {
        let (p, lines) = self.running_pod("dra-kvm", |l| l.iter().any(|l| l.starts_with("kvm: ")));
        let claim = Self::claim_of(&p, Some("kvm"));
        let (uid, devices) = self.allocated(&claim);
        self.ensure(devices.len() == 1 && devices[0].starts_with("kvm"), || {
            format!("dra-kvm: claim {claim} got {devices:?}")
        });
        self.ensure(
            lines.iter().any(|l| l == "kvm: /dev/kvm opened read-write")
                && lines.contains(&format!("CDI_DEVICE_KVM={DRIVER}/kvm=kvm")),
            || format!("dra-kvm: {lines:?}"),
        );
        self.hold("dra-kvm", claim, uid, devices)
    }

    /// The serial pod: exactly the adapter of its claim among its nodes.
    fn check_serial_pod(&mut self) -> Held {
        let (p, lines) = self.running_pod("dra-serial", |l| l.iter().any(|l| l == "listed"));
        let claim = Self::claim_of(&p, Some("serial"));
        let (uid, devices) = self.allocated(&claim);
        self.ensure(devices == [TTYUSB0], || {
            format!("dra-serial: claim {claim} got {devices:?}")
        });
        let given: Vec<&String> = lines.iter().filter(|l| l.starts_with("device ")).collect();
        let path = self.container_path(TTYUSB0);
        self.ensure(
            given.len() == 1
                && given[0].starts_with(&format!("device {path} character special"))
                && lines.contains(&format!("CDI_DEVICE_TTYUSB0={DRIVER}/serial=ttyUSB0")),
            || format!("dra-serial: {lines:?}"),
        );
        self.hold("dra-serial", claim, uid, devices)
    }

    /// The containers of `pods`: name -> (container ID, restarts).
    fn containers(&self, pods: &[String]) -> BTreeMap<String, (String, u64)> {
        pods.iter()
            .filter_map(|n| {
                let c = self.pod(n)?["status"]["containerStatuses"][0].clone();
                Some((
                    n.clone(),
                    (
                        c["containerID"].as_str()?.to_string(),
                        c["restartCount"].as_u64()?,
                    ),
                ))
            })
            .collect()
    }

    /// The health the kubelet shows in the status of `pod` for device
    /// `device` of its claim `pod_claim`: (health, message).
    fn pod_health(&self, pod: &str, pod_claim: &str, device: &str) -> Option<(String, String)> {
        let pod = self.pod(pod)?;
        let statuses = pod["status"]["containerStatuses"][0]["allocatedResourcesStatus"]
            .as_array()?
            .clone();
        let status = statuses
            .iter()
            .find(|s| s["name"] == format!("claim:{pod_claim}"))?;
        let id = format!("{DRIVER}/crand={device}");
        let r = status["resources"]
            .as_array()?
            .iter()
            .find(|r| r["resourceID"] == id.as_str())?;
        Some((
            r["health"].as_str()?.to_string(),
            r["message"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// The claim UIDs in the driver's checkpoint.
    fn checkpointed(&self) -> BTreeSet<String> {
        let text =
            std::fs::read_to_string(self.driver_dir().join("checkpoint.json")).unwrap_or_default();
        let cp: Json = serde_json::from_str(&text).unwrap_or_default();
        cp["claims"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Deletes the pod of `held`: it must be gone, its claim unprepared
    /// by the driver (from its checkpoint: no API call needed) and out of
    /// the checkpoint, by the driver running now.
    fn delete_pod(&mut self, held: &Held) {
        let line = format!(
            "claim unprepared claim=default/{} uid={}",
            held.claim, held.uid
        );
        self.ensure(self.checkpointed().contains(&held.uid), || {
            format!("{} not in the checkpoint before its pod goes", held.claim)
        });
        self.api()
            .delete(&format!("/api/v1/namespaces/default/pods/{}", held.pod))
            .unwrap_or_else(|e| panic!("delete pod {}: {e}", held.pod));
        self.wait(&format!("pod {} gone", held.pod), LONG, || {
            self.api()
                .get(&format!("/api/v1/namespaces/default/pods/{}", held.pod))
                .err()
                .filter(|e| e.is_not_found())
                .map(|_| ())
        });
        self.wait(
            &format!("the driver to unprepare {}", held.claim),
            SHORT,
            || {
                let log = self.driver.as_ref().map(Plugin::log).unwrap_or_default();
                log.contains(&line).then_some(())
            },
        );
        self.ensure(!self.checkpointed().contains(&held.uid), || {
            format!("{} still in the checkpoint", held.claim)
        });
        self.ensure(
            self.kubelet_count(&["NodeUnprepareResource", &held.uid]) > 0,
            || format!("no NodeUnprepareResources call for {}", held.uid),
        );
        self.held.retain(|h| h.uid != held.uid);
    }

    fn held(&self, pod: &str) -> Held {
        self.held
            .iter()
            .find(|h| h.pod == pod)
            .cloned()
            .unwrap_or_else(|| panic!("no claim held for {pod}"))
    }

    // --- the cluster's processes

    fn pid_of(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.join(format!("state/{name}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid of {name}"))
    }

    /// Stops the cluster's process `name` with `sig`; how it was started.
    fn stop_process(&self, name: &str, sig: Signal) -> Started {
        let pid = self.pid_of(name);
        let split = |bytes: Vec<u8>| -> Vec<OsString> {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| OsString::from_vec(s.to_vec()))
                .collect()
        };
        let argv = split(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
        let env = split(std::fs::read(format!("/proc/{pid}/environ")).unwrap())
            .into_iter()
            .filter_map(|kv| {
                let kv = kv.into_vec();
                let i = kv.iter().position(|b| *b == b'=')?;
                Some((
                    OsString::from_vec(kv[..i].to_vec()),
                    OsString::from_vec(kv[i + 1..].to_vec()),
                ))
            })
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        kill(Pid::from_raw(pid), sig).unwrap();
        self.wait(&format!("{name} (pid {pid}) to end"), SHORT, || {
            gone(pid).then_some(())
        });
        Started { argv, env, cwd }
    }

    /// Starts process `name` again as it was, its output appended to its
    /// log; its pid where `cluster down` finds it.
    fn start_process(&self, name: &str, how: &Started) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join(format!("state/{name}.log")))
            .unwrap();
        let mut child = Command::new(&how.argv[0])
            .args(&how.argv[1..])
            .env_clear()
            .envs(how.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&how.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(
            self.dir.join(format!("state/{name}.pid")),
            format!("{}\n", child.id()),
        )
        .unwrap();
        // Reaped the moment it ends, whoever stops it.
        std::thread::spawn(move || child.wait());
    }

    // --- the phases

    /// The driver registers and publishes the slice: every device, every
    /// attribute, in this version's shape.
    fn check_registration_and_slice(&mut self) {
        self.phase("driver: registration, the slice");
        self.start_driver();
        self.wait_registered(1);
        self.wait_slice("the slice with every device", &BTreeSet::new(), SHORT);
        let log = self.driver_log();
        let (api, unhealthy) = match self.version {
            Version::V136 => ("resource.k8s.io/v1", "tainted"),
            Version::V132 => ("resource.k8s.io/v1beta1", "left out"),
        };
        self.ensure(
            log.contains(&format!(
                "publishing ResourceSlices api={api} node={NODE} driver={DRIVER} unhealthy_devices={unhealthy}"
            )),
            || "the driver did not say which API it publishes with".into(),
        );
    }

    /// The sample claims and pods run with exactly their devices.
    fn check_pods(&mut self) {
        self.phase("pods: the classes, claims and pods of kubelet/dra");
        let dir = self.version.manifests();
        let mut docs = self.docs(&dir.join("deviceclasses.yaml"));
        docs.extend(self.docs(&dir.join("claims.yaml")));
        docs.extend(self.docs(&dir.join("serial.yaml")));
        if self.version == Version::V136 {
            // The seed's device plugin pod, unchanged but its image: the
            // class's extendedResourceName serves it.
            docs.extend(self.docs(&repo().join("kubelet/pods/busybox-crand.yaml")));
        }
        self.apply("pods", &docs);
        self.check_crand_pod("dra-crand", Some("rngs"));
        self.check_kvm_pod();
        self.check_serial_pod();
        if self.version == Version::V136 {
            self.check_crand_pod("busybox-crand", None);
        }
    }

    /// `status` shows the slice and every prepared claim with its pod.
    fn check_status(&self) {
        self.phase("status: the slice and the prepared claims");
        let mut cmd = Command::new(plugin_bin());
        cmd.arg("status")
            .arg("--cdi-dir")
            .arg(self.dir.join("cdi"))
            .arg("--dra-plugin-dir")
            .arg(self.kubelet_root().join("plugins"));
        let out = common::output(cmd, SHORT);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        self.ensure(out.status.success(), || {
            format!(
                "status: {:?}: {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let n = self.devices.len();
        let generation = self.slices().unwrap()[0]["spec"]["pool"]["generation"].clone();
        let want = [
            format!(
                "{DRIVER} (DRA driver, node {NODE}, resource.k8s.io/{}, registered): {n} devices, {n} healthy, 1 slices",
                self.version.api()
            ),
            format!("    slice {SLICE} generation {generation}: {n} devices"),
        ];
        for w in &want {
            self.ensure(text.lines().any(|l| l == w), || {
                format!("no {w:?} in\n{text}")
            });
        }
        for h in &self.held {
            let head = format!(
                "    claim default/{} uid={} pods={} devices=",
                h.claim, h.uid, h.pod
            );
            let devices = text.lines().find_map(|l| l.strip_prefix(head.as_str()));
            let mut got: Vec<&str> = devices.unwrap_or_default().split(',').collect();
            got.sort();
            self.ensure(got == h.devices, || {
                format!("want {head}{}, in\n{text}", h.devices.join(","))
            });
        }
        let claims = text.lines().filter(|l| l.starts_with("    claim ")).count();
        self.ensure(claims == self.held.len(), || {
            format!(
                "{claims} claims shown, {} prepared:\n{text}",
                self.held.len()
            )
        });
    }

    /// A kubelet restart: the pods keep their containers, nothing is
    /// prepared again, the driver is registered again, and its slice (the
    /// kubelet deletes the node's slices when it starts) is back.
    fn check_kubelet_restart(&mut self) {
        self.phase("kubelet restart");
        let pods: Vec<String> = self.held.iter().map(|h| h.pod.clone()).collect();
        let before = self.containers(&pods);
        let calls = self.kubelet_count(&["Calling NodePrepareResources rpc"]);
        let prepares =
            self.driver_count("claim prepared ") + self.driver_count("claim already prepared");
        let registered = self.driver_count(&format!("registered driver={DRIVER}"));
        let deleted = self.kubelet_count(&["Deleted ResourceSlices"]);
        let synced = |c: &Cluster| -> Vec<usize> {
            pods.iter()
                .map(|p| {
                    c.kubelet_count(&[
                        "computePodActions got for pod",
                        &format!("pod=\"default/{p}\""),
                    ])
                })
                .collect()
        };
        let synced_before = synced(self);
        let slice_uid = self.slices().unwrap()[0]["metadata"]["uid"].clone();
        let how = self.stop_process("kubelet", Signal::SIGKILL);
        self.start_process("kubelet", &how);
        self.wait_registered(registered + 1);
        self.wait("the new kubelet to delete the node's slices", LONG, || {
            (self.kubelet_count(&["Deleted ResourceSlices"]) > deleted).then_some(())
        });
        let slice = self.wait_slice("the slice back", &BTreeSet::new(), LONG);
        self.ensure(slice["metadata"]["uid"] != slice_uid, || {
            "the slice was not made anew after the kubelet deleted it".into()
        });
        // Every pod synced by the new kubelet: past the point where it
        // would have prepared its claims.
        self.wait("every pod synced by the new kubelet", LONG, || {
            synced(self)
                .iter()
                .zip(&synced_before)
                .all(|(now, then)| now > then)
                .then_some(())
        });
        let after = self.containers(&pods);
        self.ensure(after == before, || {
            format!("containers replaced or restarted: {before:?} -> {after:?}")
        });
        let prepares_now =
            self.driver_count("claim prepared ") + self.driver_count("claim already prepared");
        self.ensure(
            self.kubelet_count(&["Calling NodePrepareResources rpc"]) == calls
                && prepares_now == prepares,
            || "the kubelet prepared claims again after its restart".into(),
        );
    }

    /// A crand node removed while a pod holds it: the pod's status says
    /// Unhealthy (1.36), the device is not handed to a new claim (tainted
    /// on 1.36, left out on 1.32: a new pod needing it stays Pending);
    /// made again: Healthy, and the Pending pod runs with it.
    fn check_health(&mut self) {
        self.phase("health: a held and the free crand nodes removed");
        let holder = self.held("dra-crand");
        let sick = holder.devices[0].clone();
        let held: BTreeSet<String> = self.held.iter().flat_map(|h| h.devices.clone()).collect();
        let free: Vec<String> = (0..CRAND_COUNT)
            .map(|i| format!("crand{i}"))
            .filter(|d| !held.contains(d))
            .collect();
        // One free device stays: a claim of two needs an unhealthy one.
        let removed: BTreeSet<String> = free[1..].iter().cloned().chain([sick.clone()]).collect();
        for d in &removed {
            std::fs::remove_file(self.dev_dir().join(d)).unwrap();
        }
        self.wait_slice("unhealthy devices tainted or left out", &removed, SHORT);
        if self.version == Version::V136 {
            self.wait(
                &format!("dra-crand's status to show {sick} Unhealthy"),
                LONG,
                || {
                    let (health, message) = self.pod_health("dra-crand", "rngs", &sick)?;
                    (health == "Unhealthy" && message == "node missing").then_some(())
                },
            );
        }
        let pod = self
            .docs(&self.version.manifests().join("claims.yaml"))
            .into_iter()
            .find(|d| d["kind"] == "Pod" && d["metadata"]["name"] == "dra-crand")
            .map(|mut d| {
                d["metadata"]["name"] = "dra-crand-2".into();
                d
            })
            .unwrap();
        self.apply("pending", &[pod]);
        // The scheduler found no device for its claim: not the unhealthy one.
        let p = self.wait("dra-crand-2 unschedulable for its claim", LONG, || {
            let p = self.pod("dra-crand-2")?;
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| {
                    c["type"] == "PodScheduled"
                        && c["status"] == "False"
                        && c["reason"] == "Unschedulable"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("cannot allocate all claims"))
                })
                .then_some(p)
        });
        let claim = Self::claim_of(&p, Some("rngs"));
        let unallocated = self
            .claim(&claim)
            .is_some_and(|c| c["status"]["allocation"].is_null());
        self.ensure(unallocated, || format!("{claim} allocated while Pending"));
        self.phase("health: the nodes made again");
        let rdev = stat("/dev/random").unwrap().st_rdev;
        for d in &removed {
            mknod(
                &self.dev_dir().join(d),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                rdev,
            )
            .unwrap();
        }
        self.wait_slice("every device healthy again", &BTreeSet::new(), SHORT);
        if self.version == Version::V136 {
            self.wait(
                &format!("dra-crand's status to show {sick} Healthy"),
                LONG,
                || (self.pod_health("dra-crand", "rngs", &sick)?.0 == "Healthy").then_some(()),
            );
        }
        let second = self.check_crand_pod("dra-crand-2", Some("rngs"));
        self.ensure(second.devices.iter().all(|d| free.contains(d)), || {
            format!(
                "dra-crand-2 got {:?}, not of the free {free:?}",
                second.devices
            )
        });
    }

    /// `kill -9` of the driver and a new start: registered again, its
    /// slice there, and a claim the old one prepared unprepared by the
    /// new one.
    fn check_kill9(&mut self) {
        self.phase("driver: kill -9 and a new start");
        let registered = self.driver_count(&format!("registered driver={DRIVER}"));
        let mut old = self.driver.take().unwrap();
        old.signal(Signal::SIGKILL);
        old.wait_exit(SHORT).expect("killed");
        self.old_logs.push_str(&old.log());
        self.run_driver();
        self.wait_registered(registered + 1);
        self.wait_slice("the slice after the new start", &BTreeSet::new(), LONG);
        let earlier = self.held("dra-crand");
        self.delete_pod(&earlier);
    }

    /// A serial adapter plugged in: in the slice at once.
    fn check_hotplug(&mut self) {
        self.phase("hot-plug: ttyUSB1");
        self.plug_serial(1);
        self.expect_serial(1);
        self.wait_slice("ttyUSB1 in the slice", &BTreeSet::new(), SHORT);
    }

    /// Adds `ttyUSB<n>` to the devices expected, named as the slice
    /// names it (a DNS label from its ID).
    fn expect_serial(&mut self, n: u64) {
        let id = format!("ttyUSB{n}");
        let name = self.wait(&format!("{id} in the slice"), LONG, || {
            let slices = self.slices()?;
            slices
                .first()?
                .get("spec")?
                .get("devices")?
                .as_array()?
                .iter()
                .find(|d| {
                    let attrs = match self.version {
                        Version::V136 => &d["attributes"],
                        Version::V132 => &d["basic"]["attributes"],
                    };
                    attrs["id"]["string"] == id.as_str()
                })
                .and_then(|d| d["name"].as_str().map(str::to_string))
        });
        self.ensure(name.starts_with(&format!("ttyusb{n}-")), || {
            format!("{id} named {name}")
        });
        self.devices.push(Dev {
            name,
            resource: "serial",
            kind: "dev",
            id,
            host_path: self.dev_dir().join(format!("ttyUSB{n}")),
            major: TTYUSB_MAJOR,
            minor: n,
        });
    }

    /// The API server stopped while a device appears: the driver logs and
    /// retries, and the slice has the device once the server is back.
    fn check_api_outage(&mut self) {
        self.phase("API server stopped; ttyUSB2 plugged in meanwhile");
        let errors = self.driver_count("cannot publish ResourceSlices");
        let recovered = self.driver_count("ResourceSlices published again; the API server answers");
        let attempts = self.publish_failures();
        let how = self.stop_process("apiserver", Signal::SIGKILL);
        self.plug_serial(2);
        self.wait("the driver to log the failed publish", SHORT, || {
            (self.driver_count("cannot publish ResourceSlices") > errors).then_some(())
        });
        // Down for a while: until the driver has tried again (after its
        // backoff) and failed again.
        self.wait("the driver to try again", SHORT, || {
            (self.publish_failures() >= attempts + 2).then_some(())
        });
        self.phase("API server started again");
        self.start_process("apiserver", &how);
        self.wait("the API server back", LONG, || self.get("/version"));
        self.wait("the driver to publish again", LONG, || {
            (self.driver_count("ResourceSlices published again; the API server answers")
                > recovered)
                .then_some(())
        });
        self.expect_serial(2);
        self.wait_slice("the slice with ttyUSB2", &BTreeSet::new(), SHORT);
    }

    /// Every pod deleted (each claim unprepared), then SIGTERM: exit 0,
    /// both sockets gone.
    fn check_shutdown(&mut self) {
        self.phase("the other pods deleted; SIGTERM");
        for h in self.held.clone() {
            self.delete_pod(&h);
        }
        self.ensure(self.checkpointed().is_empty(), || {
            format!("checkpoint not empty: {:?}", self.checkpointed())
        });
        let mut d = self.driver.take().unwrap();
        d.signal(Signal::SIGTERM);
        let status = d.wait_exit(SHORT).expect("exits on SIGTERM");
        self.old_logs.push_str(&d.log());
        self.ensure(status.code() == Some(0), || {
            format!("driver exit: {status:?}")
        });
        for sock in [
            self.driver_dir().join("dra.sock"),
            self.registration_socket(),
        ] {
            self.ensure(!sock.exists(), || format!("{} left", sock.display()));
        }
    }

    /// Deletes every pod and waits until they are gone, while the driver
    /// can still unprepare their claims (a pod whose claims cannot be
    /// unprepared stays Terminating); forced when it cannot.
    fn delete_pods(&self) {
        let Some(api) = &self.admin else {
            return;
        };
        let list = |api: &Client| -> Vec<String> {
            api.get("/api/v1/namespaces/default/pods")
                .ok()
                .and_then(|l| l["items"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        };
        let mut force = self.driver.is_none();
        for _ in 0..2 {
            let pods = list(api);
            if pods.is_empty() {
                return;
            }
            let grace = if force { "?gracePeriodSeconds=0" } else { "" };
            for p in &pods {
                let _ = api.delete(&format!("/api/v1/namespaces/default/pods/{p}{grace}"));
            }
            if wait_until("pods gone", Duration::from_secs(30), || {
                list(api).is_empty().then_some(())
            })
            .is_ok()
            {
                return;
            }
            force = true;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| self.delete_pods()));
        if let Some(mut d) = self.driver.take() {
            d.signal(Signal::SIGTERM);
            d.wait_exit(Duration::from_secs(5));
        }
        teardown(&self.kit, &self.made);
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every check on a cluster of `version`, in order.
fn suite(kit: &Path, version: Version) {
    let mut c = Cluster::start(kit, version);
    c.phase("cluster up");
    c.check_registration_and_slice();
    c.check_pods();
    c.check_status();
    c.check_kubelet_restart();
    c.check_health();
    c.phase("a pod deleted");
    let second = c.held("dra-crand-2");
    c.delete_pod(&second);
    c.check_kill9();
    c.check_hotplug();
    c.check_api_outage();
    c.check_shutdown();
    c.phase("done; cleaning up");
}

#[test]
fn test_dra_on_real_clusters() {
    let required = std::env::var("REQUIRE_REALNODE").is_ok_and(|v| v == "1");
    // As the real-node suite: without the kit, or on a machine whose
    // kubelet state is not ours, a skip in `make test`'s list; CI, which
    // has the kit and a machine of its own, requires it.
    let skip = |why: String| {
        if required {
            panic!("REQUIRE_REALNODE=1 but the {TEST} cannot run: {why}");
        }
        common::record_skip(TEST, &why);
    };
    let Some(kit) = common::realnode_kit() else {
        return skip("no shared/realnode kit (REALNODE_DIR)".into());
    };
    if !Path::new("/dev/kvm").exists() {
        return common::skip(TEST, "no /dev/kvm to clone for the kvm devices");
    }
    clean_leftovers(&kit);
    if let Some(why) = refusal() {
        return skip(why);
    }
    if let Err(why) = unpack(&kit) {
        return skip(why);
    }
    for version in [Version::V136, Version::V132] {
        let started = Instant::now();
        suite(&kit, version);
        eprintln!(
            "DRA on {}: done in {:.1} s",
            version.number(),
            started.elapsed().as_secs_f64()
        );
    }
}
