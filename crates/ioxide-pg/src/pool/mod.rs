//! `PgPool`: one pool per reactor, registered as a reactor service.
//!
//! The pool is the concurrency: `query` rents capacity, runs the command, gives it back —
//! in one call. With `pipeline_depth` 1 a connection carries one command at a time; above 1,
//! a command goes to the least-loaded healthy connection, so a slow query does not hold fast
//! ones behind it while another connection has room. When every connection is at depth,
//! requests queue FIFO and resume inline (on this reactor, in the loop turn the capacity
//! frees up).
//!
//! Failure handling (the contract in ARCHITECTURE.md): a broken connection is discarded the
//! moment it breaks — idle connections keep a receive armed, so a restarted server's goodbye is
//! seen at once — and replaced in the background with capped, jittered exponential backoff
//! (one probe at a time while connects fail). A request that finds no live connection starts a
//! connect at once. Requests wait at most `acquire_timeout`; once the database has been
//! unreachable for that long, new requests fail at once until a connect succeeds. A query
//! whose connection broke before any byte of it was sent is retried on another connection
//! (up to `pool_size` times: in a restart each pooled connection may break in turn); one
//! that may have reached the server never is.
//!
//! Housekeeping (`housekeeping.rs`): connections past `max_lifetime` are replaced one at a
//! time, replacement first; connections idle past `idle_timeout` are closed down to
//! `min_connections` and reopened on demand. Every new connection runs the pool's
//! after-connect hook (`builder.rs`) before it serves anyone.

mod builder;
mod connect;
mod guard;
mod housekeeping;
mod state;

pub use builder::{AfterConnectFuture, PgPoolBuilder};
pub use guard::PooledConn;
pub use state::PoolStats;

use crate::conn::Params;
use crate::proto::row::Row;
use crate::{OwnedRow, PgConnection, PgError, PgOptions, QueryResult, ResultSet};
pub(crate) use connect::{backoff, transient};
use ioxide::Reactor;
pub(crate) use state::seed;
use state::{Inner, Waiter};
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How often the pool sweeps: expire waiters, replenish toward `pool_size`.
const SWEEP_PERIOD: Duration = Duration::from_millis(250);

/// A per-reactor connection pool. Cheap to clone (a handle).
#[derive(Clone)]
pub struct PgPool {
    inner: Rc<Inner>,
}

impl fmt::Debug for PgPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPool")
            .field("size", &self.inner.size)
            .field("stats", &self.stats())
            .finish()
    }
}

impl PgPool {
    /// Starts a pool on `reactor` (call it on that reactor's thread, e.g. in `on_start`):
    /// fires `pool_size` ring-native connects at once and returns the pool's handle
    /// immediately; registers it as the reactor's pool, [`PgPool::current`]. Requests made
    /// before the first connection is up wait in the queue.
    ///
    /// A reactor has one current pool: starting a second one this way is an error (it would
    /// silently replace the first for everyone calling `current()`); give further pools a
    /// name ([`PgPool::start_named`]).
    ///
    /// The host may be a Unix socket directory, an IP literal or a host name; a name is
    /// resolved on the ring for every new connection (see [`PgConnection::connect`]), so the
    /// pool's connects follow a name that moves. [`PgPool::start_with_target`] pins the
    /// addresses instead.
    ///
    /// The TLS files the options name (`sslrootcert`, `sslcert`, `sslkey`) are read here, so
    /// a missing or unreadable one fails the start, naming it, rather than every connect.
    ///
    /// For an after-connect hook (or a name and a target together), use
    /// [`PgPool::builder`].
    pub fn start(reactor: &Reactor, options: PgOptions) -> Result<PgPool, PgError> {
        Self::builder(options).start(reactor)
    }

    /// A pool with more than options: an after-connect hook
    /// ([`PgPoolBuilder::after_connect`]), a name, a resolved target. Started with
    /// [`PgPoolBuilder::start`].
    pub fn builder(options: PgOptions) -> PgPoolBuilder {
        PgPoolBuilder::new(options)
    }

