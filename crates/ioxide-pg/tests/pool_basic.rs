//! The pool against real clusters: warmup, overlap, rotation, FIFO, transactions, stats.
#![allow(clippy::unwrap_used)]

mod common;

use common::{opts, opts_for};
use ioxide::Reactor;
use ioxide_pg::{PgPool, TxnStatus};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use testkit::Cluster;

#[test]
fn first_query_during_warmup_succeeds_and_each_reactor_opens_pool_size() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c).pool_size(3);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let o = o.clone();
            let tx = tx.clone();
            let done_rx = done_rx.clone();
            std::thread::spawn(move || {
                ioxide::block_on(async move {
                    let pool = PgPool::start(&Reactor::current(), o).unwrap();
                    // Issued before any connection is up: it waits in the queue.
                    let r = pool.query("SELECT 42").await.unwrap();
                    assert_eq!(r.value(), Some("42"));
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while pool.stats().open < 3 {
                        assert!(Instant::now() < deadline, "pool did not warm up");
                        ioxide::time::sleep(Duration::from_millis(10)).await;
                    }
                    tx.send(()).unwrap();
                    // Keep serving until the main thread has counted.
                    while done_rx.lock().unwrap().try_recv().is_err() {
                        ioxide::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
        })
        .collect();
    rx.recv().unwrap();
    rx.recv().unwrap();
    assert_eq!(
        c.backend_count_for(c.user()).unwrap(),
        6,
        "pool_size x reactors"
    );
    drop(tx);
    done_tx.send(()).unwrap();
    done_tx.send(()).unwrap();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn eight_concurrent_100ms_queries_overlap_on_a_pool_of_eight() {
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(8)).unwrap();
        pool.query("SELECT 1").await.unwrap();
        while pool.stats().open < 8 {
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                ioxide::spawn(
                    async move { pool.query("SELECT 42 FROM pg_sleep(0.1)").await.unwrap() },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.value(), Some("42"));
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "8 x 100 ms took {took:?}"
        );
    });
}

#[test]
fn a_server_error_leaves_the_connection_in_rotation() {
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        let pid = pool
            .query("SELECT pg_backend_pid()")
            .await
            .unwrap()
            .value()
            .unwrap()
            .to_owned();
        let e = pool
            .query("SELECT * FROM this_table_does_not_exist")
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("42P01"));
        let again = pool.query("SELECT pg_backend_pid()").await.unwrap();
        assert_eq!(
            again.value(),
            Some(pid.as_str()),
            "the same backend serves the next query"
        );
        assert_eq!(pool.stats().broken_total, 0);
    });
}

#[test]
fn exhaustion_queues_fifo_and_every_waiter_completes() {
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        let held = pool.rent().await.unwrap();
        let order = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let pool = pool.clone();
            let order = order.clone();
            tasks.push(ioxide::spawn(async move {
                let c = pool.rent().await.unwrap();
                order.borrow_mut().push(i);
                c.query("SELECT 1").await.unwrap();
            }));
            ioxide::future::yield_now().await;
        }
        ioxide::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.stats().waiting, 5);
        drop(held);
        for t in tasks {
            t.await;
        }
        assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4]);
        // Many more queries than capacity, all complete.
        let tasks: Vec<_> = (0..100)
            .map(|i: i64| {
                let pool = pool.clone();
                ioxide::spawn(async move {
                    pool.query_params("SELECT $1::int8", &[&i])
                        .await
                        .unwrap()
                        .scalar::<i64>()
                        .unwrap()
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await, i as i64);
        }
        assert_eq!(pool.stats().waiting, 0);
    });
}

#[test]
fn timeouts_too_long_to_represent_mean_never_not_a_panic() {
    ioxide::block_on(async {
        // From a connection string as well as from code: 1e19 s is past i64 seconds.
        let o = opts()
            .pool_size(1)
            .set("connect_timeout", "1e19")
            .unwrap()
            .set("command_timeout", "1e19")
            .unwrap()
            .acquire_timeout(Duration::MAX);
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        let held = pool.rent().await.unwrap();
        // This request has to wait: its deadline is computed from acquire_timeout.
        let waiter = {
            let pool = pool.clone();
            ioxide::spawn(async move {
                pool.query("SELECT 7")
                    .await
                    .map(|r| r.value().map(str::to_owned))
            })
        };
        ioxide::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.stats().waiting, 1);
        drop(held);
        assert_eq!(waiter.await.unwrap().as_deref(), Some("7"));
        let conn = ioxide_pg::PgConnection::connect(
            &opts()
                .connect_timeout(Duration::MAX)
                .command_timeout(Duration::MAX),
        )
        .await
        .unwrap();
        assert_eq!(conn.query("SELECT 8").await.unwrap().value(), Some("8"));
    });
}

