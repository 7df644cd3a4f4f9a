//! The ring layer — the only module of this crate that contains `unsafe`.
//!
//! # Ownership model
//! Every op is a record in a slab owned by the reactor's [`Ring`]; its index and a generation
//! form the SQE's `user_data`. The future for an op (`Op<T>`) owns the op's *data* — buffers,
//! socket addresses, timespecs, a clone of the fd — and the kernel only ever sees pointers into
//! heap memory owned by that data. The record's state says who may touch the data:
//!
//! * `Pending(waker)`: in the kernel; the future holds the data and must not free it.
//! * `Done(res, flags)`: the CQE arrived; the future may take its data back and return.
//! * `Multi`: a multishot op; CQEs queue up until one arrives without `IORING_CQE_F_MORE`.
//! * `Ignored(data)`: the future was dropped while the op was in flight. The data moved into
//!   the record, an `AsyncCancel` was queued, and the record frees the data only when the
//!   final CQE arrives. If that late completion produced an fd (socket, accept), it is closed.
//!
//! So a buffer handed to the kernel is freed only after the kernel is done with it, and a
//! dropped future never leaks an fd. See ARCHITECTURE.md, "The ring layer".

mod buf;
mod bufring;
mod op;
mod ops;
mod setup;
pub mod signal;
pub(crate) mod sys;

pub use buf::{IoBuf, IoBufMut};
pub use bufring::RecvBuf;
pub(crate) use op::{MultiOp, Op};
pub(crate) use ops::*;
pub use setup::{KernelVersion, RingConfig, RingError, RingFeatures, KERNEL_COMPAT_ENV};
pub use sys::process_cpu_time;

use io_uring::{cqueue, squeue, IoUring};
use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::task::Waker;
use std::time::Duration;

/// Chunks a multishot receive may queue (each holding a provided buffer) before the ring
/// cancels it; the consumer re-arms once it has caught up.
pub(crate) const MULTI_BUFFERED_CAP: usize = 32;

/// `user_data` of fire-and-forget SQEs (cancels, closes of fds nobody owns any more).
pub(crate) const DETACHED: u64 = u64::MAX;

pub(crate) enum SlotState {
    Free {
        next: u32,
    },
    Pending(Option<Waker>),
    Done {
        res: i32,
        flags: u32,
    },
    Multi {
        queue: VecDeque<(i32, u32)>,
        waker: Option<Waker>,
        ended: bool,
        /// Cancelled by the ring because its consumer let too many buffers queue up; its
        /// final `ECANCELED` is reported as `EAGAIN` (re-arm when caught up).
        capped: bool,
    },
    Ignored {
        data: Box<dyn Any>,
        closes_fd: bool,
    },
}

struct Slot {
    generation: u32,
    state: SlotState,
}

/// Counters a benchmark or test can read to see what the ring did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingStats {
    /// `io_uring_enter` calls made by the loop.
    pub enters: u64,
    /// SQEs pushed.
    pub sqes: u64,
    /// CQEs reaped.
    pub cqes: u64,
    /// Waits that batched completions (see [`crate::batch_wait`]).
    pub batched_waits: u64,
    /// Receives held back for a byte threshold (see [`crate::net::Stream::recv_gather`]).
    pub held_receives: u64,
    /// Holds that reached their deadline before their threshold.
    pub hold_expiries: u64,
}

/// Work the caller performs after releasing its borrow of the ring: waking may run scheduler
/// code and dropping ignored data may run arbitrary destructors that need the ring again.
#[derive(Default)]
pub(crate) struct AfterCompletion {
    pub(crate) wake: Option<Waker>,
    pub(crate) drop_data: Option<Box<dyn Any>>,
}

impl RingStats {
    /// The counts since `before` (an earlier snapshot of the same ring).
    pub fn since(&self, before: &RingStats) -> RingStats {
        RingStats {
            enters: self.enters.wrapping_sub(before.enters),
            sqes: self.sqes.wrapping_sub(before.sqes),
            cqes: self.cqes.wrapping_sub(before.cqes),
            batched_waits: self.batched_waits.wrapping_sub(before.batched_waits),
            held_receives: self.held_receives.wrapping_sub(before.held_receives),
            hold_expiries: self.hold_expiries.wrapping_sub(before.hold_expiries),
        }
    }
}

impl AfterCompletion {
    pub(crate) fn run(self) {
        if let Some(w) = self.wake {
            w.wake();
        }
        drop(self.drop_data);
    }
}

