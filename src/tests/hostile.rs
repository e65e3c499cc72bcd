//! Hostile input and soak tests: the real `kubelet-plugin` binary over real
//! unix sockets, fed what a broken or malicious peer sends, and run through
//! long loops. Each test checks what comes back on the wire (a gRPC status
//! and its message) or in the plugin's log, and that the plugin still serves
//! afterwards.
//!
//! - Allocate: no containers, no IDs, duplicates, the other resource's IDs,
//!   100,000 IDs, a huge ID, an unhealthy device, requests on either side of
//!   grpc's 4 MiB receive limit, several containers in one request;
//! - the plugin socket: garbage bytes, half-open HTTP/2 connections;
//! - 100 concurrent ListAndWatch streams, dropped all at once;
//! - a `kubelet.sock` that is a regular file, a stale socket nobody listens
//!   on, or a socket that accepts and never answers (Register times out in
//!   15 s and is retried: that test takes about 20 s);
//! - a read-only dev dir, a user that cannot mknod, absurd device counts;
//! - a symlink, a FIFO and a regular file at crand node paths, before and
//!   after start;
//! - soak: 200 kubelet restarts, 200 ListAndWatch connect/disconnect cycles
//!   and 200 health flips, with no thread, fd or socket growth.
//!
//! Every wait is bounded; the tests wait on events (the simulator's, the
//! plugin's log lines) and poll only where there is none: thread, fd and
//! socket counts in `/proc`, and a process's exit.

use std::{
    io::{Read, Write},
    os::unix::{
        fs::MetadataExt,
        net::{UnixListener, UnixStream},
    },
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

mod common;

use common::{Dirs, Plugin, dirs};
use crossbeam_channel::Receiver;
use futures_util::{StreamExt as _, stream::AbortHandle};
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, Environment, RpcStatus, RpcStatusCode};
use kubelet_plugin::{
    api::{api, api_grpc},
    sim::{Sim, SimEvent},
};
use nix::{
    sys::{
        signal::Signal,
        stat::{Mode, SFlag, mknod, stat},
    },
    unistd::mkfifo,
};
use protobuf::Message as _;

const CRAND: &str = "github.com.ihcsim/crand";
const KVM: &str = "github.com.ihcsim/kvm";
const WAIT: Duration = Duration::from_secs(5);
/// grpc's default limit on a received message, on both sides.
const GRPC_MAX_RECEIVE: u64 = 4 * 1024 * 1024;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubelet-plugin")
}

fn start(d: &Dirs, args: &[&str]) -> Plugin {
    common::start(bin(), d, args)
}

fn random_rdev() -> u64 {
    stat("/dev/random").unwrap().st_rdev
}

fn mknod_at(path: &Path, rdev: u64) {
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), rdev).unwrap();
}

fn health_of<'a>(devices: &'a [(String, String)], id: &str) -> &'a str {
    &devices
        .iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no {id} in {devices:?}"))
        .1
}

