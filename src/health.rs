//! The `health` thread: probes the devices of every plugin when the dev dir
//! changes (inotify, so a change is seen at once; only the devices whose
//! nodes changed) and all of them on a slow timer (the safety net for
//! changes inotify cannot see), and publishes a plugin's full device list
//! into its snapshot whenever any of its devices changed. It is the one
//! writer of the snapshots, which outlive server generations: every open
//! ListAndWatch stream follows its plugin's snapshot, and Allocate reads it.
//! Failed devices stay in the list as Unhealthy and recover when fixed.
//!
//! The same inotify instance watches the dir of our sockets for the
//! supervisor, which cannot wait on a file descriptor and its channel at
//! once: a change there is forwarded as [`Event::SocketDir`]. One thread
//! for both keeps the process within its thread budget.

use std::{collections::HashSet, path::PathBuf, sync::Arc, time::Duration};

use crossbeam_channel::Sender;

use crate::{
    cdi,
    device::{self, Device},
    dirwatch::{Changes, DirWatch, Wake},
    error::chain,
    event::Event,
    metrics::Metrics,
    plugin::{Affected, Plugin},
    watch::Watch,
};

/// A plugin and the snapshot of its devices.
pub type Watched = (Arc<dyn Plugin>, Arc<Watch<Vec<Device>>>);

/// How often every node is probed without any inotify event.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

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
        match plugin.affected(entry) {
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

/// Which root of the [`DirWatch`] given to [`run`] is which.
pub const DEV_DIR: usize = 0;
/// See [`DEV_DIR`].
pub const SOCKET_DIR: usize = 1;

/// What the health thread needs besides its plugins.
#[derive(Debug)]
pub struct Setup {
    /// Watches the dev dir and the dir of our sockets, in that order.
    pub watch: DirWatch,
    /// The safety-net period.
    pub interval: Duration,
    /// Where the CDI specs are: a plugin whose device set changed gets its
    /// spec written before the list that announces the change.
    pub cdi_dir: PathBuf,
    /// The supervisor's inbox.
    pub events: Sender<Event>,
    /// Told of every health change.
    pub metrics: Arc<Metrics>,
    /// A new plugin list (after a config reload), taken at the next kick.
    pub plans: crossbeam_channel::Receiver<Vec<Watched>>,
}

/// Runs the health loop until the watch's stopper is dropped. A kick of
/// the watch ([`crate::dirwatch::Kicker`], at SIGHUP) drops the devices
/// whose node is gone and probes everything.
pub fn run(mut plugins: Vec<Watched>, setup: Setup) -> Result<(), String> {
    let Setup {
        mut watch,
        interval,
        cdi_dir,
        events,
        metrics,
        plans,
    } = setup;
    // The specs written at start are for these versions.
    let mut versions: Vec<u64> = plugins.iter().map(|(p, _)| p.nodes_version()).collect();
    let subdirs = |plugins: &[Watched]| -> Vec<PathBuf> {
        plugins
            .iter()
            .flat_map(|(p, _)| p.watch_dirs())
            .filter(|d| !d.as_os_str().is_empty())
            .collect()
    };
    let mut dirs = subdirs(&plugins);
    let watch_subdirs = |watch: &mut DirWatch, dirs: &[PathBuf]| {
        for d in dirs {
            watch.watch_sub(DEV_DIR, d);
        }
    };
    watch_subdirs(&mut watch, &dirs);
    loop {
        // The entries that changed; `None`: check everything.
        let changed: Option<Vec<PathBuf>> =
            match watch.wait(Some(interval)).map_err(|e| chain(&e))? {
                Wake::Stopped => return Ok(()),
                Wake::Timeout => {
                    log::trace!("health poll");
                    None
                }
                Wake::Kicked => {
                    if let Some(plan) = plans.try_iter().last() {
                        // Their specs are written: the versions are current.
                        versions = plan.iter().map(|(p, _)| p.nodes_version()).collect();
                        plugins = plan;
                        dirs = subdirs(&plugins);
                    }
                    plugins.iter().for_each(|(p, _)| p.forget_missing());
                    None
                }
                Wake::Changed(mut dirs) => {
                    let socket_dir = std::mem::take(&mut dirs[SOCKET_DIR]);
                    if socket_dir != Changes::None {
                        log::debug!("socket dir changed entries={socket_dir:?}");
                        if events.send(Event::SocketDir).is_err() {
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
        watch_subdirs(&mut watch, &dirs);
        for (i, (plugin, snapshot)) in plugins.iter().enumerate() {
            let last = snapshot.get();
            let Some(now) = probe(plugin.as_ref(), &last, changed.as_deref()) else {
                continue;
            };
            let version = plugin.nodes_version();
            if version != versions[i] {
                // INVARIANT: the spec first, then the list: the kubelet may
                // allocate a device the moment it sees it, and the runtime
                // must then find its CDI name.
                match cdi::write(&cdi_dir, plugin.as_ref()) {
                    Ok(path) => {
                        log::info!(
                            "CDI spec written resource={} path={}",
                            plugin.resource(),
                            path.display()
                        );
                        versions[i] = version;
                    }
                    Err(e) => {
                        log::error!(
                            "device list held back: its CDI spec cannot be written resource={}: {}",
                            plugin.resource(),
                            chain(&e)
                        );
                        continue;
                    }
                }
            }
            let diff = device::changed(&last, &now);
            if diff.is_empty() && now.len() == last.len() {
                continue;
            }
            log_changes(plugin.resource(), &diff);
            let changed: Vec<Device> = diff.into_iter().cloned().collect();
            snapshot.publish(now);
            metrics.health_changed(plugin.resource(), &changed.iter().collect::<Vec<_>>());
        }
    }
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
    use crate::{
        device::{Health, Reason},
        plugin::crand::Crand,
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
        // Entries that are no node of ours concern nothing.
        let others = ["kvm".into(), "crand3".into(), "crand01".into()];
        assert!(probe(&crand, &last, Some(&others)).is_none());
        // Unknown changes (overflow) and the timer probe everything.
        let all = probe(&crand, &last, None).unwrap();
        assert_eq!(all, crand.probe());
        assert_eq!(all[2].health, Health::Unhealthy(Reason::Missing));
    }
}
