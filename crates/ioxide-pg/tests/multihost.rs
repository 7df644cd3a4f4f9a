//! Host lists against a real primary and hot standby (streaming replication):
//! target_session_attrs, load_balance_hosts, and a pool failing over under load.
#![allow(clippy::unwrap_used)]

mod common;

use common::run_within;
use ioxide::Reactor;
use ioxide_pg::{LoadBalanceHosts, PgConnection, PgOptions, PgPool, TargetSessionAttrs};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::Cluster;

/// Options listing `clusters` in order (TCP, the test role), 2 s connect timeout.
fn opts_listing(clusters: &[&Cluster], attrs: TargetSessionAttrs) -> PgOptions {
    let c = clusters[0];
    PgOptions::new()
        .hosts(clusters.iter().map(|c| c.host()))
        .ports(clusters.iter().map(|c| c.port()))
        .user(c.user())
        .password(c.password())
        .database(c.database())
        .connect_timeout(Duration::from_secs(2))
        .target_session_attrs(attrs)
}

async fn in_recovery(conn: &PgConnection) -> bool {
    conn.query("SELECT pg_is_in_recovery()")
        .await
        .unwrap()
        .value()
        == Some("t")
}

#[test]
fn target_session_attrs_pick_the_right_server() {
    let primary = Cluster::new().unwrap();
    let standby = primary.start_standby().unwrap();
    assert!(standby.is_standby().unwrap() && !primary.is_standby().unwrap());
    use TargetSessionAttrs as T;
    run_within(Duration::from_secs(120), async {
        for order in [[&primary, &standby], [&standby, &primary]] {
            for (attrs, want_standby) in [
                (T::ReadWrite, false),
                (T::Primary, false),
                (T::ReadOnly, true),
                (T::Standby, true),
                (T::PreferStandby, true),
            ] {
                let conn = PgConnection::connect(&opts_listing(&order, attrs))
                    .await
                    .unwrap();
                assert_eq!(in_recovery(&conn).await, want_standby, "{attrs}");
                if !want_standby {
                    conn.query("CREATE TEMP TABLE t (x int)").await.unwrap();
                }
            }
        }
        // A Unix socket directory and a TCP host in one list.
        let dir = standby.socket_dir().to_str().unwrap().to_owned();
        for (attrs, want_standby) in [(T::ReadWrite, false), (T::ReadOnly, true)] {
            let o =
                opts_listing(&[&standby, &primary], attrs).hosts([dir.as_str(), primary.host()]);
            let conn = PgConnection::connect(&o).await.unwrap();
            assert_eq!(in_recovery(&conn).await, want_standby, "{attrs}");
        }
        // The single-target API checks the attributes too.
        let o = opts_listing(&[&standby], T::ReadWrite);
        let e = PgConnection::connect_to(&o, o.resolve().unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");

        // load_balance_hosts=random spreads connects over both servers.
        let o = opts_listing(&[&primary, &standby], T::Any)
            .load_balance_hosts(LoadBalanceHosts::Random);
        let mut on_standby = 0;
        const N: usize = 100;
        for _ in 0..N {
            let conn = PgConnection::connect(&o).await.unwrap();
            on_standby += usize::from(in_recovery(&conn).await);
            conn.close().await;
        }
        println!("load_balance_hosts=random: {on_standby} of {N} connects on the standby");
        assert!((20..=80).contains(&on_standby), "{on_standby} of {N}");
        // Without it, the first host always.
        let o = opts_listing(&[&primary, &standby], T::Any);
        for _ in 0..10 {
            let conn = PgConnection::connect(&o).await.unwrap();
            assert!(!in_recovery(&conn).await);
        }
    });

    // prefer-standby falls back to the primary when the standby is down; standby fails,
    // naming both hosts and why.
    standby.stop().unwrap();
    run_within(Duration::from_secs(60), async {
        let conn = PgConnection::connect(&opts_listing(&[&standby, &primary], T::PreferStandby))
            .await
            .unwrap();
        assert!(!in_recovery(&conn).await);
        let e = PgConnection::connect(&opts_listing(&[&standby, &primary], T::Standby))
            .await
            .unwrap_err();
        let msg = format!("{e}");
        println!("no host fits: {msg}");
        assert!(msg.contains("target_session_attrs=standby"), "{msg}");
        assert!(
            msg.contains(&format!("127.0.0.1:{}", standby.port())),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "127.0.0.1:{}: server is not a standby",
                primary.port()
            )),
            "{msg}"
        );
    });
}

/// What the writers saw.
#[derive(Default)]
struct Writes {
    acked: Vec<(i64, Instant)>,
    failed: u64,
}

