//! The pool's connection settings against real clusters: the after-connect hook,
//! `max_lifetime` and `idle_timeout`. Tests that count server connections run their own
//! cluster.
#![allow(clippy::unwrap_used)]

mod common;

use common::{opts_for, run_within};
use ioxide::Reactor;
use ioxide_pg::{AfterConnectFuture, PgConnection, PgOptions, PgPool};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};
use testkit::Cluster;

/// A hook that sets `application_name` to `name` on every new connection.
fn set_app_name(name: &'static str) -> impl for<'c> Fn(&'c PgConnection) -> AfterConnectFuture<'c> {
    move |conn| {
        Box::pin(async move {
            conn.query(&format!("SET application_name = '{name}'"))
                .await?;
            Ok(())
        })
    }
}

/// A connection for watching the server, named `monitor` (not counted by `server_count`).
async fn monitor(c: &Cluster) -> PgConnection {
    PgConnection::connect(&opts_for(c).application_name("monitor"))
        .await
        .unwrap()
}

/// Client backends on the server other than the monitor's own.
async fn server_count(monitor: &PgConnection) -> i64 {
    monitor
        .query_params(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .scalar::<i64>()
        .unwrap()
}

/// Polls `f` every 10 ms until it holds; panics naming `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        ioxide::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the server's connection count until it is `n`; returns when that happened.
async fn wait_server_count(m: &PgConnection, n: i64, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let now = server_count(m).await;
        if now == n {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the server still holds {now} connections, expected {n}"
        );
        ioxide::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `application_name|search_path|pid` of the connection serving the query.
const WHO: &str = "SELECT current_setting('application_name') || '|' || \
                   current_setting('search_path') || '|' || pg_backend_pid()";

#[test]
fn the_hooks_settings_are_on_every_pooled_connection_shared_rented_and_replaced() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c).pool_size(3);
    run_within(Duration::from_secs(30), async move {
        let m = monitor(&c).await;
        let calls = Rc::new(Cell::new(0usize));
        let counted = calls.clone();
        let pool = PgPool::builder(o)
            .after_connect(move |conn| {
                counted.set(counted.get() + 1);
                Box::pin(async move {
                    conn.query("SET application_name = 'hooked'").await?;
                    conn.query("SET search_path = hooked_schema, public")
                        .await?;
                    Ok(())
                })
            })
            .start(&Reactor::current())
            .unwrap();
        // Issued before any connection is up: it waits for a connection that ran the hook.
        let first = pool.query(WHO).await.unwrap();
        assert!(
            first
                .value()
                .unwrap()
                .starts_with("hooked|hooked_schema, public|"),
            "{:?}",
            first.value()
        );
        wait_until(Duration::from_secs(5), "3 open", || pool.stats().open == 3).await;

        // The shared path: 200 concurrent queries spread over the 3 connections.
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let pool = pool.clone();
                ioxide::spawn(
                    async move { pool.query(WHO).await.unwrap().value().unwrap().to_owned() },
                )
            })
            .collect();
        let mut pids = HashSet::new();
        for t in tasks {
            let who = t.await;
            let (settings, pid) = who.rsplit_once('|').unwrap();
            assert_eq!(settings, "hooked|hooked_schema, public");
            pids.insert(pid.to_owned());
        }
        assert_eq!(pids.len(), 3, "every connection served: {pids:?}");

        // Rentals: each of the three connections, rented at once.
        let rented = [
            pool.rent().await.unwrap(),
            pool.rent().await.unwrap(),
            pool.rent().await.unwrap(),
        ];
        let mut rented_pids = HashSet::new();
        for r in &rented {
            let v = r.query("SHOW application_name").await.unwrap();
            assert_eq!(v.value(), Some("hooked"));
            let v = r.query("SHOW search_path").await.unwrap();
            assert_eq!(v.value(), Some("hooked_schema, public"));
            rented_pids.insert(r.backend_pid().unwrap().to_string());
        }
        assert_eq!(rented_pids, pids);
        drop(rented);
        // The server sees the hook's setting on all three sessions.
        let named = m
            .query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hooked'")
            .await
            .unwrap();
        assert_eq!(named.value(), Some("3"));
        assert_eq!(calls.get(), 3);

        // A replacement (after its backend was terminated) runs the hook too.
        let victim = pids.iter().next().unwrap().clone();
        m.query(&format!("SELECT pg_terminate_backend({victim})"))
            .await
            .unwrap();
        wait_until(Duration::from_secs(5), "the replacement", || {
            let s = pool.stats();
            s.open == 3 && s.opened_total == 4
        })
        .await;
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let pool = pool.clone();
                ioxide::spawn(
                    async move { pool.query(WHO).await.unwrap().value().unwrap().to_owned() },
                )
            })
            .collect();
        let mut now_pids = HashSet::new();
        for t in tasks {
            let who = t.await;
            let (settings, pid) = who.rsplit_once('|').unwrap();
            assert_eq!(settings, "hooked|hooked_schema, public");
            now_pids.insert(pid.to_owned());
        }
        assert_eq!(now_pids.len(), 3);
        assert!(!now_pids.contains(&victim));
        assert_eq!(now_pids.difference(&pids).count(), 1);
        assert_eq!(calls.get(), 4);
        let s = pool.stats();
        assert_eq!((s.hook_failures_total, s.broken_total), (0, 1));
        pool.close().await;
    });
}

