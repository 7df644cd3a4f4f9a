//! Throwaway PostgreSQL clusters: one temp directory, one postmaster, one role.

mod bouncer;
mod control;
mod replica;
mod server;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, ErrorKind, Result};
use crate::reaper::Reaper;
use crate::tls::{TlsFiles, TlsSetup};

pub use bouncer::{PgBouncer, PgBouncerBuilder};
pub(crate) use server::{random_u64, State};

/// The superuser every cluster is initialised with. It is always trusted over the cluster's
/// Unix socket and over loopback TCP, so control works whatever [`Auth`] the caller picked.
pub const SUPERUSER: &str = "postgres";

/// The OS user that runs the server when we run as root (PostgreSQL refuses root).
const SERVER_OS_USER: &str = "postgres";

/// How the test role must authenticate (the `pg_hba.conf` method for everyone but the
/// superuser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// `trust`: no password asked.
    #[default]
    Trust,
    /// `password`: cleartext password (AuthenticationCleartextPassword).
    Password,
    /// `md5`: MD5 challenge; the role's password is stored as an MD5 hash.
    Md5,
    /// `scram-sha-256`: SASL SCRAM-SHA-256; the password is stored as a SCRAM verifier.
    ScramSha256,
}

impl Auth {
    /// The method name as `pg_hba.conf` spells it.
    pub fn hba_method(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Password => "password",
            Auth::Md5 => "md5",
            Auth::ScramSha256 => "scram-sha-256",
        }
    }

    /// The `password_encryption` used when storing the role's password. MD5 auth needs an
    /// MD5-stored password (a SCRAM verifier would make the server upgrade to SCRAM).
    fn password_encryption(self) -> &'static str {
        match self {
            Auth::Md5 => "md5",
            _ => "scram-sha-256",
        }
    }
}

/// Configures and starts a [`Cluster`]. Get one from [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    auth: Auth,
    user: String,
    password: String,
    database: String,
    settings: Vec<(String, String)>,
    dir_prefix: String,
    locale: String,
    tls: Option<TlsSetup>,
    hba: Option<Vec<String>>,
}

/// The default name prefix of a cluster's temp directory.
pub const DEFAULT_DIR_PREFIX: &str = "pg-throwaway-";

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            auth: Auth::Trust,
            user: "ioxide".to_owned(),
            password: "ioxide-secret".to_owned(),
            database: "ioxide".to_owned(),
            settings: Vec::new(),
            dir_prefix: DEFAULT_DIR_PREFIX.to_owned(),
            locale: "C".to_owned(),
            tls: None,
            hba: None,
        }
    }
}

impl ClusterBuilder {
    /// The authentication method for the test role (default [`Auth::Trust`]).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// The test role's name (default `ioxide`). It gets `LOGIN CREATEDB`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The test role's password (default `ioxide-secret`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = password.into();
        self
    }

    /// The database created for (and owned by) the test role (default `ioxide`).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    /// A `postgresql.conf` setting, written after the kit's defaults so it wins
    /// (e.g. `.setting("max_connections", "20")`).
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// The name prefix of the cluster's temp directory (default `pg-throwaway-`), so whoever
    /// lists `/tmp` sees whose cluster it is. ASCII letters, digits, `-` and `_`, at most 24.
    pub fn dir_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.dir_prefix = prefix.into();
        self
    }

    /// The cluster's locale (`initdb --locale`, default `C`). `C` sorts bytewise and
    /// upper-cases ASCII only; `C.UTF-8` (where the OS has it) keeps the bytewise sort and
    /// gives `upper()`/`lower()` all of Unicode. Letters, digits, `.`, `_`, `-`, `@` only.
    pub fn locale(mut self, locale: impl Into<String>) -> Self {
        self.locale = locale.into();
        self
    }

    /// Serves TLS (`ssl = on`) with certificates made for this cluster (see
    /// [`crate::tls`]): the server presents [`TlsSetup::server_cert`] and trusts the test CA
    /// for client certificates (`ssl_ca_file`), so `cert` authentication and
    /// `clientcert=verify-full` work. The client certificate's CN is the test role unless
    /// [`TlsSetup::client_user`] says otherwise. The files are in [`Cluster::tls`].
    ///
    /// Without [`ClusterBuilder::hba`], TCP logins are accepted with or without TLS.
    pub fn tls(mut self, setup: TlsSetup) -> Self {
        self.tls = Some(setup);
        self
    }

    /// Replaces the `pg_hba.conf` rules for everyone but the superuser with `lines`, in
    /// order, e.g. `["hostssl all all 127.0.0.1/32 cert", "hostnossl all all 127.0.0.1/32
    /// reject"]`. The superuser's `trust` rules (Unix socket, 127.0.0.1, ::1) always come
    /// first, so control through [`Cluster::psql`] keeps working; nothing else is added
    /// (write a `local ...` line if the test role must log in over the socket).
    /// Without this, the test role uses [`ClusterBuilder::auth`] over the socket and TCP.
    pub fn hba<I, S>(mut self, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hba = Some(lines.into_iter().map(Into::into).collect());
        self
    }

    /// Creates the temp directory, runs `initdb`, starts the server, creates the role and
    /// database, and returns once the server accepts connections.
    ///
    /// # Errors
    /// [`ErrorKind::MissingBinaries`] if no server is installed; otherwise the failing step
    /// with its output or the server log tail.
    pub fn start(self) -> Result<Cluster> {
        server::create(self)
    }
}

