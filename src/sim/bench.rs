//! `kubelet-sim bench`: measures a device plugin binary over the real wire
//! against the simulator, in temp dirs, and compares each figure with the
//! project's targets (design §6). Runs on the caller's thread; writes a
//! JSON file and prints a table. Needs root (mknod), like the plugin.
//!
//! What is timed is what the kubelet would see: the simulator's events are
//! stamped when its own gRPC handlers receive them, and each start point is
//! taken just before the action (spawn, file system change, restart).

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use grpcio::{ChannelBuilder, EnvBuilder};
use protobuf::Message as _;

use super::{
    Sim, SimEvent,
    demo::{Plugin, Scratch, mknod_like},
};
use crate::{
    api::{api, api_grpc},
    json::json_str,
};

const CRAND: &str = "github.com.ihcsim/crand";
const KVM: &str = "github.com.ihcsim/kvm";
/// Longest wait for any one event; a miss is counted, not fatal.
const WAIT: Duration = Duration::from_secs(5);

/// How much to measure; the defaults are the issue's.
#[derive(Clone, Debug)]
pub struct Options {
    /// The plugin binary.
    pub plugin_bin: PathBuf,
    /// Where results.json goes.
    pub out: PathBuf,
    /// Health changes of each kind.
    pub flips: usize,
    /// kubelet restarts.
    pub restarts: usize,
    /// Sequential Allocate calls.
    pub allocates: usize,
    /// Seconds of idle CPU measurement.
    pub idle_secs: u64,
    /// The plugin built without DRA, for its size.
    pub device_plugin_only_bin: Option<PathBuf>,
}

/// One line of the table.
pub(super) struct Figure {
    name: String,
    value: String,
    target: String,
    pass: Option<bool>,
}

/// Everything measured, as table rows and as JSON members.
#[derive(Default)]
pub(super) struct Report {
    figures: Vec<Figure>,
    json: Vec<(String, String)>,
}

impl Report {
    pub(super) fn figure(&mut self, name: &str, value: String, target: &str, pass: Option<bool>) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            target: target.into(),
            pass,
        });
    }

    /// A raw number under `key` in the JSON.
    pub(super) fn num(&mut self, key: &str, v: f64) {
        self.json.push((key.into(), format!("{v:.3}")));
    }

    /// A latency distribution (ms) under `key`.
    pub(super) fn dist(&mut self, key: &str, d: &Dist) {
        self.json.push((
            key.into(),
            format!(
                "{{\"n\": {}, \"p50_ms\": {:.4}, \"p99_ms\": {:.4}, \"max_ms\": {:.4}}}",
                d.n, d.p50, d.p99, d.max
            ),
        ));
    }

    pub(super) fn to_json(&self) -> String {
        let mut s = String::from("{\n  \"figures\": [\n");
        for (i, f) in self.figures.iter().enumerate() {
            let pass = match f.pass {
                Some(true) => "\"pass\"",
                Some(false) => "\"miss\"",
                None => "null",
            };
            let _ = writeln!(
                s,
                "    {{\"figure\": {}, \"value\": {}, \"target\": {}, \"result\": {pass}}}{}",
                json_str(&f.name),
                json_str(&f.value),
                json_str(&f.target),
                if i + 1 < self.figures.len() { "," } else { "" }
            );
        }
        s.push_str("  ],\n  \"raw\": {\n");
        for (i, (k, v)) in self.json.iter().enumerate() {
            let _ = writeln!(
                s,
                "    {}: {v}{}",
                json_str(k),
                if i + 1 < self.json.len() { "," } else { "" }
            );
        }
        s.push_str("  }\n}\n");
        s
    }

    pub(super) fn print_table(&self) {
        // Each column as wide as its widest cell or its header.
        let width = |cell: fn(&Figure) -> &str, header: &str| {
            self.figures
                .iter()
                .map(|f| cell(f).len())
                .chain([header.len()])
                .max()
                .unwrap_or(0)
        };
        let w = width(|f| &f.name, "figure");
        let v = width(|f| &f.value, "value");
        let t = width(|f| &f.target, "target");
        println!(
            "{:<w$}  {:>v$}  {:<t$}  result",
            "figure", "value", "target"
        );
        for f in &self.figures {
            let r = match f.pass {
                Some(true) => "pass",
                Some(false) => "MISS",
                None => "-",
            };
            println!("{:<w$}  {:>v$}  {:<t$}  {r}", f.name, f.value, f.target);
        }
    }
}