fn all_healthy(devices: &[(String, String)], n: usize) -> bool {
    devices.len() == n && devices.iter().all(|(_, h)| h == "Healthy")
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

// ---- clients ---------------------------------------------------------------

/// A grpcio environment for test clients.
fn env() -> Arc<Environment> {
    Arc::new(
        EnvBuilder::new()
            .cq_count(1)
            .name_prefix("test-grpc")
            .build(),
    )
}

/// A DevicePlugin client on a connection of its own: grpc shares one
/// connection between channels to the same address unless each channel
/// keeps a local subchannel pool.
fn client_on(env: &Arc<Environment>, sock: &Path) -> api_grpc::DevicePluginClient {
    let ch = ChannelBuilder::new(env.clone())
        .use_local_subchannel_pool(true)
        .connect(&format!("unix:{}", sock.display()));
    api_grpc::DevicePluginClient::new(ch)
}

fn opt() -> CallOption {
    CallOption::default().timeout(WAIT)
}

/// An Allocate request with one container request per entry.
fn request(containers: &[&[&str]]) -> api::AllocateRequest {
    api::AllocateRequest {
        container_requests: containers
            .iter()
            .map(|ids| api::ContainerAllocateRequest {
                devices_ids: strings(ids),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn one_container(ids: Vec<String>) -> api::AllocateRequest {
    api::AllocateRequest {
        container_requests: vec![api::ContainerAllocateRequest {
            devices_ids: ids,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The status of a call that must fail.
fn status_of<T: std::fmt::Debug>(r: grpcio::Result<T>) -> RpcStatus {
    match r {
        Err(grpcio::Error::RpcFailure(s)) => s,
        other => panic!("want an RPC failure, got {other:?}"),
    }
}

/// Allocate must be refused with INVALID_ARGUMENT and `want` in the message.
fn expect_refused(c: &api_grpc::DevicePluginClient, req: &api::AllocateRequest, want: &str) {
    let s = status_of(c.allocate_opt(req, opt()));
    assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT, "{s:?}");
    assert!(s.message().contains(want), "want {want:?} in {s:?}");
}

/// A valid Allocate of `id` answers with its CDI name: the plugin serves.
fn assert_serves(c: &api_grpc::DevicePluginClient, resource: &str, id: &str, cdi: &str) {
    let resp = c
        .allocate_opt(&request(&[&[id]]), opt())
        .unwrap_or_else(|e| panic!("allocate {id} after the hostile input: {e}"));
    assert_eq!(resp.container_responses.len(), 1);
    assert_eq!(
        resp.container_responses[0].cdi_devices[0].name,
        format!("{resource}={cdi}")
    );
}

/// A ListAndWatch stream of a test client on its own connection. Its lists
/// arrive on a channel (`None`: the stream ended); dropping it cancels the
/// call and, with the client, closes the connection.
struct Stream {
    lists: Receiver<Option<Vec<(String, String)>>>,
    abort: AbortHandle,
    _client: api_grpc::DevicePluginClient,
}

impl Stream {
    fn open(env: &Arc<Environment>, sock: &Path) -> Stream {
        let client = client_on(env, sock);
        let rx = client.list_and_watch(&api::Empty::new()).unwrap();
        let (mut rx, abort) = futures_util::stream::abortable(rx);
        let (tx, lists) = crossbeam_channel::unbounded();
        client.spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                let list = msg
                    .devices
                    .iter()
                    .map(|d| (d.ID.clone(), d.health.clone()))
                    .collect();
                let _ = tx.send(Some(list));
            }
            let _ = tx.send(None);
        });
        Stream {
            lists,
            abort,
            _client: client,
        }
    }

    /// The next list, within [`WAIT`].
    fn next(&self) -> Vec<(String, String)> {
        match self.lists.recv_timeout(WAIT) {
            Ok(Some(list)) => list,
            Ok(None) => panic!("the stream ended"),
            Err(_) => panic!("no device list within {WAIT:?}"),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

// ---- the simulator and the log ------------------------------------------

/// Waits for a device list of `resource` that `accept` takes. Unlike
/// `Sim::wait_devices` it fails on a stream that ends or a registration:
/// in the steady state the kubelet's stream must stay as it is.
fn wait_list(
    sim: &Sim,
    resource: &str,
    mut accept: impl FnMut(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = sim
            .next_event(deadline)
            .unwrap_or_else(|| panic!("no matching list of {resource} within {WAIT:?}"));
        match ev {
            SimEvent::Devices {
                resource: r,
                devices,
                ..
            } if r == resource && accept(&devices) => return devices,
            SimEvent::Devices { .. } => {}
            other => panic!("the kubelet's stream was disturbed: {other:?}"),
        }
    }
}

/// Nothing happened to the kubelet's connection: no event but device lists.
fn assert_undisturbed(sim: &Sim) {
    for ev in sim.take_events() {
        assert!(
            matches!(ev, SimEvent::Devices { .. }),
            "the kubelet's stream was disturbed: {ev:?}"
        );
    }
}

// ---- resources -------------------------------------------------------------

/// A crand plugin registered with the simulator, with grpc's own pools
/// warmed up by a first stream, and what it holds then: the base a leak
/// check returns to. Bind the fields `d` first, so that they drop in the
/// reverse order: the plugin before the simulator, the dirs last.
struct Warm {
    env: Arc<Environment>,
    sock: std::path::PathBuf,
    p: Plugin,
    sim: Sim,
    base: Usage,
    d: Dirs,
}

fn warm_crand() -> Warm {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let sock = d.plugin.join("crand.sock");
    let env = env();
    drop(Stream::open(&env, &sock).next());
    p.wait_log("ListAndWatch closed", WAIT);
    let base = usage(&p);
    Warm {
        env,
        sock,
        p,
        sim,
        base,
        d,
    }
}

/// What the plugin process holds.
#[derive(Clone, Copy, Debug)]
struct Usage {
    threads: usize,
    fds: usize,
    sockets: usize,
}

fn usage(p: &Plugin) -> Usage {
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", p.child.id()))
        .unwrap()
        .flatten()
        .collect();
    let sockets = fds
        .iter()
        .filter_map(|f| std::fs::read_link(f.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count();
    Usage {
        threads: p.threads(),
        fds: fds.len(),
        sockets,
    }
}

/// Waits (bounded) until the plugin holds no more than `base` plus what
/// grpcio's own event engine pool varies by on its own: a thread or two,
/// each with its wakeup fds, and a socket it may keep a moment longer. A
/// leak per cycle of a 100- or 200-cycle test shows as hundreds.
fn assert_back_to(p: &Plugin, base: Usage, what: &str) {
    let within = |u: Usage| {
        u.threads <= base.threads + 2 && u.fds <= base.fds + 4 && u.sockets <= base.sockets + 2
    };
    let deadline = Instant::now() + WAIT;
    let mut now = usage(p);
    while !within(now) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = usage(p);
    }
    eprintln!("{what}: before {base:?}, after {now:?}");
    assert!(
        within(now),
        "{what}: grew from {base:?} to {now:?}\n{}",
        p.log()
    );
}

/// Our own threads, each exactly once.
fn assert_own_threads_once(p: &Plugin) {
    let ours = ["health", "kubelet-plugin", "supervisor"];
    let names: Vec<String> = p
        .thread_names()
        .into_iter()
        .filter(|n| ours.contains(&n.as_str()))
        .collect();
    assert_eq!(names, ours, "each of our threads once");
}

/// Runs `cmd` to its end, at most [`WAIT`]; returns its status and stderr.
fn run_bounded(cmd: &mut Command) -> (ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {WAIT:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status, reader.join().unwrap())
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The plugin failed at start with exit code 2 and one clear line holding
/// every piece of `want`, and left nothing in its three dirs.
fn assert_fatal(d: &Dirs, status: ExitStatus, stderr: &str, want: &[&str]) {
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("kubelet-plugin: error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    for w in want {
        assert!(line.contains(w), "want {w:?} in {line:?}");
    }
    assert!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 2,
        "one error line (and its log line), got:\n{stderr}"
    );
    for dir in [&d.plugin, &d.dev, &d.cdi] {
        assert_eq!(entries(dir), Vec::<String>::new(), "left in {dir:?}");
    }
}

// ---- 1. Allocate -----------------------------------------------------------

/// Both plugins, with a kvm node cloned from the host's when there is one.
fn both(d: &Dirs) -> (Sim, Plugin, bool) {
    let kvm = stat("/dev/kvm").ok();
    if let Some(host) = &kvm {
        mknod_at(&d.dev.join("kvm"), host.st_rdev);
    }
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(d, &["--kvm-count", "2"]);
    common::wait_lists(&sim, &[CRAND, KVM], WAIT);
    (sim, p, kvm.is_some())
}

#[test]
fn test_allocate_refuses_bad_id_lists_and_keeps_serving() {
    let d = dirs();
    let (sim, p, kvm_healthy) = both(&d);
    let env = env();
    let crand = client_on(&env, &d.plugin.join("crand.sock"));
    let kvm = client_on(&env, &d.plugin.join("kvm.sock"));

    for (c, req, want) in [
        (&crand, request(&[]), "no container requests"),
        (
            &crand,
            request(&[&[]]),
            "no device IDs in the container request",
        ),
        (
            &crand,
            request(&[&["crand1", "crand1"]]),
            "device ID \"crand1\" requested twice",
        ),
        (
            &crand,
            request(&[&["crand0", "crand2", "crand0"]]),
            "device ID \"crand0\" requested twice",
        ),
        (&crand, request(&[&["kvm0"]]), "unknown device ID \"kvm0\""),
        (
            &crand,
            request(&[&["crand0", "kvm1"]]),
            "unknown device ID \"kvm1\"",
        ),
        (
            &kvm,
            request(&[&["crand0"]]),
            "unknown device ID \"crand0\"",
        ),
        (
            &kvm,
            request(&[&["kvm0", "crand2"]]),
            "unknown device ID \"crand2\"",
        ),
        (&kvm, request(&[&["kvm0", "kvm0"]]), "requested twice"),
    ] {
        expect_refused(c, &req, want);
        // After every refusal, a valid request on the same connection.
        assert_serves(&crand, CRAND, "crand0", "crand0");
    }
    if kvm_healthy {
        assert_serves(&kvm, KVM, "kvm1", "kvm");
    }
    // Every refusal is logged once, and nothing partial was handed out.
    // (The log reaches us through a pipe: wait for it, then count.)
    p.wait_log_count("allocate refused", 9, WAIT);
    assert_eq!(
        p.log().matches("allocate refused").count(),
        9,
        "{}",
        p.log()
    );
    assert!(!p.log().contains("devices=crand0,kvm1"), "{}", p.log());
    assert_undisturbed(&sim);
}

#[test]
fn test_allocate_of_100000_ids_is_refused_at_once() {
    // The most devices a plugin may have, so the first 16384 IDs are valid.
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand", "--crand-count", "16384"]);
    sim.wait_registered(CRAND, Duration::from_secs(20)).unwrap();
    let devices = wait_list(&sim, CRAND, |_| true);
    assert!(all_healthy(&devices, 16384), "{}", devices.len());
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));

    let many: Vec<String> = (0..100_000).map(|i| format!("crand{i}")).collect();
    let t = Instant::now();
    expect_refused(&c, &one_container(many), "unknown device ID \"crand16384\"");
    let distinct = t.elapsed();
    let t = Instant::now();
    expect_refused(
        &c,
        &one_container(vec!["crand7".to_string(); 100_000]),
        "device ID \"crand7\" requested twice",
    );
    let same = t.elapsed();
    // Every device at once is a valid request, answered in full.
    let all: Vec<String> = (0..16384).map(|i| format!("crand{i}")).collect();
    let t = Instant::now();
    let resp = c.allocate_opt(&one_container(all), opt()).unwrap();
    let full = t.elapsed();
    let cresp = &resp.container_responses[0];
    assert_eq!(cresp.cdi_devices.len(), 16384);
    assert_eq!(cresp.devices.len(), 16384);
    assert_eq!(cresp.cdi_devices[16383].name, format!("{CRAND}=crand16383"));
    assert!(
        resp.compute_size() < GRPC_MAX_RECEIVE,
        "the kubelet could not read it"
    );
    eprintln!("100,000 distinct IDs: {distinct:?}, 100,000 same: {same:?}, 16384 valid: {full:?}");
    // The single grpc poll thread answers every client: a request must not
    // hold it for long, even in this debug build.
    for (what, took) in [("distinct", distinct), ("same", same), ("all", full)] {
        assert!(took < Duration::from_secs(2), "{what}: {took:?}");
    }
    assert_serves(&c, CRAND, "crand42", "crand42");
    assert_undisturbed(&sim);
}

#[test]
fn test_allocate_of_a_huge_id_is_refused_with_a_short_message() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));
    // One ID of 1 MiB: the kubelet's IDs are at most 63 characters.
    let huge = format!("crand{}", "9".repeat(1 << 20));
    let s = status_of(c.allocate_opt(&one_container(vec![huge]), opt()));
    assert_eq!(
        s.code(),
        RpcStatusCode::INVALID_ARGUMENT,
        "{:.300}",
        s.message()
    );
    assert!(
        s.message().contains("unknown device ID \"crand999")
            && s.message().contains("(1048581 bytes)"),
        "{:.300}",
        s.message()
    );
    assert!(
        s.message().len() < 400,
        "echoes {} bytes",
        s.message().len()
    );
    p.wait_log("allocate refused", WAIT);
    let refused = p
        .log()
        .lines()
        .find(|l| l.contains("allocate refused"))
        .map(str::len)
        .unwrap_or_else(|| panic!("no refusal logged:\n{:.2000}", p.log()));
    assert!(refused < 600, "a log line of {refused} bytes");
    assert_serves(&c, CRAND, "crand1", "crand1");
    assert_undisturbed(&sim);
}

#[test]
fn test_allocate_of_an_unhealthy_device_is_refused_with_the_reason() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    std::fs::remove_file(d.dev.join("crand1")).unwrap();
    wait_list(&sim, CRAND, |l| health_of(l, "crand1") == "Unhealthy");
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));
    for req in [
        request(&[&["crand1"]]),
        request(&[&["crand0", "crand1"]]),
        request(&[&["crand2"], &["crand1"]]),
    ] {
        expect_refused(&c, &req, "device \"crand1\" is unhealthy: node missing");
    }
    assert_serves(&c, CRAND, "crand2", "crand2");
    mknod_at(&d.dev.join("crand1"), random_rdev());
    wait_list(&sim, CRAND, |l| all_healthy(l, 3));
    assert_serves(&c, CRAND, "crand1", "crand1");
    assert_undisturbed(&sim);
}

/// One container request of distinct, unknown IDs (`x0`, `x1`..) whose
/// encoded Allocate request is `size` bytes, give or take a few.
fn request_of_size(size: u64) -> api::AllocateRequest {
    let mut ids = Vec::new();
    let mut req = one_container(Vec::new());
    // Each ID `xN` costs its length plus a tag and a length byte.
    let mut total = 8;
    while total < size {
        let id = format!("x{}", ids.len());
        total += id.len() as u64 + 2;
        ids.push(id);
    }
    req.container_requests[0].devices_ids = ids;
    req
}

#[test]
fn test_allocate_around_the_4_mib_receive_limit() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));

    // Just under: read and refused for what it holds.
    let under = request_of_size(GRPC_MAX_RECEIVE - 1024);
    let size = under.compute_size();
    assert!(
        size < GRPC_MAX_RECEIVE && size > GRPC_MAX_RECEIVE - 2048,
        "{size}"
    );
    expect_refused(&c, &under, "unknown device ID \"x0\"");
    p.wait_log(
        "allocate refused resource=github.com.ihcsim/crand: unknown device ID \"x0\"",
        WAIT,
    );

    // Just over: grpc refuses it before our handler runs, and says why.
    let over = request_of_size(GRPC_MAX_RECEIVE + 1024);
    let size = over.compute_size();
    assert!(size > GRPC_MAX_RECEIVE, "{size}");
    let s = status_of(c.allocate_opt(&over, opt()));
    eprintln!("{size} bytes: {s:?}");
    assert_eq!(s.code(), RpcStatusCode::RESOURCE_EXHAUSTED, "{s:?}");
    assert!(
        s.message().contains("larger than max")
            && s.message().contains(&GRPC_MAX_RECEIVE.to_string()),
        "{s:?}"
    );
    assert_serves(&c, CRAND, "crand0", "crand0");
    // Logged after anything the oversized request could have logged.
    p.wait_log("allocated resource", WAIT);
    assert_eq!(
        p.log().matches("allocate refused").count(),
        1,
        "{}",
        p.log()
    );
    assert_undisturbed(&sim);
}

