//! Metrics: the file (node_exporter's textfile convention) and the HTTP
//! endpoint of the real binary, checked by Prometheus's own parser
//! (`promtool check metrics`), following a health flip, coalescing a storm
//! of changes, and the endpoint against hostile clients. Every wait is
//! bounded.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{Dirs, Plugin, dirs};
use kubelet_plugin::{
    inventory::dirwatch::{Changes, DirWatch, Wake},
    sim::Sim,
};
use nix::sys::{
    signal::Signal,
    stat::{Mode, SFlag, mknod, stat},
};

const CRAND: &str = "github.com.ihcsim/crand";
const WAIT: Duration = Duration::from_secs(5);

/// promtool: `PROMTOOL` (make test sets it) or `target/tools/promtool`.
fn promtool() -> Option<PathBuf> {
    std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .or_else(|| Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/promtool")))
        .filter(|p| p.exists())
}

/// `promtool check metrics` of `text`: Prometheus's parser and linter.
fn check_with_promtool(text: &str) {
    let Some(promtool) = promtool() else {
        return common::skip(
            "promtool check metrics",
            "no promtool (`make test` fetches it)",
        );
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refuses the metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free loopback port (bound, then released for the plugin).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(d: &Dirs, file: &Path, addr: SocketAddr) -> Plugin {
    common::start(
        env!("CARGO_BIN_EXE_kubelet-plugin"),
        d,
        &[
            "--plugin",
            "crand",
            "--metrics-file",
            file.to_str().unwrap(),
            "--metrics-listen",
            &addr.to_string(),
        ],
    )
}

/// Sends `request` and returns the whole answer (the server closes).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(request);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Waits until the metrics file holds a line `line`; how long it took.
fn wait_file_line(file: &Path, line: &str) -> Duration {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return t.elapsed();
        }
        assert!(t.elapsed() < WAIT, "no {line:?} in\n{text}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn test_metrics_file_and_endpoint_follow_health_and_parse() {
    let d = dirs();
    let file = d.tmp.path().join("kubelet-plugin.prom");
    let addr = free_addr();
    let sim = Sim::start(&d.plugin).unwrap();
    let mut p = start(&d, &file, addr);
    sim.wait_ready(CRAND, WAIT).unwrap();
    let healthy =
        format!("kubelet_plugin_device_healthy{{resource=\"{CRAND}\",device=\"crand1\"}} 1");
    wait_file_line(&file, &healthy);
    wait_file_line(
        &file,
        &format!("kubelet_plugin_registrations_total{{resource=\"{CRAND}\"}} 1"),
    );
    let text = std::fs::read_to_string(&file).unwrap();
    check_with_promtool(&text);
    for family in [
        "build_info",
        "start_time_seconds",
        "device_healthy",
        "devices",
        "registrations_total",
        "register_failures_total",
        "kubelet_restarts_total",
        "allocations_total",
        "allocation_errors_total",
        "health_changes_total",
        "device_unhealthy_reason",
    ] {
        assert!(
            text.contains(&format!("# TYPE kubelet_plugin_{family} ")),
            "no {family} in\n{text}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // A health flip: in the file within 1 s, with its reason; on HTTP too.
    std::fs::remove_file(d.dev.join("crand1")).unwrap();
    let took = wait_file_line(
        &file,
        &format!("kubelet_plugin_device_healthy{{resource=\"{CRAND}\",device=\"crand1\"}} 0"),
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    let reason = format!(
        "kubelet_plugin_device_unhealthy_reason{{resource=\"{CRAND}\",device=\"crand1\",reason=\"missing\"}} 1"
    );
    wait_file_line(&file, &reason);
    let resp = get(addr, "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains("Content-Type: text/plain; version=0.0.4"),
        "{resp}"
    );
    assert!(body(&resp).lines().any(|l| l == reason), "{resp}");
    check_with_promtool(body(&resp));

    // Allocations and refusals, counted by code; a kubelet restart.
    sim.allocate(CRAND, &["crand0".into()]).unwrap();
    assert!(sim.allocate(CRAND, &["crand9".into()]).is_err());
    wait_file_line(
        &file,
        &format!("kubelet_plugin_allocations_total{{resource=\"{CRAND}\"}} 1"),
    );
    wait_file_line(
        &file,
        &format!(
            "kubelet_plugin_allocation_errors_total{{resource=\"{CRAND}\",code=\"INVALID_ARGUMENT\"}} 1"
        ),
    );
    let mut sim = sim;
    sim.restart().unwrap();
    sim.wait_ready(CRAND, WAIT).unwrap();
    wait_file_line(&file, "kubelet_plugin_kubelet_restarts_total 1");

    // SIGTERM: the file goes with the plugin (stale figures would mislead).
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).unwrap().code(), Some(0), "{}", p.log());
    assert!(!file.exists());
    let left: Vec<_> = std::fs::read_dir(d.tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("prom"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn test_a_storm_of_changes_costs_a_few_writes_and_quiet_costs_none() {
    let d = dirs();
    let file = d.tmp.path().join("m.prom");
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &file, free_addr());
    sim.wait_ready(CRAND, WAIT).unwrap();
    wait_file_line(
        &file,
        &format!("kubelet_plugin_registrations_total{{resource=\"{CRAND}\"}} 1"),
    );
    let (mut watch, _stop) = DirWatch::new(&[d.tmp.path()]).unwrap();
    let writes = |watch: &mut DirWatch, for_: Duration| {
        let until = Instant::now() + for_;
        let mut n = 0;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return n;
            }
            if let Ok(Wake::Changed(c)) = watch.wait(Some(left))
                && let Changes::Named(names) = &c[0]
            {
                // Each write ends with the rename onto the file.
                n += names
                    .iter()
                    .filter(|p| p.as_path() == Path::new("m.prom"))
                    .count();
            }
        }
    };
    // Quiet: no write on a timer.
    assert_eq!(writes(&mut watch, Duration::from_millis(1500)), 0);
    // Up to 400 health changes in well under a second.
    let node = d.dev.join("crand1");
    let rdev = stat("/dev/random").unwrap().st_rdev;
    let t = Instant::now();
    for _ in 0..200 {
        std::fs::remove_file(&node).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), rdev).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let storm = t.elapsed();
    let n = writes(&mut watch, Duration::from_millis(600));
    let most = (storm.as_millis() / 250 + 3) as usize;
    assert!(
        n >= 1 && n <= most,
        "{n} writes for a storm of {storm:?} (at most {most})"
    );
}

#[test]
fn test_the_endpoint_answers_only_get_and_survives_hostile_clients() {
    let d = dirs();
    let addr = free_addr();
    let sim = Sim::start(&d.plugin).unwrap();
    let _p = start(&d, &d.tmp.path().join("m.prom"), addr);
    sim.wait_ready(CRAND, WAIT).unwrap();
    assert!(get(addr, "/healthz").ends_with("\r\n\r\nok\n"));
    assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    let post = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET"),
        "{post}"
    );
    assert!(http(addr, b"\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    // A huge request is cut short.
    let t = Instant::now();
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert!(http(addr, huge.as_bytes()).starts_with("HTTP/1.1 431"));
    assert!(t.elapsed() < Duration::from_secs(2));
    // A slow client that never finishes is dropped, and the next served.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    let t = Instant::now();
    assert!(get(addr, "/metrics").starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        slow.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed, unanswered"
    );
    // Many clients at once: each answered.
    let clients: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || get(addr, "/metrics")))
        .collect();
    for c in clients {
        assert!(c.join().unwrap().starts_with("HTTP/1.1 200"));
    }
    // And the plugin kept serving the kubelet throughout.
    sim.allocate(CRAND, &["crand0".into()]).unwrap();
}

#[test]
fn test_bad_metrics_flags_fail_clearly() {
    let d = dirs();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (args, code, want) in [
        (vec!["--metrics-listen", "nonsense"], 1, "--metrics-listen"),
        (vec!["--metrics-listen", &addr], 2, "cannot listen"),
        (
            vec!["--metrics-file", "/nonexistent/dir/m.prom"],
            2,
            "its directory does not exist",
        ),
    ] {
        let mut cmd = common::plugin_cmd(env!("CARGO_BIN_EXE_kubelet-plugin"), &d, &args);
        cmd.args(["--plugin", "crand"]);
        let out = common::output(cmd, WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
