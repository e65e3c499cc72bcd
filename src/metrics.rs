//! Metrics in the Prometheus text format: the counters and gauges of every
//! plugin, kept here and rendered on demand, and the `metrics` thread that
//! writes them to `--metrics-file` (the node_exporter textfile collector's
//! convention) and serves them on `--metrics-listen` (`GET /metrics`,
//! `GET /healthz`).
//!
//! Whoever changes a figure (the health thread, the supervisor, the gRPC
//! handlers) calls a method of [`Metrics`], which wakes the `metrics`
//! thread through a pipe. The thread rewrites the file at most every
//! [`MIN_GAP`] (a storm of changes costs a few writes a second) and never
//! when nothing changed. Device health is read from the plugins' own
//! snapshots when rendering, so no copy of a device list is kept here.
//!
//! The reason of an unhealthy device is a separate info metric,
//! `kubelet_plugin_device_unhealthy_reason{resource,device,reason} 1`,
//! rather than a label of `device_healthy`: a label that changes value
//! starts a new series, which would break `device_healthy`'s history and
//! every rate or alert on it; the info metric keeps the last reason, also
//! after the device recovered, for "why did it flap".

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

use crate::{
    device::Device,
    dirwatch::Stopper,
    error::{Error, Result},
    watch::Watch,
};

/// The shortest time between two writes of the metrics file.
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// How long one HTTP client may take to send its request and read the
/// answer; clients are served one at a time.
const HTTP_DEADLINE: Duration = Duration::from_millis(500);
/// The most a request may hold.
const HTTP_MAX_REQUEST: usize = 8 * 1024;

#[derive(Debug, Default)]
struct Resource {
    snapshot: Option<Arc<Watch<Vec<Device>>>>,
    registrations: u64,
    register_failures: u64,
    allocations: u64,
    allocation_errors: BTreeMap<String, u64>,
    health_changes: u64,
    /// The reason code of each device's last Unhealthy.
    last_reason: BTreeMap<String, &'static str>,
}

#[derive(Debug, Default)]
struct State {
    resources: BTreeMap<String, Resource>,
    kubelet_restarts: u64,
}

/// The figures of the running plugins.
#[derive(Debug)]
pub struct Metrics {
    state: Mutex<State>,
    start_time: f64,
    /// The write end of the `metrics` thread's wake pipe, once it runs.
    wake: Mutex<Option<OwnedFd>>,
}

impl Metrics {
    /// Empty figures, the start time now.
    pub fn new() -> Arc<Metrics> {
        let start_time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Arc::new(Metrics {
            state: Mutex::default(),
            start_time,
            wake: Mutex::default(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("metrics lock poisoned"));
        if let Some(fd) = &*self.wake.lock().expect("metrics lock poisoned") {
            // A full pipe already says "changed".
            let _ = nix::unistd::write(fd.as_fd(), &[1]);
        }
    }

    fn resource<'a>(state: &'a mut State, resource: &str) -> &'a mut Resource {
        state.resources.entry(resource.to_string()).or_default()
    }

    /// A plugin and its device snapshot.
    pub fn add_resource(&self, resource: &str, snapshot: Arc<Watch<Vec<Device>>>) {
        self.update(|s| Metrics::resource(s, resource).snapshot = Some(snapshot));
    }

    /// A plugin no longer run: its figures go.
    pub fn remove_resource(&self, resource: &str) {
        self.update(|s| {
            s.resources.remove(resource);
        });
    }

    /// A registration the kubelet accepted.
    pub fn registered(&self, resource: &str) {
        self.update(|s| Metrics::resource(s, resource).registrations += 1);
    }

    /// A registration that failed.
    pub fn register_failed(&self, resource: &str) {
        self.update(|s| Metrics::resource(s, resource).register_failures += 1);
    }

    /// A kubelet restart seen.
    pub fn kubelet_restarted(&self) {
        self.update(|s| s.kubelet_restarts += 1);
    }

    /// An Allocate answered.
    pub fn allocated(&self, resource: &str) {
        self.update(|s| Metrics::resource(s, resource).allocations += 1);
    }

