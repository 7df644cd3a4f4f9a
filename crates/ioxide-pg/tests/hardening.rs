//! Regressions for defects found by reading the code (issue 17): each test failed before its
//! fix. Fake servers where the timing must be exact, real clusters elsewhere.
#![allow(clippy::unwrap_used)]

mod common;

use common::{answer_queries, fake_opts, opts, opts_for, run_within};
use ioxide::Reactor;
use ioxide_pg::{PgConnection, PgError, PgPool, TxnStatus};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use testkit::{backend, Cluster, FakeServer, Step};

/// A startup answer like `backend::handshake_ok()` but without BackendKeyData, as poolers
/// and proxies may send.
fn handshake_without_key() -> Vec<u8> {
    let mut out = backend::authentication_ok();
    for (name, value) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        out.extend(backend::parameter_status(name, value));
    }
    out.extend(backend::ready_for_query(b'I'));
    out
}

// ---------------------------------------------------------------------------------------
// 1. A command timeout without BackendKeyData tears the connection down at the timeout.
// ---------------------------------------------------------------------------------------

#[test]
fn a_timeout_without_a_cancel_key_tears_down_and_the_pool_keeps_serving() {
    let fake = FakeServer::start_with(|i| {
        let mut s = vec![Step::Send(handshake_without_key())];
        if i == 0 {
            // The first query's reply lands 0.2 s after the 1 s timeout: inside what used to
            // be the cancel grace, which wedged the connection for good.
            s.push(Step::ReadMessage);
            s.push(Step::Stall(Duration::from_millis(1300)));
            s.push(Step::Send(backend::simple_query_result("?column?", "late")));
        }
        s.extend(answer_queries(200));
        s
    })
    .unwrap();
    let o = fake_opts(fake.port())
        .pool_size(1)
        .command_timeout(Duration::from_secs(1))
        .acquire_timeout(Duration::from_secs(2));
    run_within(Duration::from_secs(20), async move {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        let t0 = Instant::now();
        let e = pool.query("SELECT hang").await.unwrap_err();
        assert_eq!(
            e.timeout_kind(),
            Some(ioxide_pg::TimeoutKind::Command),
            "{e}"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        // Every later query resolves within timeout + 1 s, and succeeds.
        for i in 0..20 {
            let t = Instant::now();
            let r = pool.query("SELECT 42").await;
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "query {i} took {:?}",
                t.elapsed()
            );
            assert_eq!(r.unwrap().value(), Some("42"), "query {i}");
        }
        assert_eq!(pool.stats().open, 1, "{:?}", pool.stats());
        // The key-less connection went at the timeout: its replacement serves.
        assert!(pool.stats().opened_total >= 2, "{:?}", pool.stats());
    });
}

// ---------------------------------------------------------------------------------------
// 2. The shared path never keeps a connection inside a stranger's transaction.
// ---------------------------------------------------------------------------------------

#[test]
fn a_shared_command_that_opens_a_transaction_is_rolled_back_and_others_commit() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c).pool_size(3);
    run_within(Duration::from_secs(60), async move {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        pool.query("CREATE TABLE t (id int8 NOT NULL)")
            .await
            .unwrap();
        let writers: Vec<_> = (0..16i64)
            .map(|w| {
                let pool = pool.clone();
                ioxide::spawn(async move {
                    for i in 0..25i64 {
                        let n = pool
                            .execute("INSERT INTO t VALUES ($1)", &[&(w * 1000 + i)])
                            .await
                            .unwrap_or_else(|e| panic!("writer {w} insert {i}: {e}"));
                        assert_eq!(n, 1);
                    }
                })
            })
            .collect();
        // Strangers, issued in the same turns as the writers' inserts.
        for round in 0..3 {
            ioxide::time::sleep(Duration::from_millis(15)).await;
            let e = pool.execute("BEGIN", &[]).await.unwrap_err();
            assert!(e.is_misuse(), "round {round}: {e}");
            assert!(e.to_string().contains("rent()"), "{e}");
            let e = pool
                .query("BEGIN; UPDATE t SET id = id; SELECT 1/0")
                .await
                .unwrap_err();
            assert_eq!(e.sql_state(), Some("22012"), "{e}");
            assert!(e.to_string().contains("rent()"), "{e}");
        }
        for w in writers {
            w.await;
        }
        let r = pool
            .query("SELECT count(*) || '/' || count(DISTINCT id) FROM t")
            .await
            .unwrap();
        assert_eq!(r.value(), Some("400/400"), "every insert committed, once");
        // No connection is left in a transaction: every rent is Idle, and sees all rows.
        let rented: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(pool.rent().await.unwrap());
            }
            v
        };
        for c in &rented {
            assert_eq!(c.transaction_status(), TxnStatus::Idle);
            let r = c.query("SELECT count(*) FROM t").await.unwrap();
            assert_eq!(r.value(), Some("400"));
        }
    });
    drop(c);
}

