//! A watch cell: holds the latest value and lets any number of streams
//! follow it. A stream yields the current value at once, then only the
//! newest value after each change (updates in between are skipped: the
//! kubelet needs the latest full list, not every list). A stream never
//! ends by itself: its owner drops it.
//!
//! This is how one device snapshot feeds every open ListAndWatch stream
//! without a thread per stream: the streams run as futures on grpcio's
//! poll thread, and publishing only swaps the value and wakes them. A cell
//! of `Option<reason>` is also how a server generation tells its streams to
//! end ([`Watch::when`]).

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use futures_util::{Stream, StreamExt as _};

/// The cell; share it with `Arc`.
#[derive(Debug)]
pub struct Watch<T> {
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    value: Arc<T>,
    version: u64,
    next_id: u64,
    // One waker per waiting stream, replaced on each poll, so the list is
    // bounded by the number of streams.
    wakers: Vec<(u64, Waker)>,
}

impl<T> Watch<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Arc<Self> {
        Arc::new(Watch {
            inner: Mutex::new(Inner {
                value: Arc::new(value),
                version: 1,
                next_id: 0,
                wakers: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().expect("watch lock poisoned")
    }

    /// Replaces the value and wakes every stream.
    pub fn publish(&self, value: T) {
        let wakers = {
            let mut inner = self.lock();
            inner.value = Arc::new(value);
            inner.version += 1;
            std::mem::take(&mut inner.wakers)
        };
        wakers.into_iter().for_each(|(_, w)| w.wake());
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.lock().value.clone()
    }

    /// A stream that yields the current value first.
    pub fn subscribe(self: &Arc<Self>) -> Subscriber<T> {
        let mut inner = self.lock();
        inner.next_id += 1;
        Subscriber {
            cell: self.clone(),
            id: inner.next_id,
            seen: 0,
        }
    }
}

impl<T: Send + Sync + 'static> Watch<T> {
    /// Resolves with the first value, current or later, that `accept`
    /// takes.
    pub fn when(
        self: &Arc<Self>,
        accept: impl Fn(&T) -> bool + Send + 'static,
    ) -> impl Future<Output = Arc<T>> + Send + 'static {
        let mut values = self.subscribe();
        async move {
            while let Some(v) = values.next().await {
                if accept(&v) {
                    return v;
                }
            }
            // A subscriber never ends; were it to, nothing would be accepted.
            std::future::pending().await
        }
    }
}

/// A stream of a [`Watch`]'s values.
#[derive(Debug)]
pub struct Subscriber<T> {
    cell: Arc<Watch<T>>,
    id: u64,
    seen: u64,
}

impl<T> Stream for Subscriber<T> {
    type Item = Arc<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<T>>> {
        let this = self.get_mut();
        let mut inner = this.cell.lock();
        if inner.version != this.seen {
            this.seen = inner.version;
            return Poll::Ready(Some(inner.value.clone()));
        }
        let id = this.id;
        inner.wakers.retain(|(i, _)| *i != id);
        inner.wakers.push((id, cx.waker().clone()));
        Poll::Pending
    }
}

impl<T> Drop for Subscriber<T> {
    fn drop(&mut self) {
        let id = self.id;
        self.cell.lock().wakers.retain(|(i, _)| *i != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt, StreamExt};

    #[test]
    fn test_stream_yields_current_then_latest() {
        let cell = Watch::new(1);
        let mut s = cell.subscribe();
        assert_eq!(*s.next().now_or_never().unwrap().unwrap(), 1);
        assert!(s.next().now_or_never().is_none(), "nothing new yet");
        cell.publish(2);
        cell.publish(3);
        assert_eq!(*s.next().now_or_never().unwrap().unwrap(), 3);
        assert!(s.next().now_or_never().is_none(), "nothing new since");
    }

    #[test]
    fn test_when_waits_for_an_accepted_value() {
        let cell = Watch::new(None::<&str>);
        let mut stop = Box::pin(cell.when(|v| v.is_some()));
        assert!((&mut stop).now_or_never().is_none(), "nothing yet");
        cell.publish(Some("why"));
        assert_eq!(*stop.now_or_never().unwrap(), Some("why"));
        // Already there: at once.
        assert!(cell.when(|v| v.is_some()).now_or_never().is_some());
        // A value it does not take leaves it waiting.
        let other = Watch::new(None::<&str>);
        let mut waiting = Box::pin(other.when(|v| *v == Some("stop")));
        other.publish(Some("not yet"));
        assert!((&mut waiting).now_or_never().is_none());
        other.publish(Some("stop"));
        assert!(waiting.now_or_never().is_some());
    }

    #[test]
    fn test_dropped_streams_leave_no_wakers() {
        let cell = Watch::new(0);
        for _ in 0..100 {
            let mut s = cell.subscribe();
            s.next().now_or_never();
            assert!(s.next().now_or_never().is_none());
        }
        assert!(cell.lock().wakers.is_empty());
    }
}
