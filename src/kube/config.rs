//! Where the API server is and as whom to talk to it: a [`Config`] from a
//! kubeconfig file or from the pod's service account. Every certificate
//! and key is decoded and checked here, so a broken kubeconfig fails at
//! start with its file and field named, not later in a TLS handshake.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use super::{
    error::{Error, Result},
    yaml,
};

/// Where a pod's service account files are (client-go's
/// `rest.InClusterConfig`): `token`, `ca.crt`, `namespace`.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How often a token file is checked for a new token: the kubelet rotates
/// projected service account tokens well before they expire (at 80 % of
/// their life, an hour at least), so a few seconds is prompt, and one
/// `stat` per interval is cheap.
pub const DEFAULT_TOKEN_RECHECK: Duration = Duration::from_secs(5);

const IN_CLUSTER: &str = "in-cluster config";

/// The API server's address, the CA that signs its certificate, and our
/// credentials. Its `Debug` shows no secret.
#[derive(Clone)]
pub struct Config {
    /// Base URL, `https://host:port` (a path prefix is kept), no trailing
    /// slash.
    pub(super) server: String,
    /// The only certificates trusted for the server: the cluster's CA (or
    /// the server's self-signed chain).
    pub(super) roots: Vec<CertificateDer<'static>>,
    /// A client certificate (chain, leaf first) and its key.
    pub(super) identity: Option<Identity>,
    /// A bearer token.
    pub(super) token: Option<Token>,
    /// The context's (or the pod's) namespace.
    pub(super) namespace: Option<String>,
    /// How often a token file is checked for changes; zero: every request.
    pub(super) token_recheck: Duration,
    /// The kubeconfig's path or "in-cluster config", for messages.
    pub(super) origin: String,
}

