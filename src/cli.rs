//! The `kubelet-plugin` command line (argh, plus the flags the plugin kinds
//! declare) and its checks: every flag is validated before anything
//! starts, so a mistake ends in one clear line. Nothing here ends the
//! process: `main` does.

use std::{path::PathBuf, time::Duration};

use argh::FromArgs;
use log::LevelFilter;
use nix::unistd::{AccessFlags, access};

use crate::{
    deviceplugin::{self, RegistrationMode, allocate::Injection},
    error::{Error, Result},
    inventory::{
        self,
        health::POLL_INTERVAL,
        kinds::{self, Flags, KINDS, KindValues},
    },
    reload::Reload,
    supervisor::{Api, Config},
};

/// How parsing ended without a command to run: `--help` (code 0, text for
/// stdout) or a refused command line (code 1 as argh's own refusals, 2 for
/// an unusable `--config` file; text for stderr).
#[derive(Debug, PartialEq, Eq)]
pub struct Exit {
    /// The exit code.
    pub code: u8,
    /// What to print.
    pub output: String,
}

impl Exit {
    /// Prints the output where it belongs (help on stdout, a refusal on
    /// stderr); the exit code is the caller's to return.
    pub fn print(&self) {
        if self.code == 0 {
            println!("{}", self.output);
        } else {
            eprintln!("{}", self.output);
        }
    }
}

/// A parsed command line: argh's part and the plugin kinds' own flags.
#[derive(Debug)]
pub struct Parsed {
    /// The command and its flags.
    pub cli: Cli,
    /// The values of the kinds' flags ([`kinds::KindFlag`]).
    pub kinds: KindValues,
}

/// Parses the process's arguments; see [`parse`].
pub fn from_env() -> std::result::Result<Parsed, Exit> {
    parse(std::env::args().collect())
}

/// Parses `args` (the program first) like `argh::from_env`, but also takes
/// `--flag=value` (argh knows only `--flag value`), the form Kubernetes
/// manifests and the kubelet's own flags use; `run --config FILE` puts the
/// file's flags first, as if typed; and the flags the plugin kinds declare
/// ([`KINDS`]) are taken out for them, checked, and listed by `--help`.
pub fn parse(args: Vec<String>) -> std::result::Result<Parsed, Exit> {
    let cmd = program(&args, "kubelet-plugin");
    let mut args = split_equals(args.into_iter().skip(1));
    let refused = |output: String| refusal(&cmd, &output);
    let sub = args.iter().position(|a| a == "run" || a == "cdi");
    // `run --config FILE`: the file's flags come first, as if typed.
    if let Some(at) = sub.filter(|&i| args[i] == "run")
        && let Some(i) = args.iter().position(|a| a == "--config")
        && let Some(file) = args.get(i + 1)
    {
        let more = config_args(std::path::Path::new(file)).map_err(|e| Exit {
            code: 2,
            output: format!("{cmd}: error: {e}"),
        })?;
        args.splice(at + 1..at + 1, more);
    }
    let kinds = match sub {
        Some(at) => take_kind_flags(&mut args, at + 1).map_err(refused)?,
        None => KindValues::new(),
    };
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    match Cli::from_args(&[&cmd], &strs) {
        Ok(cli) => Ok(Parsed { cli, kinds }),
        Err(early) => match early.status {
            Ok(()) => {
                let mut help = early.output;
                if sub.is_some() {
                    help.push_str(&kinds_help());
                }
                Err(Exit {
                    code: 0,
                    output: help,
                })
            }
            Err(()) => Err(refused(early.output)),
        },
    }
}

/// Parses `args` (the program first) into `T` as argh would, but also
/// takes `--flag=value`: for commands with no plugin kinds (`kubelet-sim`).
pub fn parse_plain<T: argh::TopLevelCommand>(args: Vec<String>) -> std::result::Result<T, Exit> {
    let cmd = program(&args, "kubelet-sim");
    let args = split_equals(args.into_iter().skip(1));
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    T::from_args(&[&cmd], &strs).map_err(|early| match early.status {
        Ok(()) => Exit {
            code: 0,
            output: early.output,
        },
        Err(()) => refusal(&cmd, &early.output),
    })
}

/// The program's name as it was called, for messages.
fn program(args: &[String], default: &str) -> String {
    args.first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or(default)
        .to_string()
}