/// Work the ring's own methods could not do inside the borrow of the ring: wakers to wake
/// (a waker may poll a future inline, which needs the ring), and data and wakers to drop
/// (their `Drop` may run arbitrary code, an op's drop included). Whoever releases the borrow
/// takes it with [`Ring::take_deferred`] and runs it afterwards.
#[derive(Default)]
pub(crate) struct Deferred {
    wake: Vec<Waker>,
    drop_wakers: Vec<Waker>,
    drop_data: Vec<Box<dyn Any>>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.wake.is_empty() && self.drop_wakers.is_empty() && self.drop_data.is_empty()
    }

    /// Wakes and drops; call with the ring not borrowed.
    pub(crate) fn run(self) {
        self.wake.into_iter().for_each(Waker::wake);
        drop(self.drop_wakers);
        drop(self.drop_data);
    }

    /// Keeps whatever a freed record still held (a waker) for dropping later.
    fn keep(&mut self, state: Option<SlotState>) {
        match state {
            Some(SlotState::Pending(Some(w))) | Some(SlotState::Multi { waker: Some(w), .. }) => {
                self.drop_wakers.push(w)
            }
            Some(SlotState::Ignored { data, .. }) => self.drop_data.push(data),
            _ => {}
        }
    }
}

/// One io_uring plus the records of the ops in flight on it.
pub(crate) struct Ring {
    uring: IoUring,
    slots: Vec<Slot>,
    free_head: u32,
    live_slots: usize,
    detached_in_flight: usize,
    /// CQEs reaped while pushing (SQ full and CQ overflowing), processed by the loop next.
    backlog: Vec<(u64, i32, u32)>,
    pub(crate) stats: RingStats,
    pub(crate) defer_taskrun: bool,
    /// What the ring uses (the kernel's offer minus the compatibility mask).
    pub(crate) features: RingFeatures,
    /// The kernel honours `min_wait_usec` in the enter arguments (6.12+) and the mask allows
    /// it.
    min_timeout: bool,
    /// Provided buffers for multishot receives, registered on first use. Declared after
    /// `uring` so the io_uring is closed before the memory is freed.
    buf_ring: Option<bufring::BufRing>,
    /// Wakes and drops owed since the current borrow began (see [`Deferred`]).
    deferred: Deferred,
    /// `leak_in_flight` ran: records were dropped whose data the kernel may still own, so an
    /// op that finds no record must keep (or leak) its data.
    leaked: bool,
}

const NO_SLOT: u32 = u32::MAX;
/// `IORING_ENTER_GETEVENTS` from the kernel ABI (the crate keeps its `sys` module private).
const IORING_ENTER_GETEVENTS: u32 = 1;

impl Ring {
    pub(crate) fn new(config: &RingConfig) -> Result<Ring, RingError> {
        let (uring, flags) = setup::build(config)?;
        let min_timeout = uring.params().is_feature_min_timeout()
            && setup::allowed(config.kernel_compat, setup::since::MIN_TIMEOUT);
        let features = RingFeatures {
            kernel_compat: config.kernel_compat,
            defer_taskrun: flags.defer_taskrun,
            coop_taskrun: flags.coop_taskrun,
            submit_all: flags.submit_all,
            no_sqarray: flags.no_sqarray,
            min_timeout,
        };
        if config.kernel_compat.is_some() {
            tracing::debug!(
                ?features,
                "io_uring: ring features under the compatibility mask"
            );
        }
        Ok(Ring {
            min_timeout,
            features,
            uring,
            slots: Vec::with_capacity(256),
            free_head: NO_SLOT,
            live_slots: 0,
            detached_in_flight: 0,
            backlog: Vec::new(),
            stats: RingStats::default(),
            defer_taskrun: flags.defer_taskrun,
            buf_ring: None,
            deferred: Deferred::default(),
            leaked: false,
        })
    }

    /// Ops the kernel may still be working on: records waiting for a CQE (`Pending`,
    /// `Ignored`, a multishot op not yet ended) and detached ops. A `Done` record is not
    /// counted: the kernel is finished with it, whoever holds its future (teardown does not
    /// wait for a future returned out of `block_on` to be polled).
    pub(crate) fn kernel_owned(&self) -> usize {
        let records = self
            .slots
            .iter()
            .filter(|s| match &s.state {
                SlotState::Pending(_) | SlotState::Ignored { .. } => true,
                SlotState::Multi { ended, .. } => !ended,
                SlotState::Done { .. } | SlotState::Free { .. } => false,
            })
            .count();
        records + self.detached_in_flight
    }