/// A latency distribution in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Dist {
    pub(super) n: usize,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

impl Dist {
    pub(super) fn of(samples: &[Duration]) -> Dist {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                f64::NAN
            } else {
                ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1]
            }
        };
        Dist {
            n: ms.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: ms.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub(super) fn ms(&self) -> String {
        format!(
            "p50 {:.2} / p99 {:.2} / max {:.2} ms",
            self.p50, self.p99, self.max
        )
    }

    fn us(&self) -> String {
        format!(
            "p50 {:.0} / p99 {:.0} / max {:.0} µs",
            self.p50 * 1e3,
            self.p99 * 1e3,
            self.max * 1e3
        )
    }
}

/// One line of progress on stderr, overwritten by the next.
pub(super) fn progress(msg: &str) {
    eprint!("\r\x1b[2K[bench] {msg}");
    let _ = std::io::stderr().flush();
}

/// What /proc says of a process.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Footprint {
    pub(super) rss_kib: u64,
    /// The part of RSS that is the process's own memory (heap, stacks)...
    pub(super) anon_kib: u64,
    /// ...and the part that is the binary's pages mapped from the page
    /// cache: clean, shared by every process of the same binary, and
    /// dropped first under memory pressure. Its size follows the page
    /// cache (the kernel maps neighbouring pages of a fault that are
    /// cached), so it varies from run to run where `anon_kib` does not.
    pub(super) file_kib: u64,
    pub(super) threads: usize,
    /// Threads not named by grpc's C core (whose names start with "grpc",
    /// "event_engine", "timer", "default-executor", "resolver-executor").
    own_threads: usize,
    fds: usize,
}

pub(super) fn footprint(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let grpc = [
        "grpc",
        "event_engine",
        "timer",
        "default-exec",
        "resolver-exec",
    ];
    let own_threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .filter(|name| !grpc.iter().any(|g| name.starts_with(g)))
                .count()
        })
        .unwrap_or(0);
    Footprint {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:") + field("RssShmem:"),
        threads: field("Threads:") as usize,
        own_threads,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
    }
}

impl Footprint {
    /// RSS with its split: `6.5 MiB (1.5 + 5.0)`.
    pub(super) fn rss(&self) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            "{:.1} MiB ({:.1} + {:.1})",
            mib(self.rss_kib),
            mib(self.anon_kib),
            mib(self.file_kib)
        )
    }
}

/// User + system CPU time of a process, in clock ticks.
pub(super) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime, stime are 14, 15.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Clock ticks per second, the unit of [`cpu_ticks`].
pub(super) fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// A plugin run in its own temp dirs, with the simulator.
struct Run {
    sim: Sim,
    plugin: Plugin,
    /// Spawn to the first Register of the first resource.
    start_to_register: Duration,
    /// Last: its dirs go when everything in them has stopped.
    tmp: Scratch,
}

