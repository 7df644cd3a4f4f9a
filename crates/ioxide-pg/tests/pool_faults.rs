//! The failure contract under load: restarts, terminated backends, freezes, a dark port, a
//! single stalled backend. Each test runs its own cluster.
#![allow(clippy::unwrap_used)]

mod common;

use common::{established_to, opts_for};
use ioxide::Reactor;
use ioxide_pg::{PgPool, PoolStats};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::Cluster;

/// One failed query.
#[derive(Debug)]
struct Failure {
    at: Instant,
    error: String,
    /// The error says the query may have reached the server (`PgError::was_sent`).
    sent: bool,
}

#[derive(Default)]
struct Load {
    ok: u64,
    failed: Vec<Failure>,
    first_ok_after: Option<Instant>,
    /// The longest a single query took.
    max_wait: Duration,
    /// Queries that took over a second: how long, and their error if they failed.
    slow: Vec<(Duration, Option<String>)>,
}

/// `concurrency` closed loops of `SELECT 1` until `until`; every future resolves.
async fn run_load(
    pool: PgPool,
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
                        if waited > Duration::from_secs(1) {
                            let e = r.as_ref().err().map(ToString::to_string);
                            l.slow.push((waited, e));
                        }
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
                                l.failed.push(Failure {
                                    at: Instant::now(),
                                    error: e.to_string(),
                                    sent: e.was_sent(),
                                });
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

/// Polls `pool.stats()` every 5 ms until `done` holds; panics with `what` after `within`.
/// Returns how long it took.
async fn wait_stats(
    pool: &PgPool,
    within: Duration,
    what: &str,
    done: impl Fn(&PoolStats) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let s = pool.stats();
        if done(&s) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what} within {within:?}: {s:?}"
        );
        ioxide::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Per-reactor gauges the fault thread reads just before it strikes.
#[derive(Default)]
struct Gauge {
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
}

/// What one reactor saw.
struct ReactorRun {
    load: Load,
    /// `stats().in_flight` / `waiting` sampled right before the fault.
    in_flight_at_fault: usize,
    waiting_at_fault: usize,
    /// Stats after the load ended and the pool refilled.
    stats: PoolStats,
}

struct Run {
    reactors: Vec<ReactorRun>,
    /// When the fault began (right after the sample) and when the server accepted again.
    fault_at: Instant,
    back: Instant,
}

/// Load: `clients` closed loops spread evenly over `reactors` reactor threads, each with its
/// own pool of `size`, for 4 s; `fault` runs on another thread after 1 s and returns when the
/// server accepts connections again. Each reactor publishes its pool's in-flight and waiting
/// counts every millisecond; the fault thread samples them right before it strikes.
fn under_load(
    c: &Cluster,
    reactors: usize,
    size: usize,
    clients: usize,
    fault: impl FnOnce(&Cluster) + Send,
) -> Run {
    assert_eq!(clients % reactors, 0);
    let mark = Arc::new(Mutex::new(None));
    let gauges: Vec<Arc<Gauge>> = (0..reactors).map(|_| Arc::default()).collect();
    let o = opts_for(c)
        .pool_size(size)
        .command_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
    let until = Instant::now() + Duration::from_secs(4);
    std::thread::scope(|s| {
        let m = mark.clone();
        let g = gauges.clone();
        let faulter = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(1000));
            let sampled: Vec<(usize, usize)> = g
                .iter()
                .map(|g| {
                    (
                        g.in_flight.load(Ordering::SeqCst),
                        g.waiting.load(Ordering::SeqCst),
                    )
                })
                .collect();
            let fault_at = Instant::now();
            fault(c);
            let back = Instant::now();
            *m.lock().unwrap() = Some(back);
            (sampled, fault_at, back)
        });
        let threads: Vec<_> = gauges
            .iter()
            .map(|gauge| {
                let o = o.clone();
                let mark = mark.clone();
                let gauge = gauge.clone();
                s.spawn(move || {
                    ioxide::block_on(async move {
                        let pool = PgPool::start(&Reactor::current(), o).unwrap();
                        let p = pool.clone();
                        let publisher = ioxide::spawn(async move {
                            while Instant::now() < until {
                                let st = p.stats();
                                gauge.in_flight.store(st.in_flight, Ordering::SeqCst);
                                gauge.waiting.store(st.waiting, Ordering::SeqCst);
                                ioxide::time::sleep(Duration::from_millis(1)).await;
                            }
                        });
                        let load = run_load(pool.clone(), clients / reactors, until, mark).await;
                        publisher.await;
                        wait_refilled(&pool, size).await;
                        (load, pool.stats())
                    })
                })
            })
            .collect();
        let (sampled, fault_at, back) = faulter.join().unwrap();
        let reactors = threads
            .into_iter()
            .zip(sampled)
            .map(|(t, (in_flight, waiting))| {
                let (load, stats) = t.join().unwrap();
                ReactorRun {
                    load,
                    in_flight_at_fault: in_flight,
                    waiting_at_fault: waiting,
                    stats,
                }
            })
            .collect();
        Run {
            reactors,
            fault_at,
            back,
        }
    })
}

