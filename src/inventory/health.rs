//! The `health` thread: probes the devices of every resource when the dev
//! dir changes (inotify, so a change is seen at once; only the devices
//! whose nodes changed) and all of them on a slow timer (the safety net
//! for changes inotify cannot see), and publishes a resource's full device
//! list into its snapshot whenever any of its devices changed. It is the
//! one writer of the snapshots, which the front ends follow. Failed
//! devices stay in the list as Unhealthy and recover when fixed.
//!
//! The same inotify instance watches the dirs a front end asks for (the
//! device plugin dir, where `kubelet.sock` comes and goes), since the
//! supervisor cannot wait on a file descriptor and its channel at once: a
//! change there is forwarded as [`Event::DirChanged`]. One thread for both
//! keeps the process within its thread budget.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Receiver, Sender};

use super::{
    Listener, Resource, cdi,
    device::{self, Device},
    dirwatch::{Changes, DirWatch, Wake},
    kinds::{Affected, Plugin},
};
use crate::{error::Result, event::Event, thread::spawn_named};

/// How often every node is probed without any inotify event.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The root of the [`DirWatch`] that is the dev dir; any other root is a
/// front end's.
const DEV_DIR: usize = 0;

/// What the health thread needs besides its resources.
pub struct Setup {
    /// Watches the dev dir, then the front ends' dirs.
    pub watch: DirWatch,
    /// The safety-net period.
    pub interval: Duration,
    /// Where the CDI specs are: a resource whose nodes changed gets its
    /// spec written before the list that announces the change.
    pub cdi_dir: PathBuf,
    /// The supervisor's inbox.
    pub events: Sender<Event>,
    /// Told of every health change.
    pub listener: Arc<dyn Listener>,
    /// A new resource list (after a config reload), taken at the next kick.
    pub plans: Receiver<Vec<Resource>>,
}

/// Starts the health thread; it runs until the watch's stopper is dropped.
/// A kick of the watch (at SIGHUP) takes the latest plan, drops the
/// devices whose node is gone and probes everything.
pub fn spawn(resources: Vec<Resource>, setup: Setup) -> Result<JoinHandle<()>> {
    let events = setup.events.clone();
    spawn_named("health", events, move || run(resources, setup))
}

fn run(mut resources: Vec<Resource>, setup: Setup) -> Result<()> {
    let Setup {
        mut watch,
        interval,
        cdi_dir,
        events,
        listener,
        plans,
    } = setup;
    let publish = Publish {
        cdi_dir,
        events,
        listener,
    };
    watch_subdirs(&mut watch, &resources);
    loop {
        // The entries that changed; `None`: check everything.
        let changed: Option<Vec<PathBuf>> = match watch.wait(Some(interval))? {
            Wake::Stopped => return Ok(()),
            Wake::Timeout => {
                log::trace!("health poll");
                None
            }
            Wake::Kicked => {
                if let Some(plan) = plans.try_iter().last() {
                    resources = plan;
                }
                resources.iter().for_each(|r| r.plugin.forget_missing());
                None
            }
            Wake::Changed(mut dirs) => {
                if dirs[DEV_DIR + 1..].iter().any(|c| *c != Changes::None) {
                    log::debug!("watched dir changed entries={:?}", &dirs[DEV_DIR + 1..]);
                    if publish.events.send(Event::DirChanged).is_err() {
                        return Ok(());
                    }
                }
                match std::mem::take(&mut dirs[DEV_DIR]) {
                    Changes::None => continue,
                    Changes::Any => None,
                    Changes::Named(names) => {
                        log::debug!("dev dir changed entries={names:?}");
                        Some(names)
                    }
                }
            }
        };
        // A dir a pattern reaches into may have just appeared.
        watch_subdirs(&mut watch, &resources);
        for r in &resources {
            publish.refresh(r, changed.as_deref());
        }
    }
}

/// Watches the subdirs of the dev dir the resources' patterns reach into.
fn watch_subdirs(watch: &mut DirWatch, resources: &[Resource]) {
    for dir in resources.iter().flat_map(|r| r.plugin.watch_dirs()) {
        if !dir.as_os_str().is_empty() {
            watch.watch_sub(DEV_DIR, &dir);
        }
    }
}

/// Where a new snapshot goes besides the snapshot itself.
struct Publish {
    cdi_dir: PathBuf,
    events: Sender<Event>,
    listener: Arc<dyn Listener>,
}

