//! The real-node suite: our binary against a real kubelet, v1.36 and then
//! v1.32 (the upstream device manager, each on a node of its own), and a
//! real containerd 2.x with CDI, with real pods that get our devices, on
//! the real default dirs (`/var/lib/kubelet/device-plugins`, `/dev`,
//! `/var/run/cdi`).
//!
//! The kubelets and containerd come from `REALNODE_DIR`, or a
//! `shared/realnode` kit beside the checkout or a dir above it (its `bin`
//! set: containerd and the v1.32 kubelet; its `k8s-1.36` set: the v1.36
//! kubelet), else from `KUBELET` and `CONTAINERD` (one kubelet; with
//! `containerd-shim-runc-v2` beside it; `CRICTL` optional, and images that
//! containerd can pull); without either the suite says in one line that it
//! is skipped and why. With `REQUIRE_REALNODE=1` (CI) a skip is a failure.
//!
//! One test runs the phases in order on one node per kubelet, because a
//! machine has one `/var/lib/kubelet`: it refuses to start when a kubelet
//! runs or `/var/lib/kubelet` belongs to someone else, and [`Node`]'s drop
//! stops everything it started and removes everything it made, also when a
//! check fails; what a killed run left behind is cleaned up by the next
//! one. Each failure message shows the kubelet log lines that matter.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{Plugin, mentioning, remove, running, unmount_below, wait_until};
use kubelet_plugin::api::api;
use nix::{
    sys::{
        signal::{Signal, kill},
        stat::{Mode, SFlag, mknod, stat},
    },
    unistd::Pid,
};
use protobuf::Message as _;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const CRAND: &str = "github.com.ihcsim/crand";
const KVM: &str = "github.com.ihcsim/kvm";
const PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
const REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
const CDI_DIR: &str = "/var/run/cdi";
/// The node name the kubelet runs under; static pods are `<name>-<node>`.
const NODE: &str = "realnode";
const BUSYBOX: &str = "docker.io/library/busybox:latest";
const PAUSE: &str = "registry.k8s.io/pause:3.6";
const READ_ONLY_PORT: u16 = 10255;
/// What the kubelet makes outside its scratch dir, removed at the end when
/// it was not there before.
const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/usr/libexec/kubernetes",
    "/opt/containerd",
    "/run/containerd",
    "/run/nri",
    CDI_DIR,
];
/// Written into `/var/lib/kubelet` when this suite makes it (see
/// [`common::REALNODE_MARKER`]).
const MARKER: &str = common::REALNODE_MARKER;
const SHORT: Duration = Duration::from_secs(15);
/// For what waits on containers and kubelet restarts.
const LONG: Duration = Duration::from_secs(60);

fn plugin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubelet-plugin")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where this suite keeps what outlives one run: the unpacked binaries,
/// and the list of what a run made (for the next run to clean when this
/// one was killed).
fn keep_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("realnode")
}

fn made_list() -> PathBuf {
    keep_dir().join("made.txt")
}

/// The containerd and helpers this run uses, and the kubelets the suite
/// runs with, one after the other.
#[derive(Clone)]
struct Tools {
    kubelets: Vec<Kubelet>,
    containerd: PathBuf,
    /// Put first on containerd's PATH: where its shim is.
    bin_dir: PathBuf,
    crictl: Option<PathBuf>,
    ctr: Option<PathBuf>,
    /// docker-archive images to import; none: pull.
    images: Vec<PathBuf>,
}

/// A kubelet binary and its version.
#[derive(Clone, Debug)]
struct Kubelet {
    path: PathBuf,
    /// As `--version` says it: `v1.36.3`.
    version: String,
    /// The minor version: 36.
    minor: u32,
}

impl Kubelet {
    fn new(path: PathBuf) -> Result<Kubelet, String> {
        let mut cmd = Command::new(&path);
        cmd.arg("--version");
        let out = common::output(cmd, SHORT);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "Kubernetes v1.36.3"
        let version = text.rsplit(' ').next().unwrap_or_default().to_string();
        let minor = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| format!("{} --version: {text:?}", path.display()))?;
        Ok(Kubelet {
            path,
            version,
            minor,
        })
    }
}