/// 64 writers through a read-write pool listing both servers; the primary is stopped
/// (`immediate`: crashed) and the standby promoted; writes must resume on the new primary
/// and, with synchronous replication, every acknowledged write must be there. A read pool
/// (prefer-standby) keeps reading meanwhile.
fn failover(immediate: bool) {
    let primary = Cluster::new().unwrap();
    let standby = primary.start_standby().unwrap();
    primary.make_synchronous().unwrap();
    primary
        .psql("CREATE TABLE w (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .unwrap();
    let rw = opts_listing(&[&primary, &standby], TargetSessionAttrs::ReadWrite)
        .acquire_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(5));
    let ro = opts_listing(&[&primary, &standby], TargetSessionAttrs::PreferStandby)
        .acquire_timeout(Duration::from_secs(2))
        .pool_size(2);
    let stopped_at: Arc<Mutex<Option<(Instant, Instant, Instant)>>> = Arc::default();
    let control = {
        let stopped_at = stopped_at.clone();
        let primary = &primary;
        let standby = &standby;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                let stop = Instant::now();
                if immediate {
                    primary.crash().unwrap();
                } else {
                    primary.stop().unwrap();
                }
                let promote = Instant::now();
                standby.promote().unwrap();
                *stopped_at.lock().unwrap() = Some((stop, promote, Instant::now()));
            });
            let r = run_within(Duration::from_secs(90), run_writers(rw, ro));
            h.join().unwrap();
            r
        })
    };
    let (writes, reads_ok, reads_failed_after, read_from_standby) = control;
    let (stop, promote, promoted) = stopped_at.lock().unwrap().unwrap();
    // Before pg_promote() nothing can commit on the standby: acknowledgements between the
    // stop and the promotion are the old primary's last commits (a fast stop lets them
    // finish).
    let late_on_old = writes
        .acked
        .iter()
        .filter(|(_, at)| *at > stop && *at < promote)
        .count();
    let first_after = writes
        .acked
        .iter()
        .filter(|(_, at)| *at > promote)
        .map(|(_, at)| *at)
        .min()
        .expect("no write acknowledged after the failover");
    let mode = if immediate { "immediate" } else { "fast" };
    println!(
        "failover ({mode} stop, synchronous): stop -> pg_promote() called {:?}, returned {:?}; \
         promotion -> first acknowledged write {:?} (pg_promote() return -> first write {:?}); \
         stop -> first write on the new primary {:?}; {late_on_old} acknowledged by the old \
         primary after the stop; {} writes acknowledged, {} failed; reads {} ok (standby \
         served: {read_from_standby}), {} failed after promotion",
        promote - stop,
        promoted - stop,
        first_after - promote,
        first_after.saturating_duration_since(promoted),
        first_after - stop,
        writes.acked.len(),
        writes.failed,
        reads_ok,
        reads_failed_after
    );
    assert!(first_after - promote < Duration::from_secs(10));
    assert!(writes.failed <= 64 * 20, "{} writes failed", writes.failed);
    assert!(writes.acked.iter().filter(|(_, at)| *at > stop).count() > 100);
    assert!(read_from_standby, "the read pool read from the standby");
    assert!(
        reads_failed_after <= 4,
        "{reads_failed_after} reads failed after the promotion"
    );
    // Every acknowledged write is on the new primary.
    let present: HashSet<i64> = standby
        .psql("SELECT id FROM w")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let missing: Vec<i64> = writes
        .acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Runs 64 writers and 4 readers for 8 s; returns the writes, reads that succeeded, reads
