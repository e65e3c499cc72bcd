//! The `kubelet-plugin` command line (argh) and its checks: every flag is
//! validated before anything starts, so a mistake ends in one clear line.

use std::{path::PathBuf, time::Duration};

use argh::FromArgs;
use log::LevelFilter;
use nix::unistd::{AccessFlags, access};

use crate::{
    error::{Error, Result},
    health::POLL_INTERVAL,
    plugin::{self, Flags, Injection},
    supervisor::{self, Config, RegistrationMode, Reload},
};

/// Parses the process's arguments like `argh::from_env`, but also takes
/// `--flag=value` (argh knows only `--flag value`), the form Kubernetes
/// manifests and the kubelet's own flags use. Exits 0 after `--help`, 1 on
/// a bad flag, with argh's message.
pub fn from_env<T: argh::TopLevelCommand>() -> T {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("kubelet-plugin")
        .to_string();
    let mut args = split_equals(args.into_iter().skip(1));
    // `run --config FILE`: the file's flags come first, as if typed.
    if args.first().is_some_and(|a| a == "run")
        && let Some(i) = args.iter().position(|a| a == "--config")
        && let Some(file) = args.get(i + 1)
    {
        match config_args(std::path::Path::new(file)) {
            Ok(more) => {
                args.splice(1..1, more);
            }
            Err(e) => {
                eprintln!("{cmd}: error: {e}");
                std::process::exit(2)
            }
        }
    }
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    T::from_args(&[&cmd], &strs).unwrap_or_else(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            std::process::exit(0)
        }
        Err(()) => {
            eprintln!(
                "{}\nRun {cmd} --help for more information.",
                early.output.trim_end()
            );
            std::process::exit(1)
        }
    })
}

/// The flags of a `--config` file: one `--flag value` (or `--flag=value`,
/// or a switch) per line, words split at white space; blank lines and
/// lines starting with `#` are skipped. A value cannot hold a space.
pub fn config_args(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("--config {}: {e}", path.display())))?;
    let mut args = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        if !words[0].starts_with("--")
            || words[0] == "--config"
            || words[0].starts_with("--config=")
        {
            return Err(Error::Invalid(format!(
                "--config {}: line {}: {line:?} is not a `--flag value` line",
                path.display(),
                n + 1
            )));
        }
        args.extend(split_equals(words.into_iter()));
    }
    Ok(args)
}

/// The `--device` values of a `--config` file.
pub fn config_devices(path: &std::path::Path) -> Result<Vec<String>> {
    let args = config_args(path)?;
    Ok(args
        .windows(2)
        .filter(|w| w[0] == "--device")
        .map(|w| w[1].clone())
        .collect())
}

/// `--flag=value` -> `--flag`, `value`; everything after `--` is left alone.
pub fn split_equals(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut options = true;
    for arg in args {
        options &= arg != "--";
        match arg.split_once('=') {
            Some((flag, value)) if options && flag.starts_with("--") => {
                out.push(flag.to_string());
                out.push(value.to_string());
            }
            _ => out.push(arg),
        }
    }
    out
}

#[derive(FromArgs, Debug)]
/// Kubernetes device plugins (crand, kvm) for the kubelet's v1beta1 API, with CDI.
pub struct Cli {
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    #[argh(subcommand)]
    /// what to do
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
/// The subcommands.
pub enum Command {
    /// Serve the plugins.
    Run(RunArgs),
    /// Write the CDI specs once.
    Cdi(CdiArgs),
    /// Show the devices of the running plugins.
    Status(StatusArgs),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
/// Show each running plugin's devices, their health and why a device is
/// unhealthy. Exit 0: all answer, all healthy; 2: none found, or one does
/// not answer; 3: all answer, some device is unhealthy.
pub struct StatusArgs {
    /// where kubelet-sock sockets are
    #[argh(option, default = "PathBuf::from(\"/var/lib/kubelet/device-plugins\")")]
    pub device_plugin_dir: PathBuf,
    /// where the plugins' resource locks are (their CDI dir)
    #[argh(option, default = "PathBuf::from(\"/var/run/cdi\")")]
    pub cdi_dir: PathBuf,
    /// where plugins-registry sockets are
    #[argh(
        option,
        default = "PathBuf::from(\"/var/lib/kubelet/plugins_registry\")"
    )]
    pub plugins_registry_dir: PathBuf,
    /// also show which pod holds each device (the kubelet's pod-resources API)
    #[argh(switch)]
    pub pods: bool,
    /// the kubelet's pod-resources socket, for --pods
    #[argh(option, default = "PathBuf::from(crate::status::POD_RESOURCES_SOCKET)")]
    pub pod_resources_socket: PathBuf,
    /// text or json (default text)
    #[argh(option, default = "String::from(\"text\")")]
    pub output: String,
    /// for a liveness probe: exit 0 when every plugin answers, whatever the
    /// health of its devices
    #[argh(switch)]
    pub liveness: bool,
    /// ignored: kept so that older command lines still work (the plugins
    /// name their resources themselves)
    #[argh(option, default = "String::new()")]
    pub resource_domain: String,
}

