//! End-to-end tests: the real `kubelet-plugin` binary against the kubelet
//! simulator, over real unix sockets, with real device nodes made by mknod
//! in temp dirs (the tests run as root). Every wait is bounded.

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    process::Command,
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
    assert!(!opts.pre_start_required && opts.get_preferred_allocation_available);
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
fn test_sim_waits_take_the_plugins_events_in_any_order() {
    // kvm registers first, crand second; the demo waits for crand, then
    // kvm: kvm's Register, already passed, must still be there to take.
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let kvm = start(&d, &["--plugin", "kvm"]);
    kvm.wait_log("registered resource=github.com.ihcsim/kvm", WAIT);
    let _crand = start(&d, &["--plugin", "crand"]);
    sim.wait_registered(CRAND, WAIT).unwrap();
    sim.wait_devices(CRAND, WAIT, |l| l.len() == 3).unwrap();
    sim.wait_registered(KVM, WAIT).unwrap();
    sim.wait_devices(KVM, WAIT, |l| l.len() == 1).unwrap();
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
    p.wait_log("allocate refused", WAIT);
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

/// Once registered and quiet, the plugin gives back the code pages start-up
/// touched (and again after a kubelet restart); what runs afterwards finds
/// its code again: streams, health, Allocate, a new registration, SIGTERM.
#[test]
fn test_code_pages_trimmed_when_settled_and_everything_still_runs() {
    let d = dirs();
    let mut sim = Sim::start(&d.plugin).unwrap();
    let mut p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |l| healthy(l, &["crand0", "crand1", "crand2"]))
        .unwrap();
    p.wait_log("code pages trimmed", WAIT);
    std::fs::remove_file(d.dev.join("crand1")).unwrap();
    sim.wait_devices(CRAND, WAIT, |l| health_of(l, "crand1") == "Unhealthy")
        .unwrap();
    sim.allocate(CRAND, &["crand0".into()]).unwrap();
    sim.restart().unwrap();
    sim.wait_registered(CRAND, WAIT).unwrap();
    p.wait_log_count("code pages trimmed", 2, WAIT);
    sim.allocate(CRAND, &["crand2".into()]).unwrap();
    p.signal(Signal::SIGTERM);
    let status = p.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", p.log());
}

/// Runs the plugin with `args` and expects a quick failure with one line on
/// stderr containing `want`.
fn expect_fatal(d: &Dirs, cmd: Command, want: &str) {
    let out = common::output(cmd, WAIT);
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
        expect_fatal(&d, plugin_cmd(&d, args), want);
    }

    // A dir that is a file, or missing where it is not made (the dev dir).
    let file = d.tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    for (flag, path, want) in [
        ("--device-plugin-dir", &file, "not a directory"),
        ("--cdi-dir", &file, "not a directory"),
        (
            "--dev-dir",
            &d.dev.join("missing"),
            "No such file or directory",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
        cmd.args(["run", "--plugin", "crand"]);
        for (f, dir) in [
            ("--device-plugin-dir", &d.plugin),
            ("--cdi-dir", &d.cdi),
            ("--dev-dir", &d.dev),
        ] {
            cmd.arg(f).arg(if f == flag { path } else { dir });
        }
        let out = common::output(cmd, WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("{flag} {}: {want}", path.display())),
            "{err}"
        );
    }

    // Not writable: as an unprivileged user, a root-owned 0755 dir.
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = plugin_cmd(&d, &["--plugin", "crand"]);
    cmd.uid(65534).gid(65534);
    expect_fatal(&d, cmd, "not writable");
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

#[test]
fn test_waits_for_a_late_kubelet_and_registers_at_once() {
    let d = dirs();
    let p = start(&d, &["--plugin", "crand"]);
    p.wait_log("waiting for", WAIT);
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
    p2.wait_log("removed stale socket", WAIT);
}

