//! The API server client (`kubelet_plugin::kube`) against a real
//! kube-apiserver v1.36 on its own etcd: discovery and the server's
//! version; token auth (block-style kubeconfig, CA by a relative path),
//! client-certificate auth (flow style, data; RSA from files), the
//! in-cluster config; a wrong CA refused; a ConfigMap created, read,
//! listed, updated, patched and deleted, with 404, 409 and 403 typed; the
//! request counters, shared by clones on two threads. And, with no server,
//! an unreachable one failing within the timeout.
//!
//! etcd is Debian's `etcd-server` (`make test-deps` installs it; missing,
//! the test fails under `make test` and is skipped under a plain `cargo
//! test`). The API server comes from `KUBE_APISERVER`, else from the
//! `k8s-1.36` set of a `shared/realnode` kit (`REALNODE_DIR`, or beside
//! the checkout or a dir above it), unpacked once under the target dir;
//! without either the test says in one line that it is skipped (with
//! `REQUIRE_REALNODE=1`, as CI sets it when it finds the kit, it fails).
//!
//! One API server for all the checks, on ports of its own (26443, and
//! 26379/26380 for etcd, below the kernel's ephemeral ports, where a
//! leftover client connection could hold one: another suite runs a cluster
//! on 6443/2379/2380).
//! [`Cluster`] (`apiserver.rs`, shared with the DRA suite) stops both
//! processes by pid and removes their temp dir on drop, also when a check
//! fails; should the test process itself be killed, the kernel kills them
//! (`PR_SET_PDEATHSIG`) and only the temp dir (`/tmp/kp-kube-*`) stays.

use std::{
    net::TcpListener,
    path::Path,
    time::{Duration, Instant},
};

mod apiserver;
mod common;

use apiserver::{Cluster, Ports, V1_36, fixture};
use base64::Engine as _;
use kubelet_plugin::kube::{self, Client, Config, query_escape};
use serde_json::json;

const PORTS: Ports = Ports {
    apiserver: 26443,
    etcd: 26379,
    etcd_peer: 26380,
};
const APISERVER_PORT: u16 = PORTS.apiserver;
const TEST: &str = "kube API server suite";

fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

fn client(kubeconfig: &Path) -> Client {
    Client::new(Config::from_kubeconfig(kubeconfig).unwrap()).unwrap()
}