impl StatusArgs {
    /// Checks the flags; what `status::run` is asked.
    pub fn options(&self) -> Result<crate::status::Options> {
        let json = match self.output.as_str() {
            "text" => false,
            "json" => true,
            o => {
                return Err(Error::Invalid(format!("--output {o:?}: use text or json")));
            }
        };
        Ok(crate::status::Options {
            device_plugin_dir: self.device_plugin_dir.clone(),
            cdi_dir: self.cdi_dir.clone(),
            plugins_registry_dir: self.plugins_registry_dir.clone(),
            pods: self.pods.then(|| self.pod_resources_socket.clone()),
            json,
            liveness: self.liveness,
        })
    }
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cdi")]
/// Make the crand nodes and write the CDI specs of the chosen plugins, then exit.
pub struct CdiArgs {
    /// plugin to write the spec of, crand, kvm or none; repeat for both (default: both)
    #[argh(option)]
    pub plugin: Vec<String>,
    /// a dev resource NAME=PATTERN[:SHARE]: <domain>/NAME, one device per
    /// node under --dev-dir matching the glob PATTERN; repeatable
    #[argh(option)]
    pub device: Vec<String>,
    /// where crand nodes are made and kvm is found
    #[argh(option, default = "PathBuf::from(\"/dev\")")]
    pub dev_dir: PathBuf,
    /// where the CDI specs are written (default /etc/cdi)
    #[argh(option, default = "PathBuf::from(\"/etc/cdi\")")]
    pub cdi_dir: PathBuf,
    /// number of crand devices (default 3)
    #[argh(option, default = "3")]
    pub crand_count: usize,
    /// number of pods that may share /dev/kvm (default 1)
    #[argh(option, default = "1")]
    pub kvm_count: usize,
    /// domain of the resource names and CDI kinds (default github.com.ihcsim)
    #[argh(option, default = "String::from(\"github.com.ihcsim\")")]
    pub resource_domain: String,
    /// print the specs on stdout; make and write nothing
    #[argh(switch)]
    pub dry_run: bool,
}

impl CdiArgs {
    /// Makes the nodes and writes the specs, or prints them with `--dry-run`.
    pub fn run(&self) -> Result<()> {
        let plugins = plugin::build(&Flags {
            plugins: &self.plugin,
            devices: &self.device,
            domain: &self.resource_domain,
            dev_dir: &self.dev_dir,
            crand_count: self.crand_count,
            kvm_count: self.kvm_count,
        })?;
        if self.dry_run {
            for p in &plugins {
                // A dev plugin's spec lists the nodes it finds.
                p.probe();
                print!("{}", crate::cdi::render(p.as_ref()));
            }
            return Ok(());
        }
        writable_dir("--dev-dir", &self.dev_dir)?;
        if ensure_dir("--cdi-dir", &self.cdi_dir, 0o755)? {
            println!("created {}", self.cdi_dir.display());
        }
        for p in &plugins {
            p.prepare()?;
            p.probe();
            let path = crate::cdi::write(&self.cdi_dir, p.as_ref())?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
/// Serve the device plugins, register them with the kubelet and keep them registered.
pub struct RunArgs {
    /// plugin to run, crand, kvm or none; repeat for both (default: both)
    #[argh(option)]
    pub plugin: Vec<String>,
    /// a dev resource NAME=PATTERN[:SHARE]: <domain>/NAME, one device per
    /// character or block node under --dev-dir matching the glob PATTERN
    /// (e.g. ttyUSB*, serial/by-id/*), each shared by SHARE pods (default
    /// 1); repeatable
    #[argh(option)]
    pub device: Vec<String>,
    /// where kubelet.sock is and the plugin sockets go
    #[argh(option, default = "PathBuf::from(\"/var/lib/kubelet/device-plugins\")")]
    pub device_plugin_dir: PathBuf,
    /// where crand nodes are made and watched and kvm is found
    #[argh(option, default = "PathBuf::from(\"/dev\")")]
    pub dev_dir: PathBuf,
    /// where the CDI specs are written
    #[argh(option, default = "PathBuf::from(\"/var/run/cdi\")")]
    pub cdi_dir: PathBuf,
    /// number of crand devices (default 3)
    #[argh(option, default = "3")]
    pub crand_count: usize,
    /// number of pods that may share /dev/kvm (default 1)
    #[argh(option, default = "1")]
    pub kvm_count: usize,
    /// domain of the resource names and CDI kinds (default github.com.ihcsim)
    #[argh(option, default = "String::from(\"github.com.ihcsim\")")]
    pub resource_domain: String,
    /// what Allocate returns: cdi, device-spec or both (default both)
    #[argh(option, default = "Injection::Both")]
    pub device_injection: Injection,
    /// error, warn, info, debug or trace (default info)
    #[argh(option, default = "LevelFilter::Info", from_str_fn(parse_level))]
    pub log_level: LevelFilter,
    /// lock this file against a second instance and write the pid into it
    /// once the plugins are ready (for init scripts); removed at exit
    #[argh(option)]
    pub pid_file: Option<PathBuf>,
    /// how the kubelet learns of the plugins: kubelet-sock (we call Register
    /// on kubelet.sock) or plugins-registry (the kubelet's plugin watcher
    /// finds our sockets) (default kubelet-sock)
    #[argh(option, default = "Registration::KubeletSock")]
    pub registration: Registration,
    /// where the plugin sockets go in plugins-registry mode
    #[argh(
        option,
        default = "PathBuf::from(\"/var/lib/kubelet/plugins_registry\")"
    )]
    pub plugins_registry_dir: PathBuf,
    /// write the metrics to this file (Prometheus text, for node_exporter's
    /// textfile collector), rewritten on every change
    #[argh(option)]
    pub metrics_file: Option<PathBuf>,
    /// serve the metrics on this address (e.g. 127.0.0.1:9477): GET
    /// /metrics, GET /healthz
    #[argh(option)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// a file of `--flag value` lines, read first as if they were typed;
    /// its `--device` lines are read again at SIGHUP
    #[argh(option)]
    pub config: Option<PathBuf>,
}

/// The value of `--registration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// `kubelet-sock`
    KubeletSock,
    /// `plugins-registry`
    PluginsRegistry,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "kubelet-sock" => Ok(Registration::KubeletSock),
            "plugins-registry" => Ok(Registration::PluginsRegistry),
            _ => Err(format!(
                "unknown registration {s:?}: use kubelet-sock or plugins-registry"
            )),
        }
    }
}