#[test]
fn test_allocate_answers_several_containers_in_order() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand", "--crand-count", "5"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));

    let containers: [&[&str]; 4] = [&["crand3"], &["crand0", "crand4"], &["crand1"], &["crand2"]];
    let resp = c.allocate_opt(&request(&containers), opt()).unwrap();
    assert_eq!(resp.container_responses.len(), containers.len());
    for (ids, cresp) in containers.iter().zip(&resp.container_responses) {
        let names: Vec<&str> = cresp.cdi_devices.iter().map(|c| c.name.as_str()).collect();
        let want: Vec<String> = ids.iter().map(|id| format!("{CRAND}={id}")).collect();
        assert_eq!(names, want);
        let paths: Vec<&str> = cresp
            .devices
            .iter()
            .map(|s| s.container_path.as_str())
            .collect();
        let want: Vec<String> = ids.iter().map(|id| format!("/dev/{id}")).collect();
        assert_eq!(paths, want);
        for spec in &cresp.devices {
            assert_eq!(Path::new(&spec.host_path).parent(), Some(d.dev.as_path()));
        }
    }
    // Logged once per container, in the order asked.
    p.wait_log_count("allocated resource", 4, WAIT);
    let logged: Vec<String> = p
        .log()
        .lines()
        .filter_map(|l| {
            l.split("allocated resource=github.com.ihcsim/crand devices=")
                .nth(1)
        })
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(logged, ["crand3", "crand0,crand4", "crand1", "crand2"]);

    // One bad container refuses the whole request and names the device.
    expect_refused(
        &c,
        &request(&[&["crand0"], &["crand9"], &["crand1"]]),
        "unknown device ID \"crand9\"",
    );
    expect_refused(
        &c,
        &request(&[&["crand0"], &[]]),
        "no device IDs in the container request",
    );
    // Whatever those two logged, it came before their refusals.
    p.wait_log_count("allocate refused", 2, WAIT);
    assert_eq!(
        p.log().matches("allocated resource").count(),
        4,
        "nothing partial"
    );
    assert_serves(&c, CRAND, "crand4", "crand4");
    assert_undisturbed(&sim);
}

