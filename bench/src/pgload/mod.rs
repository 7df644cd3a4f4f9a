//! `pgload`: a closed-loop PostgreSQL load generator, one driver per run.
//!
//! C tasks each run one query at a time in a loop (closed loop: a task issues its next query
//! when the previous answer has been checked). After a warm-up the controller (the main
//! thread, asleep in between) measures a window: completed queries, process CPU time
//! (getrusage user+sys, every thread of the process), latency of the queries completed inside
//! the window. Every answer is checked; errors and wrong answers are counted. When the server
//! runs on this machine, its CPU over the same window is reported too ([`server`]).
//!
//! The drivers: [`ioxide_pg`] (our pool on R reactor threads), [`peers`] (tokio-postgres,
//! deadpool-postgres, sqlx on a tokio runtime), each over plaintext or, with `--tls`, TLS
//! ([`tls`]).

pub mod args;
pub mod ioxide_pg;
pub mod peers;
pub mod server;
pub mod tls;

use crate::Histogram;
pub use args::{Args, Driver, Flavor, Query};
use serde_json::{json, Value};
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tls::TlsCheck;

/// `SELECT 42`, checked as 42.
pub const SQL_SELECT42: &str = "SELECT 42";
/// `SELECT $1::int8 + 1` with an int8 `n`, checked as n + 1.
pub const SQL_PARAM: &str = "SELECT $1::int8 + 1";
/// 100 int4 rows, read fully; checked: 100 rows summing to 5050.
pub const SQL_ROWS100: &str = "SELECT n FROM generate_series(1, 100) n";
/// The sum [`SQL_ROWS100`] must give.
pub const ROWS100_SUM: i64 = 5050;

/// How long the drivers may take to open their connections.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One task's completed-query counter on its own cache line (no sharing between threads).
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

/// State shared by the controller and every load task of one run.
#[derive(Debug)]
pub struct Ctl {
    stop: AtomicBool,
    measuring: AtomicBool,
    slots: Vec<Slot>,
    errors: AtomicU64,
    wrong: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// `--fixed-queries`: tasks take tickets until this many queries were started.
    fixed: Option<u64>,
    tickets: AtomicU64,
    ready: AtomicUsize,
    setup_failed: Mutex<Option<String>>,
    /// The server's answer to [`tls::CHECK_SQL`] on the first connection checked.
    tls: Mutex<Option<TlsCheck>>,
}

impl Ctl {
    /// Shared state for `tasks` load tasks.
    pub fn new(tasks: usize, fixed: Option<u64>) -> Ctl {
        Ctl {
            stop: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            slots: (0..tasks).map(|_| Slot::default()).collect(),
            errors: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
            first_error: Mutex::new(None),
            fixed,
            tickets: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            setup_failed: Mutex::new(None),
            tls: Mutex::new(None),
        }
    }

    /// Whether a task should issue another query.
    #[inline]
    pub fn keep_going(&self) -> bool {
        match self.fixed {
            Some(n) => self.tickets.fetch_add(1, Ordering::Relaxed) < n,
            None => !self.stop.load(Ordering::Relaxed),
        }
    }

    /// Whether the measured window is open.
    #[inline]
    pub fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    /// Whether the controller asked the tasks to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Counts one finished query of `task`: right, wrong, or an error; records its latency
    /// while the window is open.
    #[inline]
    pub fn record(&self, task: usize, r: Result<bool, String>, t0: Instant, h: &mut Histogram) {
        match r {
            Ok(true) => {
                self.slots[task].0.fetch_add(1, Ordering::Relaxed);
                if self.measuring() {
                    h.record(t0.elapsed());
                }
            }
            Ok(false) => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.error(e),
        }
    }

    /// Counts an error, keeping the first message.
    pub fn error(&self, e: impl Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }

    /// One load thread finished its setup (connections open).
    pub fn ready(&self) {
        self.ready.fetch_add(1, Ordering::Release);
    }

