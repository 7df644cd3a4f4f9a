//! A flapping server under load: its port goes down (connects refused, every open connection
//! cut, as in a crash) and comes back ten times in three seconds, through a
//! [`testkit::FlakyProxy`] in front of a real cluster. The pool's connect rules (one probe
//! after breaks, the rest once it connects; an urgent connect beside a probe for a request
//! newer than it; paced probes while requests wait) are each tested on their own elsewhere;
//! these tests hold them together against a server that keeps changing its mind, with the
//! default pipelined pool and with one command per connection.
#![allow(clippy::unwrap_used)]

mod common;

use common::opts_for;
use ioxide::Reactor;
use ioxide_pg::{PgPool, PoolStats};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{Cluster, FlakyProxy};

const REACTORS: usize = 2;
const SIZE: usize = 2;
const CLIENTS_PER_REACTOR: usize = 16;
const CYCLES: usize = 10;
const DOWN_FOR: Duration = Duration::from_millis(120);
const UP_FOR: Duration = Duration::from_millis(180);
const WARM: Duration = Duration::from_secs(1);
/// How long the load runs after the last flap.
const SETTLED_FOR: Duration = Duration::from_secs(2);
/// Acquire and command timeouts: far above a flap's 120 ms outage, and above the ~1.4 s
/// stall seen once on this shared machine (every reactor of the test process, in both tests
/// at the same instant, 3.5 s into the flapping: a 1 s bound turned it into command and
/// acquire timeouts beyond the in-flight count the test allows).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// No query may take longer than acquire + command timeouts plus this (cancel grace, a
/// loaded 2-core machine).
const WAIT_SLACK: Duration = Duration::from_millis(1500);
/// A query still unanswered after this counts as hung (and fails the test) instead of
/// hanging it.
const HUNG: Duration = Duration::from_secs(8);
/// The load stops at this age at the latest, should the flapper never say when.
const LOAD_CAP: Duration = Duration::from_secs(60);
/// How long the main thread waits for the reactors to report their pools refilled.
const REPORT_WITHIN: Duration = Duration::from_secs(90);

/// One query: when it started, how long it took, whether it succeeded.
#[derive(Debug, Clone)]
struct Query {
    started: Instant,
    took: Duration,
    error: Option<String>,
}

/// The flapper's timeline.
#[derive(Debug, Default)]
struct Timeline {
    /// When the first flap began.
    first_down: Option<Instant>,
    /// When the port came up for the last time.
    settled: Option<Instant>,
    /// Connections the proxy accepted before the first flap, and from then to the end of the
    /// load (the last flap's refill included).
    accepted_before: usize,
    accepted_during: usize,
}

/// Pipelined (the default depth): queued commands share the connections that get cut.
#[test]
fn a_flapping_server_never_hangs_a_query_nor_draws_a_connect_storm_and_the_pool_settles() {
    flapping(None);
}

/// One command per connection: most requests wait for a connection when a flap hits.
#[test]
fn a_flapping_server_under_a_depth_1_pool_behaves_the_same() {
    flapping(Some(1));
}

