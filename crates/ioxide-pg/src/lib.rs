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
//!
//! # Custom types
//!
//! Enums, composites, domains and ranges defined in the database, and arrays of them, work
//! with `postgres-types`' derives (add `postgres-types = { version = "0.2", features =
//! ["derive"] }` to your Cargo.toml): when a statement is prepared, each connection looks
//! the types it does not know up in `pg_type` (one round trip per level of nesting, once per
//! connection: the types are cached with its statements), so parameters and columns carry
//! the real type. A Rust type that does not match the database's (a variant the enum lacks,
//! a missing field) is a conversion error naming both types.
//!
//! ```no_run
//! use ioxide_pg::types::{FromSql, ToSql};
//!
//! // CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
//! #[derive(Debug, PartialEq, ToSql, FromSql)]
//! #[postgres(name = "mood")]
//! enum Mood {
//!     #[postgres(name = "sad")]
//!     Sad,
//!     #[postgres(name = "ok")]
//!     Ok,
//!     #[postgres(name = "happy")]
//!     Happy,
//! }
//!
//! // CREATE TYPE point2 AS (x int4, y int4, mood mood);
//! #[derive(Debug, PartialEq, ToSql, FromSql)]
//! #[postgres(name = "point2")]
//! struct Point2 {
//!     x: i32,
//!     y: i32,
//!     mood: Option<Mood>,
//! }
//!
//! # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
//! let p = Point2 { x: 1, y: 2, mood: Some(Mood::Happy) };
//! let row = conn
//!     .query_one("SELECT $1::point2, $2::mood[]", &[&p, &vec![Mood::Sad, Mood::Ok]])
//!     .await?;
//! assert_eq!(row.get::<Point2>(0)?, p);
//! assert_eq!(row.get::<Vec<Mood>>(1)?, [Mood::Sad, Mood::Ok]);
//! # Ok(()) }
//! ```
//!
//! A parameter of a domain type takes a derived newtype named as the domain (`struct
//! PosInt(i32)` with `#[postgres(name = "posint")]`), as in tokio-postgres; a plain `i32` is
//! refused (cast in SQL instead: `$1::int4::posint`). Result columns of a domain type arrive
//! as the domain's base type (the server describes them so): read them as the base type. With `statement_cache_capacity(0)`, a `query_rows`
//! without parameters is not described before its rows arrive: its custom-typed columns keep
//! placeholder types; use `query_params` (or pass a parameter) there.

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
    ChannelBinding, Host, LoadBalanceHosts, PgOptions, RootCert, SslCertMode, SslMode,
    SslNegotiation, Target, TargetSessionAttrs, TlsVersion,
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
