//! The systemd unit (`kubelet/systemd/kubelet-plugin.service`) under a real
//! systemd as PID 1: a minimal Debian 12 root (`debootstrap
//! --variant=minbase`, plus systemd and dbus: no `/bin/kill`), booted by
//! `systemd-nspawn --boot` with a throwaway overlay over it, the unit and
//! the static binaries bound in read-only. With `kubelet-sim` playing the
//! kubelet in the container too, it checks that `systemctl enable --now`
//! gets to active through `READY=1`, that the plugin makes the crand nodes, writes
//! the CDI specs (in a 0755 dir) and registers under the unit's system call
//! filter, capabilities and read-only system, that `systemctl reload`
//! reads `--config` again, that a SIGKILLed plugin is started again, that
//! `systemd-analyze security` scores the unit at most 2.0, and that
//! `systemctl stop` ends it with status 0 and its sockets removed.
//!
//! The root is made once (minutes) and kept in `<target>/tools/systemd-root`;
//! runs never write to it. The container is killed and its overlay gone at
//! the end, also when a check fails (and should the test process die,
//! systemd-nspawn gets SIGTERM and powers it off). Every wait is bounded.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{Plugin, wait_until};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const TEST: &str = "test_unit_under_systemd_as_pid_1";
/// Debian 12: the systemd (252) the unit must work with, without
/// `Type=notify-reload`.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What systemd as PID 1 and `systemctl` need on top of minbase.
const PACKAGES: &str = "systemd,systemd-sysv,dbus";
/// In the root once it is complete: how it was made.
const STAMP: &str = ".kubelet-plugin-test-root";
const UNIT: &str = "kubelet-plugin.service";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DOMAIN: &str = "github.com.ihcsim";
const PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
const CDI_DIR: &str = "/run/cdi";
const CONFIG: &str = "/etc/kubelet-plugin.conf";
/// One command in the container, or one change to follow.
const WAIT: Duration = Duration::from_secs(20);
/// From systemd-nspawn to `systemctl is-system-running` saying so.
const BOOT: Duration = Duration::from_secs(90);
const DEBOOTSTRAP: Duration = Duration::from_secs(1200);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target dir: the outermost dir above the binaries that holds a
/// `CACHEDIR.TAG` (`<target>/<triple>` has one too).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_kubelet-plugin"))
        .ancestors()
        .filter(|d| d.join("CACHEDIR.TAG").exists())
        .last()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo().join("target"))
}

