//! Through a real PgBouncer (the installed `pgbouncer`, `pool_mode = transaction`) in front
//! of a throwaway cluster: the default statement cache detects the pooler (`42P05` on a
//! Parse, `26000` on a Bind after our own Parse) and switches the connection to unnamed
//! statements without failing a query; pipelines and batches; the failure contract
//! (PgBouncer restarted, a backend terminated behind it, PAUSE/RESUME, RECONNECT); a cancel.
//!
//! Each test starts its own cluster and PgBouncer. Without `pgbouncer` installed (`.ci/run`
//! installs it) every test prints why and returns.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_within, Capture};
use ioxide_pg::{PgConnection, PgOptions, PgPool, Pipeline};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{Cluster, ErrorKind, PgBouncer};

const LIMIT: Duration = Duration::from_secs(120);

/// A cluster with a `pb_items` table, and PgBouncer in front of it with `pool_size` server
/// connections; `None` (with the reason printed) when `pgbouncer` is not installed.
fn setup(pool_size: u32) -> Option<(Cluster, PgBouncer)> {
    setup_with(pool_size, &[])
}

/// As [`setup`], with more `[pgbouncer]` settings.
fn setup_with(pool_size: u32, settings: &[(&str, &str)]) -> Option<(Cluster, PgBouncer)> {
    let cluster = Cluster::new().unwrap();
    cluster
        .psql("CREATE TABLE pb_items (id int8 PRIMARY KEY, name text NOT NULL)")
        .unwrap();
    let mut builder = PgBouncer::builder().default_pool_size(pool_size);
    for (key, value) in settings {
        builder = builder.setting(*key, *value);
    }
    match builder.start(&cluster) {
        Ok(b) => Some((cluster, b)),
        Err(e) if e.kind() == ErrorKind::MissingBinaries => {
            eprintln!("SKIPPED: {e}");
            None
        }
        Err(e) => panic!("pgbouncer did not start: {e}"),
    }
}

fn opts(b: &PgBouncer) -> PgOptions {
    PgOptions::from_url(&b.url())
        .unwrap()
        .application_name("ioxide-pg-tests")
}

/// One request of the playground-like mix (`i` picks which): parameterized queries of five
/// distinct statements, each answer checked.
async fn request(pool: &PgPool, i: u64) -> Result<(), String> {
    let id = i64::try_from(i).unwrap();
    let r = match i % 5 {
        0 => pool
            .query_one("SELECT $1::int8 + 1", &[&id])
            .await
            .map(|row| row.get::<i64>(0).unwrap() == id + 1),
        1 => pool
            .query_one("SELECT upper($1::text)", &[&format!("n{i}")])
            .await
            .map(|row| row.get::<String>(0).unwrap() == format!("N{i}")),
        2 => pool
            .execute(
                "INSERT INTO pb_items (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE \
                 SET name = excluded.name",
                &[&id, &format!("item {i}")],
            )
            .await
            .map(|n| n == 1),
        3 => pool
            .query_params(
                "SELECT n FROM generate_series(1, $1::int4) n",
                &[&i32::try_from(i % 7 + 1).unwrap()],
            )
            .await
            .map(|rs| rs.len() == usize::try_from(i % 7 + 1).unwrap()),
        _ => pool
            .query_opt("SELECT name FROM pb_items WHERE id = $1", &[&(id - 2)])
            .await
            .map(|row| {
                row.is_none_or(|r| r.get::<String>(0).unwrap() == format!("item {}", i - 2))
            }),
    };
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("request {i}: wrong answer")),
        Err(e) => Err(format!("request {i}: {e}")),
    }
}

