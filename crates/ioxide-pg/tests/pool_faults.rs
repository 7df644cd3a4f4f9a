//! The failure contract under load: restarts, terminated backends, freezes, a dark port, a
//! single stalled backend. Each test runs its own cluster.
#![allow(clippy::unwrap_used)]

mod common;

use common::{established_to, opts_for};
use ioxide::Reactor;
use ioxide_pg::PgPool;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::Cluster;

#[derive(Default)]
struct Load {
    ok: u64,
    failed: Vec<(Instant, String)>,
    first_ok_after: Option<Instant>,
    max_wait: Duration,
}

/// `concurrency` closed loops of `SELECT 1` until `until`; every future resolves.
async fn run_load(
    pool: Rc<PgPool>,
    concurrency: usize,
    until: Instant,
    mark: Arc<Mutex<Option<Instant>>>,
) -> Load {
    let load = Rc::new(RefCell::new(Load::default()));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let pool = pool.clone();
            let load = load.clone();
            let mark = mark.clone();
            ioxide::spawn(async move {
                while Instant::now() < until {
                    let started = Instant::now();
                    let r = pool.query("SELECT 1").await;
                    let waited = started.elapsed();
                    let failed = {
                        let mut l = load.borrow_mut();
                        l.max_wait = l.max_wait.max(waited);
                        match r {
                            Ok(v) => {
                                assert_eq!(v.value(), Some("1"));
                                l.ok += 1;
                                let m = *mark.lock().unwrap();
                                if let Some(m) = m {
                                    if started >= m && l.first_ok_after.is_none() {
                                        l.first_ok_after = Some(Instant::now());
                                    }
                                }
                                false
                            }
                            Err(e) => {
                                l.failed.push((Instant::now(), e.to_string()));
                                true
                            }
                        }
                    };
                    if failed {
                        // Do not spin on a dead pool.
                        ioxide::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(load).ok().unwrap().into_inner()
}

async fn wait_refilled(pool: &PgPool, size: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().open < size {
        assert!(
            Instant::now() < deadline,
            "pool did not refill: {:?}",
            pool.stats()
        );
        ioxide::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs load for `secs` while `fault` runs on another thread after 1 s; `fault` returns
/// when the server accepts connections again.
fn under_load(c: &Cluster, size: usize, fault: impl FnOnce(&Cluster) + Send) -> (Load, Instant) {
    let mark = Arc::new(Mutex::new(None));
    let back = Arc::new(Mutex::new(None));
    let o = opts_for(c)
        .pool_size(size)
        .command_timeout(Duration::from_secs(5));
    std::thread::scope(|s| {
        let m = mark.clone();
        let b = back.clone();
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(1000));
            fault(c);
            let now = Instant::now();
            *b.lock().unwrap() = Some(now);
            *m.lock().unwrap() = Some(now);
        });
        let load = ioxide::block_on(async move {
            let pool = PgPool::start(&Reactor::current(), o).unwrap();
            let until = Instant::now() + Duration::from_secs(4);
            let load = run_load(pool.clone(), 64, until, mark).await;
            wait_refilled(&pool, size).await;
            load
        });
        let at = back.lock().unwrap().unwrap();
        (load, at)
    })
}

fn assert_contract(load: &Load, back: Instant, size: usize, what: &str) {
    // Failures are at most the queries in flight when the fault hit: pool_size × depth.
    let size = size * ioxide_pg::PgOptions::new().get_pipeline_depth();
    assert!(
        load.failed.len() <= size,
        "{what}: {} failures > {size} in flight: {:?}",
        load.failed.len(),
        load.failed
    );
    assert!(load.ok > 100, "{what}: only {} successes", load.ok);
    let healed = load.first_ok_after.expect("no success after the fault");
    assert!(
        healed.duration_since(back) < Duration::from_secs(1),
        "{what}: healed {:?} after the server was back",
        healed.duration_since(back)
    );
}

#[test]
fn restart_under_load_fails_at_most_the_in_flight_queries_and_heals_within_a_second() {
    let c = Cluster::new().unwrap();
    let (load, back) = under_load(&c, 4, |c| c.restart().unwrap());
    assert_contract(&load, back, 4, "restart");
    // The reactor is gone, and with it every connection.
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.backend_count_for(c.user()).unwrap() != 0 {
        assert!(Instant::now() < deadline, "backends outlived the reactor");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn immediate_restart_under_load_heals_the_same_way() {
    let c = Cluster::new().unwrap();
    let (load, back) = under_load(&c, 4, |c| {
        c.crash().unwrap();
        c.start().unwrap();
    });
    assert_contract(&load, back, 4, "crash");
}

#[test]
fn terminated_backends_under_load_are_replaced() {
    let c = Cluster::new().unwrap();
    let (load, back) = under_load(&c, 4, |c| {
        c.terminate_backends().unwrap();
    });
    assert_contract(&load, back, 4, "terminate");
}

#[test]
fn an_idle_pool_heals_before_the_next_request_after_restart_or_termination() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c).pool_size(3);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let c = &c;
        s.spawn(move || {
            rx.recv().unwrap();
            c.restart().unwrap();
            back_tx.send(()).unwrap();
            rx.recv().unwrap();
            c.terminate_backends().unwrap();
            back_tx.send(()).unwrap();
        });
        ioxide::block_on(async {
            let pool = PgPool::start(&Reactor::current(), o).unwrap();
            pool.query("SELECT 1").await.unwrap();
            wait_refilled(&pool, 3).await;
            for round in 0..2 {
                tx.send(()).unwrap();
                // Serve nothing while the fault happens; poll the channel without blocking.
                loop {
                    if back_rx.try_recv().is_ok() {
                        break;
                    }
                    ioxide::time::sleep(Duration::from_millis(5)).await;
                }
                // Every request issued after the server accepts again succeeds.
                for i in 0..20 {
                    let r = pool.query("SELECT 1").await;
                    assert!(r.is_ok(), "round {round}, request {i}: {:?}", r.err());
                }
                wait_refilled(&pool, 3).await;
            }
            assert!(pool.stats().broken_total >= 6, "{:?}", pool.stats());
        });
    });
    let _ = c.backend_count_for(c.user());
}

#[test]
fn a_frozen_server_resolves_every_query_within_timeout_plus_a_second_then_heals() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c)
        .pool_size(4)
        .command_timeout(Duration::from_secs(1))
        .acquire_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1));
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let c = &c;
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            c.freeze().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            c.thaw();
            tx.send(()).unwrap();
        });
        ioxide::block_on(async {
            let pool = PgPool::start(&Reactor::current(), o).unwrap();
            let until = Instant::now() + Duration::from_secs(3);
            let load = run_load(pool.clone(), 64, until, Arc::new(Mutex::new(None))).await;
            assert!(
                load.max_wait < Duration::from_millis(2500),
                "a query waited {:?}",
                load.max_wait
            );
            assert!(
                !load.failed.is_empty(),
                "the freeze should have failed some queries"
            );
            loop {
                if rx.try_recv().is_ok() {
                    break;
                }
                ioxide::time::sleep(Duration::from_millis(10)).await;
            }
            // After the thaw the pool serves again.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match pool.query("SELECT 1").await {
                    Ok(_) => break,
                    Err(e) => assert!(Instant::now() < deadline, "no recovery after thaw: {e}"),
                }
                ioxide::time::sleep(Duration::from_millis(50)).await;
            }
            wait_refilled(&pool, 4).await;
        });
    });
}

