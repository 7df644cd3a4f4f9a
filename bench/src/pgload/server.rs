//! The server's CPU over the measured window, when PostgreSQL runs on this machine.
//!
//! On a machine where the server shares the cores with the load generator, the server's CPU
//! per query bounds every driver's queries/s: with C cores, no client can go past
//! C ÷ (server CPU per query), however little CPU the client itself uses. pgload reports the
//! server's share beside the client's (`server_cpu_us_per_query`) so a run shows that bound
//! instead of leaving it to an argument.
//!
//! Finding the server: `PGLOAD_SERVER_PID` (the postmaster's PID, the first line of
//! `$PGDATA/postmaster.pid`) when set; otherwise, for a loopback or Unix-socket server, one
//! short connection asks for `pg_backend_pid()` and the postmaster is that backend's parent.
//! The server's CPU is then the postmaster's plus every child's (backends, background
//! workers), read from `/proc/<pid>/sched` (`se.sum_exec_runtime`, ns resolution; it covers
//! the main thread only, which is all a PostgreSQL process has) where readable, else
//! `/proc/<pid>/stat` (utime + stime, 10 ms ticks). A backend that exits inside
//! the window drops out of the end sample, so the figure is only meaningful in steady state,
//! which is what the window measures. Nothing here fails a run: without a local server the
//! field is absent.
//!
//! A pooler in between (bench/pgbouncer.sh): `PGLOAD_BOUNCER_PID` names its process, whose
//! CPU over the window is reported on its own (`bouncer_cpu_us_per_query`), read the same
//! way (PgBouncer is one thread).

use ioxide_pg::{Host, PgOptions};
use std::sync::OnceLock;
use std::time::Duration;

/// The server found for this run, if any.
static SERVER: OnceLock<Option<Server>> = OnceLock::new();

/// A PostgreSQL server running on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    postmaster: u32,
}

/// Looks for the server once per process (before the load starts); later calls are free.
pub fn init(o: &PgOptions) {
    SERVER.get_or_init(|| find(o));
}

/// The server's CPU time so far (postmaster + children), when a local server was found.
pub fn cpu() -> Option<Duration> {
    SERVER.get().copied().flatten().and_then(|s| s.cpu())
}

/// The CPU of the postmaster's children that have exited and been reaped (its `cutime` +
/// `cstime`, 10 ms ticks), when a local server was found. Added to [`cpu`]'s difference it
/// covers a backend that starts and ends inside the window (pgbulk's psql runs).
pub fn exited_cpu() -> Option<Duration> {
    let s = SERVER.get().copied().flatten()?;
    Some(Duration::from_secs_f64(
        stat(s.postmaster)?.child_ticks as f64 / USER_HZ,
    ))
}

/// The CPU time so far of the process in `PGLOAD_BOUNCER_PID` (a connection pooler such
/// as PgBouncer between us and the server), when set and alive.
pub fn bouncer_cpu() -> Option<Duration> {
    let pid = std::env::var("PGLOAD_BOUNCER_PID")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())?;
    let st = stat(pid)?;
    Some(sched_runtime(pid).unwrap_or_else(|| Duration::from_secs_f64(st.ticks as f64 / USER_HZ)))
}

fn find(o: &PgOptions) -> Option<Server> {
    if let Some(pid) = std::env::var("PGLOAD_SERVER_PID")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        return is_postgres(pid).then_some(Server { postmaster: pid });
    }
    let local = match o.get_host() {
        Host::Unix(_) => true,
        Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    };
    if !local {
        return None;
    }
    let parent = backend_parent(o)?;
    is_postgres(parent).then_some(Server { postmaster: parent })
}