#[test]
fn a_hook_that_fails_three_times_costs_three_discarded_connections_and_the_pool_serves() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c).pool_size(2);
    run_within(Duration::from_secs(30), async move {
        let m = monitor(&c).await;
        let calls = Rc::new(Cell::new(0usize));
        let counted = calls.clone();
        let pool = PgPool::builder(o)
            .after_connect(move |conn| {
                let n = counted.get();
                counted.set(n + 1);
                Box::pin(async move {
                    if n < 3 {
                        // A real server error: 22012.
                        conn.query("SELECT 1/0").await?;
                    }
                    conn.query("SET application_name = 'hooked'").await?;
                    Ok(())
                })
            })
            .start(&Reactor::current())
            .unwrap();
        let started = Instant::now();
        let r = pool
            .query("SELECT current_setting('application_name')")
            .await
            .unwrap();
        assert_eq!(r.value(), Some("hooked"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        wait_until(Duration::from_secs(5), "2 open", || pool.stats().open == 2).await;
        let s = pool.stats();
        assert_eq!(s.hook_failures_total, 3);
        assert_eq!(
            s.connect_failures_total, 3,
            "a hook failure is a failed connect"
        );
        assert_eq!((s.opened_total, s.broken_total), (2, 0));
        assert_eq!(calls.get(), 5);
        // The three discarded connections were closed: the server holds the pool's two.
        wait_server_count(&m, 2, Duration::from_secs(5)).await;
        pool.close().await;
    });
}

#[test]
fn a_panicking_or_hanging_hook_is_a_counted_failure_bounded_by_connect_timeout() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c)
        .pool_size(1)
        .connect_timeout(Duration::from_millis(400));
    run_within(Duration::from_secs(30), async move {
        let m = monitor(&c).await;
        let calls = Rc::new(Cell::new(0usize));
        let counted = calls.clone();
        let pool = PgPool::builder(o)
            .after_connect(move |conn| {
                let n = counted.get();
                counted.set(n + 1);
                if n == 0 {
                    panic!("hook panics before its future");
                }
                Box::pin(async move {
                    match n {
                        1 => panic!("hook panics inside its future"),
                        2 => std::future::pending::<()>().await,
                        _ => {}
                    }
                    conn.query("SET application_name = 'hooked'").await?;
                    Ok(())
                })
            })
            .start(&Reactor::current())
            .unwrap();
        let started = Instant::now();
        let r = pool
            .query("SELECT current_setting('application_name')")
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.value(), Some("hooked"));
        // The hanging hook costs its connect_timeout (400 ms), no more than a few times it.
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let s = pool.stats();
        assert_eq!((s.hook_failures_total, s.opened_total), (3, 1));
        assert_eq!(calls.get(), 4);
        wait_server_count(&m, 1, Duration::from_secs(5)).await;
        pool.close().await;
    });
}

