//! The dev plugin end to end: the real binary against the simulator, with
//! device nodes made by mknod in a temp dev dir (as root): patterns, nodes
//! that come and go (hot-plug), udev's by-id links, shared nodes, block
//! devices, and the CDI spec that must be there before a device is
//! announced. Every wait is bounded.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

mod common;

use common::{Dirs, Plugin, dirs};
use kubelet_plugin::{api::api, sim::Sim};
use nix::sys::{
    signal::Signal,
    stat::{Mode, SFlag, makedev, mknod, stat},
};

const WAIT: Duration = Duration::from_secs(5);
const SERIAL: &str = "github.com.ihcsim/serial";

fn start(d: &Dirs, args: &[&str]) -> Plugin {
    common::start(
        env!("CARGO_BIN_EXE_kubelet-plugin"),
        d,
        &[&["--plugin", "none"], args].concat(),
    )
}

/// A character node at `<dev>/<rel>` with /dev/random's number, which
/// anything can read.
fn char_node(d: &Dirs, rel: &str) {
    let path = d.dev.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let rdev = stat("/dev/random").unwrap().st_rdev;
    mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), rdev).unwrap();
}

fn ids(devices: &[(String, String)]) -> Vec<&str> {
    devices.iter().map(|(id, _)| id.as_str()).collect()
}

fn health<'a>(devices: &'a [(String, String)], id: &str) -> &'a str {
    &devices
        .iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no {id} in {devices:?}"))
        .1
}

/// The CDI spec of `resource`, as text.
fn spec(d: &Dirs, resource: &str) -> String {
    std::fs::read_to_string(d.cdi.join(format!("{}.json", resource.replace('/', "-"))))
        .unwrap_or_default()
}

#[test]
fn test_two_patterns_two_resources_with_stable_ids() {
    let d = dirs();
    char_node(&d, "ttyUSB0");
    char_node(&d, "ttyUSB1");
    char_node(&d, "input/event3");
    std::fs::write(d.dev.join("ttyUSB9"), "").unwrap(); // matches, no node
    let sim = Sim::start(&d.plugin).unwrap();
    let mut p = start(
        &d,
        &["--device", "serial=ttyUSB*", "--device=input=input/event*"],
    );
    let input = "github.com.ihcsim/input";
    common::wait_lists(&sim, &[SERIAL, input], WAIT);
    let serial = sim.devices(SERIAL).unwrap();
    assert_eq!(
        ids(&serial),
        ["ttyUSB0", "ttyUSB1"],
        "files that are no node are left out"
    );
    assert_eq!(ids(&sim.devices(input).unwrap()), ["input-event3"]);
    let resp = sim.allocate(SERIAL, &["ttyUSB1".into()]).unwrap();
    let c = &resp.container_responses[0];
    assert_eq!(c.cdi_devices[0].name, "github.com.ihcsim/serial=ttyUSB1");
    assert_eq!(c.devices[0].container_path, "/dev/ttyUSB1");
    assert_eq!(c.devices[0].permissions, "rw");
    let err = sim.allocate(SERIAL, &["ttyUSB9".into()]).unwrap_err();
    assert!(err.contains("unknown device ID"), "{err}");
    assert!(d.plugin.join("serial.sock").exists() && d.plugin.join("input.sock").exists());

    // The same IDs after a restart.
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).unwrap().code(), Some(0), "{}", p.log());
    let _p = start(&d, &["--device", "serial=ttyUSB*"]);
    let again = sim.wait_ready(SERIAL, WAIT).unwrap();
    assert_eq!(ids(&again), ["ttyUSB0", "ttyUSB1"]);
}

#[test]
fn test_a_device_whose_spec_cannot_be_written_is_neither_listed_nor_allocated() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    let p = start(&d, &["--device", "serial=ttyACM*"]);
    assert!(sim.wait_ready(SERIAL, WAIT).unwrap().is_empty());
    // The spec's path becomes a dir with a file in it: no rename replaces
    // it, whatever our rights (we are root).
    let spec_path = d.cdi.join("github.com.ihcsim-serial.json");
    std::fs::remove_file(&spec_path).unwrap();
    std::fs::create_dir(&spec_path).unwrap();
    std::fs::write(spec_path.join("in-the-way"), "").unwrap();
    char_node(&d, "ttyACM0");
    p.wait_log("device list held back", WAIT);
    // The plugin knows the node, but the kubelet was never sent it: an
    // Allocate for it must be refused, as for any ID not in the list.
    let err = sim.allocate(SERIAL, &["ttyACM0".into()]).unwrap_err();
    assert!(err.contains("unknown device ID \"ttyACM0\""), "{err}");
    assert!(sim.devices(SERIAL).unwrap().is_empty());
    // Once the spec can be written, the next change lists and hands it out.
    std::fs::remove_dir_all(&spec_path).unwrap();
    char_node(&d, "ttyACM1");
    let listed = sim.wait_devices(SERIAL, WAIT, |l| l.len() == 2).unwrap();
    assert_eq!(ids(&listed), ["ttyACM0", "ttyACM1"]);
    assert!(spec(&d, SERIAL).contains("\"name\": \"ttyACM0\""));
    sim.allocate(SERIAL, &["ttyACM0".into()]).unwrap();
}

