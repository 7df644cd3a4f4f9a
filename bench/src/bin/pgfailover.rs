//! `pgfailover`: issue 20's failover benchmark. Per run, a throwaway primary with a
//! synchronous standby (pg-throwaway), 64 writers inserting through a pool that lists both
//! servers with `target_session_attrs=read-write`; after 1 s the primary is stopped (fast)
//! and the standby promoted. Measured: the time from the promotion request to the first
//! write acknowledged after it, plus acknowledged and failed writes. ioxide-pg's `PgPool`
//! and a deadpool-postgres pool (tokio-postgres host list) alternate, fresh clusters each
//! run; one JSON line per run, then a summary line with medians and the ratio ours/peer.
//! Beside the writers, a probe connection opened to the standby before the stop inserts
//! every millisecond: its first acknowledgement after the promotion request is the server's
//! floor for that run (`server_floor_ms`). `promoted_to_first_ack_ms` is measured from
//! `pg_promote(true)`'s return, which polls every 100 ms and so usually returns after the
//! first write (the field then reads 0).
//!
//! ```sh
//! pgfailover [--rounds N] [--writers N] [--pool-size N] [--seconds S] [--probe 0|1]
//! ```

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ioxide_pg::{PgOptions, PgPool, TargetSessionAttrs};
use pg_throwaway::Cluster;
use serde_json::json;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings shared by every run.
#[derive(Clone, Copy)]
struct Args {
    rounds: usize,
    writers: usize,
    pool_size: usize,
    /// Writing time after the stop.
    seconds: u64,
    /// Run the server-floor probe beside the writers (`--probe 0` to leave it out).
    probe: bool,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args {
            rounds: 3,
            writers: 64,
            pool_size: 16,
            seconds: 4,
            probe: true,
        };
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("pgfailover: {flag} needs a value"))?;
            let n: usize = value
                .parse()
                .map_err(|e| format!("pgfailover: {flag} {value:?}: {e}"))?;
            match flag.as_str() {
                "--rounds" => a.rounds = n,
                "--writers" => a.writers = n,
                "--pool-size" => a.pool_size = n,
                "--seconds" => a.seconds = n as u64,
                "--probe" => a.probe = n != 0,
                _ => return Err(format!("pgfailover: unknown flag {flag}")),
            }
        }
        // `--probe 0` is the one zero allowed.
        if a.rounds == 0 || a.writers == 0 || a.pool_size == 0 || a.seconds == 0 {
            return Err("pgfailover: every value must be positive".into());
        }
        Ok(a)
    }
}

/// What the writers saw: acknowledgement instants and failed attempts.
#[derive(Default)]
struct Writes {
    acked: Vec<Instant>,
    failed: u64,
}

/// Pause after a failed write, the same for both drivers.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Time the writers run before the primary is stopped.
const BEFORE_STOP: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Ioxide,
    Deadpool,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Ioxide => "ioxide-pg",
            Driver::Deadpool => "deadpool",
        }
    }
}