#[test]
fn a_hook_that_always_fails_fails_requests_at_acquire_timeout_naming_the_hook() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c)
        .pool_size(2)
        .acquire_timeout(Duration::from_millis(500));
    run_within(Duration::from_secs(30), async move {
        let m = monitor(&c).await;
        let pool = PgPool::builder(o)
            .after_connect(|conn| {
                Box::pin(async move {
                    conn.query("SELECT 1/0").await?;
                    Ok(())
                })
            })
            .start(&Reactor::current())
            .unwrap();
        let started = Instant::now();
        let e = pool.query("SELECT 1").await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            e.timeout_kind(),
            Some(ioxide_pg::TimeoutKind::Acquire),
            "{e}"
        );
        assert!(!e.was_sent());
        let msg = e.to_string();
        assert!(msg.contains("after_connect hook failed"), "{msg}");
        assert!(msg.contains("division by zero"), "{msg}");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // Failing for acquire_timeout: later requests fail at their own connect's failure.
        let started = Instant::now();
        let e = pool.rent().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
        assert!(e.to_string().contains("after_connect hook failed"), "{e}");
        let s = pool.stats();
        assert!(s.hook_failures_total >= 2, "{s:?}");
        assert_eq!(s.hook_failures_total, s.connect_failures_total);
        assert_eq!((s.open, s.opened_total), (0, 0));
        // Every connection the hook failed was closed.
        pool.close().await;
        wait_server_count(&m, 0, Duration::from_secs(5)).await;
    });
}

