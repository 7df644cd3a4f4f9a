//! A real PgBouncer (the installed `pgbouncer` program) in front of a [`Cluster`]: its own
//! temp directory, ini and auth file, a free loopback port, run as the server's OS user
//! when we are root (PgBouncer refuses root, as PostgreSQL does).

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::control::run_with_timeout;
use super::server::{free_port, prepare, temp_root, write_file};
use super::{encode, invalid, Cluster, SERVER_OS_USER};
use crate::binaries::binaries;
use crate::error::{Error, ErrorKind, Result};
use crate::os::{self, Pid};
use crate::reaper::Reaper;

/// The admin console's user (in `admin_users`), with its own password in the auth file.
const ADMIN_USER: &str = "pgbouncer_admin";
const ADMIN_PASSWORD: &str = "pgbouncer-admin-secret";
/// How long a start may take before we give up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stop may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one admin console command may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures and starts a [`PgBouncer`]. Get one from [`PgBouncer::builder`].
#[derive(Debug, Clone)]
pub struct PgBouncerBuilder {
    pool_mode: String,
    default_pool_size: u32,
    settings: Vec<(String, String)>,
}

impl Default for PgBouncerBuilder {
    fn default() -> Self {
        Self {
            pool_mode: "transaction".to_owned(),
            default_pool_size: 2,
            settings: Vec::new(),
        }
    }
}

impl PgBouncerBuilder {
    /// `pool_mode` (`session`, `transaction` or `statement`); default `transaction`.
    pub fn pool_mode(mut self, mode: impl Into<String>) -> Self {
        self.pool_mode = mode.into();
        self
    }

    /// `default_pool_size`: server connections per user and database; default 2.
    pub fn default_pool_size(mut self, size: u32) -> Self {
        self.default_pool_size = size;
        self
    }

    /// Any other `[pgbouncer]` setting (later ones win), e.g. `("query_wait_timeout", "5")`.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Starts PgBouncer in front of `cluster`'s test database, for its test role (SCRAM
    /// with the role's password; PgBouncer logs in to the server with the same), and waits
    /// until it accepts connections.
    ///
    /// # Errors
    /// [`ErrorKind::MissingBinaries`] when `pgbouncer` is not installed (`apt-get install
    /// pgbouncer`); [`ErrorKind::ServerExited`] with its log when it does not start.
    pub fn start(self, cluster: &Cluster) -> Result<PgBouncer> {
        for (key, value) in &self.settings {
            let plain = |s: &str| !s.contains(['\n', '\r']);
            if key.is_empty()
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || !plain(value)
            {
                return Err(invalid(format!("invalid pgbouncer setting {key:?}")));
            }
        }
        if !matches!(
            self.pool_mode.as_str(),
            "session" | "transaction" | "statement"
        ) {
            return Err(invalid(format!(
                "invalid pool_mode {:?}: session, transaction or statement",
                self.pool_mode
            )));
        }
        for s in [cluster.user(), cluster.password(), cluster.database()] {
            if s.contains(['"', '\'', '\n', '\r', ' ', '\\']) {
                return Err(invalid(
                    "PgBouncer's files cannot carry a user, password or database with quotes, \
                     spaces or line breaks",
                ));
            }
        }
        let program = find_pgbouncer()?;
        let run_as = cluster.run_as;
        let (temp, root) = temp_root("pgbouncer-", run_as)?;
        let run_dir = root.join("run");
        std::fs::create_dir(&run_dir)
            .map_err(|e| Error::io(format!("creating {}", run_dir.display()), e))?;
        let reaper = Reaper::spawn(&root, &run_dir)?;
        let port = free_port()?;
        let users = format!(
            "\"{}\" \"{}\"\n\"{ADMIN_USER}\" \"{ADMIN_PASSWORD}\"\n",
            cluster.user(),
            cluster.password()
        );
        write_file(&root.join("userlist.txt"), &users)?;
        let mut ini = format!(
            "[databases]\n\
             {db} = host=127.0.0.1 port={server_port} dbname={db}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {root}/userlist.txt\n\
             admin_users = {ADMIN_USER}\n\
             pool_mode = {mode}\n\
             default_pool_size = {size}\n\
             max_client_conn = 500\n\
             server_login_retry = 1\n\
             log_connections = 0\n\
             log_disconnections = 0\n",
            db = cluster.database(),
            server_port = cluster.port(),
            root = root.display(),
            mode = self.pool_mode,
            size = self.default_pool_size,
        );
        for (key, value) in &self.settings {
            ini.push_str(&format!("{key} = {value}\n"));
        }
        write_file(&root.join("pgbouncer.ini"), &ini)?;
        if let Some((uid, gid)) = run_as {
            for path in [
                run_dir.clone(),
                root.join("userlist.txt"),
                root.join("pgbouncer.ini"),
            ] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
                    Error::io(format!("chown {} to {SERVER_OS_USER}", path.display()), e)
                })?;
            }
        }
        let bouncer = PgBouncer {
            program,
            root,
            run_dir,
            port,
            user: cluster.user().to_owned(),
            password: cluster.password().to_owned(),
            database: cluster.database().to_owned(),
            run_as,
            child: Mutex::new(None),
            temp_dir: Some(temp),
            reaper: Some(reaper),
        };
        // From here on an early return drops `bouncer`, which stops it and cleans up.
        bouncer.start()?;
        Ok(bouncer)
    }
}