/// that failed in the last 3 s, and whether a read was served by a standby.
async fn run_writers(rw: PgOptions, ro: PgOptions) -> (Writes, u64, u64, bool) {
    let pool = PgPool::start(&Reactor::current(), rw).unwrap();
    let reads = PgPool::start_named(&Reactor::current(), "reads", ro).unwrap();
    let writes = Rc::new(RefCell::new(Writes::default()));
    let start = Instant::now();
    let until = start + Duration::from_secs(8);
    let writers: Vec<_> = (0..64i64)
        .map(|w| {
            let pool = pool.clone();
            let writes = writes.clone();
            ioxide::spawn(async move {
                let mut i = 0i64;
                while Instant::now() < until && i < 100_000 {
                    let id = w * 1_000_000 + i;
                    i += 1;
                    match pool.execute("INSERT INTO w (id) VALUES ($1)", &[&id]).await {
                        Ok(_) => writes.borrow_mut().acked.push((id, Instant::now())),
                        Err(_) => {
                            writes.borrow_mut().failed += 1;
                            ioxide::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let read_stats = Rc::new(RefCell::new((0u64, 0u64, false)));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let reads = reads.clone();
            let read_stats = read_stats.clone();
            ioxide::spawn(async move {
                while Instant::now() < until {
                    match reads.query("SELECT pg_is_in_recovery()").await {
                        Ok(r) => {
                            let mut s = read_stats.borrow_mut();
                            s.0 += 1;
                            s.2 |= r.value() == Some("t");
                        }
                        Err(_) => {
                            if Instant::now() > until - Duration::from_secs(3) {
                                read_stats.borrow_mut().1 += 1;
                            }
                            ioxide::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    ioxide::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await;
    }
    for r in readers {
        r.await;
    }
    pool.close().await;
    reads.close().await;
    let s = *read_stats.borrow();
    let w = std::mem::take(&mut *writes.borrow_mut());
    (w, s.0, s.1, s.2)
}

#[test]
fn failover_after_a_fast_stop() {
    failover(false);
}

#[test]
fn failover_after_an_immediate_stop() {
    failover(true);
}

#[test]
fn a_pool_skips_a_dead_host_and_runs_its_hook_on_the_live_one() {
    let c = testkit::shared_cluster();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = common::opts_for(c)
        .host("127.0.0.1,127.0.0.1")
        .ports([dead, c.port()])
        .connect_timeout(Duration::from_secs(2))
        .pool_size(2);
    run_within(Duration::from_secs(30), async move {
        let pool = PgPool::builder(o)
            .after_connect(|conn| {
                Box::pin(async move {
                    conn.query("SET application_name = 'walked'").await?;
                    Ok(())
                })
            })
            .start(&Reactor::current())
            .unwrap();
        for _ in 0..10 {
            let r = pool.query("SHOW application_name").await.unwrap();
            assert_eq!(r.value(), Some("walked"));
        }
        assert_eq!(pool.stats().hook_failures_total, 0);
        pool.close().await;
    });
}

/// The whole round trip of a failover: a listener on a two-host list follows the promotion
/// (one `Gap`, then notifications from the new primary), the old primary is rewound
/// (`pg_rewind`) into a standby of the new one and catches up, and a read pool listing both
/// lands on it.
#[test]
fn a_listener_follows_a_failover_and_the_old_primary_rejoins_by_rewind() {
    let old = Cluster::builder()
        .setting("wal_log_hints", "on")
        .setting("full_page_writes", "on")
        .start()
        .unwrap();
    let new = old.start_standby().unwrap();
    let rw = opts_listing(&[&old, &new], TargetSessionAttrs::Any);
    run_within(Duration::from_secs(90), async {
        let mut listener = ioxide_pg::PgListener::connect(&rw).await.unwrap();
        listener.listen("failover").await.unwrap();
        // Blocking the reactor here is fine: nothing else runs on it.
        old.stop().unwrap();
        new.promote().unwrap();
        // The listener walked to the new primary (a standby refuses LISTEN, so it walks the
        // list as read-write): one gap, then what the new primary sends.
        let gap = ioxide::time::timeout(Duration::from_secs(30), listener.next())
            .await
            .expect("an event within 30 s")
            .unwrap();
        assert_eq!(gap, ioxide_pg::ListenEvent::Gap);
        let conn = PgConnection::connect(&opts_listing(&[&new], TargetSessionAttrs::ReadWrite))
            .await
            .unwrap();
        conn.query("CREATE TABLE after_failover (x int); INSERT INTO after_failover VALUES (7)")
            .await
            .unwrap();
        conn.query("NOTIFY failover, 'from the new primary'")
            .await
            .unwrap();
        match ioxide::time::timeout(Duration::from_secs(10), listener.next()).await {
            Ok(Ok(ioxide_pg::ListenEvent::Notification(n))) => {
                assert_eq!(n.payload, "from the new primary");
            }
            other => panic!("{other:?} where the notification was expected"),
        }
        listener.close().await;
        conn.close().await;
    });

    let began = Instant::now();
    old.rewind_as_standby_of(&new).unwrap();
    println!("pg_rewind + restart + streaming: {:?}", began.elapsed());
    assert!(old.is_standby().unwrap() && !new.is_standby().unwrap());
    // It replays what the new primary wrote after the promotion.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = old.psql("SELECT x FROM after_failover").unwrap_or_default();
        if seen.trim() == "7" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rewound standby never saw the row"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run_within(Duration::from_secs(60), async {
        let reads = PgPool::start(
            &Reactor::current(),
            opts_listing(&[&new, &old], TargetSessionAttrs::ReadOnly).pool_size(2),
        )
        .unwrap();
        let r = reads
            .query("SELECT pg_is_in_recovery()::text || ' ' || inet_server_port()")
            .await
            .unwrap();
        assert_eq!(r.value(), Some(format!("true {}", old.port()).as_str()));
        reads.close().await;
    });
}

/// A primary and a standby promoted beside it (two timelines): `pg_rewind` refuses a
/// target without `wal_log_hints` and says why; rebuilding from a base backup works.
#[test]
fn a_diverged_primary_rejoins_by_rebuild_when_it_cannot_rewind() {
    let old = Cluster::builder()
        .setting("full_page_writes", "on")
        .start()
        .unwrap();
    let new = old.start_standby().unwrap();
    new.promote().unwrap();
    new.psql("CREATE TABLE only_on_new (x int); INSERT INTO only_on_new VALUES (1)")
        .unwrap();
    old.psql("CREATE TABLE only_on_old (x int)").unwrap();
    let e = old.rewind_as_standby_of(&new).unwrap_err();
    assert!(e.to_string().contains("wal_log_hints"), "{e}");
    old.rebuild_as_standby_of(&new).unwrap();
    assert!(old.is_standby().unwrap());
    assert_eq!(old.psql("SELECT x FROM only_on_new").unwrap().trim(), "1");
    assert!(old.psql("SELECT 1 FROM only_on_old").is_err());
}