// ---- 2. The socket: garbage and half-open connections ------------------

/// Bytes from a fixed xorshift sequence: garbage that is the same every run.
fn garbage(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Writes `bytes` on a new connection to `sock` and expects the server to
/// hang up within [`WAIT`] (whatever it writes first, e.g. a GOAWAY).
fn expect_hang_up(sock: &Path, bytes: &[u8]) {
    let mut s = UnixStream::connect(sock).unwrap();
    // The server may hang up halfway: a broken pipe is an answer too.
    let _ = s.write_all(bytes);
    let what = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
    expect_hang_up_after(s, &what, WAIT);
}

/// Reads `s` until the peer closes it, within `limit`.
fn expect_hang_up_after(mut s: UnixStream, what: &str, limit: Duration) {
    s.set_read_timeout(Some(limit)).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!(
                "the plugin kept a connection open ({e}) after {:?}: {what:?}",
                t.elapsed()
            ),
        }
    }
}

#[test]
fn test_garbage_on_the_socket_is_dropped_and_others_are_served() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let sock = d.plugin.join("crand.sock");
    let env = env();
    let c = client_on(&env, &sock);
    assert_serves(&c, CRAND, "crand0", "crand0");
    let base = usage(&p);

    let mut bad_frame = PREFACE.to_vec();
    // A frame claiming 16 MiB - 1 bytes of an unknown type on stream 1.
    bad_frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xee, 0x00, 0x00, 0x00, 0x00, 0x01]);
    bad_frame.extend_from_slice(&garbage(1024));
    let mut http1 = b"GET /v1beta1.DevicePlugin/Allocate HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    http1.extend_from_slice(&garbage(512));
    for bytes in [garbage(64 * 1024), bad_frame, http1, b"\0".to_vec()] {
        expect_hang_up(&sock, &bytes);
        assert_serves(&c, CRAND, "crand1", "crand1");
        sim.allocate(CRAND, &strings(&["crand2"])).unwrap();
    }
    // A health change still reaches the kubelet on its old stream.
    std::fs::remove_file(d.dev.join("crand2")).unwrap();
    wait_list(&sim, CRAND, |l| health_of(l, "crand2") == "Unhealthy");
    assert_undisturbed(&sim);
    assert_back_to(&p, base, "after 4 garbage connections");
}

