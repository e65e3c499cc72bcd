//! The seam between the inventory and a kubelet-facing API. A front end
//! serves the inventory's [`Resource`]s to the kubelet its own way (the
//! device plugin API, DRA); the supervisor owns one, feeds it the
//! resources and the events meant for it, and asks it for its deadlines,
//! its state (for systemd) and its threads. Adding a front end is a new
//! implementation of this trait and one line in the supervisor's wiring:
//! nothing in the inventory or another front end changes.

use std::{path::PathBuf, thread::JoinHandle, time::Instant};

use crate::{
    error::Result,
    event::Event,
    inventory::{Resource, kinds::Plugin},
};

/// A kubelet-facing API over the inventory. Its methods run on the
/// supervisor thread and must not block for long: slow work (a call to the
/// kubelet, to the API server) runs elsewhere and comes back as an event.
pub trait FrontEnd {
    /// Its `--api` name: `device-plugin`, `dra`.
    fn api(&self) -> &'static str;

    /// Checks that it can serve `plugin`'s resource before anything of it
    /// is made (e.g. that no other program serves on its socket).
    fn check(&self, _plugin: &dyn Plugin) -> Result<()> {
        Ok(())
    }

    /// Dirs whose changes it wants, as [`Event::DirChanged`].
    fn watched_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Serves `resource` from now on (at start, or added by a reload).
    fn add(&mut self, resource: Resource);

    /// Stops serving resource `name` for good (a reload removed it).
    fn remove(&mut self, name: &str);

    /// Starts serving every resource added so far; the threads it started,
    /// which end once [`FrontEnd::shutdown`] has run.
    fn start(&mut self) -> Result<Vec<JoinHandle<()>>>;

    /// An event: [`Event::DirChanged`], [`Event::Published`] or one of its
    /// own; others are ignored.
    fn handle(&mut self, event: Event);

    /// SIGHUP: register everything again.
    fn reregister(&mut self);

    /// The next instant it wants [`FrontEnd::tick`] called, if any.
    fn deadline(&self) -> Option<Instant>;

    /// Runs what is due at [`FrontEnd::deadline`].
    fn tick(&mut self);

    /// Each resource's state, as systemd's STATUS line shows it
    /// (`crand registered`).
    fn states(&self) -> Vec<String>;

    /// Whether it is past starting: every resource serves, or waits for
    /// the kubelet (systemd's READY=1; never "registered", since the unit
    /// starts before the kubelet).
    fn ready(&self) -> bool;

    /// Stops serving everything: called once, at shutdown.
    fn shutdown(&mut self);
}