/// Unpacks the kit's set `set` into `dir` (once: `unpack` skips what is
/// there and newer than its archive).
fn unpack(kit: &Path, set: &str, dir: &Path) -> Result<(), String> {
    let mut cmd = Command::new(kit.join("unpack"));
    cmd.arg(dir).arg(set);
    let out = common::output(cmd, Duration::from_secs(300));
    if !out.status.success() {
        return Err(format!(
            "{}/unpack {} {set} failed: {}",
            kit.display(),
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Finds the tools, or says why there are none: the kit's containerd and
/// its kubelets v1.32 (`bin`) and v1.36 (`k8s-1.36`, unpacked where the
/// kube and DRA suites unpack it too), else `KUBELET` and `CONTAINERD`.
fn tools() -> Result<Tools, String> {
    if let Some(kit) = common::realnode_kit() {
        let bin = keep_dir().join("bin");
        unpack(&kit, "bin", &bin)?;
        let k136 = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s-1.36");
        unpack(&kit, "k8s-1.36", &k136)?;
        return Ok(Tools {
            kubelets: vec![
                Kubelet::new(k136.join("kubelet"))?,
                Kubelet::new(bin.join("kubelet"))?,
            ],
            containerd: bin.join("containerd"),
            crictl: Some(bin.join("crictl")),
            ctr: Some(bin.join("ctr")),
            bin_dir: bin,
            images: vec![kit.join("images/busybox.tar"), kit.join("images/pause.tar")],
        });
    }
    let (Some(kubelet), Some(containerd)) =
        (std::env::var_os("KUBELET"), std::env::var_os("CONTAINERD"))
    else {
        return Err(
            "no shared/realnode kit (REALNODE_DIR) and no KUBELET=/path/to/kubelet CONTAINERD=/path/to/containerd (2.x)"
                .into(),
        );
    };
    let containerd = PathBuf::from(containerd);
    let bin_dir = containerd.parent().unwrap_or(Path::new("/")).to_path_buf();
    Ok(Tools {
        kubelets: vec![Kubelet::new(kubelet.into())?],
        crictl: std::env::var_os("CRICTL").map(PathBuf::from),
        ctr: Some(bin_dir.join("ctr")).filter(|p| p.exists()),
        bin_dir,
        containerd,
        images: Vec::new(),
    })
}

/// What a killed earlier run left: its processes, mounts and files.
fn clean_leftovers() {
    let Ok(list) = std::fs::read_to_string(made_list()) else {
        return;
    };
    eprintln!("cleaning up after an earlier run that did not finish");
    let paths: Vec<PathBuf> = list.lines().map(PathBuf::from).collect();
    for p in &paths {
        for pid in mentioning(&p.display().to_string()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let roots: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    unmount_below(&roots);
    for p in &paths {
        let _ = remove(p);
    }
    let _ = std::fs::remove_file(made_list());
}

/// A device plugin: ours, run by the node.
struct Running {
    plugin: Plugin,
    args: Vec<String>,
}

/// The node: containerd and the kubelet in a scratch dir, on this
/// machine's real kubelet paths. Dropping it stops and removes it all.
struct Node {
    work: tempfile::TempDir,
    tools: Tools,
    /// The kubelet binary this node runs.
    kubelet_bin: Kubelet,
    containerd: Option<Child>,
    kubelet: Option<Child>,
    kubelet_starts: usize,
    plugin: Option<Running>,
    /// Host paths this run made (removed at the end).
    made: Vec<PathBuf>,
    /// `/dev/crand*` nodes there before us.
    crand_before: BTreeSet<PathBuf>,
}

impl Node {
    fn work(&self) -> &Path {
        self.work.path()
    }

    fn kubelet_log(&self) -> PathBuf {
        self.work().join("kubelet.log")
    }

    fn socket(&self) -> PathBuf {
        self.work().join("run/containerd.sock")
    }

    /// Starts containerd and the kubelet; refuses when another kubelet
    /// runs or `/var/lib/kubelet` is someone else's.
    fn start(tools: Tools, kubelet_bin: Kubelet) -> Result<Node, String> {
        let others = running("kubelet");
        if !others.is_empty() {
            return Err(format!(
                "refusing to run: a kubelet runs already (pid {others:?}); this suite needs the machine's kubelet paths"
            ));
        }
        clean_leftovers();
        let kubelet_dir = Path::new("/var/lib/kubelet");
        if kubelet_dir.exists() && !kubelet_dir.join(MARKER).exists() {
            return Err(
                "refusing to run: /var/lib/kubelet exists and is not this suite's (a kubelet's state must not be touched)".into(),
            );
        }
        std::fs::create_dir_all(keep_dir()).map_err(|e| e.to_string())?;
        let work = tempfile::Builder::new()
            .prefix("kp-node-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // A /var/lib/kubelet with the marker is what a killed run of a
        // real-node suite (this one or the DRA suite) left: ours to remove.
        let made: Vec<PathBuf> = HOST_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists() || (p == kubelet_dir && p.join(MARKER).exists()))
            .chain([work.path().to_path_buf()])
            .collect();
        // Written first: a run killed from here on is cleaned by the next.
        let list: String = made.iter().map(|p| format!("{}\n", p.display())).collect();
        std::fs::write(made_list(), list).map_err(|e| e.to_string())?;
        let crand_before = crand_nodes();
        let mut node = Node {
            work,
            tools,
            kubelet_bin,
            containerd: None,
            kubelet: None,
            kubelet_starts: 0,
            plugin: None,
            made,
            crand_before,
        };
        std::fs::create_dir_all(kubelet_dir).map_err(|e| e.to_string())?;
        std::fs::write(kubelet_dir.join(MARKER), "").map_err(|e| e.to_string())?;
        for d in ["run", "pods", "containerd"] {
            std::fs::create_dir_all(node.work().join(d)).map_err(|e| e.to_string())?;
        }
        node.start_containerd()?;
        node.start_kubelet();
        Ok(node)
    }

    fn start_containerd(&mut self) -> Result<(), String> {
        let w = self.work().display().to_string();
        // Our own minimal config: CRI v1 with CDI on, the pause image of the
        // local images, and what this sandbox needs (no CAP_SYS_RESOURCE:
        // restrict_oom_score_adj; no hugetlb cgroup).
        let config = format!(
            "version = 3\nroot = '{w}/containerd/root'\nstate = '{w}/containerd/state'\n\
             [grpc]\n  address = '{w}/run/containerd.sock'\n\
             [ttrpc]\n  address = '{w}/run/containerd.sock.ttrpc'\n\
             [plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = '{PAUSE}'\n\
             [plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n  \
             enable_cdi = true\n  cdi_spec_dirs = ['/etc/cdi', '{CDI_DIR}']\n  \
             tolerate_missing_hugetlb_controller = true\n  disable_hugetlb_controller = true\n\
             [plugins.'io.containerd.grpc.v1.cri']\n  disable_tcp_service = true\n  \
             stream_server_address = '127.0.0.1'\n  stream_server_port = '0'\n"
        );
        let config_path = self.work().join("containerd/config.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(self.work().join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            self.tools.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(&self.tools.containerd)
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.tools.containerd.display()))?;
        self.containerd = Some(child);
        let socket = self.socket();
        wait_until("containerd's socket", SHORT, || {
            std::os::unix::net::UnixStream::connect(&socket).ok()
        })
        .map_err(|e| format!("{e}\n{}", tail(&self.work().join("containerd.log"), 20)))?;
        let ctr = |args: &[&str]| -> Result<(), String> {
            let Some(ctr) = &self.tools.ctr else {
                return Err("no ctr beside containerd".into());
            };
            let mut cmd = Command::new(ctr);
            cmd.arg("--address")
                .arg(&socket)
                .args(["-n", "k8s.io"])
                .args(args);
            let out = common::output(cmd, LONG);
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
        };
        if self.tools.images.is_empty() {
            ctr(&["images", "pull", BUSYBOX])?;
            ctr(&["images", "pull", PAUSE])?;
        }
        for image in &self.tools.images {
            ctr(&["images", "import", &image.display().to_string()])?;
        }
        Ok(())
    }

    /// Starts the kubelet with `kubelet/kubelet.yaml`, overriding only the
    /// paths and what this sandbox needs; its log goes on after restarts.
    fn start_kubelet(&mut self) {
        let shipped = std::fs::read_to_string(repo().join("kubelet/kubelet.yaml")).unwrap();
        let mut config: Yaml = serde_yaml::from_str(&shipped).unwrap();
        let set = |c: &mut Yaml, key: &str, value: Yaml| {
            c.as_mapping_mut().unwrap().insert(key.into(), value);
        };
        let w = self.work().display().to_string();
        set(
            &mut config,
            "containerRuntimeEndpoint",
            format!("unix://{w}/run/containerd.sock").into(),
        );
        set(&mut config, "staticPodPath", format!("{w}/pods").into());
        set(&mut config, "fileCheckFrequency", "1s".into());
        set(&mut config, "readOnlyPort", READ_ONLY_PORT.into());
        // The sandbox: cgroup v1 without systemd, no QoS cgroups, no swap
        // rule, no host resolv.conf, no iptables, almost full disks.
        set(&mut config, "cgroupDriver", "cgroupfs".into());
        set(&mut config, "cgroupsPerQOS", false.into());
        set(
            &mut config,
            "enforceNodeAllocatable",
            Yaml::Sequence(vec![]),
        );
        set(&mut config, "resolvConf", "".into());
        set(&mut config, "makeIPTablesUtilChains", false.into());
        set(&mut config, "imageGCHighThresholdPercent", 100.into());
        set(&mut config, "imageGCLowThresholdPercent", 99.into());
        let eviction: Yaml = serde_yaml::from_str(
            "{memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%}",
        )
        .unwrap();
        set(&mut config, "evictionHard", eviction);
        if self.kubelet_bin.minor >= 31 {
            // From 1.35 a kubelet refuses to start on a cgroup v1 host
            // (these machines) unless told not to; the field is there
            // since 1.31.
            set(&mut config, "failCgroupV1", false.into());
        }
        let path = self.work().join("kubelet.yaml");
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.kubelet_log())
            .unwrap();
        let child = Command::new(&self.kubelet_bin.path)
            .arg("--config")
            .arg(&path)
            .args(["--hostname-override", NODE, "--v=4"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.kubelet_bin.path.display()));
        self.kubelet = Some(child);
        self.kubelet_starts += 1;
        let sock = Path::new(PLUGIN_DIR).join("kubelet.sock");
        let starts = self.kubelet_starts;
        self.wait("the kubelet's device plugin socket", LONG, || {
            // The first start's socket, or a new one after a restart.
            let ok = std::os::unix::net::UnixStream::connect(&sock).is_ok();
            (ok && self.log_count("Starting device plugin registration server") >= starts)
                .then_some(())
        });
        self.wait("the kubelet's read-only port", SHORT, || {
            http_get("/healthz").ok().filter(|b| b == "ok")
        });
    }

    /// Stops the kubelet (SIGTERM) and starts it again.
    fn restart_kubelet(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            let _ = kill(Pid::from_raw(k.id() as i32), Signal::SIGTERM);
            wait_exit(&mut k, SHORT);
        }
        self.start_kubelet();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.kubelet_log()).unwrap_or_default()
    }

    fn log_count(&self, what: &str) -> usize {
        self.log().matches(what).count()
    }

    /// The kubelet log lines a failure message should show.
    fn relevant_log(&self) -> String {
        let log = self.log();
        let keys = [
            "device plugin",
            "evice",
            "crand",
            "kvm",
            "lloc",
            "CDI",
            "rror",
            "plugin",
        ];
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| keys.iter().any(|k| l.contains(k)))
            .filter(|l| !l.contains("Clean up orphaned"))
            .collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- kubelet log, last lines about devices and plugins:\n{}\n--- plugin log (tail):\n{}",
            lines[from..].join("\n"),
            self.plugin
                .as_ref()
                .map(|p| {
                    let log = p.plugin.log();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(20)..].join("\n")
                })
                .unwrap_or_default()
        )
    }

    /// Polls `probe` until it gives a value, at most `limit`; panics with
    /// `what` and the relevant log lines otherwise.
    fn wait<T>(&self, what: &str, limit: Duration, probe: impl FnMut() -> Option<T>) -> T {
        wait_until(what, limit, probe).unwrap_or_else(|e| panic!("{e}\n{}", self.relevant_log()))
    }

    /// Waits for the kubelet to log a line, after the first `skip` such
    /// lines, that holds every one of `parts`.
    fn wait_log(&self, what: &str, skip: usize, parts: &[&str]) -> String {
        self.wait(what, SHORT, || {
            self.log()
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .nth(skip)
                .map(str::to_string)
        })
    }

    /// How many kubelet log lines hold every one of `parts`.
    fn count(&self, parts: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// `kubelet-plugin status` with `args` on the real default dirs; its
    /// output (it must not fail to reach every plugin: exit 0 or 3).
    fn status(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(plugin_bin());
        cmd.arg("status").args(args);
        let out = common::output(cmd, SHORT);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "status {args:?}: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.relevant_log()
        );
        text
    }

    /// Starts our plugin, the static binary, on the real default dirs.
    fn start_plugin(&mut self, args: &[&str]) {
        assert!(self.plugin.is_none(), "one plugin at a time");
        let mut cmd = Command::new(plugin_bin());
        cmd.arg("run").args(args).args(["--log-level", "debug"]);
        self.plugin = Some(Running {
            plugin: Plugin::spawn(&mut cmd),
            args: args.iter().map(|a| a.to_string()).collect(),
        });
    }

    /// Starts the plugin and waits until the kubelet has both resources
    /// with the counts asked for.
    fn plugin_registered(&mut self, args: &[&str], crand: usize, kvm: usize) {
        let before = [CRAND, KVM].map(|r| self.count(&["State pushed for device plugin", r]));
        self.start_plugin(args);
        for (i, (resource, n)) in [(CRAND, crand), (KVM, kvm)].into_iter().enumerate() {
            let line = self.wait_log(
                &format!("{resource} registered"),
                before[i],
                &["State pushed for device plugin", resource],
            );
            assert!(
                line.contains(&format!("resourceCapacity={n}")),
                "{resource}: want capacity {n}: {line}\n{}",
                self.relevant_log()
            );
        }
    }

    /// SIGTERM to the plugin: it must exit 0 and leave none of its sockets.
    fn stop_plugin(&mut self) {
        let mut running = self.plugin.take().expect("a plugin runs");
        running.plugin.signal(Signal::SIGTERM);
        let status = running.plugin.wait_exit(SHORT).expect("exits on SIGTERM");
        assert_eq!(
            status.code(),
            Some(0),
            "{:?}: {}",
            running.args,
            running.plugin.log()
        );
        for dir in [PLUGIN_DIR, REGISTRY_DIR] {
            let ours: Vec<_> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n != "kubelet.sock" && n != "kubelet_internal_checkpoint")
                .collect();
            assert!(ours.is_empty(), "left in {dir} after SIGTERM: {ours:?}");
        }
    }

    /// Copies the sample pod `sample` from `kubelet/pods` into the static
    /// pod dir as `name`, adapted to this node: the local busybox, no
    /// pulls, the host's network (no CNI here).
    fn deploy(&self, sample: &str, name: &str) {
        let text = std::fs::read_to_string(repo().join("kubelet/pods").join(sample)).unwrap();
        let mut pod: Yaml = serde_yaml::from_str(&text).unwrap();
        pod["metadata"]["name"] = name.into();
        let spec = pod["spec"].as_mapping_mut().unwrap();
        spec.insert("hostNetwork".into(), true.into());
        let container = pod["spec"]["containers"][0].as_mapping_mut().unwrap();
        container.insert("image".into(), BUSYBOX.into());
        container.insert("imagePullPolicy".into(), "Never".into());
        let dir = self.work().join("pods");
        let tmp = dir.join(format!(".{name}.yaml"));
        std::fs::write(&tmp, serde_yaml::to_string(&pod).unwrap()).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).unwrap();
    }

    /// The pod `name` as the kubelet's read-only port shows it.
    fn pod(&self, name: &str) -> Option<Json> {
        let pods: Json = serde_json::from_str(&http_get("/pods").ok()?).ok()?;
        let full = format!("{name}-{NODE}");
        pods["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
            .cloned()
    }

    /// Waits until the pod's container runs and its log is what `done`
    /// accepts; returns the pod and its container's log lines.
    fn running_pod(&self, name: &str, done: impl Fn(&[String]) -> bool) -> (Json, Vec<String>) {
        self.wait(
            &format!("pod {name} running, its output complete"),
            LONG,
            || {
                let pod = self.pod(name)?;
                let status = &pod["status"]["containerStatuses"][0];
                status["state"]["running"].as_object()?;
                let lines = container_log(pod["metadata"]["uid"].as_str()?, name);
                done(&lines).then_some((pod, lines))
            },
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut running) = self.plugin.take() {
            running.plugin.signal(Signal::SIGTERM);
            running.plugin.wait_exit(Duration::from_secs(5));
        }
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        // The pods' containers go with their sandboxes; then containerd.
        if let Some(crictl) = &self.tools.crictl {
            let mut cmd = Command::new(crictl);
            cmd.arg("--runtime-endpoint")
                .arg(format!("unix://{}", self.socket().display()))
                .args(["rmp", "-af"]);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                common::output(cmd, LONG)
            }));
        }
        if let Some(mut c) = self.containerd.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if !wait_exit(&mut c, Duration::from_secs(10)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Shims and containers that outlived containerd.
        for pid in mentioning(&self.work().display().to_string()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let roots: Vec<&Path> = self
            .made
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/var/lib/kubelet"), self.work()])
            .collect();
        unmount_below(&roots);
        for p in &self.made {
            if let Err(e) = remove(p) {
                eprintln!("cannot remove {}: {e}", p.display());
            }
        }
        for p in crand_nodes().difference(&self.crand_before) {
            let _ = std::fs::remove_file(p);
        }
        // Our specs, when the CDI dir was there before us.
        for name in ["github.com.ihcsim-crand.json", "github.com.ihcsim-kvm.json"] {
            let _ = std::fs::remove_file(Path::new(CDI_DIR).join(name));
        }
        let _ = std::fs::remove_file(made_list());
    }
}

