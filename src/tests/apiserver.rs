//! A real kube-apiserver on its own etcd, for the suites that talk to the
//! API server (`kube.rs`, `drasim.rs`): the binaries found (etcd on the
//! PATH; the API server from an environment variable, else from a set of
//! the `shared/realnode` kit, unpacked once under the target dir), both
//! started in a temp dir on ports the suite chooses, with static tokens
//! (`admin-token`: `system:masters`; `nobody-token`: no rights) and the
//! flags of `shared/realnode/cluster` that work here.
//!
//! [`Cluster`]'s drop stops both processes by pid (the API server first)
//! and removes the temp dir, also when a check fails; should the test
//! process itself be killed, the kernel kills them (`PR_SET_PDEATHSIG`)
//! and only the temp dir stays. The API server alone can be stopped and
//! started again with the same flags ([`Cluster::stop_apiserver`],
//! [`Cluster::start_apiserver`]) while etcd keeps the data.
// Each suite uses a different part of this file.
#![allow(dead_code)]

use std::{
    ffi::OsString,
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kubelet_plugin::kube::{Client, Config};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// For the API server's start (about 5 s here) and etcd's.
pub const START: Duration = Duration::from_secs(90);

/// The ports of one API server and its etcd.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// The API server's secure port.
    pub apiserver: u16,
    /// etcd's client port.
    pub etcd: u16,
    /// etcd's peer port.
    pub etcd_peer: u16,
}

/// A Kubernetes version of the kit: its set of binaries, the variable that
/// names an API server binary instead, and the flags it needs.
#[derive(Clone, Copy, Debug)]
pub struct Version {
    /// The kit's set: `k8s-1.36`, `k8s-1.32`.
    pub set: &'static str,
    /// The environment variable naming a kube-apiserver binary of it.
    pub env: &'static str,
    /// Flags this version needs besides the common ones.
    pub flags: &'static [&'static str],
}

/// v1.36: DRA is GA, `resource.k8s.io/v1` served.
pub const V1_36: Version = Version {
    set: "k8s-1.36",
    env: "KUBE_APISERVER",
    flags: &[],
};

/// v1.32: DRA beta and off by default; `resource.k8s.io/v1beta1` only when
/// asked for (the kit's `cluster` script's flags).
pub const V1_32: Version = Version {
    set: "k8s-1.32",
    env: "KUBE_APISERVER_1_32",
    flags: &[
        "--feature-gates=DynamicResourceAllocation=true",
        "--runtime-config=resource.k8s.io/v1beta1=true",
    ],
};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("testdata/kube").join(name)
}