impl Run {
    fn start(bin: &Path, args: &[&str], with_kvm: bool) -> Result<Run, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = Scratch::new(&format!("kubelet-plugin-bench-{}-{n}", std::process::id()))?;
        if with_kvm {
            mknod_like(Path::new("/dev/kvm"), &tmp.dev.join("kvm"))?;
        }
        let sim = Sim::start(&tmp.plugin)?;
        let log = std::fs::File::create(tmp.base.join("plugin.log")).map_err(|e| e.to_string())?;
        let mut cmd = tmp.command(bin, args);
        cmd.arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stderr(log);
        let t0 = Instant::now();
        let plugin = Plugin(
            cmd.spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?,
        );
        let at = sim.wait_for("the first Register", WAIT * 2, |ev| match ev {
            SimEvent::Registered { at, .. } => Some(*at),
            _ => None,
        })?;
        Ok(Run {
            sim,
            plugin,
            start_to_register: at - t0,
            tmp,
        })
    }

    fn pid(&self) -> u32 {
        self.plugin.0.id()
    }

    /// Waits for a device list of `resource` that `accept` takes; returns
    /// when the simulator received it.
    fn list_at(
        &self,
        resource: &str,
        accept: impl Fn(&[(String, String)]) -> bool,
    ) -> Result<Instant, String> {
        self.sim
            .wait_for(
                &format!("a device list of {resource}"),
                WAIT,
                |ev| match ev {
                    SimEvent::Devices {
                        resource: r,
                        devices,
                        at,
                    } if r == resource && accept(devices) => Some(*at),
                    _ => None,
                },
            )
            .map_err(|e| {
                let log =
                    std::fs::read_to_string(self.tmp.base.join("plugin.log")).unwrap_or_default();
                format!("{e}; the plugin's log:\n{log}")
            })
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> Result<(), String> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| e.to_string())?;
        let status = self.plugin.0.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the plugin exited with {status} on SIGTERM"));
        }
        Ok(())
    }
}

fn health_of<'a>(devices: &'a [(String, String)], id: &str) -> Option<&'a str> {
    devices
        .iter()
        .find(|(d, _)| d == id)
        .map(|(_, h)| h.as_str())
}

/// Opens ListAndWatch with a fresh channel: time to the first message, and
/// its encoded size.
fn first_list(sock: &Path) -> Result<(Duration, usize), String> {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let ch = ChannelBuilder::new(env)
        .max_receive_message_len(64 << 20)
        .connect(&format!("unix:{}", sock.display()));
    let client = api_grpc::DevicePluginClient::new(ch);
    let t0 = Instant::now();
    let mut stream = client
        .list_and_watch(&api::Empty::new())
        .map_err(|e| e.to_string())?;
    match futures_executor::block_on(stream.next()) {
        Some(Ok(msg)) => Ok((t0.elapsed(), msg.compute_size() as usize)),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("stream ended".into()),
    }
}

/// Runs every measurement and writes the report.
pub fn run(opts: &Options) -> Result<(), String> {
    let began = Instant::now();
    let mut r = Report::default();
    let with_kvm = Path::new("/dev/kvm").exists();
    let both: &[&str] = if with_kvm {
        &["--plugin", "crand", "--plugin", "kvm"]
    } else {
        &["--plugin", "crand"]
    };
    let resources: &[&str] = if with_kvm { &[CRAND, KVM] } else { &[CRAND] };

    starts(opts, both, with_kvm, &mut r)?;
    let mut run = Run::start(&opts.plugin_bin, both, with_kvm)?;
    run.sim.wait_lists(resources, WAIT)?;
    let sock = run.sim.socket().with_file_name("crand.sock");
    list_opens(&sock, &mut r)?;
    settle();
    let idle = idle_footprint(&run, &mut r);
    health_flips(opts, &run, &mut r)?;
    allocates(opts, &run, &sock, &mut r)?;
    idle_cpu(opts, &run, &mut r);
    restarts(opts, &mut run, resources, &idle, &mut r)?;
    run.stop()?;

    hot_plug(opts, &mut r)?;
    with_metrics(opts, both, with_kvm, &mut r)?;
    scale(opts, &mut r)?;
    binary_sizes(opts, &mut r)?;

    progress(&format!("done in {:.0} s\n", began.elapsed().as_secs_f64()));
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    std::fs::write(&opts.out, r.to_json())
        .map_err(|e| format!("write {}: {e}", opts.out.display()))?;
    r.print_table();
    println!("results: {}", opts.out.display());
    Ok(())
}