/// The contract, per reactor and in total: failures are at most the queries in flight right
/// before the fault, the pool serves a request issued after the server is back within 1 s,
/// no query waits longer than the outage plus that second, and (checked in `under_load`)
/// the pool refills. That no request which never reached the server fails is checked
/// separately ([`assert_no_unsent_failure`]).
fn assert_contract(run: &Run, what: &str) {
    let outage = run.back.duration_since(run.fault_at);
    let max_wait_bound = outage + Duration::from_secs(1);
    let mut failed = 0;
    let mut in_flight = 0;
    for (i, r) in run.reactors.iter().enumerate() {
        let l = &r.load;
        let healed = l.first_ok_after.map(|t| t.duration_since(run.back));
        eprintln!(
            "{what} reactor {i}: outage {outage:?}, in flight {} (waiting {}) at the fault, \
             {} failed ({} unsent), {} ok, healed {healed:?} after back, max wait {:?}, \
             retries {}, broken {}",
            r.in_flight_at_fault,
            r.waiting_at_fault,
            l.failed.len(),
            l.failed.iter().filter(|f| !f.sent).count(),
            l.ok,
            l.max_wait,
            r.stats.retries_total,
            r.stats.broken_total,
        );
        assert!(
            l.failed.len() <= r.in_flight_at_fault,
            "{what}, reactor {i}: {} failures > {} in flight at the fault: {:?}",
            l.failed.len(),
            r.in_flight_at_fault,
            l.failed
        );
        assert!(l.ok > 50, "{what}, reactor {i}: only {} successes", l.ok);
        let healed = healed.unwrap_or_else(|| panic!("{what}, reactor {i}: no success after"));
        assert!(
            healed < Duration::from_secs(1),
            "{what}, reactor {i}: healed {healed:?} after the server was back"
        );
        assert!(
            l.max_wait < max_wait_bound,
            "{what}, reactor {i}: a query took {:?} (outage {outage:?})",
            l.max_wait
        );
        for f in &l.failed {
            assert!(
                f.at >= run.fault_at,
                "{what}, reactor {i}: a query failed before the fault: {f:?}"
            );
        }
        failed += l.failed.len();
        in_flight += r.in_flight_at_fault;
    }
    assert!(
        failed <= in_flight,
        "{what}: {failed} failures > {in_flight} in flight at the fault"
    );
}

/// No failed request was one that never reached the server (`!was_sent()`): those are safe
/// to retry on another connection, and the pool promises to.
fn assert_no_unsent_failure(run: &Run, what: &str) {
    for (i, r) in run.reactors.iter().enumerate() {
        let unsent: Vec<_> = r
            .load
            .failed
            .iter()
            .filter(|f| !f.sent)
            .map(|f| f.error.as_str())
            .collect();
        assert!(
            unsent.is_empty(),
            "{what}, reactor {i}: {} of {} failed requests never reached the server \
             (retries_total {}): {unsent:?}",
            unsent.len(),
            r.load.failed.len(),
            r.stats.retries_total,
        );
    }
}

/// 64 clients over 2 reactors, a pool of 2 (× pipeline depth 8 = 16 in flight) on each:
/// half the clients are queued waiters when the fault hits, and those must not fail.
const REACTORS: usize = 2;
const SIZE: usize = 2;
const CLIENTS: usize = 64;