fn parse_level(s: &str) -> std::result::Result<LevelFilter, String> {
    match s {
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "unknown log level {s:?}: use error, warn, info, debug or trace"
        )),
    }
}

/// Checks that `dir` is a directory this process can create files in.
fn writable_dir(flag: &str, dir: &std::path::Path) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::Invalid(format!("{flag} {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{flag} {}: not a directory",
            dir.display()
        )));
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        Error::Invalid(format!(
            "{flag} {}: not writable: {}",
            dir.display(),
            e.desc()
        ))
    })
}

/// Makes `dir` (and its missing parents) with `mode` when it is missing,
/// saying so in one info line, then checks it as [`writable_dir`] does.
/// Returns whether it was made. A fresh node has no `/var/run/cdi` (tmpfs)
/// and no device plugin dir until the kubelet first runs.
pub fn ensure_dir(flag: &str, dir: &std::path::Path, mode: u32) -> Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let made = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .and_then(|()| std::fs::set_permissions(dir, PermissionsExt::from_mode(mode)))
                .map_err(|e| {
                    Error::Invalid(format!("{flag} {}: cannot create: {e}", dir.display()))
                })?;
            log::info!(
                "created missing directory {flag}={} mode={mode:04o}",
                dir.display()
            );
            true
        }
        _ => false,
    };
    writable_dir(flag, dir)?;
    Ok(made)
}

/// The longest path a unix socket can have (`sun_path` less its NUL).
const SOCKET_PATH_MAX: usize = 107;