#[test]
fn pipelined_pool_routes_past_a_slow_query_to_an_idle_connection() {
    ioxide::block_on(async {
        let pool =
            PgPool::start(&Reactor::current(), opts().pool_size(2).pipeline_depth(8)).unwrap();
        while pool.stats().open < 2 {
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        let slow = {
            let pool = pool.clone();
            ioxide::spawn(async move { pool.query("SELECT pg_sleep(0.5)").await.unwrap() })
        };
        ioxide::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        for _ in 0..20 {
            pool.query("SELECT 1").await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "fast queries queued behind the slow one"
        );
        slow.await;
    });
}

#[test]
fn a_guard_dropped_inside_a_transaction_hands_over_a_clean_connection() {
    let c = testkit::shared_cluster();
    c.psql("CREATE TABLE IF NOT EXISTS pool_tx (v int)")
        .unwrap();
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        {
            let conn = pool.rent().await.unwrap();
            conn.query("BEGIN").await.unwrap();
            conn.query("INSERT INTO pool_tx VALUES (424242)")
                .await
                .unwrap();
            assert_eq!(conn.transaction_status(), TxnStatus::InTransaction);
        } // dropped without COMMIT
        let conn = pool.rent().await.unwrap();
        assert_eq!(conn.transaction_status(), TxnStatus::Idle);
        let r = conn
            .query("SELECT count(*) FROM pool_tx WHERE v = 424242")
            .await
            .unwrap();
        assert_eq!(r.value(), Some("0"), "the uncommitted insert leaked");
        // The helper: rollback on drop, commit when asked.
        {
            let tx = conn.begin().await.unwrap();
            tx.query("INSERT INTO pool_tx VALUES (434343)")
                .await
                .unwrap();
        }
        assert_eq!(
            conn.query("SELECT count(*) FROM pool_tx WHERE v = 434343")
                .await
                .unwrap()
                .value(),
            Some("0")
        );
        let tx = conn.begin().await.unwrap();
        tx.query("INSERT INTO pool_tx VALUES (444444)")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            conn.query("SELECT count(*) FROM pool_tx WHERE v = 444444")
                .await
                .unwrap()
                .value(),
            Some("1")
        );
        assert_eq!(conn.transaction_status(), TxnStatus::Idle);
    });
}

#[test]
fn a_waiter_failed_in_a_sweep_can_query_again_at_once() {
    ioxide::block_on(async {
        let pool = PgPool::start(
            &Reactor::current(),
            opts()
                .pool_size(1)
                .acquire_timeout(Duration::from_millis(300)),
        )
        .unwrap();
        let held = pool.rent().await.unwrap();
        let p2 = pool.clone();
        let waiter = ioxide::spawn(async move {
            let e = p2.query("SELECT 1").await.unwrap_err();
            assert!(e.is_timeout() && !e.was_sent(), "{e}");
            // Re-entrant: straight back into the pool from the failure path.
            p2.query("SELECT 2")
                .await
                .unwrap()
                .value()
                .map(str::to_owned)
        });
        // The first request fails at 300 ms; its re-entry waits from then and is served when
        // the guard goes at 450 ms, well inside its own 300 ms.
        ioxide::time::sleep(Duration::from_millis(450)).await;
        drop(held);
        assert_eq!(waiter.await.as_deref(), Some("2"));
        assert!(pool.stats().timeouts_total >= 1);
    });
}

#[test]
fn stats_count_open_idle_and_in_flight() {
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(2)).unwrap();
        pool.query("SELECT 1").await.unwrap();
        while pool.stats().open < 2 {
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        let s = pool.stats();
        assert_eq!((s.open, s.idle, s.in_flight, s.waiting), (2, 2, 0, 0));
        assert_eq!(s.opened_total, 2);
        let r = pool.rent().await.unwrap();
        let s = pool.stats();
        assert_eq!((s.idle, s.in_flight), (1, 1));
        drop(r);
        assert_eq!(pool.stats().idle, 2);
    });
}

