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

use std::{sync::Arc, time::Duration};

use crossbeam_channel::Sender;

use crate::{
    device::{self, Device},
    dirwatch::{Changes, DirWatch, Wake},
    error::chain,
    event::Event,
    plugin::Plugin,
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
fn probe(plugin: &dyn Plugin, last: &[Device], changed: Option<&[String]>) -> Option<Vec<Device>> {
    let Some(names) = changed else {
        return Some(plugin.probe());
    };
    let mut concerned = std::collections::BTreeSet::new();
    for name in names {
        match plugin.devices_of_entry(name) {
            None => return Some(plugin.probe()),
            Some(indexes) => concerned.extend(indexes),
        }
    }
    if concerned.is_empty() {
        return None;
    }
    let mut now = last.to_vec();
    for i in concerned {
        if let Some(slot) = now.get_mut(i) {
            *slot = plugin.probe_one(i);
        }
    }
    Some(now)
}

/// Which dir of the [`DirWatch`] given to [`run`] is which.
pub const DEV_DIR: usize = 0;
/// See [`DEV_DIR`].
pub const SOCKET_DIR: usize = 1;

/// Runs the health loop until the watch's stopper is dropped. `watch`
/// watches the dev dir and the dir of our sockets, in that order.
pub fn run(
    plugins: Vec<Watched>,
    mut watch: DirWatch,
    interval: Duration,
    events: Sender<Event>,
) -> Result<(), String> {
    loop {
        // The entries that changed; `None`: check everything.
        let changed: Option<Vec<String>> =
            match watch.wait(Some(interval)).map_err(|e| chain(&e))? {
                Wake::Stopped => return Ok(()),
                Wake::Timeout => {
                    log::trace!("health poll");
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
                            // A name that is not UTF-8 is no device node of ours.
                            Some(
                                names
                                    .iter()
                                    .filter_map(|n| n.to_str())
                                    .map(String::from)
                                    .collect(),
                            )
                        }
                    }
                }
            };
        for (plugin, snapshot) in &plugins {
            let last = snapshot.get();
            let Some(now) = probe(plugin.as_ref(), &last, changed.as_deref()) else {
                continue;
            };
            let diff = device::changed(&last, &now);
            if diff.is_empty() {
                continue;
            }
            for d in diff {
                if d.reason.is_empty() {
                    log::info!(
                        "health resource={} device={} {}",
                        plugin.resource(),
                        d.id,
                        d.health
                    );
                } else {
                    log::info!(
                        "health resource={} device={} {} reason=\"{}\"",
                        plugin.resource(),
                        d.id,
                        d.health,
                        d.reason
                    );
                }
            }
            snapshot.publish(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{device::Health, plugin::crand::Crand};

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
            [Health::Healthy, Health::Unhealthy, Health::Healthy]
        );
        // Entries that are no node of ours concern nothing.
        let others = ["kvm".into(), "crand3".into(), "crand01".into()];
        assert!(probe(&crand, &last, Some(&others)).is_none());
        // Unknown changes (overflow) and the timer probe everything.
        let all = probe(&crand, &last, None).unwrap();
        assert_eq!(all, crand.probe());
        assert_eq!(all[2].health, Health::Unhealthy);
    }
}
