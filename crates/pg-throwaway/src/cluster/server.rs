//! Creating a cluster and driving its postmaster: initdb, configuration files, launch,
//! readiness, shutdown.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{invalid, quote_ident, quote_literal};
use super::{Cluster, ClusterBuilder, SERVER_OS_USER, SUPERUSER};
use crate::binaries::binaries;
use crate::error::{Error, ErrorKind, Result};
use crate::os::{self, Pid};
use crate::reaper::Reaper;
use crate::tls::{ServerCert, TlsFiles, TlsSetup};

/// How long a start (including crash recovery) may take before we give up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before we escalate to immediate, then SIGKILL.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at finding a free port if another process grabs ours between probe and bind.
const PORT_ATTEMPTS: u32 = 5;
/// The Unix socket path (`<root>/.s.PGSQL.<port>`) must fit in `sun_path` (108 bytes).
const MAX_ROOT_LEN: usize = 80;
/// Longest temp dir name prefix (the socket path must stay short, see `MAX_ROOT_LEN`).
const MAX_PREFIX_LEN: usize = 24;

/// The postmaster as this process sees it.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The postmaster, our direct child, while it runs.
    pub(super) postmaster: Option<Child>,
    /// The children we stopped with SIGSTOP, while frozen.
    pub(super) frozen: Option<Vec<Pid>>,
}

impl State {
    /// The postmaster's pid if it is still running (reaps it if it exited on its own).
    pub(crate) fn pid(&mut self) -> Option<u32> {
        let child = self.postmaster.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => {
                self.postmaster = None;
                self.frozen = None;
                None
            }
        }
    }
}

