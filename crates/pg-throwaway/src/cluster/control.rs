//! What a caller does to a running cluster: SQL through `psql`, stop/start/restart/crash,
//! freeze/thaw, and backend bookkeeping.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{halt, thaw_locked, STOP_TIMEOUT};
use super::{quote_literal, Cluster, SUPERUSER};
use crate::binaries::binaries;
use crate::error::{Error, ErrorKind, Result};
use crate::os::{self, Pid};

/// How long one `psql` run may take before it is killed.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

/// Who `psql` connects as, and how.
enum Via<'a> {
    /// The superuser over the Unix socket (always trusted).
    Socket { database: &'a str },
    /// Any role over TCP 127.0.0.1, with `PGPASSWORD`.
    Tcp { user: &'a str, password: &'a str },
}

impl Cluster {
    /// Runs `sql` as the superuser (`postgres`) in the test database, over the Unix socket,
    /// and returns stdout trimmed. Output is unaligned tuples only (`-A -t -q`): `SELECT 1`
    /// gives `"1"`; rows are separated by newlines, columns by `|`. `sql` is fed on stdin, so
    /// several statements (and `CREATE DATABASE`) are fine; the first error stops the run.
    ///
    /// Objects created here belong to `postgres`; default privileges grant the test role
    /// full access to new tables, sequences, functions and types.
    ///
    /// # Errors
    /// [`ErrorKind::CommandFailed`] with psql's stderr (the server's error text), or
    /// [`ErrorKind::Timeout`] after 60 s.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_in(&self.database, sql)
    }

    /// Like [`Cluster::psql`] but in another database (still as the superuser).
    ///
    /// # Errors
    /// As [`Cluster::psql`].
    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String> {
        self.run_psql(Via::Socket { database }, sql)
    }

    /// Runs `sql` as `user` with `password` over TCP `127.0.0.1:port`, in the test
    /// database: goes through the cluster's `pg_hba.conf` method, so it proves that
    /// authentication works (or fails, with `password authentication failed` in the error).
    ///
    /// # Errors
    /// As [`Cluster::psql`].
    pub fn psql_as(&self, user: &str, password: &str, sql: &str) -> Result<String> {
        self.run_psql(Via::Tcp { user, password }, sql)
    }

    fn run_psql(&self, via: Via<'_>, sql: &str) -> Result<String> {
        let bins = binaries()?;
        let mut cmd = Command::new(&bins.psql);
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ])
        .arg("-p")
        .arg(self.port.to_string());
        os::scrub_pg_env(&mut cmd);
        cmd.env("PGPASSFILE", self.root.join("no-such-pgpass"))
            .env("PGAPPNAME", "pg-throwaway")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = match via {
            Via::Socket { database } => {
                cmd.arg("-h")
                    .arg(&self.root)
                    .args(["-U", SUPERUSER, "-d", database]);
                format!("psql as {SUPERUSER} via the socket, database {database}")
            }
            Via::Tcp { user, password } => {
                cmd.args(["-h", self.host(), "-U", user, "-d", &self.database])
                    .env("PGPASSWORD", password)
                    .env("PGSSLMODE", "disable");
                format!("psql as {user} via TCP {}:{}", self.host(), self.port)
            }
        };
        let (status, stdout, stderr) = run_with_timeout(cmd, sql.as_bytes(), PSQL_TIMEOUT)
            .map_err(|e| Error::new(e.kind(), format!("{what} ({}): {e}", bins.psql.display())))?;
        if status.success() {
            Ok(stdout.trim().to_owned())
        } else {
            Err(Error::new(
                ErrorKind::CommandFailed,
                format!("{what} failed ({status}): {}", stderr.trim()),
            ))
        }
    }

    /// Whether the postmaster is running (frozen counts as running).
    pub fn is_running(&self) -> bool {
        self.lock_state().pid().is_some()
    }

    /// Whether [`Cluster::freeze`] is in effect.
    pub fn is_frozen(&self) -> bool {
        self.lock_state().frozen.is_some()
    }

    /// Fast shutdown (SIGINT: running transactions are rolled back, clients get
    /// `57P01 terminating connection due to administrator command`). Waits for the exit.
    /// A stopped cluster stays stopped. Thaws first if frozen.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if the server needed SIGKILL.
    pub fn stop(&self) -> Result<()> {
        let mut st = self.lock_state();
        halt(&mut st, &self.data_dir, libc::SIGINT, STOP_TIMEOUT)
    }

    /// Starts the stopped server again on the same port and directory; waits until it is
    /// ready (after [`Cluster::crash`] that includes crash recovery). No-op if running.
    ///
    /// # Errors
    /// [`ErrorKind::ServerExited`] / [`ErrorKind::Timeout`] with the server log tail.
    pub fn start(&self) -> Result<()> {
        let mut st = self.lock_state();
        self.launch(&mut st)
    }

    /// [`Cluster::stop`] then [`Cluster::start`]; existing connections are dropped.
    ///
    /// # Errors
    /// As `stop` and `start`.
    pub fn restart(&self) -> Result<()> {
        let mut st = self.lock_state();
        halt(&mut st, &self.data_dir, libc::SIGINT, STOP_TIMEOUT)?;
        self.launch(&mut st)
    }

    /// Immediate shutdown (SIGQUIT to the postmaster, as `pg_ctl stop -m immediate`):
    /// every backend dies at once without a clean goodbye, no checkpoint is written, and the
    /// next [`Cluster::start`] runs crash recovery. (A SIGKILL of the postmaster alone would
    /// orphan its backends and block the restart, so this is the crash we simulate.)
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if the server needed SIGKILL.
    pub fn crash(&self) -> Result<()> {
        let mut st = self.lock_state();
        halt(&mut st, &self.data_dir, libc::SIGQUIT, STOP_TIMEOUT)
    }

    /// Stops the whole server with SIGSTOP: the postmaster first (so it cannot fork new
    /// backends), then each child. The kernel still completes TCP handshakes into the
    /// listen backlog, so new connections appear to connect but get no answer, and queries
    /// on existing connections hang until [`Cluster::thaw`]. Idempotent.
    ///
    /// # Errors
    /// If the server is not running.
    pub fn freeze(&self) -> Result<()> {
        let mut st = self.lock_state();
        if st.frozen.is_some() {
            return Ok(());
        }
        let pm = st
            .pid()
            .and_then(|p| Pid::try_from(p).ok())
            .ok_or_else(|| Error::new(ErrorKind::ServerExited, "freeze: server is not running"))?;
        os::signal(pm, libc::SIGSTOP).map_err(|e| Error::io("SIGSTOP to the postmaster", e))?;
        // Enumerate children only once the postmaster really is stopped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while os::process_state(pm) != Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let children = os::children_of(pm);
        for &child in &children {
            let _ = os::signal(child, libc::SIGSTOP);
        }
        st.frozen = Some(children);
        Ok(())
    }

    /// Undoes [`Cluster::freeze`]: SIGCONT to the children, then the postmaster. Idempotent.
    pub fn thaw(&self) {
        thaw_locked(&mut self.lock_state());
    }

    /// Terminates every client backend except the one running this query (as
    /// `pg_terminate_backend`, waiting up to 5 s for each to exit on PostgreSQL 14+) and
    /// returns how many were terminated. Includes other `psql` control sessions.
    ///
    /// # Errors
    /// As [`Cluster::psql`].
    pub fn terminate_backends(&self) -> Result<usize> {
        let call = if self.major_version >= 14 {
            "pg_terminate_backend(pid, 5000)"
        } else {
            "pg_terminate_backend(pid)"
        };
        // OFFSET 0 fences the subquery so the filter runs before the side effect.
        let sql = format!(
            "SELECT count(*) FILTER (WHERE t) FROM (SELECT {call} AS t FROM (\
               SELECT pid FROM pg_stat_activity \
               WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() OFFSET 0) s) r"
        );
        parse_count(&self.psql_in("postgres", &sql)?)
    }

    /// How many client backends are connected, not counting the session asking. This
    /// includes `psql` control sessions running concurrently in other threads; prefer
    /// [`Cluster::backend_count_for`] with the test role to count a driver's connections.
    ///
    /// # Errors
    /// As [`Cluster::psql`].
    pub fn backend_count(&self) -> Result<usize> {
        self.count_backends("")
    }

    /// How many client backends are connected as `user` (any database).
    ///
    /// # Errors
    /// As [`Cluster::psql`].
    pub fn backend_count_for(&self, user: &str) -> Result<usize> {
        self.count_backends(&format!(" AND usename = {}", quote_literal(user)))
    }

    fn count_backends(&self, filter: &str) -> Result<usize> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid(){filter}"
        );
        parse_count(&self.psql_in("postgres", &sql)?)
    }
}

fn parse_count(text: &str) -> Result<usize> {
    text.trim().parse().map_err(|_| {
        Error::new(
            ErrorKind::CommandFailed,
            format!("expected a count from psql, got {text:?}"),
        )
    })
}

/// Runs `cmd` feeding `input` on stdin, collecting stdout and stderr, killing it after
/// `timeout`. Separate threads keep any pipe from filling up and blocking the child.
fn run_with_timeout(
    mut cmd: Command,
    input: &[u8],
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    let mut child = cmd.spawn().map_err(|e| Error::io("spawn", e))?;
    let stdin = child.stdin.take();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // EPIPE if the child exits early: its stderr explains why.
            let _ = stdin.write_all(&input);
        }
    });
    let readers = [
        child.stdout.take().map(reader),
        child.stderr.take().map(reader),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => return Err(Error::io("waiting for the child", e)),
        }
    };
    let _ = writer.join();
    let [out, err] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    match status {
        Some(status) => Ok((status, out, err)),
        None => Err(Error::new(
            ErrorKind::Timeout,
            format!("killed after {timeout:?}; stderr so far: {}", err.trim()),
        )),
    }
}

fn reader<R: Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}