#[test]
fn an_unreachable_server_fails_queries_quickly_and_serves_again_after_it_starts() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c)
        .pool_size(2)
        .acquire_timeout(Duration::from_secs(2));
    c.stop().unwrap();
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        let started = Instant::now();
        let e = pool.query("SELECT 1").await.unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(!e.was_sent(), "{e}");
        assert!(
            e.to_string().contains("connect") || e.to_string().contains("unreachable"),
            "{e}"
        );
        // Down for longer than acquire_timeout: later requests fail fast — they wait only for
        // the one (refused) connect they start, not for acquire_timeout (2 s). The bound is
        // generous for a loaded 2-core machine.
        let started = Instant::now();
        let _ = pool.query("SELECT 1").await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    });
    c.start().unwrap();
    // A fresh request after the server is back is served (the pool connects at once).
    let o = opts_for(&c)
        .pool_size(2)
        .acquire_timeout(Duration::from_secs(2));
    c.stop().unwrap();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let c = &c;
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            c.start().unwrap();
            tx.send(()).unwrap();
        });
        ioxide::block_on(async {
            let pool = PgPool::start(&Reactor::current(), o).unwrap();
            let _ = pool.query("SELECT 1").await.unwrap_err();
            loop {
                if rx.try_recv().is_ok() {
                    break;
                }
                ioxide::time::sleep(Duration::from_millis(10)).await;
            }
            let r = pool.query("SELECT 1").await;
            assert!(
                r.is_ok(),
                "first request after the server started: {:?}",
                r.err()
            );
        });
    });
}

#[test]
fn a_timed_out_connection_is_closed_at_the_timeout_and_the_other_is_untouched() {
    let c = Cluster::new().unwrap();
    let port = c.port();
    let o = opts_for(&c)
        .pool_size(2)
        .command_timeout(Duration::from_millis(500));
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        wait_refilled(&pool, 2).await;
        assert_eq!(established_to(port).len(), 2);
        let a = pool.rent().await.unwrap();
        let b = pool.rent().await.unwrap();
        let pid_a = a.backend_pid().unwrap();
        let pid_b = b.backend_pid().unwrap();
        let port_of = |pid: i32| -> u16 {
            c.psql(&format!(
                "SELECT client_port FROM pg_stat_activity WHERE pid = {pid}"
            ))
            .unwrap()
            .parse()
            .unwrap()
        };
        let (port_a, port_b) = (port_of(pid_a), port_of(pid_b));
        // Stop only A's backend: it can neither answer nor act on the cancel.
        signal(pid_a, "STOP");
        let started = Instant::now();
        let e = a.query("SELECT 1").await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        // Torn down after the grace period, long before the backend could reply.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !a.is_broken() {
            assert!(
                Instant::now() < deadline,
                "timed-out connection not torn down"
            );
            ioxide::time::sleep(Duration::from_millis(20)).await;
        }
        let torn_down = started.elapsed();
        // Timeout (500 ms) + cancel grace (500 ms), long before the backend could reply.
        assert!(torn_down < Duration::from_millis(1500), "{torn_down:?}");
        // The socket is shut while the renter still holds the broken connection: give the
        // shutdown SQE one loop turn to reach the kernel.
        ioxide::time::sleep(Duration::from_millis(50)).await;
        let open = established_to(port);
        assert!(
            !open.contains(&port_a),
            "the timed-out socket is still open while its renter holds it: {open:?}"
        );
        drop(a);
        assert!(
            open.contains(&port_b),
            "the other connection was disturbed: {open:?}"
        );
        // B is untouched.
        assert_eq!(
            b.query("SELECT pg_backend_pid()").await.unwrap().value(),
            Some(pid_b.to_string().as_str())
        );
        signal(pid_a, "CONT");
        drop(b);
        wait_refilled(&pool, 2).await;
    });
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