/// Waits until the plugin is idle as it stays: it gives back the code
/// pages start-up (or a registration) touched 2 s after its state last
/// changed.
fn settle() {
    std::thread::sleep(Duration::from_secs(3));
}

/// Start to Register: ten fresh starts.
fn starts(opts: &Options, both: &[&str], with_kvm: bool, r: &mut Report) -> Result<(), String> {
    let mut starts = Vec::new();
    for i in 0..10 {
        progress(&format!("start to Register {}/10", i + 1));
        let run = Run::start(&opts.plugin_bin, both, with_kvm)?;
        starts.push(run.start_to_register);
        run.stop()?;
    }
    let d = Dist::of(&starts);
    r.dist("start_to_register", &d);
    r.figure(
        "start to Register (10 starts)",
        d.ms(),
        "≤ 50 ms (p50)",
        Some(d.p50 <= 50.0),
    );

    Ok(())
}

/// ListAndWatch open to first message, 200 connect/disconnect cycles.
fn list_opens(sock: &Path, r: &mut Report) -> Result<(), String> {
    let mut opens = Vec::new();
    for i in 0..200 {
        if i % 20 == 0 {
            progress(&format!("ListAndWatch open to first message {i}/200"));
        }
        opens.push(first_list(sock)?.0);
    }
    let d = Dist::of(&opens);
    r.dist("listandwatch_first_message", &d);
    r.figure(
        "ListAndWatch open to first message",
        d.ms(),
        "(at once)",
        None,
    );

    Ok(())
}

/// RSS, threads and fds of the running plugins, idle.
fn idle_footprint(run: &Run, r: &mut Report) -> Footprint {
    let idle = footprint(run.pid());
    r.num("idle_rss_kib", idle.rss_kib as f64);
    r.num("idle_rss_anon_kib", idle.anon_kib as f64);
    r.num("idle_threads", idle.threads as f64);
    r.num("idle_fds", idle.fds as f64);
    r.figure(
        "RSS, both plugins, idle (own + binary's pages)",
        idle.rss(),
        "≤ 5 MiB",
        Some(idle.rss_kib <= 5 * 1024),
    );

    idle
}

/// Health changes: removed, replaced by a wrong node, restored.
fn health_flips(opts: &Options, run: &Run, r: &mut Report) -> Result<(), String> {
    let node = run.tmp.dev.join("crand1");
    let (mut removed, mut replaced, mut restored) = (Vec::new(), Vec::new(), Vec::new());
    let unhealthy = |d: &[(String, String)]| health_of(d, "crand1") == Some("Unhealthy");
    let healthy = |d: &[(String, String)]| health_of(d, "crand1") == Some("Healthy");
    let mut missed = 0;
    for i in 0..opts.flips {
        if i % 20 == 0 {
            progress(&format!("health changes {i}/{}", opts.flips));
        }
        let t0 = Instant::now();
        std::fs::remove_file(&node).map_err(|e| e.to_string())?;
        match run.list_at(CRAND, unhealthy) {
            Ok(at) => removed.push(at - t0),
            Err(_) => missed += 1,
        }
        let t0 = Instant::now();
        mknod_like(Path::new("/dev/random"), &node)?;
        match run.list_at(CRAND, healthy) {
            Ok(at) => restored.push(at - t0),
            Err(_) => missed += 1,
        }
        // Replaced: /dev/null's major:minor where /dev/random's belongs.
        let t0 = Instant::now();
        std::fs::remove_file(&node).map_err(|e| e.to_string())?;
        mknod_like(Path::new("/dev/null"), &node)?;
        match run.list_at(CRAND, unhealthy) {
            Ok(at) => replaced.push(at - t0),
            Err(_) => missed += 1,
        }
        std::fs::remove_file(&node).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        mknod_like(Path::new("/dev/random"), &node)?;
        match run.list_at(CRAND, healthy) {
            Ok(at) => restored.push(at - t0),
            Err(_) => missed += 1,
        }
    }
    r.num("health_changes_missed", missed as f64);
    for (key, name, samples) in [
        (
            "health_removed",
            "health: node removed -> ListAndWatch",
            &removed,
        ),
        (
            "health_replaced",
            "health: node replaced -> ListAndWatch",
            &replaced,
        ),
        (
            "health_restored",
            "health: node restored -> ListAndWatch",
            &restored,
        ),
    ] {
        let d = Dist::of(samples);
        r.dist(key, &d);
        r.figure(
            &format!("{name} ({})", d.n),
            d.ms(),
            "p99 ≤ 20 ms",
            Some(d.p99 <= 20.0 && missed == 0),
        );
    }

    Ok(())
}

