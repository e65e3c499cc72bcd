//! systemd's service notification protocol, without libsystemd (the binary
//! stays static): a datagram of `VAR=value` lines to the unix socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! Sent by the supervisor: `READY=1` once every plugin serves (or waits for
//! the kubelet to appear), `STATUS=` as registrations change, `STOPPING=1`
//! at shutdown. Without `$NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where the notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`; one that sends nothing without it
    /// (or when it is not usable, which is logged).
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            let bytes = name.as_encoded_bytes();
            match bytes.strip_prefix(b"@") {
                Some(abs) => SocketAddr::from_abstract_name(abs),
                None => SocketAddr::from_pathname(&name),
            }
        };
        let target = addr
            .and_then(|a| UnixDatagram::unbound().map(|s| (s, a)))
            .map_err(|e| log::warn!("NOTIFY_SOCKET={name:?} is not usable: {e}"))
            .ok();
        Notifier { target }
    }

    /// Sends `message` (`VAR=value` lines); a failure is logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(message.as_bytes(), addr)
        {
            log::warn!("cannot notify systemd: {e}");
        }
    }
}
