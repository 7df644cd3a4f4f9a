//! The peers at their idiomatic best, on one tokio runtime (`--runtime`):
//!
//! * tokio-postgres: `conns` clients, each with its statement prepared once; task `i` uses
//!   client `i % conns`, so with concurrency > conns many queries are pipelined on a client;
//! * deadpool-postgres: a pool of `conns` (`RecyclingMethod::Fast`), each query rents a
//!   client, `prepare_cached`, runs, returns it;
//! * sqlx: a `PgPool` of `conns` (its per-connection statement cache; `test_before_acquire`
//!   off unless `--sqlx-test-before-acquire`).
//!
//! With `--pgbouncer` (transaction pooling, where a named statement prepared on one server
//! connection is unknown on the next): tokio-postgres and deadpool run every query with
//! `query_typed` (the unnamed statement, parameter types given: Parse/Bind/Execute/Sync in
//! one round trip, nothing to remember across transactions) instead of a prepared
//! statement, deadpool keeping `RecyclingMethod::Fast` (nothing sent on return); sqlx sets
//! `statement_cache_capacity(0)` with `persistent(false)` queries (its unnamed statement;
//! the cache setting alone still names statements, see [`sqlx_one`]) and
//! `extra_float_digits(None)` (PgBouncer refuses that startup parameter unless told to
//! ignore it).
//!
//! With `--tls` the first two connect through `tokio-postgres-rustls` and sqlx through its
//! rustls feature, all on `ring` ([`super::tls`]); each checks one connection at start.

use super::{control, report, Args, Ctl, Driver, Flavor, Outcome, Query};
use crate::{closed_loop, Histogram};
use ioxide_pg::{Host, PgOptions};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_postgres::config::SslMode as TpSslMode;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Runs one measurement.
pub fn run(args: &Args) -> Result<Value, String> {
    let ctl = Arc::new(Ctl::new(args.concurrency, args.fixed_queries));
    let exited = Arc::new(AtomicBool::new(false));
    let rt = match args.flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Flavor::MultiThread1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build(),
    }
    .map_err(|e| format!("building the tokio runtime: {e}"))?;
    let thread = {
        let (ctl, exited, a) = (ctl.clone(), exited.clone(), args.clone());
        std::thread::Builder::new()
            .name("load".into())
            .spawn(move || {
                let r = rt.block_on(load(a, ctl.clone()));
                if let Err(e) = &r {
                    ctl.setup_failed(e);
                }
                exited.store(true, Ordering::Release);
                r
            })
            .map_err(|e| format!("spawning the load thread: {e}"))?
    };
    let window = control(&ctl, args, 1, &|| exited.load(Ordering::Acquire));
    if window.is_err() {
        ctl.setup_failed("aborted");
    }
    let rss = super::rss_kib();
    let hist = thread
        .join()
        .map_err(|_| "the load thread panicked".to_string())??;
    let out = Outcome { hist, ring: None };
    let mut v = report(args, &window?, &out, rss);
    super::add_errors(&mut v, &ctl);
    Ok(v)
}

/// A tokio-postgres `Config` for the server, user, database and password of `o` (TCP host or
/// Unix socket directory); TLS as tokio-postgres defaults unless the caller sets it.
pub fn tp_config(o: &PgOptions) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    match o.get_host() {
        Host::Tcp(h) => {
            c.host(h);
        }
        Host::Unix(dir) => {
            c.host_path(dir);
        }
        // `Host` is non-exhaustive: a kind tokio-postgres cannot take keeps its default.
        _ => {}
    }
    c.port(o.get_port())
        .user(o.get_user())
        .dbname(o.get_database());
    if let Some(p) = o.get_password() {
        c.password(p);
    }
    c
}

/// The rustls connector of tokio-postgres and deadpool with `--tls` (`None`: plaintext).
pub(crate) fn tp_tls(args: &Args) -> Result<Option<MakeRustlsConnect>, String> {
    match (&args.tls_root_cert, args.tls) {
        (Some(ca), true) => Ok(Some(MakeRustlsConnect::new(super::tls::client_config(ca)?))),
        (None, true) => Err("--tls without a CA file".into()),
        _ => Ok(None),
    }
}

/// [`tp_config`] with the `sslmode` for `tls`: `require` with a connector (the connector's
/// WebPKI verifier checks chain and host name), `disable` without.
pub(crate) fn tp_config_tls(o: &PgOptions, tls: bool) -> tokio_postgres::Config {
    let mut c = tp_config(o);
    c.ssl_mode(if tls {
        TpSslMode::Require
    } else {
        TpSslMode::Disable
    });
    c
}

