//! Waiting for a reactor's shutdown: each waiting future owns one waker slot, freed when it
//! resolves or is dropped, so a loop that polls such futures again and again (an accept loop)
//! registers nothing per turn.

use crate::reactor::Inner;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Wakers of the futures waiting for shutdown, one slot per future (freed when it is dropped
/// or resolves), so a loop that keeps polling fresh futures does not pile up wakers.
#[derive(Default)]
pub(crate) struct ShutdownWaiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl ShutdownWaiters {
    pub(crate) fn registered(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Stores `waker` in `slot` (allocating one if None); returns the slot and the waker it
    /// replaced, which the caller drops after releasing the borrow.
    fn register(&mut self, slot: Option<usize>, waker: &Waker) -> (usize, Option<Waker>) {
        match slot {
            Some(i) => match self.slots.get_mut(i) {
                Some(Some(w)) if w.will_wake(waker) => (i, None),
                Some(w) => (i, w.replace(waker.clone())),
                None => (i, None),
            },
            None => match self.free.pop() {
                Some(i) => {
                    let old = self.slots.get_mut(i).and_then(|w| w.replace(waker.clone()));
                    (i, old)
                }
                None => {
                    self.slots.push(Some(waker.clone()));
                    (self.slots.len() - 1, None)
                }
            },
        }
    }

    fn deregister(&mut self, slot: usize) -> Option<Waker> {
        let old = self.slots.get_mut(slot).and_then(Option::take);
        if slot < self.slots.len() {
            self.free.push(slot);
        }
        old
    }

    /// Every stored waker (the slots stay with their futures).
    pub(crate) fn take_all(&mut self) -> Vec<Waker> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}

/// The future of [`Reactor::shutdown_requested`].
pub(crate) struct ShutdownRequested {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl ShutdownRequested {
    pub(crate) fn new(inner: Rc<Inner>) -> ShutdownRequested {
        ShutdownRequested { inner, slot: None }
    }

    fn deregister(&mut self) {
        if let Some(slot) = self.slot.take() {
            let old = match self.inner.shutdown_waiters.try_borrow_mut() {
                Ok(mut w) => w.deregister(slot),
                Err(_) => None,
            };
            drop(old);
        }
    }
}

impl Future for ShutdownRequested {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.shutdown.get() {
            self.deregister();
            return Poll::Ready(());
        }
        let registered = match self.inner.shutdown_waiters.try_borrow_mut() {
            Ok(mut w) => Some(w.register(self.slot, cx.waker())),
            Err(_) => None,
        };
        match registered {
            Some((slot, old)) => {
                self.slot = Some(slot);
                drop(old);
            }
            // Only reachable from a waker's clone or drop run inside this very registry:
            // poll again later rather than lose the wake.
            None => crate::reactor::defer_wake(cx.waker()),
        }
        Poll::Pending
    }
}

impl Drop for ShutdownRequested {
    fn drop(&mut self) {
        self.deregister();
    }
}
