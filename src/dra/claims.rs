//! The `dra-claims` thread: prepares and unprepares the kubelet's claims.
//! The gRPC handlers (on grpcio's poll thread, which must not block) hand
//! each NodePrepareResources and NodeUnprepareResources call here as a
//! [`Job`]; this thread reads the claims from the API server, answers
//! from the checkpoint, writes it, and replies.
//!
//! Prepare, per claim: a claim already prepared answers what it answered
//! before, with no API call (so it works while the API server is away);
//! otherwise the claim is read, its UID must be the one the kubelet asked
//! for (else it was replaced), its allocation's results of other drivers
//! are ignored, each of ours must name a healthy device of this node's
//! pool, and the answer is the CDI name of each device's node, recorded in
//! the checkpoint before it is sent. Unprepare forgets the claim; one not
//! prepared (or unknown) succeeds. Every claim gets its own answer: one
//! that fails does not fail the others.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use crossbeam_channel::{Receiver, select};
use serde_json::Value;

use super::{
    Context,
    checkpoint::{Checkpoint, PreparedClaim, PreparedDevice},
    names,
    slices::ApiVersion,
};
use crate::{error::Result, inventory::Resource, kube::Client, thread::spawn_named};

/// A claim as the kubelet names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRef {
    /// Its namespace.
    pub namespace: String,
    /// Its UID, which keys every answer.
    pub uid: String,
    /// Its name.
    pub name: String,
}

/// The answer to one claim of a Prepare.
pub type Prepared = std::result::Result<Vec<PreparedDevice>, String>;
/// Replies to a Prepare: the answer of each claim, by UID.
pub type PrepareReply = Box<dyn FnOnce(Vec<(String, Prepared)>) + Send>;
/// Replies to an Unprepare: the answer of each claim, by UID.
pub type UnprepareReply = Box<dyn FnOnce(Vec<(String, std::result::Result<(), String>)>) + Send>;

/// Work for the `dra-claims` thread.
pub enum Job {
    /// NodePrepareResources.
    Prepare(Vec<ClaimRef>, PrepareReply),
    /// NodeUnprepareResources.
    Unprepare(Vec<ClaimRef>, UnprepareReply),
    /// The resources now (after a config reload).
    Resources(Vec<Resource>),
}

/// What `status` shows of the prepared claims.
pub type Shown = Arc<Mutex<BTreeMap<String, PreparedClaim>>>;

/// The thread's state.
struct Claims {
    driver: String,
    node: String,
    client: Client,
    version: Option<ApiVersion>,
    resources: Vec<Resource>,
    checkpoint: Checkpoint,
    shown: Shown,
}

/// Starts the `dra-claims` thread; it runs until `stop` is dropped.
pub fn spawn(
    ctx: Context,
    checkpoint: Checkpoint,
    shown: Shown,
    jobs: Receiver<Job>,
    stop: Receiver<()>,
) -> Result<JoinHandle<()>> {
    *shown.lock().expect("claims lock poisoned") = checkpoint.claims().clone();
    let exits = ctx.exits.clone();
    let mut claims = Claims {
        driver: ctx.driver,
        node: ctx.node,
        client: ctx.client,
        version: None,
        resources: ctx.resources,
        checkpoint,
        shown,
    };
    spawn_named("dra-claims", exits, move || {
        loop {
            select! {
                recv(jobs) -> job => match job {
                    Ok(job) => claims.run(job),
                    Err(_) => return Ok(()),
                },
                recv(stop) -> _ => return Ok(()),
            }
        }
    })
}

impl Claims {
    fn run(&mut self, job: Job) {
        match job {
            Job::Prepare(claims, reply) => {
                let answers = claims
                    .iter()
                    .map(|c| (c.uid.clone(), self.prepare(c)))
                    .collect();
                reply(answers);
            }
            Job::Unprepare(claims, reply) => {
                let answers = claims
                    .iter()
                    .map(|c| (c.uid.clone(), self.unprepare(c)))
                    .collect();
                reply(answers);
            }
            Job::Resources(resources) => self.resources = resources,
        }
        *self.shown.lock().expect("claims lock poisoned") = self.checkpoint.claims().clone();
    }

