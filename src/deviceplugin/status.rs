//! Our own status service (`proto/status.proto`), served beside the
//! DevicePlugin service on each plugin socket: the device list with the
//! reason of every unhealthy device, which ListAndWatch has no field for,
//! and the front end's state of the resource. `kubelet-plugin status`
//! reads it; the kubelet never calls it.

use std::sync::Arc;

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

use crate::{
    api::{status, status_grpc},
    inventory::device::Device,
    rpc::reply,
    watch::Watch,
};

/// Our status service, beside the DevicePlugin service on each socket: the
/// device list with the reason of every unhealthy device, which
/// ListAndWatch has no field for (`kubelet-plugin status` reads it).
#[derive(Clone)]
pub struct StatusService {
    resource: String,
    devices: Arc<Watch<Vec<Device>>>,
    registration: &'static str,
    state: Arc<dyn Fn() -> String + Send + Sync>,
}

impl StatusService {
    /// The status of `resource` from its snapshot; `state` tells the
    /// supervisor's state of the plugin.
    pub fn new(
        resource: &str,
        devices: Arc<Watch<Vec<Device>>>,
        registration: &'static str,
        state: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> Self {
        StatusService {
            resource: resource.into(),
            devices,
            registration,
            state,
        }
    }
}

impl status_grpc::Status for StatusService {
    fn devices(
        &mut self,
        ctx: RpcContext,
        _req: status::DevicesRequest,
        sink: UnarySink<status::DevicesResponse>,
    ) {
        let devices = self.devices.get();
        let resp = status::DevicesResponse {
            resource: self.resource.clone(),
            devices: devices.iter().map(device_status).collect(),
            registration: self.registration.into(),
            state: (self.state)(),
            ..Default::default()
        };
        reply(&ctx, sink, Ok(resp));
    }

    fn dra(
        &mut self,
        ctx: RpcContext,
        _req: status::DraRequest,
        sink: UnarySink<status::DraResponse>,
    ) {
        reply(
            &ctx,
            sink,
            Err(RpcStatus::with_message(
                RpcStatusCode::UNIMPLEMENTED,
                "a device plugin: ask Devices".into(),
            )),
        );
    }
}

/// A device as the status API tells it: its ID, its health and, for an
/// unhealthy one, the reason's code and sentence.
pub fn device_status(d: &Device) -> status::DeviceStatus {
    status::DeviceStatus {
        id: d.id.clone(),
        health: d.health.as_str().into(),
        reason: d
            .health
            .reason()
            .map(|r| r.code().into())
            .unwrap_or_default(),
        why: d.health.reason().map(|r| r.to_string()).unwrap_or_default(),
        ..Default::default()
    }
}
