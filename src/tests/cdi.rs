//! CDI specs checked by the official CDI library (the
//! `container-device-interface` crate): what the plugin writes loads and
//! validates, every name Allocate returns resolves, and applying the device
//! to an OCI spec yields the expected device node.

use std::{path::Path, process::Command, time::Duration};

use container_device_interface::{
    cache::{new_cache, with_auto_refresh},
    spec::read_spec,
    spec_dirs::with_spec_dirs,
};
mod common;

use common::dirs;
use kubelet_plugin::sim::Sim;
use nix::sys::stat::{major, minor, stat};

const CRAND: &str = "github.com.ihcsim/crand";
const WAIT: Duration = Duration::from_secs(5);

/// A plugin process, killed when the test ends, passed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"))
}

/// `kubelet-plugin run` in the given dirs, with `plugins` (none: both).
fn run_cmd(dp: &Path, dev: &Path, cdi: &Path, plugins: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.arg("run");
    for p in plugins {
        cmd.args(["--plugin", p]);
    }
    cmd.arg("--device-plugin-dir")
        .arg(dp)
        .arg("--dev-dir")
        .arg(dev)
        .arg("--cdi-dir")
        .arg(cdi);
    cmd
}

/// The golden file with the host's numbers and the dev dir filled in.
fn golden(name: &str, dev: &Path, host: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/cdi")
            .join(name),
    )
    .unwrap();
    let rdev = stat(host).unwrap().st_rdev;
    text.replace("@DEV_DIR@", &dev.display().to_string())
        .replace("@MAJOR@", &major(rdev).to_string())
        .replace("@MINOR@", &minor(rdev).to_string())
}

#[test]
fn test_cdi_command_writes_golden_specs_that_the_library_accepts() {
    let d = dirs();
    let (dev, cdi) = (&d.dev, &d.cdi);
    let out = bin()
        .args(["cdi", "--dev-dir"])
        .arg(dev)
        .arg("--cdi-dir")
        .arg(cdi)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crand = cdi.join("github.com.ihcsim-crand.json");
    let kvm = cdi.join("github.com.ihcsim-kvm.json");
    assert_eq!(
        std::fs::read_to_string(&crand).unwrap(),
        golden("crand.json", dev, "/dev/random")
    );
    if Path::new("/dev/kvm").exists() {
        assert_eq!(
            std::fs::read_to_string(&kvm).unwrap(),
            golden("kvm.json", dev, "/dev/kvm")
        );
    }
    for spec in [&crand, &kvm] {
        let s = read_spec(spec, 0).unwrap_or_else(|e| panic!("{}: {e:#}", spec.display()));
        assert!(!s.get_devices().is_empty());
    }
    assert!(
        dev.join("crand2").exists(),
        "the cdi command makes the nodes"
    );

    // --dry-run prints the same specs and makes nothing.
    let d2 = dirs();
    let (dev2, cdi2) = (&d2.dev, &d2.cdi);
    let out = bin()
        .args(["cdi", "--dry-run", "--plugin", "crand", "--dev-dir"])
        .arg(dev2)
        .arg("--cdi-dir")
        .arg(cdi2)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        golden("crand.json", dev2, "/dev/random")
    );
    assert_eq!(std::fs::read_dir(cdi2).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dev2).unwrap().count(), 0);
}

#[test]
fn test_the_library_rejects_a_broken_spec() {
    let d = dirs();
    let (dev, cdi) = (&d.dev, &d.cdi);
    let out = bin()
        .args(["cdi", "--plugin", "crand", "--dev-dir"])
        .arg(dev)
        .arg("--cdi-dir")
        .arg(cdi)
        .output()
        .unwrap();
    assert!(out.status.success());
    let good = cdi.join("github.com.ihcsim-crand.json");
    let bad = cdi.join("broken.json");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("\"type\": \"c\"", "\"type\": \"block\"");
    std::fs::write(&bad, text).unwrap();
    assert!(read_spec(&good, 0).is_ok());
    assert!(read_spec(&bad, 0).is_err(), "type block must be refused");
}