#[test]
fn test_half_open_connections_block_neither_others_nor_shutdown() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let mut p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let sock = d.plugin.join("crand.sock");
    // 20 clients that start the HTTP/2 preface and never finish it.
    let half: Vec<UnixStream> = (0..20)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(&PREFACE[..10]).unwrap();
            s
        })
        .collect();
    let env = env();
    let c = client_on(&env, &sock);
    assert_serves(&c, CRAND, "crand0", "crand0");
    let stream = Stream::open(&env, &sock);
    assert!(all_healthy(&stream.next(), 3));
    std::fs::remove_file(d.dev.join("crand1")).unwrap();
    wait_list(&sim, CRAND, |l| health_of(l, "crand1") == "Unhealthy");
    assert_eq!(health_of(&stream.next(), "crand1"), "Unhealthy");
    sim.allocate(CRAND, &strings(&["crand2"])).unwrap();
    // Still open: the server sent its own SETTINGS, as HTTP/2 servers do
    // at once, and waits for the rest of the preface.
    for mut s in &half {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                other => panic!("a half-open connection was closed: {other:?}"),
            }
        }
    }
    assert_undisturbed(&sim);

    // And they do not hold up a clean shutdown.
    p.signal(Signal::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(1)).unwrap_or_else(|| {
        panic!(
            "no exit within 1 s with half-open connections:\n{}",
            p.log()
        )
    });
    assert_eq!(status.code(), Some(0), "{}", p.log());
    assert!(!sock.exists());
    drop(half);
}

// ---- 3. 100 concurrent streams -------------------------------------------

#[test]
fn test_100_concurrent_streams_dropped_at_once_leave_nothing() {
    let Warm {
        d,
        sim,
        p,
        sock,
        env,
        base,
    } = warm_crand();
    let opened = p.log().matches("ListAndWatch opened").count();
    let closed = p.log().matches("ListAndWatch closed").count();

    let streams: Vec<Stream> = (0..100).map(|_| Stream::open(&env, &sock)).collect();
    for s in &streams {
        assert!(all_healthy(&s.next(), 3));
    }
    p.wait_log_count("ListAndWatch opened", opened + 100, WAIT);
    let busy = usage(&p);
    eprintln!("100 streams open: {busy:?}");
    // Each on its own connection: the plugin holds a socket for each (the
    // base may still count the warm-up's, which grpc closes lazily).
    assert!(
        busy.sockets + 2 >= base.sockets + 100,
        "{busy:?} vs {base:?}"
    );
    assert!(
        busy.threads <= base.threads + 2,
        "a thread per stream: {busy:?}"
    );
    // A health change reaches every one of them, and the kubelet.
    std::fs::remove_file(d.dev.join("crand0")).unwrap();
    for s in &streams {
        assert_eq!(health_of(&s.next(), "crand0"), "Unhealthy");
    }
    wait_list(&sim, CRAND, |l| health_of(l, "crand0") == "Unhealthy");

    drop(streams);
    p.wait_log_count("ListAndWatch closed", closed + 100, WAIT);
    assert_back_to(&p, base, "100 streams dropped");
    assert_own_threads_once(&p);
    mknod_at(&d.dev.join("crand0"), random_rdev());
    wait_list(&sim, CRAND, |l| all_healthy(l, 3));
    sim.allocate(CRAND, &strings(&["crand0"])).unwrap();
    // The kubelet's own stream lived through it: no registration again.
    assert_undisturbed(&sim);
    assert!(!p.log().contains("not reopened"), "{}", p.log());
}

/// The plugin's threads after registering, streams, allocations and a
/// metrics scrape, with `cpus` CPUs as sysfs tells them (none: this
/// machine's): `/sys/devices/system/cpu` is replaced, in a mount namespace
/// of the plugin's own, by a tree of that many.
fn threads_with_cpus(cpus: Option<usize>) -> Vec<String> {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let metrics = d.tmp.path().join("metrics.prom");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let run = common::plugin_cmd(
        env!("CARGO_BIN_EXE_kubelet-plugin"),
        &d,
        &[
            "--plugin",
            "crand",
            "--metrics-file",
            metrics.to_str().unwrap(),
            "--metrics-listen",
            &addr.to_string(),
        ],
    );
    let mut cmd = match cpus {
        None => run,
        Some(n) => {
            let fake = d.tmp.path().join("cpu");
            for i in 0..n {
                std::fs::create_dir_all(fake.join(format!("cpu{i}"))).unwrap();
            }
            for f in ["possible", "present"] {
                std::fs::write(fake.join(f), format!("0-{}\n", n - 1)).unwrap();
            }
            std::fs::write(fake.join("online"), "0\n").unwrap();
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount --bind {} /sys/devices/system/cpu && exec \"$0\" \"$@\"",
                    fake.display()
                ))
                .arg(run.get_program())
                .args(run.get_args());
            cmd
        }
    };
    let p = Plugin::spawn(&mut cmd);
    sim.wait_devices(CRAND, WAIT, |l| all_healthy(l, 3))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    for id in ["crand0", "crand1", "crand2"] {
        sim.allocate(CRAND, &strings(&[id])).unwrap();
    }
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    p.thread_names()
}

/// grpc's C core sizes its pools by the CPU count; ours are sized by us:
/// with 64 CPUs the plugin has the very threads it has here, at most 12
/// with the metrics on.
#[test]
fn test_threads_do_not_follow_the_cpu_count() {
    let here = threads_with_cpus(None);
    let many = threads_with_cpus(Some(64));
    // (grpc may start one more pool thread for a moment under load: the
    // counts are bounded, not compared one for one.)
    for (cpus, threads) in [("this machine's", &here), ("64", &many)] {
        assert!(
            threads.len() <= 12,
            "{} threads with {cpus} CPUs: {threads:?}",
            threads.len()
        );
    }
}

// ---- 4. A kubelet.sock that is not a kubelet ------------------------------