    fn prepare(&mut self, c: &ClaimRef) -> Prepared {
        if let Some(done) = self.checkpoint.get(&c.uid) {
            log::debug!(
                "claim already prepared claim={}/{} uid={}",
                c.namespace,
                c.name,
                c.uid
            );
            return Ok(done.devices.clone());
        }
        let result = self.read_and_prepare(c);
        match &result {
            Ok(devices) => log::info!(
                "claim prepared claim={}/{} uid={} devices={}",
                c.namespace,
                c.name,
                c.uid,
                devices
                    .iter()
                    .map(|d| d.device.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => log::warn!(
                "claim not prepared claim={}/{} uid={}: {e}",
                c.namespace,
                c.name,
                c.uid
            ),
        }
        result
    }

    fn client(&mut self) -> std::result::Result<(Client, ApiVersion), String> {
        let client = self.client.clone();
        if self.version.is_none() {
            let served = client
                .served_versions("resource.k8s.io")
                .map_err(|e| e.to_string())?;
            self.version = Some(ApiVersion::newest(&served).ok_or_else(|| {
                format!("the API server serves no resource.k8s.io version this driver speaks (v1, v1beta1): {served:?}")
            })?);
        }
        Ok((client, self.version.expect("just set")))
    }

    fn read_and_prepare(&mut self, c: &ClaimRef) -> Prepared {
        let (client, version) = self.client()?;
        let path = format!(
            "/apis/resource.k8s.io/{}/namespaces/{}/resourceclaims/{}",
            version.as_str(),
            c.namespace,
            c.name
        );
        let claim = client
            .get(&path)
            .map_err(|e| format!("cannot read claim {}/{}: {e}", c.namespace, c.name))?;
        let uid = claim["metadata"]["uid"].as_str().unwrap_or_default();
        if uid != c.uid {
            return Err(format!(
                "claim {}/{} has UID {uid:?}, not {:?}: it was deleted and made anew",
                c.namespace, c.name, c.uid
            ));
        }
        let devices = self.devices_of(&claim)?;
        let pods = claim["status"]["reservedFor"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        let prepared = PreparedClaim {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            pods,
            devices: devices.clone(),
        };
        self.checkpoint
            .insert(&c.uid, prepared)
            .map_err(|e| crate::error::chain(&e))?;
        Ok(devices)
    }

    /// The devices of this driver that `claim`'s allocation names.
    fn devices_of(&self, claim: &Value) -> Prepared {
        let results = claim["status"]["allocation"]["devices"]["results"]
            .as_array()
            .ok_or("the claim is not allocated")?;
        let ours = names::devices(&self.resources);
        let mut out: Vec<PreparedDevice> = Vec::new();
        for r in results
            .iter()
            .filter(|r| r["driver"] == self.driver.as_str())
        {
            let (pool, device) = (
                r["pool"].as_str().unwrap_or_default(),
                r["device"].as_str().unwrap_or_default(),
            );
            if pool != self.node {
                return Err(format!(
                    "device {pool}/{device}: pool {pool:?} is not this node's ({:?})",
                    self.node
                ));
            }
            let d = ours.iter().find(|d| d.name == device).ok_or_else(|| {
                format!("device {device:?} is no device of this driver on this node")
            })?;
            if let Some(why) = d.device.health.reason() {
                return Err(format!("device {device} is unhealthy: {why}"));
            }
            // A request of a list of alternatives is `request/subrequest`;
            // the kubelet matches the containers' requests by the first part.
            let request = r["request"]
                .as_str()
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            match out.iter_mut().find(|p| p.device == device) {
                Some(p) if !p.request_names.contains(&request) => p.request_names.push(request),
                Some(_) => {}
                None => out.push(PreparedDevice {
                    request_names: vec![request],
                    pool: pool.to_string(),
                    device: device.to_string(),
                    cdi_device_ids: vec![d.cdi_id()],
                }),
            }
        }
        Ok(out)
    }

    fn unprepare(&mut self, c: &ClaimRef) -> std::result::Result<(), String> {
        match self.checkpoint.remove(&c.uid) {
            Ok(true) => {
                log::info!(
                    "claim unprepared claim={}/{} uid={}",
                    c.namespace,
                    c.name,
                    c.uid
                );
                Ok(())
            }
            Ok(false) => {
                log::info!(
                    "claim unprepared (was not prepared here) claim={}/{} uid={}",
                    c.namespace,
                    c.name,
                    c.uid
                );
                Ok(())
            }
            Err(e) => Err(crate::error::chain(&e)),
        }
    }
}
