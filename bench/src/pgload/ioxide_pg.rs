//! The ioxide-pg driver: one `PgPool` per reactor thread, `pool_size = conns / reactors`,
//! `concurrency / reactors` closed-loop tasks per reactor calling `pool.query`,
//! `pool.query_params` or `pool.query_rows`. With `--no-pool` each reactor opens its
//! `conns / reactors` `PgConnection`s itself and its tasks share them round-robin. TLS or not
//! comes with the options (`--tls` sets `sslmode`); each reactor checks its first connection.

use super::{control, report, Args, Ctl, Outcome, Query, RingDelta};
use crate::Histogram;
use ioxide::{Reactor, RingStats};
use ioxide_pg::{PgConnection, PgOptions, PgPool, Target};
use serde_json::Value;
use std::cell::Cell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a pool may take to open all its connections.
const WARM_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one measurement.
pub fn run(args: &Args) -> Result<Value, String> {
    let r = args.reactors;
    let pool_size = args.conns / r;
    let mut opts = args
        .options
        .clone()
        .pool_size(pool_size)
        .pipeline_depth(args.pipeline_depth);
    if let Some(n) = args.statement_cache_capacity {
        opts = opts.statement_cache_capacity(n);
    }
    // Resolve before the reactors start: no DNS on a reactor.
    let target = opts.resolve().map_err(|e| e.to_string())?;
    let ctl = Arc::new(Ctl::new(args.concurrency, args.fixed_queries));
    let exited = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::with_capacity(r);
    let mut first = 0;
    for i in 0..r {
        let n = args.concurrency / r + usize::from(i < args.concurrency % r);
        let tasks = first..first + n;
        first += n;
        let (ctl, exited, opts, target) =
            (ctl.clone(), exited.clone(), opts.clone(), target.clone());
        let (query, no_pool, tls) = (args.query, args.no_pool, args.tls);
        let t = std::thread::Builder::new()
            .name(format!("reactor-{i}"))
            .spawn(move || {
                let r = reactor_main(i, &ctl, opts, target, query, no_pool, tls, tasks);
                if let Err(e) = &r {
                    ctl.setup_failed(e);
                }
                exited.fetch_add(1, Ordering::Release);
                r
            })
            .map_err(|e| format!("spawning a reactor thread: {e}"))?;
        threads.push(t);
    }
    let window = control(&ctl, args, r, &|| exited.load(Ordering::Acquire) == r);
    if window.is_err() {
        ctl.setup_failed("aborted");
    }
    let rss = super::rss_kib();
    let mut out = Outcome {
        hist: Histogram::new(),
        ring: Some(RingDelta::default()),
    };
    for t in threads {
        let (h, d) = t
            .join()
            .map_err(|_| "a reactor thread panicked".to_string())??;
        out.hist.merge(&h);
        if let Some(sum) = out.ring.as_mut() {
            sum.enters += d.enters;
            sum.sqes += d.sqes;
            sum.cqes += d.cqes;
            sum.queries += d.queries;
        }
    }
    let mut v = report(args, &window?, &out, rss);
    super::add_errors(&mut v, &ctl);
    Ok(v)
}

/// What the tasks of one reactor query through.
#[derive(Debug, Clone)]
enum Client {
    Pool(PgPool),
    Conn(Rc<PgConnection>),
}

/// Opens this reactor's client: the pool (waiting until it is full), or `size` connections;
/// then checks that the first is encrypted exactly when `tls` asks for it.
async fn open(
    ctl: &Ctl,
    opts: PgOptions,
    target: Target,
    no_pool: bool,
    tls: bool,
) -> Result<Vec<Client>, String> {
    let size = opts.get_pool_size();
    if no_pool {
        let mut conns = Vec::with_capacity(size);
        for _ in 0..size {
            let c = PgConnection::connect_to(&opts, target.clone())
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            conns.push(Client::Conn(Rc::new(c)));
        }
        if let Some(Client::Conn(c)) = conns.first() {
            let r = c
                .query(super::tls::CHECK_SQL)
                .await
                .map_err(|e| format!("the TLS check: {e}"))?;
            ctl.check_tls(tls, r.value().unwrap_or(""))?;
        }
        return Ok(conns);
    }
    let pool = PgPool::start_with_target(&Reactor::current(), opts, target)
        .map_err(|e| format!("starting the pool: {e}"))?;
    let started = Instant::now();
    while pool.stats().open < size {
        if ctl.stopped() {
            return Err("aborted".into());
        }
        if started.elapsed() > WARM_TIMEOUT {
            return Err(format!(
                "the pool did not open {size} connections in {WARM_TIMEOUT:?}: {:?}",
                pool.stats()
            ));
        }
        ioxide::time::sleep(Duration::from_millis(5)).await;
    }
    let r = pool
        .query(super::tls::CHECK_SQL)
        .await
        .map_err(|e| format!("the TLS check: {e}"))?;
    ctl.check_tls(tls, r.value().unwrap_or(""))?;
    Ok(vec![Client::Pool(pool)])
}

