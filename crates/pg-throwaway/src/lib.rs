//! Throwaway PostgreSQL clusters, started from the installed server binaries.
//!
//! A [`Cluster`] is a real PostgreSQL server in its own temp directory, on a free loopback
//! port and a private Unix socket, with one role using the [`Auth`] method you pick. It can
//! be stopped, restarted, crashed, frozen and thawed, and its backends terminated. A
//! [`PgBouncer`] (the installed `pgbouncer` program) can be put in front of it. Dropping
//! it stops the server and deletes the directory; if the owning process dies first (SIGKILL,
//! `std::process::exit`, a `static`), a watchdog process does the same.
//!
//! Tests use it through `testkit` (which re-exports this API); the playground uses it to
//! serve with no database configured.
//!
//! Server binaries are found via `$PG_BIN`, `pg_config --bindir`, `$PATH`, or
//! `/usr/lib/postgresql/*/bin` ([`server_bin_dir`]). When run as root, the server runs as
//! the `postgres` OS user.
//!
//! ```no_run
//! let cluster = pg_throwaway::Cluster::builder()
//!     .user("app")
//!     .database("app")
//!     .dir_prefix("myapp-pg-")
//!     .start()?;
//! println!("connect to {}", cluster.url());
//! assert_eq!(cluster.psql("SELECT 40 + 2")?, "42");
//! # Ok::<(), pg_throwaway::Error>(())
//! ```

#![warn(missing_docs)]

mod binaries;
mod cluster;
mod error;
mod os;
mod reaper;
pub mod tls;

pub use binaries::server_bin_dir;
pub use cluster::{
    Auth, Cluster, ClusterBuilder, PgBouncer, PgBouncerBuilder, DEFAULT_DIR_PREFIX, SUPERUSER,
};
pub use error::{Error, ErrorKind, Result};
pub use os::process_alive;
