//! Streaming replication: a hot standby of a cluster (`pg_basebackup -R`), synchronous
//! replication, promotion.

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::server::{prepare, temp_root, write_file, State};
use super::{invalid, Cluster, SUPERUSER};
use crate::binaries::binaries;
use crate::error::{Error, ErrorKind, Result};
use crate::reaper::Reaper;

/// `pg_basebackup -R -X stream` of `source` into `data_dir` (as the server's OS user, from
/// `cwd`): a standby's data directory, `standby.signal` and `primary_conninfo` included.
fn base_backup(source: &Cluster, data_dir: &std::path::Path, cwd: &std::path::Path) -> Result<()> {
    let bins = binaries()?;
    let mut cmd = Command::new(bins.bin_dir.join("pg_basebackup"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-h", source.host(), "-p", &source.port.to_string()])
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
        .current_dir(cwd);
    run_tool(&mut cmd, source.run_as, "pg_basebackup")
}

/// Runs a server tool (`pg_basebackup`, `pg_rewind`) as the server's OS user; its output in
/// the error when it fails.
fn run_tool(cmd: &mut Command, run_as: Option<(u32, u32)>, what: &str) -> Result<()> {
    let out = prepare(cmd, run_as)
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::CommandFailed,
        format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

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
        let (temp, root) = temp_root("pg-standby-", self.run_as)?;
        let data_dir = root.join("data");
        let reaper = Reaper::spawn(&root, &data_dir)?;
        base_backup(self, &data_dir, &root)?;
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
            settings: self.settings.clone(),
            state: Mutex::new(State::default()),
            temp_dir: Mutex::new(Some(temp)),
            reaper: Mutex::new(Some(reaper)),
        };
        // Our block again, with the standby's port and socket directory (later lines win).
        standby.launch_on_free_port(&conf_path, &base_conf, "")?;
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

    /// Makes this former primary a standby of `primary` (typically its own promoted standby)
    /// with `pg_rewind`: only the blocks that diverged after the promotion are copied back,
    /// so it is fast, but `pg_rewind` requires this cluster to have been built with
    /// `.setting("wal_log_hints", "on")` and both servers with
    /// `.setting("full_page_writes", "on")` (pg-throwaway turns full-page writes off for
    /// speed). Stops this server first if it is running (fast shutdown; `pg_rewind` itself
    /// runs crash recovery after an immediate stop), rewinds it as the server's OS user,
    /// writes `standby.signal` and a `primary_conninfo` pointing at `primary` (`-R`), puts
    /// back this cluster's own port and socket directory (`pg_rewind` copies the source's
    /// `postgresql.conf`), starts it, and waits until `primary` reports it streaming.
    ///
    /// # Errors
    /// [`ErrorKind::CommandFailed`] with `pg_rewind`'s output (for instance when
    /// `wal_log_hints` was off: then use [`rebuild_as_standby_of`](Cluster::rebuild_as_standby_of));
    /// [`ErrorKind::Timeout`] if it does not start streaming within 60 s.
    pub fn rewind_as_standby_of(&self, primary: &Cluster) -> Result<()> {
        self.stop()?;
        let bins = binaries()?;
        let source = format!(
            "host={} port={} user={SUPERUSER} dbname=postgres",
            primary.host(),
            primary.port
        );
        let mut cmd = Command::new(bins.bin_dir.join("pg_rewind"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("--source-server")
            .arg(&source)
            .args(["-R", "--no-sync"])
            .current_dir(&self.root);
        run_tool(&mut cmd, self.run_as, "pg_rewind")?;
        self.rejoin(primary)
    }

    /// Makes this former primary a standby of `primary` by rebuilding it: stops it if it is
    /// running, deletes its data directory, takes a fresh `pg_basebackup -R` of `primary`
    /// into the same place, restores this cluster's port and socket directory, starts it
    /// and waits until `primary` reports it streaming. Slower than
    /// [`rewind_as_standby_of`](Cluster::rewind_as_standby_of) (a full copy) but needs no
    /// `wal_log_hints`.
    ///
    /// # Errors
    /// The failing step (`pg_basebackup`'s output, the server log tail);
    /// [`ErrorKind::Timeout`] if it does not start streaming within 60 s.
    pub fn rebuild_as_standby_of(&self, primary: &Cluster) -> Result<()> {
        self.stop()?;
        std::fs::remove_dir_all(&self.data_dir)
            .map_err(|e| Error::io(format!("removing {}", self.data_dir.display()), e))?;
        base_backup(primary, &self.data_dir, &self.root)?;
        self.rejoin(primary)
    }

    /// After a rewind or a rebuild: our own settings block again (the copied
    /// `postgresql.conf` carries the source's port), then start and wait for streaming.
    fn rejoin(&self, primary: &Cluster) -> Result<()> {
        let conf_path = self.data_dir.join("postgresql.conf");
        let base_conf = std::fs::read_to_string(&conf_path)
            .map_err(|e| Error::io(format!("reading {}", conf_path.display()), e))?;
        write_file(&conf_path, &(base_conf + &self.conf_block(&self.settings)))?;
        self.start()?;
        self.wait_receiving()?;
        primary.wait_streaming(1)
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

    /// Waits until this standby's WAL receiver reports `streaming`.
    fn wait_receiving(&self) -> Result<()> {
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            let n = self.psql_in(
                "postgres",
                "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            )?;
            if n.trim() == "1" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the rejoined standby is not streaming after {STREAM_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
