//! `pgmem`: resident memory per idle pooled connection and per in-flight query (issue 21,
//! item 4). One driver per run, one JSON line; `bench/memory.sh` runs them all.
//!
//! Idle (`--conns N`): after a warm-up (one connection opened, `SELECT 42`, closed, so lazy
//! state is paid before the baseline), the process's RSS (`/proc/self/smaps_rollup`) is read,
//! N connections are opened (ioxide-pg: a `PgPool` of N warmed until `stats().open == N`;
//! tokio-postgres: N clients, each connection task spawned on a current-thread runtime;
//! deadpool-postgres: a pool of N, N clients rented at once and returned), RSS is read again
//! (`open`), every connection runs `SELECT 42` once and RSS is read a third time (`used`, what
//! an idle pooled connection that has served a query holds). Per connection = delta ÷ N.
//!
//! In flight (`--inflight D`, one connection): `SELECT pg_sleep(1)` then D − 1 `SELECT 42`
//! pipelined behind it (ioxide-pg: `pipeline_depth(D)`; tokio-postgres: D tasks on one
//! client), RSS read while all D wait; per query = (that − RSS of the idle used connection) ÷ D.

use ioxide_pg::{Host, PgOptions, PgPool, SslMode};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: pgmem --driver ioxide-pg|tokio-postgres|deadpool [--conns N] \
[--inflight D] [--url postgres://...] [--unix DIR]
Without --url the libpq environment (PGHOST, PGPORT, ...) is used. --inflight D: one
connection, D queries in flight (ioxide-pg and tokio-postgres). Prints one JSON line.";

/// How long a pool may take to fill.
const WARM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the head query of the in-flight measurement holds the others back.
const HOLD_SQL: &str = "SELECT pg_sleep(1)::text";
/// What the in-flight tasks wait on before RSS is read.
const SETTLE: Duration = Duration::from_millis(300);

struct Args {
    driver: String,
    conns: usize,
    inflight: Option<usize>,
    options: PgOptions,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut driver, mut conns, mut inflight, mut url, mut unix) = (None, 64, None, None, None);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("not a count >= 1: {v}"))
        };
        match flag.as_str() {
            "--driver" => driver = Some(value()?),
            "--conns" => conns = num(value()?)?,
            "--inflight" => inflight = Some(num(value()?)?),
            "--url" => url = Some(value()?),
            "--unix" => unix = Some(value()?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let driver = driver.ok_or_else(|| format!("--driver is required\n{USAGE}"))?;
    if !["ioxide-pg", "tokio-postgres", "deadpool"].contains(&driver.as_str()) {
        return Err(format!("unknown driver {driver}\n{USAGE}"));
    }
    if inflight.is_some() && driver == "deadpool" {
        return Err("--inflight is for ioxide-pg and tokio-postgres".into());
    }
    let mut options = match url {
        Some(u) => PgOptions::from_url(&u),
        None => PgOptions::from_env(),
    }
    .map_err(|e| format!("connection options: {e}"))?
    .ssl_mode(SslMode::Disable);
    if let Some(dir) = unix {
        options = options.host(dir);
    }
    Ok(Args {
        driver,
        conns,
        inflight,
        options,
    })
}

/// This process's resident set, KiB (`Rss:` of `/proc/self/smaps_rollup`).
fn rss_kib() -> Result<u64, String> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup")
        .map_err(|e| format!("reading /proc/self/smaps_rollup: {e}"))?;
    s.lines()
        .find(|l| l.starts_with("Rss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| "no Rss line in /proc/self/smaps_rollup".into())
}

/// RSS readings of one run, KiB.
#[derive(Debug, Default)]
struct Readings {
    base: u64,
    open: u64,
    used: u64,
    /// While `--inflight` queries wait.
    inflight: Option<u64>,
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pgmem: {e}");
            std::process::exit(2);
        }
    };
    let n = args.inflight.map_or(args.conns, |_| 1);
    let r = match args.driver.as_str() {
        "ioxide-pg" => run_ioxide(&args, n),
        "tokio-postgres" => run_tokio(&args, n, false),
        _ => run_tokio(&args, n, true),
    };
    let m = match r {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pgmem: {e}");
            std::process::exit(1);
        }
    };
    let per = |a: u64, b: u64, d: usize| ((b as f64 - a as f64) / d as f64 * 10.0).round() / 10.0;
    let mut v = json!({
        "driver": args.driver,
        "conns": n,
        "transport": match args.options.get_host() { Host::Unix(_) => "unix", _ => "tcp" },
        "rss_base_kib": m.base,
        "rss_open_kib": m.open,
        "rss_used_kib": m.used,
        "kib_per_conn_open": per(m.base, m.open, n),
        "kib_per_conn_used": per(m.base, m.used, n),
    });
    if let (Some(d), Some(x), Some(o)) = (args.inflight, m.inflight, v.as_object_mut()) {
        o.insert("inflight".into(), json!(d));
        o.insert("rss_inflight_kib".into(), json!(x));
        o.insert("kib_per_inflight_query".into(), json!(per(m.used, x, d)));
    }
    println!("{v}");
}