/// One reactor: open its client, run this reactor's share of tasks.
#[allow(clippy::too_many_arguments)]
fn reactor_main(
    index: usize,
    ctl: &Arc<Ctl>,
    opts: PgOptions,
    target: Target,
    query: Query,
    no_pool: bool,
    tls: bool,
    tasks: Range<usize>,
) -> Result<(Histogram, RingDelta), String> {
    let rt = ioxide::Runtime::with_config(ioxide::RingConfig::default(), index)
        .map_err(|e| format!("starting a reactor: {e}"))?;
    rt.block_on(async move {
        let clients = open(ctl, opts, target, no_pool, tls).await?;
        ctl.ready();
        let window = Rc::new(RingWindow::default());
        if ctl.fixed.is_some() {
            window.open(Reactor::current().ring_stats());
        }
        let handles: Vec<_> =
            tasks
                .map(|task| {
                    let (ctl, window) = (ctl.clone(), window.clone());
                    match clients[task % clients.len()].clone() {
                        Client::Pool(p) => {
                            ioxide::spawn(
                                async move { task_loop(&p, &ctl, query, task, &window).await },
                            )
                        }
                        Client::Conn(c) => ioxide::spawn(async move {
                            task_loop(&*c, &ctl, query, task, &window).await
                        }),
                    }
                })
                .collect();
        let mut hist = Histogram::new();
        for h in handles {
            hist.merge(&h.await);
        }
        if ctl.fixed.is_some() {
            window.close(Reactor::current().ring_stats());
        }
        Ok((hist, window.delta()))
    })
}

/// The ring counters of one reactor at the window's edges, sampled by whichever task first
/// sees the window open or close.
#[derive(Debug, Default)]
struct RingWindow {
    start: Cell<Option<RingStats>>,
    end: Cell<Option<RingStats>>,
    /// Queries this reactor completed while the window was open (as its tasks saw it).
    queries: Cell<u64>,
}

impl RingWindow {
    fn open(&self, s: RingStats) {
        self.start.set(Some(s));
    }

    fn close(&self, s: RingStats) {
        self.end.set(Some(s));
    }

    /// Called after every query.
    #[inline]
    fn tick(&self, ctl: &Ctl) {
        if self.end.get().is_some() {
            return;
        }
        let measuring = ctl.measuring();
        match self.start.get() {
            None if measuring => self.open(Reactor::current().ring_stats()),
            None => {}
            Some(_) if measuring || ctl.fixed.is_some() => self.queries.set(self.queries.get() + 1),
            Some(_) => self.close(Reactor::current().ring_stats()),
        }
    }

    fn delta(&self) -> RingDelta {
        match (self.start.get(), self.end.get()) {
            (Some(a), Some(b)) => RingDelta {
                enters: b.enters - a.enters,
                sqes: b.sqes - a.sqes,
                cqes: b.cqes - a.cqes,
                queries: self.queries.get(),
            },
            _ => RingDelta::default(),
        }
    }
}

/// The body of [`Querier::one`]: one query, checked, through a `PgPool` or a `PgConnection`
/// (the same method names on both); `Ok(true)` when the answer checked out.
macro_rules! one {
    ($c:expr, $q:expr, $n:expr) => {{
        let (c, q, n) = ($c, $q, $n);
        match q {
            Query::Select42 => {
                let r = c.query(q.sql()).await.map_err(|e| e.to_string())?;
                Ok(r.value() == Some("42"))
            }
            Query::Select42Prepared => {
                let r = c
                    .query_params(q.sql(), &[])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.scalar::<i32>().map_err(|e| e.to_string())? == 42)
            }
            Query::Param => {
                let r = c
                    .query_params(q.sql(), &[&n])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.scalar::<i64>().map_err(|e| e.to_string())? == n + 1)
            }
            Query::Rows100 => {
                let mut sum = 0i64;
                let rows = c
                    .query_rows(q.sql(), &[], |row| {
                        sum += i64::from(row.get::<i32>(0)?);
                        Ok(())
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(rows == 100 && sum == super::ROWS100_SUM)
            }
        }
    }};
}

/// Runs one checked query; implemented for the pool and for a bare connection, so that
/// each task loop is compiled for the client it drives (no dispatch on the hot path).
trait Querier {
    async fn one(&self, q: Query, n: i64) -> Result<bool, String>;
}

impl Querier for PgPool {
    async fn one(&self, q: Query, n: i64) -> Result<bool, String> {
        one!(self, q, n)
    }
}

impl Querier for PgConnection {
    async fn one(&self, q: Query, n: i64) -> Result<bool, String> {
        one!(self, q, n)
    }
}

/// One closed-loop task.
async fn task_loop<C: Querier>(
    client: &C,
    ctl: &Ctl,
    q: Query,
    task: usize,
    w: &RingWindow,
) -> Histogram {
    let mut hist = Histogram::new();
    let mut n: i64 = (task as i64) << 32;
    while ctl.keep_going() {
        let t0 = Instant::now();
        let r = client.one(q, n).await;
        ctl.record(task, r, t0, &mut hist);
        w.tick(ctl);
        n += 1;
    }
    hist
}
