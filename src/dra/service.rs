//! The gRPC services of the DRA socket: the kubelet's DRAPlugin in both
//! versions it calls (`v1` from 1.34, `v1beta1`, which the 1.32 kubelet
//! calls whatever we advertise; the same messages), served by one
//! implementation, and the
//! device health stream (`v1alpha1.DRAResourceHealth`), which follows a
//! [`Watch`] of the full device list. Handlers run on grpcio's poll
//! thread and never block: a Prepare or Unprepare goes to the `dra-claims`
//! thread, which replies.

use std::sync::Arc;

use crossbeam_channel::Sender;
use grpcio::{RpcContext, ServerStreamingSink, UnarySink};

use super::claims::{ClaimRef, Job};
use crate::{
    api::{dra_health, dra_health_grpc, dra_v1, dra_v1_grpc, dra_v1beta1_grpc},
    rpc::{self, Gate},
    watch::Watch,
};

/// The health list every stream follows: the whole device list.
pub type HealthList = Watch<Vec<dra_health::DeviceHealth>>;

/// The DRAPlugin service, both versions.
#[derive(Clone)]
pub struct DraPlugin {
    jobs: Sender<Job>,
}

impl DraPlugin {
    /// A service handing its calls to the `dra-claims` thread.
    pub fn new(jobs: Sender<Job>) -> Self {
        DraPlugin { jobs }
    }

    fn submit(&self, job: Job) {
        // The claims thread is gone only while the driver stops, with its
        // server: the job's sink is dropped, and the call ends with an error.
        if self.jobs.send(job).is_err() {
            log::warn!("DRA call dropped: the driver is stopping");
        }
    }
}

/// Sends `resp` on `sink` from the `dra-claims` thread.
fn send<T: Send + 'static>(sink: UnarySink<T>, resp: T) {
    if let Err(e) = futures_executor::block_on(sink.success(resp)) {
        log::debug!("DRA reply not delivered: {e}");
    }
}

fn claims(claims: &[dra_v1::Claim]) -> Vec<ClaimRef> {
    claims
        .iter()
        .map(|c| ClaimRef {
            namespace: c.namespace.clone(),
            uid: c.uid.clone(),
            name: c.name.clone(),
        })
        .collect()
}

impl DraPlugin {
    fn prepare(
        &self,
        req: dra_v1::NodePrepareResourcesRequest,
        sink: UnarySink<dra_v1::NodePrepareResourcesResponse>,
    ) {
        let refs = claims(&req.claims);
        self.submit(Job::Prepare(
            refs,
            Box::new(move |answers| {
                let mut resp = dra_v1::NodePrepareResourcesResponse::new();
                for (uid, answer) in answers {
                    let mut one = dra_v1::NodePrepareResourceResponse::new();
                    match answer {
                        Ok(devices) => {
                            one.devices = devices
                                .into_iter()
                                .map(|d| dra_v1::Device {
                                    request_names: d.request_names,
                                    pool_name: d.pool,
                                    device_name: d.device,
                                    cdi_device_ids: d.cdi_device_ids,
                                    ..Default::default()
                                })
                                .collect()
                        }
                        Err(e) => one.error = e,
                    }
                    resp.claims.insert(uid, one);
                }
                send(sink, resp);
            }),
        ));
    }

    fn unprepare(
        &self,
        req: dra_v1::NodeUnprepareResourcesRequest,
        sink: UnarySink<dra_v1::NodeUnprepareResourcesResponse>,
    ) {
        let refs = claims(&req.claims);
        self.submit(Job::Unprepare(
            refs,
            Box::new(move |answers| {
                let mut resp = dra_v1::NodeUnprepareResourcesResponse::new();
                for (uid, answer) in answers {
                    let mut one = dra_v1::NodeUnprepareResourceResponse::new();
                    if let Err(e) = answer {
                        one.error = e;
                    }
                    resp.claims.insert(uid, one);
                }
                send(sink, resp);
            }),
        ));
    }
}

// Both versions take and answer v1's messages (proto/dra_v1beta1.proto
// imports them): one implementation, two method paths.
macro_rules! dra_plugin {
    ($grpc:ident) => {
        impl $grpc::DraPlugin for DraPlugin {
            fn node_prepare_resources(
                &mut self,
                _ctx: RpcContext,
                req: dra_v1::NodePrepareResourcesRequest,
                sink: UnarySink<dra_v1::NodePrepareResourcesResponse>,
            ) {
                self.prepare(req, sink);
            }

            fn node_unprepare_resources(
                &mut self,
                _ctx: RpcContext,
                req: dra_v1::NodeUnprepareResourcesRequest,
                sink: UnarySink<dra_v1::NodeUnprepareResourcesResponse>,
            ) {
                self.unprepare(req, sink);
            }
        }
    };
}
dra_plugin!(dra_v1_grpc);
dra_plugin!(dra_v1beta1_grpc);

/// The device health service: each NodeWatchResources stream sends the
/// whole list at once, then again whenever it is published (a change, and
/// the periodic resend that keeps the kubelet from timing it out).
#[derive(Clone)]
pub struct Health {
    list: Arc<HealthList>,
    gate: Arc<Gate>,
}

impl Health {
    /// A service following `list` until `gate` closes.
    pub fn new(list: Arc<HealthList>, gate: Arc<Gate>) -> Self {
        Health { list, gate }
    }
}

impl dra_health_grpc::DraResourceHealth for Health {
    fn node_watch_resources(
        &mut self,
        ctx: RpcContext,
        _req: dra_health::NodeWatchResourcesRequest,
        sink: ServerStreamingSink<dra_health::NodeWatchResourcesResponse>,
    ) {
        log::info!("health stream opened by the kubelet");
        let message =
            |devices: Arc<Vec<dra_health::DeviceHealth>>| dra_health::NodeWatchResourcesResponse {
                devices: devices.as_ref().clone(),
                ..Default::default()
            };
        let ended = rpc::follow(sink, self.list.subscribe(), self.gate.clone(), message);
        ctx.spawn(async move {
            let ended = ended.await;
            log::info!("health stream closed why=\"{ended}\"");
        });
    }
}
