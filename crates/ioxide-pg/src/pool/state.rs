//! The pool's bookkeeping: live connections, the FIFO of waiters, routing (connects and
//! backoff are in `connect.rs`, lifetimes and idle timeouts in `housekeeping.rs`).
//!
//! Everything here runs on the pool's reactor thread; `RefCell` borrows are never held across
//! an await or while waking a task.

use super::builder::Hook;
use crate::{PgConnection, PgError, PgOptions, TimeoutKind};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// A connection whose oldest command has run longer than this takes no more pipelined
/// commands until it finishes: requests wait for another connection rather than queue behind
/// a slow query.
const PIPELINE_BEHIND_LIMIT: Duration = Duration::from_millis(20);
/// How long after a request began waiting the first failed connect may come and still count
/// as "the database was already down" (a refused or timed-out connect takes a moment).
const DOWN_SLACK: Duration = Duration::from_millis(500);

/// Pool counters, cheap to read (see [`super::PgPool::stats`]). More may be added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Live connections.
    pub open: usize,
    /// Live connections with nothing in flight and not rented.
    pub idle: usize,
    /// Commands in flight through the pool (plus rented connections).
    pub in_flight: usize,
    /// Requests waiting for capacity.
    pub waiting: usize,
    /// Connects in progress.
    pub connecting: usize,
    /// Connections opened since start.
    pub opened_total: u64,
    /// Connections found broken and discarded since start.
    pub broken_total: u64,
    /// Requests failed by `acquire_timeout` or commands failed by `command_timeout`.
    pub timeouts_total: u64,
    /// Queries retried transparently because their connection broke before sending them.
    pub retries_total: u64,
    /// Failed connect attempts since start (after-connect hook failures included).
    pub connect_failures_total: u64,
    /// New connections the after-connect hook failed (an error, a panic, past
    /// `connect_timeout`), each closed instead of pooled.
    pub hook_failures_total: u64,
    /// Connections closed after `max_lifetime` (each once its replacement was open).
    pub retired_total: u64,
    /// Connections closed after `idle_timeout`.
    pub idle_closed_total: u64,
}

pub(crate) struct Slot {
    pub(crate) id: u64,
    pub(crate) conn: PgConnection,
    /// Commands in flight through the pool on this connection.
    pub(crate) inflight: usize,
    /// Rented exclusively (a guard holds it).
    pub(crate) rented: bool,
    /// When `max_lifetime` is up for it (jittered); `None`: no lifetime.
    pub(crate) expires_at: Option<Instant>,
    /// Since when housekeeping has found it idle with no command issued in between (kept only
    /// with `idle_timeout`, off the hot path).
    pub(crate) idle_since: Instant,
    /// `commands_issued` when housekeeping last looked.
    pub(crate) seen_commands: u64,
}

/// A request waiting for capacity.
pub(crate) struct Waiter {
    pub(crate) exclusive: bool,
    pub(crate) deadline: Instant,
    pub(crate) waker: Option<Waker>,
    /// Set when capacity was handed to this waiter (slot id) or it failed.
    pub(crate) outcome: Option<Result<u64, PgError>>,
    /// The database has been unreachable for long: fail at the next failed connect instead
    /// of waiting out `acquire_timeout`.
    pub(crate) fail_fast: bool,
    /// When it started waiting: only a connect begun after this may fail it fast (one begun
    /// before may have been refused by a server that has come back since).
    pub(crate) since: Instant,
}

