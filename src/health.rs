//! The `health` thread: probes every device of every plugin when the dev dir
//! changes (inotify, so a change is seen at once) and on a slow timer (the
//! safety net for changes inotify cannot see), and sends a plugin's full
//! device list to the supervisor whenever any of its devices changed.
//! Failed devices stay in the list as Unhealthy and recover when fixed.

use std::{sync::Arc, time::Duration};

use crossbeam_channel::Sender;

use crate::{
    device::{self, Device},
    dirwatch::{DirWatch, Wake},
    error::chain,
    event::Event,
    plugin::Plugin,
};

/// How often every node is probed without any inotify event.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the health loop until the watch's stopper is dropped. `last` holds
/// the lists the supervisor already has, one per plugin.
pub fn run(
    plugins: Vec<Arc<dyn Plugin>>,
    mut last: Vec<Vec<Device>>,
    mut watch: DirWatch,
    interval: Duration,
    events: Sender<Event>,
) -> Result<(), String> {
    loop {
        match watch.wait(Some(interval)).map_err(|e| chain(&e))? {
            Wake::Stopped => return Ok(()),
            Wake::Timeout => log::trace!("health poll"),
            Wake::Changed(names) => log::debug!("dev dir changed entries={names:?}"),
        }
        for (i, plugin) in plugins.iter().enumerate() {
            let now = plugin.probe();
            let diff = device::changed(&last[i], &now);
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
            last[i] = now.clone();
            if events
                .send(Event::Health {
                    plugin: i,
                    devices: now,
                })
                .is_err()
            {
                return Ok(());
            }
        }
    }
}