#[test]
fn test_kubelet_sock_that_is_a_regular_file_is_named_and_waited_out() {
    let d = dirs();
    let kubelet = d.plugin.join("kubelet.sock");
    std::fs::write(&kubelet, "not a socket").unwrap();
    let mut p = start(&d, &["--plugin", "crand"]);
    p.wait_log("kubelet.sock is not a socket", WAIT);
    assert!(p.child.try_wait().unwrap().is_none(), "{}", p.log());
    assert!(
        !p.log().contains("register failed"),
        "a file is not dialled"
    );
    // The kubelet comes and replaces it.
    std::fs::remove_file(&kubelet).unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    sim.wait_ready(CRAND, WAIT).unwrap();
    sim.allocate(CRAND, &strings(&["crand1"])).unwrap();
}

/// A "kubelet" that accepts connections and never says a word: each
/// accepted connection comes out of the returned channel, so the test holds
/// it open; shutting down the returned listener clone ends the thread.
fn silent_kubelet(
    path: &Path,
) -> (
    Receiver<UnixStream>,
    UnixListener,
    std::thread::JoinHandle<()>,
) {
    let listener = UnixListener::bind(path).unwrap();
    let stop = listener.try_clone().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            if tx.send(conn).is_err() {
                return;
            }
        }
    });
    (rx, stop, thread)
}

fn stop_silent_kubelet(stop: UnixListener, thread: std::thread::JoinHandle<()>) {
    use std::os::fd::AsRawFd;
    // shutdown(2) on a listening socket wakes its blocked accept.
    nix::sys::socket::shutdown(stop.as_raw_fd(), nix::sys::socket::Shutdown::Both).unwrap();
    thread.join().unwrap();
}

#[test]
fn test_silent_kubelet_register_times_out_and_is_retried() {
    let d = dirs();
    let kubelet = d.plugin.join("kubelet.sock");
    let (accepted, stop, thread) = silent_kubelet(&kubelet);
    let t0 = Instant::now();
    let p = start(&d, &["--plugin", "crand"]);
    let first = accepted
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no Register connection:\n{}", p.log()));
    // While Register hangs, the plugin serves its own socket.
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));
    assert_serves(&c, CRAND, "crand0", "crand0");
    // grpc gives up on a connection that never sends its SETTINGS after
    // 20 s (UNAVAILABLE), before our 30 s deadline would (DEADLINE_EXCEEDED);
    // either way the failure is logged with why, and Register is tried
    // again on a new connection.
    p.wait_log_count("register failed", 1, Duration::from_secs(40));
    let failed = t0.elapsed();
    let line = p
        .log()
        .lines()
        .find(|l| l.contains("register failed"))
        .unwrap()
        .to_string();
    eprintln!("failed after {failed:?}: {line}");
    assert!(
        line.contains("DEADLINE_EXCEEDED")
            || line.contains("Deadline Exceeded")
            || line.contains("timed out before receiving SETTINGS"),
        "{line}"
    );
    assert!(line.contains("retry_ms="), "{line}");
    // The failed attempt's connection is closed, not left to pile up; grpc
    // closes an abandoned client connection on its next backup poll, which
    // runs every 5 s.
    let t = Instant::now();
    expect_hang_up_after(
        first,
        "the failed Register's connection",
        Duration::from_secs(10),
    );
    eprintln!(
        "failed Register's connection closed after {:?}",
        t.elapsed()
    );
    let second = accepted
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("Register not retried:\n{}", p.log()));
    assert_serves(&c, CRAND, "crand1", "crand1");
    // The real kubelet replaces the silent one: the pending Register is
    // dropped and the plugin registers with the new one at once.
    std::fs::remove_file(&kubelet).unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    sim.wait_ready(CRAND, WAIT).unwrap();
    sim.allocate(CRAND, &strings(&["crand2"])).unwrap();
    eprintln!("whole test: {:?}", t0.elapsed());
    drop(second);
    stop_silent_kubelet(stop, thread);
}

#[test]
fn test_silent_kubelet_does_not_hold_up_shutdown() {
    let d = dirs();
    let (accepted, stop, thread) = silent_kubelet(&d.plugin.join("kubelet.sock"));
    let mut p = start(&d, &["--plugin", "crand"]);
    let conn = accepted
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no Register connection:\n{}", p.log()));
    // Register is in flight: SIGTERM must not wait for its deadline.
    p.signal(Signal::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no exit within 1 s:\n{}", p.log()));
    assert_eq!(status.code(), Some(0), "{}", p.log());
    assert!(!d.plugin.join("crand.sock").exists());
    drop(conn);
    stop_silent_kubelet(stop, thread);
}

#[test]
fn test_stale_kubelet_sock_is_retried_with_backoff() {
    let d = dirs();
    let kubelet = d.plugin.join("kubelet.sock");
    // A socket file nobody listens on: what a killed kubelet leaves.
    drop(UnixListener::bind(&kubelet).unwrap());
    let p = start(&d, &["--plugin", "crand"]);
    // Refused at once, each time, and retried after 100, 200, 400 ms.
    for retry in ["retry_ms=100", "retry_ms=200", "retry_ms=400"] {
        p.wait_log(retry, WAIT);
    }
    let log = p.log();
    let line = log.lines().find(|l| l.contains("retry_ms=100")).unwrap();
    assert!(
        line.contains("register failed") && line.contains("UNAVAILABLE"),
        "{line}"
    );
    std::fs::remove_file(&kubelet).unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    sim.wait_ready(CRAND, WAIT).unwrap();
    sim.allocate(CRAND, &strings(&["crand0"])).unwrap();
}

// ---- 5. Directories the plugin cannot use --------------------------------

fn run_cmd(d: &Dirs, args: &[&str]) -> Command {
    common::plugin_cmd(bin(), d, args)
}

#[test]
fn test_read_only_dev_dir_fails_clearly_and_leaves_nothing() {
    let d = dirs();
    let dev = d.dev.display().to_string();
    // A read-only bind mount of the dev dir, in a mount namespace of its
    // own that dies with the process: the host's mounts are never touched.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind -o ro \"$0\" \"$0\" && exec \"$@\"")
        .arg(&dev)
        .arg(bin())
        .args(run_cmd(&d, &["--plugin", "crand"]).get_args());
    let (status, err) = run_bounded(&mut cmd);
    assert_fatal(
        &d,
        status,
        &err,
        &[
            &format!("--dev-dir {dev}: not writable"),
            "Read-only file system",
        ],
    );
    std::fs::write(d.dev.join("w"), "").expect("the mount is gone with the namespace");
}

#[test]
fn test_dev_dir_an_unprivileged_user_cannot_use_fails_clearly() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let d = dirs();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m)).unwrap();
    mode(d.tmp.path(), 0o755);
    mode(&d.plugin, 0o777);
    mode(&d.cdi, 0o777);
    let dev = d.dev.display().to_string();

    // A root-owned 0755 dev dir: not writable for nobody.
    mode(&d.dev, 0o755);
    let mut cmd = run_cmd(&d, &["--plugin", "crand"]);
    cmd.uid(65534).gid(65534);
    let (status, err) = run_bounded(&mut cmd);
    assert_fatal(
        &d,
        status,
        &err,
        &[
            &format!("--dev-dir {dev}: not writable"),
            "Permission denied",
        ],
    );

    // Writable, but nobody lacks CAP_MKNOD: the first node fails, and
    // neither a node nor a spec nor a socket is left.
    mode(&d.dev, 0o777);
    let mut cmd = run_cmd(&d, &["--plugin", "crand"]);
    cmd.uid(65534).gid(65534);
    let (status, err) = run_bounded(&mut cmd);
    assert_fatal(
        &d,
        status,
        &err,
        &[
            &format!("create device node {dev}/crand0"),
            "Operation not permitted",
        ],
    );
}