/// Allocate: sequential latency, then 8 clients at once.
fn allocates(opts: &Options, run: &Run, sock: &Path, r: &mut Report) -> Result<(), String> {
    let client = run.sim.client(CRAND)?;
    let req = api::AllocateRequest {
        container_requests: vec![api::ContainerAllocateRequest {
            devices_ids: vec!["crand0".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut lat = Vec::with_capacity(opts.allocates);
    for i in 0..opts.allocates {
        if i % 500 == 0 {
            progress(&format!("Allocate {i}/{}", opts.allocates));
        }
        let t0 = Instant::now();
        client.allocate(&req).map_err(|e| e.to_string())?;
        lat.push(t0.elapsed());
    }
    let d = Dist::of(&lat);
    r.dist("allocate_sequential", &d);
    r.figure(
        &format!("Allocate latency, sequential ({})", d.n),
        d.us(),
        "p99 ≤ 500 µs",
        Some(d.p99 <= 0.5),
    );
    progress("Allocate throughput, 8 clients, 2 s");
    let ticks = cpu_ticks(run.pid());
    let rate = throughput(sock, &req, 8, Duration::from_secs(2))?;
    // How busy the plugin was: with clients and plugin on the same cores,
    // this tells which side the rate was bound by.
    let busy = (cpu_ticks(run.pid()) - ticks) as f64 / clk_tck() / 2.0 * 100.0;
    r.num("allocate_per_second_8_clients", rate);
    r.num("allocate_8_clients_plugin_cpu_percent", busy);
    r.figure(
        "Allocate throughput, 8 clients (plugin CPU)",
        format!("{rate:.0}/s ({busy:.0} % of a core)"),
        "≥ 20,000/s",
        Some(rate >= 20_000.0),
    );

    Ok(())
}

/// Idle CPU over `opts.idle_secs`.
fn idle_cpu(opts: &Options, run: &Run, r: &mut Report) {
    progress(&format!("idle CPU over {} s", opts.idle_secs));
    let ticks = cpu_ticks(run.pid());
    std::thread::sleep(Duration::from_secs(opts.idle_secs));
    let used = cpu_ticks(run.pid()) - ticks;
    let pct = used as f64 / clk_tck() / opts.idle_secs as f64 * 100.0;
    r.num("idle_cpu_percent", pct);
    r.figure(
        &format!("idle CPU over {} s", opts.idle_secs),
        format!("{pct:.2} % ({used} ticks)"),
        "≤ 0.1 %",
        Some(pct <= 0.1),
    );
}

/// kubelet restarts: kubelet.sock made anew -> Register (of every plugin),
/// and the footprint after them.
fn restarts(
    opts: &Options,
    run: &mut Run,
    resources: &[&str],
    idle: &Footprint,
    r: &mut Report,
) -> Result<(), String> {
    // The footprint is taken again just before, so what the Allocate
    // clients left (connections, malloc arenas) is not counted as growth.
    let before = footprint(run.pid());
    let mut regs = Vec::new();
    let mut failed = 0;
    for i in 0..opts.restarts {
        if i % 50 == 0 {
            progress(&format!("kubelet restarts {i}/{}", opts.restarts));
        }
        run.sim.restart()?;
        let t0 = Instant::now();
        // Each plugin's Register, in whichever order they come.
        let got: Result<Vec<Instant>, String> = resources
            .iter()
            .map(|res| {
                run.sim
                    .wait_for(&format!("{res} to register"), WAIT, |ev| match ev {
                        SimEvent::Registered { request, at, .. }
                            if request.resource_name == *res =>
                        {
                            Some(*at)
                        }
                        _ => None,
                    })
            })
            .collect();
        match got.map(|ats| ats.into_iter().max()) {
            Ok(Some(at)) => regs.push(at - t0),
            _ => failed += 1,
        }
    }
    let d = Dist::of(&regs);
    r.dist("restart_to_register", &d);
    r.num("restarts_reregistered", regs.len() as f64);
    r.figure(
        &format!(
            "kubelet.sock recreated -> Register ({} restarts)",
            opts.restarts
        ),
        d.ms(),
        "p99 ≤ 50 ms",
        Some(d.p99 <= 50.0),
    );
    r.figure(
        "restarts that re-registered",
        format!("{} of {}", regs.len(), opts.restarts),
        "all",
        Some(failed == 0),
    );
    // Count once the last registration's streams are open (the simulator
    // keeps each plugin's latest list from its stream).
    let deadline = Instant::now() + WAIT;
    while resources.iter().any(|res| run.sim.devices(res).is_none()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    settle();
    let after = footprint(run.pid());
    footprint_figures(idle, &before, &after, r);
    Ok(())
}

/// Threads, fds and RSS idle, before and after the restarts.
fn footprint_figures(idle: &Footprint, before: &Footprint, after: &Footprint, r: &mut Report) {
    r.num("before_restarts_rss_kib", before.rss_kib as f64);
    r.num("before_restarts_threads", before.threads as f64);
    r.num("before_restarts_fds", before.fds as f64);
    r.num("after_restarts_rss_kib", after.rss_kib as f64);
    r.num("after_restarts_threads", after.threads as f64);
    r.num("after_restarts_fds", after.fds as f64);
    // grpc's event-engine pool grows and shrinks by a thread or two on its
    // own; a leak per restart would show as hundreds.
    r.num("idle_own_threads", idle.own_threads as f64);
    r.num("after_restarts_own_threads", after.own_threads as f64);
    r.figure(
        "threads: idle / before / after restarts (ours)",
        format!(
            "{} / {} / {} ({} / {})",
            idle.threads, before.threads, after.threads, before.own_threads, after.own_threads
        ),
        "≤ 12, not growing",
        Some(
            idle.threads <= 12
                && after.own_threads == before.own_threads
                && after.threads <= before.threads + 2,
        ),
    );
    r.figure(
        "fds: idle / before / after restarts",
        format!("{} / {} / {}", idle.fds, before.fds, after.fds),
        "not growing",
        Some(after.fds <= before.fds),
    );
    r.figure(
        "RSS: idle / before / after restarts",
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            idle.rss_kib as f64 / 1024.0,
            before.rss_kib as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0
        ),
        "not growing (±0.5 MiB)",
        Some(after.rss_kib <= before.rss_kib + 512),
    );
}

/// The binaries' sizes.
fn binary_sizes(opts: &Options, r: &mut Report) -> Result<(), String> {
    // The edge budget is the device plugin's; the DRA client's TLS, HTTP
    // and JSON come on top of it.
    let mut bins = vec![
        ("kubelet-plugin", opts.plugin_bin.clone(), 6_000_000),
        (
            "kubelet-sim",
            std::env::current_exe().map_err(|e| e.to_string())?,
            6_000_000,
        ),
    ];
    if let Some(dp) = &opts.device_plugin_only_bin {
        bins.insert(1, ("kubelet-plugin without DRA", dp.clone(), 5_000_000));
    }
    for (name, path, limit) in bins {
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        r.num(
            &format!("{}_bytes", name.replace([' ', '-'], "_")),
            size as f64,
        );
        r.figure(
            &format!("{name} binary, stripped"),
            format!("{:.2} MB", size as f64 / 1e6),
            &format!("≤ {} MB", limit / 1_000_000),
            Some(size <= limit),
        );
    }
    Ok(())
}

/// Allocate calls per second from `clients` threads, each with its own
/// channel, for `span`.
fn throughput(
    sock: &Path,
    req: &api::AllocateRequest,
    clients: usize,
    span: Duration,
) -> Result<f64, String> {
    let env = Arc::new(EnvBuilder::new().cq_count(clients).build());
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + span;
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let client = api_grpc::DevicePluginClient::new(
                ChannelBuilder::new(env.clone())
                    // Separate connections, as separate clients would have.
                    .use_local_subchannel_pool(true)
                    .connect(&format!("unix:{}", sock.display())),
            );
            let req = req.clone();
            std::thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .spawn(move || -> Result<u64, String> {
                    // Warm the connection up before the clock starts.
                    client.allocate(&req).map_err(|e| e.to_string())?;
                    std::thread::sleep(start.saturating_duration_since(Instant::now()));
                    let mut n = 0;
                    while Instant::now() < end {
                        client.allocate(&req).map_err(|e| e.to_string())?;
                        n += 1;
                    }
                    Ok(n)
                })
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "a bench client panicked")??;
    }
    Ok(total as f64 / span.as_secs_f64())
}

/// crand at 10, 100, 1000 and 10,000 devices: start, first list and its
/// size, a health scan, RSS.
/// The footprint and idle CPU with both metrics outputs on: the file and
/// the HTTP endpoint (scraped once, as Prometheus would).
fn with_metrics(
    opts: &Options,
    both: &[&str],
    with_kvm: bool,
    r: &mut Report,
) -> Result<(), String> {
    progress(&format!("metrics on: idle CPU over {} s", opts.idle_secs));
    let file =
        std::env::temp_dir().join(format!("kubelet-plugin-bench-{}.prom", std::process::id()));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?;
    let (file_arg, addr_arg) = (file.display().to_string(), addr.to_string());
    let mut args = both.to_vec();
    args.extend(["--metrics-file", &file_arg, "--metrics-listen", &addr_arg]);
    let run = Run::start(&opts.plugin_bin, &args, with_kvm)?;
    run.list_at(CRAND, |_| true)?;
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).map_err(|e| e.to_string())?;
    if !body.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "GET /metrics: {}",
            body.lines().next().unwrap_or_default()
        ));
    }
    settle();
    let ticks = cpu_ticks(run.pid());
    std::thread::sleep(Duration::from_secs(opts.idle_secs));
    let used = cpu_ticks(run.pid()) - ticks;
    let idle = footprint(run.pid());
    let pct = used as f64 / clk_tck() / opts.idle_secs as f64 * 100.0;
    r.num("metrics_idle_rss_kib", idle.rss_kib as f64);
    r.num("metrics_idle_cpu_percent", pct);
    r.num("metrics_idle_threads", idle.threads as f64);
    r.figure(
        "metrics on (file + endpoint): RSS / threads / idle CPU",
        format!(
            "{:.1} MiB / {} / {pct:.2} %",
            idle.rss_kib as f64 / 1024.0,
            idle.threads
        ),
        "≤ 5 MiB / ≤ 12 / ≤ 0.1 %",
        Some(idle.rss_kib <= 5 * 1024 && idle.threads <= 12 && pct <= 0.1),
    );
    run.stop()?;
    if file.exists() {
        return Err(format!("{} left after the plugin stopped", file.display()));
    }
    Ok(())
}

