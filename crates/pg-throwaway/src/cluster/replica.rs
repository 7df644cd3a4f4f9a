//! Streaming replication: a hot standby of a cluster (`pg_basebackup -R`), synchronous
//! replication, promotion.

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::server::{free_port, prepare, temp_base, write_file, State};
use super::{invalid, Cluster, SUPERUSER};
use crate::binaries::binaries;
use crate::error::{Error, ErrorKind, Result};
use crate::reaper::Reaper;

/// How long a new standby may take to start streaming.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Makes a hot standby of this (running) cluster: `pg_basebackup -R -X stream` as the
    /// server's OS user into a new temp directory, started on its own free port and Unix
    /// socket, streaming from this cluster (over loopback, as the trusted superuser). Returns
    /// once it accepts read-only connections and this cluster reports it streaming. The
    /// standby is a [`Cluster`] like any other (same role, password and database): stop,
    /// crash, [`promote`](Cluster::promote) it; dropping it stops it and deletes its directory.
    ///
    /// # Errors
    /// The failing step (`pg_basebackup`'s output, the server log tail).
    pub fn start_standby(&self) -> Result<Cluster> {
        let bins = binaries()?;
        let temp = tempfile::Builder::new()
            .prefix("pg-standby-")
            .tempdir_in(temp_base(self.run_as.is_some(), 11))
            .map_err(|e| Error::io("creating the standby temp dir", e))?;
        let root = temp
            .path()
            .canonicalize()
            .map_err(|e| Error::io("canonicalizing temp dir", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod 0700 {}", root.display()), e))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("chown {}", root.display()), e))?;
        }
        let data_dir = root.join("data");
        let reaper = Reaper::spawn(&root, &data_dir)?;
        let mut cmd = Command::new(bins.bin_dir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args(["-h", self.host(), "-p", &self.port.to_string()])
            .args([
                "-U",
                SUPERUSER,
                "-X",
                "stream",
                "-R",
                "-c",
                "fast",
                "--no-sync",
            ])
            .current_dir(&root);
        let out = prepare(&mut cmd, self.run_as)
            .output()
            .map_err(|e| Error::io("running pg_basebackup", e))?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                format!(
                    "pg_basebackup failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        let conf_path = data_dir.join("postgresql.conf");
        let base_conf = std::fs::read_to_string(&conf_path)
            .map_err(|e| Error::io(format!("reading {}", conf_path.display()), e))?;
        let mut standby = Cluster {
            auth: self.auth,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            port: 0,
            root,
            data_dir,
            major_version: self.major_version,
            run_as: self.run_as,
            tls: None,
            state: Mutex::new(State::default()),
            temp_dir: Mutex::new(Some(temp)),
            reaper: Mutex::new(Some(reaper)),
        };
        let mut attempt = 1;
        loop {
            standby.port = free_port()?;
            // Our block again, with the standby's port and socket directory (later lines win).
            write_file(&conf_path, &(base_conf.clone() + &standby.conf_block(&[])))?;
            match standby.launch(&mut standby.lock_state()) {
                Ok(()) => break,
                Err(e)
                    if attempt < 5
                        && e.kind() == ErrorKind::ServerExited
                        && e.message().contains("could not bind") =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        self.wait_streaming(1)?;
        Ok(standby)
    }

    /// Makes commits on this cluster wait for a standby (`synchronous_standby_names = '*'`,
    /// `synchronous_commit = on`, via `ALTER SYSTEM` and a reload), and waits until a
    /// standby is reported `sync`. Call it after [`start_standby`](Cluster::start_standby):
    /// a commit acknowledged from then on is on the standby too.
    ///
    /// # Errors
    /// As [`Cluster::psql`]; [`ErrorKind::Timeout`] if no standby becomes synchronous.
    pub fn make_synchronous(&self) -> Result<()> {
        self.psql_in(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*';\n\
             ALTER SYSTEM SET synchronous_commit = 'on';\n\
             SELECT pg_reload_conf();",
        )?;
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            let n = self.psql_in(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )?;
            if n.trim() != "0" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no synchronous standby after {STREAM_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Promotes this standby to a primary (`pg_promote()`, waiting for the end of
    /// recovery, at most 60 s).
    ///
    /// # Errors
    /// As [`Cluster::psql`]; [`ErrorKind::CommandFailed`] if the server is not a standby or
    /// did not finish promoting.
    pub fn promote(&self) -> Result<()> {
        let r = self.psql_in("postgres", "SELECT pg_promote(true, 60)")?;
        if r.trim() != "t" {
            return Err(Error::new(
                ErrorKind::CommandFailed,
                format!("pg_promote() returned {r:?}"),
            ));
        }
        Ok(())
    }

    /// Whether this server is a standby (`pg_is_in_recovery()`).
    ///
    /// # Errors
    /// As [`Cluster::psql`].
    pub fn is_standby(&self) -> Result<bool> {
        Ok(self
            .psql_in("postgres", "SELECT pg_is_in_recovery()")?
            .trim()
            == "t")
    }

    fn wait_streaming(&self, want: usize) -> Result<()> {
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            let n = self.psql_in(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )?;
            if n.trim()
                .parse::<usize>()
                .map_err(|_| invalid("bad count"))?
                >= want
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("standby not streaming after {STREAM_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
