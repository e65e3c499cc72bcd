//! Signals: SIGTERM and SIGINT become a shutdown, SIGHUP a reload (and a
//! new registration), as events for the supervisor. They are waited for on
//! the main thread, which has nothing else to do while the supervisor
//! runs: one thread fewer than a `signals` thread of its own.

use crossbeam_channel::Sender;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::{Handle, Signals},
};

use crate::{
    error::{Error, Result},
    event::{Event, SignalAction},
};

/// The signals we handle, installed: from here on SIGTERM no longer kills
/// the process but waits for [`forward`].
pub struct Installed(Signals);

impl Installed {
    /// Installs the handlers.
    pub fn new() -> Result<Self> {
        Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map(Installed)
            .map_err(|e| Error::Invalid(format!("cannot install signal handlers: {e}")))
    }

    /// What ends [`forward`]: `Handle::close`, from any thread.
    pub fn handle(&self) -> Handle {
        self.0.handle()
    }
}

/// Sends each signal to `events` as it comes, until the handle is closed
/// or nobody receives any more. A signal that came before is not lost: it
/// waits in the handler's pipe.
pub fn forward(Installed(mut signals): Installed, events: &Sender<Event>) {
    for sig in signals.forever() {
        let (name, action) = match sig {
            SIGHUP => ("SIGHUP", SignalAction::Reload),
            SIGINT => ("SIGINT", SignalAction::Shutdown),
            _ => ("SIGTERM", SignalAction::Shutdown),
        };
        log::info!("signal {name} received");
        if events.send(Event::Signal(action)).is_err() {
            break;
        }
    }
}
