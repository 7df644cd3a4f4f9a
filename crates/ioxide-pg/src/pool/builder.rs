//! Starting a pool with settings beyond `PgOptions` ([`PgPoolBuilder`]), and opening one
//! pooled connection: connect, then the after-connect hook.

use super::PgPool;
use crate::{PgConnection, PgError, PgOptions, Target, TimeoutKind, TxnStatus};
use ioxide::Reactor;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

/// The future an [`after_connect`](PgPoolBuilder::after_connect) hook returns: it borrows
/// the new connection for as long as it runs.
pub type AfterConnectFuture<'c> = Pin<Box<dyn Future<Output = Result<(), PgError>> + 'c>>;

/// The hook, shared by every connect of one pool (on its reactor).
pub(crate) type Hook = Rc<dyn for<'c> Fn(&'c PgConnection) -> AfterConnectFuture<'c>>;

/// Starts a [`PgPool`] with settings that are not connection options: a name, an already
/// resolved target, an after-connect hook. [`PgPool::start`], [`PgPool::start_with_target`]
/// and [`PgPool::start_named`] are shorthands for it.
///
/// Like the pool, the builder belongs to one reactor (the hook is not `Send`): build it on
/// the reactor's thread, e.g. in `on_start`.
///
/// ```no_run
/// # fn f(reactor: &ioxide::Reactor, options: ioxide_pg::PgOptions) -> Result<(), ioxide_pg::PgError> {
/// use ioxide_pg::PgPool;
/// let pool = PgPool::builder(options)
///     .after_connect(|conn| {
///         Box::pin(async move {
///             conn.query("SET search_path = app, public").await?;
///             conn.query("SET statement_timeout = '5s'").await?;
///             Ok(())
///         })
///     })
///     .start(reactor)?;
/// # Ok(()) }
/// ```
pub struct PgPoolBuilder {
    options: PgOptions,
    target: Option<Vec<Target>>,
    name: Option<String>,
    hook: Option<Hook>,
}

impl fmt::Debug for PgPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPoolBuilder")
            .field("options", &self.options)
            .field("target", &self.target)
            .field("name", &self.name)
            .field("after_connect", &self.hook.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

impl PgPoolBuilder {
    pub(super) fn new(options: PgOptions) -> PgPoolBuilder {
        PgPoolBuilder {
            options,
            target: None,
            name: None,
            hook: None,
        }
    }

    /// Connects to this already resolved target instead of resolving the options' host (which
    /// must then be an IP literal or a Unix socket directory: no DNS on a reactor).
    pub fn target(mut self, target: Target) -> PgPoolBuilder {
        self.target = Some(vec![target]);
        self
    }

    /// Connects to these already resolved targets, one per host of the options' list
    /// ([`PgOptions::resolve_hosts`]); every connect walks them with the options'
    /// `target_session_attrs` and `load_balance_hosts`.
    pub fn targets(mut self, targets: Vec<Target>) -> PgPoolBuilder {
        self.target = Some(targets);
        self
    }

    /// Registers the pool under `name` ([`PgPool::named`]) instead of as the reactor's current
    /// pool ([`PgPool::current`]); see [`PgPool::start_named`].
    pub fn name(mut self, name: impl Into<String>) -> PgPoolBuilder {
        self.name = Some(name.into());
        self
    }

    /// An async function run on every new connection — the warm-up's and every replacement's
    /// (after a failure, [`max_lifetime`](PgOptions::max_lifetime), or
    /// [`idle_timeout`](PgOptions::idle_timeout)) — before it serves anyone: `SET` commands,
    /// `LISTEN`, statements to warm the cache. It runs on the pool's reactor, on the
    /// connection alone (nothing else is routed to it until the hook has finished). The
    /// connection is the pool's: a handle to it cannot outlive the hook's future.
    ///
    /// A new connection must be ready — connected, authenticated and through the hook —
    /// within `connect_timeout`. If the hook returns an error, panics (the panic is caught),
    /// does not finish in time, or leaves the connection broken or inside a transaction, the
    /// connection is closed, [`PoolStats::hook_failures_total`](crate::PoolStats) and
    /// `connect_failures_total` count it, and the pool tries again as after any failed
    /// connect: with capped jittered backoff, the failure retried however the hook failed
    /// (it is never taken as proof that the database refuses us). Requests meanwhile wait as
    /// they do while the database is unreachable: up to `acquire_timeout`, then their error
    /// names the hook's failure as the last connect error; once connects have failed for
    /// `acquire_timeout`, new requests fail fast until one succeeds.
    ///
    /// Session state set by the hook lasts as long as the connection, for every caller of the
    /// shared path and every renter; a renter that changes it changes it for later users too
    /// (`RESET`/`DISCARD ALL` undoes the hook's settings).
    pub fn after_connect<F>(mut self, hook: F) -> PgPoolBuilder
    where
        F: for<'c> Fn(&'c PgConnection) -> AfterConnectFuture<'c> + 'static,
    {
        self.hook = Some(Rc::new(hook));
        self
    }

    /// Starts the pool on `reactor` (call it on that reactor's thread): fires `pool_size`
    /// connects at once and returns the pool's handle immediately. Requests made before the
    /// first connection is up wait in the queue. Fails if the reactor already has a current
    /// pool (or, with [`name`](Self::name), a pool of that name), or if the host is a name
    /// and no [`target`](Self::target) was given.
    pub fn start(self, reactor: &Reactor) -> Result<PgPool, PgError> {
        let topology = crate::conn::walk::Topology::new(&self.options, self.target)?;
        PgPool::launch_registered(reactor, self.name, self.options, topology, self.hook)
    }
}

