//! `Op<T>`: the future of one in-flight ring operation, and `MultiOp<T>` for multishot ones.

use super::Ring;
use crate::reactor;
use io_uring::squeue::Entry;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// The data an op owns while the kernel works on it, and how its result is interpreted.
pub(crate) trait Completable: 'static {
    /// What the future resolves to.
    type Output;
    /// True for ops whose success result is a new fd (socket, accept): a late completion of
    /// an abandoned op closes it.
    const PRODUCES_FD: bool = false;
    /// Builds the output from the CQE's result and flags, giving the data back.
    fn complete(self, res: i32, flags: u32) -> Self::Output;
}

/// A submitted single-shot op. Dropping it before completion cancels the op and hands the
/// data to the ring record until the kernel's final CQE (see the module docs of `ring`).
pub(crate) struct Op<T: Completable> {
    ud: u64,
    reactor: u64,
    data: Option<T>,
    /// Set when the op never reached the kernel: the negative errno to report.
    early: Option<i32>,
    _not_send: PhantomData<Rc<()>>,
}

// The op's data is never pinned: the kernel sees heap pointers owned by it, not the Op itself.
impl<T: Completable> Unpin for Op<T> {}

impl<T: Completable> Op<T> {
    /// Submits an op on the current reactor's ring.
    ///
    /// # Safety
    /// Every pointer in the entry built by `build` must point into heap memory owned by `data`
    /// (which does not move when `data` moves), or into `'static` memory.
    pub(crate) unsafe fn submit(mut data: T, build: impl FnOnce(&mut T) -> Entry) -> Op<T> {
        let entry = build(&mut data);
        let submitted = reactor::with_ring(|id, ring: &mut Ring| {
            // SAFETY: forwarded from the caller: the entry only points into `data`, which the
            // Op (and, if dropped early, the ring record) keeps alive until the CQE.
            (id, unsafe { ring.submit(entry, false) })
        });
        match submitted {
            Some((reactor, ud)) => Op {
                ud,
                reactor,
                data: Some(data),
                early: None,
                _not_send: PhantomData,
            },
            None => Op::failed(data, libc::ENXIO),
        }
    }

    /// An op that fails with `errno` on first poll without touching the ring.
    pub(crate) fn failed(data: T, errno: i32) -> Op<T> {
        Op {
            ud: 0,
            reactor: 0,
            data: Some(data),
            early: Some(-errno),
            _not_send: PhantomData,
        }
    }
}

impl<T: Completable> Future for Op<T> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let this = self.get_mut();
        let done = match this.early.take() {
            Some(res) => Some((res, 0)),
            None => reactor::with_ring(|id, ring| {
                if id == this.reactor {
                    ring.poll_op(this.ud, cx.waker())
                } else {
                    Some((-libc::ENXIO, 0))
                }
            })
            .unwrap_or(Some((-libc::ENXIO, 0))),
        };
        match (done, this.data.take()) {
            (Some((res, flags)), Some(data)) => Poll::Ready(data.complete(res, flags)),
            (None, data) => {
                this.data = data;
                Poll::Pending
            }
            // Polled again after completion: a contract violation by the caller.
            (Some(_), None) => Poll::Pending,
        }
    }
}

impl<T: Completable> Op<T> {
    /// Lets the op run to completion with nobody awaiting it: nothing is cancelled, and its
    /// data — the fd above all — stays in the ring's record until the kernel's CQE. For
    /// fire-and-forget ops that must not act on an fd number the process may reuse: a
    /// detached op that held only the number could be issued (io-wq) after the fd was closed
    /// and the number handed to a new socket.
    pub(crate) fn detach(mut self) {
        self.release(false);
    }

    /// Hands the data of an op still in flight to the ring record (cancelling the op if
    /// `cancel`), or drops it if the op already completed.
    fn release(&mut self, cancel: bool) {
        let Some(data) = self.data.take() else { return };
        if self.early.is_some() {
            return;
        }
        let reactor = self.reactor;
        let ud = self.ud;
        let mut data = Some(data);
        let leftover = reactor::with_ring(|id, ring| {
            if id != reactor {
                return None;
            }
            let boxed: Box<dyn std::any::Any> = Box::new(data.take());
            ring.abandon(ud, boxed, T::PRODUCES_FD, cancel)
        });
        match (leftover, data) {
            // Completed but never collected: drop the data now, outside the ring borrow.
            (Some(Some(d)), _) => drop(d),
            // The ring record owns it now.
            (Some(None), None) => {}
            // No ring (or another reactor's): we cannot know whether the kernel is done with
            // the data, so leak it rather than risk a use-after-free.
            (_, Some(d)) => std::mem::forget(d),
            (None, None) => {}
        }
    }
}

impl<T: Completable> Drop for Op<T> {
    fn drop(&mut self) {
        self.release(true);
    }
}

/// A multishot op: yields one `(res, flags)` per CQE until a CQE without `F_MORE`.
pub(crate) struct MultiOp<T: 'static> {
    ud: u64,
    reactor: u64,
    data: Option<T>,
    ended: bool,
    closes_fd: bool,
    _not_send: PhantomData<Rc<()>>,
}

impl<T: 'static> MultiOp<T> {
    /// Submits a multishot op.
    ///
    /// # Safety
    /// As [`Op::submit`].
    pub(crate) unsafe fn submit(
        mut data: T,
        closes_fd: bool,
        build: impl FnOnce(&mut T) -> Entry,
    ) -> MultiOp<T> {
        let entry = build(&mut data);
        // SAFETY: forwarded from the caller, as in Op::submit.
        let r = reactor::with_ring(|id, ring: &mut Ring| (id, unsafe { ring.submit(entry, true) }));
        let (reactor, ud, ended) = match r {
            Some((id, ud)) => (id, ud, false),
            None => (0, 0, true),
        };
        MultiOp {
            ud,
            reactor,
            data: Some(data),
            ended,
            closes_fd,
            _not_send: PhantomData,
        }
    }

    /// True once the kernel ended the op (a CQE without `F_MORE` was taken).
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// The next completion. After the one without `F_MORE`, returns `(-ECANCELED, 0)`.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(i32, u32)> {
        if self.ended {
            return Poll::Ready((-libc::ECANCELED, 0));
        }
        let (reactor, ud) = (self.reactor, self.ud);
        let r = reactor::with_ring(|id, ring| {
            if id == reactor {
                ring.poll_multi(ud, cx.waker())
            } else {
                Some((-libc::ENXIO, 0))
            }
        })
        .unwrap_or(Some((-libc::ENXIO, 0)));
        match r {
            Some((res, flags)) => {
                if !io_uring::cqueue::more(flags) {
                    self.ended = true;
                }
                Poll::Ready((res, flags))
            }
            None => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for MultiOp<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else { return };
        if self.ended {
            return;
        }
        let (reactor, ud, closes_fd) = (self.reactor, self.ud, self.closes_fd);
        let mut data = Some(data);
        let leftover = reactor::with_ring(|id, ring| {
            if id != reactor {
                return None;
            }
            let boxed: Box<dyn std::any::Any> = Box::new(data.take());
            ring.abandon(ud, boxed, closes_fd, true)
        });
        match (leftover, data) {
            (Some(Some(d)), _) => drop(d),
            (_, Some(d)) => std::mem::forget(d),
            _ => {}
        }
    }
}
