//! Metrics in the Prometheus text format: the counters and gauges of every
//! resource, kept here and rendered on demand (the families), and the
//! `metrics` thread ([`export`]) that writes them to `--metrics-file` (the
//! node_exporter textfile collector's convention) and serves them on
//! `--metrics-listen` (`GET /metrics`, `GET /healthz`).
//!
//! Whoever changes a figure (the health thread, a front end, the gRPC
//! handlers) calls a method of [`Metrics`], which wakes the `metrics`
//! thread through a pipe. Device health is read from the resources' own
//! snapshots when rendering, so no copy of a device list is kept here.
//!
//! The reason of an unhealthy device is a separate info metric,
//! `kubelet_plugin_device_unhealthy_reason{resource,device,reason} 1`,
//! rather than a label of `device_healthy`: a label that changes value
//! starts a new series, which would break `device_healthy`'s history and
//! every rate or alert on it; the info metric keeps the last reason, also
//! after the device recovered, for "why did it flap".

pub mod export;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::SystemTime,
};

pub use export::{Exporter, Outputs};

use crate::{
    inventory::{self, Resource as InventoryResource, device::Device},
    wake::Kicker,
    watch::Watch,
};

#[derive(Debug, Default)]
struct Resource {
    snapshot: Option<Arc<Watch<Vec<Device>>>>,
    registrations: u64,
    register_failures: u64,
    allocations: u64,
    allocation_errors: BTreeMap<String, u64>,
    health_changes: u64,
    /// The reason code of each device's last Unhealthy.
    last_reason: BTreeMap<String, &'static str>,
}

#[derive(Debug, Default)]
struct State {
    resources: BTreeMap<String, Resource>,
    kubelet_restarts: u64,
}

/// The figures of the running plugins.
#[derive(Debug)]
pub struct Metrics {
    state: Mutex<State>,
    start_time: f64,
    /// Wakes the `metrics` thread, once it runs.
    wake: Mutex<Option<Kicker>>,
}

impl Metrics {
    /// Empty figures, the start time now.
    pub fn new() -> Arc<Metrics> {
        let start_time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Arc::new(Metrics {
            state: Mutex::default(),
            start_time,
            wake: Mutex::default(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("metrics lock poisoned"));
        if let Some(kicker) = &*self.wake.lock().expect("metrics lock poisoned") {
            kicker.kick();
        }
    }

    fn resource<'a>(state: &'a mut State, resource: &str) -> &'a mut Resource {
        state.resources.entry(resource.to_string()).or_default()
    }

    /// A plugin and its device snapshot.
    pub fn add_resource(&self, resource: &str, snapshot: Arc<Watch<Vec<Device>>>) {
        self.update(|s| Metrics::resource(s, resource).snapshot = Some(snapshot));
    }

    /// A plugin no longer run: its figures go.
    pub fn remove_resource(&self, resource: &str) {
        self.update(|s| {
            s.resources.remove(resource);
        });
    }

    /// A registration the kubelet accepted.
    pub fn registered(&self, resource: &str) {
        self.update(|s| Metrics::resource(s, resource).registrations += 1);
    }

    /// A registration that failed.
    pub fn register_failed(&self, resource: &str) {
        self.update(|s| Metrics::resource(s, resource).register_failures += 1);
    }

    /// A kubelet restart seen.
    pub fn kubelet_restarted(&self) {
        self.update(|s| s.kubelet_restarts += 1);
    }

    /// An Allocate answered.
    pub fn allocated(&self, resource: &str) {
        self.update(|s| Metrics::resource(s, resource).allocations += 1);
    }

    /// An Allocate refused with gRPC status `code`.
    pub fn allocation_failed(&self, resource: &str, code: &str) {
        self.update(|s| {
            *Metrics::resource(s, resource)
                .allocation_errors
                .entry(code.to_string())
                .or_default() += 1;
        });
    }

    /// Devices whose health changed (the snapshot holds their new health).
    pub fn health_changed(&self, resource: &str, changed: &[&Device]) {
        self.update(|s| {
            let r = Metrics::resource(s, resource);
            r.health_changes += changed.len() as u64;
            for d in changed {
                if let Some(why) = d.health.reason() {
                    r.last_reason.insert(d.id.clone(), why.code());
                }
            }
        });
    }

    /// Everything in the Prometheus text format (HELP and TYPE lines, no
    /// timestamps, a newline at the end).
    pub fn render(&self) -> String {
        let state = self.state.lock().expect("metrics lock poisoned");
        let mut out = String::new();
        self.render_process(&state, &mut out);
        render_devices(&state, &mut out);
        render_counters(&state, &mut out);
        out
    }

    /// The families of the process itself.
    fn render_process(&self, state: &State, out: &mut String) {
        family(
            out,
            "build_info",
            "gauge",
            "The running kubelet-plugin's version.",
            &[(labels(&[("version", crate::VERSION)]), "1".into())],
        );
        family(
            out,
            "start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
            &[(String::new(), format!("{:.3}", self.start_time))],
        );
        family(
            out,
            "kubelet_restarts_total",
            "counter",
            "Kubelet restarts seen (a new kubelet.sock).",
            &[(String::new(), state.kubelet_restarts.to_string())],
        );
    }
}

/// The inventory's changes, as figures.
impl inventory::Listener for Metrics {
    fn added(&self, resource: &InventoryResource) {
        self.add_resource(resource.name(), resource.devices.clone());
    }

    fn removed(&self, name: &str) {
        self.remove_resource(name);
    }