// ---- 6. Device counts ------------------------------------------------------

#[test]
fn test_absurd_device_counts_fail_with_one_clear_line() {
    // e2e has --crand-count 0 and 100000; these are the rest.
    let d = dirs();
    for (args, want, code) in [
        (
            &["--kvm-count", "0"][..],
            &["--kvm-count 0: must be between 1 and 16384"][..],
            2,
        ),
        (
            &["--kvm-count", "16385"],
            &["--kvm-count 16385: must be between 1 and 16384"],
            2,
        ),
        // Parses as usize::MAX, then the range check.
        (
            &["--crand-count", "18446744073709551615"],
            &["--crand-count 18446744073709551615: must be between 1 and 16384"],
            2,
        ),
        // One past usize::MAX, negatives, nothing: argh refuses the value
        // itself, and exits 1 as for an unknown flag.
        (
            &["--crand-count", "18446744073709551616"],
            &["'--crand-count'", "'18446744073709551616'", "too large"],
            1,
        ),
        (
            &["--kvm-count=99999999999999999999999"],
            &["'--kvm-count'", "'99999999999999999999999'", "too large"],
            1,
        ),
        (
            &["--crand-count", "-1"],
            &["'--crand-count'", "'-1'", "invalid digit"],
            1,
        ),
        (
            &["--kvm-count=-5"],
            &["'--kvm-count'", "'-5'", "invalid digit"],
            1,
        ),
        (&["--crand-count="], &["'--crand-count'", "empty string"], 1),
    ] {
        let mut cmd = run_cmd(&d, &[]);
        cmd.args(args);
        let (status, err) = run_bounded(&mut cmd);
        assert_eq!(status.code(), Some(code), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        for w in want {
            assert!(first.contains(w), "{args:?}: want {w:?} in {err:?}");
        }
        let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(lines <= 2, "{args:?}: {err}");
        for dir in [&d.plugin, &d.dev, &d.cdi] {
            assert_eq!(
                entries(dir),
                Vec::<String>::new(),
                "{args:?}: left in {dir:?}"
            );
        }
    }
}

// ---- 7. Wrong files at node paths ----------------------------------------

/// What a path is, without following it: type, inode, link target, content.
type Identity = (u32, u64, Option<std::path::PathBuf>, Option<Vec<u8>>);

fn identity(path: &Path) -> Identity {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    (
        meta.mode() & SFlag::S_IFMT.bits(),
        meta.ino(),
        ft.is_symlink().then(|| std::fs::read_link(path).unwrap()),
        ft.is_file().then(|| std::fs::read(path).unwrap()),
    )
}

/// Puts a symlink (to a correct node elsewhere, so following it would look
/// healthy), a FIFO and a regular file at crand0, crand1 and crand2.
fn plant_wrong_files(d: &Dirs, replace: bool) {
    let elsewhere = d.tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let target = elsewhere.join("random");
    if !target.exists() {
        mknod_at(&target, random_rdev());
    }
    for i in 0..3 {
        let node = d.dev.join(format!("crand{i}"));
        if replace {
            std::fs::remove_file(&node).unwrap();
        }
        match i {
            0 => std::os::unix::fs::symlink(&target, &node).unwrap(),
            // Moved into place: an IN_MOVED_TO, not a create.
            1 => {
                let fifo = elsewhere.join("fifo");
                mkfifo(&fifo, Mode::from_bits_truncate(0o666)).unwrap();
                std::fs::rename(&fifo, &node).unwrap();
            }
            _ => std::fs::write(&node, "seed").unwrap(),
        }
    }
}

const WRONG: [(&str, &str, &str); 3] = [
    ("crand0", "symlink", "node is a symlink, not a device"),
    ("crand1", "not_a_device", "node is a FIFO, not a device"),
    (
        "crand2",
        "not_a_device",
        "node is a regular file, not a device",
    ),
];

/// Each wrong file is reported Unhealthy and refused with why; crand3 is
/// fine; and each file is exactly as it was planted.
fn assert_wrong_files_refused(
    d: &Dirs,
    sim: &Sim,
    c: &api_grpc::DevicePluginClient,
    before: &[Identity],
) {
    let list = wait_list(sim, CRAND, |l| {
        WRONG.iter().all(|(id, ..)| health_of(l, id) == "Unhealthy")
    });
    assert_eq!(health_of(&list, "crand3"), "Healthy", "{list:?}");
    for (id, _, why) in WRONG {
        expect_refused(
            c,
            &request(&[&[id]]),
            &format!("device \"{id}\" is unhealthy: {why}"),
        );
    }
    assert_serves(c, CRAND, "crand3", "crand3");
    for (i, was) in before.iter().enumerate() {
        assert_eq!(
            &identity(&d.dev.join(format!("crand{i}"))),
            was,
            "crand{i} changed"
        );
    }
}

#[test]
fn test_wrong_files_at_node_paths_before_start_are_never_touched() {
    let d = dirs();
    plant_wrong_files(&d, false);
    let before: Vec<_> = (0..3)
        .map(|i| identity(&d.dev.join(format!("crand{i}"))))
        .collect();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand", "--crand-count", "4"]);
    sim.wait_registered(CRAND, WAIT).unwrap();
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));
    assert_wrong_files_refused(&d, &sim, &c, &before);
    // The health thread never opened the FIFO (it would hang there): it
    // still reports changes.
    std::fs::remove_file(d.dev.join("crand3")).unwrap();
    wait_list(&sim, CRAND, |l| health_of(l, "crand3") == "Unhealthy");
    mknod_at(&d.dev.join("crand3"), random_rdev());
    wait_list(&sim, CRAND, |l| health_of(l, "crand3") == "Healthy");
    // Nor does registering again touch them.
    p.signal(Signal::SIGHUP);
    sim.wait_registered(CRAND, WAIT).unwrap();
    assert_wrong_files_refused(&d, &sim, &crand_client(&env, &d), &before);
}