/// A `dev` resource: a node made that matches its pattern -> the list with
/// the new device received (the CDI spec is written first, inside that
/// time), `--flips` times, each a new node.
fn hot_plug(opts: &Options, r: &mut Report) -> Result<(), String> {
    const HOT: &str = "github.com.ihcsim/hotplug";
    let run = Run::start(
        &opts.plugin_bin,
        &["--plugin", "none", "--device", "hotplug=hp*"],
        false,
    )?;
    run.list_at(HOT, |_| true)?;
    let mut samples = Vec::new();
    let mut missed = 0;
    for i in 0..opts.flips {
        if i % 20 == 0 {
            progress(&format!("hot-plug {i}/{}", opts.flips));
        }
        let id = format!("hp{i}");
        let t0 = Instant::now();
        mknod_like(Path::new("/dev/random"), &run.tmp.dev.join(&id))?;
        match run.list_at(HOT, |d| health_of(d, &id) == Some("Healthy")) {
            Ok(at) => samples.push(at - t0),
            Err(_) => missed += 1,
        }
    }
    let d = Dist::of(&samples);
    r.num("hot_plug_missed", missed as f64);
    r.dist("hot_plug", &d);
    r.figure(
        &format!(
            "hot-plug: node made -> list with it ({}, the list growing to {})",
            d.n, opts.flips
        ),
        d.ms(),
        "p99 ≤ 20 ms",
        Some(d.p99 <= 20.0 && missed == 0),
    );
    run.stop()
}