/// A refused command line: argh's exit code and its form of message.
fn refusal(cmd: &str, output: &str) -> Exit {
    Exit {
        code: 1,
        output: format!(
            "{}\nRun {cmd} --help for more information.",
            output.trim_end()
        ),
    }
}

/// Takes the kinds' flags (and their values) out of `args[from..]`, which
/// argh then never sees. A single-valued one given twice is refused, as
/// argh refuses its own; a count that is not a number too, in argh's words.
fn take_kind_flags(args: &mut Vec<String>, from: usize) -> std::result::Result<KindValues, String> {
    let mut values = KindValues::new();
    let mut i = from;
    while i < args.len() {
        if args[i] == "--" {
            break;
        }
        let Some(flag) = kinds::kind_flag(&args[i]) else {
            i += 1;
            continue;
        };
        let value = args
            .get(i + 1)
            .cloned()
            .ok_or_else(|| format!("No value provided for option '{}'.", flag.name))?;
        args.drain(i..i + 2);
        if flag.number
            && let Err(e) = value.parse::<usize>()
        {
            return Err(format!(
                "Error parsing option '{}' with value '{value}': {e}",
                flag.name
            ));
        }
        let given = values.entry(flag.name).or_default();
        if !flag.repeatable && !given.is_empty() {
            return Err(format!("Duplicate option '{}'.", flag.name));
        }
        given.push(value);
    }
    Ok(values)
}

/// The part of `run --help` and `cdi --help` that the kinds declare.
fn kinds_help() -> String {
    let mut out = String::from("\nPlugin kinds (--plugin ");
    out.push_str(&kinds::plugin_names().join("|"));
    out.push_str("|none, repeatable; default: all of them):\n");
    for kind in KINDS {
        let how = if kind.by_plugin_flag {
            ""
        } else {
            " (by its own flag)"
        };
        out.push_str(&format!("  {:<8} {}{how}\n", kind.name, kind.help));
    }
    out.push_str("\nOptions of the plugin kinds:\n");
    for flag in KINDS.iter().flat_map(|k| k.flags) {
        let default = flag
            .default
            .map(|d| format!(" (default {d})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {} {}\n      {}{default}\n",
            flag.name, flag.value, flag.help
        ));
    }
    out
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

/// The values of the kinds' flags in a `--config` file.
pub fn config_kind_values(path: &std::path::Path) -> Result<KindValues> {
    let mut args = config_args(path)?;
    take_kind_flags(&mut args, 0)
        .map_err(|e| Error::Invalid(format!("--config {}: {e}", path.display())))
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
    /// Tell a running plugin to reload.
    Reload(ReloadArgs),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "reload")]
/// Send SIGHUP to the running plugin PID, as `kill -HUP PID` would: it
/// reads its --config file again, drops the devices that are gone and
/// registers again. For the systemd unit's ExecReload=, which then needs
/// no kill binary (a minimal root has none).
pub struct ReloadArgs {
    /// the plugin's process id (systemd's $MAINPID)
    #[argh(positional)]
    pub pid: i32,
}

impl ReloadArgs {
    /// Sends the signal; a PID below 2 is refused (0 and -1 would signal a
    /// whole group, 1 is init).
    pub fn run(&self) -> Result<()> {
        use nix::{
            sys::signal::{Signal, kill},
            unistd::Pid,
        };
        if self.pid < 2 {
            return Err(Error::Invalid(format!(
                "reload: PID {} is not a plugin's (give its process id, 2 or more)",
                self.pid
            )));
        }
        kill(Pid::from_raw(self.pid), Signal::SIGHUP).map_err(|e| {
            Error::Invalid(format!(
                "reload: cannot send SIGHUP to PID {}: {e}",
                self.pid
            ))
        })
    }
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
    /// where a DRA driver's socket is (<dir>/<domain>/dra.sock)
    #[argh(option, default = "PathBuf::from(\"/var/lib/kubelet/plugins\")")]
    pub dra_plugin_dir: PathBuf,
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
            dra_plugin_dir: self.dra_plugin_dir.clone(),
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
    /// plugin kind to write the specs of (see the kinds below), or none;
    /// repeatable (default: every kind)
    #[argh(option)]
    pub plugin: Vec<String>,
    /// where crand nodes are made and kvm is found
    #[argh(option, default = "PathBuf::from(\"/dev\")")]
    pub dev_dir: PathBuf,
    /// where the CDI specs are written (default /etc/cdi)
    #[argh(option, default = "PathBuf::from(\"/etc/cdi\")")]
    pub cdi_dir: PathBuf,
    /// domain of the resource names and CDI kinds (default github.com.ihcsim)
    #[argh(option, default = "String::from(\"github.com.ihcsim\")")]
    pub resource_domain: String,
    /// print the specs on stdout; make and write nothing
    #[argh(switch)]
    pub dry_run: bool,
}