/// A running throwaway PostgreSQL cluster in its own temp directory.
///
/// Listens on `127.0.0.1:<free port>` and on a Unix socket in [`Cluster::socket_dir`].
/// Durability is off (`fsync`, `synchronous_commit`, `full_page_writes`) and
/// `max_connections` is 200. Dropping it stops the server (immediate mode) and deletes the
/// directory; if the process dies without dropping it (a `static`, SIGKILL) a watchdog
/// process does the same.
///
/// Every method takes `&self`, so one cluster can be driven from several threads (e.g.
/// [`Cluster::freeze`] while another thread is blocked in a query).
///
/// ```no_run
/// let cluster = pg_throwaway::Cluster::builder()
///     .auth(pg_throwaway::Auth::ScramSha256)
///     .start()?;
/// assert_eq!(cluster.psql("SELECT 40 + 2")?, "42");
/// assert_eq!(cluster.psql_as(cluster.user(), cluster.password(), "SELECT current_user")?,
///            "ioxide");
/// # Ok::<(), pg_throwaway::Error>(())
/// ```
#[derive(Debug)]
pub struct Cluster {
    auth: Auth,
    user: String,
    password: String,
    database: String,
    port: u16,
    /// The temp root: holds `data/`, the server log and the Unix socket.
    root: PathBuf,
    data_dir: PathBuf,
    major_version: u32,
    /// `(uid, gid)` to run server programs as, when we are root.
    run_as: Option<(u32, u32)>,
    tls: Option<TlsFiles>,
    /// The builder's extra `postgresql.conf` settings, kept for standbys and rejoins.
    settings: Vec<(String, String)>,
    state: Mutex<State>,
    temp_dir: Mutex<Option<tempfile::TempDir>>,
    reaper: Mutex<Option<Reaper>>,
}

impl Cluster {
    /// A builder with the defaults: trust auth, user `ioxide`, password `ioxide-secret`,
    /// database `ioxide`.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a cluster with the defaults (same as `Cluster::builder().start()`).
    ///
    /// # Errors
    /// See [`ClusterBuilder::start`].
    pub fn new() -> Result<Self> {
        Self::builder().start()
    }

    /// The TCP host, always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The TCP port (also the Unix socket's port number). Stable across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The full path of the Unix socket file.
    pub fn socket_path(&self) -> PathBuf {
        self.root.join(format!(".s.PGSQL.{}", self.port))
    }

    /// The test role.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The test role's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The test database (owned by the test role).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The authentication method the test role must use.
    pub fn auth(&self) -> Auth {
        self.auth
    }

    /// The server's major version (e.g. 15).
    pub fn major_version(&self) -> u32 {
        self.major_version
    }

    /// `postgres://user:password@127.0.0.1:port/database`, percent-encoded.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            encode(&self.user),
            encode(&self.password),
            self.host(),
            self.port,
            encode(&self.database)
        )
    }

    /// `postgres://postgres@127.0.0.1:port/database`: the superuser, trusted over loopback.
    pub fn superuser_url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}@{}:{}/{}",
            self.host(),
            self.port,
            encode(&self.database)
        )
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The certificates of a cluster started with [`ClusterBuilder::tls`] (CA, client
    /// certificate and keys, every server certificate); `None` without TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The postmaster's pid, or `None` while the server is stopped.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.lock_state().pid()
    }

    /// The last lines of the server log (stderr of the postmaster), for failure messages.
    pub fn log_tail(&self) -> String {
        server::tail(&self.root.join("server.log"), 40)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as a process table
        // can be; keep going so Drop can still clean up.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        server::shut_down_for_good(state, &self.data_dir);
        if let Some(dir) = self
            .temp_dir
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            // Best effort; the reaper retries with rm -rf.
            let _ = dir.close();
        }
        if let Some(reaper) = self
            .reaper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            reaper.dismiss();
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `"name"` with embedded quotes doubled.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::CommandFailed, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_userinfo() {
        assert_eq!(encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
        assert_eq!(encode("ioxide-secret"), "ioxide-secret");
    }

    #[test]
    fn rejects_a_dir_prefix_that_could_escape_the_temp_dir() {
        for bad in ["", "../up", "a/b", "with space", "x".repeat(25).as_str()] {
            let Err(err) = Cluster::builder().dir_prefix(bad).start() else {
                panic!("{bad:?}: a bad prefix must be refused before anything starts");
            };
            assert_eq!(err.kind(), ErrorKind::CommandFailed, "{bad:?}: {err}");
            assert!(err.message().contains("temp dir prefix"), "{err}");
        }
    }

    #[test]
    fn rejects_a_locale_that_is_not_a_plain_name() {
        for bad in ["", "C; rm", "../x", "C UTF-8"] {
            let Err(err) = Cluster::builder().locale(bad).start() else {
                panic!("{bad:?}: a bad locale must be refused before anything starts");
            };
            assert!(err.message().contains("invalid locale"), "{err}");
        }
    }

    #[test]
    fn quotes_sql() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
