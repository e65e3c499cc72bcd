//! The `dra-publish` thread: keeps the node's pool of ResourceSlices on
//! the API server in line with the inventory. It learns at start which
//! `resource.k8s.io` version the server serves and the Node's UID (the
//! slices' owner), then writes only when our devices changed or the
//! server's slices are not what we published: no write when nothing
//! changed.
//!
//! The kubelet deletes every slice of its node when it starts (and a
//! driver's slices when the driver is gone for a while), so the slices are
//! read back after every registration (the sign of a kubelet start) and
//! once a minute; a difference is written again. An API server that cannot
//! be reached or refuses is logged once per distinct error and retried
//! with a backoff (1 s doubling to 30 s); nothing else stops.

use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, select};

use super::{
    Context, names,
    slices::{ApiVersion, Pool, Published, plan},
};
use crate::{error::Result, inventory::Resource, kube::Client, thread::spawn_named};

/// How often the slices are read back with nothing else to do.
pub const VERIFY_EVERY: Duration = Duration::from_secs(60);
/// When to read them back after a registration: the kubelet deletes the
/// node's slices at its start, which may come just after it registered us.
const AFTER_REGISTRATION: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// News for the publisher.
#[derive(Debug)]
pub enum Msg {
    /// A device changed (a snapshot was published).
    Changed,
    /// The kubelet registered us (again): read the slices back.
    Registered,
    /// The resources now (after a config reload).
    Resources(Vec<Resource>),
}

/// What `status` shows of the publishing.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The API version spoken, once known.
    pub version: Option<&'static str>,
    /// The slices as last written or read: name, generation, devices.
    pub slices: Vec<(String, i64, usize)>,
    /// Why the last attempt failed, until one succeeds.
    pub error: Option<String>,
}

/// Shared with `status`.
pub type Shown = Arc<Mutex<State>>;

struct Publisher {
    driver: String,
    node: String,
    client: Client,
    pool: Option<Pool>,
    resources: Vec<Resource>,
    /// The server's slices as we know them; `None`: read them first.
    have: Option<Vec<Published>>,
    shown: Shown,
}

/// Starts the `dra-publish` thread; it runs until `stop` is dropped.
pub fn spawn(
    ctx: Context,
    shown: Shown,
    msgs: Receiver<Msg>,
    stop: Receiver<()>,
) -> Result<JoinHandle<()>> {
    let exits = ctx.exits.clone();
    let mut p = Publisher {
        driver: ctx.driver,
        node: ctx.node,
        client: ctx.client,
        pool: None,
        resources: ctx.resources,
        have: None,
        shown,
    };
    spawn_named("dra-publish", exits, move || {
        p.run(&msgs, &stop);
        Ok(())
    })
}