#[test]
fn a_dropped_query_keeps_its_connection_busy_until_drained() {
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(2)).unwrap();
        while pool.stats().open < 2 {
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        // Abandon a slow query: its connection stays busy until the reply is drained.
        let r = ioxide::time::timeout(
            Duration::from_millis(50),
            pool.query("SELECT pg_sleep(0.6)"),
        )
        .await;
        assert!(r.is_err());
        let started = Instant::now();
        for _ in 0..5 {
            pool.query("SELECT 1").await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "queued behind the abandoned query: {:?}",
            started.elapsed()
        );
        // With every connection busy draining, a request waits and is dispatched the moment
        // the drain finishes.
        let p1 = PgPool::start_named(&Reactor::current(), "p1", opts().pool_size(1)).unwrap();
        p1.query("SELECT 1").await.unwrap();
        let r = ioxide::time::timeout(Duration::from_millis(50), p1.query("SELECT pg_sleep(0.4)"))
            .await;
        assert!(r.is_err());
        let started = Instant::now();
        p1.query("SELECT 2").await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(600),
            "{took:?}"
        );
    });
}

#[test]
fn a_request_made_after_the_server_is_back_is_not_failed_by_an_older_probe() {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    use testkit::{backend, FakeServer, Step};
    // 0: down (every connect refused at once with 57P03); 1: hand out one slow probe, which
    // fails after 400 ms, and switch to 2; 2: up.
    let phase = Arc::new(AtomicU8::new(0));
    let p = phase.clone();
    let fake = FakeServer::start_with(move |_| {
        let starting =
            backend::error_response("FATAL", "57P03", "the database system is starting up");
        match p.load(Ordering::SeqCst) {
            0 => vec![Step::Send(starting), Step::Close],
            1 => {
                p.store(2, Ordering::SeqCst);
                vec![
                    Step::Stall(Duration::from_millis(400)),
                    Step::Send(starting),
                    Step::Close,
                ]
            }
            _ => serving_fake_script(),
        }
    })
    .unwrap();
    let o = ioxide_pg::PgOptions::new()
        .host("127.0.0.1")
        .port(fake.port())
        .user("u")
        .pool_size(1)
        // The fake speaks only the simple protocol: no auto-prepare of the repeated text.
        .statement_cache_capacity(0)
        .acquire_timeout(Duration::from_millis(300));
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        // Down for longer than acquire_timeout: requests now fail fast.
        ioxide::time::sleep(Duration::from_millis(600)).await;
        let e = pool.query("SELECT 1").await.unwrap_err();
        assert!(
            e.to_string().contains("57P03") || e.to_string().contains("starting up"),
            "{e}"
        );
        // An early request starts a probe that will fail slowly...
        phase.store(1, Ordering::SeqCst);
        let early = {
            let pool = pool.clone();
            ioxide::spawn(async move { pool.query("SELECT 1").await.map(|_| ()) })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while phase.load(Ordering::SeqCst) != 2 {
            assert!(Instant::now() < deadline, "the pool never probed");
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        // ...and the server is back: a request made now must be served, not failed by the
        // verdict of the probe that began before it.
        let started = Instant::now();
        let r = pool.query("SELECT 1").await;
        let took = started.elapsed();
        assert_eq!(
            r.map(|r| r.value().map(str::to_owned)).unwrap(),
            Some("ok".to_string())
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
        // The early request was waiting when that probe began: failing it fast is correct.
        let _ = early.await;
        // Once the overtaken probe has failed too (400 ms after it began), the pool must not
        // believe the database is down: an exhausted pool's timeout is plain exhaustion, with
        // no stale connect error attached.
        ioxide::time::sleep(Duration::from_millis(500)).await;
        let held = pool.rent().await.unwrap();
        let e = pool.query("SELECT 1").await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        let shown = format!("{e} {:?}", std::error::Error::source(&e));
        assert!(!shown.contains("57P03"), "a stale connect error: {shown}");
        drop(held);
        assert_eq!(pool.stats().open, 1);
    });
}

#[test]
fn a_guard_dropped_mid_command_is_drained_before_reuse_and_pooled_streaming_works() {
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        // The pool is the reactor's service.
        assert!(PgPool::current().same_as(&pool));
        let first_pid = {
            let c = pool.rent().await.unwrap();
            c.backend_pid().unwrap()
        };
        // Drop the guard while a command is in flight: that connection's next reply belongs
        // to a caller who is gone, so nobody gets the connection until it was drained; then
        // it returns (no reconnect).
        {
            let c = pool.rent().await.unwrap();
            let mut slow = std::pin::pin!(c.query("SELECT pg_sleep(0.2)"));
            let polled = std::future::poll_fn(|cx| {
                let _ = std::future::Future::poll(slow.as_mut(), cx);
                std::task::Poll::Ready(())
            });
            polled.await;
            assert_eq!(c.in_flight(), 1);
        }
        let s = pool.stats();
        assert_eq!(s.idle, 0, "the busy connection was put back: {s:?}");
        // The next request waits for the drain, is served by the same backend, and nothing
        // stale leaks into it.
        let t = Instant::now();
        let r = pool.query("SELECT pg_backend_pid()").await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        let pid: i32 = r.value().unwrap().parse().unwrap();
        assert_eq!(pid, first_pid);
        assert_eq!(pool.stats().opened_total, 1, "{:?}", pool.stats());
        // Streaming through the pool.
        let mut sum = 0i64;
        let n = pool
            .query_rows(
                "SELECT n::int8 FROM generate_series(1, 1000) n",
                &[],
                |row| {
                    sum += row.get::<i64>(0)?;
                    Ok(())
                },
            )
            .await
            .unwrap();
        assert_eq!((n, sum), (1000, 500_500));
        assert_eq!(pool.stats().open, 1);
    });
}