    /// An Allocate refused with gRPC status `code`.
    pub fn allocation_failed(&self, resource: &str, code: &str) {
        self.update(|s| {
            *Metrics::resource(s, resource)
                .allocation_errors
                .entry(code.to_string())
                .or_default() += 1;
        });
    }

    /// Devices whose health changed (the snapshot holds their new health).
    pub fn health_changed(&self, resource: &str, changed: &[&Device]) {
        self.update(|s| {
            let r = Metrics::resource(s, resource);
            r.health_changes += changed.len() as u64;
            for d in changed {
                if let Some(why) = d.health.reason() {
                    r.last_reason.insert(d.id.clone(), why.code());
                }
            }
        });
    }

    /// Everything in the Prometheus text format (HELP and TYPE lines, no
    /// timestamps, a newline at the end).
    pub fn render(&self) -> String {
        let state = self.state.lock().expect("metrics lock poisoned");
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP kubelet_plugin_{name} {help}");
            let _ = writeln!(out, "# TYPE kubelet_plugin_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "kubelet_plugin_{name}{labels} {value}");
            }
        };
        family(
            "build_info",
            "gauge",
            "The running kubelet-plugin's version.",
            &[(labels(&[("version", crate::VERSION)]), "1".into())],
        );
        family(
            "start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
            &[(String::new(), format!("{:.3}", self.start_time))],
        );
        family(
            "kubelet_restarts_total",
            "counter",
            "Kubelet restarts seen (a new kubelet.sock).",
            &[(String::new(), state.kubelet_restarts.to_string())],
        );
        let per = |f: &dyn Fn(&str, &Resource) -> Samples| -> Samples {
            state
                .resources
                .iter()
                .flat_map(|(name, r)| f(name, r))
                .collect()
        };
        let devices = |r: &Resource| r.snapshot.as_ref().map(|s| s.get()).unwrap_or_default();
        family(
            "device_healthy",
            "gauge",
            "Whether a device is healthy (1) or not (0), as the kubelet is told.",
            &per(&|name, r| {
                devices(r)
                    .iter()
                    .map(|d| {
                        (
                            labels(&[("resource", name), ("device", &d.id)]),
                            u8::from(d.health.is_healthy()).to_string(),
                        )
                    })
                    .collect()
            }),
        );
        family(
            "device_unhealthy_reason",
            "gauge",
            "The reason of a device's last Unhealthy (missing, symlink, not_a_device, wrong_type, wrong_number, stat_failed, open_failed); always 1.",
            &per(&|name, r| {
                r.last_reason
                    .iter()
                    .map(|(id, why)| {
                        (
                            labels(&[("resource", name), ("device", id), ("reason", why)]),
                            "1".into(),
                        )
                    })
                    .collect()
            }),
        );
        family(
            "devices",
            "gauge",
            "Devices of a resource by health.",
            &per(&|name, r| {
                let list = devices(r);
                let healthy = list.iter().filter(|d| d.health.is_healthy()).count();
                vec![
                    (
                        labels(&[("resource", name), ("state", "healthy")]),
                        healthy.to_string(),
                    ),
                    (
                        labels(&[("resource", name), ("state", "unhealthy")]),
                        (list.len() - healthy).to_string(),
                    ),
                ]
            }),
        );
        let counter = |get: fn(&Resource) -> u64| {
            move |name: &str, r: &Resource| {
                vec![(labels(&[("resource", name)]), get(r).to_string())]
            }
        };
        family(
            "registrations_total",
            "counter",
            "Registrations the kubelet accepted.",
            &per(&counter(|r| r.registrations)),
        );
        family(
            "register_failures_total",
            "counter",
            "Registrations that failed.",
            &per(&counter(|r| r.register_failures)),
        );
        family(
            "allocations_total",
            "counter",
            "Allocate calls answered.",
            &per(&counter(|r| r.allocations)),
        );
        family(
            "allocation_errors_total",
            "counter",
            "Allocate calls refused, by gRPC status code.",
            &per(&|name, r| {
                r.allocation_errors
                    .iter()
                    .map(|(code, n)| (labels(&[("resource", name), ("code", code)]), n.to_string()))
                    .collect()
            }),
        );
        family(
            "health_changes_total",
            "counter",
            "Device health changes.",
            &per(&counter(|r| r.health_changes)),
        );
        out
    }
}

