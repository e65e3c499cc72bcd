//! End-to-end tests: the real `kubelet-plugin` binary against the kubelet
//! simulator, over real unix sockets, with real device nodes made by mknod
//! in temp dirs (the tests run as root). Every wait is bounded.

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

mod common;

use common::{Dirs, Plugin, dirs};
use kubelet_plugin::{
    api::{api, api_grpc},
    sim::{Sim, SimEvent},
};
use nix::sys::{
    signal::Signal,
    stat::{Mode, SFlag, makedev, mknod, stat},
};

const CRAND: &str = "github.com.ihcsim/crand";
const KVM: &str = "github.com.ihcsim/kvm";
const WAIT: Duration = Duration::from_secs(5);

fn plugin_cmd(d: &Dirs, args: &[&str]) -> Command {
    common::plugin_cmd(env!("CARGO_BIN_EXE_kubelet-plugin"), d, args)
}

fn start(d: &Dirs, args: &[&str]) -> Plugin {
    common::start(env!("CARGO_BIN_EXE_kubelet-plugin"), d, args)
}

fn random_rdev() -> u64 {
    stat("/dev/random").unwrap().st_rdev
}

fn healthy(devices: &[(String, String)], ids: &[&str]) -> bool {
    devices.len() == ids.len()
        && devices
            .iter()
            .zip(ids)
            .all(|((id, h), want)| id == want && h == "Healthy")
}

fn health_of<'a>(devices: &'a [(String, String)], id: &str) -> &'a str {
    &devices.iter().find(|(i, _)| i == id).unwrap().1
}

#[test]
fn test_registers_within_2s_with_version_endpoint_and_resource() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    let req = sim.wait_registered(CRAND, Duration::from_secs(2)).unwrap();
    assert_eq!(req.version, "v1beta1");
    assert_eq!(req.endpoint, "crand.sock");
    assert_eq!(req.resource_name, CRAND);
    let opts = req.options.as_ref().unwrap();
    assert!(!opts.pre_start_required && !opts.get_preferred_allocation_available);
    let meta = std::fs::symlink_metadata(d.plugin.join("crand.sock")).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600, "only root may connect");
}

#[test]
fn test_register_only_after_own_socket_answers() {
    // The simulator dials back at once, without waiting for the socket to
    // be ready: a plugin that registered before serving would be rejected.
    for _ in 0..10 {
        let d = dirs();
        let sim = Sim::start(&d.plugin).unwrap();
        let _p = start(&d, &["--plugin", "crand"]);
        let first = sim
            .wait_for("a register outcome", WAIT, |ev| match ev {
                SimEvent::Registered { .. } => Some(Ok(())),
                SimEvent::Rejected { error, .. } => Some(Err(error.clone())),
                _ => None,
            })
            .unwrap();
        assert_eq!(first, Ok(()));
    }
}

#[test]
fn test_first_list_has_every_device_healthy() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    let devices = sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    assert!(
        healthy(&devices, &["crand0", "crand1", "crand2"]),
        "{devices:?}"
    );
    for i in 0..3 {
        let meta = std::fs::symlink_metadata(d.dev.join(format!("crand{i}"))).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), random_rdev());
    }

    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand", "--crand-count", "5"]);
    let devices = sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    assert!(
        healthy(
            &devices,
            &["crand0", "crand1", "crand2", "crand3", "crand4"]
        ),
        "{devices:?}"
    );
}

#[test]
fn test_allocate_returns_cdi_names_and_device_specs() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    let resp = sim
        .allocate(CRAND, &["crand1".into(), "crand2".into()])
        .unwrap();
    assert_eq!(resp.container_responses.len(), 1);
    let c = &resp.container_responses[0];
    let names: Vec<_> = c.cdi_devices.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "github.com.ihcsim/crand=crand1",
            "github.com.ihcsim/crand=crand2"
        ]
    );
    assert_eq!(c.devices.len(), 2);
    for (spec, i) in c.devices.iter().zip([1, 2]) {
        assert_eq!(spec.container_path, format!("/dev/crand{i}"));
        assert_eq!(spec.permissions, "rw");
        let meta = std::fs::symlink_metadata(&spec.host_path).unwrap();
        assert!(meta.file_type().is_char_device(), "{}", spec.host_path);
        assert_eq!(meta.rdev(), random_rdev());
        assert_eq!(Path::new(&spec.host_path), d.dev.join(format!("crand{i}")));
    }
}