#[test]
fn replacements_after_every_connection_broke_start_with_one_probe() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use testkit::{backend, FakeServer, Step};
    // The pool's four connections are all told goodbye (57P01) together, as by a restart;
    // the server then refuses (57P03) until `up`. A pool that reconnected everything at once
    // would send four connects at the restarting server; a coalesced one sends one probe
    // and waits for its verdict.
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    let fake = FakeServer::start_with(move |i| {
        if i < 4 {
            vec![
                Step::Send(backend::handshake_ok()),
                Step::Stall(Duration::from_millis(300)),
                Step::Send(backend::error_response(
                    "FATAL",
                    "57P01",
                    "terminating connection due to administrator command",
                )),
                Step::Close,
            ]
        } else if u.load(Ordering::SeqCst) {
            serving_fake_script()
        } else {
            // A slow refusal (100 ms): while it is pending, a coalesced pool has exactly one
            // connect in flight and starts no other.
            vec![
                Step::Stall(Duration::from_millis(100)),
                Step::Send(backend::error_response(
                    "FATAL",
                    "57P03",
                    "the database system is starting up",
                )),
                Step::Close,
            ]
        }
    })
    .unwrap();
    let o = ioxide_pg::PgOptions::new()
        .host("127.0.0.1")
        .port(fake.port())
        .user("u")
        .pool_size(4);
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.stats().open < 4 {
            assert!(Instant::now() < deadline, "the pool never opened 4");
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(fake.accepted(), 4);
        // All four break ~300 ms after they opened; look 150 ms after that.
        while pool.stats().broken_total < 4 {
            assert!(Instant::now() < deadline, "the goodbyes were not noticed");
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        ioxide::time::sleep(Duration::from_millis(60)).await;
        let attempts = fake.accepted() - 4;
        assert_eq!(
            attempts, 1,
            "connects at a restarting server in the 60 ms after losing every connection"
        );
        // Back up: the pool refills to its size, and serves.
        up.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(3);
        while pool.stats().open < 4 {
            assert!(
                Instant::now() < deadline,
                "the pool did not refill: {:?}",
                pool.stats()
            );
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.query("SELECT 1").await.unwrap().value(), Some("ok"));
    });
}

/// A fake server's connection that authenticates and answers four simple queries with `ok`.
fn serving_fake_script() -> Vec<testkit::Step> {
    use testkit::{backend, Step};
    let mut steps = vec![Step::Send(backend::handshake_ok())];
    for _ in 0..4 {
        steps.push(Step::ReadMessage);
        steps.push(Step::Send(backend::simple_query_result("v", "ok")));
    }
    steps
}