/// Opens one connection for the pool: connect, then the hook, all within `connect_timeout`.
/// A connection the hook failed is closed here (in the background) and counted.
pub(super) async fn open(inner: &super::state::Inner) -> Result<PgConnection, PgError> {
    // Each host of a list has its own connect_timeout; the hook's share counts from the
    // attempt that succeeded.
    let (conn, began) = crate::conn::walk::connect_timed(&inner.target).await?;
    let Some(hook) = inner.hook.clone() else {
        return Ok(conn);
    };
    let r = match inner.opts.get_connect_timeout() {
        Some(limit) => {
            let left = limit.saturating_sub(began.elapsed());
            match ioxide::time::timeout(left, run_hook(&*hook, &conn)).await {
                Ok(r) => r,
                Err(_) => Err(PgError::timeout(TimeoutKind::Connect, limit)
                    .with_cause("the after_connect hook did not finish within connect_timeout")),
            }
        }
        None => run_hook(&*hook, &conn).await,
    };
    let r = r.and_then(|()| {
        if conn.is_broken() {
            Err(PgError::closed(
                "the after_connect hook left the connection broken",
            ))
        } else if conn.transaction_status() != TxnStatus::Idle {
            Err(PgError::closed(
                "the after_connect hook left the connection inside a transaction",
            ))
        } else {
            Ok(())
        }
    });
    match r {
        Ok(()) => Ok(conn),
        Err(e) => {
            inner.st.borrow_mut().stats.hook_failures_total += 1;
            drop(ioxide::spawn(conn.close()));
            Err(e)
        }
    }
}

/// Runs the hook on `conn`, turning its error or its panic into a connect failure.
async fn run_hook(
    hook: &dyn for<'c> Fn(&'c PgConnection) -> AfterConnectFuture<'c>,
    conn: &PgConnection,
) -> Result<(), PgError> {
    let mut fut = match catch_unwind(AssertUnwindSafe(|| hook(conn))) {
        Ok(f) => f,
        Err(payload) => return Err(panicked(&*payload)),
    };
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(r)) => Poll::Ready(r.map_err(|e| {
                PgError::closed("the after_connect hook failed").with_cause(e.to_string())
            })),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panicked(&*payload))),
        },
    )
    .await
}

fn panicked(payload: &(dyn Any + Send)) -> PgError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    PgError::closed(format!("the after_connect hook panicked: {msg}"))
}
