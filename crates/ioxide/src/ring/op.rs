//! `Op<T>`: the future of one in-flight ring operation, and `MultiOp<T>` for multishot ones.

use super::Ring;
use crate::reactor;
use io_uring::squeue::Entry;
use std::any::Any;
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
            // SAFETY: forwarded from the caller: the entry only points into `data`. The Op
            // gives `data` back (poll) or frees it (drop) only once the kernel is done with
            // it: its record says the CQE arrived, or the reactor ended after its teardown
            // saw every op finish. Dropped earlier, the data goes to the record (directly,
            // or through deferred work when the ring is busy) until the CQE; when nobody can
            // tell (a leaking teardown), it is never handed back and is leaked on drop.
            (id, unsafe { ring.submit(entry, false) })
        });
        match submitted {
            Ok((reactor, ud)) => Op {
                ud,
                reactor,
                data: Some(data),
                early: None,
                _not_send: PhantomData,
            },
            // The entry never reached a ring, so the data is ours to hand back.
            Err(reactor::NoRing::Absent) => Op::failed(data, libc::ENXIO),
            Err(reactor::NoRing::Busy) => Op::failed(data, libc::EBUSY),
        }
    }

    /// An op that fails with `errno` on first poll without touching the ring.
    pub(crate) fn failed(data: T, errno: i32) -> Op<T> {
        Op::ready(data, -errno)
    }

    /// An op that completes with `res` (a CQE-style result) on first poll without touching
    /// the ring.
    pub(crate) fn ready(data: T, res: i32) -> Op<T> {
        Op {
            ud: 0,
            reactor: 0,
            data: Some(data),
            early: Some(res),
            _not_send: PhantomData,
        }
    }

    /// Whether the op's SQE went to a ring (false: it completes on first poll by itself).
    pub(crate) fn submitted(&self) -> bool {
        self.early.is_none()
    }
}

impl<T: Completable> Future for Op<T> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let this = self.get_mut();
        if this.data.is_none() {
            // Polled again after completion: a contract violation by the caller.
            return Poll::Pending;
        }
        let done = match this.early.take() {
            Some(res) => Some((res, 0)),
            None => {
                match reactor::with_op_ring(this.reactor, |ring| ring.poll_op(this.ud, cx.waker()))
                {
                    reactor::OpRing::Ran(done) => done,
                    // The ring is borrowed further up the stack (this poll runs inside a waker or
                    // a destructor the ring called): the SQE may be in the kernel, so the data
                    // stays here. Poll again once the borrow is released.
                    reactor::OpRing::Busy => {
                        reactor::defer_wake(cx.waker());
                        None
                    }
                    // The reactor ended and its teardown saw the kernel finish every op: the data
                    // is free again, whatever the op's result was.
                    reactor::OpRing::Ended { drained: true } => Some((-libc::ENXIO, 0)),
                    // The teardown leaked ops the kernel had not finished: this one may be among
                    // them, so its data can never be handed back.
                    reactor::OpRing::Ended { drained: false } => None,
                }
            }
        };
        match (done, this.data.take()) {
            (Some((res, flags)), Some(data)) => Poll::Ready(data.complete(res, flags)),
            (_, data) => {
                this.data = data;
                Poll::Pending
            }
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
        release(
            self.reactor,
            self.ud,
            Box::new(data),
            T::PRODUCES_FD,
            cancel,
        );
    }
}

/// Gives the data of a dropped (or detached) op to the ring: the record keeps it until the
/// kernel's final CQE, or the ring drops it after releasing its borrow if the op is over.
fn release(reactor: u64, ud: u64, data: Box<dyn Any>, closes_fd: bool, cancel: bool) {
    let mut data = Some(data);
    let outcome = reactor::with_op_ring(reactor, |ring| {
        if let Some(d) = data.take() {
            ring.abandon(ud, d, closes_fd, cancel);
        }
    });
    let Some(data) = data else { return };
    match outcome {
        // The ring is borrowed further up the stack: the record cannot be told yet, and the
        // kernel may own the data. The loop hands it over before its next enter.
        reactor::OpRing::Busy => reactor::defer_ring_work(Box::new(move |ring: &mut Ring| {
            ring.abandon(ud, data, closes_fd, cancel);
        })),
        // The kernel finished every op of that reactor: the data is ours to free.
        reactor::OpRing::Ended { drained: true } => drop(data),
        // We cannot know whether the kernel is done with the data: leak it rather than risk
        // a use-after-free.
        reactor::OpRing::Ended { drained: false } => std::mem::forget(data),
        reactor::OpRing::Ran(()) => {}
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
            Ok((id, ud)) => (id, ud, false),
            // Never reached a ring: nothing to wait for.
            Err(_) => (0, 0, true),
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
        self.poll_next_with(cx, |_, _| ())
            .map(|(res, flags, ())| (res, flags))
    }

    /// As [`poll_next`](MultiOp::poll_next), running `then` on the ring with the completion
    /// in the same borrow (a receive takes the provided buffer the CQE names). Outside the
    /// op's reactor `then` gets no ring.
    pub(crate) fn poll_next_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        then: impl FnOnce(Option<(u64, &mut Ring)>, (i32, u32)) -> R,
    ) -> Poll<(i32, u32, R)> {
        if self.ended {
            let item = (-libc::ECANCELED, 0);
            return Poll::Ready((item.0, item.1, then(None, item)));
        }
        let (reactor, ud) = (self.reactor, self.ud);
        let mut then = Some(then);
        let r = reactor::with_op_ring(reactor, |ring| {
            let item = ring.poll_multi(ud, cx.waker())?;
            let then = then.take()?;
            Some((item.0, item.1, then(Some((reactor, ring)), item)))
        });
        let r = match r {
            reactor::OpRing::Ran(r) => r,
            reactor::OpRing::Busy => {
                reactor::defer_wake(cx.waker());
                None
            }
            // The reactor is gone: the op will not produce anything more. Its data is only an
            // fd handle, which Drop deals with.
            reactor::OpRing::Ended { .. } => {
                let item = (-libc::ENXIO, 0);
                then.take().map(|then| (item.0, item.1, then(None, item)))
            }
        };
        match r {
            Some((res, flags, out)) => {
                if !io_uring::cqueue::more(flags) {
                    self.ended = true;
                }
                Poll::Ready((res, flags, out))
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
        release(self.reactor, self.ud, Box::new(data), self.closes_fd, true);
    }
}
