//! The client's errors, shaped for the caller's decision: the API server's
//! own `Status` (retry on a conflict, create what is not found), no answer
//! at all (unreachable, timeout, TLS), or a configuration that cannot be
//! used (naming the file and the field).
//!
//! Each `Display` is one line that stands on its own in a log, e.g.
//! `PUT /api/v1/namespaces/default/configmaps/x: 409 Conflict: Operation
//! cannot be fulfilled ...`; where there is a lower-level cause it is the
//! `source()`, which [`crate::error::chain`] appends.

use std::{fmt, io, path::PathBuf, time::Duration};

use serde::Deserialize;

/// Result with the client's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The `Status` the API server answers an error with (`kind: Status`;
/// `apimachinery/pkg/apis/meta/v1` `Status`), or one made from the HTTP
/// status line when the body is not one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// The HTTP status code (the body's `code`, else the response's).
    #[serde(default)]
    pub code: u16,
    /// The machine-readable reason (`NotFound`, `AlreadyExists`,
    /// `Conflict`, `Forbidden`, `Invalid`, ...); empty when the body was
    /// not a `Status`.
    #[serde(default)]
    pub reason: String,
    /// The human-readable message; for a body that was not a `Status`, the
    /// start of the body.
    #[serde(default)]
    pub message: String,
}

/// What went wrong, with the request or the file it went wrong on.
#[derive(Debug)]
pub enum Error {
    /// The API server answered with an error status.
    Api {
        /// The request's method.
        method: &'static str,
        /// The request's API path (with its query).
        path: String,
        /// What the server said.
        status: Status,
    },
    /// No answer: the server is unreachable, its certificate was refused,
    /// the connection broke.
    Transport {
        /// The request's method.
        method: &'static str,
        /// The request's API path (with its query).
        path: String,
        /// The server's base URL.
        server: String,
        /// The cause.
        source: Box<ureq::Error>,
    },
    /// No answer in time.
    Timeout {
        /// The request's method.
        method: &'static str,
        /// The request's API path (with its query).
        path: String,
        /// The server's base URL.
        server: String,
        /// True: no connection (TCP and TLS handshake) within `limit`;
        /// false: no complete answer within `limit`.
        connect: bool,
        /// The limit that expired.
        limit: Duration,
        /// The cause.
        source: Box<ureq::Error>,
    },
    /// A success answer that is not what the API promises (not JSON, a
    /// field missing).
    Answer {
        /// The request's method.
        method: &'static str,
        /// The request's API path (with its query).
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The caller's request cannot be sent (a path that is not absolute, a
    /// character a URL cannot hold).
    Request {
        /// The request's method.
        method: &'static str,
        /// The path given.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file of the configuration could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// Who named it, e.g. "`users[name=u].user.tokenFile` in
        /// /root/.kube/config"; empty when it is the kubeconfig itself.
        named_by: String,
        /// The cause.
        source: io::Error,
    },
    /// The configuration is not usable: a field missing or of the wrong
    /// type, something refused (`insecure-skip-tls-verify`, exec plugins),
    /// bad base64, PEM or key material.
    Config {
        /// Where it came from: the kubeconfig's path, "in-cluster config",
        /// a certificate file.
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl Error {
    /// The API server's `Status`, when it answered with an error.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Api { status, .. } => Some(status),
            _ => None,
        }
    }

    /// 404: the object (or the API) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.code == 404)
    }

    /// 409 `Conflict`: a write on a stale `resourceVersion`; read again and
    /// retry. Not `AlreadyExists`, which is a 409 too.
    pub fn is_conflict(&self) -> bool {
        self.status()
            .is_some_and(|s| s.code == 409 && s.reason != "AlreadyExists")
    }

    /// 409 `AlreadyExists`: a create of a name that is taken.
    pub fn is_already_exists(&self) -> bool {
        self.status()
            .is_some_and(|s| s.code == 409 && s.reason == "AlreadyExists")
    }

    /// 403: authenticated, but not allowed (RBAC, the Node authorizer).
    pub fn is_forbidden(&self) -> bool {
        self.status().is_some_and(|s| s.code == 403)
    }

