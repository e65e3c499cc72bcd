//! systemd's service notification protocol, without libsystemd (the binary
//! stays static): a datagram of `VAR=value` lines to the unix socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! The supervisor tells it `READY=1` once the front end is past starting,
//! `STATUS=` whenever a resource's state changes, and `STOPPING=1` at
//! shutdown. Without `$NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::frontend::FrontEnd;

/// Where the notifications go, if anywhere, and what was said.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    ready: bool,
    told: String,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`; one that sends nothing without it
    /// (or when it is not usable, which is logged).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let addr = {
                use std::os::linux::net::SocketAddrExt;
                let bytes = name.as_encoded_bytes();
                match bytes.strip_prefix(b"@") {
                    Some(abs) => SocketAddr::from_abstract_name(abs),
                    None => SocketAddr::from_pathname(&name),
                }
            };
            addr.and_then(|a| UnixDatagram::unbound().map(|s| (s, a)))
                .map_err(|e| log::warn!("NOTIFY_SOCKET={name:?} is not usable: {e}"))
                .ok()
        });
        Notifier {
            target,
            ready: false,
            told: String::new(),
        }
    }

    /// Sends `message` (`VAR=value` lines); a failure is logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(message.as_bytes(), addr)
        {
            log::warn!("cannot notify systemd: {e}");
        }
    }

    /// Tells systemd where `front` is: READY=1 the first time it is ready
    /// (every resource serves, waits for the kubelet or retries; never
    /// "registered", since the unit starts before the kubelet and that would
    /// deadlock the boot), and a STATUS= line whenever a state changed.
    /// Returns whether something changed.
    pub fn update(&mut self, front: &dyn FrontEnd) -> bool {
        let ready = !self.ready && front.ready();
        let status = front.states().join(", ");
        let changed = ready || status != self.told;
        if changed {
            let ready_line = if ready { "READY=1\n" } else { "" };
            self.send(&format!("{ready_line}STATUS={status}"));
            self.ready |= ready;
            self.told = status;
        }
        changed
    }
}