#[test]
fn test_hot_plug_spec_first_then_list_then_unhealthy_and_back() {
    let d = dirs();
    let sim = Sim::start(&d.plugin).unwrap();
    // Nothing matches yet: registered with no device, waiting.
    let p = start(&d, &["--device", "serial=ttyACM*"]);
    let empty = sim.wait_ready(SERIAL, WAIT).unwrap();
    assert!(empty.is_empty(), "{empty:?}");
    assert!(!spec(&d, SERIAL).contains("ttyACM0"));

    char_node(&d, "ttyACM0");
    let t = Instant::now();
    let listed = sim.wait_devices(SERIAL, WAIT, |l| !l.is_empty()).unwrap();
    eprintln!("node made -> list: {:?}", t.elapsed());
    // The list that announces it was sent after the spec that defines it.
    assert!(
        spec(&d, SERIAL).contains("\"name\": \"ttyACM0\""),
        "the spec must define the device before it is listed:\n{}",
        spec(&d, SERIAL)
    );
    assert_eq!(ids(&listed), ["ttyACM0"]);
    sim.allocate(SERIAL, &["ttyACM0".into()]).unwrap();

    // Unplugged: listed still, Unhealthy, with the reason; and back.
    std::fs::remove_file(d.dev.join("ttyACM0")).unwrap();
    let gone = sim
        .wait_devices(SERIAL, WAIT, |l| l.len() == 1 && l[0].1 == "Unhealthy")
        .unwrap();
    assert_eq!(ids(&gone), ["ttyACM0"]);
    p.wait_log(
        "device=ttyACM0 Unhealthy reason=missing why=\"node missing\"",
        WAIT,
    );
    let err = sim.allocate(SERIAL, &["ttyACM0".into()]).unwrap_err();
    assert!(err.contains("unhealthy: node missing"), "{err}");
    char_node(&d, "ttyACM0");
    sim.wait_devices(SERIAL, WAIT, |l| l.len() == 1 && l[0].1 == "Healthy")
        .unwrap();

    // Gone for good: dropped at SIGHUP only, and from the spec too.
    std::fs::remove_file(d.dev.join("ttyACM0")).unwrap();
    sim.wait_devices(SERIAL, WAIT, |l| l.len() == 1 && l[0].1 == "Unhealthy")
        .unwrap();
    p.signal(Signal::SIGHUP);
    let after = sim.wait_devices(SERIAL, WAIT, |l| l.is_empty()).unwrap();
    assert!(after.is_empty());
    assert!(
        !spec(&d, SERIAL).contains("ttyACM0"),
        "{}",
        spec(&d, SERIAL)
    );
}

#[test]
fn test_by_id_link_is_followed_and_its_dir_may_come_later() {
    let d = dirs();
    char_node(&d, "ttyUSB0");
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &["--device", "zigbee=serial/by-id/usb-*"]);
    let zigbee = "github.com.ihcsim/zigbee";
    assert!(sim.wait_ready(zigbee, WAIT).unwrap().is_empty());

    // udev makes the dir and the link after the plugin started.
    let by_id = d.dev.join("serial/by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let link = "usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle-if00-port0";
    std::os::unix::fs::symlink("../../ttyUSB0", by_id.join(link)).unwrap();
    let listed = sim.wait_devices(zigbee, WAIT, |l| !l.is_empty()).unwrap();
    let id = "serial-by-id-usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle-if00-port0";
    assert_eq!(ids(&listed), [id]);
    // The container gets the target node at the link's path.
    let resp = sim.allocate(zigbee, &[id.into()]).unwrap();
    let spec_node = &resp.container_responses[0].devices[0];
    assert_eq!(
        spec_node.host_path,
        d.dev.join("ttyUSB0").display().to_string()
    );
    assert_eq!(
        spec_node.container_path,
        format!("/dev/serial/by-id/{link}")
    );
    let cdi = spec(&d, zigbee);
    assert!(
        cdi.contains(&format!(
            "\"hostPath\": \"{}\"",
            d.dev.join("ttyUSB0").display()
        )),
        "{cdi}"
    );

    // Its health is its target's.
    std::fs::remove_file(d.dev.join("ttyUSB0")).unwrap();
    sim.wait_devices(zigbee, WAIT, |l| health(l, id) == "Unhealthy")
        .unwrap();
    char_node(&d, "ttyUSB0");
    sim.wait_devices(zigbee, WAIT, |l| health(l, id) == "Healthy")
        .unwrap();
}