impl Publish {
    /// Probes the devices of `r` that the dev-dir entries `changed` concern
    /// (`None`: all), and publishes the list when it changed: its CDI spec
    /// first when its nodes changed, then the snapshot, the figures and
    /// the news.
    fn refresh(&self, r: &Resource, changed: Option<&[PathBuf]>) {
        let last = r.devices.get();
        let Some(now) = probe(r.plugin.as_ref(), &last, changed) else {
            return;
        };
        if now == *last {
            return;
        }
        if nodes_changed(&last, &now) {
            // INVARIANT: the spec first, then the list: the kubelet may
            // allocate a device the moment it sees it, and the runtime must
            // then find its CDI name. Without a spec the list is held back,
            // so no front end hands out a device the spec lacks.
            match cdi::write(&self.cdi_dir, r.name(), &now) {
                Ok(path) => log::info!(
                    "CDI spec written resource={} path={}",
                    r.name(),
                    path.display()
                ),
                Err(e) => {
                    log::error!(
                        "device list held back: its CDI spec cannot be written resource={}: {}",
                        r.name(),
                        crate::error::chain(&e)
                    );
                    return;
                }
            }
        }
        let diff = device::changed(&last, &now);
        log_changes(r.name(), &diff);
        let changed: Vec<Device> = diff.into_iter().cloned().collect();
        r.devices.publish(now);
        self.listener
            .health_changed(r.name(), &changed.iter().collect::<Vec<_>>());
        let _ = self.events.send(Event::Published(r.name().to_string()));
    }
}

/// Whether the nodes of two device lists (what the CDI spec holds) differ.
/// The same list of shared nodes is the common case and costs no more than
/// a pointer comparison per device.
fn nodes_changed(last: &[Device], now: &[Device]) -> bool {
    let same = last.len() == now.len()
        && last
            .iter()
            .zip(now)
            .all(|(a, b)| Arc::ptr_eq(&a.node, &b.node));
    !same && cdi::nodes(last) != cdi::nodes(now)
}

/// The plugin's devices after the dev-dir entries `changed` (`None`: any)
/// changed: only the devices that depend on them are probed again, the
/// rest is taken from `last`. `None` when no device of the plugin is
/// concerned.
fn probe(plugin: &dyn Plugin, last: &[Device], changed: Option<&[PathBuf]>) -> Option<Vec<Device>> {
    let Some(entries) = changed else {
        return Some(plugin.probe());
    };
    let mut concerned = HashSet::new();
    for entry in entries {
        match plugin.affected(Path::new(entry)) {
            Affected::All => return Some(plugin.probe()),
            Affected::Devices(ids) => concerned.extend(ids),
            Affected::Nothing => {}
        }
    }
    if concerned.is_empty() {
        return None;
    }
    let mut now = last.to_vec();
    for id in &concerned {
        if let (Some(slot), Some(d)) = (
            now.iter_mut().find(|d| &d.id == id),
            plugin.probe_device(id),
        ) {
            *slot = d;
        }
    }
    Some(now)
}

fn log_changes(resource: &str, diff: &[&Device]) {
    for d in diff {
        match d.health.reason() {
            None => log::info!("health resource={resource} device={} Healthy", d.id),
            Some(why) => log::info!(
                "health resource={resource} device={} Unhealthy reason={} why=\"{why}\"",
                d.id,
                why.code()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{
        device::{Health, Reason},
        kinds::crand::Crand,
    };

    #[test]
    fn test_probe_only_what_the_changed_entries_concern() {
        let dir = tempfile::tempdir().unwrap();
        let crand = Crand::new("example.com", dir.path(), 3).unwrap();
        crand.prepare().unwrap();
        let last = crand.probe();
        assert!(last.iter().all(|d| d.health == Health::Healthy));
        std::fs::remove_file(dir.path().join("crand1")).unwrap();
        std::fs::remove_file(dir.path().join("crand2")).unwrap();

        // Only crand1 is named: crand2's change waits for its own event.
        let now = probe(&crand, &last, Some(&["crand1".into()])).unwrap();
        let health: Vec<_> = now.iter().map(|d| d.health).collect();
        assert_eq!(
            health,
            [
                Health::Healthy,
                Health::Unhealthy(Reason::Missing),
                Health::Healthy
            ]
        );
        assert!(
            !nodes_changed(&last, &now),
            "a health change is no new node"
        );
        // Entries that are no node of ours concern nothing.
        let others = ["kvm".into(), "crand3".into(), "crand01".into()];
        assert!(probe(&crand, &last, Some(&others)).is_none());
        // Unknown changes (overflow) and the timer probe everything.
        let all = probe(&crand, &last, None).unwrap();
        assert_eq!(all, crand.probe());
        assert_eq!(all[2].health, Health::Unhealthy(Reason::Missing));
        assert!(nodes_changed(&last, &all[..2]), "a device fewer");
    }
}