fn scale(opts: &Options, r: &mut Report) -> Result<(), String> {
    let mut rows = Vec::new();
    for n in [10usize, 100, 1000, 10_000] {
        progress(&format!("scale: {n} crand devices"));
        let count = n.to_string();
        let run = Run::start(
            &opts.plugin_bin,
            &["--plugin", "crand", "--crand-count", &count],
            false,
        )?;
        run.list_at(CRAND, |_| true)?;
        let sock = run.sim.socket().with_file_name("crand.sock");
        let mut firsts = Vec::new();
        let mut size = 0;
        for _ in 0..20 {
            let (t, s) = first_list(&sock)?;
            firsts.push(t);
            size = s;
        }
        // A removed node is found by a scan of every node: that is the
        // health scan the kubelet waits for.
        let node = run.tmp.dev.join("crand0");
        let mut scans = Vec::new();
        for _ in 0..20 {
            let t0 = Instant::now();
            std::fs::remove_file(&node).map_err(|e| e.to_string())?;
            let at = run.list_at(CRAND, |d| health_of(d, "crand0") == Some("Unhealthy"))?;
            scans.push(at - t0);
            mknod_like(Path::new("/dev/random"), &node)?;
            run.list_at(CRAND, |d| health_of(d, "crand0") == Some("Healthy"))?;
        }
        let fp = footprint(run.pid());
        let (first, scan) = (Dist::of(&firsts), Dist::of(&scans));
        r.dist(&format!("scale_{n}_first_list"), &first);
        r.dist(&format!("scale_{n}_health_change"), &scan);
        r.num(&format!("scale_{n}_message_bytes"), size as f64);
        r.num(&format!("scale_{n}_rss_kib"), fp.rss_kib as f64);
        r.num(
            &format!("scale_{n}_start_to_register_ms"),
            run.start_to_register.as_secs_f64() * 1e3,
        );
        rows.push((n, run.start_to_register, first, scan, size, fp.rss_kib));
        run.stop()?;
    }
    for (n, start, first, scan, size, rss) in &rows {
        r.figure(
            &format!("{n} crand: start -> Register / first list / health change"),
            format!(
                "{:.1} / {:.2} / {:.2} ms (p50)",
                start.as_secs_f64() * 1e3,
                first.p50,
                scan.p50
            ),
            if *n == 10_000 {
                "first list ≤ 50 ms, scan ≤ 5 ms"
            } else {
                "(growth)"
            },
            (*n == 10_000).then_some(first.p50 <= 50.0 && scan.p50 <= 5.0),
        );
        r.figure(
            &format!("{n} crand: message / RSS"),
            format!(
                "{:.1} KiB / {:.1} MiB",
                *size as f64 / 1024.0,
                *rss as f64 / 1024.0
            ),
            "(growth)",
            None,
        );
    }
    Ok(())
}