impl CdiArgs {
    /// Makes the nodes and writes the specs, or prints them with `--dry-run`.
    pub fn run(&self, kinds: &KindValues) -> Result<()> {
        let plugins = kinds::build(&Flags::new(
            &self.plugin,
            &self.resource_domain,
            &self.dev_dir,
            kinds,
        ))?;
        if self.dry_run {
            for p in &plugins {
                print!("{}", inventory::cdi::render(p.resource(), &p.probe()));
            }
            return Ok(());
        }
        writable_dir("--dev-dir", &self.dev_dir)?;
        if ensure_dir("--cdi-dir", &self.cdi_dir, 0o755)? {
            println!("created {}", self.cdi_dir.display());
        }
        for p in &plugins {
            p.prepare()?;
            let path = inventory::cdi::write(&self.cdi_dir, p.resource(), &p.probe())?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

// One field per flag of `run` (argh builds the parser and `--help` from
// them), hence more than a struct would otherwise hold.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
/// Serve the device plugins, register them with the kubelet and keep them registered.
pub struct RunArgs {
    /// plugin kind to run (see the kinds below), or none; repeatable
    /// (default: every kind)
    #[argh(option)]
    pub plugin: Vec<String>,
    /// where kubelet.sock is and the plugin sockets go
    #[argh(option, default = "PathBuf::from(\"/var/lib/kubelet/device-plugins\")")]
    pub device_plugin_dir: PathBuf,
    /// where crand nodes are made and watched and kvm is found
    #[argh(option, default = "PathBuf::from(\"/dev\")")]
    pub dev_dir: PathBuf,
    /// where the CDI specs are written
    #[argh(option, default = "PathBuf::from(\"/var/run/cdi\")")]
    pub cdi_dir: PathBuf,
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
    /// which kubelet API serves the devices: device-plugin (the device
    /// plugin API) or dra (a DRA driver: ResourceSlices and the kubelet's
    /// DRA service) (default device-plugin)
    #[argh(option)]
    pub api: Vec<ApiFlag>,
    /// dra: the kubeconfig of the API server (client certificate and key,
    /// or a token, and the CA; e.g. the kubelet's) (default: the pod's
    /// service account)
    #[argh(option)]
    pub kubeconfig: Option<PathBuf>,
    /// dra: the node whose pool is published and whose claims are prepared
    /// (default: $NODE_NAME, then the host name)
    #[argh(option)]
    pub node_name: Option<String>,
    /// dra: where <driver>/ holds the DRA socket and the checkpoint
    #[argh(option, default = "PathBuf::from(\"/var/lib/kubelet/plugins\")")]
    pub dra_plugin_dir: PathBuf,
}

/// The value of `--api`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFlag {
    /// `device-plugin`
    DevicePlugin,
    /// `dra`
    Dra,
}

impl std::str::FromStr for ApiFlag {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "device-plugin" => Ok(ApiFlag::DevicePlugin),
            "dra" => Ok(ApiFlag::Dra),
            _ => Err(format!("unknown API {s:?}: use device-plugin or dra")),
        }
    }
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

/// Refuses a socket path too long to bind.
fn socket_fits(socket: &std::path::Path) -> Result<()> {
    let len = socket.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        return Err(Error::Invalid(format!(
            "socket {} is {len} bytes long, unix sockets take at most {SOCKET_PATH_MAX}: use a shorter dir",
            socket.display()
        )));
    }
    Ok(())
}

/// The node's name: `--node-name`, else `$NODE_NAME` (a DaemonSet sets it
/// from `spec.nodeName`), else the host name, lowercased as the kubelet
/// does; it must be a DNS subdomain, as Node names are.
#[cfg(feature = "dra")]
fn node_name(flag: Option<&str>) -> Result<String> {
    let (name, from) = match flag {
        Some(n) => (n.to_string(), "--node-name"),
        None => match std::env::var("NODE_NAME") {
            Ok(n) if !n.is_empty() => (n, "$NODE_NAME"),
            _ => {
                let host = nix::unistd::gethostname().map_err(|e| {
                    Error::Invalid(format!(
                        "no --node-name, no $NODE_NAME, and no host name: {e}"
                    ))
                })?;
                (host.to_string_lossy().to_lowercase(), "the host name")
            }
        },
    };
    if !crate::k8s_names::dns_subdomain(&name) {
        return Err(Error::Invalid(format!(
            "node name {name:?} (from {from}) is no Node name: lowercase letters, digits, '-' and '.'"
        )));
    }
    Ok(name)
}