/// Who the API server takes us for (a SelfSubjectReview).
fn whoami(c: &Client) -> String {
    let review = c
        .create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .unwrap();
    review["status"]["userInfo"]["username"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn test_against_a_real_api_server() {
    let Some((etcd, apiserver)) = apiserver::binaries(TEST, V1_36) else {
        return;
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(&etcd, &apiserver, PORTS, V1_36);
    let dir = cluster.dir.path().to_path_buf();

    // Token auth, block style, the CA by a path relative to the kubeconfig.
    let admin_kc = dir.join("admin.yaml");
    std::fs::write(
        &admin_kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    \
             server: https://127.0.0.1:{APISERVER_PORT}\n    certificate-authority: serving/apiserver.crt\n\
             users:\n- name: admin\n  user:\n    token: admin-token\n\
             contexts:\n- name: admin\n  context:\n    cluster: local\n    user: admin\n    namespace: default\n\
             current-context: admin\n"
        ),
    )
    .unwrap();
    // Ready: the default namespace exists (the API server makes it once
    // it serves).
    let admin = cluster.wait_ready(&admin_kc);
    eprintln!(
        "[{:>5.1} s] API server ready",
        started.elapsed().as_secs_f64()
    );

    // Discovery and version.
    assert_eq!(admin.server_version().unwrap(), (1, 36));
    let dra = admin.served_versions("resource.k8s.io").unwrap();
    assert_eq!(dra.first().map(String::as_str), Some("v1"), "{dra:?}");
    assert_eq!(admin.served_versions("apps").unwrap(), ["v1"]);
    assert!(
        admin
            .served_versions("nope.example.com")
            .unwrap()
            .is_empty()
    );
    assert_eq!(whoami(&admin), "admin");

    // Client certificates: EC PKCS#8 as data (flow style), RSA PKCS#1 as
    // files; the CA as data.
    let ca_data = format!("certificate-authority-data: {}", b64(&cluster.ca()));
    let cert = cluster.kubeconfig(
        "cert.yaml",
        &ca_data,
        &format!(
            "client-certificate-data: {}, client-key-data: {}",
            b64(&fixture("client.crt")),
            b64(&fixture("client.key"))
        ),
    );
    assert_eq!(whoami(&client(&cert)), "kube-test-admin");
    let rsa = cluster.kubeconfig(
        "rsa.yaml",
        &ca_data,
        &format!(
            "client-certificate: {}, client-key: {}",
            fixture("client-rsa.crt").display(),
            fixture("client-rsa.key").display()
        ),
    );
    assert_eq!(whoami(&client(&rsa)), "kube-test-rsa");

    // In-cluster: the service account dir of a pod.
    let sa = dir.join("sa");
    std::fs::create_dir(&sa).unwrap();
    std::fs::copy(cluster.ca(), sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("token"), "admin-token\n").unwrap();
    let port = APISERVER_PORT.to_string();
    let in_cluster = Config::in_cluster_from(Some("127.0.0.1"), Some(&port), &sa).unwrap();
    assert_eq!(whoami(&Client::new(in_cluster).unwrap()), "admin");

    // A CA that did not sign the server's certificate: refused.
    let wrong = cluster.kubeconfig(
        "wrong-ca.yaml",
        &format!("certificate-authority: {}", fixture("ca.crt").display()),
        "token: admin-token",
    );
    let e = client(&wrong).get("/version").unwrap_err();
    assert!(e.is_transport() && !e.is_timeout(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "GET /version: TLS handshake with https://127.0.0.1:{APISERVER_PORT} failed: \
             the server's certificate is not signed by the configured CA"
        )
    );

    configmap_lifecycle(&cluster);
    counters_on_two_threads(&admin);
    drop(cluster);
    eprintln!(
        "[{:>5.1} s] stopped, temp dir removed",
        started.elapsed().as_secs_f64()
    );
    assert!(!dir.exists());
}

/// A ConfigMap created, read, listed, updated, patched and deleted, and the
/// API's errors typed on the way.
fn configmap_lifecycle(cluster: &Cluster) {
    let kc = cluster.kubeconfig(
        "lifecycle.yaml",
        &format!("certificate-authority: {}", cluster.ca().display()),
        "token: admin-token",
    );
    let c = client(&kc);
    let name = format!("kube-test-{}", std::process::id());
    let coll = "/api/v1/namespaces/default/configmaps";
    let item = format!("{coll}/{name}");
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"kube-test": name, "tier": "a"}},
        "data": {"k": "v1"},
    });

    let created = c.create(coll, &object).unwrap();
    let first_version = created["metadata"]["resourceVersion"].clone();
    assert!(first_version.is_string(), "{created}");

    let e = c.create(coll, &object).unwrap_err();
    assert!(e.is_already_exists() && !e.is_conflict(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("POST {coll}: 409 AlreadyExists: configmaps \"{name}\" already exists")
    );

    let got = c.get(&item).unwrap();
    assert_eq!(got["data"]["k"], "v1");

    let selector = query_escape(&format!("kube-test={name},tier in (a, b)"));
    let list = c.list(&format!("{coll}?labelSelector={selector}")).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["metadata"]["name"], json!(name));

    let mut changed = got.clone();
    changed["data"]["k"] = json!("v2");
    let updated = c.update(&item, &changed).unwrap();
    assert_eq!(updated["data"]["k"], "v2");
    assert_ne!(updated["metadata"]["resourceVersion"], first_version);

    // The old resourceVersion again: a conflict, not AlreadyExists.
    changed["data"]["k"] = json!("v3");
    let e = c.update(&item, &changed).unwrap_err();
    assert!(e.is_conflict() && !e.is_already_exists(), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!(
            "PUT {item}: 409 Conflict: Operation cannot be fulfilled on configmaps \"{name}\": \
             the object has been modified"
        )),
        "{e}"
    );

    let patched = c.patch(&item, &json!({"data": {"k": "v4"}})).unwrap();
    assert_eq!(patched["data"]["k"], "v4");

    // Authenticated, not allowed: 403.
    let nobody = client(&cluster.kubeconfig(
        "nobody.yaml",
        &format!("certificate-authority: {}", cluster.ca().display()),
        "token: nobody-token",
    ));
    let e = nobody.get(&item).unwrap_err();
    assert!(e.is_forbidden() && !e.is_transport(), "{e:?}");
    assert!(e.to_string().contains("User \"nobody\" cannot get"), "{e}");

    c.delete(&item).unwrap();
    let e = c.get(&item).unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("GET {item}: 404 NotFound: configmaps \"{name}\" not found")
    );
    assert!(c.delete(&item).unwrap_err().is_not_found());

    // get, list, get: 3 reads; create twice, update twice, patch, delete
    // twice: 7 writes.
    assert_eq!(c.requests(), (3, 7));
}

/// Two threads, each with its own clone: both work, and the counters are
/// the client's, shared.
fn counters_on_two_threads(admin: &Client) {
    let (reads, writes) = admin.requests();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let c = admin.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    c.get("/version").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admin.requests(), (reads + 10, writes));
}

/// No server (a closed port), and one that never speaks TLS: each fails
/// as a transport error within the timeout. Needs no API server.
#[test]
fn test_unreachable_server() {
    let dir = tempfile::Builder::new()
        .prefix("kp-kube-")
        .tempdir()
        .unwrap();
    let kubeconfig = |port: u16| {
        let path = dir.path().join(format!("{port}.yaml"));
        std::fs::write(
            &path,
            format!(
                "{{current-context: c, clusters: [{{name: l, cluster: {{server: 'https://127.0.0.1:{port}', \
                 certificate-authority: '{}'}}}}], users: [{{name: u, user: {{token: t}}}}], \
                 contexts: [{{name: c, context: {{cluster: l, user: u}}}}]}}",
                fixture("ca.crt").display()
            ),
        )
        .unwrap();
        client(&path)
    };

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let started = Instant::now();
    let e = kubeconfig(port).get("/version").unwrap_err();
    assert!(e.is_transport() && !e.is_timeout(), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(e.to_string().contains("refused the connection"), "{e}");

    // Accepts TCP, never answers: the connect timeout (TCP and TLS
    // handshake) ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let e = kubeconfig(port).get("/version").unwrap_err();
    let took = started.elapsed();
    assert!(e.is_timeout() && e.is_transport(), "{e:?}");
    assert!(
        took >= kube::CONNECT_TIMEOUT && took < kube::CONNECT_TIMEOUT + Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "GET /version: no connection to https://127.0.0.1:{port} within 2 s (TCP connect and TLS handshake)"
        )
    );
    drop(silent);
}
