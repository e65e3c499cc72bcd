//! What the end-to-end test targets share: temp dirs for one plugin run,
//! and a running plugin process.
// Each test target uses a different part of this file.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A temp dir with the three dirs a plugin needs: the device plugin dir,
/// the dev dir and the CDI dir. Removed on drop.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub plugin: PathBuf,
    pub dev: PathBuf,
    pub cdi: PathBuf,
}

pub fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new().prefix("kp-").tempdir().unwrap();
    let (plugin, dev, cdi) = (
        tmp.path().join("dp"),
        tmp.path().join("dev"),
        tmp.path().join("cdi"),
    );
    for d in [&plugin, &dev, &cdi] {
        std::fs::create_dir(d).unwrap();
    }
    Dirs {
        tmp,
        plugin,
        dev,
        cdi,
    }
}

/// A process's log as it comes through its stderr pipe, and a condition
/// variable that each new line wakes.
type Log = Arc<(Mutex<String>, Condvar)>;

/// A running plugin process; killed on drop. Its stderr is collected.
pub struct Plugin {
    pub child: Child,
    log: Log,
}

impl Plugin {
    /// Starts `cmd`, collecting its stderr.
    pub fn spawn(cmd: &mut Command) -> Plugin {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let log: Log = Arc::default();
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.0.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                sink.1.notify_all();
            }
        });
        Plugin { child, log }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits at most `limit` for the log to hold `what`: it comes through
    /// a pipe and a reader thread, a moment after the plugin wrote it.
    pub fn wait_log(&self, what: &str, limit: Duration) {
        self.wait_log_count(what, 1, limit);
    }

    /// Waits at most `limit` for the log to hold `what` `n` times, woken
    /// by each new line.
    pub fn wait_log_count(&self, what: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (lock, more) = &*self.log;
        let mut log = lock.lock().unwrap();
        loop {
            let seen = log.matches(what).count();
            if seen >= n {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{seen} of {n} {what:?} in the log after {limit:?}:\n{log}"
            );
            log = more.wait_timeout(log, left).unwrap().0;
        }
    }

    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .count()
    }

    /// The names of the process's threads, sorted.
    pub fn thread_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        names.sort();
        names
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubelet-plugin run` of binary `bin` on the dirs of `d`, plus `args`.
pub fn plugin_cmd(bin: impl AsRef<std::ffi::OsStr>, d: &Dirs, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--device-plugin-dir")
        .arg(&d.plugin)
        .arg("--dev-dir")
        .arg(&d.dev)
        .arg("--cdi-dir")
        .arg(&d.cdi)
        .args(args);
    cmd
}

/// Starts `bin` with debug logs collected.
pub fn start(bin: impl AsRef<std::ffi::OsStr>, d: &Dirs, args: &[&str]) -> Plugin {
    Plugin::spawn(plugin_cmd(bin, d, args).arg("--log-level").arg("debug"))
}

/// Runs `cmd` to the end with an empty stdin, at most `limit`; the output.
pub fn output(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Not left running behind the failed test.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("{what} still running after {limit:?}")
        }
    }
}

/// Waits until each of `resources` has sent a device list, in whichever
/// order.
pub fn wait_lists(sim: &kubelet_plugin::sim::Sim, resources: &[&str], limit: Duration) {
    sim.wait_lists(resources, limit).unwrap();
}

/// A test that cannot run here: under `make test` (`KUBELET_PLUGIN_REQUIRE`
/// set) that is a failure, since `make test` installs and makes what every
/// test needs; under a plain `cargo test` it is skipped with one line, which
/// also goes to `KUBELET_PLUGIN_SKIPS` (a file) when set, for the list
/// `make test` prints at its end. Returns to let the test return.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("KUBELET_PLUGIN_REQUIRE").is_some() {
        panic!("{test}: required under `make test`, but cannot run: {why}");
    }
    record_skip(test, why);
}

/// Records a skip that is right even under `make test` (e.g. the refusal
/// to touch a real kubelet's state): one line on stderr and in the
/// `KUBELET_PLUGIN_SKIPS` file, which `make test` shows at its end.
pub fn record_skip(test: &str, why: &str) {
    eprintln!("skipped: {test}: {why}");
    if let Some(file) = std::env::var_os("KUBELET_PLUGIN_SKIPS") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

// What the real-node suites (node.rs, dra.rs) share: the kit, processes
// by name or command line, mounts, and bounded polling.

/// Written into `/var/lib/kubelet` when a real-node suite makes it: a
/// leftover with it is ours to clean, one without it is someone else's.
pub const REALNODE_MARKER: &str = ".kubelet-plugin-realnode-test";

/// The `shared/realnode` test kit: `REALNODE_DIR`, else a
/// `shared/realnode` beside the checkout or in a dir above it.
pub fn realnode_kit() -> Option<PathBuf> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("REALNODE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            repo.ancestors()
                .skip(1)
                .map(|d| d.join("shared/realnode"))
                .find(|d| d.join("unpack").exists())
        })
        .filter(|d| d.join("unpack").exists())
}

/// The pids of the live processes called `name` (zombies left out).
pub fn running(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name && !gone(pid as i32) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether process `pid` has ended: no such process, or a zombie that
/// only waits for its parent (init here reaps orphans only every second
/// or two) to collect it.
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// The pids of the processes whose command line mentions `text`.
pub fn mentioning(text: &str) -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name == me || name.parse::<i32>().is_err() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(text) {
            pids.push(name.parse().unwrap());
        }
    }
    pids
}

/// `pids` and every process below them (a shim's containers).
pub fn with_descendants(pids: &[i32]) -> Vec<i32> {
    let mut parent = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse::<i32>().ok())
        {
            parent.push((pid, ppid));
        }
    }
    let mut all: Vec<i32> = pids.to_vec();
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for (child, _) in parent.iter().filter(|(_, pp)| *pp == p) {
            if !all.contains(child) {
                all.push(*child);
            }
        }
        i += 1;
    }
    all
}

/// Unmounts everything mounted at or below any of `roots`, deepest first.
pub fn unmount_below(roots: &[&std::path::Path]) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        // Lazily: a mount still busy goes once its last user does.
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

/// Removes `p`, a file or a whole dir; nothing there is fine.
pub fn remove(p: &std::path::Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    }
}

/// Polls `probe` every 100 ms until it gives a value, at most `limit`.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