/// A client certificate chain (leaf first) and its private key.
pub(super) struct Identity {
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Where the bearer token comes from.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Token {
    /// Fixed (kubeconfig `token`).
    Static(String),
    /// Read from a file, and again when it changes (kubeconfig
    /// `tokenFile`, the service account's projected token).
    File(PathBuf),
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Static(_) => f.write_str("Static(<redacted>)"),
            Token::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("ca_certificates", &self.roots.len())
            .field(
                "client_certificate",
                &self.identity.as_ref().map(|_| "<redacted key>"),
            )
            .field("token", &self.token)
            .field("namespace", &self.namespace)
            .field("token_recheck", &self.token_recheck)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Config {
    /// The kubeconfig at `path`, its `current-context`: the cluster's
    /// `server` (https only) and `certificate-authority[-data]`; the user's
    /// `token`, `tokenFile` or `client-certificate[-data]` with
    /// `client-key[-data]`. As in client-go, `*-data` wins over the file,
    /// `token` over `tokenFile`, and relative paths are taken from the
    /// kubeconfig's dir. `insecure-skip-tls-verify`, exec and
    /// auth-provider plugins, basic auth, impersonation, `proxy-url` and
    /// `tls-server-name` are refused, naming the file and the field.
    pub fn from_kubeconfig(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "", e))?;
        let doc = yaml::parse(&text).map_err(|e| {
            Error::config(
                path.display().to_string(),
                format!(
                    "invalid YAML at line {} column {}: {}",
                    e.line, e.column, e.message
                ),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Kubeconfig { path, base, doc }.resolve()
    }

    /// The pod's service account: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
    /// the CA and token of [`SERVICE_ACCOUNT_DIR`]; the token is read
    /// again when its file changes (checked at most every
    /// [`DEFAULT_TOKEN_RECHECK`]).
    pub fn in_cluster() -> Result<Config> {
        let (host, port) = service_env();
        Config::in_cluster_from(
            host.as_deref(),
            port.as_deref(),
            Path::new(SERVICE_ACCOUNT_DIR),
        )
    }

    /// As [`Config::in_cluster`], with the service host and port given and
    /// the service account files (`token`, `ca.crt`, `namespace`) in `dir`.
    pub fn in_cluster_from(host: Option<&str>, port: Option<&str>, dir: &Path) -> Result<Config> {
        let (Some(host), Some(port)) = (host, port) else {
            return Err(Error::config(
                IN_CLUSTER,
                "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not in a pod?)",
            ));
        };
        if port.parse::<u16>().is_err() {
            return Err(Error::config(
                IN_CLUSTER,
                format!("KUBERNETES_SERVICE_PORT {port:?} is not a port number"),
            ));
        }
        // An IPv6 service address needs brackets in a URL.
        let server = if host.contains(':') && !host.starts_with('[') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        };
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|e| Error::io(&ca_path, IN_CLUSTER, e))?;
        let mut config = Config::new(
            server,
            parse_certs(&ca, &ca_path.display().to_string())?,
            IN_CLUSTER.into(),
        );
        let token = dir.join("token");
        // Fails now if there is none; the client reads it again as it changes.
        read_token(&token, IN_CLUSTER)?;
        config.token = Some(Token::File(token));
        config.namespace = std::fs::read_to_string(dir.join("namespace"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Ok(config)
    }

    /// The kubeconfig at `kubeconfig` if there is one; else (none given,
    /// or no file there) the in-cluster config. When neither is there, the
    /// error says that both were tried. A kubeconfig that is there but
    /// broken is an error, never a silent fall back.
    pub fn load(kubeconfig: Option<&Path>) -> Result<Config> {
        let (host, port) = service_env();
        Config::load_from(
            kubeconfig,
            host.as_deref(),
            port.as_deref(),
            Path::new(SERVICE_ACCOUNT_DIR),
        )
    }

    fn load_from(
        kubeconfig: Option<&Path>,
        host: Option<&str>,
        port: Option<&str>,
        dir: &Path,
    ) -> Result<Config> {
        let tried = match kubeconfig {
            Some(path) => match Config::from_kubeconfig(path) {
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    format!("no kubeconfig at {}", path.display())
                }
                other => return other,
            },
            None => "no kubeconfig given".to_string(),
        };
        if host.is_none() || port.is_none() {
            return Err(Error::config(
                "API server config",
                format!(
                    "{tried}, and not in a pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)"
                ),
            ));
        }
        let config = Config::in_cluster_from(host, port, dir)?;
        log::info!("{tried}: in-cluster config server={}", config.server);
        Ok(config)
    }

    fn new(server: String, roots: Vec<CertificateDer<'static>>, origin: String) -> Config {
        Config {
            server,
            roots,
            identity: None,
            token: None,
            namespace: None,
            token_recheck: DEFAULT_TOKEN_RECHECK,
            origin,
        }
    }

    /// The API server's base URL, e.g. `https://10.96.0.1:443`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The namespace of the kubeconfig's context, or the pod's.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Where it came from: the kubeconfig's path or "in-cluster config".
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// `KUBERNETES_SERVICE_HOST` and `_PORT`, which the kubelet sets in every
/// container.
fn service_env() -> (Option<String>, Option<String>) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawCluster {
    server: Option<String>,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default, deserialize_with = "yaml::de_bool")]
    insecure_skip_tls_verify: Option<bool>,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawUser {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    username: Option<String>,
    exec: Option<Value>,
    auth_provider: Option<Value>,
    #[serde(rename = "as")]
    impersonate: Option<String>,
}

#[derive(Deserialize)]
struct RawContext {
    cluster: Option<String>,
    user: Option<String>,
    namespace: Option<String>,
}

/// A kubeconfig being resolved.
struct Kubeconfig<'a> {
    path: &'a Path,
    /// Relative file names are taken from here (the kubeconfig's dir).
    base: &'a Path,
    doc: Value,
}

/// Bytes of a certificate or key, and where they came from (for messages).
struct Material {
    bytes: Vec<u8>,
    origin: String,
}

impl Kubeconfig<'_> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::config(self.path.display().to_string(), message)
    }

    /// The `item` of the entry named `name` in the list `list`
    /// (`clusters`, `users`, `contexts`); `None` if there is no such entry.
    fn named<T: DeserializeOwned>(&self, list: &str, item: &str, name: &str) -> Result<Option<T>> {
        let entries = match self.doc.get(list) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(self.err(format!("`{list}` is not a list"))),
        };
        let Some(entry) = entries
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        else {
            return Ok(None);
        };
        let field = format!("{list}[name={name}].{item}");
        match entry.get(item) {
            None | Some(Value::Null) => Err(self.err(format!("`{field}` is missing"))),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| self.err(format!("`{field}`: {e}"))),
        }
    }

    /// A file the kubeconfig names; a relative one is in the kubeconfig's
    /// dir (client-go resolves them so).
    fn file(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            p.into()
        } else {
            self.base.join(p)
        }
    }

    /// The bytes of `<field>-data` (base64), else of the file `<field>`.
    fn material(
        &self,
        data: Option<&str>,
        file: Option<&str>,
        field: &str,
    ) -> Result<Option<Material>> {
        if let Some(d) = data.filter(|d| !d.is_empty()) {
            let origin = format!("{}: `{field}-data`", self.path.display());
            // A folded YAML scalar may break the base64 text into lines.
            let compact: String = d.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| Error::config(&origin, format!("invalid base64: {e}")))?;
            return Ok(Some(Material { bytes, origin }));
        }
        if let Some(f) = file.filter(|f| !f.is_empty()) {
            let path = self.file(f);
            let named_by = format!("`{field}` in {}", self.path.display());
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, &named_by, e))?;
            let origin = format!("{} ({named_by})", path.display());
            return Ok(Some(Material { bytes, origin }));
        }
        Ok(None)
    }

    fn resolve(&self) -> Result<Config> {
        if self.doc.is_null() {
            return Err(self.err("the file is empty"));
        }
        if !self.doc.is_object() {
            return Err(self.err("not a kubeconfig (the top level is not a mapping)"));
        }
        let Some(ctx_name) = self
            .doc
            .get("current-context")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return Err(self.err("`current-context` is not set"));
        };
        let ctx: RawContext = self
            .named("contexts", "context", ctx_name)?
            .ok_or_else(|| self.err(format!("context {ctx_name:?} not found in `contexts`")))?;
        let mut config = self.cluster(ctx_name, &ctx)?;
        config.namespace = ctx.namespace.filter(|s| !s.is_empty());
        // A context without a user is anonymous (client-go's rule).
        let Some(user_name) = ctx.user.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(config);
        };
        let user: RawUser = self.named("users", "user", user_name)?.ok_or_else(|| {
            self.err(format!(
                "user {user_name:?} (used by context {ctx_name:?}) not found in `users`"
            ))
        })?;
        self.user(user_name, user, &mut config)?;
        Ok(config)
    }

    /// The context's cluster: server and CA.
    fn cluster(&self, ctx_name: &str, ctx: &RawContext) -> Result<Config> {
        let Some(name) = ctx.cluster.as_deref().filter(|s| !s.is_empty()) else {
            return Err(self.err(format!(
                "`contexts[name={ctx_name}].context.cluster` is missing"
            )));
        };
        let cluster: RawCluster = self.named("clusters", "cluster", name)?.ok_or_else(|| {
            self.err(format!(
                "cluster {name:?} (used by context {ctx_name:?}) not found in `clusters`"
            ))
        })?;
        let field = format!("clusters[name={name}].cluster");
        let Some(server) = cluster.server.as_deref().filter(|s| !s.is_empty()) else {
            return Err(self.err(format!("`{field}.server` is missing")));
        };
        if !server.starts_with("https://") {
            return Err(self.err(format!(
                "`{field}.server` is {server:?}: only https:// servers are supported"
            )));
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Err(self.err(format!(
                "`{field}.insecure-skip-tls-verify` is true: refused, the server's certificate is \
                 always verified; set `certificate-authority` or `certificate-authority-data` instead"
            )));
        }
        for (set, what) in [
            (cluster.tls_server_name.is_some(), "tls-server-name"),
            (cluster.proxy_url.is_some(), "proxy-url"),
        ] {
            if set {
                return Err(self.err(format!("`{field}.{what}` is not supported")));
            }
        }
        let Some(ca) = self.material(
            cluster.certificate_authority_data.as_deref(),
            cluster.certificate_authority.as_deref(),
            &format!("{field}.certificate-authority"),
        )?
        else {
            return Err(self.err(format!(
                "`{field}` has neither `certificate-authority` nor `certificate-authority-data`: \
                 only the cluster's CA is trusted, never the system's roots"
            )));
        };
        Ok(Config::new(
            server.trim_end_matches('/').to_string(),
            parse_certs(&ca.bytes, &ca.origin)?,
            self.path.display().to_string(),
        ))
    }

    /// The user's credentials into `config`.
    fn user(&self, name: &str, user: RawUser, config: &mut Config) -> Result<()> {
        let field = format!("users[name={name}].user");
        for (set, what) in [
            (user.exec.is_some(), "exec (credential plugins)"),
            (user.auth_provider.is_some(), "auth-provider"),
            (user.username.is_some(), "username/password (basic auth)"),
            (user.impersonate.is_some(), "as (impersonation)"),
        ] {
            if set {
                return Err(self.err(format!("`{field}` uses {what}, which is not supported")));
            }
        }
        if let Some(t) = user
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            config.token = Some(Token::Static(t.to_string()));
        } else if let Some(f) = user.token_file.as_deref().filter(|f| !f.is_empty()) {
            let path = self.file(f);
            read_token(
                &path,
                &format!("`{field}.tokenFile` in {}", self.path.display()),
            )?;
            config.token = Some(Token::File(path));
        }
        let cert = self.material(
            user.client_certificate_data.as_deref(),
            user.client_certificate.as_deref(),
            &format!("{field}.client-certificate"),
        )?;
        let key = self.material(
            user.client_key_data.as_deref(),
            user.client_key.as_deref(),
            &format!("{field}.client-key"),
        )?;
        match (cert, key) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(self.err(format!(
                    "`{field}` has a client certificate but no `client-key[-data]`"
                )));
            }
            (None, Some(_)) => {
                return Err(self.err(format!(
                    "`{field}` has a client key but no `client-certificate[-data]`"
                )));
            }
            (Some(cert), Some(key)) => {
                config.identity = Some(Identity {
                    chain: parse_certs(&cert.bytes, &cert.origin)?,
                    key: parse_key(&key.bytes, &key.origin)?,
                });
            }
        }
        if config.token.is_none() && config.identity.is_none() {
            return Err(self.err(format!(
                "`{field}` has no credentials this client can use (token, tokenFile, client certificate)"
            )));
        }
        Ok(())
    }
}