/// The nodes in /dev this suite's plugins make or use: crand's, and the
/// fake serial adapters of the dev phase.
fn crand_nodes() -> BTreeSet<PathBuf> {
    std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("crand") || name.starts_with(SERIAL_PREFIX)
        })
        .map(|e| e.path())
        .collect()
}

/// The fake USB serial adapters of the dev phase: `/dev/ttyKPT0`.. (char
/// nodes with /dev/random's number, so a pod can read them).
const SERIAL_PREFIX: &str = "ttyKPT";
const SERIAL: &str = "github.com.ihcsim/serial";

/// Waits at most `limit` for `child` to exit; whether it did.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    wait_until("exit", limit, || child.try_wait().ok().flatten()).is_ok()
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GET `path` from the kubelet's read-only port; the body.
fn http_get(path: &str) -> Result<String, String> {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", READ_ONLY_PORT)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(SHORT)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}

/// The lines the container `busybox` of pod `name` (uid `uid`) wrote.
fn container_log(uid: &str, name: &str) -> Vec<String> {
    let path = format!("/var/log/pods/default_{name}-{NODE}_{uid}/busybox/0.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        // "<time> stdout F <text>"
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(str::to_string)
        .collect()
}

/// What the kubelet's checkpoint holds for one pod and resource: the
/// device IDs and the Allocate answer it replays.
fn checkpointed(
    uid: &str,
    resource: &str,
) -> Option<(Vec<String>, api::ContainerAllocateResponse)> {
    let text =
        std::fs::read_to_string(Path::new(PLUGIN_DIR).join("kubelet_internal_checkpoint")).ok()?;
    let cp: Json = serde_json::from_str(&text).ok()?;
    let entry = cp["Data"]["PodDeviceEntries"]
        .as_array()?
        .iter()
        .find(|e| e["PodUID"] == uid && e["ResourceName"] == resource)?;
    let mut ids: Vec<String> = entry["DeviceIDs"]
        .as_object()?
        .values()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    ids.sort();
    let resp = base64_decode(entry["AllocResp"].as_str()?)?;
    Some((
        ids,
        api::ContainerAllocateResponse::parse_from_bytes(&resp).ok()?,
    ))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The crand pod's report: every device it read, and its CDI variables.
struct CrandReport {
    read: Vec<String>,
    cdi_env: Vec<String>,
}

/// Checks what a crand sample pod saw against the kubelet's checkpoint:
/// exactly the allocated nodes, each read (8 bytes); returns what it saw,
/// and the Allocate answer.
fn check_crand_pod(
    node: &Node,
    name: &str,
) -> (
    CrandReport,
    Vec<String>,
    api::ContainerAllocateResponse,
    Json,
) {
    // The sample asks for two devices: done once it has read two.
    let (pod, lines) = node.running_pod(name, |lines| {
        lines.iter().filter(|l| l.starts_with("read ")).count() >= 2
    });
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let (ids, resp) = checkpointed(&uid, CRAND)
        .unwrap_or_else(|| panic!("{name}: no checkpoint entry\n{}", node.relevant_log()));
    let mut read = Vec::new();
    for l in lines.iter().filter(|l| l.starts_with("read ")) {
        let (dev, bytes) = l["read /dev/".len()..].split_once(": ").unwrap();
        assert_eq!(bytes.len(), 16, "{name}: {dev} did not give 8 bytes: {l:?}");
        read.push(dev.to_string());
    }
    read.sort();
    assert_eq!(
        read, ids,
        "{name}: the container must see exactly its allocated nodes: {lines:?}"
    );
    let cdi_env = lines
        .iter()
        .filter(|l| l.starts_with("CDI_DEVICE_"))
        .cloned()
        .collect();
    (CrandReport { read, cdi_env }, ids, resp, pod)
}

/// The containers of the running pods: name -> (container ID, restarts).
fn containers() -> BTreeMap<String, (String, u64)> {
    let Ok(body) = http_get("/pods") else {
        return BTreeMap::new();
    };
    let pods: Json = serde_json::from_str(&body).unwrap_or_default();
    // `items` is null while the kubelet has no pod.
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let c = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                (
                    c["containerID"].as_str().unwrap_or_default().to_string(),
                    c["restartCount"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// The health the kubelet shows in the pod's status for a device.
fn pod_health(node: &Node, pod: &str, resource: &str, id: &str) -> Option<String> {
    let pod = node.pod(pod)?;
    let statuses = pod["status"]["containerStatuses"][0]["allocatedResourcesStatus"].as_array()?;
    let status = statuses.iter().find(|s| s["name"] == resource)?;
    status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["resourceID"] == id)
        .and_then(|r| r["health"].as_str().map(str::to_string))
}

/// Removes the node of `device`, which `pod` holds: the kubelet must count
/// one healthy device less and show it Unhealthy in the pod's status; made
/// again, Healthy.
fn check_health_flip(node: &Node, pod: &str, device: &str, total: usize) {
    let path = Path::new("/dev").join(device);
    let rdev = stat("/dev/random").unwrap().st_rdev;
    // Runs `change`, then waits for the kubelet to count `healthy` of
    // `total` devices (a line after those there before).
    let counted = |change: &dyn Fn(), healthy: usize, what: &str| {
        let processed = ["Processed device updates for resource", CRAND];
        let before = node.count(&processed);
        change();
        let counts = [
            format!("totalCount={total}"),
            format!("healthyCount={healthy}"),
        ];
        node.wait(
            &format!("the kubelet to count {device} {what}"),
            SHORT,
            || {
                node.log()
                    .lines()
                    .filter(|l| processed.iter().all(|p| l.contains(p)))
                    .skip(before)
                    .any(|l| counts.iter().all(|c| l.contains(c.as_str())))
                    .then_some(())
            },
        );
    };
    counted(
        &|| std::fs::remove_file(&path).unwrap(),
        total - 1,
        "unhealthy",
    );
    node.wait(
        &format!("{pod}'s status to show {device} Unhealthy"),
        LONG,
        || (pod_health(node, pod, CRAND, device)? == "Unhealthy").then_some(()),
    );
    let status = node.status(&[]);
    assert!(
        status
            .lines()
            .any(|l| l.trim_start().starts_with(device)
                && l.contains("Unhealthy missing: node missing")),
        "{status}"
    );
    let make = || mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), rdev).unwrap();
    counted(&make, total, "healthy");
    node.wait(
        &format!("{pod}'s status to show {device} Healthy"),
        LONG,
        || (pod_health(node, pod, CRAND, device)? == "Healthy").then_some(()),
    );
}

/// A kubelet restart: both resources registered again, every container
/// still the same and not restarted, no Allocate, no admission error.
fn check_kubelet_restart(node: &mut Node) {
    let before = containers();
    let pushed = [CRAND, KVM].map(|r| node.count(&["State pushed for device plugin", r]));
    let allocations = node.count(&["Making allocation request for device plugin"]);
    node.restart_kubelet();
    for (i, resource) in [CRAND, KVM].into_iter().enumerate() {
        node.wait_log(
            &format!("{resource} registered again after the kubelet restart"),
            pushed[i],
            &["State pushed for device plugin", resource],
        );
    }
    // The static pods are admitted again from the checkpoint.
    let names: Vec<String> = before.keys().cloned().collect();
    let after = node.wait("every pod back in the kubelet's view", LONG, || {
        let now = containers();
        names
            .iter()
            .all(|n| now.get(n).is_some_and(|(id, _)| !id.is_empty()))
            .then_some(now)
    });
    assert_eq!(
        after,
        before,
        "containers replaced or restarted\n{}",
        node.relevant_log()
    );
    assert_eq!(
        node.count(&["Making allocation request for device plugin"]),
        allocations,
        "the kubelet allocated again after its restart\n{}",
        node.relevant_log()
    );
    let pods = http_get("/pods").unwrap();
    assert!(!pods.contains("UnexpectedAdmissionError"), "{pods}");
    assert_eq!(
        node.count(&["UnexpectedAdmissionError"]),
        0,
        "{}",
        node.relevant_log()
    );
}

#[test]
fn test_real_node() {
    let required = std::env::var("REQUIRE_REALNODE").is_ok_and(|v| v == "1");
    // Without a kit, or on a machine whose kubelet state is not ours to
    // touch, the suite says so in the list `make test` ends with; only CI,
    // which has the kit and a machine of its own, requires it.
    let skip = |why: String| {
        if required {
            panic!("REQUIRE_REALNODE=1 but the real-node suite cannot run: {why}");
        }
        common::record_skip("real-node suite", &why);
    };
    let tools = match tools() {
        Ok(t) => t,
        Err(why) => return skip(why),
    };
    // The same checks for each kubelet, each on a node of its own.
    for kubelet in tools.kubelets.clone() {
        let cdi_was_there = Path::new(CDI_DIR).exists();
        let version = kubelet.version.clone();
        let started = Instant::now();
        let node = match Node::start(tools.clone(), kubelet) {
            Ok(n) => n,
            Err(why) => return skip(why),
        };
        suite(node, cdi_was_there);
        eprintln!(
            "kubelet {version}: done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// The phases, in order, on one node; dropping it at the end stops and
/// removes it all.
fn suite(mut node: Node, cdi_was_there: bool) {
    let started = Instant::now();
    let version = node.kubelet_bin.version.clone();
    let phase = |what: &str| {
        eprintln!(
            "[{version} {:>5.1} s] {what}",
            started.elapsed().as_secs_f64()
        )
    };

    // 1. Registration with the counts asked for, on the default dirs.
    phase("kubelet-sock: registration");
    node.plugin_registered(&["--crand-count", "6", "--kvm-count", "2"], 6, 2);
    if !cdi_was_there {
        let log = node.plugin.as_ref().unwrap().plugin.log();
        assert!(
            log.contains("created missing directory --cdi-dir=/var/run/cdi mode=0755"),
            "a missing /var/run/cdi is made: {log}"
        );
    }

    // 2. Pods get their devices, whatever devices the kubelet picks.
    phase("kubelet-sock: the sample pods, injection both");
    node.deploy("busybox-crand.yaml", "crand-both");
    node.deploy("busybox-kvm.yaml", "kvm");
    let (both, both_ids, resp, _) = check_crand_pod(&node, "crand-both");
    assert_eq!(both.cdi_env.len(), 2, "CDI variables: {:?}", both.cdi_env);
    assert_eq!(resp.cdi_devices.len(), 2, "{resp:?}");
    assert_eq!(resp.devices.len(), 2, "{resp:?}");
    let (_, kvm_lines) =
        node.running_pod("kvm", |lines| lines.iter().any(|l| l.starts_with("kvm: ")));
    assert!(
        kvm_lines
            .iter()
            .any(|l| l == "kvm: /dev/kvm opened read-write"),
        "{kvm_lines:?}"
    );

    // `status --pods` names the pods that hold our devices, from the real
    // kubelet's pod-resources API.
    let status = node.status(&["--pods"]);
    for id in &both_ids {
        let line = status
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} in\n{status}"));
        assert!(
            line.contains(&format!("pod=default/crand-both-{NODE}/busybox")),
            "{id}: {line}\n{status}"
        );
    }

    // 3. The injection modes: each pod gets its nodes by the one way asked.
    for (mode, pod) in [("cdi", "crand-cdi"), ("device-spec", "crand-spec")] {
        phase(&format!("kubelet-sock: injection {mode}"));
        node.stop_plugin();
        node.plugin_registered(
            &[
                "--crand-count",
                "6",
                "--kvm-count",
                "2",
                "--device-injection",
                mode,
            ],
            6,
            2,
        );
        node.deploy("busybox-crand.yaml", pod);
        let (report, ids, resp, _) = check_crand_pod(&node, pod);
        let env: Vec<String> = ids
            .iter()
            .map(|id| format!("CDI_DEVICE_{}={CRAND}={id}", id.to_uppercase()))
            .collect();
        if mode == "cdi" {
            // Only CDI: no DeviceSpec in the answer, and the variables that
            // only our spec sets are there, so the runtime used the spec.
            assert!(resp.devices.is_empty(), "{resp:?}");
            assert_eq!(report.cdi_env, env);
        } else {
            assert!(resp.cdi_devices.is_empty(), "{resp:?}");
            assert_eq!(resp.devices.len(), 2, "{resp:?}");
            assert!(report.cdi_env.is_empty(), "{:?}", report.cdi_env);
        }
        assert_eq!(report.read, ids);
    }
    node.stop_plugin();
    node.plugin_registered(&["--crand-count", "6", "--kvm-count", "2"], 6, 2);

    // 4. A kubelet restart keeps every container and allocation.
    phase("kubelet-sock: kubelet restart");
    check_kubelet_restart(&mut node);

    // 5. Health reaches the kubelet and the pod's status.
    phase("kubelet-sock: health");
    check_health_flip(&node, "crand-both", &both_ids[0], 6);

    // 6. SIGTERM: exit 0, sockets gone, the kubelet sees both endpoints go.
    phase("kubelet-sock: SIGTERM, kill -9");
    let unhealthy = [CRAND, KVM].map(|r| node.count(&["Endpoint became unhealthy", r]));
    node.stop_plugin();
    for (i, resource) in [CRAND, KVM].into_iter().enumerate() {
        node.wait_log(
            &format!("the kubelet to drop {resource}"),
            unhealthy[i],
            &["Endpoint became unhealthy", resource],
        );
    }
    // kill -9, then a new start registers again.
    node.plugin_registered(&["--crand-count", "6", "--kvm-count", "2"], 6, 2);
    let mut killed = node.plugin.take().unwrap();
    killed.plugin.signal(Signal::SIGKILL);
    killed.plugin.wait_exit(SHORT).expect("killed");
    node.plugin_registered(&["--crand-count", "6", "--kvm-count", "2"], 6, 2);
    node.stop_plugin();

    // 7. The same life with the kubelet's plugin watcher registering us.
    phase("plugins-registry: registration");
    let watcher = node.count(&["Registering plugin at endpoint"]);
    node.plugin_registered(
        &[
            "--registration",
            "plugins-registry",
            "--crand-count",
            "6",
            "--kvm-count",
            "2",
        ],
        6,
        2,
    );
    assert!(node.count(&["Registering plugin at endpoint"]) >= watcher + 2);
    let socket = Path::new(REGISTRY_DIR).join("github.com.ihcsim-crand.sock");
    assert!(
        std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()),
        "no {}",
        socket.display()
    );
    assert!(!Path::new(PLUGIN_DIR).join("crand.sock").exists());
    phase("plugins-registry: kubelet restart");
    check_kubelet_restart(&mut node);
    phase("plugins-registry: health");
    check_health_flip(&node, "crand-both", &both_ids[1], 6);
    phase("plugins-registry: SIGTERM");
    node.stop_plugin();

    // 8. A dev resource: a pod gets the node it was given, and a node
    // plugged in later reaches the kubelet.
    phase("dev: a serial adapter, then another plugged in");
    let rdev = stat("/dev/random").unwrap().st_rdev;
    let serial = |n: usize| {
        let path = Path::new("/dev").join(format!("{SERIAL_PREFIX}{n}"));
        mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), rdev).unwrap();
    };
    serial(0);
    let pattern = format!("serial={SERIAL_PREFIX}*");
    let before = node.count(&["State pushed for device plugin", SERIAL]);
    node.start_plugin(&["--plugin", "none", "--device", &pattern]);
    let line = node.wait_log(
        "serial registered",
        before,
        &["State pushed for device plugin", SERIAL],
    );
    assert!(line.contains("resourceCapacity=1"), "{line}");
    node.deploy("busybox-serial.yaml", "serial");
    let (_, lines) = node.running_pod("serial", |l| l.iter().any(|l| l == "listed"));
    let given: Vec<&String> = lines.iter().filter(|l| l.starts_with("device ")).collect();
    assert_eq!(given.len(), 1, "{lines:?}");
    assert!(
        given[0].starts_with(&format!("device /dev/{SERIAL_PREFIX}0 character special")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!(
            "CDI_DEVICE_{}0={SERIAL}={SERIAL_PREFIX}0",
            SERIAL_PREFIX.to_uppercase()
        )),
        "{lines:?}"
    );
    let processed = ["Processed device updates for resource", SERIAL];
    let seen = node.count(&processed);
    serial(1);
    let line = node.wait_log("the new serial node at the kubelet", seen, &processed);
    assert!(
        line.contains("totalCount=2") && line.contains("healthyCount=2"),
        "{line}"
    );
    node.stop_plugin();
    phase("done; cleaning up");
}