/// Instants the control thread recorded: stop requested, promotion requested, pg_promote()
/// returned.
type Marks = (Instant, Instant, Instant);

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One run on fresh clusters.
fn run_one(driver: Driver, args: Args) -> Result<serde_json::Value, String> {
    let primary = Cluster::new().map_err(|e| format!("starting the primary: {e}"))?;
    let standby = primary
        .start_standby()
        .map_err(|e| format!("starting the standby: {e}"))?;
    primary
        .make_synchronous()
        .map_err(|e| format!("making the standby synchronous: {e}"))?;
    primary
        .psql("CREATE TABLE w (id bigint PRIMARY KEY)")
        .map_err(|e| format!("creating the table: {e}"))?;
    let hosts = [primary.host(), standby.host()];
    let ports = [primary.port(), standby.port()];
    let until = Duration::from_secs(args.seconds) + BEFORE_STOP;

    let (writes, marks, probe) = std::thread::scope(|s| {
        let control = s.spawn(|| -> Result<Marks, String> {
            std::thread::sleep(BEFORE_STOP);
            let stop = Instant::now();
            primary
                .stop()
                .map_err(|e| format!("stopping the primary: {e}"))?;
            let promote = Instant::now();
            standby
                .promote()
                .map_err(|e| format!("promoting the standby: {e}"))?;
            Ok((stop, promote, Instant::now()))
        });
        let probe_opts = PgOptions::new()
            .host(standby.host())
            .port(standby.port())
            .user(standby.user())
            .password(standby.password())
            .database(standby.database())
            .connect_timeout(Duration::from_secs(2));
        let probe = args
            .probe
            .then(|| s.spawn(move || floor_probe(probe_opts, until)));
        let writes = match driver {
            Driver::Ioxide => {
                let o = PgOptions::new()
                    .hosts(hosts)
                    .ports(ports)
                    .user(primary.user())
                    .password(primary.password())
                    .database(primary.database())
                    .target_session_attrs(TargetSessionAttrs::ReadWrite)
                    .connect_timeout(Duration::from_secs(2))
                    .acquire_timeout(Duration::from_secs(2))
                    .command_timeout(Duration::from_secs(5))
                    .pool_size(args.pool_size);
                ioxide_writers(o, args.writers, until)
            }
            Driver::Deadpool => {
                let mut c = tokio_postgres::Config::new();
                for (h, p) in hosts.iter().zip(ports) {
                    c.host(*h).port(p);
                }
                c.user(primary.user())
                    .password(primary.password())
                    .dbname(primary.database())
                    .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
                    .connect_timeout(Duration::from_secs(2));
                deadpool_writers(c, args, until)
            }
        };
        let marks = control
            .join()
            .map_err(|_| "the control thread panicked".to_string())??;
        let probe = match probe {
            Some(p) => p
                .join()
                .map_err(|_| "the probe thread panicked".to_string())??,
            None => Vec::new(),
        };
        Ok::<_, String>((writes?, marks, probe))
    })?;
    let (stop, promote, promoted) = marks;
    let floor = probe.iter().filter(|at| **at > promote).min();
    let first_after = writes.acked.iter().filter(|at| **at > promote).min();
    let after = writes.acked.iter().filter(|at| **at > promote).count();
    Ok(json!({
        "driver": driver.name(),
        "writers": args.writers,
        "pool_size": args.pool_size,
        "stop_ms": ms(promote - stop),
        "pg_promote_ms": ms(promoted - promote),
        "promotion_to_first_ack_ms": first_after.map(|f| ms(*f - promote)),
        "promoted_to_first_ack_ms": first_after.map(|f| ms(f.saturating_duration_since(promoted))),
        "server_floor_ms": floor.map(|f| ms(*f - promote)),
        "acked": writes.acked.len(),
        "acked_after_promotion": after,
        "failed": writes.failed,
    }))
}

/// The server's floor: one connection opened to the standby before the promotion (a
/// session survives it) inserts every millisecond until one is acknowledged after the
/// promotion; returns the acknowledgement instants.
fn floor_probe(o: PgOptions, until: Duration) -> Result<Vec<Instant>, String> {
    ioxide::block_on(async move {
        let conn = ioxide_pg::PgConnection::connect(&o)
            .await
            .map_err(|e| format!("probe: connecting to the standby: {e}"))?;
        let end = Instant::now() + until;
        let mut acked = Vec::new();
        let mut id = -1i64;
        while Instant::now() < end && acked.is_empty() {
            id -= 1;
            if conn
                .execute("INSERT INTO w (id) VALUES ($1)", &[&id])
                .await
                .is_ok()
            {
                acked.push(Instant::now());
            }
            ioxide::time::sleep(Duration::from_millis(1)).await;
        }
        conn.close().await;
        Ok(acked)
    })
}