fn crand_client(env: &Arc<Environment>, d: &Dirs) -> api_grpc::DevicePluginClient {
    client_on(env, &d.plugin.join("crand.sock"))
}

#[test]
fn test_wrong_files_at_node_paths_after_start_are_never_touched() {
    let d = dirs();
    let mut sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand", "--crand-count", "4"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    plant_wrong_files(&d, true);
    let before: Vec<_> = (0..3)
        .map(|i| identity(&d.dev.join(format!("crand{i}"))))
        .collect();
    let env = env();
    let c = client_on(&env, &d.plugin.join("crand.sock"));
    assert_wrong_files_refused(&d, &sim, &c, &before);
    for (id, code, why) in WRONG {
        p.wait_log(
            &format!("device={id} Unhealthy reason={code} why=\"{why}\""),
            WAIT,
        );
    }
    // A kubelet restart serves and registers anew; the files stay.
    sim.restart().unwrap();
    sim.wait_registered(CRAND, WAIT).unwrap();
    assert_wrong_files_refused(&d, &sim, &crand_client(&env, &d), &before);
    // Put right, they come back.
    for i in 0..3 {
        let node = d.dev.join(format!("crand{i}"));
        std::fs::remove_file(&node).unwrap();
        mknod_at(&node, random_rdev());
    }
    wait_list(&sim, CRAND, |l| all_healthy(l, 4));
    assert_serves(&crand_client(&env, &d), CRAND, "crand1", "crand1");
}

// ---- soak ------------------------------------------------------------------

#[test]
fn test_soak_200_kubelet_restarts_reregister_without_leaks() {
    let d = dirs();
    let mut sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let base = usage(&p);
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        sim.restart().unwrap();
        sim.wait_registered(CRAND, WAIT)
            .unwrap_or_else(|e| panic!("restart {i}: {e}\n{}", p.log()));
        worst = worst.max(t.elapsed());
        let devices = wait_list(&sim, CRAND, |_| true);
        assert!(all_healthy(&devices, 3), "{devices:?}");
    }
    eprintln!("worst restart -> Register: {worst:?}");
    sim.allocate(CRAND, &strings(&["crand0"])).unwrap();
    // One registration per restart, as the kubelet saw them: none left over.
    assert_undisturbed(&sim);
    assert_back_to(&p, base, "200 kubelet restarts");
    assert_own_threads_once(&p);
    // No socket file left over either: the kubelet's and ours.
    assert_eq!(entries(&d.plugin), ["crand.sock", "kubelet.sock"]);
}

#[test]
fn test_soak_200_stream_cycles_leave_nothing() {
    let Warm {
        d: _d,
        sim,
        p,
        sock,
        env,
        base,
    } = warm_crand();
    let closed = p.log().matches("ListAndWatch closed").count();
    for i in 0..200 {
        let s = Stream::open(&env, &sock);
        assert!(all_healthy(&s.next(), 3), "cycle {i}");
        drop(s);
        p.wait_log_count("ListAndWatch closed", closed + i + 1, WAIT);
    }
    assert_back_to(&p, base, "200 stream cycles");
    assert_own_threads_once(&p);
    sim.allocate(CRAND, &strings(&["crand1"])).unwrap();
    assert_undisturbed(&sim);
    assert!(!p.log().contains("not reopened"), "{}", p.log());
}

#[test]
fn test_soak_200_health_flips_each_seen_leave_nothing() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let node = d.dev.join("crand1");
    let flip = || {
        std::fs::remove_file(&node).unwrap();
        wait_list(&sim, CRAND, |l| health_of(l, "crand1") == "Unhealthy");
        mknod_at(&node, random_rdev());
        wait_list(&sim, CRAND, |l| all_healthy(l, 3));
    };
    flip();
    let base = usage(&p);
    let t = Instant::now();
    for _ in 0..200 {
        flip();
    }
    eprintln!("200 flips: {:?}", t.elapsed());
    let unhealthy = "device=crand1 Unhealthy reason=missing why=\"node missing\"";
    p.wait_log_count(unhealthy, 201, WAIT);
    assert_eq!(p.log().matches(unhealthy).count(), 201);
    assert_back_to(&p, base, "200 health flips");
    assert_own_threads_once(&p);
    sim.allocate(CRAND, &strings(&["crand1"])).unwrap();
    assert_undisturbed(&sim);
}