#[test]
fn test_device_injection_modes() {
    for (mode, cdi, specs) in [("cdi", 1, 0), ("device-spec", 0, 1)] {
        let d = dirs();
        let sim = Sim::start(&d.plugin).unwrap();
        let _p = start(&d, &["--plugin", "crand", "--device-injection", mode]);
        sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
        let resp = sim.allocate(CRAND, &["crand0".into()]).unwrap();
        let c = &resp.container_responses[0];
        assert_eq!(
            (c.cdi_devices.len(), c.devices.len()),
            (cdi, specs),
            "{mode}"
        );
    }
}

#[test]
fn test_bad_allocations_fail_and_the_server_keeps_serving() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    let err = sim.allocate(CRAND, &["crand9".into()]).unwrap_err();
    assert!(
        err.contains("INVALID_ARGUMENT") || err.contains("InvalidArgument"),
        "{err}"
    );
    assert!(err.contains("crand9"), "{err}");
    let err = sim.allocate(CRAND, &[]).unwrap_err();
    assert!(err.contains("no device IDs"), "{err}");
    let err = sim
        .allocate(CRAND, &["crand0".into(), "crand0".into()])
        .unwrap_err();
    assert!(err.contains("twice"), "{err}");
    let resp = sim.allocate(CRAND, &["crand0".into()]).unwrap();
    assert_eq!(
        resp.container_responses[0].cdi_devices[0].name,
        "github.com.ihcsim/crand=crand0"
    );
    assert!(p.log().contains("allocate refused"), "{}", p.log());
}