/// `writers` insert loops on an ioxide reactor through one `PgPool` for `until`.
fn ioxide_writers(o: PgOptions, writers: usize, until: Duration) -> Result<Writes, String> {
    ioxide::block_on(async move {
        let pool = PgPool::start(&ioxide::Reactor::current(), o)
            .map_err(|e| format!("starting the ioxide-pg pool: {e}"))?;
        let writes = std::rc::Rc::new(std::cell::RefCell::new(Writes::default()));
        let end = Instant::now() + until;
        let tasks: Vec<_> = (0..writers as i64)
            .map(|w| {
                let pool = pool.clone();
                let writes = writes.clone();
                ioxide::spawn(async move {
                    let mut i = 0i64;
                    while Instant::now() < end && i < 1_000_000 {
                        let id = w * 1_000_000 + i;
                        i += 1;
                        match pool.execute("INSERT INTO w (id) VALUES ($1)", &[&id]).await {
                            Ok(_) => writes.borrow_mut().acked.push(Instant::now()),
                            Err(_) => {
                                writes.borrow_mut().failed += 1;
                                ioxide::time::sleep(RETRY_PAUSE).await;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        pool.close().await;
        let w = std::mem::take(&mut *writes.borrow_mut());
        Ok(w)
    })
}

/// The same loops on a current-thread tokio runtime through a deadpool-postgres pool.
fn deadpool_writers(
    c: tokio_postgres::Config,
    args: Args,
    until: Duration,
) -> Result<Writes, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    rt.block_on(async move {
        let mgr = Manager::from_config(
            c,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(args.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("building the deadpool pool: {e}"))?;
        let writes = Arc::new(Mutex::new(Writes::default()));
        let end = Instant::now() + until;
        let tasks: Vec<_> = (0..args.writers as i64)
            .map(|w| {
                let pool = pool.clone();
                let writes = writes.clone();
                tokio::spawn(async move {
                    let mut i = 0i64;
                    while Instant::now() < end && i < 1_000_000 {
                        let id = w * 1_000_000 + i;
                        i += 1;
                        let r = match pool.get().await {
                            Ok(client) => client
                                .execute("INSERT INTO w (id) VALUES ($1)", &[&id])
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        let ok = r.is_ok();
                        {
                            let mut wr = match writes.lock() {
                                Ok(g) => g,
                                Err(p) => p.into_inner(),
                            };
                            if ok {
                                wr.acked.push(Instant::now());
                            } else {
                                wr.failed += 1;
                            }
                        }
                        if !ok {
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await
                .map_err(|e| format!("a deadpool writer failed: {e}"))?;
        }
        pool.close();
        let mut g = match writes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Ok(std::mem::take(&mut *g))
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut runs: Vec<serde_json::Value> = Vec::new();
    for round in 0..args.rounds {
        // Alternate which driver goes first each round.
        let order = if round % 2 == 0 {
            [Driver::Ioxide, Driver::Deadpool]
        } else {
            [Driver::Deadpool, Driver::Ioxide]
        };
        for d in order {
            match run_one(d, args) {
                Ok(mut v) => {
                    v["round"] = json!(round);
                    println!("{v}");
                    runs.push(v);
                }
                Err(e) => {
                    eprintln!("pgfailover: {} round {round}: {e}", d.name());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let med = |d: Driver, key: &str| {
        median(
            runs.iter()
                .filter(|r| r["driver"] == d.name())
                .filter_map(|r| r[key].as_f64())
                .collect(),
        )
    };
    let ours = med(Driver::Ioxide, "promotion_to_first_ack_ms");
    let peer = med(Driver::Deadpool, "promotion_to_first_ack_ms");
    let ratio = ours.zip(peer).map(|(a, b)| a / b);
    println!(
        "{}",
        json!({
            "summary": true,
            "rounds": args.rounds,
            "writers": args.writers,
            "pool_size": args.pool_size,
            "ioxide-pg": {
                "promotion_to_first_ack_ms": ours,
                "promoted_to_first_ack_ms": med(Driver::Ioxide, "promoted_to_first_ack_ms"),
                "pg_promote_ms": med(Driver::Ioxide, "pg_promote_ms"),
                "server_floor_ms": med(Driver::Ioxide, "server_floor_ms"),
                "failed": med(Driver::Ioxide, "failed"),
                "acked": med(Driver::Ioxide, "acked"),
            },
            "deadpool": {
                "promotion_to_first_ack_ms": peer,
                "promoted_to_first_ack_ms": med(Driver::Deadpool, "promoted_to_first_ack_ms"),
                "pg_promote_ms": med(Driver::Deadpool, "pg_promote_ms"),
                "server_floor_ms": med(Driver::Deadpool, "server_floor_ms"),
                "failed": med(Driver::Deadpool, "failed"),
                "acked": med(Driver::Deadpool, "acked"),
            },
            "ratio_ours_over_peer": ratio,
            "target": "at most 0.5",
            "met": ratio.map(|r| r <= 0.5),
        })
    );
    if ours.is_none() || peer.is_none() {
        eprintln!("pgfailover: a driver acknowledged no write after the promotion");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
