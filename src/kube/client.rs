//! The blocking API client: JSON requests over ureq and rustls (ring), the
//! API's `Status` errors, discovery and the server's version, the bearer
//! token kept fresh from its file, and the request counters. No thread of
//! its own; clones share the connection pool and the counters.

use std::{
    fmt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use rustls::{ClientConfig, RootCertStore, crypto::CryptoProvider};
use rustls_pki_types::PrivateKeyDer;
use serde_json::Value;
use ureq::{
    Agent,
    http::{self, StatusCode},
    tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider},
};

use super::{
    config::{Config, Token, read_token},
    error::{Error, Result, Status},
};

/// How long a connection may take: TCP connect and TLS handshake (ureq
/// counts the handshake in its connect timeout). An API server on the
/// cluster network answers in milliseconds; 2 s is for a loaded one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a whole request may take by default (connect, send, the whole
/// answer); [`Client::with_timeout`] changes it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read: a LIST of many objects can be tens of MB
/// (ureq's own limit is 10 MB).
const MAX_BODY: u64 = 256 * 1024 * 1024;

/// How much of an error body that is not a `Status` goes into the error.
const MAX_ERROR_BODY: usize = 300;

/// A blocking client of one API server. Clones share the connection pool
/// and the request counters; each clone has its own timeout.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    timeout: Duration,
}

/// What the clones of a client share.
struct Shared {
    agent: Agent,
    server: String,
    auth: Auth,
    reads: AtomicU64,
    writes: AtomicU64,
}