    /// True when wakes or drops are owed (see [`Deferred`]).
    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// The wakes and drops owed; run them after releasing the borrow of the ring.
    pub(crate) fn take_deferred(&mut self) -> Deferred {
        std::mem::take(&mut self.deferred)
    }

    /// Registers the provided-buffer ring if it is not yet (multishot receives need it).
    pub(crate) fn provided_buffers(&mut self) -> io::Result<u16> {
        if self.buf_ring.is_none() {
            self.buf_ring = Some(bufring::BufRing::register(self)?);
        }
        Ok(bufring::GROUP)
    }

    /// Gives a provided buffer back to the kernel.
    pub(crate) fn recycle_buffer(&mut self, bid: u16) {
        if let Some(br) = self.buf_ring.as_mut() {
            br.recycle(bid, &mut self.deferred.wake);
        }
    }

    /// Ready when the kernel has at least one provided buffer (a starved multishot receive
    /// waits for this before re-arming); otherwise stores the waker for the next recycle.
    pub(crate) fn poll_buffer_available(&mut self, waker: &Waker) -> bool {
        match self.buf_ring.as_mut() {
            Some(br) => br.poll_available(waker),
            None => true,
        }
    }

    /// The consumer's handle on the provided buffer a CQE named, or None (and the buffer is
    /// recycled) when it does not fit.
    pub(crate) fn take_buffer(&mut self, reactor: u64, flags: u32, len: usize) -> Option<RecvBuf> {
        let bid = cqueue::buffer_select(flags)?;
        let taken = self
            .buf_ring
            .as_ref()
            .and_then(|br| br.take(reactor, bid, len));
        if taken.is_none() {
            self.recycle_buffer(bid);
        }
        taken
    }

