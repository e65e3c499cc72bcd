//! The DevicePlugin service of one resource, for one server generation:
//! ListAndWatch streams that follow the resource's snapshot, Allocate from
//! that same snapshot, and the check that a new server answers.
//!
//! The service reads the resource's device snapshot (a [`Watch`] that
//! outlives server generations) and knows nothing of the front end's state
//! machine: it reports ListAndWatch streams opening and closing through a
//! callback. Handlers never block: the grpcio poll thread runs them.

use std::{
    path::Path,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use grpcio::{
    CallOption, ChannelBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode,
    ServerStreamingSink, UnarySink,
};

use super::{
    allocate::{self, AllocError, Injection},
    registration::options,
};
use crate::{
    api::{api, api_grpc},
    error::{Error, Result},
    event::StreamChange,
    inventory::{
        Resource,
        device::{Device, Health},
    },
    metrics::Metrics,
    rpc::{self, Gate, reply},
};

/// Called on every [`StreamChange`].
pub type OnStream = Arc<dyn Fn(StreamChange) + Send + Sync>;

/// The number of open ListAndWatch streams of one server generation, so
/// that the supervisor can wait for them to end before it drops the server.
#[derive(Debug, Default)]
pub struct Streams {
    open: Mutex<usize>,
    changed: Condvar,
}

impl Streams {
    fn change(&self, by: StreamChange) {
        let mut open = self.open.lock().expect("streams lock poisoned");
        match by {
            StreamChange::Opened => *open += 1,
            StreamChange::Closed => *open = open.saturating_sub(1),
        }
        self.changed.notify_all();
    }

    /// Waits until no stream is open, at most until `deadline`; returns
    /// how many are still open.
    pub fn wait_closed(&self, deadline: Instant) -> usize {
        let mut open = self.open.lock().expect("streams lock poisoned");
        while *open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = self
                .changed
                .wait_timeout(open, left)
                .expect("streams lock poisoned")
                .0;
        }
        *open
    }
}

/// The DevicePlugin service of one resource, for one server generation.
#[derive(Clone)]
pub struct Service {
    resource: Resource,
    gate: Arc<Gate>,
    streams: Arc<Streams>,
    injection: Injection,
    on_stream: OnStream,
    metrics: Arc<Metrics>,
}

impl Service {
    /// A service answering for `resource` from its snapshot until `gate`
    /// closes.
    pub fn new(
        resource: Resource,
        gate: Arc<Gate>,
        injection: Injection,
        on_stream: OnStream,
        metrics: Arc<Metrics>,
    ) -> Self {
        Service {
            resource,
            gate,
            streams: Arc::default(),
            injection,
            on_stream,
            metrics,
        }
    }

    /// The open streams of this service.
    pub fn streams(&self) -> Arc<Streams> {
        self.streams.clone()
    }

    fn stream_changed(&self, change: StreamChange) {
        self.streams.change(change);
        (self.on_stream)(change);
    }

    fn allocate_one(
        &self,
        ids: &[String],
    ) -> std::result::Result<api::ContainerAllocateResponse, AllocError> {
        let devices = self.resource.devices.get();
        let alloc = allocate::allocate(self.resource.name(), &devices, ids, self.injection)?;
        let mut resp = api::ContainerAllocateResponse::new();
        resp.cdi_devices = alloc
            .cdi_devices
            .into_iter()
            .map(|name| api::CDIDevice {
                name,
                ..Default::default()
            })
            .collect();
        resp.devices = alloc
            .nodes
            .into_iter()
            .map(|n| api::DeviceSpec {
                container_path: n.container_path.clone(),
                host_path: n.host_path.display().to_string(),
                // Read and write, never mknod.
                permissions: "rw".into(),
                ..Default::default()
            })
            .collect();
        Ok(resp)
    }