pub(super) fn create(b: ClusterBuilder) -> Result<Cluster> {
    for (key, _) in &b.settings {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(invalid(format!(
                "invalid postgresql.conf setting name {key:?}"
            )));
        }
    }
    if b.dir_prefix.is_empty()
        || b.dir_prefix.len() > MAX_PREFIX_LEN
        || !b
            .dir_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(format!(
            "invalid temp dir prefix {:?}: use 1 to {MAX_PREFIX_LEN} ASCII letters, digits,              `-` or `_`",
            b.dir_prefix
        )));
    }
    if b.locale.is_empty()
        || !b
            .locale
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(invalid(format!("invalid locale {:?}", b.locale)));
    }
    if let Some(lines) = &b.hba {
        check_hba_lines(lines)?;
    }
    let bins = binaries()?;
    let run_as = if os::running_as_root() {
        Some(os::lookup_user(SERVER_OS_USER).ok_or_else(|| {
            Error::new(
                ErrorKind::MissingBinaries,
                format!(
                    "running as root, but there is no `{SERVER_OS_USER}` OS user to run the \
                     server as (PostgreSQL refuses root); install the server package \
                     (`apt-get install postgresql`) which creates it"
                ),
            )
        })?)
    } else {
        None
    };

    let (temp, root) = temp_root(&b.dir_prefix, run_as)?;
    let data_dir = root.join("data");
    // The watchdog comes first, so even a kill during initdb leaves nothing behind.
    let reaper = Reaper::spawn(&root, &data_dir)?;
    let tls = match &b.tls {
        Some(setup) => Some(make_tls_files(setup, &root.join("tls"), &b.user, run_as)?),
        None => None,
    };
    let tls_conf = match (&b.tls, &tls) {
        (Some(setup), Some(files)) => tls_conf_block(files, setup.presented()),
        _ => String::new(),
    };

    let mut initdb = Command::new(&bins.initdb);
    initdb
        .arg("-D")
        .arg(&data_dir)
        .args(["-U", SUPERUSER, "-A", "trust", "--no-sync", "-E", "UTF8"])
        .arg(format!("--locale={}", b.locale))
        .current_dir(&root);
    let out = prepare(&mut initdb, run_as)
        .output()
        .map_err(|e| Error::io(format!("running {}", bins.initdb.display()), e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::CommandFailed,
            format!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    let conf_path = data_dir.join("postgresql.conf");
    let base_conf = std::fs::read_to_string(&conf_path)
        .map_err(|e| Error::io(format!("reading {}", conf_path.display()), e))?;
    write_file(
        &data_dir.join("pg_hba.conf"),
        &hba_conf(b.auth, b.hba.as_deref()),
    )?;
    let major_version = std::fs::read_to_string(data_dir.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
        .unwrap_or(0);

    let mut cluster = Cluster {
        auth: b.auth,
        user: b.user,
        password: b.password,
        database: b.database,
        port: 0,
        root,
        data_dir,
        major_version,
        run_as,
        tls,
        settings: b.settings,
        state: Mutex::new(State::default()),
        temp_dir: Mutex::new(Some(temp)),
        reaper: Mutex::new(Some(reaper)),
    };
    // From here on an early return drops `cluster`, which stops the server and cleans up.
    cluster.launch_on_free_port(&conf_path, &base_conf, &tls_conf)?;
    cluster.create_role_and_database()?;
    Ok(cluster)
}

/// A new temp directory for a server (`prefix` + random), canonicalized, mode 0700 and owned
/// by the server's OS user when we are root: `(its guard, its path)`.
pub(super) fn temp_root(
    prefix: &str,
    run_as: Option<(u32, u32)>,
) -> Result<(tempfile::TempDir, PathBuf)> {
    let temp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(temp_base(run_as.is_some(), prefix.len()))
        .map_err(|e| Error::io(format!("creating the {prefix} temp dir"), e))?;
    let root = temp
        .path()
        .canonicalize()
        .map_err(|e| Error::io("canonicalizing temp dir", e))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod 0700 {}", root.display()), e))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid))
            .map_err(|e| Error::io(format!("chown {} to {SERVER_OS_USER}", root.display()), e))?;
    }
    Ok((temp, root))
}

impl Cluster {
    /// Writes `base_conf` + our block (a free port, our socket directory, the builder's
    /// settings) + `tail` to `conf_path` and starts the server, with another port when the
    /// one picked was taken meanwhile (`could not bind`), up to `PORT_ATTEMPTS` times.
    pub(super) fn launch_on_free_port(
        &mut self,
        conf_path: &Path,
        base_conf: &str,
        tail: &str,
    ) -> Result<()> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            write_file(
                conf_path,
                &(base_conf.to_owned() + &self.conf_block(&self.settings) + tail),
            )?;
            match self.launch(&mut self.lock_state()) {
                Ok(()) => return Ok(()),
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && e.kind() == ErrorKind::ServerExited
                        && e.message().contains("could not bind") =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Our settings, appended to the initdb-generated `postgresql.conf` (later lines win).
    pub(super) fn conf_block(&self, extra: &[(String, String)]) -> String {
        let mut s = format!(
            "\n# ---- written by pg-throwaway ----\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = {}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 200\n\
             shared_buffers = '32MB'\n\
             huge_pages = off\n\
             autovacuum = off\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            self.port,
            quote_literal(&self.root.to_string_lossy()),
        );
        for (key, value) in extra {
            s.push_str(&format!("{key} = {}\n", quote_literal(value)));
        }
        s
    }

    fn create_role_and_database(&self) -> Result<()> {
        let password = quote_literal(&self.password);
        let user = quote_ident(&self.user);
        let role = if self.user == SUPERUSER {
            format!("ALTER ROLE {user} PASSWORD {password};")
        } else {
            format!("CREATE ROLE {user} LOGIN CREATEDB PASSWORD {password};")
        };
        let mut sql = format!(
            "SET password_encryption = '{}';\n{role}\n",
            self.auth.password_encryption()
        );
        if self.database != "postgres" {
            sql.push_str(&format!(
                "CREATE DATABASE {} OWNER {user};\n",
                quote_ident(&self.database)
            ));
        }
        self.psql_in("postgres", &sql)?;
        if self.user != SUPERUSER {
            // Objects the superuser creates through `psql()` are usable by the test role.
            let grants: String = ["TABLES", "SEQUENCES", "FUNCTIONS", "TYPES"]
                .iter()
                .map(|what| {
                    format!("ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} GRANT ALL ON {what} TO {user};\n")
                })
                .collect();
            self.psql_in(&self.database, &grants)?;
        }
        Ok(())
    }

    /// Starts the postmaster unless it is already running, and waits until it is ready.
    pub(super) fn launch(&self, st: &mut State) -> Result<()> {
        if st.pid().is_some() {
            return Ok(());
        }
        let bins = binaries()?;
        let log_path = self.root.join("server.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log fd", e))?;
        let mut cmd = Command::new(&bins.postgres);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .current_dir(&self.data_dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Keep terminal signals (Ctrl-C) for the owning process; the reaper cleans up.
            .process_group(0);
        let child = prepare(&mut cmd, self.run_as)
            .spawn()
            .map_err(|e| Error::io(format!("spawning {}", bins.postgres.display()), e))?;
        st.postmaster = Some(child);
        st.frozen = None;
        self.wait_ready(st)
    }

    /// Polls `postmaster.pid` until its status line says `ready` (what `pg_ctl -w` does).
    fn wait_ready(&self, st: &mut State) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let Some(child) = st.postmaster.as_mut() else {
                return Err(Error::new(
                    ErrorKind::ServerExited,
                    "postmaster is not running",
                ));
            };
            if let Ok(Some(status)) = child.try_wait() {
                st.postmaster = None;
                return Err(Error::new(
                    ErrorKind::ServerExited,
                    format!("postmaster exited during startup ({status}); server log tail:"),
                )
                .with_detail(self.log_tail()));
            }
            if pidfile_ready(&self.data_dir, child.id()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = halt(st, &self.data_dir, libc::SIGQUIT, Duration::from_secs(10));
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "server at {} not ready after {START_TIMEOUT:?}; server log tail:",
                        self.data_dir.display()
                    ),
                )
                .with_detail(self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Thaws, signals the postmaster with `sig`, and waits up to `patience` for it to exit.
/// On timeout, SIGKILLs every process of this cluster (found by working directory) and
/// returns [`ErrorKind::Timeout`]. A stopped cluster is `Ok`.
pub(super) fn halt(
    st: &mut State,
    data_dir: &Path,
    sig: libc::c_int,
    patience: Duration,
) -> Result<()> {
    thaw_locked(st);
    let Some(mut child) = st.postmaster.take() else {
        return Ok(());
    };
    if matches!(child.try_wait(), Ok(Some(_))) {
        return Ok(());
    }
    let pid = Pid::try_from(child.id()).map_err(|_| invalid("postmaster pid out of range"))?;
    let _ = os::signal(pid, sig);
    let deadline = Instant::now() + patience;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => break,
        }
    }
    kill_everything(data_dir);
    let _ = child.kill();
    let _ = child.wait();
    Err(Error::new(
        ErrorKind::Timeout,
        format!("postmaster {pid} did not exit within {patience:?} of signal {sig}; killed"),
    ))
}

/// SIGKILLs every process whose working directory is this cluster's data dir.
fn kill_everything(data_dir: &Path) {
    for pid in os::pids_with_cwd(data_dir) {
        let _ = os::signal(pid, libc::SIGCONT);
        let _ = os::signal(pid, libc::SIGKILL);
    }
}

/// Drop's shutdown: immediate, bounded, then SIGKILL of anything left.
pub(super) fn shut_down_for_good(st: &mut State, data_dir: &Path) {
    if halt(st, data_dir, libc::SIGQUIT, Duration::from_secs(10)).is_err() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Orphans (should not happen: the postmaster reaps its children before exiting).
    kill_everything(data_dir);
}

/// SIGCONT the frozen children, then the postmaster (reverse of freezing).
pub(super) fn thaw_locked(st: &mut State) {
    let Some(stopped) = st.frozen.take() else {
        return;
    };
    let pm = st
        .postmaster
        .as_ref()
        .and_then(|c| Pid::try_from(c.id()).ok());
    let mut all = stopped;
    if let Some(pm) = pm {
        // SIGCONT to a running process is harmless; re-enumerate in case the list missed one.
        all.extend(os::children_of(pm));
    }
    for pid in all {
        let _ = os::signal(pid, libc::SIGCONT);
    }
    if let Some(pm) = pm {
        let _ = os::signal(pm, libc::SIGCONT);
    }
}

/// Whether `<data>/postmaster.pid` names `pid` and says `ready` (line 8, PM_STATUS).
fn pidfile_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    lines.first().is_some_and(|l| l.trim() == pid.to_string())
        && lines.get(7).is_some_and(|l| l.trim() == "ready")
}

