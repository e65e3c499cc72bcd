//! The crate's error type: every variant names the operation that failed
//! and carries what it failed on, so `main` can print one clear line.

use std::{fmt, io, path::PathBuf};

/// What went wrong, with enough context to act on it.
#[derive(Debug)]
pub enum Error {
    /// A file system or socket operation on `path` failed.
    Io {
        /// The operation, e.g. "create device node".
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A gRPC operation failed.
    Grpc {
        /// The operation, e.g. "bind plugin socket".
        op: String,
        /// The cause.
        source: grpcio::Error,
    },
    /// The configuration or the environment is not usable; the message says why.
    Invalid(String),
    /// Another process holds what this one needs: a resource's lock, the
    /// pid file, a socket it serves.
    Busy(String),
    /// A thread of ours failed or did not stop: the process cannot go on,
    /// or did not stop cleanly.
    Thread(String),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, .. } => write!(f, "{op} {}", path.display()),
            Error::Grpc { op, .. } => write!(f, "{op}"),
            Error::Invalid(msg) | Error::Busy(msg) | Error::Thread(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Grpc { source, .. } => Some(source),
            Error::Invalid(_) | Error::Busy(_) | Error::Thread(_) => None,
        }
    }
}

impl Error {
    /// The exit code `kubelet-plugin` ends with for this error (1 is argh's,
    /// for a flag it cannot parse): 2 a configuration or environment that is
    /// not usable (a bad flag value, a dir, a socket that cannot be bound);
    /// 3 another instance holds the resource, the pid file or the socket; 4
    /// a thread of ours failed or did not stop at shutdown.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Io { .. } | Error::Grpc { .. } | Error::Invalid(_) => 2,
            Error::Busy(_) => 3,
            Error::Thread(_) => 4,
        }
    }
}

/// Formats an error and its causes on one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