    /// A load thread could not set up; the run fails with `e`.
    pub fn setup_failed(&self, e: impl Display) {
        let mut f = self.setup_failed.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(|| e.to_string());
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Checks a connection's answer to [`tls::CHECK_SQL`] against `want` (`--tls`) and keeps
    /// the first for the report; an error aborts the setup.
    pub fn check_tls(&self, want: bool, answer: &str) -> Result<(), String> {
        let check = TlsCheck::parse(answer)?;
        check.expect(want)?;
        let mut t = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        t.get_or_insert(check);
        Ok(())
    }

    fn completed(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }

    fn failures(&self) -> u64 {
        self.errors.load(Ordering::Relaxed) + self.wrong.load(Ordering::Relaxed)
    }
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snap {
    at: Instant,
    cpu: Duration,
    /// The server's CPU (postmaster + children) when it runs on this machine.
    server_cpu: Option<Duration>,
    /// A pooler's CPU (`PGLOAD_BOUNCER_PID`), when named.
    bouncer_cpu: Option<Duration>,
    queries: u64,
    failures: u64,
}

impl Snap {
    /// The window's opening edge. The server is read first, so the `/proc` scan this costs
    /// is not charged to the client's window (nor, at the closing edge, after it).
    fn start(ctl: &Ctl) -> Snap {
        let server_cpu = server::cpu();
        let bouncer_cpu = server::bouncer_cpu();
        Snap {
            at: Instant::now(),
            cpu: ioxide::process_cpu_time(),
            server_cpu,
            bouncer_cpu,
            queries: ctl.completed(),
            failures: ctl.failures(),
        }
    }

    /// The window's closing edge: the client first, then the server.
    fn end(ctl: &Ctl) -> Snap {
        let (at, cpu, queries, failures) = (
            Instant::now(),
            ioxide::process_cpu_time(),
            ctl.completed(),
            ctl.failures(),
        );
        Snap {
            at,
            cpu,
            server_cpu: server::cpu(),
            bouncer_cpu: server::bouncer_cpu(),
            queries,
            failures,
        }
    }
}

/// The measured window's edges.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    start: Snap,
    end: Snap,
}

/// Runs the controller on this thread while `threads` load threads (already spawned) set up
/// and run: waits until all are ready, warms up, measures, stops them. In fixed mode the window
/// spans from ready until every ticket is taken and answered (`done` says the threads exited).
pub fn control(
    ctl: &Ctl,
    args: &Args,
    threads: usize,
    done: &dyn Fn() -> bool,
) -> Result<Window, String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        if let Some(e) = ctl
            .setup_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(e);
        }
        if ctl.ready.load(Ordering::Acquire) >= threads {
            break;
        }
        if Instant::now() > deadline || done() {
            return Err("the load threads did not get ready in time".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if ctl.fixed.is_some() {
        let start = Snap::start(ctl);
        while !done() {
            std::thread::sleep(Duration::from_millis(1));
        }
        return Ok(Window {
            start,
            end: Snap::end(ctl),
        });
    }
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let start = Snap::start(ctl);
    ctl.measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    ctl.measuring.store(false, Ordering::Relaxed);
    let end = Snap::end(ctl);
    ctl.stop.store(true, Ordering::Relaxed);
    Ok(Window { start, end })
}

/// Ring counters over the window, summed over reactors (ioxide-pg only).
#[derive(Debug, Clone, Copy, Default)]
pub struct RingDelta {
    pub enters: u64,
    pub sqes: u64,
    pub cqes: u64,
    /// Queries the reactors completed between their two ring samples.
    pub queries: u64,
}

/// What a driver hands back after its threads joined.
#[derive(Debug, Default)]
pub struct Outcome {
    pub hist: Histogram,
    pub ring: Option<RingDelta>,
}

/// The one JSON line of a run.
pub fn report(args: &Args, w: &Window, out: &Outcome, rss_kib: Option<u64>) -> Value {
    let wall = w.end.at.duration_since(w.start.at).as_secs_f64();
    let queries = w.end.queries - w.start.queries;
    let cpu = w.end.cpu.saturating_sub(w.start.cpu).as_secs_f64();
    let per_q = |x: f64| {
        if queries > 0 {
            x / queries as f64
        } else {
            f64::NAN
        }
    };
    let us = |d: Duration| round(d.as_secs_f64() * 1e6, 1);
    let mut v = json!({
        "driver": args.driver.name(),
        "conns": args.conns,
        "concurrency": args.concurrency,
        "seconds": round(wall, 3),
        "query": args.query.name(),
        "tls": args.tls,
        "transport": match args.options.get_host() {
            ::ioxide_pg::Host::Unix(_) => "unix",
            _ => "tcp",
        },
        "queries": queries,
        "qps": round(queries as f64 / wall, 0),
        "client_cpu_us_per_query": round(per_q(cpu * 1e6), 3),
        "p50_us": us(out.hist.quantile(0.5)),
        "p99_us": us(out.hist.quantile(0.99)),
        "errors": w.end.failures - w.start.failures,
        "rss_kib": rss_kib,
        "cpu_util": round(cpu / wall, 3),
    });
    let m = v.as_object_mut().expect("an object");
    if let (Some(a), Some(b)) = (w.start.server_cpu, w.end.server_cpu) {
        let server = b.saturating_sub(a).as_secs_f64();
        m.insert(
            "server_cpu_us_per_query".into(),
            json!(round(per_q(server * 1e6), 3)),
        );
    }
    if let (Some(a), Some(b)) = (w.start.bouncer_cpu, w.end.bouncer_cpu) {
        let bouncer = b.saturating_sub(a).as_secs_f64();
        m.insert(
            "bouncer_cpu_us_per_query".into(),
            json!(round(per_q(bouncer * 1e6), 3)),
        );
    }
    if args.pgbouncer {
        m.insert("pgbouncer_safe".into(), json!(true));
    }
    if let Some(n) = args.statement_cache_capacity {
        m.insert("statement_cache_capacity".into(), json!(n));
    }
    match args.driver {
        Driver::IoxidePg => {
            m.insert("reactors".into(), json!(args.reactors));
            m.insert("pipeline_depth".into(), json!(args.pipeline_depth));
            m.insert("pool".into(), json!(!args.no_pool));
            if let Some(r) = out.ring.filter(|r| r.queries > 0) {
                let q = r.queries as f64;
                m.insert(
                    "enters_per_query".into(),
                    json!(round(r.enters as f64 / q, 4)),
                );
                m.insert("sqes_per_query".into(), json!(round(r.sqes as f64 / q, 4)));
                m.insert("cqes_per_query".into(), json!(round(r.cqes as f64 / q, 4)));
            }
        }
        _ => {
            m.insert("runtime".into(), json!(args.flavor.name()));
        }
    }
    if args.fixed_queries.is_some() {
        m.insert("fixed_queries".into(), json!(args.fixed_queries));
    }
    v
}

/// Adds the run-wide error details and the TLS check's version and cipher to a report.
pub fn add_errors(v: &mut Value, ctl: &Ctl) {
    let m = v.as_object_mut().expect("an object");
    if let Some(t) = ctl.tls.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        m.insert("tls_version".into(), json!(t.version));
        m.insert("tls_cipher".into(), json!(t.cipher));
    }
    m.insert(
        "wrong_answers".into(),
        json!(ctl.wrong.load(Ordering::Relaxed)),
    );
    m.insert(
        "errors_total".into(),
        json!(ctl.errors.load(Ordering::Relaxed)),
    );
    let first = ctl
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(e) = first {
        m.insert("first_error".into(), json!(e));
    }
}

/// `x` rounded to `digits` decimals (NaN stays NaN, which serde_json writes as null).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Resident set size of this process (VmRSS), KiB.
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs one measurement with the driver `args` names and returns its JSON line.
pub fn run(args: &Args) -> Result<Value, String> {
    server::init(&args.options);
    match args.driver {
        Driver::IoxidePg => ioxide_pg::run(args),
        _ => peers::run(args),
    }
}

/// The closed loop every driver's task runs: while the controller says go, time one query
/// (`$body`, an expression that awaits and yields `Result<bool, String>` — true when the
/// answer checked out), count it, record its latency. `$n` is a distinct parameter value per
/// query. Evaluates to the task's latency histogram.
#[macro_export]
macro_rules! closed_loop {
    ($ctl:expr, $task:expr, |$n:ident| $body:expr) => {{
        let ctl: &$crate::pgload::Ctl = $ctl;
        let task: usize = $task;
        let mut hist = $crate::Histogram::new();
        let mut $n: i64 = (task as i64) << 32;
        while ctl.keep_going() {
            let t0 = std::time::Instant::now();
            let r: Result<bool, String> = $body;
            ctl.record(task, r, t0, &mut hist);
            $n += 1;
        }
        hist
    }};
}
