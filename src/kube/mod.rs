//! The Kubernetes API server client: where to reach the API server and as
//! whom ([`Config`], from a kubeconfig or the pod's service account), and
//! blocking JSON requests to it ([`Client`]), with the API's own `Status`
//! errors typed ([`Error`]).
//!
//! It has no thread of its own: each call runs on the caller's thread and
//! blocks until the answer, a timeout (2 s to connect, 10 s per request by
//! default) or an error. A [`Client`] is cheap to clone; clones share one
//! connection pool and one pair of request counters, so two threads can
//! each hold one.
//!
//! TLS is rustls with the ring provider. The server is verified against the
//! cluster's CA and nothing else (no system roots, no
//! `insecure-skip-tls-verify`).
//!
//! ```no_run
//! use kubelet_plugin::kube::{Client, Config, query_escape};
//! let client = Client::new(Config::load(None)?)?;
//! let versions = client.served_versions("resource.k8s.io")?; // preferred first
//! let path = format!(
//!     "/apis/resource.k8s.io/{}/resourceslices?fieldSelector={}",
//!     versions[0],
//!     query_escape("spec.nodeName=realnode"),
//! );
//! let slices = client.list(&path)?;
//! # Ok::<(), kubelet_plugin::kube::Error>(())
//! ```

mod client;
mod config;
mod error;
mod yaml;

pub use client::{CONNECT_TIMEOUT, Client, DEFAULT_TIMEOUT};
pub use config::{Config, DEFAULT_TOKEN_RECHECK, SERVICE_ACCOUNT_DIR};
pub use error::{Error, Result, Status};

/// `value` percent-encoded for a query string (a selector's value, a
/// `continue` token): everything but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so `spec.nodeName=realnode`
/// gives `spec.nodeName%3Drealnode`.
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_query_escape() {
        assert_eq!(
            query_escape("spec.nodeName=realnode"),
            "spec.nodeName%3Drealnode"
        );
        assert_eq!(
            query_escape("app in (a,b),tier!=x y"),
            "app%20in%20%28a%2Cb%29%2Ctier%21%3Dx%20y"
        );
        assert_eq!(query_escape("a-Z_0.9~"), "a-Z_0.9~");
        assert_eq!(query_escape("é/?&#%+"), "%C3%A9%2F%3F%26%23%25%2B");
        assert_eq!(query_escape(""), "");
    }

    #[test]
    fn test_client_and_error_cross_threads() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Client>();
        check::<Config>();
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Error>();
    }
}