/// `total` requests of the mix, `concurrency` at a time; returns the failures.
async fn mix(pool: &PgPool, total: u64, concurrency: u64) -> Vec<String> {
    let failed = Rc::new(RefCell::new(Vec::new()));
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let pool = pool.clone();
            let failed = failed.clone();
            ioxide::spawn(async move {
                let mut i = t;
                while i < total {
                    if let Err(e) = request(&pool, i).await {
                        failed.borrow_mut().push(e);
                    }
                    i += concurrency;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(failed).unwrap().into_inner()
}

fn mixed_requests(cache: Option<usize>) {
    let Some((_cluster, bouncer)) = setup(2) else {
        return;
    };
    let mut o = opts(&bouncer).pool_size(8);
    if let Some(capacity) = cache {
        o = o.statement_cache_capacity(capacity);
    }
    run_within(LIMIT, async move {
        let reactor = ioxide::Reactor::current();
        let pool = PgPool::start(&reactor, o).unwrap();
        let started = Instant::now();
        let failed = mix(&pool, 1200, 64).await;
        eprintln!(
            "1 200 mixed requests through PgBouncer (cache {cache:?}): {} failed in {:?}",
            failed.len(),
            started.elapsed()
        );
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        pool.close().await;
    });
}

#[test]
fn default_settings_answer_1200_mixed_requests() {
    mixed_requests(None);
}

#[test]
fn statement_cache_off_answers_1200_mixed_requests() {
    mixed_requests(Some(0));
}

/// With one server connection, every command of a client runs on it: a `RECONNECT` (a new
/// server connection, so the cached statement is gone: `26000`, as after `DEALLOCATE ALL`)
/// is healed by preparing it again, and the connection keeps naming statements.
#[test]
fn a_lost_statement_is_prepared_again_and_naming_stays_on() {
    let Some((_cluster, bouncer)) = setup(1) else {
        return;
    };
    let o = opts(&bouncer);
    run_within(LIMIT, async move {
        let a = PgConnection::connect(&o).await.unwrap();
        let one = 1i64;
        let r = a.query_one("SELECT $1::int8 + 1", &[&one]).await.unwrap();
        assert_eq!(r.get::<i64>(0).unwrap(), 2);
        assert_eq!(a.cached_statements(), 1);
        bouncer.reconnect().unwrap();
        for v in 0..5i64 {
            let r = a.query_one("SELECT $1::int8 + 1", &[&v]).await.unwrap();
            assert_eq!(r.get::<i64>(0).unwrap(), v + 1);
        }
        assert_eq!(a.cached_statements(), 1);
        assert!(a.names_statements(), "naming stays on");
        a.close().await;
    });
}

/// Inside a transaction block a lost cached statement cannot be retried (the block is
/// aborted): the caller gets `26000` saying why and what avoids it; the next transaction,
/// prepared afresh, works.
#[test]
fn a_statement_lost_inside_a_transaction_fails_with_the_reason() {
    let Some((_cluster, bouncer)) = setup(1) else {
        return;
    };
    let o = opts(&bouncer);
    run_within(LIMIT, async move {
        let a = PgConnection::connect(&o).await.unwrap();
        let one = 1i64;
        a.query_one("SELECT $1::int8 + 1", &[&one]).await.unwrap();
        bouncer.reconnect().unwrap();
        let tx = a.begin().await.unwrap();
        let e = tx
            .query_one("SELECT $1::int8 + 1", &[&one])
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("26000"), "{e}");
        let text = format!("{e:#}");
        assert!(text.contains("statement_cache_capacity=0"), "{text}");
        tx.rollback().await.unwrap();
        let tx = a.begin().await.unwrap();
        let r = tx.query_one("SELECT $1::int8 + 1", &[&one]).await.unwrap();
        assert_eq!(r.get::<i64>(0).unwrap(), 2);
        tx.commit().await.unwrap();
        a.close().await;
    });
}

/// Two server connections used in turn (`server_round_robin = 1`), so a client's
/// consecutive commands land on different ones: a statement parsed on one is missing on the
/// other (`26000` right after our own Parse). Every path answers anyway, and the connection
/// names no statement from then on, with one warning: a query, an explicit statement (whose
/// cached copy is refused first, then its fresh one), a pipeline and a batch, each on a
/// fresh connection.
#[test]
fn the_symptom_switches_connections_to_unnamed_statements() {
    let Some((_cluster, bouncer)) = setup_with(2, &[("server_round_robin", "1")]) else {
        return;
    };
    let o = opts(&bouncer);
    let capture = Capture::start(tracing::Level::WARN);
    run_within(LIMIT, async move {
        open_both_server_connections(&o).await;
        let one = 1i64;

        let a = PgConnection::connect(&o).await.unwrap();
        for v in 0..10i64 {
            let r = a.query_one("SELECT $1::int8 * 10", &[&v]).await.unwrap();
            assert_eq!(r.get::<i64>(0).unwrap(), v * 10);
        }
        assert!(!a.names_statements(), "a stopped naming statements");
        // The description of the unnamed statement is kept: one round trip per query.
        assert_eq!(a.cached_statements(), 1);
        // Its reply describes the rows every time; when that changes under the kept
        // description (DDL in between), the new one is read, not the kept one.
        a.query("CREATE TABLE pb_shape (x int4)").await.unwrap();
        a.query("INSERT INTO pb_shape VALUES (5)").await.unwrap();
        let shape = "SELECT * FROM pb_shape WHERE $1::int8 > 0";
        for _ in 0..3 {
            let r = a.query_one(shape, &[&one]).await.unwrap();
            assert_eq!(r.get::<i32>(0).unwrap(), 5);
        }
        a.query("ALTER TABLE pb_shape ALTER COLUMN x TYPE text, ADD COLUMN y int8 DEFAULT 9")
            .await
            .unwrap();
        let r = a.query_one(shape, &[&one]).await.unwrap();
        assert_eq!(r.columns().len(), 2);
        assert_eq!(r.get::<String>(0).unwrap(), "5");
        assert_eq!(r.get::<i64>("y").unwrap(), 9);

        let b = PgConnection::connect(&o).await.unwrap();
        let stmt = b.prepare("SELECT $1::int8 - 1").await.unwrap();
        let r = b.query_one(&stmt, &[&one]).await.unwrap();
        assert_eq!(r.get::<i64>(0).unwrap(), 0);
        assert!(!b.names_statements(), "b stopped naming statements");

        let c = PgConnection::connect(&o).await.unwrap();
        let mut p = Pipeline::new();
        let (three, five) = (3i64, 5i64);
        p.query("SELECT $1::int8 + 100", &[&three])
            .query(&stmt, &[&five])
            .execute("DELETE FROM pb_items WHERE id = $1", &[&three]);
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!(r[0].scalar::<i64>().unwrap(), 103);
        assert_eq!(r[1].scalar::<i64>().unwrap(), 4);
        assert_eq!(r[2].rows_affected(), 0);
        assert!(!c.names_statements(), "c stopped naming statements");
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!(r[1].scalar::<i64>().unwrap(), 4);

        let d = PgConnection::connect(&o).await.unwrap();
        let rows: Vec<(i64, String)> = (0..10).map(|i| (i, format!("d{i}"))).collect();
        let params: Vec<[&(dyn ioxide_pg::types::ToSql + Sync); 2]> =
            rows.iter().map(|(id, n)| [id as _, n as _]).collect();
        let batch: Vec<ioxide_pg::Params<'_>> = params.iter().map(|p| &p[..]).collect();
        let n = d
            .execute_many("INSERT INTO pb_items (id, name) VALUES ($1, $2)", &batch)
            .await
            .unwrap();
        assert_eq!(n, 10);
        assert!(!d.names_statements(), "d stopped naming statements");
        let r = d
            .query_one("SELECT name FROM pb_items WHERE id = $1", &[&three])
            .await
            .unwrap();
        assert_eq!(r.get::<String>(0).unwrap(), "d3");

        let warned = capture
            .text()
            .matches("uses unnamed statements from now on")
            .count();
        assert_eq!(warned, 4, "one warning per switched connection");
    });
}

/// The pool's `query` prepares a text it has seen before (auto-prepare): behind
/// `server_round_robin = 1` its Bind lands on the other server connection (`26000` right
/// after our own Parse), and the connection stops naming statements instead of preparing and
/// evicting the text for ever. Every answer is right.
#[test]
fn the_pools_auto_prepared_text_switches_to_unnamed_statements() {
    let Some((_cluster, bouncer)) = setup_with(2, &[("server_round_robin", "1")]) else {
        return;
    };
    let o = opts(&bouncer).pool_size(1);
    run_within(LIMIT, async move {
        open_both_server_connections(&o).await;
        let pool = PgPool::start(&ioxide::Reactor::current(), o.clone()).unwrap();
        for _ in 0..20 {
            let r = pool.query("SELECT 42").await.unwrap();
            assert_eq!(r.value(), Some("42"));
        }
        let c = pool.rent().await.unwrap();
        assert!(
            !c.names_statements(),
            "the pool's connection stopped naming statements"
        );
        drop(c);
        pool.close().await;
    });
}

/// Makes PgBouncer open both of its server connections: two clients at once, each holding
/// one for a moment.
async fn open_both_server_connections(o: &PgOptions) {
    let (w1, w2) = (
        PgConnection::connect(o).await.unwrap(),
        PgConnection::connect(o).await.unwrap(),
    );
    let (r1, r2) = futures_join(
        w1.query("SELECT pg_sleep(0.3)"),
        w2.query("SELECT pg_sleep(0.3)"),
    )
    .await;
    r1.unwrap();
    r2.unwrap();
}

/// Awaits two futures concurrently (both run on this reactor).
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (ra.unwrap(), rb.unwrap())
}

/// `SET` and `LISTEN` through the pool's shared path warn, once per connection.
#[test]
fn set_and_listen_on_the_shared_path_warn_once_per_connection() {
    let Some((_cluster, bouncer)) = setup(2) else {
        return;
    };
    let o = opts(&bouncer).pool_size(1);
    let capture = Capture::start(tracing::Level::WARN);
    run_within(LIMIT, async move {
        let reactor = ioxide::Reactor::current();
        let pool = PgPool::start(&reactor, o).unwrap();
        pool.query("SELECT 1").await.unwrap();
        assert!(!capture.text().contains("shared connection"));
        pool.query("SET statement_timeout = '5s'").await.unwrap();
        pool.batch_execute("LISTEN pb_channel; SET statement_timeout = 0")
            .await
            .unwrap();
        pool.query("SET statement_timeout = 0").await.unwrap();
        let text = capture.text();
        assert_eq!(
            text.matches("ran on a pool's shared connection").count(),
            1,
            "{text}"
        );
        assert!(text.contains("SET LOCAL"), "{text}");
        pool.close().await;
    });
}

/// Pipelines and `execute_many` from 8 pooled connections over 2 server connections.
#[test]
fn pipelines_and_batches_through_pgbouncer() {
    let Some((_cluster, bouncer)) = setup(2) else {
        return;
    };
    let o = opts(&bouncer).pool_size(8);
    run_within(LIMIT, async move {
        let reactor = ioxide::Reactor::current();
        let pool = PgPool::start(&reactor, o).unwrap();
        let tasks: Vec<_> = (0..32i64)
            .map(|t| {
                let pool = pool.clone();
                ioxide::spawn(async move {
                    for round in 0..10i64 {
                        let base = (t * 10 + round) * 100;
                        let ids: Vec<i64> = (base..base + 5).collect();
                        let names: Vec<String> = ids.iter().map(|i| format!("p{i}")).collect();
                        let params: Vec<[&(dyn ioxide_pg::types::ToSql + Sync); 2]> = ids
                            .iter()
                            .zip(&names)
                            .map(|(id, n)| [id as _, n as _])
                            .collect();
                        let batch: Vec<ioxide_pg::Params<'_>> =
                            params.iter().map(|p| &p[..]).collect();
                        let n = pool
                            .execute_many("INSERT INTO pb_items (id, name) VALUES ($1, $2)", &batch)
                            .await
                            .unwrap();
                        assert_eq!(n, 5);
                        let mut p = Pipeline::new();
                        let last = base + 4;
                        p.query(
                            "SELECT count(*) FROM pb_items WHERE id BETWEEN $1 AND $2",
                            &[&base, &last],
                        )
                        .query("SELECT name FROM pb_items WHERE id = $1", &[&last])
                        .execute(
                            "UPDATE pb_items SET name = upper(name) WHERE id = $1",
                            &[&base],
                        );
                        let r = pool.run_pipeline(&p).await.unwrap();
                        assert_eq!(r[0].scalar::<i64>().unwrap(), 5);
                        assert_eq!(r[1].scalar::<String>().unwrap(), format!("p{last}"));
                        assert_eq!(r[2].rows_affected(), 1);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let n = pool
            .query_one("SELECT count(*) FROM pb_items", &[])
            .await
            .unwrap()
            .get::<i64>(0)
            .unwrap();
        assert_eq!(n, 32 * 10 * 5);
        pool.close().await;
    });
}

/// What a run of the mix saw around a fault.
#[derive(Debug, Default)]
struct Outcome {
    ok: u64,
    failed: Vec<String>,
    ok_after_fault: u64,
}

/// 32 closed loops of the mix through a pool of 8 (command timeout 5 s); `fault` runs on
/// another thread once the pool has answered 200 requests (at most 20 s in: a loaded
/// machine starts slowly), and the loops go on 3 s after it returns. Every request is
/// counted as answered or failed.
fn under_fault(
    bouncer: &PgBouncer,
    cluster: &Cluster,
    fault: impl FnOnce(&PgBouncer, &Cluster) + Send,
) -> Outcome {
    // The fault tests run one at a time: each loads both cores for seconds, and several at
    // once (beside the other tests' clusters) starved a restarted PgBouncer.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let o = opts(bouncer)
        .pool_size(8)
        .command_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
    let fault_done = Arc::new(Mutex::new(None::<Instant>));
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|s| {
        let done = fault_done.clone();
        let warm = answered.clone();
        let faulter = s.spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(20);
            while warm.load(std::sync::atomic::Ordering::Relaxed) < 200 && Instant::now() < give_up
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            fault(bouncer, cluster);
            *done.lock().unwrap() = Some(Instant::now());
        });
        let outcome = run_within(LIMIT, async move {
            let reactor = ioxide::Reactor::current();
            let pool = PgPool::start(&reactor, o).unwrap();
            let out = Rc::new(RefCell::new(Outcome::default()));
            let tasks: Vec<_> = (0..32u64)
                .map(|t| {
                    let pool = pool.clone();
                    let out = out.clone();
                    let done = fault_done.clone();
                    let answered = answered.clone();
                    ioxide::spawn(async move {
                        let mut i = t;
                        let hard_stop = Instant::now() + Duration::from_secs(60);
                        loop {
                            let fault_at = *done.lock().unwrap();
                            let now = Instant::now();
                            if now > hard_stop
                                || fault_at.is_some_and(|d| now > d + Duration::from_secs(3))
                            {
                                break;
                            }
                            let r = request(&pool, i).await;
                            let after = fault_at.is_some();
                            let failed = r.is_err();
                            {
                                let mut o = out.borrow_mut();
                                match r {
                                    Ok(()) => {
                                        o.ok += 1;
                                        o.ok_after_fault += u64::from(after);
                                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    Err(e) => o.failed.push(e),
                                }
                            }
                            if failed {
                                // Do not spin while PgBouncer is away.
                                ioxide::time::sleep(Duration::from_millis(5)).await;
                            }
                            i += 32;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            pool.close().await;
            Rc::try_unwrap(out).unwrap().into_inner()
        });
        faulter.join().unwrap();
        outcome
    })
}

fn report(what: &str, o: &Outcome) {
    let mut kinds: Vec<String> = o
        .failed
        .iter()
        .map(|e| {
            e.split_once(": ")
                .map_or(e.as_str(), |x| x.1)
                .chars()
                .take(90)
                .collect()
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    eprintln!(
        "{what}: {} answered ({} after the fault), {} failed; errors: {kinds:#?}",
        o.ok,
        o.ok_after_fault,
        o.failed.len()
    );
}

#[test]
fn a_pgbouncer_restart_heals() {
    let Some((cluster, bouncer)) = setup(2) else {
        return;
    };
    let o = under_fault(&bouncer, &cluster, |b, _| b.restart().unwrap());
    report("PgBouncer restart", &o);
    assert!(o.ok_after_fault > 100, "{o:?}");
    // At most what was in flight on the 8 connections (pipeline depth 8).
    assert!(o.failed.len() <= 64, "{} failed", o.failed.len());
}

#[test]
fn a_backend_terminated_behind_pgbouncer_heals() {
    let Some((cluster, bouncer)) = setup(2) else {
        return;
    };
    let o = under_fault(&bouncer, &cluster, |_, c| {
        assert!(c.terminate_backends().unwrap() >= 1);
    });
    report("backends terminated behind PgBouncer", &o);
    assert!(o.ok_after_fault > 100, "{o:?}");
    assert!(o.failed.len() <= 64, "{} failed", o.failed.len());
}

#[test]
fn pause_and_resume_lose_nothing() {
    let Some((cluster, bouncer)) = setup(2) else {
        return;
    };
    let o = under_fault(&bouncer, &cluster, |b, _| {
        b.pause().unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        b.resume().unwrap();
    });
    report("PAUSE 1 s, RESUME", &o);
    assert!(o.ok_after_fault > 100, "{o:?}");
    assert!(o.failed.is_empty(), "{:?}", o.failed);
}

#[test]
fn reconnect_loses_nothing() {
    let Some((cluster, bouncer)) = setup(2) else {
        return;
    };
    let o = under_fault(&bouncer, &cluster, |b, _| b.reconnect().unwrap());
    report("RECONNECT", &o);
    assert!(o.ok_after_fault > 100, "{o:?}");
    assert!(o.failed.is_empty(), "{:?}", o.failed);
}

/// `command_timeout` cancels through PgBouncer (which forwards the CancelRequest with the
/// key it gave us), and the connection answers afterwards.
#[test]
fn a_command_timeout_cancels_through_pgbouncer() {
    let Some((_cluster, bouncer)) = setup(2) else {
        return;
    };
    let o = opts(&bouncer).command_timeout(Duration::from_millis(300));
    run_within(LIMIT, async move {
        let c = PgConnection::connect(&o).await.unwrap();
        assert!(
            c.backend_pid().is_some(),
            "PgBouncer sends a BackendKeyData"
        );
        let started = Instant::now();
        let e = c.query("SELECT pg_sleep(20)").await.unwrap_err();
        let took = started.elapsed();
        assert!(e.is_timeout(), "{e}");
        assert!(took < Duration::from_secs(5), "cancelled after {took:?}");
        let one = 1i64;
        let r = c.query_one("SELECT $1::int8", &[&one]).await.unwrap();
        assert_eq!(r.get::<i64>(0).unwrap(), 1);
        c.close().await;
    });
}