fn run_ioxide(args: &Args, n: usize) -> Result<Readings, String> {
    let depth = args.inflight.unwrap_or(1);
    let opts = args.options.clone().pool_size(n).pipeline_depth(depth);
    let target = opts.resolve().map_err(|e| e.to_string())?;
    let rt = ioxide::Runtime::with_config(ioxide::RingConfig::default(), 0)
        .map_err(|e| format!("starting a reactor: {e}"))?;
    rt.block_on(async move {
        let reactor = ioxide::Reactor::current();
        let warm = |size: usize| {
            let pool =
                PgPool::start_with_target(&reactor, opts.clone().pool_size(size), target.clone());
            async move {
                let pool = pool.map_err(|e| format!("starting the pool: {e}"))?;
                let t0 = Instant::now();
                while pool.stats().open < size {
                    if t0.elapsed() > WARM_TIMEOUT {
                        return Err(format!("the pool did not fill: {:?}", pool.stats()));
                    }
                    ioxide::time::sleep(Duration::from_millis(2)).await;
                }
                Ok::<_, String>(pool)
            }
        };
        let first = warm(1).await?;
        first.query("SELECT 42").await.map_err(|e| e.to_string())?;
        first.close().await;
        ioxide::time::sleep(Duration::from_millis(100)).await;
        let mut m = Readings {
            base: rss_kib()?,
            ..Readings::default()
        };
        let pool = warm(n).await?;
        m.open = rss_kib()?;
        // Depth 1 for the idle run: N concurrent queries take one connection each.
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let p = pool.clone();
                ioxide::spawn(async move { p.query("SELECT 42").await.map(|_| ()) })
            })
            .collect();
        for t in tasks {
            t.await.map_err(|e| e.to_string())?;
        }
        m.used = rss_kib()?;
        if let Some(d) = args.inflight {
            let mut tasks = Vec::with_capacity(d);
            let p = pool.clone();
            // All in one turn: the pool pipelines nothing behind a command older than 20 ms.
            tasks.push(ioxide::spawn(
                async move { p.query(HOLD_SQL).await.map(|_| ()) },
            ));
            for _ in 1..d {
                let p = pool.clone();
                tasks.push(ioxide::spawn(async move {
                    p.query("SELECT 42").await.map(|_| ())
                }));
            }
            ioxide::time::sleep(SETTLE).await;
            let in_flight = pool.stats().in_flight;
            if in_flight < d {
                return Err(format!("only {in_flight} of {d} queries in flight"));
            }
            m.inflight = Some(rss_kib()?);
            for t in tasks {
                t.await.map_err(|e| e.to_string())?;
            }
        }
        pool.close().await;
        Ok(m)
    })
}

fn tp_config(o: &PgOptions) -> tokio_postgres::Config {
    let mut c = bench::pgload::peers::tp_config(o);
    c.ssl_mode(tokio_postgres::config::SslMode::Disable);
    c
}

async fn tp_connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn run_tokio(args: &Args, n: usize, deadpool: bool) -> Result<Readings, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    let cfg = tp_config(&args.options);
    let err = |e: tokio_postgres::Error| e.to_string();
    rt.block_on(async move {
        let first = tp_connect(&cfg).await?;
        first.query_one("SELECT 42", &[]).await.map_err(err)?;
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut m = Readings {
            base: rss_kib()?,
            ..Readings::default()
        };
        if deadpool {
            use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
            let mgr = Manager::from_config(
                cfg.clone(),
                tokio_postgres::NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            let pool = Pool::builder(mgr)
                .max_size(n)
                .build()
                .map_err(|e| e.to_string())?;
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(pool.get().await.map_err(|e| e.to_string())?);
            }
            m.open = rss_kib()?;
            for c in &held {
                let s = c.prepare_cached("SELECT 42").await.map_err(err)?;
                c.query_one(&s, &[]).await.map_err(err)?;
            }
            drop(held);
            m.used = rss_kib()?;
            if pool.status().size != n {
                return Err(format!("deadpool holds {} connections", pool.status().size));
            }
            return Ok(m);
        }
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(Arc::new(tp_connect(&cfg).await?));
        }
        m.open = rss_kib()?;
        let mut stmts = Vec::with_capacity(n);
        for c in &clients {
            let s = c.prepare("SELECT 42").await.map_err(err)?;
            c.query_one(&s, &[]).await.map_err(err)?;
            stmts.push(s);
        }
        m.used = rss_kib()?;
        if let (Some(d), Some(c), Some(s)) = (args.inflight, clients.first(), stmts.first()) {
            let mut tasks = Vec::with_capacity(d);
            let (hold, held) = (c.clone(), c.prepare(HOLD_SQL).await.map_err(err)?);
            tasks.push(tokio::spawn(async move {
                hold.query_one(&held, &[]).await.map(|_| ())
            }));
            for _ in 1..d {
                let (c, s) = (c.clone(), s.clone());
                tasks.push(tokio::spawn(async move {
                    c.query_one(&s, &[]).await.map(|_| ())
                }));
            }
            tokio::time::sleep(SETTLE).await;
            if tasks.iter().any(|t| t.is_finished()) {
                return Err("a query finished before the reading".into());
            }
            m.inflight = Some(rss_kib()?);
            for t in tasks {
                t.await.map_err(|e| e.to_string())?.map_err(err)?;
            }
        }
        Ok(m)
    })
}