impl RunArgs {
    /// The flags the plugin kinds are built from.
    pub fn flags(&self) -> Flags<'_> {
        Flags {
            plugins: &self.plugin,
            devices: &self.device,
            domain: &self.resource_domain,
            dev_dir: &self.dev_dir,
            crand_count: self.crand_count,
            kvm_count: self.kvm_count,
        }
    }

    /// Checks every flag and builds the supervisor's configuration; touches
    /// nothing (see [`prepare_dirs`]).
    pub fn config(&self) -> Result<Config> {
        let plugins = plugin::build(&self.flags())?;
        let registration = match self.registration {
            Registration::KubeletSock => RegistrationMode::KubeletSock,
            Registration::PluginsRegistry => {
                RegistrationMode::PluginsRegistry(self.plugins_registry_dir.clone())
            }
        };
        for p in &plugins {
            let socket =
                supervisor::socket_path(&registration, &self.device_plugin_dir, p.as_ref());
            let len = socket.as_os_str().len();
            if len > SOCKET_PATH_MAX {
                return Err(Error::Invalid(format!(
                    "socket {} is {len} bytes long, unix sockets take at most {SOCKET_PATH_MAX}: use a shorter dir",
                    socket.display()
                )));
            }
        }
        Ok(Config {
            plugins,
            plugin_dir: self.device_plugin_dir.clone(),
            registration,
            cdi_dir: self.cdi_dir.clone(),
            dev_dir: self.dev_dir.clone(),
            injection: self.device_injection,
            poll_interval: POLL_INTERVAL,
            // The kubelet may spend up to 10 s dialing us back inside
            // Register, then GetDevicePluginOptions on the same context:
            // a shorter deadline would cancel a registration on its way.
            register_timeout: Duration::from_secs(30),
            metrics: crate::metrics::Outputs {
                file: self.metrics_file.clone(),
                listen: self.metrics_listen,
            },
            reload: self.reload()?,
        })
    }

    /// With `--config`: what SIGHUP builds, the `dev` plugins of the
    /// file's `--device` lines as they are then (those of the command line
    /// stay as they are). The rest of the flags need a restart.
    fn reload(&self) -> Result<Option<Reload>> {
        let Some(path) = self.config.clone() else {
            return Ok(None);
        };
        let (domain, dev_dir) = (self.resource_domain.clone(), self.dev_dir.clone());
        let build = move |devices: &[String]| {
            plugin::build(&Flags {
                plugins: &[plugin::NO_PLUGIN.to_string()],
                devices,
                domain: &domain,
                dev_dir: &dev_dir,
                crand_count: 1,
                kvm_count: 1,
            })
        };
        // Which plugins of the start are the file's: built again from it.
        let now = build(&config_devices(&path)?)?;
        Ok(Some(Reload {
            from_file: now.iter().map(|p| p.identity()).collect(),
            load: Box::new(move || build(&config_devices(&path)?)),
        }))
    }
}

/// Makes the dirs `run` writes in when they are missing (the device plugin
/// dir, the CDI dir, the plugin watcher dir in that mode) and checks that
/// every dir it writes in, the dev dir too, is a writable directory.
pub fn prepare_dirs(cfg: &Config) -> Result<()> {
    // The kubelet makes its dirs 0750; the runtime reads the CDI dir.
    ensure_dir("--device-plugin-dir", &cfg.plugin_dir, 0o750)?;
    if let RegistrationMode::PluginsRegistry(dir) = &cfg.registration {
        ensure_dir("--plugins-registry-dir", dir, 0o750)?;
    }
    writable_dir("--dev-dir", &cfg.dev_dir)?;
    ensure_dir("--cdi-dir", &cfg.cdi_dir, 0o755)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_resource_domain_must_make_a_cdi_vendor() {
        let dev = std::path::Path::new("/nonexistent");
        let kvm = ["kvm".to_string()];
        let flags = |domain| Flags {
            plugins: &kvm,
            devices: &[],
            domain,
            dev_dir: dev,
            crand_count: 1,
            kvm_count: 1,
        };
        let err = plugin::build(&flags("0x.com")).unwrap_err();
        assert!(
            err.to_string().contains("must start with a letter"),
            "{err}"
        );
        assert!(plugin::build(&flags("x0.com")).is_ok());
    }

    #[test]
    fn test_split_equals() {
        let args = [
            "run",
            "--dev-dir=/d=x",
            "--plugin",
            "crand",
            "-x=1",
            "--",
            "--a=b",
        ];
        let split = split_equals(args.iter().map(|s| s.to_string()));
        assert_eq!(
            split,
            [
                "run",
                "--dev-dir",
                "/d=x",
                "--plugin",
                "crand",
                "-x=1",
                "--",
                "--a=b"
            ]
        );
    }
}
