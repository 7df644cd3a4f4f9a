//! Per-reactor state: the pool, the connection count, the draining flag. Registered as a
//! reactor service in `on_start`; nothing in it is shared with another thread except the
//! read-only config and the stats board (touched every 250 ms and by `/stats`).

use crate::config::Config;
use crate::http::Response;
use crate::shutdown::Lifecycle;
use crate::stats::Board;
use ioxide::Reactor;
use ioxide_pg::{PgOptions, PgPool, Target};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often each reactor publishes its pool statistics for `/stats` on other reactors.
pub const STATS_REFRESH: Duration = Duration::from_millis(250);
/// How often, at most, a reactor whose pool has no connection warns about it.
const DOWN_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// What every reactor gets, built once in `main`.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The knobs.
    pub config: Arc<Config>,
    /// Driver options (knobs applied).
    pub options: PgOptions,
    /// The database addresses (one per host of the list), resolved before the reactors
    /// started.
    pub targets: Vec<Target>,
    /// Pool statistics of every reactor.
    pub board: Arc<Board>,
    /// The orderly stop.
    pub lifecycle: Arc<Lifecycle>,
}

/// One reactor's playground.
#[derive(Debug)]
pub struct App {
    /// This reactor's pool.
    pub pool: PgPool,
    /// The knobs.
    pub config: Arc<Config>,
    board: Arc<Board>,
    index: usize,
    /// Open HTTP connections on this reactor.
    connections: Cell<usize>,
    draining: Cell<bool>,
    /// Tasks waiting for draining to start or for the last connection to close, by
    /// registration id (a waiting future removes its entry when dropped).
    waiters: RefCell<HashMap<u64, Waker>>,
    next_waiter: Cell<u64>,
}

/// Runs on each reactor thread before it serves: starts the pool, registers the [`App`],
/// and spawns the stats publisher and the shutdown task.
pub fn start(reactor: &Reactor, shared: &Shared) {
    // A reactor's first pool: starting it cannot find another one registered.
    let pool = PgPool::builder(shared.options.clone())
        .targets(shared.targets.clone())
        .start(reactor)
        .expect("the playground starts one pool per reactor");
    let app = reactor.add_service(App {
        pool,
        config: shared.config.clone(),
        board: shared.board.clone(),
        index: reactor.index(),
        connections: Cell::new(0),
        draining: Cell::new(false),
        waiters: RefCell::new(HashMap::new()),
        next_waiter: Cell::new(0),
    });
    let publisher = app.clone();
    let mut warned: Option<Instant> = None;
    drop(ioxide::time::every(STATS_REFRESH, move || {
        let stats = publisher.pool.stats();
        publisher.board.publish(publisher.index, stats);
        // Say so when the database cannot be reached (requests meanwhile get 503s).
        if stats.open == 0 && stats.connect_failures_total > 0 && !publisher.is_draining() {
            if warned.is_none_or(|at| at.elapsed() >= DOWN_WARNING_PERIOD) {
                tracing::warn!(
                    reactor = publisher.index,
                    failed_connects = stats.connect_failures_total,
                    "no connection to the database; requests answer 503 until it is reachable"
                );
                warned = Some(Instant::now());
            }
        } else if stats.open > 0 && warned.take().is_some() {
            tracing::info!(reactor = publisher.index, "connected to the database again");
        }
        true
    }));
    drop(reactor.spawn(crate::shutdown::drain(app, shared.lifecycle.clone())));
}

impl App {
    /// The current reactor's app, if `start` ran on it.
    pub fn current() -> Option<Rc<App>> {
        Reactor::try_current()?.try_service::<App>()
    }

    /// `/stats`: this reactor's live pool statistics and the others' last snapshots.
    pub fn stats_json(&self) -> Response {
        Response::json(
            200,
            self.board.json(
                self.index,
                self.pool.stats(),
                self.pool.options().get_pool_size(),
                self.pool.options().get_pipeline_depth(),
            ),
        )
    }

    /// Counts a connection until the guard drops.
    pub fn connection_opened(self: &Rc<Self>) -> ConnectionGuard {
        self.connections.set(self.connections.get() + 1);
        ConnectionGuard {
            app: self.clone(),
            waiter: None,
        }
    }

    /// Open HTTP connections on this reactor.
    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Whether shutdown began: no new requests are read.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Begins draining: idle connections close, busy ones after their current responses.
    pub fn start_draining(&self) {
        self.draining.set(true);
        self.wake_all();
    }

    /// Resolves once no HTTP connection is open on this reactor.
    pub fn idle(&self) -> WaitUntil<'_> {
        self.wait_until(|app| app.connections.get() == 0)
    }

    fn wait_until(&self, ready: fn(&App) -> bool) -> WaitUntil<'_> {
        WaitUntil {
            app: self,
            ready,
            id: None,
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters.into_values().for_each(Waker::wake);
    }
}

/// Waits for a condition on the [`App`] (see [`App::idle`]).
#[derive(Debug)]
pub struct WaitUntil<'a> {
    app: &'a App,
    ready: fn(&App) -> bool,
    id: Option<u64>,
}

impl Future for WaitUntil<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if (self.ready)(self.app) {
            return Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.app.next_waiter.get();
                self.app.next_waiter.set(id.wrapping_add(1));
                self.id = Some(id);
                id
            }
        };
        self.app.waiters.borrow_mut().insert(id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for WaitUntil<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.app.waiters.borrow_mut().remove(&id);
        }
    }
}

/// Keeps a connection counted (see [`App::connection_opened`]).
#[derive(Debug)]
pub struct ConnectionGuard {
    app: Rc<App>,
    /// The connection's entry among the draining waiters, and the waker it holds.
    waiter: Option<(u64, Waker)>,
}

impl ConnectionGuard {
    /// Resolves once draining begins. The connection's waker stays registered between calls, so a keep-alive connection that waits on this for every read
    /// touches the waiters map once, not twice per request.
    pub fn drained(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let app = &self.app;
            if app.draining.get() {
                return Poll::Ready(());
            }
            // Until draining begins nothing empties the map, so an entry made with this
            // waker is still there.
            if !self
                .waiter
                .as_ref()
                .is_some_and(|(_, w)| w.will_wake(cx.waker()))
            {
                let id = match &self.waiter {
                    Some((id, _)) => *id,
                    None => {
                        let id = app.next_waiter.get();
                        app.next_waiter.set(id.wrapping_add(1));
                        id
                    }
                };
                app.waiters.borrow_mut().insert(id, cx.waker().clone());
                self.waiter = Some((id, cx.waker().clone()));
            }
            Poll::Pending
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some((id, _)) = self.waiter.take() {
            self.app.waiters.borrow_mut().remove(&id);
        }
        let n = self.app.connections.get().saturating_sub(1);
        self.app.connections.set(n);
        if n == 0 && self.app.draining.get() {
            self.app.wake_all();
        }
    }
}