impl Publisher {
    fn run(&mut self, msgs: &Receiver<Msg>, stop: &Receiver<()>) {
        let mut due = Some(Instant::now());
        let mut verify_at = vec![Instant::now() + VERIFY_EVERY];
        let mut backoff = BACKOFF_MIN;
        let mut last_error = String::new();
        loop {
            let next = due
                .into_iter()
                .chain(verify_at.iter().copied())
                .min()
                .expect("a verify is always scheduled");
            select! {
                recv(stop) -> _ => return,
                recv(msgs) -> msg => match msg {
                    Ok(msg) => self.take(msg, &mut due, &mut verify_at),
                    Err(_) => return,
                },
                default(next.saturating_duration_since(Instant::now())) => {}
            }
            // Everything that came meanwhile, at once.
            for msg in msgs.try_iter() {
                self.take(msg, &mut due, &mut verify_at);
            }
            let now = Instant::now();
            let verify = verify_at.iter().any(|at| *at <= now);
            if !verify && due.is_none_or(|at| at > now) {
                continue;
            }
            if verify {
                verify_at.retain(|at| *at > now);
                if verify_at.is_empty() {
                    verify_at.push(now + VERIFY_EVERY);
                }
                self.have = None;
            }
            match self.reconcile() {
                Ok(()) => {
                    if !last_error.is_empty() {
                        log::info!("ResourceSlices published again; the API server answers");
                        last_error.clear();
                    }
                    due = None;
                    backoff = BACKOFF_MIN;
                    self.shown.lock().expect("publish lock poisoned").error = None;
                }
                Err(e) => {
                    if e != last_error {
                        log::error!(
                            "cannot publish ResourceSlices (retrying, first in {} s): {e}",
                            backoff.as_secs()
                        );
                        last_error = e.clone();
                    }
                    self.shown.lock().expect("publish lock poisoned").error = Some(e);
                    self.have = None;
                    due = Some(now + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn take(&mut self, msg: Msg, due: &mut Option<Instant>, verify_at: &mut Vec<Instant>) {
        match msg {
            Msg::Changed => {}
            Msg::Registered => {
                let now = Instant::now();
                verify_at.extend(AFTER_REGISTRATION.iter().map(|d| now + *d));
                self.have = None;
            }
            Msg::Resources(r) => self.resources = r,
        }
        // Now, unless a retry is already waiting for its backoff.
        if due.is_none() {
            *due = Some(Instant::now());
        }
    }

    /// The client, the API version, the Node's UID: learnt once.
    fn pool(&mut self) -> std::result::Result<(Client, Pool), String> {
        let client = self.client.clone();
        if self.pool.is_none() {
            let served = client
                .served_versions("resource.k8s.io")
                .map_err(|e| e.to_string())?;
            let version = ApiVersion::newest(&served).ok_or_else(|| {
                format!(
                    "the API server serves no resource.k8s.io version this driver speaks (v1, v1beta1): {served:?}; is DynamicResourceAllocation on?"
                )
            })?;
            let node = client
                .get(&format!("/api/v1/nodes/{}", self.node))
                .map_err(|e| format!("cannot read Node {}: {e}", self.node))?;
            let uid = node["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            // Device taints: beta and on by default from 1.36
            // (DRADeviceTaints); a server that drops them anyway is noticed
            // on the first write and answered by leaving unhealthy devices
            // out instead.
            let taints = version == ApiVersion::V1
                && client
                    .server_version()
                    .map(|v| v >= (1, 36))
                    .unwrap_or(false);
            log::info!(
                "publishing ResourceSlices api=resource.k8s.io/{} node={} driver={} unhealthy_devices={}",
                version.as_str(),
                self.node,
                self.driver,
                if taints { "tainted" } else { "left out" }
            );
            self.shown.lock().expect("publish lock poisoned").version = Some(match version {
                ApiVersion::V1 => "resource.k8s.io/v1",
                ApiVersion::V1beta1 => "resource.k8s.io/v1beta1",
            });
            self.pool = Some(Pool {
                driver: self.driver.clone(),
                node: self.node.clone(),
                node_uid: uid,
                version,
                taints,
            });
        }
        Ok((client, self.pool.clone().expect("just set")))
    }

    /// Reads the slices when not known, then writes what differs.
    fn reconcile(&mut self) -> std::result::Result<(), String> {
        let (client, pool) = self.pool()?;
        if self.have.is_none() {
            let list = client.list(&pool.list_path()).map_err(|e| e.to_string())?;
            let have = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Published::from_server)
                .collect();
            self.have = Some(have);
        }
        let desired = pool.desired(&names::devices(&self.resources));
        let mut have = self.have.take().unwrap_or_default();
        let plan = plan(&pool, &desired, &have);
        if plan.is_empty() {
            self.have = Some(have);
            self.show(&have_sorted(self.have.as_deref().unwrap_or_default()));
            return Ok(());
        }
        for name in &plan.delete {
            match client.delete(&pool.path(Some(name))) {
                // A node is told 403, not 404, for a slice that is gone.
                Err(e) if !(e.is_not_found() || e.is_forbidden()) => return Err(e.to_string()),
                _ => have.retain(|p| &p.name != name),
            }
        }
        let count = desired.len();
        let writes = plan
            .create
            .iter()
            .map(|&i| (i, None))
            .chain(plan.update.iter().map(|(i, rv)| (*i, Some(rv.clone()))));
        for (i, rv) in writes {
            let mut body = pool.slice(i, count, plan.generation, &desired[i]);
            let answer = match rv {
                None => client.create(&pool.path(None), &body),
                Some(rv) => {
                    body["metadata"]["resourceVersion"] = rv.into();
                    client.update(&pool.path(Some(&pool.slice_name(i))), &body)
                }
            }
            .map_err(|e| e.to_string())?;
            let published = Published::from_server(&answer)
                .ok_or_else(|| format!("the API server answered no slice: {answer}"))?;
            if pool.taints && published.lost_taints(&desired[i]) {
                log::warn!(
                    "the API server dropped our device taints (DRADeviceTaints off?): unhealthy devices are left out of the slices instead"
                );
                if let Some(p) = self.pool.as_mut() {
                    p.taints = false;
                }
                return Err(
                    "device taints dropped by the API server; publishing again without".into(),
                );
            }
            have.retain(|p| p.name != published.name);
            have.push(published);
        }
        let devices: usize = desired.iter().map(Vec::len).sum();
        log::info!(
            "ResourceSlices published pool={} generation={} slices={count} devices={devices}",
            pool.node,
            plan.generation
        );
        self.show(&have_sorted(&have));
        self.have = Some(have);
        Ok(())
    }

    fn show(&self, have: &[Published]) {
        self.shown.lock().expect("publish lock poisoned").slices = have
            .iter()
            .map(|p| (p.name.clone(), p.generation, p.devices.len()))
            .collect();
    }
}

fn have_sorted(have: &[Published]) -> Vec<Published> {
    let mut v = have.to_vec();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}