/// A running PgBouncer in front of a [`Cluster`]. Dropping it stops it (by pid) and deletes
/// its directory; if the owning process dies first, a watchdog does the same.
///
/// ```no_run
/// let cluster = pg_throwaway::Cluster::new()?;
/// let bouncer = pg_throwaway::PgBouncer::builder().default_pool_size(2).start(&cluster)?;
/// println!("connect to {}", bouncer.url());
/// bouncer.admin("PAUSE")?;
/// bouncer.admin("RESUME")?;
/// # Ok::<(), pg_throwaway::Error>(())
/// ```
#[derive(Debug)]
pub struct PgBouncer {
    program: PathBuf,
    root: PathBuf,
    /// PgBouncer's working directory: the watchdog finds it by it.
    run_dir: PathBuf,
    port: u16,
    user: String,
    password: String,
    database: String,
    run_as: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
    temp_dir: Option<tempfile::TempDir>,
    reaper: Option<Reaper>,
}

impl PgBouncer {
    /// A builder with the defaults: `pool_mode = transaction`, `default_pool_size = 2`.
    pub fn builder() -> PgBouncerBuilder {
        PgBouncerBuilder::default()
    }

    /// The TCP port PgBouncer listens on (127.0.0.1). Stable across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://user:password@127.0.0.1:port/database`: the cluster's test role and
    /// database, through PgBouncer.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            encode(&self.user),
            encode(&self.password),
            self.port,
            encode(&self.database)
        )
    }

    /// PgBouncer's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.lock();
        let c = child.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => {
                *child = None;
                None
            }
        }
    }

    /// Runs one admin console command (`PAUSE`, `RESUME`, `RECONNECT`, `SHOW POOLS`, …)
    /// through `psql` and returns its output (unaligned, tuples only, `|` between columns).
    ///
    /// # Errors
    /// [`ErrorKind::CommandFailed`] with PgBouncer's complaint; [`ErrorKind::Timeout`].
    pub fn admin(&self, command: &str) -> Result<String> {
        let bins = binaries()?;
        let mut cmd = Command::new(&bins.psql);
        cmd.args(["-X", "-A", "-t", "-q", "-w", "-c", command])
            .args(["-h", "127.0.0.1", "-U", ADMIN_USER, "-d", "pgbouncer"])
            .arg("-p")
            .arg(self.port.to_string());
        os::scrub_pg_env(&mut cmd);
        cmd.env("PGPASSWORD", ADMIN_PASSWORD)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (status, out, err) = run_with_timeout(cmd, b"", ADMIN_TIMEOUT)
            .map_err(|e| Error::new(e.kind(), format!("pgbouncer admin {command:?}: {e}")))?;
        if status.success() {
            Ok(out.trim().to_owned())
        } else {
            Err(Error::new(
                ErrorKind::CommandFailed,
                format!(
                    "pgbouncer admin {command:?} failed ({status}): {}",
                    err.trim()
                ),
            ))
        }
    }

    /// `PAUSE`: waits until every server connection is released, then holds new queries.
    ///
    /// # Errors
    /// As [`PgBouncer::admin`].
    pub fn pause(&self) -> Result<()> {
        self.admin("PAUSE").map(drop)
    }

    /// `RESUME` after [`PgBouncer::pause`].
    ///
    /// # Errors
    /// As [`PgBouncer::admin`].
    pub fn resume(&self) -> Result<()> {
        self.admin("RESUME").map(drop)
    }

    /// `RECONNECT`: closes each server connection once it is released, opening new ones.
    ///
    /// # Errors
    /// As [`PgBouncer::admin`].
    pub fn reconnect(&self) -> Result<()> {
        self.admin("RECONNECT").map(drop)
    }

    /// Starts PgBouncer unless it runs, and waits until it accepts TCP connections.
    ///
    /// # Errors
    /// [`ErrorKind::ServerExited`] with its log tail; [`ErrorKind::Timeout`].
    pub fn start(&self) -> Result<()> {
        if self.pid().is_some() {
            return Ok(());
        }
        let log_path = self.root.join("pgbouncer.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log fd", e))?;
        let mut cmd = Command::new(&self.program);
        cmd.arg(self.root.join("pgbouncer.ini"))
            .current_dir(&self.run_dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        let mut child = prepare(&mut cmd, self.run_as)
            .spawn()
            .map_err(|e| Error::io(format!("spawning {}", self.program.display()), e))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::new(
                    ErrorKind::ServerExited,
                    format!("pgbouncer exited during startup ({status}); log tail:"),
                )
                .with_detail(self.log_tail()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                *self.lock() = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("pgbouncer not listening after {START_TIMEOUT:?}; log tail:"),
                )
                .with_detail(self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Immediate shutdown (SIGTERM: every client and server connection is closed), waiting
    /// for the exit (SIGKILL after 10 s). A stopped PgBouncer stays stopped.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if it had to be killed.
    pub fn stop(&self) -> Result<()> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// [`stop`](PgBouncer::stop), then [`start`](PgBouncer::start) on the same port.
    ///
    /// # Errors
    /// As both.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// SIGKILL: PgBouncer dies at once, as in a crash; [`start`](PgBouncer::start) it again.
    ///
    /// # Errors
    /// As [`PgBouncer::stop`].
    pub fn kill(&self) -> Result<()> {
        self.signal_and_wait(libc::SIGKILL)
    }

    /// The last lines of PgBouncer's log, for failure messages.
    pub fn log_tail(&self) -> String {
        super::server::tail(&self.root.join("pgbouncer.log"), 40)
    }

    fn signal_and_wait(&self, sig: libc::c_int) -> Result<()> {
        let Some(mut child) = self.lock().take() else {
            return Ok(());
        };
        if let Ok(pid) = Pid::try_from(child.id()) {
            let _ = os::signal(pid, sig);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(Error::new(
            ErrorKind::Timeout,
            format!("pgbouncer did not exit within {STOP_TIMEOUT:?} of signal {sig}; killed"),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.signal_and_wait(libc::SIGTERM);
        if let Some(dir) = self.temp_dir.take() {
            let _ = dir.close();
        }
        if let Some(reaper) = self.reaper.take() {
            reaper.dismiss();
        }
    }
}

/// `pgbouncer` on `$PATH`, or where Debian installs it.
fn find_pgbouncer() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pgbouncer"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/sbin/pgbouncer"));
    candidates.push(PathBuf::from("/usr/bin/pgbouncer"));
    candidates
        .into_iter()
        .find(|p| Path::is_file(p))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::MissingBinaries,
                "pgbouncer is not installed (not on $PATH nor in /usr/sbin): \
                 `apt-get install pgbouncer`",
            )
        })
}