    /// A CQE nobody will consume: give back the buffer it names, if any.
    pub(crate) fn drop_cqe_buffer(&mut self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.recycle_buffer(bid);
        }
    }

    fn alloc(&mut self, state: SlotState) -> u64 {
        self.live_slots += 1;
        if self.free_head != NO_SLOT {
            let idx = self.free_head;
            let slot = &mut self.slots[idx as usize];
            if let SlotState::Free { next } = slot.state {
                self.free_head = next;
            }
            slot.state = state;
            (u64::from(slot.generation) << 32) | u64::from(idx)
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                generation: 0,
                state,
            });
            u64::from(idx)
        }
    }

    fn slot_mut(&mut self, user_data: u64) -> Option<&mut SlotState> {
        let idx = (user_data & 0xffff_ffff) as usize;
        let generation = (user_data >> 32) as u32;
        match self.slots.get_mut(idx) {
            Some(s) if s.generation == generation && !matches!(s.state, SlotState::Free { .. }) => {
                Some(&mut s.state)
            }
            _ => None,
        }
    }

    /// Frees a record, returning its state so the caller can drop data outside the borrow.
    fn free(&mut self, user_data: u64) -> Option<SlotState> {
        let idx = (user_data & 0xffff_ffff) as u32;
        let head = self.free_head;
        let slot = self.slots.get_mut(idx as usize)?;
        if slot.generation != (user_data >> 32) as u32 {
            return None;
        }
        let old = std::mem::replace(&mut slot.state, SlotState::Free { next: head });
        slot.generation = slot.generation.wrapping_add(1);
        self.free_head = idx;
        self.live_slots -= 1;
        Some(old)
    }

    /// Queues an SQE, flushing the SQ to the kernel first if it is full.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its CQE is reaped (it points into op
    /// data owned by a record, or into `'static` memory).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                self.stats.sqes += 1;
                return Ok(());
            }
            // The SQ is full: submit what it holds (an enter of its own, counted as one).
            self.stats.enters += 1;
            match self.uring.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    // The CQ is full: reap into the backlog so the kernel can make progress.
                    self.reap_into_backlog();
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn reap_into_backlog(&mut self) {
        for cqe in self.uring.completion() {
            self.backlog
                .push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }

    /// Registers a single-shot op and queues its SQE. On a push failure the record completes
    /// at once with that error, so the future reports it on first poll.
    ///
    /// # Safety
    /// As [`Ring::push`]: `entry` may only point into memory that outlives the op's record.
    pub(crate) unsafe fn submit(&mut self, entry: squeue::Entry, multishot: bool) -> u64 {
        let state = if multishot {
            SlotState::Multi {
                queue: VecDeque::new(),
                waker: None,
                ended: false,
                capped: false,
            }
        } else {
            SlotState::Pending(None)
        };
        let ud = self.alloc(state);
        // SAFETY: forwarded from the caller's contract.
        if let Err(e) = unsafe { self.push(&entry.user_data(ud)) } {
            let res = -e.raw_os_error().unwrap_or(libc::EIO);
            if let Some(s) = self.slot_mut(ud) {
                *s = if multishot {
                    SlotState::Multi {
                        queue: VecDeque::from([(res, 0)]),
                        waker: None,
                        ended: true,
                        capped: false,
                    }
                } else {
                    SlotState::Done { res, flags: 0 }
                };
            }
        }
        ud
    }

    /// Queues an SQE nobody waits for (AsyncCancel, Close of an orphaned fd).
    ///
    /// # Safety
    /// `entry` must not point at any memory (cancel and close carry only integers).
    unsafe fn submit_detached(&mut self, entry: squeue::Entry) {
        // SAFETY: the entry carries no pointers.
        if unsafe { self.push(&entry.user_data(DETACHED)) }.is_ok() {
            self.detached_in_flight += 1;
        }
    }

    /// Closes `fd` through the ring without waiting for the result.
    pub(crate) fn close_detached(&mut self, fd: RawFd) {
        let entry = io_uring::opcode::Close::new(io_uring::types::Fd(fd)).build();
        // SAFETY: Close carries only the fd number.
        unsafe { self.submit_detached(entry) };
    }

    /// Asks the kernel to cancel the op with this `user_data`.
    pub(crate) fn cancel(&mut self, user_data: u64) {
        let entry = io_uring::opcode::AsyncCancel::new(user_data).build();
        // SAFETY: AsyncCancel carries only the target's user_data.
        unsafe { self.submit_detached(entry) };
    }

    /// Asks the kernel to cancel every op in flight on `fd`.
    pub(crate) fn cancel_fd(&mut self, fd: RawFd) {
        let b = io_uring::types::CancelBuilder::fd(io_uring::types::Fd(fd)).all();
        // SAFETY: AsyncCancel carries only integers.
        unsafe { self.submit_detached(io_uring::opcode::AsyncCancel2::new(b).build()) };
    }

    /// Asks the kernel to cancel every op in flight on this ring (teardown).
    pub(crate) fn cancel_all(&mut self) {
        let b = io_uring::types::CancelBuilder::any();
        // SAFETY: AsyncCancel carries only integers.
        unsafe { self.submit_detached(io_uring::opcode::AsyncCancel2::new(b).build()) };
    }

    /// Polls a single-shot record: `Some((res, flags))` once complete (the record is freed).
    pub(crate) fn poll_op(&mut self, ud: u64, waker: &Waker) -> Option<(i32, u32)> {
        let leaked = self.leaked;
        let mut replaced = None;
        let out = match self.slot_mut(ud) {
            Some(SlotState::Done { res, flags }) => {
                let out = (*res, *flags);
                let old = self.free(ud);
                self.deferred.keep(old);
                Some(out)
            }
            Some(SlotState::Pending(w)) => {
                match w {
                    Some(w) if w.will_wake(waker) => {}
                    _ => replaced = w.replace(waker.clone()),
                }
                None
            }
            // The record was leaked at teardown: the kernel may still own the op's data.
            None if leaked => None,
            // A record in any other state for a live Op is a bug; report it as an error.
            _ => Some((-libc::EFAULT, 0)),
        };
        self.deferred.drop_wakers.extend(replaced);
        out
    }

    /// Polls a multishot record: the next queued CQE, or None (waker stored).
    pub(crate) fn poll_multi(&mut self, ud: u64, waker: &Waker) -> Option<(i32, u32)> {
        match self.slot_mut(ud) {
            Some(SlotState::Multi {
                queue,
                waker: w,
                ended,
                ..
            }) => {
                if let Some(item) = queue.pop_front() {
                    if *ended && queue.is_empty() {
                        let old = self.free(ud);
                        self.deferred.keep(old);
                    }
                    return Some(item);
                }
                let replaced = match w {
                    Some(w) if w.will_wake(waker) => None,
                    _ => w.replace(waker.clone()),
                };
                self.deferred.drop_wakers.extend(replaced);
                None
            }
            _ => Some((-libc::EFAULT, 0)),
        }
    }

    /// The future of an op was dropped (`cancel`: ask the kernel to stop it) or detached
    /// (let it finish). The record takes the data if the op is still in flight; otherwise
    /// (completed, or no such record) the data is queued for dropping after the borrow of the
    /// ring is released — its `Drop` may run any code, including code that needs the ring.
    /// Fds of queued multishot results are closed through the ring.
    pub(crate) fn abandon(&mut self, ud: u64, data: Box<dyn Any>, closes_fd: bool, cancel: bool) {
        let Some(state) = self.slot_mut(ud) else {
            if self.leaked {
                std::mem::forget(data);
            } else {
                self.deferred.drop_data.push(data);
            }
            return;
        };
        match state {
            SlotState::Pending(_) => {
                let old = std::mem::replace(state, SlotState::Ignored { data, closes_fd });
                self.deferred.keep(Some(old));
                if cancel {
                    self.cancel(ud);
                }
            }
            SlotState::Multi { queue, ended, .. } => {
                let queued: Vec<(i32, u32)> = queue.drain(..).collect();
                if *ended {
                    let old = self.free(ud);
                    self.deferred.keep(old);
                    self.deferred.drop_data.push(data);
                } else {
                    let old = std::mem::replace(state, SlotState::Ignored { data, closes_fd });
                    self.deferred.keep(Some(old));
                    self.cancel(ud);
                }
                for (res, flags) in queued {
                    if closes_fd && res >= 0 {
                        self.close_detached(res);
                    }
                    self.drop_cqe_buffer(flags);
                }
            }
            SlotState::Done { res, .. } => {
                let res = *res;
                self.free(ud);
                if closes_fd && res >= 0 {
                    self.close_detached(res);
                }
                self.deferred.drop_data.push(data);
            }
            SlotState::Ignored { .. } | SlotState::Free { .. } => {
                self.deferred.drop_data.push(data);
            }
        }
    }

    /// Enters the kernel: submits queued SQEs and, if `wait`, waits for at least one CQE.
    /// Always asks for completions to be processed (GETEVENTS), which DEFER_TASKRUN needs.
    pub(crate) fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        self.stats.enters += 1;
        let want = usize::from(wait);
        let r = match timeout {
            Some(t) if wait => {
                let ts = io_uring::types::Timespec::from(t);
                let args = io_uring::types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(want, &args)
            }
            _ if wait => self.uring.submit_and_wait(want),
            _ => {
                let to_submit = self.uring.submission().len() as u32;
                // SAFETY: enter with no argument pointer; GETEVENTS makes deferred task work
                // run so completions become visible without waiting.
                unsafe {
                    self.uring.submitter().enter::<libc::sigset_t>(
                        to_submit,
                        0,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                }
            }
        };
        self.entered(r)
    }

    /// Enters the kernel to wait with completion batching: returns once `window` has passed
    /// with at least one completion, or at the first completion after it.
    ///
    /// The wait asks for more completions than can arrive, so the kernel does not wake this
    /// thread for each one: with DEFER_TASKRUN a readiness event only queues task work, and the
    /// waiter is woken when the queued work reaches the number it waits for (timers and other
    /// non-lazy completions still wake it at once). A receive armed on a socket therefore runs
    /// once, at the end of the window, and copies everything that arrived meanwhile — one
    /// wake-up, one receive and (after the tasks ran) one send for a batch of replies.
    ///
    /// With `min_wait_usec` (6.12+) the kernel stops waiting for the batch after `window` and
    /// returns at the next completion, all in one enter. Older kernels get a plain timed wait
    /// for the window; the loop then enters again with an ordinary wait if nothing came.
    pub(crate) fn enter_batched(&mut self, window: Duration) -> io::Result<()> {
        self.stats.enters += 1;
        self.stats.batched_waits += 1;
        let want = self.uring.params().cq_entries() as usize;
        let r = if self.min_timeout {
            // The overall timeout only bounds a wait with nothing in flight; the loop enters
            // again when it expires.
            let ts = io_uring::types::Timespec::from(Duration::from_secs(3600));
            let usec = u32::try_from(window.as_micros()).unwrap_or(u32::MAX).max(1);
            let args = io_uring::types::SubmitArgs::new()
                .timespec(&ts)
                .min_wait_usec(usec);
            self.uring.submitter().submit_with_args(want, &args)
        } else {
            let ts = io_uring::types::Timespec::from(window);
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            self.uring.submitter().submit_with_args(want, &args)
        };
        self.entered(r)
    }

    /// Interprets an enter's result: an interrupted or timed-out wait is fine, and a full
    /// CQ (`EBUSY`/`EAGAIN`) is drained into the backlog so the next enter can proceed.
    fn entered(&mut self, r: io::Result<usize>) -> io::Result<()> {
        match r {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR | libc::ETIME) => Ok(()),
                Some(libc::EBUSY | libc::EAGAIN) => {
                    self.reap_into_backlog();
                    Ok(())
                }
                _ => Err(e),
            },
        }
    }

    /// Completions already taken off the CQ (while pushing SQEs into a full ring) and not
    /// yet dispatched: the loop must not sleep on top of them.
    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Moves every available CQE (backlog first) into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.append(&mut self.backlog);
        for cqe in self.uring.completion() {
            out.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        self.stats.cqes += out.len() as u64;
    }

    /// Applies one CQE to its record. The returned work runs after the borrow is released.
    pub(crate) fn complete(&mut self, ud: u64, res: i32, flags: u32) -> AfterCompletion {
        if ud == DETACHED {
            self.detached_in_flight = self.detached_in_flight.saturating_sub(1);
            return AfterCompletion::default();
        }
        if cqueue::buffer_select(flags).is_some() {
            if let Some(br) = self.buf_ring.as_mut() {
                br.consumed();
            }
        }
        let more = cqueue::more(flags);
        if self.slot_mut(ud).is_none() {
            self.drop_cqe_buffer(flags);
        }
        let Some(state) = self.slot_mut(ud) else {
            tracing::warn!(
                user_data = ud,
                res,
                "io_uring: completion for an unknown op record"
            );
            return AfterCompletion::default();
        };
        match state {
            SlotState::Pending(w) => {
                let wake = w.take();
                *state = SlotState::Done { res, flags };
                AfterCompletion {
                    wake,
                    drop_data: None,
                }
            }
            SlotState::Multi {
                queue,
                waker,
                ended,
                capped,
            } => {
                let res = if !more && *capped && res == -libc::ECANCELED {
                    -libc::EAGAIN
                } else {
                    res
                };
                queue.push_back((res, flags));
                if !more {
                    *ended = true;
                }
                // A multishot receive whose consumer lags holds a buffer per queued chunk:
                // stop it before it takes the buffers every other stream needs.
                let cap = more
                    && !*capped
                    && queue.len() >= MULTI_BUFFERED_CAP
                    && cqueue::buffer_select(flags).is_some();
                if cap {
                    *capped = true;
                }
                let wake = waker.take();
                if cap {
                    self.cancel(ud);
                }
                AfterCompletion {
                    wake,
                    drop_data: None,
                }
            }
            SlotState::Ignored { closes_fd, .. } => {
                if *closes_fd && res >= 0 {
                    self.close_detached(res);
                }
                self.drop_cqe_buffer(flags);
                if more {
                    return AfterCompletion::default();
                }
                match self.free(ud) {
                    Some(SlotState::Ignored { data, .. }) => AfterCompletion {
                        wake: None,
                        drop_data: Some(data),
                    },
                    _ => AfterCompletion::default(),
                }
            }
            SlotState::Done { .. } | SlotState::Free { .. } => AfterCompletion::default(),
        }
    }

    /// Takes every stored waker (teardown: wake tasks so they can be dropped).
    pub(crate) fn take_wakers(&mut self) -> Vec<Waker> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            match &mut slot.state {
                SlotState::Pending(w) | SlotState::Multi { waker: w, .. } => out.extend(w.take()),
                _ => {}
            }
        }
        out
    }

    /// Last resort at teardown when the kernel did not finish some ops in time: leak their
    /// data rather than free memory the kernel may still write.
    pub(crate) fn leak_in_flight(&mut self) {
        for slot in &mut self.slots {
            let state = std::mem::replace(&mut slot.state, SlotState::Free { next: NO_SLOT });
            if let SlotState::Ignored { data, .. } = state {
                std::mem::forget(data);
            }
        }
        self.live_slots = 0;
        self.detached_in_flight = 0;
        self.leaked = true;
        // An op still in flight may be a multishot receive that can select and fill provided
        // buffers: leak them (and their descriptor ring) too.
        if let Some(br) = self.buf_ring.take() {
            std::mem::forget(br);
        }
    }
}
