//! What the end-to-end test targets share: temp dirs for one plugin run,
//! and a running plugin process.
// Each test target uses a different part of this file.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
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

/// A running plugin process; killed on drop. Its stderr is collected.
pub struct Plugin {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Plugin {
    /// Starts `cmd`, collecting its stderr.
    pub fn spawn(cmd: &mut Command) -> Plugin {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
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
        self.log.lock().unwrap().clone()
    }

    /// Waits at most `limit` for the log to hold `what`: it comes through
    /// a pipe and a reader thread, a moment after the plugin wrote it.
    pub fn wait_log(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
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