    /// As [`PgPool::start`], with an already resolved target.
    pub fn start_with_target(
        reactor: &Reactor,
        options: PgOptions,
        target: crate::Target,
    ) -> Result<PgPool, PgError> {
        Self::builder(options).target(target).start(reactor)
    }

    /// Starts a pool registered under `name` on `reactor` (found again with
    /// [`PgPool::named`]), beside the current one: a read pool next to a read-write pool, a
    /// second database. Starting two pools with the same name is an error.
    pub fn start_named(
        reactor: &Reactor,
        name: &str,
        options: PgOptions,
    ) -> Result<PgPool, PgError> {
        Self::builder(options).name(name).start(reactor)
    }

    /// Registers and launches a pool: as the reactor's current one, or under `name`.
    fn launch_registered(
        reactor: &Reactor,
        name: Option<String>,
        options: PgOptions,
        target: crate::conn::walk::Topology,
        hook: Option<builder::Hook>,
    ) -> Result<PgPool, PgError> {
        for (opts, t) in target.targets() {
            crate::conn::check_tls_files(opts, t)?;
        }
        let pools = registry(reactor);
        match name {
            None => {
                if pools.default.borrow().is_some() {
                    return Err(PgError::misuse(
                        "this reactor already has a current pool (PgPool::current); start \
                         further pools with PgPool::start_named",
                    ));
                }
                let pool = Self::launch(reactor, options, target, hook);
                *pools.default.borrow_mut() = Some(pool.clone());
                Ok(pool)
            }
            Some(name) => {
                if pools.named.borrow().iter().any(|(n, _)| *n == name) {
                    return Err(PgError::misuse(format!(
                        "a pool named {name:?} is already running on this reactor"
                    )));
                }
                let pool = Self::launch(reactor, options, target, hook);
                pools.named.borrow_mut().push((name, pool.clone()));
                Ok(pool)
            }
        }
    }

    fn launch(
        reactor: &Reactor,
        options: PgOptions,
        target: crate::conn::walk::Topology,
        hook: Option<builder::Hook>,
    ) -> PgPool {
        let inner = Rc::new(Inner::new(options, target, hook));
        drop(reactor.spawn(maintenance(Rc::downgrade(&inner))));
        replenish(&inner, Instant::now(), false);
        PgPool { inner }
    }

    /// The current reactor's pool (started with [`PgPool::start`]). Panics if none was
    /// started on it, or outside a reactor; see [`PgPool::try_current`].
    pub fn current() -> PgPool {
        match Self::try_current() {
            Some(p) => p,
            None => panic!("ioxide-pg: no PgPool was started on this reactor"),
        }
    }

    /// The current reactor's pool, if one was started on it.
    pub fn try_current() -> Option<PgPool> {
        let pools = Reactor::try_current()?.try_service::<Pools>()?;
        let p = pools.default.borrow().clone();
        p
    }

    /// The pool started on the current reactor under `name` ([`PgPool::start_named`]).
    pub fn named(name: &str) -> Option<PgPool> {
        let pools = Reactor::try_current()?.try_service::<Pools>()?;
        let named = pools.named.borrow();
        named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }

