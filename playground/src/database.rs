//! Which PostgreSQL the playground talks to: the one the environment names (libpq variables or
//! `DATABASE_URL`), or — with neither `PGHOST` nor `DATABASE_URL` set — a throwaway cluster
//! started from the installed server binaries and deleted on exit.

use crate::config::Config;
use ioxide_pg::{Host, PgOptions, Target};
use pg_throwaway::Cluster;
use std::fmt;

/// The role and database created in a throwaway cluster.
const THROWAWAY_NAME: &str = "playground";
/// Name prefix of the throwaway cluster's temp directory, so `ls /tmp` says whose it is.
const THROWAWAY_DIR_PREFIX: &str = "playground-pg-";
/// Server connections kept free beyond the pools (psql, monitoring).
const SPARE_SERVER_CONNECTIONS: usize = 20;
/// The throwaway cluster's locale when the OS has it (`upper()` of all of Unicode, bytewise
/// sort); otherwise `C` (ASCII-only `upper()`).
const THROWAWAY_LOCALE: (&str, &str) = ("C.UTF-8", "/usr/lib/locale/C.utf8");
/// `application_name` the pools report when the environment names none.
const APPLICATION_NAME: &str = "playground";
/// Why a throwaway cluster is reached over its Unix socket (the startup line says it): the
/// server's CPU per query, measured with `pgload --unix` (bench/FINDINGS.md, "Issue 21, items
/// 2 and 4").
pub const UNIX_SOCKET_NOTE: &str = "Unix socket; cheaper than TCP for the server: \
     3.2 µs vs 3.8 µs per query, see BENCHMARKS.md; PG_THROWAWAY_TCP=1 for TCP";

/// Why the database could not be set up.
#[derive(Debug)]
pub enum DbError {
    /// A bad setting (a libpq variable, `DATABASE_URL`): exit code 2.
    Config(String),
    /// Anything else (no server binaries, the cluster failed to start, DNS): exit code 1.
    Start(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Config(m) | DbError::Start(m) => f.write_str(m),
        }
    }
}

/// The database the pools connect to.
#[derive(Debug)]
pub struct Database {
    /// Connection and pool options (the playground's knobs applied).
    pub options: PgOptions,
    /// Every host of the list, resolved once, here, so no reactor ever does DNS.
    pub targets: Vec<Target>,
    /// The throwaway cluster, if we started one; dropping it stops the server and deletes
    /// its directory.
    pub cluster: Option<Cluster>,
}

/// Whether the environment names a database (a non-empty `PGHOST` or `DATABASE_URL`).
pub fn configured_in_env() -> bool {
    ["PGHOST", "DATABASE_URL"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

impl Database {
    /// The environment's database, or a new throwaway cluster. `announce` is called with a
    /// line to print before a throwaway cluster starts (it takes a few seconds).
    pub fn open(config: &Config, announce: impl FnOnce(&str)) -> Result<Database, DbError> {
        let (options, cluster) = if configured_in_env() {
            let opts = PgOptions::from_env()
                .map_err(|e| DbError::Config(format!("bad database setting: {e}")))?;
            (opts, None)
        } else {
            announce(
                "playground: no PGHOST or DATABASE_URL set; starting a throwaway PostgreSQL \
                 (initdb takes a few seconds)",
            );
            let cluster = start_throwaway(config)?;
            // The cluster listens on both; its Unix socket costs the server less per query.
            let host = if config.throwaway_tcp {
                cluster.host().to_owned()
            } else {
                cluster.socket_dir().to_string_lossy().into_owned()
            };
            let opts = PgOptions::new()
                .host(host)
                .port(cluster.port())
                .user(cluster.user())
                .database(cluster.database());
            (opts, Some(cluster))
        };
        let options = apply_knobs(options, config);
        options
            .validate()
            .map_err(|e| DbError::Config(format!("bad database setting: {e}")))?;
        // Every host of a list (`PGHOST=a,b`, `target_session_attrs=read-write`): the pool
        // walks them, so the playground fails over as the driver does.
        let targets = options
            .resolve_hosts()
            .map_err(|e| DbError::Start(format!("cannot resolve the database host: {e}")))?;
        Ok(Database {
            options,
            targets,
            cluster,
        })
    }

    /// `127.0.0.1:5432/db sslmode=prefer`, `[::1]:5432/db sslmode=verify-full`,
    /// `/run/postgresql/.s.PGSQL.5432/db`, `127.0.0.1:5432/db (throwaway)`. Never a password.
    pub fn describe(&self) -> String {
        let o = &self.options;
        let place = match o.get_host() {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", o.get_port()),
            Host::Tcp(h) => format!("{h}:{}", o.get_port()),
            Host::Unix(dir) => dir
                .join(format!(".s.PGSQL.{}", o.get_port()))
                .display()
                .to_string(),
            other => format!("{other:?}:{}", o.get_port()),
        };
        let kind = if self.cluster.is_some() {
            " (throwaway)"
        } else {
            ""
        };
        // What TLS the connections to a configured server will use (Unix sockets and our
        // throwaway cluster never do).
        let tls = match o.get_host() {
            Host::Tcp(_) if self.cluster.is_none() => format!(" sslmode={}", o.get_ssl_mode()),
            _ => String::new(),
        };
        format!("{place}/{}{kind}{tls}", o.get_database())
    }

    /// Where a throwaway cluster is reached and why: `/tmp/…/.s.PGSQL.5432 (Unix socket; …)`
    /// or `127.0.0.1:5432 (TCP, PG_THROWAWAY_TCP=1)`. `None` for a configured server.
    pub fn throwaway_place(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        Some(match self.options.get_host() {
            Host::Unix(_) => format!("{} ({UNIX_SOCKET_NOTE})", c.socket_path().display()),
            _ => format!("{}:{} (TCP, PG_THROWAWAY_TCP=1)", c.host(), c.port()),
        })
    }
}

/// The playground's pool knobs win over the driver defaults (and over `pool_size=` and the
/// like in `DATABASE_URL`), so the startup line tells the truth.
fn apply_knobs(mut o: PgOptions, config: &Config) -> PgOptions {
    if o.get_application_name().is_none() {
        o = o.application_name(APPLICATION_NAME);
    }
    o = o
        .pool_size(config.pool_size)
        .command_timeout(config.command_timeout)
        .acquire_timeout(config.acquire_timeout);
    if let Some(depth) = config.pipeline_depth {
        o = o.pipeline_depth(depth);
    }
    o
}

fn start_throwaway(config: &Config) -> Result<Cluster, DbError> {
    let needed = config
        .pool_size
        .saturating_mul(config.reactors)
        .saturating_add(SPARE_SERVER_CONNECTIONS);
    Cluster::builder()
        .user(THROWAWAY_NAME)
        .database(THROWAWAY_NAME)
        .dir_prefix(THROWAWAY_DIR_PREFIX)
        .setting("max_connections", needed.max(100).to_string())
        .locale(if std::path::Path::new(THROWAWAY_LOCALE.1).exists() {
            THROWAWAY_LOCALE.0
        } else {
            "C"
        })
        .start()
        .map_err(|e| {
            DbError::Start(format!(
                "cannot start a throwaway PostgreSQL (set PGHOST or DATABASE_URL to use a \
                 running server instead): {e}"
            ))
        })
}
