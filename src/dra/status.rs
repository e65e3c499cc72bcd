//! Our status service on the DRA socket: the driver's state, the slices
//! it published, every device with its name in the pool and its health,
//! and the claims it prepared with their pods (`kubelet-plugin status`).

use std::sync::{Arc, Mutex};

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

use super::{claims, names, publisher};
use crate::{
    api::{status, status_grpc},
    deviceplugin::status::device_status,
    inventory::Resource,
    rpc::reply,
};

/// The status of the DRA driver.
#[derive(Clone)]
pub struct DraStatus {
    /// The driver name.
    pub driver: String,
    /// The node.
    pub node: String,
    /// The resources served.
    pub resources: Vec<Resource>,
    /// What the publisher did last.
    pub published: publisher::Shown,
    /// The prepared claims.
    pub prepared: claims::Shown,
    /// The registration state.
    pub state: Arc<Mutex<String>>,
}

impl status_grpc::Status for DraStatus {
    fn devices(
        &mut self,
        ctx: RpcContext,
        _req: status::DevicesRequest,
        sink: UnarySink<status::DevicesResponse>,
    ) {
        reply(
            &ctx,
            sink,
            Err(RpcStatus::with_message(
                RpcStatusCode::UNIMPLEMENTED,
                "a DRA driver: ask Dra".into(),
            )),
        );
    }

    fn dra(
        &mut self,
        ctx: RpcContext,
        _req: status::DraRequest,
        sink: UnarySink<status::DraResponse>,
    ) {
        let published = self
            .published
            .lock()
            .expect("publish lock poisoned")
            .clone();
        let prepared = self.prepared.lock().expect("claims lock poisoned").clone();
        let resp = status::DraResponse {
            driver: self.driver.clone(),
            node: self.node.clone(),
            api_version: published.version.unwrap_or_default().into(),
            state: self.state.lock().expect("state lock poisoned").clone(),
            publish_error: published.error.unwrap_or_default(),
            slices: published
                .slices
                .iter()
                .map(|(name, generation, devices)| status::Slice {
                    name: name.clone(),
                    generation: *generation,
                    devices: *devices as i64,
                    ..Default::default()
                })
                .collect(),
            devices: names::devices(&self.resources)
                .into_iter()
                .map(|d| status::DraDevice {
                    resource: d.resource.clone(),
                    name: d.name.clone(),
                    status: Some(device_status(&d.device)).into(),
                    ..Default::default()
                })
                .collect(),
            claims: prepared
                .iter()
                .map(|(uid, c)| status::PreparedClaim {
                    uid: uid.clone(),
                    namespace: c.namespace.clone(),
                    name: c.name.clone(),
                    pods: c.pods.clone(),
                    devices: c.devices.iter().map(|d| d.device.clone()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        reply(&ctx, sink, Ok(resp));
    }
}