    /// Whether two handles are the same pool.
    pub fn same_as(&self, other: &PgPool) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }

    /// Counters: open, idle, in flight, waiting, totals.
    pub fn stats(&self) -> PoolStats {
        self.inner.stats()
    }

    /// The options the pool was started with.
    pub fn options(&self) -> &PgOptions {
        &self.inner.opts
    }

    /// [`PgConnection::query`] on a shared connection: the same result (the first value as
    /// text, the tag, the same errors), but a parameterless single statement the connection
    /// has run before is prepared once and then bound with text results, which costs the
    /// server less than parsing and planning it every time (the simple protocol). A text of
    /// several statements, or one the server will not prepare, stays on the simple protocol.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, PgError> {
        self.with_conn(|c| async move {
            let r = c.query_shared(sql).await;
            if let Ok(qr) = &r {
                if qr.changed_session() {
                    c.note_shared_tag(qr.command_tag());
                }
            }
            r
        })
        .await
    }

    /// Parameterized query (prepared and cached per connection), rows collected.
    ///
    /// Takes SQL text or a [`crate::Statement`] (prepared on any connection: each pooled
    /// connection prepares it on first use).
    pub async fn query_params<S: crate::ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<ResultSet, PgError> {
        self.with_conn(|c| async move { c.query_params(statement, params).await })
            .await
    }

    /// A script of statements, every statement's tag returned (see
    /// [`PgConnection::batch_execute`]); on the shared path, so in autocommit: a script that
    /// leaves a transaction open is refused and rolled back (rent a connection for that).
    pub async fn batch_execute(&self, sql: &str) -> Result<Vec<String>, PgError> {
        self.with_conn(|c| async move {
            let r = c.batch_execute(sql).await;
            if let Ok(tags) = &r {
                for tag in tags {
                    c.note_shared_tag(tag);
                }
            }
            r
        })
        .await
    }

    /// One statement run once per parameter row as a pipeline batch under one Sync (see
    /// [`PgConnection::execute_many`]): all rows or none.
    pub async fn execute_many<S: crate::ToStatement + ?Sized>(
        &self,
        statement: &S,
        rows: &[Params<'_>],
    ) -> Result<u64, PgError> {
        self.with_conn(|c| async move { c.execute_many(statement, rows).await })
            .await
    }

    /// Mixed parameterized statements in one send under one Sync (see
    /// [`PgConnection::run_pipeline`]): all or nothing, one result per entry. On the shared
    /// path, so in autocommit; rent a connection to run one inside a transaction.
    pub async fn run_pipeline(
        &self,
        pipeline: &crate::Pipeline<'_>,
    ) -> Result<Vec<ResultSet>, PgError> {
        self.with_conn(|c| async move { c.run_pipeline(pipeline).await })
            .await
    }

    /// A script whose every statement returns its tag and rows (text format; see
    /// [`PgConnection::batch_query`]); on the shared path, as
    /// [`batch_execute`](Self::batch_execute).
    pub async fn batch_query(&self, sql: &str) -> Result<Vec<ResultSet>, PgError> {
        self.with_conn(|c| async move { c.batch_query(sql).await })
            .await
    }

    /// Parameterized query that must return exactly one row (see
    /// [`PgConnection::query_one`]).
    ///
    /// ```no_run
    /// # async fn f(pool: &ioxide_pg::PgPool) -> Result<(), ioxide_pg::PgError> {
    /// let row = pool.query_one("SELECT 'ann'::text AS name", &[]).await?;
    /// assert_eq!(row.get::<&str>("name")?, "ann");
    /// # Ok(()) }
    /// ```
    pub async fn query_one<S: crate::ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<OwnedRow, PgError> {
        self.query_params(statement, params)
            .await?
            .into_one("query_one")
    }

    /// Parameterized query that returns at most one row (see [`PgConnection::query_opt`]).
    ///
    /// ```no_run
    /// # async fn f(pool: &ioxide_pg::PgPool) -> Result<(), ioxide_pg::PgError> {
    /// assert!(pool.query_opt("SELECT 1 WHERE false", &[]).await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn query_opt<S: crate::ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<Option<OwnedRow>, PgError> {
        self.query_params(statement, params)
            .await?
            .into_opt("query_opt")
    }

    /// Parameterized statement; returns the rows affected.
    pub async fn execute<S: crate::ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<u64, PgError> {
        self.with_conn(|c| async move { c.execute(statement, params).await })
            .await
    }

    /// Parameterized query whose rows stream to `f`, borrowed (see
    /// [`PgConnection::query_rows`]). Not retried: rows may already have been delivered.
    pub async fn query_rows<S, F>(
        &self,
        statement: &S,
        params: Params<'_>,
        f: F,
    ) -> Result<u64, PgError>
    where
        S: crate::ToStatement + ?Sized,
        F: FnMut(Row<'_>) -> Result<(), PgError>,
    {
        let lease = self.acquire(false).await?;
        let r = lease.conn.query_rows(statement, params, f).await;
        self.note_timeout(&r);
        r
    }

    /// Rents a connection exclusively (for transactions, session state and multi-statement
    /// work). It returns to the pool when the guard drops; a guard dropped inside a
    /// transaction or with a command in flight never hands a dirty connection to the next
    /// renter (it is rolled back or drained first, and discarded only if that does not
    /// finish promptly). A rented connection is always Idle (no transaction open).
    ///
    /// The shared methods ([`query`](Self::query), [`execute`](Self::execute), …) run in
    /// autocommit on connections other callers pipeline on: a command there that leaves its
    /// connection inside a transaction (`BEGIN`, or a script that fails inside one) fails with
    /// an error saying so ([`PgError::is_misuse`], or its server error with that cause), the
    /// transaction is rolled back before anyone else uses the connection, and commands of
    /// other callers that ran inside it meanwhile are run again.
    pub async fn rent(&self) -> Result<PooledConn, PgError> {
        let lease = self.acquire(true).await?;
        Ok(PooledConn::new(lease))
    }

    /// Closes every connection gracefully (Terminate) and stops replenishing; waiting and
    /// later requests fail. The pool is no longer the reactor's current (or named) pool, so
    /// another may be started in its place.
    pub async fn close(&self) {
        if let Some(pools) = Reactor::try_current().and_then(|r| r.try_service::<Pools>()) {
            let mut current = pools.default.borrow_mut();
            if current.as_ref().is_some_and(|p| p.same_as(self)) {
                *current = None;
            }
            drop(current);
            pools.named.borrow_mut().retain(|(_, p)| !p.same_as(self));
        }
        let conns: Vec<PgConnection> = {
            let mut st = self.inner.st.borrow_mut();
            st.closed = true;
            let retiring = st.retiring.take();
            st.slots.drain(..).chain(retiring).map(|s| s.conn).collect()
        };
        self.inner
            .fail_waiters(&PgError::closed("the pool is closed"));
        self.inner.poke();
        // All at once: each close waits for its Terminate to go out and the socket to end.
        let closing: Vec<_> = conns
            .into_iter()
            .map(|c| ioxide::spawn(c.close()))
            .collect();
        for c in closing {
            c.await;
        }
    }

    /// Runs `f` on a connection with capacity; retries on another connection when the
    /// connection broke before the command was sent — up to `pool_size` times, since during
    /// a restart every pooled connection may be about to receive the server's goodbye (a
    /// retry that lands on the next doomed one is not sent either), and always within the
    /// first wait's deadline. A command that never left this process cannot run twice.
    async fn with_conn<'a, T, F, Fut>(&'a self, f: F) -> Result<T, PgError>
    where
        F: Fn(PgConnection) -> Fut,
        Fut: Future<Output = Result<T, PgError>> + 'a,
    {
        let mut retries_left = self.inner.size;
        // A retry keeps the first wait's deadline: one call waits at most acquire_timeout.
        let mut deadline = None;
        loop {
            // Capacity free now is the common case: take it without entering acquire_by's future.
            let lease = match self.try_lease(false) {
                Some(lease) => lease,
                None => self.acquire_by(false, &mut deadline).await?,
            };
            let r = f(lease.conn.share()).await;
            // Retry what never left this process because the connection broke under it: a
            // transport failure, a close, or the server's goodbye (a FATAL such as 57P01,
            // replicated to the commands queued behind it). Not a conversion error, which
            // would fail the same way again.
            let retry = match &r {
                Err(e) if retries_left > 0 && !e.was_sent() => {
                    e.is_transport() || e.is_closed() || lease.conn.is_broken()
                }
                _ => false,
            };
            drop(lease);
            if retry {
                retries_left -= 1;
                self.inner.st.borrow_mut().stats.retries_total += 1;
                continue;
            }
            self.note_timeout(&r);
            return r;
        }
    }

    fn note_timeout<T>(&self, r: &Result<T, PgError>) {
        if let Err(e) = r {
            if e.timeout_kind() == Some(crate::TimeoutKind::Command) {
                self.inner.st.borrow_mut().stats.timeouts_total += 1;
            }
        }
    }

    /// Capacity on a connection: at once if free and nobody is queued, else FIFO.
    async fn acquire(&self, exclusive: bool) -> Result<Lease, PgError> {
        self.acquire_by(exclusive, &mut None).await
    }

    /// Capacity at once, if a connection has it and nobody is queued ahead.
    fn try_lease(&self, exclusive: bool) -> Option<Lease> {
        let id = self.inner.try_acquire(exclusive)?;
        self.lease(id, exclusive).ok()
    }

    /// A lease on capacity `id`, just granted. Should its slot be gone (it cannot: grants go
    /// to live slots), the capacity is given back and the error says so.
    fn lease(&self, id: u64, exclusive: bool) -> Result<Lease, PgError> {
        let inner = &self.inner;
        match inner.conn(id) {
            Some(conn) => Ok(Lease {
                inner: inner.clone(),
                id,
                exclusive,
                conn,
            }),
            None => {
                inner.release(id, exclusive);
                Err(PgError::closed("connection vanished from the pool").never_sent())
            }
        }
    }

    /// `deadline` is set when this call (or an earlier attempt of the same call) first has to
    /// wait, to `acquire_timeout` from then: the fast path reads no clock and does no time
    /// arithmetic (`Instant` addition cost ~30 instructions of every pooled query).
    async fn acquire_by(
        &self,
        exclusive: bool,
        deadline: &mut Option<Instant>,
    ) -> Result<Lease, PgError> {
        if let Some(lease) = self.try_lease(exclusive) {
            return Ok(lease);
        }
        let inner = &self.inner;
        let id = {
            if inner.st.borrow().closed {
                return Err(PgError::closed("the pool is closed").never_sent());
            }
            // Down for long: wait only for the connect this request starts, so a dead
            // database fails fast and a revived one serves at once.
            let fail_fast = inner.down_for_long();
            // A request that has to wait is demand: reopen one connection that idle_timeout
            // closed, if any.
            inner.want_one_more();
            // Nothing live and nothing connecting: connect now, not after a backoff.
            replenish(inner, Instant::now(), true);
            let deadline = *deadline.get_or_insert_with(|| {
                // The precise clock, not the loop turn's: a deadline counted from the turn's
                // start (earlier by however long the turn has run) fired up to a fraction of
                // a millisecond before acquire_timeout had passed for the caller (seen:
                // 49.92 ms of 50 in `pool_timing`). One clock read, on the waiting path only.
                let now = Instant::now();
                // An acquire_timeout too long to represent means no deadline worth keeping.
                now.checked_add(inner.acquire_timeout)
                    .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
            });
            let waiter = Rc::new(RefCell::new(Waiter {
                exclusive,
                deadline,
                waker: None,
                outcome: None,
                fail_fast,
                since: Instant::now(),
            }));
            inner.st.borrow_mut().waiters.push_back(waiter.clone());
            // The maintenance task fails waiters at their deadline: wake it to arm its timer
            // if it sleeps toward a later moment (or none).
            if inner.expiry_armed.get().is_none_or(|at| at > deadline) {
                inner.poke();
            }
            inner.dispatch();
            let mut guard = WaiterGuard {
                inner: inner.clone(),
                waiter: waiter.clone(),
                armed: true,
            };
            let r = std::future::poll_fn(|cx| {
                let mut w = waiter.borrow_mut();
                match w.outcome.take() {
                    Some(r) => Poll::Ready(r),
                    None => {
                        w.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            guard.armed = false;
            r?
        };
        self.lease(id, exclusive)
    }
}

/// The pools of one reactor: its current one and the named ones (a reactor service).
#[derive(Default)]
struct Pools {
    default: RefCell<Option<PgPool>>,
    named: RefCell<Vec<(String, PgPool)>>,
}

fn registry(reactor: &Reactor) -> Rc<Pools> {
    match reactor.try_service::<Pools>() {
        Some(p) => p,
        None => reactor.add_service(Pools::default()),
    }
}

/// Removes a waiter whose request was dropped while queued, and passes on capacity it was
/// already granted.
struct WaiterGuard {
    inner: Rc<Inner>,
    waiter: Rc<RefCell<Waiter>>,
    /// False once the request took its outcome.
    armed: bool,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let granted = self.waiter.borrow_mut().outcome.take();
        let exclusive = self.waiter.borrow().exclusive;
        self.inner
            .st
            .borrow_mut()
            .waiters
            .retain(|w| !Rc::ptr_eq(w, &self.waiter));
        if let Some(Ok(id)) = granted {
            self.inner.release(id, exclusive);
        }
    }
}

/// Capacity on one connection; given back on drop.
pub(crate) struct Lease {
    inner: Rc<Inner>,
    id: u64,
    exclusive: bool,
    pub(crate) conn: PgConnection,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inner.release(self.id, self.exclusive);
    }
}

impl Lease {
    /// Takes the connection out of the pool for good (it is discarded and replaced).
    pub(crate) fn discard(&self) {
        let removed = {
            let mut st = self.inner.st.borrow_mut();
            let pos = st.slots.iter().position(|s| s.id == self.id);
            pos.map(|p| st.slots.remove(p))
        };
        drop(removed);
        self.inner.poke();
    }
}

/// Starts connects to head back to the pool's target (`pool_size`, less what idle_timeout
/// closed and no demand has reopened).
fn replenish(inner: &Rc<Inner>, now: Instant, urgent: bool) {
    let n = inner.connects_to_start(now, urgent);
    for _ in 0..n {
        spawn_connect(inner, false);
    }
}

/// Opens one connection in the background (its `connecting` count already taken);
/// `replacement`: for a connection past `max_lifetime`.
fn spawn_connect(inner: &Rc<Inner>, replacement: bool) {
    let inner = inner.clone();
    drop(ioxide::spawn(async move {
        let started = Instant::now();
        let r = builder::open(&inner).await;
        if inner.connected(r, started, replacement) {
            // Requests that came after this connect began are owed one of their own.
            replenish(&inner, Instant::now(), true);
        }
    }));
}

/// The pool's own task: on every poke (a connection broke, a connect finished) and every
/// sweep period, drop broken connections, expire waiters, retire and close connections
/// (lifetime, idle) and replenish.
async fn maintenance(pool: std::rc::Weak<Inner>) {
    let mut ticker = ioxide::time::Ticker::new(SWEEP_PERIOD);
    loop {
        let Some(inner) = pool.upgrade() else { return };
        if inner.st.borrow().closed {
            return;
        }
        let now = Instant::now();
        inner.dirty.set(false);
        inner.remove_broken();
        inner.expire_waiters(now);
        if inner.housekeep(now) {
            spawn_connect(&inner, true);
        }
        replenish(&inner, now, false);
        inner.dispatch();
        // While connects fail, the next probe is due at the end of its backoff (25 ms at
        // first), not at the next 250 ms sweep: wake for it. And a waiter fails at its own
        // deadline, not at the next sweep after it.
        let next_expiry = inner.next_expiry();
        inner.expiry_armed.set(next_expiry);
        // And a connection is retired or closed when its lifetime or idle time is up.
        let wake_at = [inner.next_probe(), next_expiry, inner.next_housekeeping()]
            .into_iter()
            .flatten()
            .min();
        drop(inner);
        let poked = std::future::poll_fn(|cx| match pool.upgrade() {
            Some(i) if i.dirty.get() => Poll::Ready(()),
            Some(i) => {
                i.st.borrow_mut().maintenance = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(()),
        });
        let woken = ioxide::future::select(ticker.tick(), poked);
        match wake_at {
            Some(at) => {
                let _ = ioxide::future::select(woken, ioxide::time::sleep_until(at)).await;
            }
            None => {
                let _ = woken.await;
            }
        }
    }
}
