//! The kubelet's plugin watcher, from the plugin's side: a socket in the
//! watcher's dir (`/var/lib/kubelet/plugins_registry`) serves the
//! Registration service, and the kubelet finds it, asks GetInfo, dials the
//! endpoint named there and reports back with NotifyRegistrationStatus.
//! Device plugins (`--registration plugins-registry`) and DRA drivers both
//! register this way.

use std::sync::Arc;

use grpcio::{RpcContext, UnarySink};

use crate::{
    api::{pluginregistration, pluginregistration_grpc},
    rpc::reply,
};

/// Called with the kubelet's NotifyRegistrationStatus: Ok, or its error.
pub type OnStatus = Arc<dyn Fn(std::result::Result<(), String>) + Send + Sync>;

/// The Registration service of a socket in the plugin watcher's dir: it
/// answers GetInfo with `info` (what kind of plugin, its name, where its
/// API is served, which versions) and hands the kubelet's
/// NotifyRegistrationStatus to `on_status`.
#[derive(Clone)]
pub struct RegistrationService {
    info: pluginregistration::PluginInfo,
    on_status: OnStatus,
}

impl RegistrationService {
    /// The service answering `info`.
    pub fn new(info: pluginregistration::PluginInfo, on_status: OnStatus) -> Self {
        RegistrationService { info, on_status }
    }
}

impl pluginregistration_grpc::Registration for RegistrationService {
    fn get_info(
        &mut self,
        ctx: RpcContext,
        _req: pluginregistration::InfoRequest,
        sink: UnarySink<pluginregistration::PluginInfo>,
    ) {
        log::debug!("GetInfo from the kubelet name={}", self.info.name);
        reply(&ctx, sink, Ok(self.info.clone()));
    }

    fn notify_registration_status(
        &mut self,
        ctx: RpcContext,
        req: pluginregistration::RegistrationStatus,
        sink: UnarySink<pluginregistration::RegistrationStatusResponse>,
    ) {
        (self.on_status)(if req.plugin_registered {
            Ok(())
        } else {
            Err(req.error)
        });
        reply(
            &ctx,
            sink,
            Ok(pluginregistration::RegistrationStatusResponse::new()),
        );
    }
}