/// Connects one tokio-postgres client, over TLS when `tls` is given, and spawns its
/// connection task on the current runtime.
pub(crate) async fn tp_connect(
    cfg: &tokio_postgres::Config,
    tls: Option<&MakeRustlsConnect>,
) -> Result<Client, tokio_postgres::Error> {
    match tls {
        None => {
            let (client, conn) = cfg.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        Some(t) => {
            let (client, conn) = cfg.connect(t.clone()).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
    }
}

/// A tokio-postgres client's answer to the TLS check.
pub(crate) async fn tp_check(c: &Client) -> Result<String, String> {
    let row = c
        .query_one(super::tls::CHECK_SQL, &[])
        .await
        .map_err(|e| format!("the TLS check: {e}"))?;
    row.try_get::<_, String>(0).map_err(err)
}

fn sqlx_options(o: &PgOptions, args: &Args) -> sqlx::postgres::PgConnectOptions {
    use sqlx::postgres::PgSslMode;
    let mut c = sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .port(o.get_port())
        .username(o.get_user())
        .database(o.get_database());
    c = match o.get_host() {
        Host::Tcp(h) => c.host(h),
        Host::Unix(dir) => c.socket(dir),
        _ => c,
    };
    if let Some(p) = o.get_password() {
        c = c.password(p);
    }
    if args.pgbouncer {
        // PgBouncer refuses the startup parameter sqlx sends by default (`unsupported
        // startup parameter: extra_float_digits`); sqlx's documented remedy is not to send it.
        c = c.statement_cache_capacity(0).extra_float_digits(None);
    }
    match (&args.tls_root_cert, args.tls) {
        (Some(ca), true) => c.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca),
        _ => c.ssl_mode(PgSslMode::Disable),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Opens the connections, reports ready, runs the tasks, merges their histograms.
async fn load(args: Args, ctl: Arc<Ctl>) -> Result<Histogram, String> {
    let (q, sql) = (args.query, args.query.sql());
    let mut handles = Vec::with_capacity(args.concurrency);
    let tls = tp_tls(&args)?;
    match args.driver {
        Driver::TokioPostgres => {
            let cfg = tp_config_tls(&args.options, args.tls);
            let mut clients = Vec::with_capacity(args.conns);
            for _ in 0..args.conns {
                let client = tp_connect(&cfg, tls.as_ref()).await.map_err(err)?;
                if clients.is_empty() {
                    ctl.check_tls(args.tls, &tp_check(&client).await?)?;
                }
                let stmt = if args.pgbouncer {
                    tp_typed(&client, q, 1).await?;
                    None
                } else {
                    Some(client.prepare(sql).await.map_err(err)?)
                };
                clients.push(Arc::new((client, stmt)));
            }
            ctl.ready();
            for task in 0..args.concurrency {
                let (ctl, c) = (ctl.clone(), clients[task % args.conns].clone());
                handles.push(tokio::spawn(async move {
                    closed_loop!(&ctl, task, |n| match &c.1 {
                        Some(s) => tp_one(&c.0, s, q, n).await,
                        None => tp_typed(&c.0, q, n).await,
                    })
                }));
            }
        }
        Driver::Deadpool => {
            use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
            let cfg = tp_config_tls(&args.options, args.tls);
            let mc = || ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let mgr = match tls {
                Some(t) => Manager::from_config(cfg, t, mc()),
                None => Manager::from_config(cfg, NoTls, mc()),
            };
            let pool = Pool::builder(mgr)
                .max_size(args.conns)
                .build()
                .map_err(err)?;
            // Open every connection and warm its statement cache.
            let mut held = Vec::with_capacity(args.conns);
            for _ in 0..args.conns {
                let c = pool.get().await.map_err(err)?;
                if held.is_empty() {
                    ctl.check_tls(args.tls, &tp_check(&c).await?)?;
                }
                if args.pgbouncer {
                    tp_typed(&c, q, 1).await?;
                } else {
                    c.prepare_cached(sql).await.map_err(err)?;
                }
                held.push(c);
            }
            drop(held);
            ctl.ready();
            let typed = args.pgbouncer;
            for task in 0..args.concurrency {
                let (ctl, pool) = (ctl.clone(), pool.clone());
                handles.push(tokio::spawn(async move {
                    closed_loop!(&ctl, task, |n| async {
                        let c = pool.get().await.map_err(err)?;
                        if typed {
                            return tp_typed(&c, q, n).await;
                        }
                        let s = c.prepare_cached(sql).await.map_err(err)?;
                        tp_one(&c, &s, q, n).await
                    }
                    .await)
                }));
            }
        }
        Driver::Sqlx => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(args.conns as u32)
                .min_connections(args.conns as u32)
                .test_before_acquire(args.sqlx_test_before_acquire)
                .connect_with(sqlx_options(&args.options, &args))
                .await
                .map_err(err)?;
            let mut held = Vec::with_capacity(args.conns);
            for _ in 0..args.conns {
                let mut c = pool.acquire().await.map_err(err)?;
                if held.is_empty() {
                    let answer: String = sqlx::query_scalar(super::tls::CHECK_SQL)
                        .persistent(!args.pgbouncer)
                        .fetch_one(&mut *c)
                        .await
                        .map_err(|e| format!("the TLS check: {e}"))?;
                    ctl.check_tls(args.tls, &answer)?;
                }
                sqlx_one_on(&mut c, q, !args.pgbouncer).await?;
                held.push(c);
            }
            drop(held);
            ctl.ready();
            let persistent = !args.pgbouncer;
            for task in 0..args.concurrency {
                let (ctl, pool) = (ctl.clone(), pool.clone());
                handles.push(tokio::spawn(async move {
                    closed_loop!(&ctl, task, |n| sqlx_one(&pool, q, n, persistent).await)
                }));
            }
        }
        Driver::IoxidePg => unreachable!("ioxide-pg runs on its own reactors"),
    }
    let mut hist = Histogram::new();
    for h in handles {
        hist.merge(&h.await.map_err(|e| format!("a load task failed: {e}"))?);
    }
    Ok(hist)
}

/// One tokio-postgres query on `c` with the prepared `s`, checked.
async fn tp_one(c: &Client, s: &Statement, q: Query, n: i64) -> Result<bool, String> {
    match q {
        Query::Select42 | Query::Select42Prepared => {
            let row = c.query_one(s, &[]).await.map_err(err)?;
            Ok(row.try_get::<_, i32>(0).map_err(err)? == 42)
        }
        Query::Param => {
            let row = c.query_one(s, &[&n]).await.map_err(err)?;
            Ok(row.try_get::<_, i64>(0).map_err(err)? == n + 1)
        }
        Query::Rows100 => {
            let rows = c.query(s, &[]).await.map_err(err)?;
            let mut sum = 0i64;
            for r in &rows {
                sum += i64::from(r.try_get::<_, i32>(0).map_err(err)?);
            }
            Ok(rows.len() == 100 && sum == super::ROWS100_SUM)
        }
    }
}

/// One tokio-postgres query on `c` with `query_typed` (the unnamed statement, safe through a
/// transaction-mode pooler), checked.
async fn tp_typed(c: &Client, q: Query, n: i64) -> Result<bool, String> {
    use tokio_postgres::types::Type;
    match q {
        Query::Select42 | Query::Select42Prepared => {
            let row = c.query_typed_one(q.sql(), &[]).await.map_err(err)?;
            Ok(row.try_get::<_, i32>(0).map_err(err)? == 42)
        }
        Query::Param => {
            let row = c
                .query_typed_one(q.sql(), &[(&n, Type::INT8)])
                .await
                .map_err(err)?;
            Ok(row.try_get::<_, i64>(0).map_err(err)? == n + 1)
        }
        Query::Rows100 => {
            let rows = c.query_typed(q.sql(), &[]).await.map_err(err)?;
            let mut sum = 0i64;
            for r in &rows {
                sum += i64::from(r.try_get::<_, i32>(0).map_err(err)?);
            }
            Ok(rows.len() == 100 && sum == super::ROWS100_SUM)
        }
    }
}

/// One sqlx query through the pool, checked; `persistent` false: sqlx's unnamed statement
/// (`Query::persistent`), the only one that survives transaction pooling — its
/// `statement_cache_capacity(0)` alone still names every statement (`sqlx_s_1`, …, per
/// connection), and two connections' `sqlx_s_1` meet on one server session (`42P05`).
async fn sqlx_one(pool: &sqlx::PgPool, q: Query, n: i64, persistent: bool) -> Result<bool, String> {
    match q {
        Query::Select42 | Query::Select42Prepared => {
            let v: i32 = sqlx::query_scalar(q.sql())
                .persistent(persistent)
                .fetch_one(pool)
                .await
                .map_err(err)?;
            Ok(v == 42)
        }
        Query::Param => {
            let v: i64 = sqlx::query_scalar(q.sql())
                .persistent(persistent)
                .bind(n)
                .fetch_one(pool)
                .await
                .map_err(err)?;
            Ok(v == n + 1)
        }
        Query::Rows100 => {
            let v: Vec<i32> = sqlx::query_scalar(q.sql())
                .persistent(persistent)
                .fetch_all(pool)
                .await
                .map_err(err)?;
            Ok(
                v.len() == 100
                    && v.iter().map(|&x| i64::from(x)).sum::<i64>() == super::ROWS100_SUM,
            )
        }
    }
}

/// Warms one sqlx connection's statement cache (`persistent` as in [`sqlx_one`]).
async fn sqlx_one_on(
    c: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
    q: Query,
    persistent: bool,
) -> Result<(), String> {
    match q {
        Query::Param => {
            sqlx::query_scalar::<_, i64>(q.sql())
                .persistent(persistent)
                .bind(1i64)
                .fetch_one(&mut **c)
                .await
                .map_err(err)?;
        }
        _ => {
            sqlx::query_scalar::<_, i32>(q.sql())
                .persistent(persistent)
                .fetch_all(&mut **c)
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}