/// The samples of one family: labels (`{..}` or empty) and value.
type Samples = Vec<(String, String)>;

/// `{a="x",b="y"}`, the values escaped as the text format wants.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Where the metrics go.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// `--metrics-file`.
    pub file: Option<PathBuf>,
    /// `--metrics-listen`.
    pub listen: Option<std::net::SocketAddr>,
}

/// The `metrics` thread's resources, made before it starts so that a bad
/// address or file is a start-up error.
#[derive(Debug)]
pub struct Exporter {
    metrics: Arc<Metrics>,
    file: Option<PathBuf>,
    listener: Option<TcpListener>,
    wake: OwnedFd,
    stop: OwnedFd,
}

impl Exporter {
    /// Binds `--metrics-listen` and checks `--metrics-file`'s dir; the
    /// exporter and the stopper that ends it.
    pub fn new(metrics: Arc<Metrics>, outputs: &Outputs) -> Result<(Exporter, Stopper)> {
        let listener = outputs
            .listen
            .map(|addr| {
                let l = TcpListener::bind(addr).map_err(|e| {
                    Error::Invalid(format!("--metrics-listen {addr}: cannot listen: {e}"))
                })?;
                l.set_nonblocking(true)
                    .map_err(|e| Error::Invalid(format!("--metrics-listen {addr}: {e}")))?;
                Ok::<_, Error>(l)
            })
            .transpose()?;
        if let Some(file) = &outputs.file {
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) || file.file_name().is_none() {
                return Err(Error::Invalid(format!(
                    "--metrics-file {}: its directory does not exist",
                    file.display()
                )));
            }
        }
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| Error::io("create the metrics wake pipe", "", e))
        };
        let (wake, wake_tx) = pipe()?;
        let (stop, stopper) = pipe()?;
        *metrics.wake.lock().expect("metrics lock poisoned") = Some(wake_tx);
        Ok((
            Exporter {
                metrics,
                file: outputs.file.clone(),
                listener,
                wake,
                stop,
            },
            Stopper::new(stopper),
        ))
    }

    /// The `metrics` thread: writes the file now and after each change (at
    /// most every [`MIN_GAP`]), serves HTTP clients one at a time, and ends
    /// when the stopper is dropped, removing the file: metrics of a plugin
    /// that does not run would mislead.
    pub fn run(self) -> std::result::Result<(), String> {
        let mut dirty = true;
        let mut last_write: Option<Instant> = None;
        loop {
            if dirty && last_write.is_none_or(|t| t.elapsed() >= MIN_GAP) {
                if let Some(file) = &self.file {
                    // Not synced: the file is rewritten on the next change.
                    match crate::atomic::write(file, self.metrics.render().as_bytes(), false) {
                        Ok(()) => {}
                        Err(e) => log::warn!("cannot write {}: {e}", file.display()),
                    }
                }
                dirty = false;
                last_write = Some(Instant::now());
            }
            let timeout = match (dirty, last_write) {
                (true, Some(t)) => PollTimeout::try_from(MIN_GAP.saturating_sub(t.elapsed()))
                    .unwrap_or(PollTimeout::ZERO),
                _ => PollTimeout::NONE,
            };
            let mut fds = vec![
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(l) = &self.listener {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(format!("metrics: poll: {e}")),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            if ready(0) {
                if let Some(file) = &self.file
                    && let Err(e) = std::fs::remove_file(file)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    log::warn!("cannot remove {}: {e}", file.display());
                }
                return Ok(());
            }
            if ready(1) {
                let mut buf = [0u8; 256];
                while nix::unistd::read(self.wake.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
                dirty = true;
            }
            let accept = ready(2);
            if accept && let Some(l) = &self.listener {
                while let Ok((conn, peer)) = l.accept() {
                    if let Err(e) = serve_http(conn, &self.metrics) {
                        log::debug!("metrics client {peer}: {e}");
                    }
                }
            }
        }
    }
}

/// One HTTP/1.x exchange: `GET /metrics` and `GET /healthz` are answered,
/// any other path 404, any other method 405, a request that is not HTTP
/// 400, one over [`HTTP_MAX_REQUEST`] 431; then the connection is closed.
/// The whole exchange has [`HTTP_DEADLINE`].
fn serve_http(mut conn: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let deadline = Instant::now() + HTTP_DEADLINE;
    conn.set_nonblocking(false)?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(end);
        }
        if req.len() > HTTP_MAX_REQUEST {
            break None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request not complete in time",
            ));
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => req.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e),
        }
    };
    let (status, body, allow) = match head_end {
        None => (
            "431 Request Header Fields Too Large",
            "request too large\n".to_string(),
            false,
        ),
        Some(end) => {
            let head = String::from_utf8_lossy(&req[..end]);
            let mut parts = head.lines().next().unwrap_or_default().split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(method), Some(target), Some(v)) if v.starts_with("HTTP/1.") => {
                    let path = target.split('?').next().unwrap_or_default();
                    match (method, path) {
                        ("GET", "/metrics") => ("200 OK", metrics.render(), false),
                        ("GET", "/healthz") => ("200 OK", "ok\n".to_string(), false),
                        ("GET", _) => ("404 Not Found", "not found\n".to_string(), false),
                        _ => ("405 Method Not Allowed", "only GET\n".to_string(), true),
                    }
                }
                _ => (
                    "400 Bad Request",
                    "not an HTTP request\n".to_string(),
                    false,
                ),
            }
        }
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(50));
    conn.set_write_timeout(Some(left))?;
    let content_type = if status.starts_with("200") && body.starts_with("# HELP") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if allow { "Allow: GET\r\n" } else { "" };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()?;
    // Closing with unread input resets the connection, and the client may
    // lose the answer (a 431 to a request still being sent): say we are
    // done, then read what is left until it stops or the deadline passes.
    conn.shutdown(std::net::Shutdown::Write)?;
    while !deadline.saturating_duration_since(Instant::now()).is_zero() {
        conn.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
        match conn.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Reason;

    #[test]
    fn test_render_has_every_family_and_the_last_reason() {
        let m = Metrics::new();
        let snapshot = Watch::new(vec![
            Device::healthy("crand0"),
            Device::unhealthy("crand1", Reason::Missing),
        ]);
        m.add_resource("example.com/crand", snapshot.clone());
        m.registered("example.com/crand");
        m.allocation_failed("example.com/crand", "INVALID_ARGUMENT");
        let list = snapshot.get();
        m.health_changed("example.com/crand", &[&list[1]]);
        let text = m.render();
        for line in [
            "kubelet_plugin_device_healthy{resource=\"example.com/crand\",device=\"crand0\"} 1",
            "kubelet_plugin_device_healthy{resource=\"example.com/crand\",device=\"crand1\"} 0",
            "kubelet_plugin_device_unhealthy_reason{resource=\"example.com/crand\",device=\"crand1\",reason=\"missing\"} 1",
            "kubelet_plugin_devices{resource=\"example.com/crand\",state=\"unhealthy\"} 1",
            "kubelet_plugin_registrations_total{resource=\"example.com/crand\"} 1",
            "kubelet_plugin_allocation_errors_total{resource=\"example.com/crand\",code=\"INVALID_ARGUMENT\"} 1",
            "kubelet_plugin_health_changes_total{resource=\"example.com/crand\"} 1",
            "kubelet_plugin_kubelet_restarts_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with('\n'));
        assert_eq!(labels(&[("a", "x\"y\\z\nw")]), "{a=\"x\\\"y\\\\z\\nw\"}");
        // Recovered: healthy again, the last reason kept.
        snapshot.publish(vec![Device::healthy("crand0"), Device::healthy("crand1")]);
        let text = m.render();
        assert!(text.contains("device=\"crand1\"} 1"));
        assert!(text.contains("reason=\"missing\"} 1"));
    }
}
