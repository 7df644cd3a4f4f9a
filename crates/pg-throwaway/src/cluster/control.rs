//! What a caller does to a running cluster: SQL through `psql`, stop/start/restart/crash,
//! freeze/thaw, and backend bookkeeping.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{check_hba_lines, halt, hba_conf, thaw_locked, STOP_TIMEOUT};
use super::{quote_literal, Cluster, SUPERUSER};
use crate::binaries::binaries;
use crate::error::{Error, ErrorKind, Result};
use crate::os::{self, Pid};
use crate::tls::ServerCert;

/// How long one `psql` run may take before it is killed.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Cluster::reload`] waits for the postmaster to re-read its files.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Who `psql` connects as, and how.
enum Via<'a> {
    /// The superuser over the Unix socket (always trusted).
    Socket { database: &'a str },
    /// Any role over TCP 127.0.0.1, with `PGPASSWORD`.
    Tcp { user: &'a str, password: &'a str },
    /// Any role over TCP with extra libpq connection parameters (TLS options).
    Conninfo {
        user: &'a str,
        password: Option<&'a str>,
        params: &'a [(&'a str, &'a str)],
    },
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

    /// Runs `sql` as `user` over TCP with extra libpq connection parameters, e.g. TLS:
    /// `&[("sslmode", "verify-full"), ("sslrootcert", ca), ("sslcert", crt), ("sslkey", key)]`.
    /// `host` (default `127.0.0.1`), `port` and `dbname` may be overridden the same way;
    /// `sslmode` is libpq's default (`prefer`) unless given. `password` goes in `PGPASSWORD`.
    /// libpq insists that a client key file is not readable by group or others: the keys in
    /// [`Cluster::tls`] are mode 0600.
    ///
    /// # Errors
    /// As [`Cluster::psql`]; a TLS or authentication failure is [`ErrorKind::CommandFailed`]
    /// with libpq's message (e.g. `certificate verify failed`, `pg_hba.conf rejects
    /// connection`).
    pub fn psql_with(
        &self,
        user: &str,
        password: Option<&str>,
        params: &[(&str, &str)],
        sql: &str,
    ) -> Result<String> {
        self.run_psql(
            Via::Conninfo {
                user,
                password,
                params,
            },
            sql,
        )
    }

    /// Rewrites `pg_hba.conf` with `lines` for everyone but the superuser (as
    /// [`crate::ClusterBuilder::hba`]) and reloads the server; returns once new connections
    /// get the new rules. A file the server would not load is refused (the old one stays),
    /// with the server's complaint.
    ///
    /// # Errors
    /// [`ErrorKind::CommandFailed`] naming the bad line; as [`Cluster::reload`].
    pub fn set_hba<I, S>(&self, lines: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let lines: Vec<String> = lines.into_iter().map(Into::into).collect();
        check_hba_lines(&lines)?;
        let path = self.data_dir.join("pg_hba.conf");
        let old = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        std::fs::write(&path, hba_conf(self.auth, Some(&lines)))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        let complaints = self.psql_in(
            "postgres",
            "SELECT line_number || ': ' || error FROM pg_hba_file_rules WHERE error IS NOT NULL",
        );
        match complaints {
            Ok(c) if c.is_empty() => self.reload(),
            other => {
                let _ = std::fs::write(&path, old);
                Err(Error::new(
                    ErrorKind::CommandFailed,
                    format!(
                        "set_hba: the server would not load the new pg_hba.conf (kept the old \
                         one): {}",
                        match other {
                            Ok(c) => c,
                            Err(e) => e.to_string(),
                        }
                    ),
                ))
            }
        }
    }

    /// Makes the server present another of its certificates ([`Cluster::tls`]) to new
    /// connections (`ALTER SYSTEM` + reload; survives restarts). Existing connections keep
    /// theirs.
    ///
    /// # Errors
    /// [`ErrorKind::CommandFailed`] if the cluster was started without TLS; as
    /// [`Cluster::reload`].
    pub fn set_server_cert(&self, which: ServerCert) -> Result<()> {
        let Some(files) = &self.tls else {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                "set_server_cert: the cluster was started without ClusterBuilder::tls",
            ));
        };
        let cert = files.server_cert(which).to_string_lossy().into_owned();
        let key = files.server_key(which).to_string_lossy().into_owned();
        self.psql_in(
            "postgres",
            &format!(
                "ALTER SYSTEM SET ssl_cert_file = {};\nALTER SYSTEM SET ssl_key_file = {};",
                quote_literal(&cert),
                quote_literal(&key)
            ),
        )?;
        self.reload()?;
        let shown = self.psql_in("postgres", "SHOW ssl_cert_file")?;
        if shown == cert {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::CommandFailed,
                format!("set_server_cert({which:?}): the server still presents {shown}; log tail:"),
            )
            .with_detail(self.log_tail()))
        }
    }

    /// Reloads the configuration files (`pg_reload_conf()`, i.e. SIGHUP) and waits until
    /// the postmaster has re-read them, so new connections see the change (checked through
    /// `pg_conf_load_time()` of new sessions). A setting that needs a restart stays pending.
    ///
    /// # Errors
    /// As [`Cluster::psql`]; [`ErrorKind::Timeout`] if the reload is not seen within 10 s.
    pub fn reload(&self) -> Result<()> {
        let before = self.psql_in("postgres", "SELECT pg_conf_load_time()")?;
        self.psql_in("postgres", "SELECT pg_reload_conf()")?;
        let check = format!(
            "SELECT pg_conf_load_time() > {}::timestamptz",
            quote_literal(&before)
        );
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            if self.psql_in("postgres", &check)? == "t" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("reload not seen within {RELOAD_TIMEOUT:?}; server log tail:"),
                )
                .with_detail(self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
            Via::Conninfo {
                user,
                password,
                params,
            } => {
                let port = self.port.to_string();
                let mut all: Vec<(&str, &str)> = vec![
                    ("host", self.host()),
                    ("port", &port),
                    ("dbname", &self.database),
                    ("user", user),
                    ("connect_timeout", "10"),
                ];
                for &(key, value) in params {
                    match all.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => all.push((key, value)),
                    }
                }
                let conninfo: Vec<String> = all
                    .iter()
                    .map(|(k, v)| format!("{k}={}", conninfo_quote(v)))
                    .collect();
                cmd.arg("-d").arg(conninfo.join(" "));
                if let Some(password) = password {
                    cmd.env("PGPASSWORD", password);
                }
                let shown: Vec<String> = all
                    .iter()
                    .filter(|(k, _)| !k.contains("password"))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("psql {}", shown.join(" "))
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

/// A libpq conninfo value: single-quoted, with `\\` and `'` escaped.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
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
pub(super) fn run_with_timeout(
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