/// `name` on the PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The kube-apiserver binary of `version`: its environment variable, else
/// the kit's, unpacked once under the target dir; or why there is none.
pub fn apiserver_bin(version: Version) -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(version.env) {
        return Ok(bin.into());
    }
    let kit = std::env::var_os("REALNODE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            repo()
                .ancestors()
                .skip(1)
                .map(|d| d.join("shared/realnode"))
                .find(|d| d.join("unpack").exists())
        })
        .filter(|d| d.join("unpack").exists())
        .ok_or_else(|| {
            format!(
                "no shared/realnode kit (REALNODE_DIR) and no {}=/path/to/kube-apiserver",
                version.env
            )
        })?;
    let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join(version.set);
    let mut unpack = Command::new(kit.join("unpack"));
    unpack.arg(&bin).arg(version.set);
    let out = super::common::output(unpack, Duration::from_secs(300));
    if !out.status.success() {
        return Err(format!(
            "{}/unpack {} {} failed: {}",
            kit.display(),
            bin.display(),
            version.set,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(bin.join("kube-apiserver"))
}

/// etcd and the kube-apiserver of `version`, or `None` after saying why the
/// suite `test` is skipped: no etcd is a skip that `make test` turns into a
/// failure; no kit is rightly skipped, unless `REQUIRE_REALNODE=1` (CI,
/// which has the kit) makes it a failure.
pub fn binaries(test: &str, version: Version) -> Option<(PathBuf, PathBuf)> {
    let Some(etcd) = on_path("etcd") else {
        super::common::skip(
            test,
            "no etcd on the PATH (Debian: apt-get install etcd-server)",
        );
        return None;
    };
    match apiserver_bin(version) {
        Ok(bin) => Some((etcd, bin)),
        Err(why) if std::env::var("REQUIRE_REALNODE").is_ok_and(|v| v == "1") => {
            panic!("REQUIRE_REALNODE=1 but {test} cannot run: {why}")
        }
        Err(why) => {
            super::common::record_skip(test, &why);
            None
        }
    }
}

/// etcd and kube-apiserver, started in a temp dir; stopped (by pid) and
/// the dir removed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    /// Started first, stopped last.
    procs: Vec<(&'static str, Child)>,
    /// The API server's binary and flags, to start it again.
    apiserver: (PathBuf, Vec<OsString>),
}

impl Cluster {
    /// Starts etcd, waits for it to be healthy, then starts the API server
    /// (not waiting for it: see [`Cluster::wait`]).
    pub fn start(etcd: &Path, apiserver: &Path, ports: Ports, version: Version) -> Cluster {
        for port in [ports.apiserver, ports.etcd, ports.etcd_peer] {
            if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                panic!("port {port} is taken ({e}): a leftover of an earlier run? (ss -ltnp)");
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("kp-kube-")
            .tempdir()
            .unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(
            d.join("tokens.csv"),
            "admin-token,admin,admin,\"system:masters\"\nnobody-token,nobody,nobody\n",
        )
        .unwrap();
        let client_url = format!("http://127.0.0.1:{}", ports.etcd);
        let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
        // The flags of shared/realnode/cluster, with a client CA (the
        // fixtures' CA, which signed client.crt) and RBAC alone.
        let sa_key = fixture("sa.key");
        let mut flags: Vec<OsString> = [
            format!("--etcd-servers={client_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", ports.apiserver),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", d.join("serving").display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            format!("--client-ca-file={}", fixture("ca.crt").display()),
            "--authorization-mode=RBAC".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        flags.extend(version.flags.iter().map(OsString::from));
        let mut cluster = Cluster {
            dir,
            ports,
            procs: Vec::new(),
            apiserver: (apiserver.to_path_buf(), flags),
        };
        cluster.spawn(
            "etcd",
            Command::new(etcd)
                .args(["--name", "kube-test", "--data-dir"])
                .arg(d.join("etcd"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("kube-test={peer_url}")]),
        );
        let port = ports.etcd;
        cluster.wait("etcd", || etcd_healthy(port).then_some(()));
        cluster.start_apiserver();
        cluster
    }

    /// Starts the API server (again), with the flags of the first start.
    pub fn start_apiserver(&mut self) {
        assert!(
            !self.procs.iter().any(|(n, _)| *n == "apiserver"),
            "the API server runs already"
        );
        let (bin, flags) = self.apiserver.clone();
        self.spawn("apiserver", Command::new(bin).args(flags));
    }

    /// Kills the API server (SIGKILL, by pid) and reaps it; etcd stays.
    pub fn stop_apiserver(&mut self) {
        let at = self
            .procs
            .iter()
            .position(|(n, _)| *n == "apiserver")
            .expect("the API server runs");
        let (_, mut child) = self.procs.remove(at);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts `cmd` as `name`, its output appended to `<dir>/<name>.log`.
    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(name))
            .unwrap();
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // no memory of the parent; it runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        self.procs.push((name, child));
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The last lines of `name`'s log.
    pub fn tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Polls `ready` until it answers, at most [`START`]; fails at once,
    /// with its log, if a process ended.
    pub fn wait<T>(&mut self, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + START;
        loop {
            if let Some(v) = ready() {
                return v;
            }
            let exited = self.procs.iter_mut().find_map(|(name, child)| {
                child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|status| (*name, status))
            });
            if let Some((name, status)) = exited {
                panic!("{name} exited ({status}):\n{}", self.tail(name));
            }
            assert!(
                Instant::now() < deadline,
                "{what} not ready after {START:?}:\n{}",
                self.tail("apiserver")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the API server serves: the default namespace, which it
    /// makes once it serves, can be read with `kubeconfig`.
    pub fn wait_ready(&mut self, kubeconfig: &Path) -> Client {
        self.wait("the API server", || {
            let c = Client::new(Config::from_kubeconfig(kubeconfig).ok()?).ok()?;
            c.get("/api/v1/namespaces/default").ok().map(|_| c)
        })
    }

    /// The API server's self-signed certificate (the leaf and its CA): the
    /// CA of every kubeconfig here.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("serving/apiserver.crt")
    }

    /// Writes kubeconfig `name` with these cluster and user fields (flow
    /// style).
    pub fn kubeconfig(&self, name: &str, cluster: &str, user: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "{{apiVersion: v1, kind: Config, current-context: c,\n \
                 clusters: [{{name: local, cluster: {{server: 'https://127.0.0.1:{}', {cluster}}}}}],\n \
                 users: [{{name: u, user: {{{user}}}}}],\n \
                 contexts: [{{name: c, context: {{cluster: local, user: u}}}}]}}\n",
                self.ports.apiserver
            ),
        )
        .unwrap();
        path
    }

    /// The admin's kubeconfig (`admin-token`, the CA by its path).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig(
            "admin-kubeconfig.yaml",
            &format!("certificate-authority: '{}'", self.ca().display()),
            "token: admin-token",
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The API server first, then its etcd; by pid, SIGTERM then SIGKILL.
        while let Some((name, mut child)) = self.procs.pop() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("{name} did not stop on SIGTERM: killed");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Whether etcd answers `GET /health` on `port` with `"health":"true"`.
fn etcd_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