impl RunArgs {
    /// Checks every flag and builds the supervisor's configuration, with
    /// the kinds' flags `kinds`; touches nothing (see [`prepare_dirs`]).
    pub fn config(&self, kinds: &KindValues) -> Result<Config> {
        let plugins = kinds::build(&Flags::new(
            &self.plugin,
            &self.resource_domain,
            &self.dev_dir,
            kinds,
        ))?;
        let owner = self.one_api()?;
        let api = match owner {
            ApiFlag::DevicePlugin => Api::DevicePlugin(self.device_plugin(&plugins)?),
            #[cfg(feature = "dra")]
            ApiFlag::Dra => Api::Dra(Box::new(self.dra()?)),
            #[cfg(not(feature = "dra"))]
            ApiFlag::Dra => {
                return Err(Error::Invalid(
                    "--api dra: this kubelet-plugin was built without the DRA front end (cargo feature `dra`)".into(),
                ));
            }
        };
        Ok(Config {
            plugins,
            inventory: inventory::Config {
                dev_dir: self.dev_dir.clone(),
                cdi_dir: self.cdi_dir.clone(),
                poll_interval: POLL_INTERVAL,
                owner: match owner {
                    ApiFlag::DevicePlugin => "device-plugin",
                    ApiFlag::Dra => "dra",
                },
            },
            api,
            metrics: crate::metrics::Outputs {
                file: self.metrics_file.clone(),
                listen: self.metrics_listen,
            },
            reload: self.reload()?,
        })
    }

    /// The one `--api` asked for. Both is refused: a node must never offer
    /// one resource through both APIs, or the scheduler would hand its
    /// devices out twice, once per API.
    fn one_api(&self) -> Result<ApiFlag> {
        match self.api.as_slice() {
            [] => Ok(ApiFlag::DevicePlugin),
            [first, rest @ ..] if rest.iter().all(|a| a == first) => Ok(*first),
            _ => Err(Error::Invalid(
                "--api device-plugin and --api dra: one instance serves its resources through one kubelet API; a node must never offer a resource through both (the scheduler would hand its devices out twice)".into(),
            )),
        }
    }

    /// The device plugin front end's configuration.
    fn device_plugin(&self, plugins: &kinds::Plugins) -> Result<deviceplugin::Config> {
        let registration = match self.registration {
            Registration::KubeletSock => RegistrationMode::KubeletSock,
            Registration::PluginsRegistry => {
                RegistrationMode::PluginsRegistry(self.plugins_registry_dir.clone())
            }
        };
        let cfg = deviceplugin::Config {
            plugin_dir: self.device_plugin_dir.clone(),
            registration,
            injection: self.device_injection,
            // The kubelet may spend up to 10 s dialing us back inside
            // Register, then GetDevicePluginOptions on the same context:
            // a shorter deadline would cancel a registration on its way.
            register_timeout: Duration::from_secs(30),
        };
        for p in plugins {
            socket_fits(&cfg.socket_path(p.resource()))?;
        }
        Ok(cfg)
    }

    /// The DRA front end's configuration: the node, the API server's
    /// credentials, the sockets.
    #[cfg(feature = "dra")]
    fn dra(&self) -> Result<crate::dra::Config> {
        let driver = self.resource_domain.clone();
        // The API's limit on driver names.
        if driver.len() > 63 {
            return Err(Error::Invalid(format!(
                "--resource-domain {driver:?}: a DRA driver name has at most 63 characters"
            )));
        }
        let node = node_name(self.node_name.as_deref())?;
        // A --kubeconfig given must be there: falling back to the pod's
        // service account would hide a typo.
        let kube = match &self.kubeconfig {
            Some(f) => crate::kube::Config::from_kubeconfig(f)
                .map_err(|e| Error::Invalid(format!("--kubeconfig {}: {e}", f.display())))?,
            None => crate::kube::Config::in_cluster()
                .map_err(|e| Error::Invalid(format!("no --kubeconfig, and not in a pod: {e}")))?,
        };
        let cfg = crate::dra::Config {
            driver,
            node,
            plugin_dir: self.dra_plugin_dir.clone(),
            registry_dir: self.plugins_registry_dir.clone(),
            kube,
        };
        socket_fits(&cfg.dra_socket())?;
        socket_fits(&cfg.registration_socket())?;
        Ok(cfg)
    }