#[test]
fn test_second_instance_is_refused_before_any_kubelet_and_after() {
    let d = dirs();
    let mut first = start(&d, &["--plugin", "crand"]);
    first.wait_log("waiting for", WAIT);
    let spec = d.cdi.join("github.com.ihcsim-crand.json");
    let before = std::fs::metadata(&spec).unwrap().modified().unwrap();
    // No kubelet, so no socket shows that the first one runs: the lock does.
    let out = common::output(plugin_cmd(&d, &["--plugin", "crand"]), WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "busy: {err}");
    assert!(
        err.contains(&format!(
            "another kubelet-plugin (pid {}) serves github.com.ihcsim/crand",
            first.child.id()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&spec).unwrap().modified().unwrap(),
        before,
        "the refused one wrote nothing"
    );
    // Another resource on the same dirs is another instance's business.
    let kvm = start(&d, &["--plugin", "kvm"]);
    kvm.wait_log("waiting for", WAIT);
    drop(kvm);

    // With the kubelet there, the same; the first keeps serving.
    let sim = Sim::start(&d.plugin).unwrap();
    sim.wait_ready(CRAND, WAIT).unwrap();
    let out = common::output(plugin_cmd(&d, &["--plugin", "crand"]), WAIT);
    assert_eq!(out.status.code(), Some(3));
    sim.allocate(CRAND, &["crand0".into()]).unwrap();

    // A clean exit takes the lock file along; kill -9 leaves it unlocked,
    // and the next start takes it over.
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(WAIT).unwrap().code(), Some(0));
    let lock = d.cdi.join(".kubelet-plugin-github.com.ihcsim_crand.lock");
    assert!(!lock.exists(), "lock file left after a clean exit");
    let mut second = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    second.signal(Signal::SIGKILL);
    second.wait_exit(WAIT).unwrap();
    assert!(lock.exists());
    let _third = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
}

#[test]
fn test_a_live_socket_of_another_program_is_not_taken() {
    let d = dirs();
    // Not a kubelet-plugin (no lock), but something serves on our path.
    let other = std::os::unix::net::UnixListener::bind(d.plugin.join("crand.sock")).unwrap();
    let out = common::output(plugin_cmd(&d, &["--plugin", "crand"]), WAIT);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another process is serving"));
    assert!(d.plugin.join("crand.sock").exists());
    drop(other);
}

#[test]
fn test_missing_dirs_are_made_and_said() {
    let d = dirs();
    let base = d.tmp.path().join("fresh");
    let (dp, cdi, registry) = (
        base.join("var/lib/kubelet/device-plugins"),
        base.join("run/cdi"),
        base.join("var/lib/kubelet/plugins_registry"),
    );
    for (mode, args) in [
        ("kubelet-sock", vec![]),
        (
            "plugins-registry",
            vec!["--registration", "plugins-registry"],
        ),
    ] {
        let _ = std::fs::remove_dir_all(&base);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
        cmd.args(["run", "--plugin", "crand", "--device-plugin-dir"])
            .arg(&dp)
            .arg("--dev-dir")
            .arg(&d.dev)
            .arg("--cdi-dir")
            .arg(&cdi)
            .arg("--plugins-registry-dir")
            .arg(&registry)
            .args(&args);
        let p = Plugin::spawn(&mut cmd);
        // No kubelet here, in either mode: the plugin waits, ready.
        p.wait_log("waiting for", WAIT);
        // Only the socket dir of its mode: the other is not used.
        let (used, unused) = if mode == "plugins-registry" {
            (&registry, &dp)
        } else {
            (&dp, &registry)
        };
        assert!(!unused.exists(), "{mode}: made a dir it does not use");
        let made = [(used, 0o750), (&cdi, 0o755)];
        for (dir, want) in made {
            let mode_bits = std::fs::metadata(dir).unwrap().mode() & 0o777;
            assert_eq!(mode_bits, want, "{mode}: {}", dir.display());
            let line = "created missing directory";
            assert!(
                p.log()
                    .lines()
                    .any(|l| l.contains(line) && l.contains(&*dir.display().to_string())),
                "{mode}: no info line for {}:\n{}",
                dir.display(),
                p.log()
            );
        }
        assert!(cdi.join("github.com.ihcsim-crand.json").exists(), "{mode}");
    }
}