/// One short tokio-postgres connection asks for its backend's PID; that backend's parent
/// (the postmaster) is read while the connection, and so the backend, is still open. A
/// backend PID that is not a local `postgres` process (a server in another PID namespace)
/// yields nothing.
fn backend_parent(o: &PgOptions) -> Option<u32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let config = super::peers::tp_config(o);
        let connect = config.connect(tokio_postgres::NoTls);
        let (client, conn) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .ok()?
            .ok()?;
        let driver = tokio::spawn(conn);
        let row = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()?;
        let pid = u32::try_from(row.try_get::<_, i32>(0).ok()?).ok()?;
        let parent = is_postgres(pid)
            .then(|| stat(pid))
            .flatten()
            .map(|s| s.ppid);
        drop(client);
        let _ = driver.await;
        parent
    })
}

/// Whether `pid` is a live process named `postgres` (a PID from a remote server or a stale
/// pid file is not used).
fn is_postgres(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "postgres")
}

/// The fields of `/proc/<pid>/stat` we use.
struct Stat {
    ppid: u32,
    ticks: u64,
    /// cutime + cstime: reaped children's CPU.
    child_ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(s: &str) -> Option<Stat> {
    // The command name is in parentheses and may hold spaces and parentheses itself: the
    // fields count from the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14) (fields
    // 3, 4, 14–17 of proc(5)).
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        child_ticks: f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?,
    })
}

/// `se.sum_exec_runtime` from `/proc/<pid>/sched`: the main thread's CPU time (all a
/// PostgreSQL process has).
fn sched_runtime(pid: u32) -> Option<Duration> {
    parse_sched(&std::fs::read_to_string(format!("/proc/{pid}/sched")).ok()?)
}

/// The value is printed in milliseconds with six decimals (nanosecond resolution).
fn parse_sched(s: &str) -> Option<Duration> {
    let line = s.lines().find(|l| l.starts_with("se.sum_exec_runtime"))?;
    let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1e3))
}

impl Server {
    fn cpu(&self) -> Option<Duration> {
        let of = |pid: u32, st: &Stat| {
            sched_runtime(pid).unwrap_or_else(|| Duration::from_secs_f64(st.ticks as f64 / USER_HZ))
        };
        let own = stat(self.postmaster)?;
        let mut total = of(self.postmaster, &own);
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(st) = stat(pid).filter(|st| st.ppid == self.postmaster) {
                total += of(pid, &st);
            }
        }
        Some(total)
    }
}

/// The unit of `utime`/`stime` in `/proc/<pid>/stat`: `USER_HZ`, part of the kernel ABI and
/// 100 on x86 and arm64 whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_parent_and_a_growing_cpu_time() {
        let me = std::process::id();
        let st = stat(me).expect("our own /proc/<pid>/stat");
        assert_eq!(st.ppid, std::os::unix::process::parent_id());
        // utime + stime cover every thread of the process (this test runs on a worker
        // thread; `/proc/<pid>/sched` would show the main thread only — fine for the
        // single-threaded PostgreSQL processes it is used for).
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(0u64);
        }
        let after = stat(me).expect("stat again").ticks;
        assert!(after > st.ticks, "{} then {after} ticks", st.ticks);
        // Not a PostgreSQL server: never used as one.
        assert!(!is_postgres(me));
    }

    #[test]
    fn parses_stat_with_a_name_holding_spaces_and_parentheses_and_sched_in_milliseconds() {
        let line = "4242 (postgres: a (b) c) S 77 4242 4242 0 -1 4194560 100 0 0 0 \
                    123 45 0 0 20 0 1 0 100 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.ppid, 77);
        assert_eq!(st.ticks, 168);
        assert!(parse_stat("4242 (no fields)").is_none());

        let sched = "postgres (4242, #threads: 1)\n\
                     -------------------------------------------------------------------\n\
                     se.exec_start                                :      40248420.089360\n\
                     se.sum_exec_runtime                          :          1234.567890\n";
        let d = parse_sched(sched).unwrap();
        let want = Duration::from_nanos(1_234_567_890);
        assert!(d.abs_diff(want) < Duration::from_micros(1), "{d:?}");
        assert!(parse_sched("se.vruntime : 1.0\n").is_none());
    }
}