    /// With `--config`: what SIGHUP builds, the plugins of the file's kind
    /// flags (its `--device` lines) as they are then; those of the command
    /// line stay as they are. The rest of the flags need a restart.
    fn reload(&self) -> Result<Option<Reload>> {
        let Some(path) = self.config.clone() else {
            return Ok(None);
        };
        let (domain, dev_dir) = (self.resource_domain.clone(), self.dev_dir.clone());
        let build = move |values: &KindValues| {
            kinds::build(&Flags::new(
                &[kinds::NO_PLUGIN.to_string()],
                &domain,
                &dev_dir,
                values,
            ))
        };
        // Which plugins of the start are the file's: built again from it.
        let now = build(&config_kind_values(&path)?)?;
        Ok(Some(Reload {
            from_file: now.iter().map(|p| p.identity()).collect(),
            load: Box::new(move || build(&config_kind_values(&path)?)),
        }))
    }
}

/// Makes the dirs `run` writes in when they are missing (the device plugin
/// dir or, in that mode, the plugin watcher dir; the CDI dir) and checks that
/// every dir it writes in, the dev dir too, is a writable directory.
pub fn prepare_dirs(cfg: &Config) -> Result<()> {
    // The kubelet makes its dirs 0750; the runtime reads the CDI dir.
    match &cfg.api {
        // One socket dir per mode: in plugins-registry mode nothing goes in
        // the device plugin dir, so it need not exist (a DaemonSet need
        // not mount it).
        Api::DevicePlugin(dp) => match &dp.registration {
            RegistrationMode::KubeletSock => {
                ensure_dir("--device-plugin-dir", &dp.plugin_dir, 0o750)?;
            }
            RegistrationMode::PluginsRegistry(dir) => {
                ensure_dir("--plugins-registry-dir", dir, 0o750)?;
            }
        },
        #[cfg(feature = "dra")]
        Api::Dra(dra) => {
            ensure_dir("--dra-plugin-dir", &dra.plugin_dir, 0o750)?;
            ensure_dir("--dra-plugin-dir", &dra.driver_dir(), 0o750)?;
            ensure_dir("--plugins-registry-dir", &dra.registry_dir, 0o750)?;
        }
    }
    writable_dir("--dev-dir", &cfg.inventory.dev_dir)?;
    ensure_dir("--cdi-dir", &cfg.inventory.cdi_dir, 0o755)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn args(v: &[&str]) -> Vec<String> {
        std::iter::once("kubelet-plugin")
            .chain(v.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn test_kind_flags_are_taken_out_checked_and_documented() {
        let p = parse(args(&[
            "run",
            "--crand-count=5",
            "--device",
            "a=b",
            "--device",
            "c=d",
        ]))
        .unwrap();
        assert_eq!(p.kinds["--crand-count"], ["5"]);
        assert_eq!(p.kinds["--device"], ["a=b", "c=d"]);
        let Some(Command::Run(_)) = p.cli.command else {
            panic!("not run");
        };
        let refused = parse(args(&["run", "--kvm-count", "1", "--kvm-count", "2"])).unwrap_err();
        assert_eq!(refused.code, 1);
        assert!(
            refused
                .output
                .starts_with("Duplicate option '--kvm-count'."),
            "{refused:?}"
        );
        let refused = parse(args(&["run", "--crand-count", "-1"])).unwrap_err();
        assert!(
            refused
                .output
                .starts_with("Error parsing option '--crand-count' with value '-1': invalid digit"),
            "{refused:?}"
        );
        // After `--` nothing is a flag.
        assert!(parse(args(&["run", "--", "--crand-count", "1"])).is_err());
        let help = parse(args(&["run", "--help"])).unwrap_err();
        assert_eq!(help.code, 0);
        for kind in KINDS {
            assert!(help.output.contains(kind.name), "{}", help.output);
            for flag in kind.flags {
                assert!(help.output.contains(flag.name), "{}", help.output);
            }
        }
        assert!(
            help.output.contains("--plugin crand|kvm|none"),
            "{}",
            help.output
        );
    }
}
