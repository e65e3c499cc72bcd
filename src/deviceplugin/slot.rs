//! One resource of the device plugin front end and where it is in its
//! life: its explicit [`State`], its live server generation, and the
//! teardown that ends a generation in the order the kubelet needs.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::future::AbortHandle;
use grpcio::Server;

use super::server::Streams;
use crate::rpc::Gate;
use crate::{
    inventory::Resource,
    socket::{self, SocketId},
};

/// How long the streams of a generation we end get to receive their last
/// status before the server is dropped (which cancels whatever is left).
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(300);

/// Where a resource is in its life; each state says what it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not served yet: the state at start.
    Idle,
    /// `kubelet-sock` mode, no `kubelet.sock`: nothing is served; waits for
    /// the socket dir to change.
    WaitingForKubelet,
    /// A server generation is bound; waits for its socket to answer.
    Starting,
    /// Waits for the kubelet: the answer to our Register call, or its
    /// GetInfo and NotifyRegistrationStatus (`plugins-registry`).
    Registering,
    /// Registered; waits for a change of the kubelet, our socket or our
    /// stream.
    Registered,
    /// A step failed: serves and registers again at the instant.
    BackingOff(Instant),
    /// Registered, but the kubelet closed its last ListAndWatch stream:
    /// registers again at the instant unless the kubelet opens a new one.
    StreamGrace(Instant),
    /// No longer configured (a config reload): unregistered, for good.
    Removed,
}

impl State {
    /// When it acts by itself, if ever.
    pub fn deadline(self) -> Option<Instant> {
        match self {
            State::BackingOff(at) | State::StreamGrace(at) => Some(at),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "idle",
            State::WaitingForKubelet => "waiting for the kubelet",
            State::Starting => "starting",
            State::Registering => "registering",
            State::Registered => "registered",
            State::BackingOff(_) => "backing off",
            State::StreamGrace(_) => "stream lost",
            State::Removed => "removed",
        })
    }
}

/// One running server generation of a resource.
pub struct Live {
    /// The grpcio server.
    pub server: Server,
    /// Its socket file, to tell it from one made anew.
    pub socket: SocketId,
    /// Closing it ends the generation's ListAndWatch streams.
    pub gate: Arc<Gate>,
    /// Its open ListAndWatch streams.
    pub streams: Arc<Streams>,
}

/// A resource and where it is in its life. Its fields are one resource's
/// whole lifecycle (server generation, kubelet, pending call, backoff,
/// streams), kept together so that a teardown cannot forget one.
pub struct Slot {
    /// The resource served.
    pub resource: Resource,
    /// Its socket path.
    pub socket: PathBuf,
    /// The state; changed through [`Slot::set`] only.
    pub state: State,
    /// `state` as our status service tells it.
    pub shown: Arc<Mutex<State>>,
    /// The current server generation; answers for older ones are stale.
    pub generation: u64,
    /// The live server generation, if any.
    pub live: Option<Live>,
    /// `kubelet-sock` mode: the kubelet we registered, or are registering,
    /// with.
    pub kubelet: Option<SocketId>,
    /// A Register call in flight.
    pub call: Option<AbortHandle>,
    /// When the current generation started serving.
    pub started: Instant,
    /// The wait before the next attempt after a failure.
    pub backoff: Duration,
    /// Open ListAndWatch streams of the live generation.
    pub streams: usize,
}

impl Slot {
    /// A resource not served yet, whose socket will be `socket`.
    pub fn new(resource: Resource, socket: PathBuf, backoff: Duration) -> Slot {
        Slot {
            resource,
            socket,
            state: State::Idle,
            shown: Arc::new(Mutex::new(State::Idle)),
            generation: 0,
            live: None,
            kubelet: None,
            call: None,
            started: Instant::now(),
            backoff,
            streams: 0,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        self.resource.name()
    }

    /// Ends the current generation: cancels a pending Register, ends its
    /// ListAndWatch streams with `why`, drops its server and removes its
    /// socket. The kubelet tracks disconnects by resource name, so old
    /// streams must end before a new registration or they would mark the
    /// new one stopped.
    pub fn teardown(&mut self, why: &'static str) {
        if let Some(h) = self.call.take() {
            h.abort();
        }
        if let Some(live) = self.live.take() {
            live.gate.publish(Some(why));
            let left = live.streams.wait_closed(Instant::now() + DRAIN_TIMEOUT);
            if left > 0 {
                log::warn!(
                    "{left} ListAndWatch streams did not take their last status in time; cancelling them resource={}",
                    self.name()
                );
            }
            drop(live.server);
            socket::remove_socket(&self.socket, live.socket);
        }
        self.streams = 0;
    }

    /// Moves to `state`.
    pub fn set(&mut self, state: State) {
        if self.state != state {
            log::debug!(
                "state resource={} from=\"{}\" to=\"{state}\"",
                self.name(),
                self.state
            );
            self.state = state;
            *self.shown.lock().expect("state lock poisoned") = state;
        }
    }

    /// Whether its socket is still the one its live generation bound.
    pub fn own_socket_ok(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| socket::socket_id(&self.socket) == Some(l.socket))
    }
}