fn flapping(depth: Option<usize>) {
    let c = Cluster::new().unwrap();
    let proxy = Arc::new(Mutex::new(
        FlakyProxy::start(([127, 0, 0, 1], c.port()).into()).unwrap(),
    ));
    let port = proxy.lock().unwrap().port();
    let o = opts_for(&c)
        .host("127.0.0.1")
        .port(port)
        .pool_size(SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .command_timeout(COMMAND_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    let o = match depth {
        Some(d) => o.pipeline_depth(d),
        None => o,
    };
    // Commands a reactor can have in flight: all that a cut can fail (the rest wait, and a
    // 120 ms outage is far shorter than the acquire timeout).
    let capacity = SIZE * o.get_pipeline_depth();
    let started = Instant::now();
    // When the load stops: two seconds after the last flap, set by the flapper (or when it
    // fails), at the latest LOAD_CAP.
    let stop_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    // The reactors report their pools refilled, then hold still (no load) until the main
    // thread has counted the server's connections and lets them go (or has failed: its
    // senders are dropped while it unwinds, which lets them go too).
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_txs, go_rxs): (Vec<_>, Vec<_>) = (0..REACTORS).map(|_| mpsc::channel::<()>()).unzip();

    let (runs, tl) = std::thread::scope(|s| {
        let (p, t, stop) = (proxy.clone(), timeline.clone(), stop_at.clone());
        let flapper = s.spawn(move || {
            let _stop_on_failure = StopOnDrop(stop.clone());
            std::thread::sleep(WARM);
            {
                let mut t = t.lock().unwrap();
                t.first_down = Some(Instant::now());
                t.accepted_before = p.lock().unwrap().accepted();
            }
            for i in 0..CYCLES {
                p.lock().unwrap().down();
                std::thread::sleep(DOWN_FOR);
                p.lock().unwrap().up().unwrap();
                if i + 1 < CYCLES {
                    std::thread::sleep(UP_FOR);
                }
            }
            let settled = Instant::now();
            *stop.lock().unwrap() = Some(settled + SETTLED_FOR);
            t.lock().unwrap().settled = Some(settled);
        });
        let reactors: Vec<_> = go_rxs
            .into_iter()
            .map(|go| {
                let (o, ready, stop) = (o.clone(), ready_tx.clone(), stop_at.clone());
                s.spawn(move || {
                    ioxide::block_on(async move {
                        let pool = PgPool::start(&Reactor::current(), o).unwrap();
                        let queries = load(pool.clone(), started, stop).await;
                        // Refilled to exactly its size once the server stays up.
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while pool.stats().open < SIZE {
                            assert!(Instant::now() < deadline, "no refill: {:?}", pool.stats());
                            ioxide::time::sleep(Duration::from_millis(20)).await;
                        }
                        let stats = pool.stats();
                        let _ = ready.send(());
                        let _ = go.recv_timeout(REPORT_WITHIN);
                        (queries, stats)
                    })
                })
            })
            .collect();
        drop(ready_tx);
        flapper.join().unwrap();
        for _ in 0..REACTORS {
            ready_rx
                .recv_timeout(REPORT_WITHIN)
                .expect("a reactor never reported its pool refilled");
        }
        {
            // Connects from the first flap to the end (the last flap's refill included).
            let mut t = timeline.lock().unwrap();
            t.accepted_during = proxy.lock().unwrap().accepted() - t.accepted_before;
        }
        // The server holds exactly the pools' connections: none leaked, none surplus (a
        // relay ends a moment after its client closes, hence the wait).
        let want = REACTORS * SIZE;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let live = proxy.lock().unwrap().live();
            if live == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{live} connections open at the server, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(go_txs);
        let runs: Vec<(Vec<Query>, PoolStats)> =
            reactors.into_iter().map(|r| r.join().unwrap()).collect();
        let tl = std::mem::take(&mut *timeline.lock().unwrap());
        (runs, tl)
    });

    let first_down = tl.first_down.unwrap();
    let settled = tl.settled.unwrap();
    let bound = ACQUIRE_TIMEOUT + COMMAND_TIMEOUT + WAIT_SLACK;
    for (i, (queries, stats)) in runs.iter().enumerate() {
        let failed = queries.iter().filter(|q| q.error.is_some()).count();
        let during = queries
            .iter()
            .filter(|q| q.started >= first_down && q.started < settled)
            .filter(|q| q.error.is_none())
            .count();
        let max = queries.iter().map(|q| q.took).max().unwrap_or_default();
        eprintln!(
            "depth {depth:?}, reactor {i}: {} queries, {failed} failed, {during} ok while flapping, longest \
             {max:?}; {stats:?}",
            queries.len()
        );
        // Each flap fails at most what was in flight when it cut the connections.
        assert!(
            failed <= CYCLES * capacity,
            "reactor {i}: {failed} failures > {CYCLES} flaps x {capacity} in flight"
        );
        // Every future resolved (the load joined) and none waited past its timeouts.
        assert!(max < bound, "reactor {i}: a query took {max:?}");
        // Nothing failed before the first flap.
        let early: Vec<_> = queries
            .iter()
            .filter(|q| q.error.is_some() && q.started + q.took < first_down)
            .collect();
        assert!(
            early.is_empty(),
            "reactor {i}: failed before flapping: {early:?}"
        );
        // The up windows were used: the pool served while the server flapped.
        assert!(during > 0, "reactor {i}: nothing served while flapping");
        // Once the server stays up, a request made after it came back does not fail.
        let after: Vec<_> = queries
            .iter()
            .filter(|q| q.started >= settled + Duration::from_millis(100))
            .collect();
        let late_failures: Vec<_> = after.iter().filter(|q| q.error.is_some()).collect();
        assert!(
            late_failures.is_empty(),
            "reactor {i}: {} of {} requests made after the server settled failed: {:?}",
            late_failures.len(),
            after.len(),
            late_failures.iter().take(5).collect::<Vec<_>>()
        );
        assert!(after.len() > 100, "reactor {i}: only {} after", after.len());
        // It served again within a second of the last `up`.
        let first_ok = queries
            .iter()
            .filter(|q| q.error.is_none() && q.started + q.took >= settled)
            .map(|q| q.started + q.took)
            .min()
            .unwrap();
        let healed = first_ok.duration_since(settled);
        assert!(
            healed < Duration::from_secs(1),
            "reactor {i}: healed in {healed:?}"
        );
        assert_eq!(stats.open, SIZE, "reactor {i}: {stats:?}");
    }
    // No connect storm: each up window sees at most the replacements of one pool per reactor
    // (its size, plus an urgent connect beside a probe) — not one per waiting request. Measured:
    // exactly SIZE per reactor per flap.
    let storm_bound = CYCLES * REACTORS * (SIZE + 1);
    eprintln!(
        "connections accepted: {} before flapping, {} during {CYCLES} flaps (bound {storm_bound})",
        tl.accepted_before, tl.accepted_during
    );
    assert!(
        tl.accepted_during <= storm_bound,
        "{} connections in {CYCLES} flaps",
        tl.accepted_during
    );
    // The reactors are gone: every connection closed with them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.lock().unwrap().live() > 0 {
        assert!(
            Instant::now() < deadline,
            "connections outlived their reactors"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets the load's stop time to now when dropped without one (the flapper failed).
struct StopOnDrop(Arc<Mutex<Option<Instant>>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let mut stop = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stop.get_or_insert_with(Instant::now);
    }
}

/// `CLIENTS_PER_REACTOR` closed loops of `SELECT 1` until `stop_at` (at the latest
/// `started + LOAD_CAP`); every query recorded, a hung one as an error after [`HUNG`].
async fn load(pool: PgPool, started: Instant, stop_at: Arc<Mutex<Option<Instant>>>) -> Vec<Query> {
    let out = Rc::new(RefCell::new(Vec::new()));
    let keep_going = move || {
        let now = Instant::now();
        now < started + LOAD_CAP && stop_at.lock().unwrap().is_none_or(|t| now < t)
    };
    let keep_going = Rc::new(keep_going);
    let tasks: Vec<_> = (0..CLIENTS_PER_REACTOR)
        .map(|_| {
            let (pool, out, keep_going) = (pool.clone(), out.clone(), keep_going.clone());
            ioxide::spawn(async move {
                while keep_going() {
                    let started = Instant::now();
                    let r = ioxide::time::timeout(HUNG, pool.query("SELECT 1")).await;
                    let took = started.elapsed();
                    let error = match r {
                        Ok(Ok(v)) => {
                            assert_eq!(v.value(), Some("1"));
                            None
                        }
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!("no answer within {HUNG:?}")),
                    };
                    let failed = error.is_some();
                    out.borrow_mut().push(Query {
                        started,
                        took,
                        error,
                    });
                    if failed {
                        // Do not spin on a refusing server.
                        ioxide::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(out).ok().unwrap().into_inner()
}
