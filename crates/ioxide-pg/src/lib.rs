//! `ioxide-pg`: a PostgreSQL driver whose every I/O is an io_uring op on a thread-per-core
//! reactor.
//!
//! This crate is layered like the folders:
//! - [`options`]: [`PgOptions`], how to reach the server;
//! - [`error`]: [`PgError`] and the server's [`DbError`];
//! - `proto`: the sans-io protocol core (framing, startup/auth, per-command reply machines,
//!   frontend encoding, zero-copy rows).
//!
//! The ring-driven connection and the pool build on these.
//!
//! # The public API
//!
//! Everything a user names is re-exported here, at the crate root: the connection, the pool,
//! options, errors, rows and the server's information. Enums that may gain a variant are
//! `#[non_exhaustive]`.
//!
//! `proto` is public only so that this workspace's fuzzers, benchmarks and property tests
//! reach the protocol core without a socket. It is hidden from the documentation and has **no
//! stability**: it is the driver's internals, and any release may change or remove any of it.
//! Do not use it; the types it holds that users need are re-exported above.

//! # Optional types
//!
//! Values go through `postgres-types`' `ToSql`/`FromSql`. Its impls for other crates are
//! switched on by this crate's features, named as in tokio-postgres: `with-uuid-1`,
//! `with-chrono-0_4`, `with-time-0_3`, `with-serde_json-1` (JSON and JSONB). `rust_decimal`
//! carries its own impls (`NUMERIC`): enable its `db-postgres` feature. Each is round-tripped
//! against a server in `tests/types_optional.rs`.

#![warn(missing_docs)]

mod conn;
pub mod error;
mod listen;
pub mod options;
mod pool;
#[doc(hidden)]
pub mod proto;
mod sqlstate;
#[cfg(test)]
mod sqlstate_tests;
mod tls;

pub use conn::{
    BinaryCopyInWriter, BinaryCopyOutRow, BinaryCopyOutStream, CopyIn, CopyOut, COPY_IN_HIGH_WATER,
};
pub use conn::{
    CancelToken, FromRow, IsolationLevel, OwnedRow, Params, PgConnection, Pipeline, Portal,
    ResultSet, RowStream, Statement, ToStatement, Transaction, TransactionBuilder,
};
pub use error::{DbError, ErrorPosition, PgError, Severity, TimeoutKind};
pub use listen::{ListenEvent, Notification, PgListener, LISTEN_BUFFER_LIMIT};
pub use options::{
    ChannelBinding, Host, PgOptions, RootCert, SslCertMode, SslMode, SslNegotiation, Target,
    TlsVersion,
};
pub use pool::{AfterConnectFuture, PgPool, PgPoolBuilder, PoolStats, PooledConn};
pub use proto::auth::{AuthMethod, RequireAuth};
pub use proto::message::{CopyFormat, TxnStatus};
pub use proto::query_result::QueryResult;
pub use proto::row::{Column, Columns, Format, Row, RowIndex};
pub use proto::startup::{BackendKey, ServerInfo};
pub use sqlstate::SqlState;

/// `postgres-types`, re-exported so users name the same `ToSql`/`FromSql`/`Type`.
pub use postgres_types as types;