    /// No answer from the server (unreachable, TLS, timeout): worth a retry
    /// later, unlike an answer.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport { .. } | Error::Timeout { .. })
    }

    /// No answer in time (one kind of [`Error::is_transport`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    pub(super) fn config(origin: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Config {
            origin: origin.into(),
            message: message.into(),
        }
    }

    pub(super) fn io(
        path: impl Into<PathBuf>,
        named_by: impl Into<String>,
        source: io::Error,
    ) -> Error {
        Error::Io {
            path: path.into(),
            named_by: named_by.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api {
                method,
                path,
                status,
            } => {
                write!(f, "{method} {path}: {}", status.code)?;
                if !status.reason.is_empty() {
                    write!(f, " {}", status.reason)?;
                } else if let Some(phrase) = ureq::http::StatusCode::from_u16(status.code)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                {
                    write!(f, " {phrase}")?;
                }
                if !status.message.is_empty() {
                    write!(f, ": {}", status.message)?;
                }
                Ok(())
            }
            Error::Transport {
                method,
                path,
                server,
                source,
            } => {
                write!(f, "{method} {path}: ")?;
                describe_transport(f, server, source)
            }
            Error::Timeout {
                method,
                path,
                server,
                connect,
                limit,
                ..
            } => {
                let secs = limit.as_secs_f64();
                if *connect {
                    write!(
                        f,
                        "{method} {path}: no connection to {server} within {secs} s (TCP connect and TLS handshake)"
                    )
                } else {
                    write!(
                        f,
                        "{method} {path}: no complete answer from {server} within {secs} s"
                    )
                }
            }
            Error::Answer {
                method,
                path,
                message,
            }
            | Error::Request {
                method,
                path,
                message,
            } => write!(f, "{method} {path}: {message}"),
            Error::Io { path, named_by, .. } => {
                write!(f, "cannot read {}", path.display())?;
                if !named_by.is_empty() {
                    write!(f, " ({named_by})")?;
                }
                Ok(())
            }
            Error::Config { origin, message } => write!(f, "{origin}: {message}"),
        }
    }
}

/// Says in our words why a request got no answer; the raw cause stays the
/// `source()`.
fn describe_transport(f: &mut fmt::Formatter<'_>, server: &str, e: &ureq::Error) -> fmt::Result {
    match e {
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            write!(
                f,
                "{server} refused the connection (is the API server running?)"
            )
        }
        // rustls reports a failed handshake through the socket's io::Error.
        ureq::Error::Io(io) => match io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => describe_tls(f, server, tls),
            // Also a host name that does not resolve: std's lookup says
            // so only in its message.
            None => write!(f, "the connection to {server} failed: {io}"),
        },
        ureq::Error::Rustls(tls) => describe_tls(f, server, tls),
        ureq::Error::HostNotFound => write!(f, "cannot resolve the host of {server}"),
        _ => write!(f, "the request to {server} failed"),
    }
}

fn describe_tls(f: &mut fmt::Formatter<'_>, server: &str, e: &rustls::Error) -> fmt::Result {
    use rustls::{CertificateError, Error as Tls};
    write!(f, "TLS handshake with {server} failed")?;
    match e {
        Tls::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => {
            write!(
                f,
                ": the server's certificate is not signed by the configured CA"
            )
        }
        Tls::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => write!(
            f,
            ": the server's certificate does not name the host of the server URL"
        ),
        Tls::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => write!(f, ": the server's certificate has expired"),
        Tls::AlertReceived(_) => write!(
            f,
            ": the server refused us (is the client certificate accepted?)"
        ),
        _ => Ok(()),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport { source, .. } | Error::Timeout { source, .. } => Some(&**source),
            Error::Io { source, .. } => Some(source),
            Error::Api { .. }
            | Error::Answer { .. }
            | Error::Request { .. }
            | Error::Config { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> Error {
        Error::Api {
            method: "PUT",
            path: "/api/v1/namespaces/default/configmaps/x".into(),
            status: Status {
                code,
                reason: reason.into(),
                message: message.into(),
            },
        }
    }

    #[test]
    fn test_status_predicates() {
        let conflict = api(409, "Conflict", "the object has been modified");
        assert!(conflict.is_conflict() && !conflict.is_already_exists());
        let exists = api(409, "AlreadyExists", "configmaps \"x\" already exists");
        assert!(exists.is_already_exists() && !exists.is_conflict());
        assert!(api(404, "NotFound", "").is_not_found());
        assert!(api(403, "Forbidden", "").is_forbidden());
        for e in [&conflict, &exists] {
            assert!(!e.is_not_found() && !e.is_forbidden() && !e.is_transport());
        }
        let cfg = Error::config("f", "m");
        assert!(cfg.status().is_none() && !cfg.is_transport());
    }

    #[test]
    fn test_display_is_one_line() {
        assert_eq!(
            api(409, "Conflict", "the object has been modified").to_string(),
            "PUT /api/v1/namespaces/default/configmaps/x: 409 Conflict: the object has been modified"
        );
        // A body that was not a Status: the status line's phrase.
        assert_eq!(
            api(503, "", "upstream down").to_string(),
            "PUT /api/v1/namespaces/default/configmaps/x: 503 Service Unavailable: upstream down"
        );
        let io = Error::io(
            "/x/ca.crt",
            "`clusters[name=c].cluster.certificate-authority` in /x/config",
            io::Error::from(io::ErrorKind::NotFound),
        );
        assert_eq!(
            io.to_string(),
            "cannot read /x/ca.crt (`clusters[name=c].cluster.certificate-authority` in /x/config)"
        );
        assert!(
            crate::error::chain(&io).ends_with(": entity not found"),
            "{}",
            crate::error::chain(&io)
        );
    }

    #[test]
    fn test_status_from_json() {
        let s: Status = serde_json::from_str(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"configmaps \"x\" not found","reason":"NotFound",
                "details":{"name":"x","kind":"configmaps"},"code":404}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Status {
                code: 404,
                reason: "NotFound".into(),
                message: "configmaps \"x\" not found".into()
            }
        );
    }
}