pub(crate) struct PoolState {
    /// The connections that take commands.
    pub(crate) slots: Vec<Slot>,
    /// A connection past its lifetime whose replacement has joined `slots`: it takes no new
    /// commands (routing never sees it) and is closed once nothing is in flight on it.
    pub(crate) retiring: Option<Slot>,
    pub(crate) connecting: usize,
    /// How many serving connections the pool heads for: `size`, less the connections
    /// `idle_timeout` closed (never below `min_connections`), up again on demand.
    pub(crate) target: usize,
    /// A replacement for a connection past its lifetime is connecting (counted in
    /// `connecting`).
    pub(crate) replacing: bool,
    /// The last retired connection, until its socket has closed: the next replacement waits
    /// for it, so the server never holds more than one connection beyond `size`.
    pub(crate) retired_closing: Option<PgConnection>,
    pub(crate) waiters: VecDeque<Rc<RefCell<Waiter>>>,
    pub(crate) failures: u32,
    pub(crate) failing_since: Option<Instant>,
    /// When the last connect that succeeded began: a connect begun before it that fails
    /// later (a probe overtaken by an urgent connect) says nothing about the database now.
    pub(crate) last_success: Option<Instant>,
    /// Connections broke since the last successful connect: the server may be restarting,
    /// so replacements start with one probe, and the rest follow once it has connected —
    /// R reactors send R connects at a restarting server, not R × pool_size.
    pub(crate) suspect: bool,
    /// A request already waited out acquire_timeout while nothing could connect: the
    /// database is down "for long" even if the first failed connect came a little later
    /// than that request (its refusal took a while).
    pub(crate) timed_out_while_down: bool,
    pub(crate) next_attempt: Instant,
    pub(crate) last_error: Option<String>,
    pub(crate) next_id: u64,
    pub(crate) closed: bool,
    pub(crate) stats: PoolStats,
    pub(crate) maintenance: Option<Waker>,
    pub(crate) rng: u64,
}

pub(crate) struct Inner {
    pub(crate) opts: PgOptions,
    pub(crate) target: crate::conn::walk::Topology,
    pub(crate) size: usize,
    pub(crate) depth: usize,
    pub(crate) acquire_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) min_connections: usize,
    /// Run on every new connection before it is pooled.
    pub(crate) hook: Option<Hook>,
    pub(crate) st: RefCell<PoolState>,
    pub(crate) dirty: Cell<bool>,
    /// The waiter deadline the maintenance task's timer is set for (None: no timer).
    pub(crate) expiry_armed: Cell<Option<Instant>>,
}

impl Inner {
    pub(crate) fn new(
        opts: PgOptions,
        target: crate::conn::walk::Topology,
        hook: Option<Hook>,
    ) -> Inner {
        let size = opts.get_pool_size().max(1);
        let depth = opts.get_pipeline_depth().max(1);
        let acquire_timeout = opts.get_acquire_timeout();
        Inner {
            max_lifetime: opts.get_max_lifetime(),
            idle_timeout: opts.get_idle_timeout(),
            min_connections: opts.get_min_connections().min(size),
            hook,
            opts,
            target,
            size,
            depth,
            acquire_timeout,
            st: RefCell::new(PoolState {
                slots: Vec::with_capacity(size),
                retiring: None,
                connecting: 0,
                target: size,
                replacing: false,
                retired_closing: None,
                waiters: VecDeque::new(),
                failures: 0,
                failing_since: None,
                last_success: None,
                suspect: false,
                timed_out_while_down: false,
                next_attempt: Instant::now(),
                last_error: None,
                next_id: 1,
                closed: false,
                stats: PoolStats::default(),
                maintenance: None,
                rng: seed(),
            }),
            dirty: Cell::new(false),
            expiry_armed: Cell::new(None),
        }
    }