#[test]
fn restart_under_load_fails_at_most_the_in_flight_queries_and_heals_within_a_second() {
    let c = Cluster::new().unwrap();
    let run = under_load(&c, REACTORS, SIZE, CLIENTS, |c| c.restart().unwrap());
    assert_contract(&run, "restart");
    // The reactors are gone, and with them every connection.
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.backend_count_for(c.user()).unwrap() != 0 {
        assert!(Instant::now() < deadline, "backends outlived the reactor");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn immediate_restart_under_load_heals_the_same_way() {
    let c = Cluster::new().unwrap();
    let run = under_load(&c, REACTORS, SIZE, CLIENTS, |c| {
        c.crash().unwrap();
        c.start().unwrap();
    });
    assert_contract(&run, "crash");
    assert_no_unsent_failure(&run, "crash");
}

#[test]
fn terminated_backends_under_load_are_replaced() {
    let c = Cluster::new().unwrap();
    let run = under_load(&c, REACTORS, SIZE, CLIENTS, |c| {
        c.terminate_backends().unwrap();
    });
    assert_contract(&run, "terminate");
}

/// The restart and terminate scenarios above, with one more check: a request that never
/// reached the server must not fail either. A request counted as in flight may have been written to the connection's buffer
/// but not yet to the socket when the server's goodbye arrived; it never reached the server
/// and must be retried on another connection, not failed.
#[test]
fn requests_that_never_reached_the_server_survive_a_restart_or_termination_under_load() {
    let c = Cluster::new().unwrap();
    let run = under_load(&c, REACTORS, SIZE, CLIENTS, |c| c.restart().unwrap());
    assert_contract(&run, "restart");
    let restart = std::panic::catch_unwind(|| assert_no_unsent_failure(&run, "restart"));
    let run = under_load(&c, REACTORS, SIZE, CLIENTS, |c| {
        c.terminate_backends().unwrap();
    });
    assert_contract(&run, "terminate");
    assert_no_unsent_failure(&run, "terminate");
    if let Err(e) = restart {
        std::panic::resume_unwind(e);
    }
}

/// Two reactors, each with an idle pool of 3, live through a restart and then through
/// terminated backends. Each time, before any request, each pool must notice on its own that
/// its idle connections died (all of them counted broken). Then reactor 0 issues requests at
/// once, while reactor 1 first waits for its pool to refill on its own. Not one request
/// fails, and none needed the transparent retry (`retries_total` unchanged): no request was
/// sent on a dead connection.
#[test]
fn an_idle_pool_notices_a_restart_or_termination_on_its_own_and_heals_before_the_next_request() {
    const IDLE: usize = 3;
    type Fault = fn(&Cluster);
    let faults: [(&str, Fault); 2] = [
        ("restart", |c: &Cluster| c.restart().unwrap()),
        ("terminate", |c: &Cluster| {
            c.terminate_backends().unwrap();
        }),
    ];
    let c = Cluster::new().unwrap();
    let o = opts_for(&c).pool_size(IDLE);
    // No thread blocks on another (a failed assertion must not hang the test): the reactors
    // report "idle and refilled" on a channel and poll for the rest with a deadline.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    // When the server accepted again, per round.
    let back: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    // The backends were counted: the pools may go.
    let checked = AtomicBool::new(false);
    std::thread::scope(|s| {
        for eager in [true, false] {
            let (o, ready, back, checked) = (o.clone(), ready_tx.clone(), &back, &checked);
            s.spawn(move || {
                ioxide::block_on(async move {
                    let who = if eager { "eager" } else { "patient" };
                    let pool = PgPool::start(&Reactor::current(), o).unwrap();
                    pool.query("SELECT 1").await.unwrap();
                    wait_refilled(&pool, IDLE).await;
                    for (round, (fault, _)) in faults.iter().enumerate() {
                        let s0 = pool.stats();
                        assert_eq!(s0.open, IDLE, "{fault}, {who}: {s0:?}");
                        let dead = |s: &PoolStats| s.broken_total >= s0.broken_total + IDLE as u64;
                        ready.send(()).unwrap();
                        // Serve nothing while the fault happens; poll without blocking.
                        let mut noticed = None;
                        let deadline = Instant::now() + Duration::from_secs(30);
                        let back_at = loop {
                            if noticed.is_none() && dead(&pool.stats()) {
                                noticed = Some(Instant::now());
                            }
                            if let Some(&t) = back.lock().unwrap().get(round) {
                                break t;
                            }
                            assert!(Instant::now() < deadline, "{fault}: never back");
                            ioxide::time::sleep(Duration::from_millis(5)).await;
                        };
                        let what = format!("{fault}, {who}: the dead idle connections noticed");
                        let late = wait_stats(&pool, Duration::from_secs(1), &what, dead).await;
                        let noticed = noticed.unwrap_or_else(Instant::now);
                        let mut refilled = None;
                        if !eager {
                            let what = format!("{fault}, {who}: refilled on its own");
                            refilled = Some(
                                wait_stats(&pool, Duration::from_secs(2), &what, |s| {
                                    s.open == IDLE
                                        && s.opened_total >= s0.opened_total + IDLE as u64
                                })
                                .await,
                            );
                        }
                        let first = Instant::now();
                        for i in 0..20 {
                            let r = pool.query("SELECT 1").await;
                            assert!(r.is_ok(), "{fault}, {who}, request {i}: {:?}", r.err());
                        }
                        let served = first.elapsed();
                        let s1 = pool.stats();
                        assert_eq!(
                            s1.retries_total, s0.retries_total,
                            "{fault}, {who}: a request was retried (sent on a dead connection)"
                        );
                        wait_refilled(&pool, IDLE).await;
                        let s2 = pool.stats();
                        assert_eq!(
                            s2.broken_total - s0.broken_total,
                            IDLE as u64,
                            "{fault}, {who}: {s2:?}"
                        );
                        eprintln!(
                            "{fault}, {who}: noticed {} {:?} the server was back \
                             (waited {late:?} after), refilled {refilled:?} after it was back, \
                             20 requests in {served:?}; {s2:?}",
                            if noticed <= back_at {
                                "before"
                            } else {
                                "after"
                            },
                            if noticed <= back_at {
                                back_at - noticed
                            } else {
                                noticed - back_at
                            },
                        );
                    }
                    ready.send(()).unwrap();
                    // Pools still open while the other thread counts backends.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !checked.load(Ordering::SeqCst) {
                        assert!(Instant::now() < deadline, "backends never counted");
                        ioxide::time::sleep(Duration::from_millis(5)).await;
                    }
                });
            });
        }
        drop(ready_tx);
        let both_ready = || {
            for _ in 0..2 {
                ready_rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("a reactor never got ready");
            }
        };
        for (_, fault) in faults {
            both_ready();
            fault(&c);
            back.lock().unwrap().push(Instant::now());
        }
        both_ready();
        // Exactly the two pools' connections: none leaked, none missing.
        let n = c.backend_count_for(c.user()).unwrap();
        checked.store(true, Ordering::SeqCst);
        assert_eq!(n, 2 * IDLE, "backends after both rounds");
    });
    // The reactors are gone, and with them every connection.
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.backend_count_for(c.user()).unwrap() != 0 {
        assert!(Instant::now() < deadline, "backends outlived the reactors");
        std::thread::sleep(Duration::from_millis(20));
    }
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
            let over: Vec<_> = load
                .slow
                .iter()
                .filter(|(w, _)| *w >= Duration::from_secs(2))
                .collect();
            eprintln!(
                "freeze: max wait {:?}, {} ok, {} failed, {} over 1 s, {} over 2 s: {over:?}",
                load.max_wait,
                load.ok,
                load.failed.len(),
                load.slow.len(),
                over.len(),
            );
            // The clause: every query resolves within command_timeout (1 s) + 1 s.
            assert!(
                load.max_wait < Duration::from_secs(2),
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
    // The server is still down. A new pool fails its first request; the first request
    // after the server starts is served (the pool connects at once).
    let o = opts_for(&c)
        .pool_size(2)
        .acquire_timeout(Duration::from_secs(2));
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
