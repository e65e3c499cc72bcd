//! The `metrics` thread: writes the figures to `--metrics-file` and
//! serves them on `--metrics-listen`. The file is rewritten at most every
//! [`MIN_GAP`] (a storm of changes costs a few writes a second) and never
//! when nothing changed; HTTP clients are served one at a time, each with
//! a deadline, so a slow client cannot hold the thread.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsFd,
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::Sender;
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

use super::Metrics;
use crate::{
    error::{Error, Result},
    event::Event,
    thread::spawn_named,
    wake::{self, Stopper, WakeFd},
};

/// The shortest time between two writes of the metrics file.
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// How long one HTTP client may take to send its request and read the
/// answer; clients are served one at a time.
const HTTP_DEADLINE: Duration = Duration::from_millis(500);
/// The most a request may hold.
const HTTP_MAX_REQUEST: usize = 8 * 1024;

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
    wake: WakeFd,
    stop: WakeFd,
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
        let (wake, kicker) = wake::kick_pipe("metrics")?;
        let (stop, stopper) = wake::stop_pipe("metrics")?;
        *metrics.wake.lock().expect("metrics lock poisoned") = Some(kicker);
        Ok((
            Exporter {
                metrics,
                file: outputs.file.clone(),
                listener,
                wake,
                stop,
            },
            stopper,
        ))
    }

    /// Starts the `metrics` thread, which runs until the stopper made with
    /// this exporter is dropped.
    pub fn spawn(self, exits: Sender<Event>) -> Result<JoinHandle<()>> {
        spawn_named("metrics", exits, move || self.run())
    }

    /// The `metrics` thread: writes the file now and after each change (at
    /// most every [`MIN_GAP`]), serves HTTP clients one at a time, and ends
    /// when the stopper is dropped, removing the file: metrics of a plugin
    /// that does not run would mislead.
    fn run(self) -> Result<()> {
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
                Err(e) => return Err(Error::io("wait for metrics clients", "", e)),
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
                self.wake.drain();
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

/// Reads a request's head, up to its blank line, by `deadline`: `None` when
/// the client closed first, `Some(None)` when it is over
/// [`HTTP_MAX_REQUEST`].
fn read_head(conn: &mut TcpStream, deadline: Instant) -> std::io::Result<Option<Option<String>>> {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(Some(
                String::from_utf8_lossy(&req[..end]).into_owned(),
            )));
        }
        if req.len() > HTTP_MAX_REQUEST {
            return Ok(Some(None));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request not complete in time",
            ));
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf)? {
            0 => return Ok(None),
            n => req.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status line, body and whether to send `Allow` for a request head
/// (`None`: too large).
fn answer(head: Option<&str>, metrics: &Metrics) -> (&'static str, String, bool) {
    let Some(head) = head else {
        return (
            "431 Request Header Fields Too Large",
            "request too large\n".to_string(),
            false,
        );
    };
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

/// One HTTP/1.x exchange: `GET /metrics` and `GET /healthz` are answered,
/// any other path 404, any other method 405, a request that is not HTTP
/// 400, one over [`HTTP_MAX_REQUEST`] 431; then the connection is closed.
/// The whole exchange has [`HTTP_DEADLINE`].
fn serve_http(mut conn: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let deadline = Instant::now() + HTTP_DEADLINE;
    conn.set_nonblocking(false)?;
    let Some(head) = read_head(&mut conn, deadline)? else {
        return Ok(());
    };
    let (status, body, allow) = answer(head.as_deref(), metrics);
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
    let mut buf = [0u8; 1024];
    while !deadline.saturating_duration_since(Instant::now()).is_zero() {
        conn.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
        match conn.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}