/// Applies the run-as user (when root), scrubs `PG*` env vars, and detaches stdin.
pub(super) fn prepare(cmd: &mut Command, run_as: Option<(u32, u32)>) -> &mut Command {
    os::scrub_pg_env(cmd);
    cmd.stdin(Stdio::null());
    if let Some((uid, gid)) = run_as {
        // std drops supplementary groups (setgroups(0)) when switching away from root.
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Where temp roots go: `$TMPDIR` (std's `temp_dir`) unless the server user could not
/// traverse it or the socket path would get too long; then `/tmp`.
pub(super) fn temp_base(as_other_user: bool, prefix_len: usize) -> PathBuf {
    let base = std::env::temp_dir();
    let traversable = std::fs::metadata(&base)
        .map(|m| !as_other_user || m.permissions().mode() & 0o001 != 0)
        .unwrap_or(false);
    // `/` + prefix + 6 random characters.
    if traversable && base.as_os_str().len() + prefix_len + 8 < MAX_ROOT_LEN {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// A loopback port nobody listens on right now.
///
/// Chosen at random *below* the kernel's ephemeral range, so the port cannot be handed out as
/// the local port of some client connection (a pool reconnecting during `restart()`, say)
/// while the server is down; ports already handed out by this process are skipped. Falls
/// back to the kernel's choice (`bind :0`) if that range is unusable.
pub(super) fn free_port() -> Result<u16> {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let (low, _) = ephemeral_range();
    let floor = 10_000u16;
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if low > floor + 1000 {
        let span = u64::from(low - floor);
        for _ in 0..200 {
            let offset = u16::try_from(random_u64() % span).unwrap_or(0);
            let port = floor + offset;
            if !taken.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                taken.push(port);
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding 127.0.0.1:0 to pick a port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the probe's address", e))?;
    taken.push(addr.port());
    Ok(addr.port())
}

/// The kernel's ephemeral port range (Linux default 32768–60999).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// Randomness good enough to spread ports: std's per-process random hash keys, mixed with the
/// time and pid so concurrent processes differ.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

pub(super) fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The superuser is trusted (control must work whatever the test's method); everyone else
/// uses `auth`, over the socket and over IPv4/IPv6 loopback, or the caller's own `lines`.
pub(super) fn hba_conf(auth: super::Auth, lines: Option<&[String]>) -> String {
    let mut s = format!(
        "# written by pg-throwaway\n\
         # TYPE  DATABASE  USER      ADDRESS        METHOD\n\
         local   all       {SUPERUSER}                 trust\n\
         host    all       {SUPERUSER}  127.0.0.1/32   trust\n\
         host    all       {SUPERUSER}  ::1/128        trust\n\
         local   replication {SUPERUSER}             trust\n\
         host    replication {SUPERUSER} 127.0.0.1/32 trust\n"
    );
    match lines {
        Some(lines) => {
            for line in lines {
                s.push_str(line.trim());
                s.push('\n');
            }
        }
        None => {
            let m = auth.hba_method();
            s.push_str(&format!(
                "local   all       all                      {m}\n\
                 host    all       all       127.0.0.1/32   {m}\n\
                 host    all       all       ::1/128        {m}\n"
            ));
        }
    }
    s
}

/// Each `pg_hba.conf` line of [`super::ClusterBuilder::hba`] must be one non-empty line.
pub(super) fn check_hba_lines(lines: &[String]) -> Result<()> {
    for line in lines {
        if line.trim().is_empty() || line.contains(['\n', '\r']) {
            return Err(invalid(format!(
                "invalid pg_hba.conf line {line:?} (hba): give one rule per item, no line breaks"
            )));
        }
    }
    Ok(())
}

/// Makes the cluster's certificates in `dir` and hands the server's files (the CA, every
/// server certificate and key) to the server's OS user: PostgreSQL wants its key owned by
/// itself with mode 0600 (or by root with 0640).
fn make_tls_files(
    setup: &TlsSetup,
    dir: &Path,
    role: &str,
    run_as: Option<(u32, u32)>,
) -> Result<TlsFiles> {
    let files = setup.make(dir, setup.client_user_or(role))?;
    if let Some((uid, gid)) = run_as {
        let mut paths = files.server_side_files();
        paths.push(dir);
        for path in paths {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                Error::io(format!("chown {} to {SERVER_OS_USER}", path.display()), e)
            })?;
        }
    }
    Ok(files)
}

/// `ssl = on` with the presented certificate, and the CA for client certificates.
fn tls_conf_block(files: &TlsFiles, presented: ServerCert) -> String {
    format!(
        "ssl = on\n\
         ssl_cert_file = {}\n\
         ssl_key_file = {}\n\
         ssl_ca_file = {}\n",
        quote_literal(&files.server_cert(presented).to_string_lossy()),
        quote_literal(&files.server_key(presented).to_string_lossy()),
        quote_literal(&files.ca_cert().to_string_lossy()),
    )
}

/// The last `lines` lines of a text file (empty if unreadable).
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