#[test]
fn max_lifetime_replaces_connections_one_at_a_time_under_load_and_no_query_fails() {
    let c = Cluster::new().unwrap();
    let size = 3;
    let o = opts_for(&c)
        .pool_size(size)
        .max_lifetime(Duration::from_millis(300));
    run_within(Duration::from_secs(60), async move {
        let m = Rc::new(monitor(&c).await);
        let pool = PgPool::builder(o)
            .after_connect(set_app_name("aged"))
            .start(&Reactor::current())
            .unwrap();
        wait_until(Duration::from_secs(5), "3 open", || {
            pool.stats().open == size
        })
        .await;
        let until = Instant::now() + Duration::from_secs(3);

        // The server's connection count, every 10 ms.
        let watch = {
            let m = m.clone();
            ioxide::spawn(async move {
                let (mut max, mut samples) = (0, 0);
                while Instant::now() < until {
                    max = max.max(server_count(&m).await);
                    samples += 1;
                    ioxide::time::sleep(Duration::from_millis(10)).await;
                }
                (max, samples)
            })
        };
        // The pool's counters, every millisecond: when retirements happen, connects at once.
        let sampler = {
            let pool = pool.clone();
            ioxide::spawn(async move {
                let (mut seen, mut steps, mut max_connecting) = (0, Vec::new(), 0);
                while Instant::now() < until {
                    let s = pool.stats();
                    if s.retired_total > seen {
                        steps.push((Instant::now(), s.retired_total - seen));
                        seen = s.retired_total;
                    }
                    max_connecting = max_connecting.max(s.connecting);
                    ioxide::time::sleep(Duration::from_millis(1)).await;
                }
                (steps, max_connecting)
            })
        };
        let pids = Rc::new(RefCell::new(HashSet::new()));
        let failures = Rc::new(RefCell::new(Vec::new()));
        let ok = Rc::new(Cell::new(0u64));
        let load: Vec<_> = (0..6)
            .map(|_| {
                let (pool, pids, failures, ok) =
                    (pool.clone(), pids.clone(), failures.clone(), ok.clone());
                ioxide::spawn(async move {
                    while Instant::now() < until {
                        match pool.query(WHO).await {
                            Ok(r) => {
                                let who = r.value().unwrap();
                                let (settings, pid) = who.rsplit_once('|').unwrap();
                                assert!(settings.starts_with("aged|"), "{who}");
                                pids.borrow_mut().insert(pid.to_owned());
                                ok.set(ok.get() + 1);
                            }
                            Err(e) => failures.borrow_mut().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        for t in load {
            t.await;
        }
        let (max_server, samples) = watch.await;
        let (steps, max_connecting) = sampler.await;
        let s = pool.stats();
        let pids = pids.borrow().len();
        eprintln!(
            "lifetime 300 ms, 3 s: {} queries, {} backends seen, {} retired, {} opened, \
             server max {max_server} ({samples} samples), {} retirement steps, {max_connecting} \
             connecting at most",
            ok.get(),
            pids,
            s.retired_total,
            s.opened_total,
            steps.len()
        );
        assert!(failures.borrow().is_empty(), "{:?}", failures.borrow());
        assert!(ok.get() > 100, "{}", ok.get());
        // About 3 s / 0.3 s × 3 = 30 retirements; ask for a fifth of that.
        assert!(s.retired_total >= 6, "{s:?}");
        assert!(pids >= size + 6, "{pids} backends");
        // Each retirement followed the opening of its replacement (the last may be draining).
        let replacements = s.opened_total - size as u64;
        assert!(
            replacements == s.retired_total || replacements == s.retired_total + 1,
            "{s:?}"
        );
        assert_eq!((s.broken_total, s.hook_failures_total), (0, 0));
        assert!(samples > 50, "{samples}");
        assert!(
            max_server <= size as i64 + 1,
            "the server held {max_server}"
        );
        assert!(max_connecting <= 1, "{max_connecting} connects at once");
        // Spread, not all at once: nearly every retirement was seen on its own.
        let single = steps.iter().filter(|(_, n)| *n == 1).count() as u64;
        assert!(single * 2 >= s.retired_total, "{steps:?}");
        let first = steps.first().unwrap().0;
        let last = steps.last().unwrap().0;
        assert!(last - first > Duration::from_secs(1), "{:?}", last - first);
        pool.close().await;
    });
}

#[test]
fn a_rented_connection_outlives_its_lifetime_and_is_retired_after_it_returns() {
    let o = common::opts()
        .pool_size(1)
        .max_lifetime(Duration::from_millis(200));
    run_within(Duration::from_secs(30), async move {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        pool.query("SELECT 1").await.unwrap();
        let rented = pool.rent().await.unwrap();
        let pid = rented.backend_pid().unwrap();
        ioxide::time::sleep(Duration::from_millis(700)).await;
        let r = rented.query("SELECT pg_backend_pid()").await.unwrap();
        assert_eq!(r.value(), Some(pid.to_string().as_str()));
        assert_eq!(pool.stats().retired_total, 0);
        drop(rented);
        let back = Instant::now();
        wait_until(Duration::from_secs(3), "the retirement", || {
            pool.stats().retired_total == 1
        })
        .await;
        // The next housekeeping pass (at most 250 ms) and one connect.
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "{:?}",
            back.elapsed()
        );
        let r = pool.query("SELECT pg_backend_pid()").await.unwrap();
        assert_ne!(r.value(), Some(pid.to_string().as_str()));
        let s = pool.stats();
        assert_eq!((s.open, s.broken_total), (1, 0));
        pool.close().await;
    });
}

#[test]
fn idle_timeout_closes_idle_connections_and_demand_reopens_them() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c)
        .pool_size(3)
        .pipeline_depth(1)
        .max_lifetime(Duration::ZERO)
        .idle_timeout(Duration::from_millis(500));
    run_within(Duration::from_secs(30), async move {
        let m = monitor(&c).await;
        // No connection can have been idle since before the pool started; all three were
        // open by `warm`.
        let start = Instant::now();
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        wait_until(Duration::from_secs(5), "3 open", || pool.stats().open == 3).await;
        let warm = Instant::now();
        assert_eq!(server_count(&m).await, 3);
        ioxide::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(server_count(&m).await, 3, "closed before idle_timeout");
        let gone = wait_server_count(&m, 0, Duration::from_secs(3)).await;
        assert!(
            gone - start >= Duration::from_millis(500),
            "{:?}",
            gone - start
        );
        // idle_timeout + the 250 ms housekeeping period + polling, with room for a busy machine.
        assert!(
            gone - warm < Duration::from_millis(1500),
            "{:?}",
            gone - warm
        );
        let s = pool.stats();
        assert_eq!((s.open, s.idle_closed_total, s.broken_total), (0, 3, 0));

        // The next query reconnects — one connection for one request.
        let started = Instant::now();
        assert_eq!(pool.query("SELECT 1").await.unwrap().value(), Some("1"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let s = pool.stats();
        assert_eq!((s.open, s.opened_total), (1, 4));

        // Three at once at depth 1: the pool grows back to three.
        let started = Instant::now();
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                ioxide::spawn(async move {
                    let r = pool
                        .query("SELECT pg_backend_pid() FROM pg_sleep(0.3)")
                        .await
                        .unwrap();
                    r.value().unwrap().to_owned()
                })
            })
            .collect();
        let mut pids = HashSet::new();
        for t in tasks {
            pids.insert(t.await);
        }
        let took = started.elapsed();
        // Three backends served them at once (serialized on one connection: one pid, 0.9 s).
        assert_eq!(pids.len(), 3);
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(pool.stats().open, 3);
        // And idle again, closed again.
        wait_server_count(&m, 0, Duration::from_secs(3)).await;
        assert_eq!(pool.stats().idle_closed_total, 6);
        pool.close().await;
    });
}

#[test]
fn a_connection_in_regular_use_is_never_closed_as_idle() {
    let o = common::opts()
        .pool_size(2)
        .idle_timeout(Duration::from_millis(400));
    run_within(Duration::from_secs(30), async move {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        wait_until(Duration::from_secs(5), "2 open", || pool.stats().open == 2).await;
        // One query every 100 ms for 1.6 s: routing takes the first idle connection, so one
        // connection carries them all and the other idles out.
        let mut pids = HashSet::new();
        let until = Instant::now() + Duration::from_millis(1600);
        while Instant::now() < until {
            let r = pool.query("SELECT pg_backend_pid()").await.unwrap();
            pids.insert(r.value().unwrap().to_owned());
            ioxide::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(pids.len(), 1, "the busy connection was closed: {pids:?}");
        let s = pool.stats();
        assert_eq!((s.open, s.idle_closed_total, s.opened_total), (1, 1, 2));
        pool.close().await;
    });
}

#[test]
fn idle_timeout_keeps_min_connections_open() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c)
        .pool_size(3)
        .min_connections(1)
        .idle_timeout(Duration::from_millis(300));
    run_within(Duration::from_secs(30), async move {
        let m = monitor(&c).await;
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        wait_until(Duration::from_secs(5), "3 open", || pool.stats().open == 3).await;
        wait_server_count(&m, 1, Duration::from_secs(3)).await;
        ioxide::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(server_count(&m).await, 1, "below min_connections");
        let s = pool.stats();
        assert_eq!((s.open, s.idle_closed_total), (1, 2));
        // The one left serves, without a connect.
        pool.query("SELECT 1").await.unwrap();
        assert_eq!(pool.stats().opened_total, 3);
        pool.close().await;
    });
}

#[test]
fn lifetime_and_idle_keys_parse_from_urls_and_conninfo_and_default_sanely() {
    let d = PgOptions::new();
    assert_eq!(d.get_max_lifetime(), Some(Duration::from_secs(1800)));
    assert_eq!((d.get_idle_timeout(), d.get_min_connections()), (None, 0));

    let u = PgOptions::from_url(
        "postgres://u@127.0.0.1/db?max_lifetime=0.3&idle_timeout=10&min_connections=2",
    )
    .unwrap();
    assert_eq!(u.get_max_lifetime(), Some(Duration::from_millis(300)));
    assert_eq!(u.get_idle_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(u.get_min_connections(), 2);

    let k: PgOptions = "host=127.0.0.1 max_lifetime=0 idle_timeout=0"
        .parse()
        .unwrap();
    assert_eq!((k.get_max_lifetime(), k.get_idle_timeout()), (None, None));

    let e = PgOptions::new().set("idle_timeout", "soon").unwrap_err();
    assert_eq!(e.config_field(), Some("idle_timeout"));
    let e = PgOptions::from_conninfo("host=127.0.0.1 pool_size=2 min_connections=3").unwrap_err();
    assert_eq!(e.config_field(), Some("min_connections"));
    assert!(e.to_string().contains("pool_size"), "{e}");
}
