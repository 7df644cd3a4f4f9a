//! `ioxide-pg`: a PostgreSQL driver whose every I/O is an io_uring op on a thread-per-core
//! reactor.
//!
//! This crate is layered like the folders:
//! - [`options`]: [`PgOptions`], how to reach the server;
//! - [`error`]: [`PgError`] and the server's [`DbError`];
//! - [`proto`]: the sans-io protocol core (framing, startup/auth, per-command reply machines,
//!   frontend encoding, zero-copy rows), reachable by tests and fuzzers without a socket.
//!
//! The ring-driven connection and the pool build on these.

#![warn(missing_docs)]

mod conn;
pub mod error;
pub mod options;
mod pool;
pub mod proto;

pub use conn::{Params, PgConnection, ResultSet};
pub use error::{DbError, ErrorPosition, PgError, Severity, TimeoutKind};
pub use options::{Host, PgOptions, Target};
pub use pool::{PgPool, PoolStats, PooledConn, Transaction};
pub use proto::auth::{AuthMethod, RequireAuth};
pub use proto::message::TxnStatus;
pub use proto::query_result::QueryResult;
pub use proto::row::{Column, Columns, Format, Row, RowIndex};
pub use proto::startup::{BackendKey, ServerInfo};

/// `postgres-types`, re-exported so users name the same `ToSql`/`FromSql`/`Type`.
pub use postgres_types as types;
