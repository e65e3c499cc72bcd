//! `kubelet-sim demo`: runs a device plugin binary against the simulator in
//! a temp dir and narrates the whole life of a device plugin: registration,
//! the device list, an allocation, a health change, a kubelet restart and a
//! clean shutdown. Nothing outside the temp dir is touched, and the temp dir
//! is removed at the end.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::Sim;

const STEP: Duration = Duration::from_secs(10);

/// A temp dir holding the three dirs a plugin runs on (the device plugin
/// dir, the dev dir, the CDI dir); removed on drop.
pub(super) struct Scratch {
    pub(super) base: PathBuf,
    pub(super) plugin: PathBuf,
    pub(super) dev: PathBuf,
    pub(super) cdi: PathBuf,
}

impl Scratch {
    /// Makes `<temp dir>/<name>` and the three dirs in it.
    pub(super) fn new(name: &str) -> Result<Scratch, String> {
        let base = std::env::temp_dir().join(name);
        let scratch = Scratch {
            plugin: base.join("device-plugins"),
            dev: base.join("dev"),
            cdi: base.join("cdi"),
            base,
        };
        for d in [&scratch.plugin, &scratch.dev, &scratch.cdi] {
            std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        Ok(scratch)
    }

    /// `<bin> run <args>` on these dirs.
    pub(super) fn command(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(args)
            .arg("--device-plugin-dir")
            .arg(&self.plugin)
            .arg("--dev-dir")
            .arg(&self.dev)
            .arg("--cdi-dir")
            .arg(&self.cdi);
        cmd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A plugin process, killed if the demo fails half way.
pub(super) struct Plugin(pub(super) Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Prints a line; a closed stdout (`make demo | head`) is ignored, where
/// `println!` would panic and, with `panic = "abort"`, leave the plugin and
/// the temp dir behind.
fn out(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn say(line: &str) {
    out(&format!("demo  | {line}"));
}

fn table(devices: &[(String, String)]) {
    for (id, health) in devices {
        out(&format!("demo  |     {id:<10} {health}"));
    }
}

/// Makes `dst` a character node with the major:minor of `src`.
pub(super) fn mknod_like(src: &Path, dst: &Path) -> Result<(), String> {
    use nix::sys::stat::{Mode, SFlag, mknod, stat};
    let st = stat(src).map_err(|e| format!("stat {}: {e}", src.display()))?;
    mknod(
        dst,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        st.st_rdev,
    )
    .map_err(|e| format!("mknod {}: {e}", dst.display()))
}

/// Runs the demo with the plugin binary at `plugin_bin`.
pub fn run(plugin_bin: &Path) -> Result<(), String> {
    let tmp = Scratch::new(&format!("kubelet-plugin-demo-{}", std::process::id()))?;
    say(&format!("temp dir {}", tmp.base.display()));

    let mut sim = Sim::start(&tmp.plugin)?;
    say(&format!("kubelet-sim serving {}", sim.socket().display()));
    let mut plugin = start(&tmp, &sim, plugin_bin)?;

    let crand = "github.com.ihcsim/crand";
    allocate(&sim, crand)?;
    health_change(&sim, &tmp.dev, crand)?;

    say("kubelet restart: every socket deleted, kubelet.sock made anew");
    let t = Instant::now();
    sim.restart()?;
    sim.wait_registered(crand, STEP)?;
    say(&format!(
        "registered again after {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    ));
    let devices = sim.wait_devices(crand, STEP, |_| true)?;
    say("device list after the restart:");
    table(&devices);

    let clean = stop(&mut plugin, &tmp.plugin)?;
    drop(sim);
    drop(tmp);
    say("temp dir removed; done");
    if !clean {
        return Err("the plugin did not shut down cleanly".into());
    }
    Ok(())
}

/// Starts the plugin binary on the scratch dirs (kvm too where the host
/// has `/dev/kvm` to clone), its log shown as it comes, and waits for each
/// plugin's registration and first list, in whichever order they come.
fn start(tmp: &Scratch, sim: &Sim, plugin_bin: &Path) -> Result<Plugin, String> {
    let with_kvm = Path::new("/dev/kvm").exists()
        && mknod_like(Path::new("/dev/kvm"), &tmp.dev.join("kvm")).is_ok();
    let plugins: &[&str] = if with_kvm {
        &["--plugin", "crand", "--plugin", "kvm"]
    } else {
        &["--plugin", "crand"]
    };
    let mut cmd = tmp.command(plugin_bin, plugins);
    cmd.stderr(Stdio::piped());
    say(&format!("starting {}", plugin_bin.display()));
    let started = Instant::now();
    let mut plugin = Plugin(
        cmd.spawn()
            .map_err(|e| format!("cannot start {}: {e}", plugin_bin.display()))?,
    );
    let stderr = plugin.0.stderr.take().expect("stderr is piped");
    std::thread::Builder::new()
        .name("demo-log".into())
        .spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out(&format!("plugin| {line}"));
            }
        })
        .map_err(|e| e.to_string())?;
    let resources: &[&str] = if with_kvm {
        &["github.com.ihcsim/crand", "github.com.ihcsim/kvm"]
    } else {
        &["github.com.ihcsim/crand"]
    };
    for resource in resources {
        let req = sim.wait_registered(resource, STEP)?;
        say(&format!(
            "registered {} version={} endpoint={} after {} ms",
            req.resource_name,
            req.version,
            req.endpoint,
            started.elapsed().as_millis()
        ));
        let devices = sim.wait_devices(resource, STEP, |_| true)?;
        say(&format!("device list of {resource}:"));
        table(&devices);
    }
    Ok(plugin)
}

/// Allocates two healthy crand devices and shows the answer; then an ID the
/// plugin does not have, refused.
fn allocate(sim: &Sim, crand: &str) -> Result<(), String> {
    let (ids, resp) = sim.allocate_healthy(crand, 2)?;
    say(&format!("allocate {} -> {}", crand, ids.join(",")));
    for c in &resp.container_responses {
        for cdi in &c.cdi_devices {
            say(&format!("    CDI device   {}", cdi.name));
        }
        for spec in &c.devices {
            let kind = std::fs::symlink_metadata(&spec.host_path)
                .map(|m| {
                    if m.file_type().is_char_device() {
                        "char device"
                    } else {
                        "not a char device"
                    }
                })
                .unwrap_or("missing");
            say(&format!(
                "    device spec  {} -> {} ({}, {kind})",
                spec.host_path, spec.container_path, spec.permissions
            ));
        }
    }
    let bad = sim.allocate(crand, &["crand99".to_string()]);
    say(&format!(
        "allocate crand99 -> {}",
        bad.err().unwrap_or_else(|| "accepted?!".into())
    ));
    Ok(())
}

/// Removes `crand1`'s node and makes it again, showing the lists.
fn health_change(sim: &Sim, dev_dir: &Path, crand: &str) -> Result<(), String> {
    let node = dev_dir.join("crand1");
    std::fs::remove_file(&node).map_err(|e| format!("remove {}: {e}", node.display()))?;
    let t = Instant::now();
    say(&format!("health change: removed {}", node.display()));
    let devices = sim.wait_devices(crand, STEP, |d| {
        d.iter().any(|(id, h)| id == "crand1" && h == "Unhealthy")
    })?;
    say(&format!(
        "device list after {:.1} ms:",
        t.elapsed().as_secs_f64() * 1000.0
    ));
    table(&devices);
    mknod_like(Path::new("/dev/random"), &node)?;
    let t = Instant::now();
    say(&format!("health change: recreated {}", node.display()));
    let devices = sim.wait_devices(crand, STEP, |d| d.iter().all(|(_, h)| h == "Healthy"))?;
    say(&format!(
        "device list after {:.1} ms:",
        t.elapsed().as_secs_f64() * 1000.0
    ));
    table(&devices);
    Ok(())
}

/// SIGTERM, then what was left in the plugin dir; whether it exited 0 and
/// left no socket.
fn stop(plugin: &mut Plugin, plugin_dir: &Path) -> Result<bool, String> {
    say("stopping the plugin with SIGTERM");
    let t = Instant::now();
    let pid = nix::unistd::Pid::from_raw(plugin.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|e| e.to_string())?;
    let status = plugin.0.wait().map_err(|e| e.to_string())?;
    let left: Vec<String> = std::fs::read_dir(plugin_dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "kubelet.sock")
        .collect();
    say(&format!(
        "plugin exited with {status} after {} ms; its sockets left behind: {}",
        t.elapsed().as_millis(),
        if left.is_empty() {
            "none".to_string()
        } else {
            left.join(",")
        }
    ));
    Ok(status.success() && left.is_empty())
}