enum Auth {
    None,
    /// The whole `Authorization` header value.
    Static(String),
    File(TokenFile),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (reads, writes) = self.requests();
        f.debug_struct("Client")
            .field("server", &self.shared.server)
            .field("timeout", &self.timeout)
            .field("reads", &reads)
            .field("writes", &writes)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`'s server. The CA and the client certificate
    /// and key are checked with rustls first: ureq would panic (an abort,
    /// with `panic = "abort"`) on a key that does not match its
    /// certificate; here that is an [`Error::Config`].
    pub fn new(config: Config) -> Result<Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        check_tls(&config, &provider)?;

        let roots: Vec<Certificate<'static>> = config
            .roots
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let client_cert = match &config.identity {
            None => None,
            Some(id) => {
                let chain: Vec<Certificate<'static>> = id
                    .chain
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect();
                let key = ureq_key(&id.key).map_err(|m| Error::config(&config.origin, m))?;
                Some(ClientCert::new_with_certs(&chain, key))
            }
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .client_cert(client_cert)
            // With only `rustls-no-provider`, ureq takes the provider from
            // here, else from a process-wide default, else it panics.
            .unversioned_rustls_crypto_provider(provider)
            .build();
        let agent: Agent = Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            // The API's error answers carry a Status body we read.
            .http_status_as_error(false)
            // The API server is reached directly, whatever HTTPS_PROXY says.
            .proxy(None)
            // The API server does not redirect; never resend credentials.
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(DEFAULT_TIMEOUT))
            .user_agent(format!("kubelet-plugin/{}", crate::VERSION))
            // ureq's 128 KiB per direction and connection is sized for big
            // transfers; our requests and the API's headers are small and
            // bodies stream through, and a node agent's RSS counts.
            .input_buffer_size(32 * 1024)
            .output_buffer_size(16 * 1024)
            .max_response_header_size(16 * 1024)
            .max_idle_connections_per_host(2)
            .build()
            .into();

        let auth = match config.token {
            None => Auth::None,
            Some(Token::Static(t)) => Auth::Static(format!("Bearer {t}")),
            Some(Token::File(p)) => Auth::File(TokenFile::new(p, config.token_recheck)?),
        };
        Ok(Client {
            shared: Arc::new(Shared {
                agent,
                server: config.server,
                auth,
                reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
            }),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// This client with `timeout` for each whole request (connect, send,
    /// the whole answer); the connect timeout stays [`CONNECT_TIMEOUT`]
    /// (or `timeout`, if shorter).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The timeout of each whole request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The API server's base URL.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// The requests sent so far by this client and all its clones:
    /// `(reads, writes)`, reads being GETs, writes POST, PUT, PATCH and
    /// DELETE. A request counts when it is sent, whatever its answer.
    pub fn requests(&self) -> (u64, u64) {
        (
            self.shared.reads.load(Ordering::Relaxed),
            self.shared.writes.load(Ordering::Relaxed),
        )
    }

    /// GET `path` (an absolute API path, with its query if any).
    pub fn get(&self, path: &str) -> Result<Value> {
        self.request("GET", path, None)
    }

    /// GET a collection, e.g.
    /// `/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3Dn`
    /// (see [`super::query_escape`]); the same as [`Client::get`].
    pub fn list(&self, path: &str) -> Result<Value> {
        self.get(path)
    }

    /// POST `object` to the collection `path`: the object as created.
    pub fn create(&self, path: &str, object: &Value) -> Result<Value> {
        self.request("POST", path, Some((object, "application/json")))
    }

    /// PUT `object` at `path`: the object as updated. A stale
    /// `metadata.resourceVersion` gives a 409 ([`Error::is_conflict`]).
    pub fn update(&self, path: &str, object: &Value) -> Result<Value> {
        self.request("PUT", path, Some((object, "application/json")))
    }

    /// PATCH `path` with a JSON merge patch (RFC 7386): the object as
    /// patched.
    pub fn patch(&self, path: &str, patch: &Value) -> Result<Value> {
        self.request("PATCH", path, Some((patch, "application/merge-patch+json")))
    }

    /// DELETE `path`: the object being deleted, or a `Status`.
    pub fn delete(&self, path: &str) -> Result<Value> {
        self.request("DELETE", path, None)
    }

    /// The versions the server serves of API `group` (`GET /apis/<group>`),
    /// its preferred version first, then the others as listed; none when
    /// the group is not served.
    pub fn served_versions(&self, group: &str) -> Result<Vec<String>> {
        let path = format!("/apis/{group}");
        if group.is_empty() || group.contains(['/', '?', '#', '%']) {
            return Err(Error::Request {
                method: "GET",
                path,
                message: "not an API group name".into(),
            });
        }
        let answer = match self.get(&path) {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let preferred = answer["preferredVersion"]["version"].as_str();
        let mut versions: Vec<String> = preferred.into_iter().map(str::to_string).collect();
        let listed = answer["versions"].as_array().ok_or_else(|| Error::Answer {
            method: "GET",
            path: path.clone(),
            message: "no `versions` list in the APIGroup".into(),
        })?;
        for v in listed.iter().filter_map(|v| v["version"].as_str()) {
            if !versions.iter().any(|have| have == v) {
                versions.push(v.to_string());
            }
        }
        Ok(versions)
    }

    /// The server's Kubernetes version, `(major, minor)`, from
    /// `GET /version`: e.g. `(1, 36)`. A vendor suffix (`"36+"`) is
    /// dropped; without `major`/`minor` the `gitVersion` (`v1.36.3`) is read.
    pub fn server_version(&self) -> Result<(u32, u32)> {
        const PATH: &str = "/version";
        let v = self.get(PATH)?;
        let number = |s: &str| -> Option<u32> {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let from_fields = v["major"]
            .as_str()
            .and_then(number)
            .zip(v["minor"].as_str().and_then(number));
        let from_git = || {
            let git = v["gitVersion"].as_str()?.strip_prefix('v')?;
            let (major, rest) = git.split_once('.')?;
            number(major).zip(number(rest))
        };
        from_fields.or_else(from_git).ok_or_else(|| Error::Answer {
            method: "GET",
            path: PATH.into(),
            message: format!("no version number in {v}"),
        })
    }

    /// Sends one request and reads its whole answer: a 2xx answer as JSON
    /// (an empty body as `null`), any other as [`Error::Api`].
    fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<(&Value, &str)>,
    ) -> Result<Value> {
        let request_error = |message: String| Error::Request {
            method,
            path: path.to_string(),
            message,
        };
        if !path.starts_with('/') {
            return Err(request_error("not an absolute API path".into()));
        }
        let url = format!("{}{path}", self.shared.server);
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", "application/json");
        match &self.shared.auth {
            Auth::None => {}
            Auth::Static(h) => req = req.header("Authorization", h.as_str()),
            Auth::File(f) => req = req.header("Authorization", f.header()),
        }
        let agent = &self.shared.agent;
        let counter = if method == "GET" {
            &self.shared.reads
        } else {
            &self.shared.writes
        };
        let started = Instant::now();
        let sent = match body {
            Some((value, content_type)) => {
                let bytes = serde_json::to_vec(value)
                    .map_err(|e| request_error(format!("the body cannot be encoded: {e}")))?;
                let req = req
                    .header("Content-Type", content_type)
                    .body(bytes)
                    .map_err(|e| request_error(e.to_string()))?;
                counter.fetch_add(1, Ordering::Relaxed);
                agent.run(
                    agent
                        .configure_request(req)
                        .timeout_global(Some(self.timeout))
                        .build(),
                )
            }
            None => {
                let req = req.body(()).map_err(|e| request_error(e.to_string()))?;
                counter.fetch_add(1, Ordering::Relaxed);
                agent.run(
                    agent
                        .configure_request(req)
                        .timeout_global(Some(self.timeout))
                        .build(),
                )
            }
        };
        let answer = sent.and_then(|mut resp| {
            let bytes = resp
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_vec()?;
            Ok((resp.status(), bytes))
        });
        let (code, bytes) = match answer {
            Ok(a) => a,
            Err(e) => {
                let e = self.transport_error(method, path, e);
                log::debug!(
                    "api request method={method} path={path} status=none duration={:?} error={e}",
                    started.elapsed()
                );
                return Err(e);
            }
        };
        log::debug!(
            "api request method={method} path={path} status={} duration={:?}",
            code.as_u16(),
            started.elapsed()
        );
        if code.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| Error::Answer {
                method,
                path: path.to_string(),
                message: format!("the answer is not JSON: {e}"),
            });
        }
        Err(Error::Api {
            method,
            path: path.to_string(),
            status: error_status(code, &bytes),
        })
    }

    fn transport_error(&self, method: &'static str, path: &str, e: ureq::Error) -> Error {
        let (path, server) = (path.to_string(), self.shared.server.clone());
        match e {
            ureq::Error::Timeout(kind) => {
                let connect = kind == ureq::Timeout::Connect;
                Error::Timeout {
                    method,
                    path,
                    server,
                    connect,
                    limit: if connect {
                        CONNECT_TIMEOUT.min(self.timeout)
                    } else {
                        self.timeout
                    },
                    source: Box::new(e),
                }
            }
            e => Error::Transport {
                method,
                path,
                server,
                source: Box::new(e),
            },
        }
    }
}

/// The `Status` of an error answer; for a body that is not one, a status
/// made of the code and the start of the body.
fn error_status(code: StatusCode, body: &[u8]) -> Status {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && v["kind"] == "Status"
        && let Ok(mut status) = serde_json::from_value::<Status>(v)
    {
        if status.code == 0 {
            status.code = code.as_u16();
        }
        return status;
    }
    let mut text = String::from_utf8_lossy(body).trim().replace('\n', " ");
    if text.len() > MAX_ERROR_BODY {
        let mut cut = MAX_ERROR_BODY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    Status {
        code: code.as_u16(),
        reason: String::new(),
        message: text,
    }
}

/// What tells one version of a token file from the next: the kubelet
/// swaps a projected token in by rename (a new inode); an edit in place
/// changes the mtime, and usually the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: std::os::unix::fs::MetadataExt::ino(meta),
        }
    }
}

/// A bearer token read from a file, and read again when the file changed:
/// one `stat` at most every `recheck`. When the file is gone or empty the
/// last good token stays (client-go's `cachingTokenSource` does the same).
struct TokenFile {
    path: PathBuf,
    recheck: Duration,
    state: Mutex<TokenState>,
}

struct TokenState {
    header: String,
    stamp: Option<Stamp>,
    checked: Instant,
}

impl TokenFile {
    fn new(path: PathBuf, recheck: Duration) -> Result<TokenFile> {
        let stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
        let header = format!("Bearer {}", read_token(&path, "token file")?);
        Ok(TokenFile {
            path,
            recheck,
            state: Mutex::new(TokenState {
                header,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The `Authorization` header value, read again if the file changed.
    fn header(&self) -> String {
        // A panic while holding it cannot leave the state half-written:
        // each field is replaced whole.
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if st.checked.elapsed() >= self.recheck {
            st.checked = Instant::now();
            if let Ok(meta) = std::fs::metadata(&self.path) {
                let stamp = Stamp::of(&meta);
                if st.stamp != Some(stamp)
                    && let Ok(token) = read_token(&self.path, "token file")
                {
                    st.header = format!("Bearer {token}");
                    st.stamp = Some(stamp);
                    log::debug!("token read again path={}", self.path.display());
                }
            }
        }
        st.header.clone()
    }
}

/// ureq's key from a rustls-pki-types key. ureq 3.5 has
/// `PrivateKey::from_der(KeyKind, ..)` but does not export `KeyKind`, so the
/// key goes over as PEM, whose label names its kind.
fn ureq_key(key: &PrivateKeyDer<'_>) -> std::result::Result<PrivateKey<'static>, String> {
    use base64::Engine as _;
    let (label, der) = match key {
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
        _ => return Err("unsupported private key format".into()),
    };
    let pem = format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    PrivateKey::from_pem(pem.as_bytes()).map_err(|e| format!("private key: {e}"))
}

/// Checks the CA certificates and the client certificate and key with
/// rustls, as ureq will use them.
fn check_tls(config: &Config, provider: &Arc<CryptoProvider>) -> Result<()> {
    let mut roots = RootCertStore::empty();
    // One by one: ureq's `RootCerts::Specific` silently skips a CA
    // certificate it cannot parse.
    for (i, cert) in config.roots.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            Error::config(
                &config.origin,
                format!("CA certificate #{} is not usable: {e}", i + 1),
            )
        })?;
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| Error::config(&config.origin, format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    if let Some(id) = &config.identity {
        builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| {
                let mut m = format!("the client certificate and key are not usable: {e}");
                if m.contains("UnsupportedCertVersion") {
                    // webpki takes X.509 v3 only; `openssl x509 -req`
                    // without extensions makes v1, which Go accepts.
                    m.push_str(" (an X.509 v1 certificate: issue it again as v3, with extensions)");
                }
                Error::config(&config.origin, m)
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/kube");

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("kube-").tempdir().unwrap()
    }

    /// A kubeconfig for `server` with the fixture CA and this user.
    fn config(dir: &std::path::Path, server: &str, user: &str) -> Result<Config> {
        let path = dir.join("config");
        std::fs::write(
            &path,
            format!(
                "clusters: [{{name: c, cluster: {{server: '{server}', certificate-authority: {FIX}/ca.crt}}}}]\n\
                 users: [{{name: u, user: {user}}}]\n\
                 contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
            ),
        )
        .unwrap();
        Config::from_kubeconfig(&path)
    }

    #[test]
    fn test_client_certificate_checked_up_front() {
        let d = tmp();
        let good = config(
            d.path(),
            "https://k:1",
            &format!("{{client-certificate: {FIX}/client.crt, client-key: {FIX}/client.key}}"),
        )
        .unwrap();
        Client::new(good).unwrap();
        let rsa = config(
            d.path(),
            "https://k:1",
            &format!(
                "{{client-certificate: {FIX}/client-rsa.crt, client-key: {FIX}/client-rsa.key}}"
            ),
        )
        .unwrap();
        Client::new(rsa).unwrap();
        // A key that is not the certificate's: an error, not ureq's panic.
        let mismatch = config(
            d.path(),
            "https://k:1",
            &format!("{{client-certificate: {FIX}/client.crt, client-key: {FIX}/other.key}}"),
        )
        .unwrap();
        let e = Client::new(mismatch).unwrap_err().to_string();
        assert!(
            e.contains("the client certificate and key are not usable")
                && e.contains("KeyMismatch"),
            "{e}"
        );
        let v1 = config(
            d.path(),
            "https://k:1",
            &format!("{{client-certificate: {FIX}/client-v1.crt, client-key: {FIX}/client.key}}"),
        )
        .unwrap();
        let e = Client::new(v1).unwrap_err().to_string();
        assert!(e.contains("X.509 v1"), "{e}");
    }

    #[test]
    fn test_token_file_read_again_when_it_changes() {
        let d = tmp();
        let path = d.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let eager = TokenFile::new(path.clone(), Duration::ZERO).unwrap();
        let lazy = TokenFile::new(path.clone(), Duration::from_secs(3600)).unwrap();
        assert_eq!(eager.header(), "Bearer one");
        // Replaced as the kubelet does: written beside, renamed over.
        std::fs::write(d.path().join("token.new"), "two-longer\n").unwrap();
        std::fs::rename(d.path().join("token.new"), &path).unwrap();
        assert_eq!(eager.header(), "Bearer two-longer");
        assert_eq!(
            lazy.header(),
            "Bearer one",
            "not checked before its interval"
        );
        // Overwritten in place, the same length: a new inode is not needed.
        std::fs::write(&path, "three-abcd\n").unwrap();
        assert_eq!(eager.header(), "Bearer three-abcd");
        // Empty, or gone: the last good token stays.
        std::fs::write(&path, "").unwrap();
        assert_eq!(eager.header(), "Bearer three-abcd");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(eager.header(), "Bearer three-abcd");
        assert!(TokenFile::new(path, Duration::ZERO).is_err());
    }

    #[test]
    fn test_in_cluster_token_rotation() {
        let d = tmp();
        std::fs::copy(format!("{FIX}/ca.crt"), d.path().join("ca.crt")).unwrap();
        std::fs::write(d.path().join("token"), "first\n").unwrap();
        let mut config = Config::in_cluster_from(Some("10.96.0.1"), Some("443"), d.path()).unwrap();
        assert_eq!(config.token_recheck, crate::kube::DEFAULT_TOKEN_RECHECK);
        config.token_recheck = Duration::ZERO;
        let client = Client::new(config).unwrap();
        let header = |c: &Client| match &c.shared.auth {
            Auth::File(f) => f.header(),
            _ => panic!("not a token file"),
        };
        assert_eq!(header(&client), "Bearer first");
        // The projected token: ..data symlink swapped; here a rename.
        std::fs::write(d.path().join("token.tmp"), "second\n").unwrap();
        std::fs::rename(d.path().join("token.tmp"), d.path().join("token")).unwrap();
        assert_eq!(header(&client.clone()), "Bearer second");
    }

    #[test]
    fn test_error_status_from_any_body() {
        let s = error_status(
            StatusCode::CONFLICT,
            br#"{"kind":"Status","status":"Failure","reason":"Conflict","message":"modified","code":409}"#,
        );
        assert_eq!(
            (s.code, s.reason.as_str(), s.message.as_str()),
            (409, "Conflict", "modified")
        );
        // A Status without a code takes the response's.
        let s = error_status(
            StatusCode::NOT_FOUND,
            br#"{"kind":"Status","reason":"NotFound"}"#,
        );
        assert_eq!(s.code, 404);
        let s = error_status(StatusCode::BAD_GATEWAY, b"<html>\nbad gateway\n</html>\n");
        assert_eq!(s.code, 502);
        assert_eq!(s.reason, "");
        assert_eq!(s.message, "<html> bad gateway </html>");
        let long = "é".repeat(400);
        let s = error_status(StatusCode::INTERNAL_SERVER_ERROR, long.as_bytes());
        assert!(s.message.ends_with("...") && s.message.len() <= MAX_ERROR_BODY + 3);
    }

    #[test]
    fn test_bad_paths_and_counters() {
        let d = tmp();
        let client =
            Client::new(config(d.path(), "https://127.0.0.1:1", "{token: t}").unwrap()).unwrap();
        let e = client.get("api/v1").unwrap_err();
        assert!(matches!(e, Error::Request { .. }), "{e:?}");
        let e = client.get("/api/v1 x").unwrap_err();
        assert!(matches!(e, Error::Request { .. }), "{e:?}");
        let e = client.served_versions("a/b").unwrap_err();
        assert!(matches!(e, Error::Request { .. }), "{e:?}");
        // Port 1 on loopback: refused at once.
        let clone = client.clone();
        let e = clone.delete("/api/v1/namespaces/x").unwrap_err();
        assert!(e.is_transport() && !e.is_timeout(), "{e:?}");
        assert!(e.to_string().contains("refused the connection"), "{e}");
        assert_eq!(
            client.requests(),
            (0, 1),
            "only what was sent; shared between clones"
        );
    }

    #[test]
    fn test_timeouts() {
        // Accepts the TCP connection, never speaks TLS: the handshake
        // counts in the connect timeout.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let hold = std::thread::spawn(move || {
            let (mut conn, _) = silent.accept().unwrap();
            // Takes the ClientHello and waits for the client to give up.
            let _ = std::io::copy(&mut conn, &mut std::io::sink());
        });
        let d = tmp();
        let client = Client::new(
            config(d.path(), &format!("https://127.0.0.1:{port}"), "{token: t}").unwrap(),
        )
        .unwrap()
        .with_timeout(Duration::from_millis(300));
        assert_eq!(client.timeout(), Duration::from_millis(300));
        let started = Instant::now();
        let e = client.get("/version").unwrap_err();
        let took = started.elapsed();
        assert!(e.is_timeout() && e.is_transport(), "{e:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(e.to_string().contains("within 0.3 s"), "{e}");
        drop(client);
        hold.join().unwrap();
    }
}