    fn health_changed(&self, name: &str, changed: &[&Device]) {
        Metrics::health_changed(self, name, changed);
    }
}

/// Writes one family: its HELP and TYPE lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP kubelet_plugin_{name} {help}");
    let _ = writeln!(out, "# TYPE kubelet_plugin_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "kubelet_plugin_{name}{labels} {value}");
    }
}

/// The samples `f` gives for each resource, in name order.
fn per(state: &State, f: &dyn Fn(&str, &Resource) -> Samples) -> Samples {
    state
        .resources
        .iter()
        .flat_map(|(name, r)| f(name, r))
        .collect()
}

/// A resource's devices as its snapshot has them now.
fn devices(r: &Resource) -> Arc<Vec<Device>> {
    r.snapshot.as_ref().map(|s| s.get()).unwrap_or_default()
}

/// The families of device health, read from the snapshots.
fn render_devices(state: &State, out: &mut String) {
    family(
        out,
        "device_healthy",
        "gauge",
        "Whether a device is healthy (1) or not (0), as the kubelet is told.",
        &per(state, &|name, r| {
            devices(r)
                .iter()
                .map(|d| {
                    (
                        labels(&[("resource", name), ("device", &d.id)]),
                        u8::from(d.health.is_healthy()).to_string(),
                    )
                })
                .collect()
        }),
    );
    family(
        out,
        "device_unhealthy_reason",
        "gauge",
        "The reason of a device's last Unhealthy (missing, symlink, not_a_device, wrong_type, wrong_number, stat_failed, open_failed); always 1.",
        &per(state, &|name, r| {
            r.last_reason
                .iter()
                .map(|(id, why)| {
                    (
                        labels(&[("resource", name), ("device", id), ("reason", why)]),
                        "1".into(),
                    )
                })
                .collect()
        }),
    );
    family(
        out,
        "devices",
        "gauge",
        "Devices of a resource by health.",
        &per(state, &|name, r| {
            let list = devices(r);
            let healthy = list.iter().filter(|d| d.health.is_healthy()).count();
            vec![
                (
                    labels(&[("resource", name), ("state", "healthy")]),
                    healthy.to_string(),
                ),
                (
                    labels(&[("resource", name), ("state", "unhealthy")]),
                    (list.len() - healthy).to_string(),
                ),
            ]
        }),
    );
}

/// The counters of each resource.
fn render_counters(state: &State, out: &mut String) {
    let counter = |get: fn(&Resource) -> u64| {
        move |name: &str, r: &Resource| vec![(labels(&[("resource", name)]), get(r).to_string())]
    };
    for (name, help, get) in [
        (
            "registrations_total",
            "Registrations the kubelet accepted.",
            (|r| r.registrations) as fn(&Resource) -> u64,
        ),
        (
            "register_failures_total",
            "Registrations that failed.",
            |r| r.register_failures,
        ),
        ("allocations_total", "Allocate calls answered.", |r| {
            r.allocations
        }),
    ] {
        family(out, name, "counter", help, &per(state, &counter(get)));
    }
    family(
        out,
        "allocation_errors_total",
        "counter",
        "Allocate calls refused, by gRPC status code.",
        &per(state, &|name, r| {
            r.allocation_errors
                .iter()
                .map(|(code, n)| (labels(&[("resource", name), ("code", code)]), n.to_string()))
                .collect()
        }),
    );
    family(
        out,
        "health_changes_total",
        "counter",
        "Device health changes.",
        &per(state, &counter(|r| r.health_changes)),
    );
}

/// The samples of one family: labels (`{..}` or empty) and value.
type Samples = Vec<(String, String)>;

/// `{a="x",b="y"}`, the values escaped as the text format wants.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::device::{Reason, tests::device};

    #[test]
    fn test_render_has_every_family_and_the_last_reason() {
        let m = Metrics::new();
        let snapshot = Watch::new(vec![
            device("crand0", Ok(())),
            device("crand1", Err(Reason::Missing)),
        ]);
        m.add_resource("example.com/crand", snapshot.clone());
        m.registered("example.com/crand");
        m.allocation_failed("example.com/crand", "INVALID_ARGUMENT");
        let list = snapshot.get();
        m.health_changed("example.com/crand", &[&list[1]]);
        let text = m.render();
        for line in [
            "kubelet_plugin_device_healthy{resource=\"example.com/crand\",device=\"crand0\"} 1",
            "kubelet_plugin_device_healthy{resource=\"example.com/crand\",device=\"crand1\"} 0",
            "kubelet_plugin_device_unhealthy_reason{resource=\"example.com/crand\",device=\"crand1\",reason=\"missing\"} 1",
            "kubelet_plugin_devices{resource=\"example.com/crand\",state=\"unhealthy\"} 1",
            "kubelet_plugin_registrations_total{resource=\"example.com/crand\"} 1",
            "kubelet_plugin_allocation_errors_total{resource=\"example.com/crand\",code=\"INVALID_ARGUMENT\"} 1",
            "kubelet_plugin_health_changes_total{resource=\"example.com/crand\"} 1",
            "kubelet_plugin_kubelet_restarts_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with('\n'));
        assert_eq!(labels(&[("a", "x\"y\\z\nw")]), "{a=\"x\\\"y\\\\z\\nw\"}");
        // Recovered: healthy again, the last reason kept.
        snapshot.publish(vec![device("crand0", Ok(())), device("crand1", Ok(()))]);
        let text = m.render();
        assert!(text.contains("device=\"crand1\"} 1"));
        assert!(text.contains("reason=\"missing\"} 1"));
    }
}
