//! The device inventory: the plugin kinds and their device sets, each
//! resource's lock, the CDI specs, the `health` thread and the snapshots
//! it publishes. It knows nothing of gRPC or the kubelet: the front ends
//! (the device plugin API, DRA) each serve its [`Resource`]s.
//!
//! A resource enters through [`Inventory::add`]: its lock is taken first
//! (a second instance, whatever its front end, changes nothing), then the
//! front end's own check, then its nodes are made, its devices probed and
//! its CDI spec written, so the first snapshot is complete and every CDI
//! name in it resolves before any front end announces it. From then on
//! the health thread is the one writer of its snapshot.

pub mod cdi;
pub mod device;
pub mod devnode;
pub mod dirwatch;
pub mod glob;
pub mod health;
pub mod kinds;

use std::{path::PathBuf, sync::Arc, thread::JoinHandle, time::Duration};

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::{
    error::{Error, Result},
    event::Event,
    lockfile::{self, LockFile},
    wake::{Kicker, Stopper},
    watch::Watch,
};
use device::Device;
use dirwatch::DirWatch;
use kinds::Plugin;

/// A resource as the front ends see it: its plugin, and the snapshot of
/// its devices (IDs, health, nodes), which the health thread alone writes
/// and which lives as long as the resource.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Its plugin.
    pub plugin: Arc<dyn Plugin>,
    /// Its devices as last published.
    pub devices: Arc<Watch<Vec<Device>>>,
}

impl Resource {
    /// The extended resource name: `<domain>/<name>`.
    pub fn name(&self) -> &str {
        self.plugin.resource()
    }
}

/// Who is told of the inventory's changes besides the front ends (the
/// metrics): resources coming and going, device health changing.
pub trait Listener: Send + Sync {
    /// Resource `resource` joined.
    fn added(&self, resource: &Resource);
    /// Resource `name` left.
    fn removed(&self, name: &str);
    /// These devices of resource `name` changed health (the snapshot holds
    /// their new health).
    fn health_changed(&self, name: &str, changed: &[&Device]);
}

/// Where the inventory works.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the device nodes are made and watched.
    pub dev_dir: PathBuf,
    /// Where the CDI specs (and the resource locks) go.
    pub cdi_dir: PathBuf,
    /// The health thread's safety-net period.
    pub poll_interval: Duration,
    /// Who serves the resources (the `--api`), written into each resource's
    /// lock: a second instance is told who holds it and through what.
    pub owner: &'static str,
}

/// One resource of the inventory.
#[derive(Debug)]
struct Entry {
    resource: Resource,
    /// Held while it is served; released when it is removed.
    _lock: LockFile,
    /// It came from the `--config` file: a reload may remove it.
    reloadable: bool,
}

/// The running health thread, as the inventory steers it.
#[derive(Debug)]
struct Health {
    plans: Sender<Vec<Resource>>,
    kicker: Kicker,
    _stop: Stopper,
}

/// The resources, their locks and the health thread.
pub struct Inventory {
    cfg: Config,
    entries: Vec<Entry>,
    listener: Arc<dyn Listener>,
    health: Option<Health>,
}

impl Inventory {
    /// An inventory with no resource yet; `listener` is told of its
    /// changes.
    pub fn new(cfg: Config, listener: Arc<dyn Listener>) -> Self {
        Inventory {
            cfg,
            entries: Vec::new(),
            listener,
            health: None,
        }
    }

    /// Takes `plugin`'s resource lock, runs `check` (a front end's own
    /// test, e.g. that no one serves on its socket), makes its nodes,
    /// probes its devices and writes its CDI spec; the resource, ready to
    /// be served. `reloadable`: it comes from the `--config` file.
    pub fn add(
        &mut self,
        plugin: Arc<dyn Plugin>,
        reloadable: bool,
        check: &dyn Fn(&dyn Plugin) -> Result<()>,
    ) -> Result<Resource> {
        // Before anything is made: a refused second instance changes nothing.
        let lock = lockfile::lock_resource(&self.cfg.cdi_dir, plugin.resource(), self.cfg.owner)?;
        check(plugin.as_ref())?;
        plugin.prepare()?;
        // The probe finds a dev plugin's devices, which its spec lists.
        let devices = plugin.probe();
        // Before any front end announces them: the kubelet may hand our
        // CDI names to the runtime at once, and they must resolve.
        let spec = cdi::write(&self.cfg.cdi_dir, plugin.resource(), &devices)?;
        log::info!(
            "CDI spec written resource={} path={}",
            plugin.resource(),
            spec.display()
        );
        let resource = Resource {
            plugin,
            devices: Watch::new(devices),
        };
        self.listener.added(&resource);
        self.entries.push(Entry {
            resource: resource.clone(),
            _lock: lock,
            reloadable,
        });
        Ok(resource)
    }

    /// Drops resource `name`: its lock is released and its figures go. Its
    /// CDI spec stays, for containers that still use its devices.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|e| e.resource.name() != name);
        self.listener.removed(name);
    }

    /// Every resource, in the order added.
    pub fn resources(&self) -> Vec<Resource> {
        self.entries.iter().map(|e| e.resource.clone()).collect()
    }

    /// The resources that came from the `--config` file, by identity
    /// ([`Plugin::identity`]), and those that did not, by name.
    pub fn split_reloadable(&self) -> (Vec<String>, Vec<String>) {
        let (file, fixed): (Vec<&Entry>, Vec<&Entry>) =
            self.entries.iter().partition(|e| e.reloadable);
        (
            file.iter().map(|e| e.resource.plugin.identity()).collect(),
            fixed
                .iter()
                .map(|e| e.resource.name().to_string())
                .collect(),
        )
    }

    /// Starts the `health` thread on the resources so far. Changes of
    /// the dirs in `watched` (a front end's) come to `events` as
    /// [`Event::DirChanged`]; every published snapshot as
    /// [`Event::Published`].
    pub fn start(&mut self, events: Sender<Event>, watched: &[PathBuf]) -> Result<JoinHandle<()>> {
        let mut roots = vec![self.cfg.dev_dir.as_path()];
        roots.extend(watched.iter().map(PathBuf::as_path));
        let (watch, stop) = DirWatch::new(&roots)?;
        let (plans, plan_rx): (Sender<Vec<Resource>>, Receiver<Vec<Resource>>) = unbounded();
        let kicker = watch.kicker();
        let join = health::spawn(
            self.resources(),
            health::Setup {
                watch,
                interval: self.cfg.poll_interval,
                cdi_dir: self.cfg.cdi_dir.clone(),
                events,
                listener: self.listener.clone(),
                plans: plan_rx,
            },
        )?;
        self.health = Some(Health {
            plans,
            kicker,
            _stop: stop,
        });
        Ok(join)
    }

    /// Has the health thread take the resources as they are now, drop the
    /// devices whose node is gone ([`Plugin::forget_missing`]) and probe
    /// everything (at SIGHUP).
    pub fn refresh(&self) -> Result<()> {
        let health = self
            .health
            .as_ref()
            .ok_or_else(|| Error::Thread("the health thread is not running".into()))?;
        health
            .plans
            .send(self.resources())
            .map_err(|_| Error::Thread("the health thread is gone".into()))?;
        health.kicker.kick();
        Ok(())
    }

    /// Stops the health thread (its owner joins it).
    pub fn stop(&mut self) {
        self.health = None;
    }
}