/// `name` on `PATH` or in the sbin dirs (debootstrap is in /usr/sbin).
fn find(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The minimal root, made with debootstrap when it is missing or was made
/// otherwise: in a dir of its own, renamed into place once complete.
fn cached_root(debootstrap: &Path) -> Result<PathBuf, String> {
    let tools = target_dir().join("tools");
    let root = tools.join("systemd-root");
    let how = format!("debootstrap --variant=minbase --include={PACKAGES} {SUITE} {MIRROR}\n");
    if std::fs::read_to_string(root.join(STAMP)).is_ok_and(|s| s == how) {
        return Ok(root);
    }
    let fresh = tools.join(format!("systemd-root.new-{}", std::process::id()));
    // debootstrap mounts /proc, /sys and maybe the host's /dev in there:
    // never remove through a mount.
    let clear = |dir: &Path| {
        common::unmount_below(&[dir]);
        common::remove(dir)
    };
    clear(&root).map_err(|e| format!("cannot remove {}: {e}", root.display()))?;
    std::fs::create_dir_all(&tools).map_err(|e| format!("{}: {e}", tools.display()))?;
    eprintln!(
        "making {} with debootstrap (once: it takes minutes)",
        root.display()
    );
    let started = Instant::now();
    let mut cmd = Command::new(debootstrap);
    cmd.arg("--variant=minbase")
        .arg(format!("--include={PACKAGES}"))
        .arg(SUITE)
        .arg(&fresh)
        .arg(MIRROR);
    let out = common::output(cmd, DEBOOTSTRAP);
    if !out.status.success() {
        let log =
            std::fs::read_to_string(fresh.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let _ = clear(&fresh);
        return Err(format!(
            "debootstrap failed ({}):\n{}\n{}",
            out.status,
            text(&out),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    std::fs::write(fresh.join(STAMP), how).map_err(|e| e.to_string())?;
    std::fs::rename(&fresh, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    eprintln!("made {} in {:?}", root.display(), started.elapsed());
    Ok(root)
}

/// The pids of `parent`'s children.
fn children(parent: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            kids.push(pid);
        }
    }
    kids
}

/// A booted container: systemd-nspawn and the container's PID 1 (its
/// `leader`, a pid of ours). Dropping it kills PID 1, and so everything in
/// the container; the overlay, in systemd-nspawn's mount namespace, goes
/// with it.
struct Machine {
    nspawn: Child,
    leader: Option<u32>,
    name: String,
    /// systemd-nspawn's output.
    log: tempfile::NamedTempFile,
}

impl Machine {
    /// Boots `root` with the unit and the binaries bound in, and waits
    /// until systemd says the boot is done.
    fn boot(nspawn: &Path, root: &Path) -> Result<Machine, String> {
        let log = tempfile::Builder::new()
            .prefix("kp-nspawn-")
            .tempfile()
            .map_err(|e| e.to_string())?;
        let name = format!("kp-systemd-{}", std::process::id());
        let bind = |host: &Path, inside: &str| format!("--bind-ro={}:{inside}", host.display());
        let mut cmd = Command::new(nspawn);
        // Not registered with systemd-machined, which need not run; and
        // without systemd outside (sd_booted), no scope to ask it for.
        cmd.arg("--boot").arg("--register=no");
        if !Path::new("/run/systemd/system").exists() {
            cmd.arg("--keep-unit");
        }
        cmd
            // The root read-only under a tmpfs overlay: it stays pristine.
            .arg("--volatile=overlay")
            .args(["--console=passive", "--quiet"])
            .arg("--directory")
            .arg(root)
            .arg("--machine")
            .arg(&name)
            .arg(bind(
                Path::new(env!("CARGO_BIN_EXE_kubelet-plugin")),
                "/usr/local/bin/kubelet-plugin",
            ))
            .arg(bind(
                Path::new(env!("CARGO_BIN_EXE_kubelet-sim")),
                "/usr/local/bin/kubelet-sim",
            ))
            .arg(bind(
                &repo().join("kubelet/systemd").join(UNIT),
                &format!("/etc/systemd/system/{UNIT}"),
            ))
            .stdin(Stdio::null())
            .stdout(log.reopen().map_err(|e| e.to_string())?)
            .stderr(log.reopen().map_err(|e| e.to_string())?);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // no memory of the parent; it runs between fork and exec. SIGTERM:
        // systemd-nspawn then powers the container off.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let nspawn = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", nspawn.display()))?;
        let mut m = Machine {
            nspawn,
            leader: None,
            name,
            log,
        };
        let started = Instant::now();
        let nspawn_pid = m.nspawn.id();
        let leader = wait_until("the container's PID 1", BOOT, || {
            if let Ok(Some(status)) = m.nspawn.try_wait() {
                return Some(Err(format!("systemd-nspawn ended: {status}")));
            }
            children(nspawn_pid)
                .into_iter()
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                })
                .map(Ok)
        })
        .and_then(|r| r)
        .map_err(|e| format!("{e}\n{}", m.nspawn_log()))?;
        m.leader = Some(leader);
        let state = wait_until("systemctl is-system-running", BOOT, || {
            let out = m.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        })
        .map_err(|e| format!("{e}\n{}", m.nspawn_log()))?;
        if state == "degraded" {
            let failed = m.run(&["systemctl", "--failed", "--no-legend"]);
            eprintln!("booted degraded: {}", text(&failed).trim());
        }
        eprintln!("booted in {:?}", started.elapsed());
        Ok(m)
    }

    fn leader(&self) -> u32 {
        self.leader.expect("booted")
    }

    fn nspawn_log(&self) -> String {
        let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        format!("--- systemd-nspawn:\n{log}")
    }

    /// `path` of the container, from here.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.leader()))
    }

    /// `args` in every namespace of the container, with a clean environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.leader().to_string(), "--all", "env", "-i"])
            .arg(format!("PATH={PATH}"))
            .args(["LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        common::output(self.cmd(args), WAIT)
    }

    /// The unit's log and, once it runs, kubelet-sim's: for every failure.
    fn context(&self, sim: Option<&Plugin>) -> String {
        let journal = self.run(&["journalctl", "--no-pager", "-u", UNIT]);
        let mut s = format!("\n--- journalctl -u {UNIT}:\n{}", text(&journal));
        if let Some(sim) = sim {
            s.push_str(&format!("--- kubelet-sim:\n{}", sim.log()));
        }
        s
    }

    /// Runs `args`, which must succeed; its stdout.
    fn ok(&self, args: &[&str], sim: Option<&Plugin>) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in the container: {}\n{}{}",
            out.status,
            text(&out),
            self.context(sim)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A property of the unit (`systemctl show`).
    fn show(&self, property: &str) -> String {
        let out = self.run(&["systemctl", "show", "--value", "-p", property, UNIT]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn main_pid(&self) -> u32 {
        self.show("MainPID").parse().unwrap_or(0)
    }

    /// The pid here of the container's process `pid`.
    fn host_pid(&self, pid: u32) -> Option<u32> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.leader())).ok()?;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(host) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if std::fs::read_link(entry.path().join("ns/pid")).ok() != Some(ns.clone()) {
                continue;
            }
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last()?.parse::<u32>().ok());
            if inner == Some(pid) {
                return Some(host);
            }
        }
        None
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        match self.leader {
            // PID 1 of the container's pid namespace: the kernel kills
            // everything else in it; systemd-nspawn then ends.
            Some(leader) => {
                let _ = kill(Pid::from_raw(leader as i32), Signal::SIGKILL);
            }
            None => {
                let _ = kill(Pid::from_raw(self.nspawn.id() as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.nspawn.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let _ = std::fs::remove_dir(format!("/run/systemd/nspawn/propagate/{}", self.name));
    }
}

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn test_unit_under_systemd_as_pid_1() {
    if !nix::unistd::geteuid().is_root() {
        return common::skip(TEST, "needs root (debootstrap, systemd-nspawn)");
    }
    let missing: Vec<&str> = ["debootstrap", "systemd-nspawn", "nsenter"]
        .into_iter()
        .filter(|t| find(t).is_none())
        .collect();
    if !missing.is_empty() {
        let why = format!("no {} (make test-deps installs them)", missing.join(", "));
        return common::skip(TEST, &why);
    }
    let (debootstrap, nspawn) = (
        find("debootstrap").unwrap(),
        find("systemd-nspawn").unwrap(),
    );
    let started = Instant::now();
    let root = match cached_root(&debootstrap) {
        Ok(r) => r,
        Err(e) => return common::skip(TEST, &format!("cannot make the minimal root: {e}")),
    };
    // Minimal indeed: reload cannot lean on a kill binary.
    for kill_bin in ["usr/bin/kill", "bin/kill"] {
        assert!(!root.join(kill_bin).exists(), "the root has /{kill_bin}");
    }
    let m = match Machine::boot(&nspawn, &root) {
        Ok(m) => m,
        Err(e) => return common::skip(TEST, &format!("cannot boot a container: {e}")),
    };
    let version = m.ok(&["systemctl", "--version"], None);
    eprintln!(
        "in the container: {}",
        version.lines().next().unwrap_or_default()
    );

    // The shipped defaults, with a --config file of one node's device.
    let defaults = std::fs::read_to_string(repo().join("kubelet/default/kubelet-plugin")).unwrap();
    let args = format!("KUBELET_PLUGIN_ARGS=\"--config {CONFIG}\"");
    assert!(
        defaults.contains("\nKUBELET_PLUGIN_ARGS=\"\"\n"),
        "{defaults}"
    );
    std::fs::write(
        m.path("/etc/default/kubelet-plugin"),
        defaults.replace("\nKUBELET_PLUGIN_ARGS=\"\"\n", &format!("\n{args}\n")),
    )
    .unwrap();
    std::fs::write(m.path(CONFIG), "--device null=null\n").unwrap();

    // Enabled and started as the README says: active only once the plugin
    // said READY=1, which it does with no kubelet yet (the unit is ordered
    // before the kubelet). Enabled, the unit also stays loaded once
    // stopped, with its main process's exit status.
    m.ok(&["systemctl", "enable", "--now", UNIT], None);
    for (property, want) in [
        ("Type", "notify"),
        ("ActiveState", "active"),
        ("SubState", "running"),
    ] {
        assert_eq!(m.show(property), want, "{property}{}", m.context(None));
    }
    let status = m.show("StatusText");
    assert!(
        status.contains("crand waiting for the kubelet"),
        "STATUS= {status:?}{}",
        m.context(None)
    );
    let pid = m.main_pid();
    assert!(pid > 1, "MainPID {pid}{}", m.context(None));
    // Every line of the unit understood (systemd ignores what it does not
    // know, with a warning naming the file and line).
    let journal = m.context(None);
    assert!(
        !journal.contains(&format!("/etc/systemd/system/{UNIT}:")),
        "systemd ignored part of the unit:{journal}"
    );

    // The dirs ExecStartPre made, with the plugin's modes, not UMask's.
    let cdi = m.path(CDI_DIR);
    assert_eq!(mode(&cdi), 0o755, "{CDI_DIR}{}", m.context(None));
    assert_eq!(mode(&m.path(PLUGIN_DIR)), 0o750, "{PLUGIN_DIR}");
    // The crand nodes, clones of the container's /dev/random.
    let random = std::fs::metadata(m.path("/dev/random")).unwrap();
    for i in 0..3 {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let node = m.path(&format!("/dev/crand{i}"));
        let meta = std::fs::metadata(&node)
            .unwrap_or_else(|e| panic!("/dev/crand{i}: {e}{}", m.context(None)));
        assert!(meta.file_type().is_char_device(), "/dev/crand{i}");
        assert_eq!(meta.rdev(), random.rdev(), "/dev/crand{i}");
        assert_eq!(mode(&node), mode(&m.path("/dev/random")), "/dev/crand{i}");
    }
    // The CDI specs, which the runtime reads.
    for resource in ["crand", "kvm", "null"] {
        let spec = cdi.join(format!("{DOMAIN}-{resource}.json"));
        let text = std::fs::read_to_string(&spec)
            .unwrap_or_else(|e| panic!("{}: {e}{}", spec.display(), m.context(None)));
        assert!(text.contains(&format!("\"{DOMAIN}/{resource}\"")), "{text}");
        assert_eq!(mode(&spec), 0o644, "{}", spec.display());
    }
    // The sandbox is the unit's: its system call filter, one capability,
    // no new privileges.
    let proc_status =
        std::fs::read_to_string(m.path(&format!("/proc/{pid}/status"))).unwrap_or_default();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let cap_mknod = format!("{:016x}", 1u64 << 27);
    for (name, want) in [
        ("Seccomp", "2"),
        ("NoNewPrivs", "1"),
        ("CapBnd", cap_mknod.as_str()),
        ("CapEff", cap_mknod.as_str()),
    ] {
        assert_eq!(field(name), want, "{name} of the plugin:\n{proc_status}");
    }

    // The kubelet comes: every resource registers.
    let mut sim_cmd = m.cmd(&[
        "/bin/sh",
        "-c",
        "exec /usr/local/bin/kubelet-sim serve --dir /var/lib/kubelet/device-plugins >&2",
    ]);
    sim_cmd.stdin(Stdio::piped());
    let sim = Plugin::spawn(&mut sim_cmd);
    let sim_says = |what: &str, n: usize| {
        wait_until(&format!("{what:?} from kubelet-sim"), WAIT, || {
            (sim.log().matches(what).count() >= n).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}{}", m.context(Some(&sim))));
    };
    for resource in ["crand", "kvm", "null"] {
        sim_says(&format!("registered resource={DOMAIN}/{resource} "), 1);
    }
    wait_until("STATUS= to say registered", WAIT, || {
        let status = m.show("StatusText");
        (status.contains("crand registered") && status.contains("null registered")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}{}", m.context(Some(&sim))));
    for sock in ["crand.sock", "kvm.sock", "null.sock"] {
        assert!(m.path(&format!("{PLUGIN_DIR}/{sock}")).exists(), "{sock}");
    }

    // Reload, with no kill binary: the config's device changes, the
    // process stays.
    std::fs::write(m.path(CONFIG), "--device full=full\n").unwrap();
    m.ok(&["systemctl", "reload", UNIT], Some(&sim));
    sim_says(&format!("ListAndWatch ended resource={DOMAIN}/null"), 1);
    sim_says(&format!("registered resource={DOMAIN}/full "), 1);
    assert_eq!(m.main_pid(), pid, "reload restarted the plugin");
    assert_eq!(m.show("ActiveState"), "active");
    assert!(!m.path(&format!("{PLUGIN_DIR}/null.sock")).exists());
    assert!(m.path(&format!("{CDI_DIR}/{DOMAIN}-full.json")).exists());

    // SIGKILL from outside: systemd starts it again, which registers again.
    let host_pid = m
        .host_pid(pid)
        .unwrap_or_else(|| panic!("no pid here for the plugin's {pid}"));
    kill(Pid::from_raw(host_pid as i32), Signal::SIGKILL).unwrap();
    let again = wait_until("the plugin to be started again", WAIT, || {
        let now = m.main_pid();
        (now > 1 && now != pid && m.show("ActiveState") == "active").then_some(now)
    })
    .unwrap_or_else(|e| panic!("{e}{}", m.context(Some(&sim))));
    assert_eq!(m.show("NRestarts"), "1");
    sim_says(&format!("registered resource={DOMAIN}/crand "), 2);
    eprintln!("SIGKILLed plugin {pid} started again as {again}");

    // systemd's own exposure score of the unit, as loaded.
    let security = m.ok(&["systemd-analyze", "security", UNIT], Some(&sim));
    let score: f64 = security
        .lines()
        .find_map(|l| l.split_once(&format!("Overall exposure level for {UNIT}: ")))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{security}"));
    eprintln!("systemd-analyze security: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{security}");

    // Stop: SIGTERM, exit status 0, the plugin's sockets gone.
    m.ok(&["systemctl", "stop", UNIT], Some(&sim));
    let (code, status, result) = (
        m.show("ExecMainCode"),
        m.show("ExecMainStatus"),
        m.show("Result"),
    );
    assert!(
        code == "1" && status == "0" && result == "success",
        "stopped with code {code} (1: exited) status {status}, result {result}{}",
        m.context(Some(&sim))
    );
    for sock in ["crand.sock", "kvm.sock", "full.sock"] {
        assert!(
            !m.path(&format!("{PLUGIN_DIR}/{sock}")).exists(),
            "{sock} left after stop{}",
            m.context(Some(&sim))
        );
    }
    // Nothing the filter or the read-only system refused.
    let journal = m.context(None);
    assert!(!journal.contains("[ERROR]"), "{journal}");
    drop(sim);
    drop(m);
    eprintln!("{TEST}: {:?}", started.elapsed());
}

/// `kubelet-plugin reload` signals one process: a PID that would signal a
/// group (0, -1) or init is refused, and so is one that is not there.
#[test]
fn test_reload_signals_one_plugin_only() {
    for (pid, want) in [
        ("0", "is not a plugin's"),
        ("1", "is not a plugin's"),
        ("-1", ""),
        ("4194305", "No such process"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-plugin"));
        cmd.args(["reload", pid]);
        let out = common::output(cmd, WAIT);
        assert!(!out.status.success(), "reload {pid}: {}", text(&out));
        assert!(text(&out).contains(want), "reload {pid}: {}", text(&out));
    }
}