#[test]
fn test_preferred_allocation_and_pre_start_answer() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    let client = client(&d.plugin.join("crand.sock"));
    let req = api::PreferredAllocationRequest {
        container_requests: vec![api::ContainerPreferredAllocationRequest {
            available_deviceIDs: vec!["crand0".into(), "crand1".into(), "crand2".into()],
            must_include_deviceIDs: vec!["crand2".into()],
            allocation_size: 2,
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = client.get_preferred_allocation(&req).unwrap();
    assert_eq!(resp.container_responses[0].deviceIDs, ["crand2", "crand0"]);
    client
        .pre_start_container(&api::PreStartContainerRequest::new())
        .unwrap();
}

fn client(sock: &Path) -> api_grpc::DevicePluginClient {
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let ch = grpcio::ChannelBuilder::new(env).connect(&format!("unix:{}", sock.display()));
    api_grpc::DevicePluginClient::new(ch)
}

#[test]
fn test_sigterm_exits_0_within_1s_and_removes_the_socket() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let mut p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    assert!(d.plugin.join("crand.sock").exists());
    p.signal(Signal::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(1))
        .expect("exit within 1 s");
    assert_eq!(status.code(), Some(0), "{}", p.log());
    assert!(!d.plugin.join("crand.sock").exists());
    assert!(
        d.plugin.join("kubelet.sock").exists(),
        "never touches kubelet.sock"
    );
    sim.wait_for("the stream to end", WAIT, |ev| {
        matches!(ev, SimEvent::StreamEnded { .. }).then_some(())
    })
    .unwrap();
}

/// Runs the plugin with `args` and expects a quick failure with one line on
/// stderr containing `want`.
fn expect_fatal(d: &Dirs, cmd: &mut Command, want: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(err.contains(want), "want {want:?} in {err:?}");
    assert!(
        lines.iter().filter(|l| l.contains("error")).count() <= 2,
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&d.plugin).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn test_bad_flags_and_dirs_fail_with_one_clear_line() {
    let d = dirs();
    for (args, want) in [
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--crand-count=x"], "--crand-count"),
        (&["--plugin", "gpu"], "unknown plugin"),
        (&["--crand-count", "0"], "--crand-count 0"),
        (&["--crand-count", "100000"], "between 1 and 16384"),
        (&["--device-injection", "all"], "cdi, device-spec or both"),
        (&["--resource-domain", "Bad_Domain"], "--resource-domain"),
    ] {
        expect_fatal(&d, &mut plugin_cmd(&d, args), want);
    }

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
    cmd.args(["run", "--device-plugin-dir"])
        .arg(d.plugin.join("missing"))
        .arg("--dev-dir")
        .arg(&d.dev);
    expect_fatal(&d, &mut cmd, "--device-plugin-dir");
    let out = cmd.output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file or directory"));

    // Not writable: as an unprivileged user, a root-owned 0755 dir.
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = plugin_cmd(&d, &["--plugin", "crand"]);
    cmd.uid(65534).gid(65534);
    expect_fatal(&d, &mut cmd, "not writable");
}

#[test]
fn test_sim_rejects_like_the_kubelet() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let ch = grpcio::ChannelBuilder::new(env).connect(&format!("unix:{}", sim.socket().display()));
    let reg = api_grpc::RegistrationClient::new(ch);
    let req = |version: &str, resource: &str, endpoint: &str| api::RegisterRequest {
        version: version.into(),
        resource_name: resource.into(),
        endpoint: endpoint.into(),
        ..Default::default()
    };
    let err = reg
        .register(&req("v1alpha", CRAND, "x.sock"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("requested API version \\\"v1alpha\\\" is not supported")
            || err.contains("requested API version \"v1alpha\" is not supported"),
        "{err}"
    );
    let err = reg
        .register(&req("v1beta1", "kubernetes.io/crand", "x.sock"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is invalid"), "{err}");
    let err = reg
        .register(&req("v1beta1", CRAND, "dir/x.sock"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid endpoint"), "{err}");
    // Valid, but nothing serves the endpoint: the dial-back fails.
    let err = reg
        .register(&req("v1beta1", CRAND, "x.sock"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("failed to get device plugin options"), "{err}");
}

/// Waits until the plugin's log contains `what`.
fn wait_log(p: &Plugin, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !p.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn test_waits_for_a_late_kubelet_and_registers_at_once() {
    let d = dirs();
    let p = start(&d, &["--plugin", "crand"]);
    wait_log(&p, "waiting for");
    // The scenario: the kubelet comes up a second later.
    std::thread::sleep(Duration::from_secs(1));
    let created = Instant::now();
    let sim = Sim::start(&d.plugin).unwrap();
    let at = sim
        .wait_for("register", WAIT, |ev| match ev {
            SimEvent::Registered { at, .. } => Some(*at),
            _ => None,
        })
        .unwrap();
    let took = at.duration_since(created);
    eprintln!("kubelet.sock created -> Register: {took:?}");
    assert!(took < Duration::from_millis(200), "{took:?}");
}

#[test]
fn test_restart_after_kill_9_in_the_same_dirs() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let mut p = start(&d, &["--plugin", "crand"]);
    sim.wait_registered(CRAND, WAIT).unwrap();
    p.signal(Signal::SIGKILL);
    p.wait_exit(WAIT).unwrap();
    assert!(
        d.plugin.join("crand.sock").exists(),
        "kill -9 leaves the socket"
    );
    let p2 = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    assert!(p2.log().contains("removed stale socket"), "{}", p2.log());
}

#[test]
fn test_second_instance_refuses_a_live_socket() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    sim.wait_registered(CRAND, WAIT).unwrap();
    let out = plugin_cmd(&d, &["--plugin", "crand"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another process is serving"));
    // The first one still answers.
    sim.allocate(CRAND, &["crand0".into()]).unwrap();
}

fn mknod_at(path: &Path, rdev: u64) {
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), rdev).unwrap();
}

#[test]
fn test_health_follows_the_nodes() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    let node = d.dev.join("crand1");
    let crand1_is =
        |want: &'static str| move |devs: &[(String, String)]| health_of(devs, "crand1") == want;

    std::fs::remove_file(&node).unwrap();
    let t = Instant::now();
    let devices = sim
        .wait_devices(CRAND, WAIT, crand1_is("Unhealthy"))
        .unwrap();
    eprintln!("node removed -> ListAndWatch: {:?}", t.elapsed());
    assert_eq!(health_of(&devices, "crand0"), "Healthy");
    assert_eq!(health_of(&devices, "crand2"), "Healthy");
    assert_eq!(devices.len(), 3, "never dropped");
    let err = sim.allocate(CRAND, &["crand1".into()]).unwrap_err();
    assert!(err.contains("unhealthy"), "{err}");

    mknod_at(&node, random_rdev());
    sim.wait_devices(CRAND, WAIT, crand1_is("Healthy")).unwrap();
    sim.allocate(CRAND, &["crand1".into()]).unwrap();

    std::fs::remove_file(&node).unwrap();
    mknod_at(&node, makedev(1, 3));
    sim.wait_devices(CRAND, WAIT, crand1_is("Unhealthy"))
        .unwrap();
    std::fs::remove_file(&node).unwrap();
    mknod_at(&node, random_rdev());
    sim.wait_devices(CRAND, WAIT, crand1_is("Healthy")).unwrap();

    std::fs::remove_file(&node).unwrap();
    std::os::unix::fs::symlink("/dev/random", &node).unwrap();
    sim.wait_devices(CRAND, WAIT, crand1_is("Unhealthy"))
        .unwrap();
}

#[test]
fn test_kvm_health_and_allocate() {
    let Ok(host) = stat("/dev/kvm") else {
        eprintln!("SKIPPED: this host has no /dev/kvm to clone");
        return;
    };
    let d = dirs();
    let kvm = d.dev.join("kvm");
    mknod_at(&kvm, host.st_rdev);
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "kvm", "--kvm-count", "2"]);
    let devices = sim.wait_devices(KVM, WAIT, |_| true).unwrap();
    assert!(healthy(&devices, &["kvm0", "kvm1"]), "{devices:?}");
    let resp = sim.allocate(KVM, &["kvm1".into()]).unwrap();
    let c = &resp.container_responses[0];
    assert_eq!(c.cdi_devices[0].name, "github.com.ihcsim/kvm=kvm");
    assert_eq!(c.devices[0].container_path, "/dev/kvm");
    assert_eq!(Path::new(&c.devices[0].host_path), kvm);
    assert_eq!(c.devices[0].permissions, "rw");
    // Wake the health thread while kvm is healthy: probing it (open
    // read-write, close) must not wake the thread again and again.
    std::fs::write(d.dev.join("unrelated"), "").unwrap();
    wait_log(&p, "dev dir changed");
    std::fs::remove_file(&kvm).unwrap();
    let devices = sim
        .wait_devices(KVM, WAIT, |d| d.iter().all(|(_, h)| h == "Unhealthy"))
        .unwrap();
    assert_eq!(devices.len(), 2);
    let wakes = p.log().matches("dev dir changed").count();
    assert!(wakes <= 3, "health thread woke {wakes} times:\n{}", p.log());
}

#[test]
fn test_sighup_registers_again() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    p.signal(Signal::SIGHUP);
    sim.wait_ready(CRAND, WAIT).unwrap();
    sim.allocate(CRAND, &["crand2".into()]).unwrap();
}

#[test]
fn test_both_plugins_register_two_resources() {
    let d = dirs();
    if let Ok(host) = stat("/dev/kvm") {
        mknod_at(&d.dev.join("kvm"), host.st_rdev);
    }
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &[]);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = sim
            .wait_for("two registrations", WAIT, |ev| match ev {
                SimEvent::Registered { request, .. } => Some(request.resource_name.clone()),
                _ => None,
            })
            .unwrap();
        seen.push(r);
    }
    seen.sort();
    assert_eq!(seen, [CRAND, KVM]);
    assert!(d.plugin.join("crand.sock").exists() && d.plugin.join("kvm.sock").exists());
}

#[test]
fn test_registers_again_when_the_kubelet_drops_the_stream() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    assert!(sim.disconnect(CRAND));
    sim.wait_ready(CRAND, WAIT).unwrap();
    assert!(p.log().contains("ListAndWatch not reopened"), "{}", p.log());
}

#[test]
fn test_status_lists_devices_and_fails_without_plugins() {
    let d = dirs();
    let status = || {
        Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"))
            .args(["status", "--device-plugin-dir"])
            .arg(&d.plugin)
            .output()
            .unwrap()
    };
    let out = status();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin sockets"));

    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    std::fs::remove_file(d.dev.join("crand2")).unwrap();
    sim.wait_devices(CRAND, WAIT, |devs| health_of(devs, "crand2") == "Unhealthy")
        .unwrap();
    let out = status();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("github.com.ihcsim/crand (crand.sock): 3 devices, 2 healthy"),
        "{text}"
    );
    assert!(text.contains("crand2       Unhealthy"), "{text}");

    // A socket nobody serves: named, and the exit code says so.
    let _stale = std::os::unix::net::UnixListener::bind(d.plugin.join("zzz.sock")).unwrap();
    let out = status();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("zzz.sock: not answering"));
}