#[test]
fn test_allocated_names_resolve_and_apply_to_an_oci_spec() {
    let d = dirs();
    let (dp, dev, cdi) = (&d.plugin, &d.dev, &d.cdi);
    let sim = Sim::start(dp).unwrap();
    let child = Running(run_cmd(dp, dev, cdi, &["crand"]).spawn().unwrap());
    sim.wait_ready(CRAND, WAIT).unwrap();
    let resp = sim
        .allocate(CRAND, &["crand0".into(), "crand2".into()])
        .unwrap();
    let names: Vec<String> = resp.container_responses[0]
        .cdi_devices
        .iter()
        .map(|c| c.name.clone())
        .collect();
    drop(child);

    let cache = new_cache(vec![
        with_spec_dirs(&[cdi.to_str().unwrap()]),
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
    let rdev = stat("/dev/random").unwrap().st_rdev;
    for (want, got) in ["/dev/crand0", "/dev/crand2"].iter().zip(&devices) {
        assert_eq!(got.path(), Path::new(want));
        assert_eq!(got.typ(), oci_spec::runtime::LinuxDeviceType::C);
        assert_eq!(
            (got.major(), got.minor()),
            (major(rdev) as i64, minor(rdev) as i64)
        );
    }
    assert_eq!(devices.len(), 2);
    let env = oci
        .process()
        .as_ref()
        .unwrap()
        .env()
        .clone()
        .unwrap_or_default();
    assert!(
        env.contains(&"CDI_DEVICE_CRAND0=github.com.ihcsim/crand=crand0".to_string()),
        "{env:?}"
    );
    assert!(
        cache
            .inject_devices(
                Some(&mut oci),
                vec!["github.com.ihcsim/crand=crand9".into()]
            )
            .is_err()
    );
}

#[test]
fn test_spec_survives_restart_byte_identical_and_bad_dirs_fail() {
    let d = dirs();
    let (dp, dev, cdi) = (&d.plugin, &d.dev, &d.cdi);
    let sim = Sim::start(dp).unwrap();
    let run = || run_cmd(dp, dev, cdi, &["crand"]).spawn().unwrap();
    let spec = cdi.join("github.com.ihcsim-crand.json");
    let mut first = Running(run());
    sim.wait_registered(CRAND, WAIT).unwrap();
    let before = std::fs::read(&spec).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first.0.wait().unwrap().success());
    assert_eq!(
        std::fs::read(&spec).unwrap(),
        before,
        "left in place at shutdown"
    );
    std::fs::remove_file(&spec).unwrap();
    let second = Running(run());
    sim.wait_registered(CRAND, WAIT).unwrap();
    assert_eq!(
        std::fs::read(&spec).unwrap(),
        before,
        "rewritten, byte-identical"
    );
    drop(second);
    let names: Vec<_> = std::fs::read_dir(cdi)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
        "no temp files left: {names:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&spec).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);

    // A CDI dir that is a file: nothing to write in (a missing one is made).
    let out = run_cmd(dp, dev, &spec, &["crand"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cdi-dir") && err.contains("not a directory"),
        "{err}"
    );
}

/// Runs `script` in a busybox container under podman with `--device
/// <device>`. Podman 4.3 reads CDI specs only from /etc/cdi and
/// /var/run/cdi, so it runs in a private mount namespace where a fresh
/// tmpfs covers /run and our CDI dir is bound at /run/cdi: the host's own
/// dirs are never touched.
fn podman(base: &Path, cdi: &Path, device: &str, script: &str) -> std::process::Output {
    let rootfs = base.join("rootfs");
    if !rootfs.exists() {
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox-static installed (make deps)");
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        // The limits and runtime this sandbox allows (runc: cgroup v1 hybrid).
        std::fs::write(
            base.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\ntmp_dir = \"/run/libpod\"\n",
        )
        .unwrap();
    }
    let inner = format!(
        "mount -t tmpfs none /run && mkdir /run/cdi && mount --bind {cdi} /run/cdi && \
         podman --root {base}/storage --runroot /run/podman --storage-driver vfs run --rm --network none \
         --device {device} --rootfs {rootfs} /bin/sh -c '{script}'",
        cdi = cdi.display(),
        base = base.display(),
        rootfs = rootfs.display(),
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &inner])
        .env("CONTAINERS_CONF", base.join("containers.conf"))
        .output()
        .expect("podman and util-linux installed (make deps)")
}

#[test]
fn test_podman_runs_a_container_with_our_devices() {
    assert!(
        Command::new("podman").arg("--version").output().is_ok(),
        "podman is not installed: `make deps` installs podman, runc and busybox-static"
    );
    let d = dirs();
    let (dp, dev, cdi) = (&d.plugin, &d.dev, &d.cdi);
    let with_kvm = Path::new("/dev/kvm").exists();
    if with_kvm {
        let rdev = stat("/dev/kvm").unwrap().st_rdev;
        nix::sys::stat::mknod(
            &dev.join("kvm"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            rdev,
        )
        .unwrap();
    }
    let sim = Sim::start(dp).unwrap();
    let _child = Running(run_cmd(dp, dev, cdi, &[]).spawn().unwrap());
    sim.wait_ready(CRAND, WAIT).unwrap();
    let (ids, resp) = sim.allocate_healthy(CRAND, 2).unwrap();
    assert_eq!(ids, ["crand0", "crand1"]);
    let name = &resp.container_responses[0].cdi_devices[1].name;
    assert_eq!(name, "github.com.ihcsim/crand=crand1");

    let out = podman(
        d.tmp.path(),
        cdi,
        name,
        "ls -l /dev/crand1; head -c 16 /dev/crand1 | wc -c; echo env=$CDI_DEVICE_CRAND1",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rdev = stat("/dev/random").unwrap().st_rdev;
    let mut lines = stdout.lines();
    let ls = lines.next().unwrap();
    assert!(ls.starts_with('c'), "{ls}");
    let numbers: String = ls
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(numbers, format!("{}, {}", major(rdev), minor(rdev)), "{ls}");
    assert_eq!(lines.next().unwrap().trim(), "16");
    assert_eq!(lines.next().unwrap(), "env=github.com.ihcsim/crand=crand1");

    let out = podman(d.tmp.path(), cdi, "github.com.ihcsim/crand=crand9", "true");
    assert!(!out.status.success(), "an unknown CDI device must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("crand9"));

    if with_kvm {
        let out = podman(
            d.tmp.path(),
            cdi,
            "github.com.ihcsim/kvm=kvm",
            "ls -l /dev/kvm",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with('c'));
    } else {
        eprintln!("SKIPPED kvm part: this host has no /dev/kvm");
    }
}