/// The token in the file at `path`, without the whitespace around it
/// (a trailing newline); an empty file is an error. `named_by`: who named
/// the file, for messages.
pub(super) fn read_token(path: &Path, named_by: &str) -> Result<String> {
    let raw = std::fs::read_to_string(path).map_err(|e| Error::io(path, named_by, e))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(Error::config(
            path.display().to_string(),
            format!("the token file is empty ({named_by})"),
        ));
    }
    Ok(token.to_string())
}

/// Every certificate of a PEM bundle; at least one.
fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::config(origin, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config(
            origin,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#1 (RSA), PKCS#8 or SEC1 (EC).
fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            Error::config(origin, "no PEM private key found")
        }
        e => Error::config(origin, format!("invalid PEM private key: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/kube");

    fn fixture(name: &str) -> String {
        format!("{FIX}/{name}")
    }

    fn b64(name: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(fixture(name)).unwrap())
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("kube-").tempdir().unwrap()
    }

    fn load(dir: &Path, text: &str) -> Result<Config> {
        let path = dir.join("config");
        std::fs::write(&path, text).unwrap();
        Config::from_kubeconfig(&path)
    }

    fn err(dir: &Path, text: &str) -> String {
        load(dir, text).expect_err("an error").to_string()
    }

    /// A block-style kubeconfig with these cluster and user lines.
    fn block(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster:\n{cluster}\n\
             users:\n- name: u1\n  user:\n{user}\ncontexts:\n- name: ctx\n  context:\n    \
             cluster: c1\n    user: u1\n    namespace: team-a\ncurrent-context: ctx\n"
        )
    }

    #[test]
    fn test_block_and_flow_style_agree() {
        let d = tmp();
        let ca = b64("ca.crt");
        let a = load(
            d.path(),
            &block(
                &format!(
                    "    server: https://10.0.0.1:6443/\n    certificate-authority-data: {ca}"
                ),
                "    token: 0123456789abcdef",
            ),
        )
        .unwrap();
        let b = load(
            d.path(),
            &format!(
                "{{apiVersion: v1, kind: Config, current-context: ctx,\n clusters: [{{name: c1, \
                 cluster: {{server: \"https://10.0.0.1:6443/\", certificate-authority-data: \
                 \"{ca}\"}}}}],\n users: [{{name: u1, user: {{token: '0123456789abcdef'}}}}],\n \
                 contexts: [{{name: ctx, context: {{cluster: c1, user: u1, namespace: team-a}}}}]}}\n"
            ),
        )
        .unwrap();
        for c in [&a, &b] {
            assert_eq!(c.server(), "https://10.0.0.1:6443");
            assert_eq!(c.roots.len(), 1);
            assert_eq!(c.namespace(), Some("team-a"));
            // A leading zero stays: the token is text, never the number.
            assert_eq!(c.token, Some(Token::Static("0123456789abcdef".into())));
            assert!(c.identity.is_none());
        }
        assert_eq!(a.roots, b.roots);
    }

    #[test]
    fn test_relative_paths_and_files() {
        let d = tmp();
        std::fs::create_dir(d.path().join("pki")).unwrap();
        for f in ["ca.crt", "client.crt", "client.key"] {
            std::fs::copy(fixture(f), d.path().join("pki").join(f)).unwrap();
        }
        std::fs::write(d.path().join("tok"), "file-token\n").unwrap();
        let c = load(
            d.path(),
            &block(
                "    server: https://k:6443\n    certificate-authority: pki/ca.crt",
                "    client-certificate: pki/client.crt\n    client-key: ./pki/client.key\n    \
                 tokenFile: tok",
            ),
        )
        .unwrap();
        assert_eq!(c.identity.as_ref().unwrap().chain.len(), 1);
        assert_eq!(c.token, Some(Token::File(d.path().join("tok"))));
        // A token wins over a tokenFile.
        let c = load(
            d.path(),
            &block(
                "    server: https://k:6443\n    certificate-authority: pki/ca.crt",
                "    token: t1\n    tokenFile: tok",
            ),
        )
        .unwrap();
        assert_eq!(c.token, Some(Token::Static("t1".into())));
    }

    #[test]
    fn test_data_wins_over_file() {
        let d = tmp();
        let c = load(
            d.path(),
            &block(
                &format!(
                    "    server: https://k\n    certificate-authority: /nonexistent/ca.crt\n    \
                     certificate-authority-data: {}",
                    b64("ca.crt")
                ),
                &format!(
                    "    client-certificate: /nonexistent/c.crt\n    client-certificate-data: {}\n    \
                     client-key: /nonexistent/c.key\n    client-key-data: {}",
                    b64("client.crt"),
                    b64("client-sec1.key")
                ),
            ),
        )
        .unwrap();
        assert!(matches!(
            c.identity.as_ref().unwrap().key,
            PrivateKeyDer::Sec1(_)
        ));
        assert!(c.token.is_none());
    }

    #[test]
    fn test_key_formats() {
        for (file, pkcs) in [
            ("client.key", "pkcs8"),
            ("client-sec1.key", "sec1"),
            ("client-rsa.key", "pkcs1"),
        ] {
            let key = parse_key(&std::fs::read(fixture(file)).unwrap(), file).unwrap();
            let got = match key {
                PrivateKeyDer::Pkcs1(_) => "pkcs1",
                PrivateKeyDer::Pkcs8(_) => "pkcs8",
                PrivateKeyDer::Sec1(_) => "sec1",
                _ => "other",
            };
            assert_eq!(got, pkcs, "{file}");
        }
        let e = parse_key(&std::fs::read(fixture("ca.crt")).unwrap(), "x").unwrap_err();
        assert!(e.to_string().contains("no PEM private key"), "{e}");
    }

    #[test]
    fn test_errors_name_the_file_and_field() {
        let d = tmp();
        let path = d.path().join("config").display().to_string();
        let ca = format!("    certificate-authority: {}", fixture("ca.crt"));
        let srv = format!("    server: https://k\n{ca}");
        let cases: Vec<(String, &str)> = vec![
            (
                block("    certificate-authority-data: eA==", "    token: t"),
                "`clusters[name=c1].cluster.server` is missing",
            ),
            (
                block(&format!("{srv}\n    insecure-skip-tls-verify: true"), "    token: t"),
                "`clusters[name=c1].cluster.insecure-skip-tls-verify` is true: refused",
            ),
            (
                block("    server: https://k\n    insecure-skip-tls-verify: yes", "    token: t"),
                "insecure-skip-tls-verify` is true: refused",
            ),
            (
                block("    server: https://k", "    token: t"),
                "has neither `certificate-authority` nor `certificate-authority-data`",
            ),
            (
                block(&format!("    server: http://k\n{ca}"), "    token: t"),
                "only https:// servers",
            ),
            (
                block(&format!("{srv}\n    proxy-url: http://p"), "    token: t"),
                "`clusters[name=c1].cluster.proxy-url` is not supported",
            ),
            (
                block(&srv, "    exec: {command: aws}"),
                "`users[name=u1].user` uses exec (credential plugins)",
            ),
            (
                block(&srv, "    username: a\n    password: b"),
                "basic auth",
            ),
            (
                block(&srv, &format!("    client-certificate: {}", fixture("client.crt"))),
                "no `client-key[-data]`",
            ),
            (
                block(&srv, &format!("    client-key: {}", fixture("client.key"))),
                "no `client-certificate[-data]`",
            ),
            (block(&srv, "    {}"), "no credentials this client can use"),
            (
                block(&srv, "    token: t").replace("current-context: ctx", ""),
                "`current-context` is not set",
            ),
            (
                block(&srv, "    token: t").replace("current-context: ctx", "current-context: x"),
                "context \"x\" not found in `contexts`",
            ),
            (
                block(&srv, "    token: t").replace("cluster: c1\n    user", "cluster: c9\n    user"),
                "cluster \"c9\" (used by context \"ctx\") not found",
            ),
            (
                block(&srv, "    token: t").replace("user: u1", "user: u9"),
                "user \"u9\" (used by context \"ctx\") not found",
            ),
            (
                "clusters: [{name: c1, cluster: {server: [1]}}]\ncontexts: [{name: ctx, context: \
                 {cluster: c1}}]\ncurrent-context: ctx\n"
                    .into(),
                "`clusters[name=c1].cluster`: invalid type",
            ),
            (
                "clusters: [{name: c1}]\ncontexts: [{name: ctx, context: {cluster: c1}}]\n\
                 current-context: ctx\n"
                    .into(),
                "`clusters[name=c1].cluster` is missing",
            ),
            (
                "clusters: {}\ncontexts: [{name: ctx, context: {cluster: c1}}]\ncurrent-context: ctx\n"
                    .into(),
                "`clusters` is not a list",
            ),
            (
                block("    server: https://k\n    certificate-authority-data: '%%%'", "    token: t"),
                "`clusters[name=c1].cluster.certificate-authority-data`: invalid base64",
            ),
            (
                block("    server: https://k\n    certificate-authority-data: aGVsbG8=", "    token: t"),
                "no PEM certificate",
            ),
            (String::new(), "the file is empty"),
            ("- a\n- b\n".into(), "not a kubeconfig"),
            ("a: [1, 2\nb: 3\n".into(), "invalid YAML at line"),
        ];
        for (text, want) in cases {
            let e = err(d.path(), &text);
            assert!(e.contains(want), "want {want:?} in: {e}");
            assert!(e.starts_with(&path), "the error names the file: {e}");
        }
        // A file it names that is not there: the file and who names it.
        let e = err(
            d.path(),
            &block(
                "    server: https://k\n    certificate-authority: nope/ca.crt",
                "    token: t",
            ),
        );
        assert_eq!(
            e,
            format!(
                "cannot read {}/nope/ca.crt (`clusters[name=c1].cluster.certificate-authority` in {path})",
                d.path().display()
            )
        );
        let e = err(d.path(), &block(&srv, "    tokenFile: /nonexistent/tok"));
        assert!(
            e.contains("/nonexistent/tok") && e.contains("`users[name=u1].user.tokenFile`"),
            "{e}"
        );
        let e = Config::from_kubeconfig(&d.path().join("missing")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    #[test]
    fn test_in_cluster_from_dir() {
        let d = tmp();
        std::fs::copy(fixture("ca.crt"), d.path().join("ca.crt")).unwrap();
        std::fs::write(d.path().join("token"), "sa-token\n").unwrap();
        std::fs::write(d.path().join("namespace"), "pod-ns\n").unwrap();
        let c = Config::in_cluster_from(Some("10.96.0.1"), Some("443"), d.path()).unwrap();
        assert_eq!(c.server(), "https://10.96.0.1:443");
        assert_eq!(c.namespace(), Some("pod-ns"));
        assert_eq!(c.origin(), "in-cluster config");
        assert_eq!(c.token, Some(Token::File(d.path().join("token"))));
        let c6 = Config::in_cluster_from(Some("fd00::1"), Some("443"), d.path()).unwrap();
        assert_eq!(c6.server(), "https://[fd00::1]:443");

        let e = Config::in_cluster_from(None, None, d.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("in-cluster config: KUBERNETES_SERVICE_HOST"),
            "{e}"
        );
        let e = Config::in_cluster_from(Some("h"), Some("x"), d.path()).unwrap_err();
        assert!(e.to_string().contains("not a port number"), "{e}");
        std::fs::write(d.path().join("token"), "  \n").unwrap();
        let e = Config::in_cluster_from(Some("h"), Some("1"), d.path()).unwrap_err();
        assert!(e.to_string().contains("the token file is empty"), "{e}");
        std::fs::remove_file(d.path().join("token")).unwrap();
        let e = Config::in_cluster_from(Some("h"), Some("1"), d.path()).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read ") && e.to_string().contains("/token"),
            "{e}"
        );
    }

    #[test]
    fn test_load_file_else_in_cluster() {
        let d = tmp();
        let sa = d.path().join("sa");
        std::fs::create_dir(&sa).unwrap();
        std::fs::copy(fixture("ca.crt"), sa.join("ca.crt")).unwrap();
        std::fs::write(sa.join("token"), "sa-token").unwrap();
        let kc = d.path().join("config");
        std::fs::write(
            &kc,
            block(
                &format!(
                    "    server: https://kc:1\n    certificate-authority: {}",
                    fixture("ca.crt")
                ),
                "    token: t",
            ),
        )
        .unwrap();
        let missing = d.path().join("missing");
        let h = Some("10.0.0.1");
        let p = Some("443");

        let c = Config::load_from(Some(&kc), h, p, &sa).unwrap();
        assert_eq!(c.server(), "https://kc:1");
        let c = Config::load_from(Some(&missing), h, p, &sa).unwrap();
        assert_eq!(c.server(), "https://10.0.0.1:443");
        let c = Config::load_from(None, h, p, &sa).unwrap();
        assert_eq!(c.origin(), "in-cluster config");

        // Neither: the error says both were tried.
        let e = Config::load_from(Some(&missing), None, None, &sa)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "API server config: no kubeconfig at {}, and not in a pod \
                 (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)",
                missing.display()
            )
        );
        let e = Config::load_from(None, None, None, &sa)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no kubeconfig given, and not in a pod"), "{e}");
        // A broken kubeconfig is its own error, not a fall back.
        std::fs::write(&kc, "current-context: x\n").unwrap();
        let e = Config::load_from(Some(&kc), h, p, &sa)
            .unwrap_err()
            .to_string();
        assert!(e.contains("context \"x\" not found"), "{e}");
    }

    #[test]
    fn test_debug_shows_no_secret() {
        let d = tmp();
        let c = load(
            d.path(),
            &block(
                &format!(
                    "    server: https://k\n    certificate-authority: {}",
                    fixture("ca.crt")
                ),
                &format!(
                    "    token: sekrit-token\n    client-certificate: {}\n    client-key-data: {}",
                    fixture("client.crt"),
                    b64("client.key")
                ),
            ),
        )
        .unwrap();
        let shown = format!("{c:?}");
        let key = std::fs::read_to_string(fixture("client.key")).unwrap();
        let key_line = key.lines().nth(1).unwrap();
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(!shown.contains(&key_line[..20]), "{shown}");
        assert!(
            shown.contains("https://k") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