    /// The best slot for a new command: the least loaded healthy one under `depth` (or, for
    /// an exclusive rent, an idle one).
    fn pick(&self, st: &PoolState, exclusive: bool) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        // Commands started before this are "running for a while"; computed at most once, and
        // only when a loaded connection is considered.
        let mut cutoff: Option<Option<Instant>> = None;
        for (i, s) in st.slots.iter().enumerate() {
            if s.rented {
                continue;
            }
            let Some((queued, oldest)) = s.conn.routing_load() else {
                continue;
            };
            // Commands whose futures were dropped still occupy the connection until drained.
            let load = s.inflight.max(queued);
            // A rented connection starts Idle (no transaction open), always.
            if exclusive && (load > 0 || s.conn.transaction_status() != crate::TxnStatus::Idle) {
                continue;
            }
            if load >= self.depth {
                continue;
            }
            // Never pipeline behind a command that has been running for a while (a slow
            // query): wait for a connection instead of queueing behind it.
            if load > 0 {
                let cutoff = *cutoff
                    .get_or_insert_with(|| ioxide::time::now().checked_sub(PIPELINE_BEHIND_LIMIT));
                if oldest.zip(cutoff).is_some_and(|(t, cutoff)| t < cutoff) {
                    continue;
                }
            }
            if load == 0 {
                return Some(i);
            }
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    fn take(st: &mut PoolState, i: usize, exclusive: bool) -> u64 {
        let s = &mut st.slots[i];
        if exclusive {
            s.rented = true;
        } else {
            s.inflight += 1;
        }
        s.id
    }

    /// Fast path: capacity now, if nobody is queued ahead.
    pub(crate) fn try_acquire(&self, exclusive: bool) -> Option<u64> {
        let mut st = self.st.borrow_mut();
        if !st.waiters.is_empty() {
            return None;
        }
        let i = self.pick(&st, exclusive)?;
        let id = Self::take(&mut st, i, exclusive);
        // Shared on a connection already busy (routing takes an idle one first): no idle
        // connection, so demand, if idle_timeout closed some.
        if st.target < self.size && st.slots[i].inflight > 1 {
            drop(st);
            self.grow();
        }
        Some(id)
    }

    #[cold]
    #[inline(never)]
    fn grow(&self) {
        self.want_one_more();
        self.poke();
    }

    /// A request found no idle connection: head for one more connection, if idle_timeout
    /// closed some.
    pub(crate) fn want_one_more(&self) {
        let mut st = self.st.borrow_mut();
        if st.target < self.size {
            st.target += 1;
        }
    }

    pub(crate) fn conn(&self, id: u64) -> Option<PgConnection> {
        let st = self.st.borrow();
        st.slots
            .iter()
            .find(|s| s.id == id)
            // Capacity granted on a connection that began retiring before its waiter woke.
            .or_else(|| st.retiring.as_ref().filter(|s| s.id == id))
            .map(|s| s.conn.share())
    }

    /// Gives capacity back and hands it to queued waiters, in order. A retiring connection
    /// left with nothing in flight is closed.
    pub(crate) fn release(&self, id: u64, exclusive: bool) {
        let found = {
            let mut st = self.st.borrow_mut();
            match st.slots.iter_mut().find(|s| s.id == id) {
                Some(s) => {
                    Self::give_back(s, exclusive);
                    true
                }
                None => false,
            }
        };
        if !found {
            self.release_retiring(id, exclusive);
        }
        self.dispatch();
    }

    /// `release` for the retiring connection: closed once nothing is in flight on it.
    #[cold]
    #[inline(never)]
    fn release_retiring(&self, id: u64, exclusive: bool) {
        let retired = {
            let mut st = self.st.borrow_mut();
            match st.retiring.as_mut().filter(|s| s.id == id) {
                Some(s) => {
                    Self::give_back(s, exclusive);
                    let drained = s.inflight == 0 && !s.rented;
                    drained.then(|| Self::retire(&mut st)).flatten()
                }
                None => None,
            }
        };
        // Closed (Terminate) outside the borrow.
        if let Some(conn) = retired {
            Self::close_retired(conn);
        }
    }

    fn give_back(s: &mut Slot, exclusive: bool) {
        if exclusive {
            s.rented = false;
        } else {
            s.inflight = s.inflight.saturating_sub(1);
        }
    }

    /// Hands free capacity to the waiters at the head of the queue.
    pub(crate) fn dispatch(&self) {
        if self.st.borrow().waiters.is_empty() {
            return;
        }
        let mut wake = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            while let Some(w) = st.waiters.front().cloned() {
                let exclusive = w.borrow().exclusive;
                let Some(i) = self.pick(&st, exclusive) else {
                    break;
                };
                let id = Self::take(&mut st, i, exclusive);
                st.waiters.pop_front();
                let mut w = w.borrow_mut();
                w.outcome = Some(Ok(id));
                wake.extend(w.waker.take());
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Fails waiters whose acquire_timeout passed. Returns how many.
    pub(crate) fn expire_waiters(&self, now: Instant) -> usize {
        let mut wake = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            let last = st.last_error.clone();
            let timeout = self.acquire_timeout;
            let mut earliest_start: Option<Instant> = None;
            st.waiters.retain(|w| {
                let mut w = w.borrow_mut();
                if now < w.deadline {
                    return true;
                }
                let started = w.deadline.checked_sub(timeout).unwrap_or(w.deadline);
                earliest_start = Some(earliest_start.map_or(started, |e| e.min(started)));
                w.outcome = Some(Err(acquire_error(timeout, last.as_deref())));
                wake.extend(w.waker.take());
                false
            });
            st.stats.timeouts_total += wake.len() as u64;
            // Down "for long" only if connects were already failing (give or take the time a
            // refusal takes) when a request that just timed out began waiting — not when a
            // busy pool lost its connections moments before that request's deadline.
            let failing_all_along = match (st.failing_since, earliest_start) {
                (Some(since), Some(started)) => since <= started + DOWN_SLACK,
                _ => false,
            };
            if st.slots.is_empty() && failing_all_along {
                st.timed_out_while_down = true;
            }
        }
        let n = wake.len();
        wake.into_iter().for_each(Waker::wake);
        n
    }

    /// The earliest deadline of a waiting request.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let st = self.st.borrow();
        st.waiters.iter().map(|w| w.borrow().deadline).min()
    }

    /// Fails every waiter at once (a non-transient connect error, or the pool closed).
    pub(crate) fn fail_waiters(&self, e: &PgError) {
        let mut wake = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            for w in st.waiters.drain(..) {
                let mut w = w.borrow_mut();
                w.outcome = Some(Err(PgError::closed(e.to_string()).never_sent()));
                wake.extend(w.waker.take());
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// A connect begun at `started` failed while the database is known to be down: fail the
    /// waiters that asked to fail fast and were already waiting when it began. Returns
    /// whether fail-fast waiters remain (they need a connect of their own).
    pub(crate) fn fail_fast_waiters(&self, e: &PgError, started: Instant) -> bool {
        let mut wake = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            if !st.slots.is_empty() {
                return false;
            }
            st.waiters.retain(|w| {
                let mut w = w.borrow_mut();
                if !w.fail_fast || w.since > started {
                    return true;
                }
                w.outcome = Some(Err(PgError::closed(format!(
                    "the database is unreachable: {e}"
                ))
                .never_sent()));
                wake.extend(w.waker.take());
                false
            });
        }
        wake.into_iter().for_each(Waker::wake);
        self.st
            .borrow()
            .waiters
            .iter()
            .any(|w| w.borrow().fail_fast)
    }

    /// The pool has had no live connection and failed to connect for at least
    /// `acquire_timeout` (or a request already timed out meanwhile): new requests fail at once
    /// instead of waiting.
    pub(crate) fn down_for_long(&self) -> bool {
        let st = self.st.borrow();
        st.slots.is_empty()
            && (st.timed_out_while_down
                || st
                    .failing_since
                    .is_some_and(|t| t.elapsed() >= self.acquire_timeout))
    }

    /// Drops broken connections. Returns how many.
    pub(crate) fn remove_broken(&self) -> usize {
        let removed: Vec<Slot> = {
            let mut st = self.st.borrow_mut();
            let (mut broken, live): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut st.slots)
                .into_iter()
                .partition(|s| s.conn.is_broken());
            st.slots = live;
            if st.retiring.as_ref().is_some_and(|s| s.conn.is_broken()) {
                broken.extend(st.retiring.take());
            }
            st.stats.broken_total += broken.len() as u64;
            if !broken.is_empty() {
                st.suspect = true;
            }
            broken
        };
        let n = removed.len();
        drop(removed);
        n
    }

    /// Wakes the maintenance task (broken connection, connect finished, …).
    pub(crate) fn poke(&self) {
        self.dirty.set(true);
        let w = self.st.borrow_mut().maintenance.take();
        if let Some(w) = w {
            w.wake();
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let st = self.st.borrow();
        let mut s = st.stats;
        // A retiring connection is open, never idle (it is closed once it is).
        s.open = st.slots.len() + usize::from(st.retiring.is_some());
        s.idle = st
            .slots
            .iter()
            .filter(|s| s.inflight == 0 && !s.rented && !s.conn.is_broken())
            .count();
        s.in_flight = st
            .slots
            .iter()
            .chain(&st.retiring)
            .map(|s| s.inflight + usize::from(s.rented))
            .sum();
        s.waiting = st.waiters.len();
        s.connecting = st.connecting;
        s
    }
}

/// An acquire timeout (never sent), carrying the last connect error when the pool is failing
/// to connect (cleared by the next successful connect, so a healed pool reports plain
/// exhaustion).
fn acquire_error(waited: Duration, last: Option<&str>) -> PgError {
    let e = PgError::timeout(TimeoutKind::Acquire, waited).never_sent();
    match last {
        Some(cause) => e.with_cause(format!("last connect error: {cause}")),
        None => e,
    }
}

pub(crate) fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64).rotate_left(32) | 1
}