#[test]
fn test_shared_nodes_and_block_devices() {
    let d = dirs();
    char_node(&d, "fuse");
    let loop0 = d.dev.join("loop0");
    mknod(
        &loop0,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 0),
    )
    .unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(
        &d,
        &["--device", "fuse=fuse:3", "--device", "loop=loop[0-9]*"],
    );
    let lp = "github.com.ihcsim/loop";
    let fuse = "github.com.ihcsim/fuse";
    common::wait_lists(&sim, &[fuse, lp], WAIT);
    assert_eq!(
        ids(&sim.devices(fuse).unwrap()),
        ["fuse-0", "fuse-1", "fuse-2"]
    );
    // Two slots of one node: one CDI name, one node.
    let resp = sim
        .allocate(fuse, &["fuse-0".into(), "fuse-2".into()])
        .unwrap();
    let c = &resp.container_responses[0];
    assert_eq!(c.cdi_devices.len(), 1);
    assert_eq!(c.cdi_devices[0].name, "github.com.ihcsim/fuse=fuse");
    assert_eq!(c.devices.len(), 1);
    assert!(sim.allocate(fuse, &["fuse-3".into()]).is_err());
    assert!(sim.allocate(fuse, &["fuse-01".into()]).is_err());

    assert_eq!(ids(&sim.devices(lp).unwrap()), ["loop0"]);
    assert!(
        spec(&d, lp).contains("\"type\": \"b\", \"major\": 7, \"minor\": 0"),
        "{}",
        spec(&d, lp)
    );
    let resp = sim.allocate(lp, &["loop0".into()]).unwrap();
    assert_eq!(resp.container_responses[0].devices[0].permissions, "rw");
}

/// A fake sysfs under `sys` where the render node `226:<minor>` sits on a
/// PCI function of NUMA node `numa`.
fn pci_render_node(sys: &Path, minor: u32, function: &str, numa: i32) {
    let node = sys.join(format!("devices/pci0000:00/{function}/drm/renderD{minor}"));
    std::fs::create_dir_all(&node).unwrap();
    std::fs::write(node.join("../../numa_node"), format!("{numa}\n")).unwrap();
    std::os::unix::fs::symlink("../..", node.join("device")).unwrap();
    std::fs::create_dir_all(sys.join("dev/char")).unwrap();
    std::os::unix::fs::symlink(&node, sys.join(format!("dev/char/226:{minor}"))).unwrap();
}

