//! `kubelet-sim bench-dra`: the DRA driver's figures, measured on the real
//! `kubelet-plugin run --api dra` against a real kube-apiserver (v1.36 from
//! the realnode kit) and etcd, started here on ports of their own, with the
//! simulator playing the kubelet: NodePrepareResources latency including
//! the claim read, hot-plug to the updated ResourceSlice, the API requests
//! of an idle driver, its RSS and threads, and 100 drivers (100 nodes, 100
//! devices each) publishing at once.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    Sim,
    bench::{Dist, Report, clk_tck, cpu_ticks, footprint, progress},
    demo::mknod_like,
};
use crate::kube::{self, Client};

const DRIVER: &str = "github.com.ihcsim";
const APISERVER_PORT: u16 = 28443;
// Below the kernel's ephemeral ports (32768..), where a leftover client
// connection could hold one.
const ETCD_PORTS: (u16, u16) = (28379, 28380);
const TOKEN: &str = "bench-admin-token";
const WAIT: Duration = Duration::from_secs(30);

/// How much to measure; the defaults are the issue's.
#[derive(Clone, Debug)]
pub struct Options {
    /// The plugin binary.
    pub plugin_bin: PathBuf,
    /// The realnode kit (its `unpack` and `k8s-1.36/`).
    pub kit: PathBuf,
    /// Where results go (JSON).
    pub out: PathBuf,
    /// Prepare calls, each for a claim of its own.
    pub prepares: usize,
    /// Hot-plugged nodes.
    pub hotplugs: usize,
    /// Seconds the idle driver is watched.
    pub idle_secs: u64,
    /// Drivers started at once for the scale figure.
    pub instances: usize,
    /// Devices of each of those drivers.
    pub devices: usize,
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// etcd and a kube-apiserver in a temp dir, stopped and removed on drop.
struct ApiServer {
    procs: Vec<Proc>,
    dir: PathBuf,
    kubeconfig: PathBuf,
    client: Client,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The API server before etcd, then their dir.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc, String> {
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn()
        .map(Proc)
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

impl ApiServer {
    fn start(kit: &Path) -> Result<ApiServer, String> {
        let dir = std::env::temp_dir().join(format!("kp-bench-dra-{}", std::process::id()));
        // Removes the dir (and stops what was started) if a step fails.
        struct Partial(Option<PathBuf>, Vec<Proc>);
        impl Drop for Partial {
            fn drop(&mut self) {
                self.1.clear();
                if let Some(dir) = &self.0 {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        let mut partial = Partial(Some(dir.clone()), Vec::new());
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        let unpack = Command::new(kit.join("unpack"))
            .arg(&bin)
            .arg("k8s-1.36")
            .output()
            .map_err(|e| format!("{}/unpack: {e}", kit.display()))?;
        if !unpack.status.success() {
            return Err(format!(
                "unpack: {}",
                String::from_utf8_lossy(&unpack.stderr)
            ));
        }
        let (client_port, peer_port) = ETCD_PORTS;
        let etcd = spawn(
            Command::new("etcd").args([
                "--name",
                "bench",
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client_port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client_port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("bench=http://127.0.0.1:{peer_port}"),
            ]),
            &dir.join("etcd.log"),
        )?;
        partial.1.push(etcd);
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TOKEN},admin,admin,\"system:masters\"\n"),
        )
        .map_err(|e| e.to_string())?;
        let sa = dir.join("sa.key");
        let key = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa)
            .arg("2048")
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !key.status.success() {
            return Err("openssl genrsa failed".into());
        }
        let certs = dir.join("pki");
        let apiserver = spawn(
            Command::new(bin.join("kube-apiserver"))
                .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={APISERVER_PORT}"))
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--cert-dir={}", certs.display()))
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!("--service-account-key-file={}", sa.display()))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    sa.display()
                ))
                .arg(format!(
                    "--token-auth-file={}",
                    dir.join("tokens.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--endpoint-reconciler-type=none")
                .arg("--service-cluster-ip-range=10.96.0.0/24"),
            &dir.join("apiserver.log"),
        )?;
        partial.1.push(apiserver);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: b, cluster: {{server: \"https://127.0.0.1:{APISERVER_PORT}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: u, user: {{token: {TOKEN}}}}}]\ncontexts: [{{name: c, context: {{cluster: b, user: u}}}}]\ncurrent-context: c\n",
                certs.join("apiserver.crt").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        // The serving certificate appears once the server starts.
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = loop {
            let ready = kube::Config::from_kubeconfig(&kubeconfig)
                .and_then(Client::new)
                .ok()
                .filter(|c| c.get("/apis/resource.k8s.io/v1").is_ok());
            if let Some(c) = ready {
                break c;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready; see {}/apiserver.log",
                    dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        // The server makes `default` a moment after it is ready.
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        match client.create("/api/v1/namespaces", &ns) {
            Err(e) if !e.is_already_exists() => return Err(e.to_string()),
            _ => {}
        }
        let procs = std::mem::take(&mut partial.1);
        partial.0 = None;
        Ok(ApiServer {
            procs,
            dir,
            kubeconfig,
            client,
        })
    }

    fn node(&self, name: &str) -> Result<(), String> {
        let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
        self.client
            .create("/api/v1/nodes", &body)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The slices of `node`.
    fn slices(&self, node: &str) -> Vec<Value> {
        let path = format!(
            "/apis/resource.k8s.io/v1/resourceslices?fieldSelector={}",
            kube::query_escape(&format!("spec.nodeName={node}"))
        );
        self.client
            .list(&path)
            .ok()
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// One driver in dirs of its own.
struct Driver {
    proc: Proc,
    dir: PathBuf,
    log: PathBuf,
}

impl Driver {
    fn start(bin: &Path, api: &ApiServer, node: &str, args: &[&str]) -> Result<Driver, String> {
        let dir = api.dir.join("drivers").join(node);
        for d in ["dev", "cdi", "plugins", "registry"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        let log = dir.join("driver.log");
        let proc = spawn(
            Command::new(bin)
                .args([
                    "run",
                    "--api",
                    "dra",
                    "--log-level",
                    "debug",
                    "--node-name",
                    node,
                ])
                .arg("--kubeconfig")
                .arg(&api.kubeconfig)
                .arg("--dev-dir")
                .arg(dir.join("dev"))
                .arg("--cdi-dir")
                .arg(dir.join("cdi"))
                .arg("--dra-plugin-dir")
                .arg(dir.join("plugins"))
                .arg("--plugins-registry-dir")
                .arg(dir.join("registry"))
                .args(args),
            &log,
        )?;
        Ok(Driver { proc, dir, log })
    }

    /// The durations of the API requests it logged whose line holds `what`.
    fn durations(&self, what: &str) -> Vec<Duration> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("api request ") && l.contains(what))
            .filter_map(|l| parse_duration(l.split("duration=").nth(1)?.split_whitespace().next()?))
            .collect()
    }

    /// The API requests it logged: (reads, writes).
    fn requests(&self) -> (usize, usize) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let count = |m: &str| log.matches(&format!("api request method={m} ")).count();
        (count("GET"), count("POST") + count("PUT") + count("DELETE"))
    }
}

/// A duration as `{:?}` prints it: `850.3µs`, `1.234ms`, `2.5s`.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| c.is_alphabetic() || c == 'µ')?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn label(id: &str) -> String {
    crate::dra::names::label(id)
}

/// Runs every DRA measurement and writes the report.
pub fn run(opts: &Options) -> Result<(), String> {
    let began = Instant::now();
    let mut r = Report::default();
    progress("DRA: starting etcd and kube-apiserver v1.36");
    let api = ApiServer::start(&opts.kit)?;
    api.node("bench")?;
    let kubelet = api.dir.join("kubelet");
    std::fs::create_dir_all(&kubelet).map_err(|e| e.to_string())?;
    let mut sim = Sim::start(&kubelet)?;
    let driver = Driver::start(
        &opts.plugin_bin,
        &api,
        "bench",
        &[
            "--plugin",
            "crand",
            "--crand-count",
            "8",
            "--device",
            "serial=ttyUSB*",
        ],
    )?;
    sim.watch_registry(&driver.dir.join("registry"))?;
    sim.wait_dra_registered(DRIVER, WAIT)?;
    prepares(opts, &api, &sim, &driver, &mut r)?;
    hotplugs(opts, &api, &driver, &mut r)?;
    churn(opts, &api, &driver, &mut r)?;
    idle(opts, &driver, &mut r);
    drop(sim);
    drop(driver);
    scale(opts, &api, &mut r)?;
    progress(&format!(
        "DRA done in {:.0} s\n",
        began.elapsed().as_secs_f64()
    ));
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&opts.out, r.to_json()).map_err(|e| e.to_string())?;
    r.print_table();
    println!("results: {}", opts.out.display());
    Ok(())
}

/// NodePrepareResources latency: each call for a claim of its own, read
/// from the API server and recorded in the checkpoint.
fn prepares(
    opts: &Options,
    api: &ApiServer,
    sim: &Sim,
    driver: &Driver,
    r: &mut Report,
) -> Result<(), String> {
    let mut claims = Vec::new();
    for i in 0..opts.prepares {
        if i % 50 == 0 {
            progress(&format!("DRA: making claims {i}/{}", opts.prepares));
        }
        let name = format!("claim-{i}");
        let body = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"devices": {"requests": [{"name": "rng", "exactly": {"deviceClassName": "crand"}}]}},
        });
        let base = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims";
        let made = api.client.create(base, &body).map_err(|e| e.to_string())?;
        let mut claim = made.clone();
        claim["status"] = json!({"allocation": {"devices": {"results": [
            {"request": "rng", "driver": DRIVER, "pool": "bench", "device": format!("crand{}", i % 8)}
        ]}}});
        api.client
            .update(&format!("{base}/{name}/status"), &claim)
            .map_err(|e| e.to_string())?;
        let uid = made["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        claims.push((name, uid));
    }
    let mut lat = Vec::new();
    for (i, (name, uid)) in claims.iter().enumerate() {
        if i % 50 == 0 {
            progress(&format!("DRA: NodePrepareResources {i}/{}", claims.len()));
        }
        let t0 = Instant::now();
        let answer = sim.prepare(DRIVER, &[("default", uid, name)])?;
        lat.push(t0.elapsed());
        match answer.get(uid) {
            Some(Ok(devices)) if devices.len() == 1 => {}
            other => return Err(format!("prepare of {name}: {other:?}")),
        }
    }
    let d = Dist::of(&lat);
    r.dist("dra_prepare", &d);
    r.figure(
        &format!("DRA: NodePrepareResources incl. the claim read ({})", d.n),
        d.ms(),
        "p99 ≤ 5 ms",
        Some(d.p99 <= 5.0),
    );
    // Where the time goes: the claim read, as the driver timed it.
    let reads =
        Dist::of(&driver.durations(
            "method=GET path=/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/",
        ));
    r.dist("dra_prepare_claim_read", &reads);
    r.figure(
        "DRA:   of which the claim read (GET)",
        reads.ms(),
        "(profile)",
        None,
    );
    Ok(())
}

/// Hot-plug: a node made to the ResourceSlice on the API server with it.
fn hotplugs(
    opts: &Options,
    api: &ApiServer,
    driver: &Driver,
    r: &mut Report,
) -> Result<(), String> {
    let mut lat = Vec::new();
    for i in 0..opts.hotplugs {
        if i % 10 == 0 {
            progress(&format!("DRA: hot-plug {i}/{}", opts.hotplugs));
        }
        let id = format!("ttyUSB{i}");
        let name = label(&id);
        let t0 = Instant::now();
        mknod_like(Path::new("/dev/random"), &driver.dir.join("dev").join(&id))?;
        wait_slice(api, &name, |_| true)?;
        lat.push(t0.elapsed());
    }
    let d = Dist::of(&lat);
    r.dist("dra_hotplug_to_slice", &d);
    r.figure(
        &format!("DRA: hot-plug -> ResourceSlice updated ({})", d.n),
        d.ms(),
        "p99 ≤ 100 ms",
        Some(d.p99 <= 100.0),
    );
    Ok(())
}

/// Waits until the node's slices hold device `name` in the state `want`
/// takes (the device's JSON).
fn wait_slice(api: &ApiServer, name: &str, want: impl Fn(&Value) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let there = api.slices("bench").iter().any(|s| {
            s["spec"]["devices"]
                .as_array()
                .is_some_and(|ds| ds.iter().any(|d| d["name"] == name && want(d)))
        });
        if there {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name} not as expected in the slice after {WAIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether a device of the slice carries a taint (an unhealthy one, on
/// this v1.36 server).
fn tainted(d: &Value) -> bool {
    d["taints"].as_array().is_some_and(|t| !t.is_empty())
}

/// One node unplugged (it stays in the slice, tainted: a pod may hold it)
/// and plugged again `opts.hotplugs` times, each step seen in the slice:
/// the driver's own memory before and after, which a leak per slice write
/// (or per health stream message) would grow.
fn churn(opts: &Options, api: &ApiServer, driver: &Driver, r: &mut Report) -> Result<(), String> {
    let node = driver.dir.join("dev").join("ttyUSB0");
    let name = label("ttyUSB0");
    let cycle = || -> Result<(), String> {
        std::fs::remove_file(&node).map_err(|e| e.to_string())?;
        wait_slice(api, &name, tainted)?;
        mknod_like(Path::new("/dev/random"), &node)?;
        wait_slice(api, &name, |d| !tainted(d))
    };
    // A first round settles the allocator at this slice size.
    for _ in 0..opts.hotplugs.min(10) {
        cycle()?;
    }
    let before = footprint(driver.proc.0.id());
    for i in 0..opts.hotplugs {
        if i % 10 == 0 {
            progress(&format!("DRA: unplug and plug again {i}/{}", opts.hotplugs));
        }
        cycle()?;
    }
    let after = footprint(driver.proc.0.id());
    r.num("dra_churn_anon_before_kib", before.anon_kib as f64);
    r.num("dra_churn_anon_after_kib", after.anon_kib as f64);
    let kib = |k: u64| k as f64 / 1024.0;
    r.figure(
        &format!(
            "DRA: own memory before / after {} unplug + plug cycles",
            opts.hotplugs
        ),
        format!(
            "{:.1} / {:.1} MiB",
            kib(before.anon_kib),
            kib(after.anon_kib)
        ),
        "not growing (±0.5 MiB)",
        Some(after.anon_kib <= before.anon_kib + 512),
    );
    Ok(())
}

/// The idle driver: API requests, RSS, threads, CPU.
fn idle(opts: &Options, driver: &Driver, r: &mut Report) {
    progress(&format!("DRA: idle for {} s", opts.idle_secs));
    let pid = driver.proc.0.id();
    let before = driver.requests();
    let ticks = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(opts.idle_secs));
    let used = cpu_ticks(pid) - ticks;
    let after = driver.requests();
    let (reads, writes) = (after.0 - before.0, after.1 - before.1);
    r.num("dra_idle_reads", reads as f64);
    r.num("dra_idle_writes", writes as f64);
    r.figure(
        &format!(
            "DRA: API requests while idle {} s (reads / writes)",
            opts.idle_secs
        ),
        format!("{reads} / {writes}"),
        "no writes",
        Some(writes == 0),
    );
    let f = footprint(pid);
    let pct = used as f64 / clk_tck() / opts.idle_secs as f64 * 100.0;
    r.num("dra_idle_rss_kib", f.rss_kib as f64);
    r.num("dra_idle_rss_anon_kib", f.anon_kib as f64);
    r.num("dra_idle_threads", f.threads as f64);
    r.figure(
        "DRA: RSS (own + binary's pages) / threads / CPU, idle",
        format!("{} / {} / {pct:.2} %", f.rss(), f.threads),
        "≤ 8 MiB",
        Some(f.rss_kib <= 8 * 1024),
    );
}

/// `opts.instances` drivers of `opts.devices` devices each, on as many
/// nodes, started at once: time until every slice is published, requests,
/// RSS.
fn scale(opts: &Options, api: &ApiServer, r: &mut Report) -> Result<(), String> {
    let names: Vec<String> = (0..opts.instances)
        .map(|i| format!("node-{i:03}"))
        .collect();
    for n in &names {
        api.node(n)?;
    }
    progress(&format!("DRA: {} drivers starting", opts.instances));
    let count = opts.devices.to_string();
    let t0 = Instant::now();
    let drivers = names
        .iter()
        .map(|n| {
            Driver::start(
                &opts.plugin_bin,
                api,
                n,
                &["--plugin", "crand", "--crand-count", &count],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let all = "/apis/resource.k8s.io/v1/resourceslices";
    let deadline = t0 + Duration::from_secs(120);
    let took = loop {
        // Devices per node, over the slices of its pool (64 per slice where
        // the server has device taints).
        let mut per_node: std::collections::HashMap<String, usize> = Default::default();
        let list = api.client.list(all).map_err(|e| e.to_string())?;
        for s in list["items"].as_array().into_iter().flatten() {
            let node = s["spec"]["nodeName"].as_str().unwrap_or_default();
            *per_node.entry(node.to_string()).or_default() +=
                s["spec"]["devices"].as_array().map_or(0, Vec::len);
        }
        let published = per_node.values().filter(|n| **n == opts.devices).count();
        if published >= opts.instances {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&drivers[0].log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("[DEBUG]")).collect();
            return Err(format!(
                "{published} of {} pools published after 120 s; the first driver's log:\n{}",
                opts.instances,
                tail[tail.len().saturating_sub(15)..].join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (reads, writes) = drivers
        .iter()
        .map(Driver::requests)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let rss: Vec<u64> = drivers
        .iter()
        .map(|d| footprint(d.proc.0.id()).rss_kib)
        .collect();
    let max = rss.iter().copied().max().unwrap_or(0);
    let avg = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64;
    r.num("dra_scale_seconds", took.as_secs_f64());
    r.num("dra_scale_reads", reads as f64);
    r.num("dra_scale_writes", writes as f64);
    r.num("dra_scale_rss_max_kib", max as f64);
    r.figure(
        &format!(
            "DRA: {} drivers x {} devices: all slices published / requests (reads, writes) / RSS avg, max",
            opts.instances, opts.devices
        ),
        format!(
            "{:.1} s / {reads}, {writes} / {:.1}, {:.1} MiB",
            took.as_secs_f64(),
            avg / 1024.0,
            max as f64 / 1024.0
        ),
        "(scale)",
        None,
    );
    Ok(())
}
