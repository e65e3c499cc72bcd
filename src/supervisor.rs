//! The `supervisor` thread: owns the process's life. It fills the
//! inventory, hands its resources to the front end chosen by `--api`,
//! starts the other threads (health, metrics, the front end's),
//! dispatches every [`Event`] of its one inbox, tells systemd where things
//! are, reloads the `--config` file at SIGHUP, and at shutdown stops every
//! thread and joins it. A thread that fails ends the run with its own
//! error; one that does not stop in time is named.

use std::{
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use signal_hook::iterator::Handle;

use crate::{
    deviceplugin::{self, DevicePlugins},
    error::{Error, Result},
    event::{Event, SignalAction},
    frontend::FrontEnd,
    inventory::{self, Inventory, kinds::Plugins},
    lockfile::PidFile,
    metrics::{self, Exporter, Metrics},
    notify::Notifier,
    reload::Reload,
    thread::spawn_named,
    wake::Stopper,
};

/// How long threads get to finish at shutdown: they take milliseconds;
/// the margin is for a loaded machine, not for a thread that is stuck.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the front end's state must stay unchanged (start-up, a new
/// registration or a reload done) before the code pages that got it there
/// are given back ([`crate::pages::trim_code`]).
const TRIM_AFTER: Duration = Duration::from_secs(2);

/// Which kubelet API serves the devices, with its configuration.
#[derive(Clone, Debug)]
pub enum Api {
    /// The device plugin API `v1beta1`.
    DevicePlugin(deviceplugin::Config),
    /// A DRA driver.
    #[cfg(feature = "dra")]
    Dra(Box<crate::dra::Config>),
}

/// What the supervisor runs.
#[derive(Debug)]
pub struct Config {
    /// The plugins, each one resource.
    pub plugins: Plugins,
    /// Where the inventory works.
    pub inventory: inventory::Config,
    /// The front end.
    pub api: Api,
    /// Where the metrics go (none: nowhere, and no `metrics` thread).
    pub metrics: metrics::Outputs,
    /// With `--config`: how SIGHUP reloads the file's resources.
    pub reload: Option<Reload>,
}

/// The front end `api` asks for: the one place front ends are wired in.
fn front_end(api: Api, events: Sender<Event>, metrics: Arc<Metrics>) -> Box<dyn FrontEnd> {
    match api {
        Api::DevicePlugin(cfg) => Box::new(DevicePlugins::new(cfg, events, metrics)),
        #[cfg(feature = "dra")]
        Api::Dra(cfg) => Box::new(crate::dra::DraDriver::new(*cfg, events)),
    }
}

/// Starts the supervisor thread: it prepares everything, then writes the
/// pid file (the plugins are ready), then runs until SIGTERM or SIGINT. Its
/// result reaches `exits` as [`Event::ThreadExited`]; when it ends, it
/// closes `signals` (which ends the caller's [`crate::signals::forward`]).
/// Returns the thread and its inbox, for the signals.
pub fn spawn(
    cfg: Config,
    pid_file: Option<PidFile>,
    exits: Sender<Event>,
    signals: Handle,
) -> Result<(JoinHandle<()>, Sender<Event>)> {
    let (events, inbox) = unbounded();
    let inbox_sender = events.clone();
    let join = spawn_named("supervisor", exits, move || {
        let result = Supervisor::new(cfg, events, inbox).and_then(|supervisor| {
            let _pid_file = match pid_file {
                Some(mut p) => p.ready().map(|()| Some(p))?,
                None => None,
            };
            supervisor.run()
        });
        signals.close();
        result
    })?;
    Ok((join, inbox_sender))
}

/// The supervisor: the inventory, the front end and the inbox.
pub struct Supervisor {
    inventory: Inventory,
    front: Box<dyn FrontEnd>,
    reload: Option<Reload>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    /// The `metrics` thread's work, made (its port bound) at start.
    exporter: Option<(Exporter, Stopper)>,
    notifier: Notifier,
    /// When the code pages are trimmed next: [`TRIM_AFTER`] after the
    /// last change of state.
    trim_at: Option<Instant>,
}

impl Supervisor {
    /// Takes every resource's lock, prepares it (makes its nodes), probes
    /// its devices and writes its CDI spec, so the first snapshot is ready
    /// before any front end serves it.
    pub fn new(cfg: Config, events: Sender<Event>, inbox: Receiver<Event>) -> Result<Self> {
        let metrics = Metrics::new();
        let exporter = if cfg.metrics.file.is_some() || cfg.metrics.listen.is_some() {
            Some(Exporter::new(metrics.clone(), &cfg.metrics)?)
        } else {
            None
        };
        let mut front = front_end(cfg.api, events.clone(), metrics.clone());
        let mut inventory = Inventory::new(cfg.inventory, metrics);
        for plugin in cfg.plugins {
            let from_file = cfg
                .reload
                .as_ref()
                .is_some_and(|r| r.from_file.contains(&plugin.identity()));
            let resource = inventory.add(plugin, from_file, &|p| front.check(p))?;
            front.add(resource);
        }
        Ok(Supervisor {
            inventory,
            front,
            reload: cfg.reload,
            events,
            inbox,
            exporter,
            notifier: Notifier::from_env(),
            trim_at: None,
        })
    }

    /// Runs until SIGTERM or SIGINT (Ok) or a fatal error. A thread that
    /// does not stop in time is an error too.
    pub fn run(mut self) -> Result<()> {
        let mut joins = Vec::new();
        let watched: Vec<PathBuf> = self.front.watched_dirs();
        joins.push(self.inventory.start(self.events.clone(), &watched)?);
        let mut metrics_stop = None;
        if let Some((exporter, stop)) = self.exporter.take() {
            joins.push(exporter.spawn(self.events.clone())?);
            metrics_stop = Some(stop);
        }
        let result = self.front.start().and_then(|front_threads| {
            joins.extend(front_threads);
            self.event_loop()
        });
        self.front.shutdown();
        self.inventory.stop();
        drop(metrics_stop);
        let joined = self.join(joins);
        result.and(joined)
    }

    fn event_loop(&mut self) -> Result<()> {
        loop {
            if self.notifier.update(self.front.as_ref()) {
                self.trim_at = Some(Instant::now() + TRIM_AFTER);
            }
            let deadline = match (self.front.deadline(), self.trim_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let event = match deadline {
                Some(at) => match self.inbox.recv_deadline(at) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
                },
                None => Some(self.inbox.recv().expect("we hold a sender")),
            };
            match event {
                None => {}
                Some(Event::Signal(SignalAction::Shutdown)) => {
                    log::info!("shutting down");
                    self.notifier.send("STOPPING=1\nSTATUS=shutting down");
                    return Ok(());
                }
                Some(Event::Signal(SignalAction::Reload)) => {
                    if let Some(reload) = &self.reload {
                        reload.apply(&mut self.inventory, self.front.as_mut());
                    }
                    self.inventory.refresh()?;
                    self.front.reregister();
                }
                Some(Event::ThreadExited { name, result }) => {
                    return Err(result.err().unwrap_or_else(|| {
                        Error::Thread(format!("thread {name} ended unexpectedly"))
                    }));
                }
                Some(event) => self.front.handle(event),
            }
            if self.front.deadline().is_some_and(|at| at <= Instant::now()) {
                self.front.tick();
            }
            if self.trim_at.is_some_and(|at| at <= Instant::now()) {
                self.trim_at = None;
                let bytes = crate::pages::trim_code();
                log::debug!("code pages trimmed mapped_bytes={bytes}");
            }
        }
    }

    /// Waits for every thread to report its end, then joins them; a thread
    /// that does not end in time is named and left behind, and makes the
    /// exit an error.
    fn join(&self, joins: Vec<JoinHandle<()>>) -> Result<()> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut ended = Vec::new();
        while ended.len() < joins.len() {
            match self.inbox.recv_deadline(deadline) {
                Ok(Event::ThreadExited { name, result }) => {
                    if let Err(e) = result {
                        log::warn!("thread {name} ended: {}", crate::error::chain(&e));
                    }
                    ended.push(name);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let mut stuck = Vec::new();
        for j in joins {
            let name = j.thread().name().unwrap_or("?").to_string();
            // A thread that said it ended is returning: join it. (It may not
            // count as finished yet, a moment after it said so.)
            if ended.contains(&name) || j.is_finished() {
                let _ = j.join();
            } else {
                stuck.push(name);
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(Error::Thread(format!(
                "threads did not stop within {JOIN_TIMEOUT:?}: {}",
                stuck.join(", ")
            )))
        }
    }
}