// ---------------------------------------------------------------------------------------
// 7. Our automatic cancel landing on the command behind the timed-out one.
// ---------------------------------------------------------------------------------------

/// The server finishes A (which timed out at 200 ms) just before the CancelRequest lands,
/// so the cancel hits C, pipelined behind it; C's ReadyForQuery carries `c_status`.
fn collateral_script(c_status: u8) -> FakeServer {
    FakeServer::start_with(move |i| match i {
        0 => {
            let mut cancelled = backend::error_response(
                "ERROR",
                "57014",
                "canceling statement due to user request",
            );
            cancelled.extend(backend::ready_for_query(c_status));
            let mut s = vec![
                Step::Send(backend::handshake_ok()),
                Step::ReadMessage, // A
                Step::ReadMessage, // C
                Step::Stall(Duration::from_millis(450)),
                Step::Send(backend::simple_query_result("a", "a")),
                Step::Send(cancelled),
                Step::ReadMessage, // C again, if retried
                Step::Send(backend::simple_query_result("c", "c")),
            ];
            s.extend(answer_queries(3));
            s
        }
        _ => vec![Step::Close],
    })
    .unwrap()
}

/// A's outcome and C's, on one connection with A and C pipelined.
type Outcomes = (Result<String, PgError>, Result<String, PgError>);

fn run_a_and_c(fake: &FakeServer, timeout: Option<Duration>, user_cancel: bool) -> Outcomes {
    let mut o = fake_opts(fake.port());
    if let Some(t) = timeout {
        o = o.command_timeout(t);
    }
    run_within(Duration::from_secs(10), async move {
        let conn = Rc::new(PgConnection::connect(&o).await.unwrap());
        let (c1, c2) = (conn.clone(), conn.clone());
        let a = ioxide::spawn(async move {
            c1.query("SELECT a")
                .await
                .map(|r| r.value().unwrap_or("").to_owned())
        });
        let c = ioxide::spawn(async move {
            c2.query("SELECT c")
                .await
                .map(|r| r.value().unwrap_or("").to_owned())
        });
        if user_cancel {
            ioxide::time::sleep(Duration::from_millis(100)).await;
            conn.cancel().await.unwrap();
        }
        (a.await, c.await)
    })
}

#[test]
fn a_command_hit_by_our_cancel_of_the_one_before_it_is_run_again() {
    let fake = collateral_script(b'I');
    let (a, c) = run_a_and_c(&fake, Some(Duration::from_millis(200)), false);
    assert!(a.unwrap_err().is_timeout());
    assert_eq!(c.unwrap(), "c", "C was retried transparently");
    let log = fake.connections();
    assert_eq!(log[0].received.len(), 3, "A, C, and C again");
}

#[test]
fn a_cancel_the_caller_sent_or_one_inside_a_transaction_is_not_retried() {
    // The caller's own cancel: what it hit is what it asked for.
    let fake = collateral_script(b'I');
    let (a, c) = run_a_and_c(&fake, None, true);
    assert_eq!(a.unwrap(), "a");
    assert_eq!(c.unwrap_err().sql_state(), Some("57014"));
    // Inside a transaction block the error aborted the block: running C again would not
    // run it in the same transaction.
    let fake = collateral_script(b'E');
    let (a, c) = run_a_and_c(&fake, Some(Duration::from_millis(200)), false);
    assert!(a.unwrap_err().is_timeout());
    assert_eq!(c.unwrap_err().sql_state(), Some("57014"));
    assert_eq!(
        fake.connections()[0].received.len(),
        2,
        "C was not sent again"
    );
}

// ---------------------------------------------------------------------------------------
// 10. A transaction dropped without commit returns its connection (no reconnect).
// ---------------------------------------------------------------------------------------