#[test]
fn test_plugins_registry_mode_registers_and_survives_kubelet_restarts() {
    let d = dirs();
    let registry = d.tmp.path().join("plugins_registry");
    std::fs::create_dir(&registry).unwrap();
    let mut sim = Sim::start(&d.plugin).unwrap();
    sim.watch_registry(&registry).unwrap();
    let mut p = start(
        &d,
        &[
            "--plugin",
            "crand",
            "--registration",
            "plugins-registry",
            "--plugins-registry-dir",
            registry.to_str().unwrap(),
        ],
    );
    let socket = registry.join("github.com.ihcsim-crand.sock");
    let req = sim.wait_registered(CRAND, WAIT).unwrap();
    assert_eq!(
        req.endpoint,
        socket.display().to_string(),
        "absolute endpoint"
    );
    let devices = sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    assert!(
        healthy(&devices, &["crand0", "crand1", "crand2"]),
        "{devices:?}"
    );
    assert!(
        !d.plugin.join("crand.sock").exists(),
        "nothing in the device plugin dir"
    );
    sim.allocate(CRAND, &["crand1".into()]).unwrap();
    p.wait_log("registered resource=github.com.ihcsim/crand", WAIT);

    // A kubelet restart: the kubelet finds the same socket again.
    let inode = std::fs::metadata(&socket).unwrap().ino();
    sim.restart().unwrap();
    sim.wait_ready(CRAND, WAIT).unwrap();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        inode,
        "socket kept"
    );

    assert_eq!(
        p.log().matches("serving resource=").count(),
        1,
        "{}",
        p.log()
    );

    // Our socket removed: served anew, and the watcher registers it again.
    std::fs::remove_file(&socket).unwrap();
    sim.wait_ready(CRAND, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    p.wait_log("own socket gone", WAIT);
    p.wait_log_count("serving resource=", 2, WAIT);

    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).unwrap().code(), Some(0), "{}", p.log());
    assert!(!socket.exists());
}

/// Opens ListAndWatch on `sock` and reads it on a thread of its own that
/// hands over each item, so a test can wait for the next one with a bound.
fn follow(sock: &Path) -> crossbeam_channel::Receiver<Result<usize, String>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    // The call lives as long as its client.
    let client = client(sock);
    let mut stream = client.list_and_watch(&api::Empty::new()).unwrap();
    std::thread::spawn(move || {
        let _client = client;
        loop {
            let item = futures_executor::block_on(futures_util::StreamExt::next(&mut stream));
            let end = !matches!(item, Some(Ok(_)));
            let _ = tx.send(match item {
                Some(Ok(msg)) => Ok(msg.devices.len()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("ended with OK".into()),
            });
            if end {
                return;
            }
        }
    });
    rx
}

fn wait_both_ready(sim: &Sim) {
    common::wait_lists(sim, &[CRAND, KVM], WAIT);
}

#[test]
fn test_every_stream_ends_the_same_way_with_the_reason() {
    let d = dirs();
    if let Ok(host) = stat("/dev/kvm") {
        mknod_at(&d.dev.join("kvm"), host.st_rdev);
    }
    let sim = Sim::start(&d.plugin).unwrap();
    let mut p = start(&d, &[]);
    wait_both_ready(&sim);
    let open = |sock: &str| {
        let rx = follow(&d.plugin.join(sock));
        assert!(rx.recv_timeout(WAIT).unwrap().is_ok(), "first list");
        rx
    };
    // SIGHUP serves anew: the old streams end, saying so.
    let (crand, kvm) = (open("crand.sock"), open("kvm.sock"));
    p.signal(Signal::SIGHUP);
    for rx in [&crand, &kvm] {
        let end = rx.recv_timeout(WAIT).unwrap().unwrap_err();
        assert!(
            end.contains("14-UNAVAILABLE")
                && end.contains("kubelet-plugin: serving again on a new socket"),
            "{end}"
        );
    }
    wait_both_ready(&sim);
    // SIGTERM: every stream, crand's and kvm's alike.
    let (crand, kvm) = (open("crand.sock"), open("kvm.sock"));
    p.signal(Signal::SIGTERM);
    for rx in [&crand, &kvm] {
        let end = rx.recv_timeout(WAIT).unwrap().unwrap_err();
        assert!(
            end.contains("14-UNAVAILABLE") && end.contains("kubelet-plugin: shutting down"),
            "{end}"
        );
    }
    assert_eq!(p.wait_exit(WAIT).unwrap().code(), Some(0), "{}", p.log());
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
        return common::skip(
            "test_kvm_health_and_allocate",
            "this host has no /dev/kvm to clone",
        );
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
    p.wait_log("dev dir changed", WAIT);
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
    // Both register, in whichever order.
    for resource in [KVM, CRAND] {
        sim.wait_registered(resource, WAIT).unwrap();
    }
    assert!(d.plugin.join("crand.sock").exists() && d.plugin.join("kvm.sock").exists());
}

