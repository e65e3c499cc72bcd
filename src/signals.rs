//! The `signals` thread: turns SIGTERM and SIGINT into a shutdown and SIGHUP
//! into a reload (and a new registration), as events for the supervisor.

use crossbeam_channel::Sender;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::{Handle, Signals},
};

use crate::{
    error::{Error, Result},
    event::{Event, SignalAction},
    thread::spawn_named,
};

/// Installs the handlers and starts the thread; `Handle::close` stops it.
pub fn spawn(events: Sender<Event>) -> Result<(Handle, std::thread::JoinHandle<()>)> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::Invalid(format!("cannot install signal handlers: {e}")))?;
    let handle = signals.handle();
    let tx = events.clone();
    let join = spawn_named("signals", events, move || {
        for sig in signals.forever() {
            let action = if sig == SIGHUP {
                SignalAction::Reload
            } else {
                SignalAction::Shutdown
            };
            log::info!(
                "signal {} received",
                if sig == SIGHUP {
                    "SIGHUP"
                } else if sig == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }
            );
            if tx.send(Event::Signal(action)).is_err() {
                break;
            }
        }
        Ok(())
    })?;
    Ok((handle, join))
}