#[test]
fn a_thousand_transactions_dropped_without_commit_open_no_connection() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c).pool_size(2);
    run_within(Duration::from_secs(120), async move {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        pool.query("CREATE TABLE t (id int8)").await.unwrap();
        while pool.stats().open < 2 {
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        let opened = pool.stats().opened_total;
        for i in 0..1000i64 {
            let conn = pool.rent().await.unwrap();
            assert_eq!(conn.transaction_status(), TxnStatus::Idle, "rent {i}");
            let tx = conn.begin().await.unwrap();
            tx.execute("INSERT INTO t VALUES ($1)", &[&i])
                .await
                .unwrap();
            drop(tx); // as a `?` would
        }
        let s = pool.stats();
        assert_eq!(s.opened_total, opened, "{s:?}");
        assert_eq!(s.broken_total, 0, "{s:?}");
        let r = pool.query("SELECT count(*) FROM t").await.unwrap();
        assert_eq!(r.value(), Some("0"), "every transaction rolled back");
    });
    drop(c);
}

// ---------------------------------------------------------------------------------------
// 11. Smaller ones.
// ---------------------------------------------------------------------------------------

/// Polls the inner future inside `catch_unwind`, so a test can see a panic as a value.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

#[test]
fn a_panicking_row_callback_reaches_its_caller_and_the_connection_is_not_reused() {
    run_within(Duration::from_secs(20), async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let seen = Cell::new(0);
        let r = CatchUnwind(Box::pin(conn.query_rows(
            "SELECT n FROM generate_series(1, 5000) n",
            &[],
            |_row| {
                seen.set(seen.get() + 1);
                if seen.get() == 10 {
                    panic!("callback gave up");
                }
                Ok(())
            },
        )))
        .await;
        let payload = r.expect_err("the panic reaches the caller");
        let msg = payload.downcast_ref::<&str>().copied().unwrap_or_default();
        assert_eq!(msg, "callback gave up");
        assert!(conn.is_broken(), "a half-read reply must not be reused");
        let e = conn.query("SELECT 1").await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(!e.to_string().contains("driver bug"), "{e}");
        // A new connection is fine.
        let c2 = PgConnection::connect(&opts()).await.unwrap();
        assert_eq!(c2.query("SELECT 42").await.unwrap().value(), Some("42"));
    });
}

#[test]
fn a_rented_connection_dropped_outside_a_reactor_is_discarded_quietly() {
    // Clean, and inside a transaction (the path that used to spawn a ROLLBACK).
    for begin in [false, true] {
        let rented = ioxide::block_on(async move {
            let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
            let c = pool.rent().await.unwrap();
            if begin {
                c.query("BEGIN").await.unwrap();
            }
            c
        });
        drop(rented); // no reactor on this thread any more: must not panic
    }
}

// ---------------------------------------------------------------------------------------
// The public API: one current pool per reactor, further pools by name.
// ---------------------------------------------------------------------------------------

#[test]
fn a_second_pool_does_not_replace_the_current_one_and_named_pools_coexist() {
    run_within(Duration::from_secs(20), async {
        let r = Reactor::current();
        assert!(PgPool::try_current().is_none());
        let first = PgPool::start(&r, opts().pool_size(1)).unwrap();
        let e = PgPool::start(&r, opts().pool_size(1)).unwrap_err();
        assert!(e.is_misuse(), "{e}");
        assert!(e.to_string().contains("start_named"), "{e}");
        assert!(PgPool::current().same_as(&first));
        let reads = PgPool::start_named(&r, "reads", opts().pool_size(1)).unwrap();
        assert!(PgPool::start_named(&r, "reads", opts())
            .unwrap_err()
            .is_misuse());
        assert!(PgPool::named("reads").unwrap().same_as(&reads));
        assert!(PgPool::named("writes").is_none());
        assert!(!reads.same_as(&first));
        assert_eq!(reads.query("SELECT 42").await.unwrap().value(), Some("42"));
        assert_eq!(first.query("SELECT 42").await.unwrap().value(), Some("42"));
        // A closed pool gives up its place.
        first.close().await;
        assert!(PgPool::try_current().is_none());
        let second = PgPool::start(&r, opts().pool_size(1)).unwrap();
        assert!(PgPool::current().same_as(&second));
        reads.close().await;
        assert!(PgPool::named("reads").is_none());
    });
}