#[test]
fn test_registers_again_when_the_kubelet_drops_the_stream() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_ready(CRAND, WAIT).unwrap();
    assert!(sim.disconnect(CRAND));
    // The plugin gives the kubelet a grace period to reopen the stream,
    // then registers again: wait for each step on its own bound.
    p.wait_log("ListAndWatch not reopened", WAIT);
    sim.wait_ready(CRAND, WAIT).unwrap();
}

#[test]
fn test_status_lists_devices_reasons_and_pods_with_exit_codes() {
    let d = dirs();
    let pod_sock = d.tmp.path().join("pod-resources.sock");
    let status = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
        cmd.args(["status", "--device-plugin-dir"])
            .arg(&d.plugin)
            .arg("--cdi-dir")
            .arg(&d.cdi)
            .arg("--pod-resources-socket")
            .arg(&pod_sock)
            .args(extra);
        common::output(cmd, WAIT)
    };
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no kubelet-plugin resources"));

    let mut sim = Sim::start(&d.plugin).unwrap();
    sim.serve_pod_resources(&pod_sock).unwrap();
    let p = start(&d, &["--plugin", "crand"]);
    sim.wait_devices(CRAND, WAIT, |_| true).unwrap();
    p.wait_log("registered resource=", WAIT);
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(0), "all healthy");
    let pod = kubelet_plugin::sim::PodRef {
        namespace: "default".into(),
        name: "busybox-crand".into(),
        container: "busybox".into(),
    };
    sim.allocate_for(&pod, CRAND, &["crand0".into(), "crand2".into()])
        .unwrap();
    std::fs::remove_file(d.dev.join("crand2")).unwrap();
    sim.wait_devices(CRAND, WAIT, |devs| health_of(devs, "crand2") == "Unhealthy")
        .unwrap();

    let out = status(&["--pods"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "some device unhealthy: {text}");
    assert!(
        text.contains(
            "github.com.ihcsim/crand (crand.sock, kubelet-sock, registered): 3 devices, 2 healthy"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "crand2       Unhealthy missing: node missing pod=default/busybox-crand/busybox"
        ),
        "{text}"
    );
    assert!(text.contains("crand1       Healthy   pod=-"), "{text}");
    // A liveness probe cares only that the plugin answers.
    assert_eq!(status(&["--liveness"]).status.code(), Some(0));

    let out = status(&["--pods", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugin = &json["plugins"][0];
    assert_eq!(plugin["resource"], CRAND);
    assert_eq!(plugin["answering"], true);
    let crand2 = &plugin["devices"][2];
    assert_eq!(crand2["id"], "crand2");
    assert_eq!(crand2["reason"], "missing");
    assert_eq!(crand2["pods"][0]["pod"], "busybox-crand");
    assert_eq!(plugin["devices"][1]["reason"], serde_json::Value::Null);
    assert_eq!(status(&["--output", "yaml"]).status.code(), Some(2));

    // A plugin killed: its lock stays, nobody answers: 2, named.
    drop(p);
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not answering: github.com.ihcsim/crand")
    );
    assert_eq!(status(&["--liveness"]).status.code(), Some(2));
}