    /// The answer to an Allocate request: one container response per
    /// container request, in order, or the first refusal's message (sent as
    /// INVALID_ARGUMENT). The gRPC handler and the fuzz harness call this.
    pub fn allocate_response(
        &self,
        req: &api::AllocateRequest,
    ) -> std::result::Result<api::AllocateResponse, String> {
        if req.container_requests.is_empty() {
            return Err("no container requests".to_string());
        }
        let container_responses = req
            .container_requests
            .iter()
            .map(|c| self.allocate_one(&c.devices_ids).map_err(|e| e.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(api::AllocateResponse {
            container_responses,
            ..Default::default()
        })
    }
}

impl api_grpc::DevicePlugin for Service {
    fn get_device_plugin_options(
        &mut self,
        ctx: RpcContext,
        _req: api::Empty,
        sink: UnarySink<api::DevicePluginOptions>,
    ) {
        reply(&ctx, sink, Ok(options()));
    }

    fn list_and_watch(
        &mut self,
        ctx: RpcContext,
        _req: api::Empty,
        sink: ServerStreamingSink<api::ListAndWatchResponse>,
    ) {
        let resource = self.resource.name().to_string();
        log::info!("ListAndWatch opened resource={resource}");
        self.stream_changed(StreamChange::Opened);
        let this = self.clone();
        let closed_resource = resource.clone();
        let updates = self.resource.devices.subscribe();
        let message = move |devices: Arc<Vec<Device>>| {
            let healthy = devices
                .iter()
                .filter(|d| d.health == Health::Healthy)
                .count();
            log::info!(
                "device list sent resource={resource} devices={} healthy={healthy}",
                devices.len()
            );
            list_response(&devices)
        };
        let ended = rpc::follow(sink, updates, self.gate.clone(), message);
        ctx.spawn(async move {
            let ended = ended.await;
            log::info!("ListAndWatch closed resource={closed_resource} why=\"{ended}\"");
            this.stream_changed(StreamChange::Closed);
        });
    }

    fn get_preferred_allocation(
        &mut self,
        ctx: RpcContext,
        req: api::PreferredAllocationRequest,
        sink: UnarySink<api::PreferredAllocationResponse>,
    ) {
        let devices = self.resource.devices.get();
        let mut resp = api::PreferredAllocationResponse::new();
        for creq in &req.container_requests {
            resp.container_responses.push(preferred(creq, &devices));
        }
        reply(&ctx, sink, Ok(resp));
    }

    fn allocate(
        &mut self,
        ctx: RpcContext,
        req: api::AllocateRequest,
        sink: UnarySink<api::AllocateResponse>,
    ) {
        let resource = self.resource.name();
        let result = match self.allocate_response(&req) {
            Ok(resp) => {
                for (creq, cresp) in req.container_requests.iter().zip(&resp.container_responses) {
                    let cdi: Vec<_> = cresp.cdi_devices.iter().map(|c| c.name.as_str()).collect();
                    log::info!(
                        "allocated resource={resource} devices={} cdi={} specs={}",
                        creq.devices_ids.join(","),
                        cdi.join(","),
                        cresp.devices.len()
                    );
                }
                self.metrics.allocated(resource);
                Ok(resp)
            }
            Err(msg) => {
                log::warn!("allocate refused resource={resource}: {msg}");
                self.metrics.allocation_failed(resource, "INVALID_ARGUMENT");
                Err(RpcStatus::with_message(
                    RpcStatusCode::INVALID_ARGUMENT,
                    msg,
                ))
            }
        };
        reply(&ctx, sink, result);
    }

    fn pre_start_container(
        &mut self,
        ctx: RpcContext,
        _req: api::PreStartContainerRequest,
        sink: UnarySink<api::PreStartContainerResponse>,
    ) {
        // Nothing to prepare before a container starts.
        reply(&ctx, sink, Ok(api::PreStartContainerResponse::new()));
    }
}

/// The ListAndWatch message for a device list.
pub fn list_response(devices: &[Device]) -> api::ListAndWatchResponse {
    api::ListAndWatchResponse {
        devices: devices
            .iter()
            .map(|d| api::Device {
                ID: d.id.clone(),
                health: d.health.as_str().into(),
                // Only for hardware on a NUMA node: a device without
                // topology is one the topology manager may put anywhere.
                topology: d
                    .node
                    .numa
                    .map(|n| api::TopologyInfo {
                        nodes: vec![api::NUMANode {
                            ID: n.into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A preference that honours the contract (every must-include ID first,
/// then available ones, `allocation_size` in all, fewer if not enough) and
/// keeps to one NUMA node where it can: that of the must-include devices,
/// else the one with the most available devices; devices of other nodes or
/// of none only fill up what it lacks.
fn preferred(
    req: &api::ContainerPreferredAllocationRequest,
    devices: &[Device],
) -> api::ContainerPreferredAllocationResponse {
    // Looked up once per ID and per sort comparison: a map, not a scan of
    // the snapshot (a resource may have thousands of devices).
    let by_id: std::collections::HashMap<&str, Option<u32>> = devices
        .iter()
        .map(|d| (d.id.as_str(), d.node.numa))
        .collect();
    let numa = |id: &String| by_id.get(id.as_str()).copied().flatten();
    let size = usize::try_from(req.allocation_size).unwrap_or(0);
    let mut ids: Vec<String> = Vec::with_capacity(size);
    for id in &req.must_include_deviceIDs {
        if ids.len() < size && !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let mut rest: Vec<&String> = req
        .available_deviceIDs
        .iter()
        .filter(|id| !ids.contains(id))
        .collect();
    let home = ids.iter().find_map(numa).or_else(|| {
        let mut counts = std::collections::BTreeMap::<u32, usize>::new();
        for n in rest.iter().filter_map(|id| numa(id)) {
            *counts.entry(n).or_default() += 1;
        }
        // The most devices, the lowest node on a tie.
        counts
            .into_iter()
            .max_by_key(|&(n, c)| (c, std::cmp::Reverse(n)))
            .map(|(n, _)| n)
    });
    // Stable: the kubelet's order within each group is kept.
    rest.sort_by_key(|id| numa(id) != home);
    for id in rest {
        if ids.len() == size {
            break;
        }
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    api::ContainerPreferredAllocationResponse {
        deviceIDs: ids,
        ..Default::default()
    }
}

/// Checks that the DevicePlugin service at `path` answers a call within
/// `timeout`, without blocking the caller: `done` gets the outcome on
/// grpcio's poll thread (so it must not block). The kubelet dials back
/// inside Register, so we register only once our own socket answers.
pub fn check_serving(
    env: Arc<Environment>,
    path: &Path,
    timeout: Duration,
    done: impl FnOnce(std::result::Result<(), String>) + Send + 'static,
) -> Result<()> {
    let channel = ChannelBuilder::new(env).connect(&format!("unix:{}", path.display()));
    let client = api_grpc::DevicePluginClient::new(channel);
    let opt = CallOption::default().wait_for_ready(true).timeout(timeout);
    let call = client
        .get_device_plugin_options_async_opt(&api::Empty::new(), opt)
        .map_err(|source| Error::Grpc {
            op: format!("check plugin socket {} answers", path.display()),
            source,
        })?;
    // The call dies with its channel: keep the client until the answer.
    let keep = client.clone();
    client.spawn(async move {
        let _client = keep;
        done(call.await.map(drop).map_err(|e| e.to_string()));
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::inventory::device::tests::device;

    fn on(id: &str, numa: Option<u32>) -> Device {
        let mut d = device(id, Ok(()));
        Arc::make_mut(&mut d.node).numa = numa;
        d
    }

    fn ask(devices: &[Device], available: &[&str], must: &[&str], size: i32) -> Vec<String> {
        let req = api::ContainerPreferredAllocationRequest {
            available_deviceIDs: available.iter().map(|s| s.to_string()).collect(),
            must_include_deviceIDs: must.iter().map(|s| s.to_string()).collect(),
            allocation_size: size,
            ..Default::default()
        };
        preferred(&req, devices).deviceIDs
    }

    #[test]
    fn test_preference_keeps_to_one_numa_node() {
        let devices = [
            on("a0", Some(0)),
            on("b1", Some(1)),
            on("c1", Some(1)),
            on("d0", Some(0)),
            on("e1", Some(1)),
            on("x", None),
        ];
        let all = ["x", "a0", "b1", "c1", "d0", "e1"];
        // The node with the most devices, whatever the kubelet's order.
        assert_eq!(ask(&devices, &all, &[], 2), ["b1", "c1"]);
        // The must-include device's node first, then the others fill up.
        assert_eq!(ask(&devices, &all, &["d0"], 3), ["d0", "a0", "x"]);
        // A tie goes to the lower node; too few gives what there is.
        assert_eq!(ask(&devices, &["b1", "a0"], &[], 1), ["a0"]);
        assert_eq!(ask(&devices, &["b1", "a0"], &[], 5), ["a0", "b1"]);
        // No topology at all: the kubelet's order, must-include first.
        let plain = [on("p", None), on("q", None), on("r", None)];
        assert_eq!(ask(&plain, &["p", "q", "r"], &["r"], 2), ["r", "p"]);
        // IDs we do not know are kept in the kubelet's order, after ours.
        assert_eq!(ask(&devices, &["zz", "b1"], &[], 2), ["b1", "zz"]);
    }
}