/// GPUs' render nodes on two NUMA nodes and one sysfs does not know (fake
/// sysfs, real nodes): ListAndWatch carries each one's TopologyInfo (none
/// where there is none), and the preference the kubelet asks for keeps a
/// container on one NUMA node.
#[test]
fn test_topology_from_sysfs_in_the_list_and_the_preference() {
    let d = dirs();
    let sys = tempfile::tempdir().unwrap();
    pci_render_node(sys.path(), 128, "0000:00:02.0", 1);
    pci_render_node(sys.path(), 129, "0000:00:03.0", 0);
    std::fs::create_dir_all(d.dev.join("dri")).unwrap();
    for minor in [128, 129, 130] {
        let path = d.dev.join(format!("dri/renderD{minor}"));
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(226, minor),
        )
        .unwrap();
    }
    let sim = Sim::start(&d.plugin).unwrap();
    let mut cmd = common::plugin_cmd(
        env!("CARGO_BIN_EXE_kubelet-plugin"),
        &d,
        &["--plugin", "none", "--device", "gpu=dri/renderD*:2"],
    );
    let _p = Plugin::spawn(cmd.env("KUBELET_PLUGIN_SYSFS", sys.path()));
    let gpu = "github.com.ihcsim/gpu";
    common::wait_lists(&sim, &[gpu], WAIT);

    let client = sim.client(gpu).unwrap();
    let mut stream = client.list_and_watch(&api::Empty::new()).unwrap();
    let list = futures_executor::block_on(futures_util::StreamExt::next(&mut stream))
        .expect("a first device list")
        .unwrap();
    let topology: Vec<(String, Vec<i64>)> = list
        .devices
        .iter()
        .map(|d| {
            (
                d.ID.clone(),
                d.topology.nodes.iter().map(|n| n.ID).collect(),
            )
        })
        .collect();
    let want = |id: &str, nodes: &[i64]| (id.to_string(), nodes.to_vec());
    assert_eq!(
        topology,
        [
            want("dri-renderD128-0", &[1]),
            want("dri-renderD128-1", &[1]),
            want("dri-renderD129-0", &[0]),
            want("dri-renderD129-1", &[0]),
            want("dri-renderD130-0", &[]),
            want("dri-renderD130-1", &[]),
        ]
    );
    for dev in list
        .devices
        .iter()
        .filter(|d| d.ID.starts_with("dri-renderD130"))
    {
        assert!(dev.topology.is_none(), "no TopologyInfo at all: {dev:?}");
    }

    // As the kubelet picks: the plugin asked to choose, and chooses one
    // NUMA node (a tie goes to the lower one).
    let (ids, _) = sim.allocate_healthy(gpu, 2).unwrap();
    assert_eq!(ids, ["dri-renderD129-0", "dri-renderD129-1"]);
    let available: Vec<String> = list.devices.iter().map(|d| d.ID.clone()).collect();
    let req = api::PreferredAllocationRequest {
        container_requests: vec![api::ContainerPreferredAllocationRequest {
            available_deviceIDs: available,
            must_include_deviceIDs: vec!["dri-renderD128-1".into()],
            allocation_size: 3,
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = client.get_preferred_allocation(&req).unwrap();
    assert_eq!(
        resp.container_responses[0].deviceIDs,
        ["dri-renderD128-1", "dri-renderD128-0", "dri-renderD129-0"]
    );
}

#[test]
fn test_bad_device_flags_are_refused_with_one_clear_line() {
    let d = dirs();
    for (args, want) in [
        (&["--device", "=ttyUSB*"][..], "empty NAME"),
        (&["--device", "serial=video[0-9"], "unclosed '['"),
        (
            &["--device", "s=ttyUSB*", "--device", "s=ttyACM*"],
            "NAME \"s\" given twice",
        ),
        (
            &["--device", "crand=ttyUSB*"],
            "resource of the crand plugin",
        ),
        (
            &["--device", "serial=/dev/ttyUSB*"],
            "relative to --dev-dir",
        ),
        (
            &["--device", "serial=*/by-id/x"],
            "only be in the last component",
        ),
        (&["--device", "serial=ttyUSB*:0"], "SHARE 0"),
    ] {
        let mut cmd = common::plugin_cmd(env!("CARGO_BIN_EXE_kubelet-plugin"), &d, args);
        let out = common::output(
            {
                cmd.args(["--plugin", "none"]);
                cmd
            },
            WAIT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--device") && err.contains(want),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        let left: Vec<_> = std::fs::read_dir(&d.plugin).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn test_cdi_command_writes_dev_specs() {
    let d = dirs();
    char_node(&d, "ttyUSB0");
    let out = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"))
        .args([
            "cdi",
            "--plugin",
            "none",
            "--device",
            "serial=ttyUSB*",
            "--dev-dir",
        ])
        .arg(&d.dev)
        .arg("--cdi-dir")
        .arg(&d.cdi)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(spec(&d, SERIAL).contains("\"name\": \"ttyUSB0\""));
}

#[test]
fn test_every_dev_spec_resolves_with_the_cdi_library() {
    use container_device_interface::{
        cache::{new_cache, with_auto_refresh},
        spec_dirs::with_spec_dirs,
    };
    let d = dirs();
    char_node(&d, "ttyUSB0");
    char_node(&d, "fuse");
    mknod(
        &d.dev.join("loop3"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 3),
    )
    .unwrap();
    let by_id = d.dev.join("serial/by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    std::os::unix::fs::symlink("../../ttyUSB0", by_id.join("usb-odd:name")).unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(
        &d,
        &[
            "--device",
            "serial=ttyUSB*",
            "--device",
            "fuse=fuse:2",
            "--device",
            "byid=serial/by-id/*",
            "--device",
            "loop=loop*",
        ],
    );
    let resources = [
        SERIAL,
        "github.com.ihcsim/fuse",
        "github.com.ihcsim/byid",
        "github.com.ihcsim/loop",
    ];
    common::wait_lists(&sim, &resources, WAIT);
    let mut names = Vec::new();
    for r in resources {
        for (id, _) in sim.devices(r).unwrap() {
            let resp = sim.allocate(r, &[id]).unwrap();
            names.extend(
                resp.container_responses[0]
                    .cdi_devices
                    .iter()
                    .map(|c| c.name.clone()),
            );
        }
    }
    names.dedup();
    assert_eq!(names.len(), 4, "{names:?}");
    let cache = new_cache(vec![
        with_spec_dirs(&[d.cdi.to_str().unwrap()]),
        with_auto_refresh(false),
    ]);
    let mut cache = cache.lock().unwrap();
    cache.refresh().unwrap();
    for name in &names {
        assert!(cache.get_device(name).is_some(), "{name} does not resolve");
    }
    let mut oci = oci_spec::runtime::Spec::default();
    cache.inject_devices(Some(&mut oci), names.clone()).unwrap();
    let devices = oci
        .linux()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap_or_default();
    let mut got: Vec<_> = devices
        .iter()
        .map(|n| {
            (
                n.path().display().to_string(),
                n.typ(),
                n.major(),
                n.minor(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let rdev = stat("/dev/random").unwrap().st_rdev;
    let (ma, mi) = (
        nix::sys::stat::major(rdev) as i64,
        nix::sys::stat::minor(rdev) as i64,
    );
    use oci_spec::runtime::LinuxDeviceType::{B, C};
    assert_eq!(
        got,
        [
            ("/dev/fuse".to_string(), C, ma, mi),
            ("/dev/loop3".to_string(), B, 7, 3),
            ("/dev/serial/by-id/usb-odd:name".to_string(), C, ma, mi),
            ("/dev/ttyUSB0".to_string(), C, ma, mi),
        ]
    );
}

#[test]
fn test_sighup_reloads_the_device_flags_of_the_config_file() {
    let d = dirs();
    char_node(&d, "ttyUSB0");
    char_node(&d, "fuse");
    let config = d.tmp.path().join("kubelet-plugin.conf");
    std::fs::write(
        &config,
        "# the serial adapter\n--device serial=ttyUSB*\n\n--log-level=debug\n",
    )
    .unwrap();
    let sim = Sim::start(&d.plugin).unwrap();
    let mut cmd = common::plugin_cmd(
        env!("CARGO_BIN_EXE_kubelet-plugin"),
        &d,
        &["--plugin", "none", "--config", config.to_str().unwrap()],
    );
    let p = Plugin::spawn(&mut cmd);
    sim.wait_ready(SERIAL, WAIT).unwrap();
    // The file's --log-level applies.
    p.wait_log("[DEBUG]", WAIT);
    assert!(d.plugin.join("serial.sock").exists());

    // serial goes, fuse comes: one SIGHUP, no restart.
    std::fs::write(&config, "--device fuse=fuse:2\n").unwrap();
    p.signal(Signal::SIGHUP);
    // The old one goes first, then the new one registers.
    sim.wait_for("serial's stream to end", WAIT, |ev| {
        matches!(ev, kubelet_plugin::sim::SimEvent::StreamEnded { resource, .. } if resource == SERIAL)
            .then_some(())
    })
    .unwrap();
    let fuse = "github.com.ihcsim/fuse";
    let listed = sim.wait_ready(fuse, WAIT).unwrap();
    assert_eq!(ids(&listed), ["fuse-0", "fuse-1"]);
    assert!(
        !d.plugin.join("serial.sock").exists(),
        "unregistered: socket removed"
    );
    assert!(
        !d.cdi
            .join(".kubelet-plugin-github.com.ihcsim_serial.lock")
            .exists()
    );
    p.wait_log("resource no longer configured", WAIT);

    // A file that does not parse changes nothing.
    std::fs::write(&config, "--device =broken\n").unwrap();
    p.signal(Signal::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while !p.log().contains("config not reloaded") {
        assert!(Instant::now() < deadline, "{}", p.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    sim.wait_ready(fuse, WAIT).unwrap();
    sim.allocate(fuse, &["fuse-1".into()]).unwrap();
}

#[test]
fn test_a_bad_config_file_is_one_clear_line() {
    let d = dirs();
    let config = d.tmp.path().join("c.conf");
    for (text, want) in [
        (None, "No such file"),
        (Some("serial=ttyUSB*\n"), "line 1"),
        (Some("--device =x\n"), "empty NAME"),
    ] {
        if let Some(text) = text {
            std::fs::write(&config, text).unwrap();
        }
        let cmd = common::plugin_cmd(
            env!("CARGO_BIN_EXE_kubelet-plugin"),
            &d,
            &["--plugin", "none", "--config", config.to_str().unwrap()],
        );
        let out = common::output(cmd, WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    }
}
