//! [`PgError`]: the one error type of the driver.
//!
//! Callers match on meaning through accessors (`sql_state()`, `is_timeout()`,
//! `is_transport()`, …), never on our internals: the kind enum is private so it can grow.
//!
//! Every error also says whether the command it belongs to may have reached the server
//! ([`PgError::was_sent`]). A pool may retry a command transparently only when the error says
//! it was never sent.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

pub use crate::proto::db_error::{DbError, ErrorPosition, Severity};
pub use crate::sqlstate::SqlState;

/// A boxed error source, as produced by `postgres-types` conversions.
type Source = Box<dyn StdError + Send + Sync + 'static>;

/// Every failure the driver reports.
///
/// Opaque by design: use the accessors to learn what happened.
///
/// Only the driver makes errors. The one public constructor, [`PgError::conversion`] (and
/// [`PgError::conversion_with`]), is for a conversion or a row callback that fails, and its
/// errors always say [`was_sent()`](PgError::was_sent) `== true`: no code outside the driver
/// can claim that a command is safe to retry.
///
/// ```compile_fail
/// // `never_sent` is the driver's: this does not compile outside the crate.
/// let e = ioxide_pg::PgError::conversion("x").never_sent();
/// ```
///
/// ```compile_fail
/// // Neither do the driver's constructors.
/// let e = ioxide_pg::PgError::closed("x");
/// ```
///
/// ```
/// # use ioxide_pg::PgError;
/// fn describe(e: &PgError) -> &'static str {
///     if e.sql_state() == Some("42P01") {
///         "missing table"
///     } else if e.is_timeout() {
///         "too slow"
///     } else {
///         "other"
///     }
/// }
/// ```
pub struct PgError {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    /// `false` only when the command is known never to have left this process.
    sent: bool,
    source: Option<Source>,
    /// For a server error: the transaction status of the ReadyForQuery that ended the reply.
    txn_after: Option<crate::TxnStatus>,
}

/// What an operation was waiting for when it timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// Opening the connection (connect, startup, authentication): `connect_timeout`.
    Connect,
    /// A command waiting for its reply: `command_timeout`.
    Command,
    /// Waiting to rent a connection from the pool: `acquire_timeout`.
    Acquire,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::Command => "command",
            TimeoutKind::Acquire => "acquire",
        })
    }
}

#[derive(Debug)]
enum Kind {
    /// The server answered with an ErrorResponse.
    Server(Box<DbError>),
    /// The transport failed (reset, EOF, refused, …); `source` holds the `io::Error`.
    Io { context: String },
    /// The server sent bytes that make no sense: malformed framing or a message out of place.
    Protocol(String),
    /// TLS could not be set up, or a record failed; `source` holds the rustls error.
    Tls(String),
    /// A backend message announced a length above `max_message_bytes`.
    MessageTooLarge { len: usize, max: usize },
    /// A deadline passed.
    Timeout { what: TimeoutKind, after: Duration },
    /// Authentication could not proceed or the server failed to prove itself.
    Auth(String),
    /// An option is invalid.
    Config {
        field: String,
        value: Option<String>,
        msg: String,
    },
    /// A value could not be converted to or from its wire form, or a column does not exist.
    Conversion(String),
    /// The connection is closed or broken.
    Closed(String),
    /// The API was used in a way it cannot serve (e.g. a transaction on the pool's shared
    /// connections).
    Misuse(String),
    /// `query_one`/`query_opt` got a number of rows it cannot return.
    RowCount {
        op: &'static str,
        expected: &'static str,
        rows: u64,
    },
}

impl PgError {
    fn new(kind: Kind) -> PgError {
        PgError {
            inner: Box::new(Inner {
                kind,
                sent: true,
                source: None,
                txn_after: None,
            }),
        }
    }

    fn with_source(mut self, source: Source) -> PgError {
        self.inner.source = Some(source);
        self
    }

    /// A server error (an ErrorResponse), carrying every field the server sent.
    pub(crate) fn server(err: impl Into<Box<DbError>>) -> PgError {
        PgError::new(Kind::Server(err.into()))
    }

    /// A transport failure; `context` says what was being done (`"sending Query"`,
    /// `"connecting to 127.0.0.1:5432"`).
    pub(crate) fn io(context: impl Into<String>, err: io::Error) -> PgError {
        PgError::new(Kind::Io {
            context: context.into(),
        })
        .with_source(Box::new(err))
    }

    /// The server's bytes violate the protocol. `msg` says which message, in which state.
    pub(crate) fn protocol(msg: impl Into<String>) -> PgError {
        PgError::new(Kind::Protocol(msg.into()))
    }

    /// A backend message of `len` bytes exceeds `max` (`max_message_bytes`).
    pub(crate) fn tls(msg: impl Into<String>, err: rustls::Error) -> PgError {
        PgError::new(Kind::Tls(msg.into())).with_source(Box::new(err))
    }

    /// A TLS failure without a rustls error (the server refused TLS, plaintext after `S`).
    pub(crate) fn tls_refused(msg: impl Into<String>) -> PgError {
        PgError::new(Kind::Tls(msg.into()))
    }

    pub(crate) fn message_too_large(len: usize, max: usize) -> PgError {
        PgError::new(Kind::MessageTooLarge { len, max })
    }

    /// `what` did not finish within `after`.
    pub(crate) fn timeout(what: TimeoutKind, after: Duration) -> PgError {
        PgError::new(Kind::Timeout { what, after })
    }

    /// Authentication failed or cannot be done.
    pub(crate) fn auth(msg: impl Into<String>) -> PgError {
        PgError::new(Kind::Auth(msg.into()))
    }

    /// The option `field` is invalid. `value` is the offending text, when it is safe to show
    /// (never pass a password).
    pub(crate) fn config(
        field: impl Into<String>,
        value: Option<&str>,
        msg: impl Into<String>,
    ) -> PgError {
        PgError::new(Kind::Config {
            field: field.into(),
            value: value.map(str::to_owned),
            msg: msg.into(),
        })
        .never_sent()
    }

    /// For a config error about text that may be part of a password (it follows one in a
    /// conninfo string or URL): drops the quoted text and appends `hint` instead.
    pub(crate) fn redacted(mut self, hint: &str) -> PgError {
        if let Kind::Config { value, msg, .. } = &mut self.inner.kind {
            if value.take().is_some() {
                msg.push_str(hint);
            }
        }
        self
    }

    /// A value could not be converted, or a column index/name is wrong — or, from a row
    /// callback, any reason to stop: the command fails with this error. Always
    /// `was_sent() == true`.
    pub fn conversion(msg: impl Into<String>) -> PgError {
        PgError::new(Kind::Conversion(msg.into()))
    }

    /// Like [`PgError::conversion`], keeping the underlying error as the source.
    pub fn conversion_with(msg: impl Into<String>, source: Source) -> PgError {
        PgError::conversion(msg).with_source(source)
    }

    /// The API was used in a way it cannot serve; `msg` says how to use it instead.
    pub(crate) fn misuse(msg: impl Into<String>) -> PgError {
        PgError::new(Kind::Misuse(msg.into()))
    }

    /// `op` (`"query_one"`) expected `expected` (`"exactly one row"`) but got `rows`.
    pub(crate) fn wrong_row_count(op: &'static str, expected: &'static str, rows: u64) -> PgError {
        PgError::new(Kind::RowCount { op, expected, rows })
    }

    /// The connection is closed or broken; `msg` says why.
    pub(crate) fn closed(msg: impl Into<String>) -> PgError {
        PgError::new(Kind::Closed(msg.into()))
    }

    /// Attaches a cause, shown after the error's own message and returned by `source()`.
    #[must_use]
    pub fn with_cause(self, cause: impl Into<String>) -> PgError {
        self.with_source(Box::new(io::Error::other(cause.into())))
    }

    /// An equivalent error for another waiter: same kind, fields and message (an I/O cause is
    /// carried over as text). A broken connection hands one to every command it fails, so each
    /// keeps `is_transport()`, `sql_state()` and the rest.
    pub fn replicate(&self) -> PgError {
        let kind = match &self.inner.kind {
            Kind::Server(e) => Kind::Server(e.clone()),
            Kind::Io { context } => Kind::Io {
                context: context.clone(),
            },
            Kind::Protocol(m) => Kind::Protocol(m.clone()),
            Kind::Tls(m) => Kind::Tls(m.clone()),
            Kind::MessageTooLarge { len, max } => Kind::MessageTooLarge {
                len: *len,
                max: *max,
            },
            Kind::Timeout { what, after } => Kind::Timeout {
                what: *what,
                after: *after,
            },
            Kind::Auth(m) => Kind::Auth(m.clone()),
            Kind::Config { field, value, msg } => Kind::Config {
                field: field.clone(),
                value: value.clone(),
                msg: msg.clone(),
            },
            Kind::Conversion(m) => Kind::Conversion(m.clone()),
            Kind::Closed(m) => Kind::Closed(m.clone()),
            Kind::Misuse(m) => Kind::Misuse(m.clone()),
            Kind::RowCount { op, expected, rows } => Kind::RowCount {
                op,
                expected,
                rows: *rows,
            },
        };
        let mut e = PgError::new(kind);
        e.inner.sent = self.inner.sent;
        if let Some(src) = &self.inner.source {
            let kind = src
                .downcast_ref::<io::Error>()
                .map_or(io::ErrorKind::Other, io::Error::kind);
            e = e.with_source(Box::new(io::Error::new(kind, src.to_string())));
        }
        e
    }

    /// Marks this error as belonging to a command that never left this process, so retrying it
    /// on another connection cannot run it twice.
    #[must_use]
    pub(crate) fn never_sent(mut self) -> PgError {
        self.inner.sent = false;
        self
    }

    /// Marks this error as belonging to a command that may have reached the server (the
    /// default).
    #[must_use]
    pub(crate) fn maybe_sent(mut self) -> PgError {
        self.inner.sent = true;
        self
    }

    /// `false` when the command is known never to have been sent — safe to retry; `true` when
    /// it may have run on the server.
    pub fn was_sent(&self) -> bool {
        self.inner.sent
    }

    /// For a server error returned by a command: the session's transaction status when the
    /// server was ready again after it — `Failed` means the error aborted an open transaction
    /// block (every further command is refused until it ends), `Idle` that no block was open.
    /// `None` for other errors.
    pub fn transaction_status(&self) -> Option<crate::TxnStatus> {
        self.inner.txn_after
    }

    pub(crate) fn set_transaction_status(&mut self, txn: crate::TxnStatus) {
        self.inner.txn_after = Some(txn);
    }

    /// The SQLSTATE of a server error (`Some("42P01")`), `None` for other errors.
    pub fn sql_state(&self) -> Option<&str> {
        self.as_db_error().map(DbError::code)
    }

    /// The SQLSTATE of a server error as a [`SqlState`], `None` for other errors; compare it
    /// with the named constants as with tokio-postgres:
    ///
    /// ```
    /// # use ioxide_pg::{PgError, SqlState};
    /// fn is_duplicate(e: &PgError) -> bool {
    ///     e.code() == Some(&SqlState::UNIQUE_VIOLATION)
    /// }
    /// ```
    pub fn code(&self) -> Option<&SqlState> {
        self.as_db_error().map(DbError::state)
    }

    /// The server error with all its fields, if this is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match &self.inner.kind {
            Kind::Server(e) => Some(e),
            _ => None,
        }
    }

    /// A server error (ErrorResponse).
    pub fn is_server(&self) -> bool {
        matches!(self.inner.kind, Kind::Server(_))
    }

    /// A timeout of any kind; see [`PgError::timeout_kind`].
    pub fn is_timeout(&self) -> bool {
        matches!(self.inner.kind, Kind::Timeout { .. })
    }

    /// What timed out, if this is a timeout.
    pub fn timeout_kind(&self) -> Option<TimeoutKind> {
        match self.inner.kind {
            Kind::Timeout { what, .. } => Some(what),
            _ => None,
        }
    }

    /// A transport failure: I/O error, malformed framing, a message out of place or too
    /// large, a TLS failure. The connection that saw it is broken.
    pub fn is_transport(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::Io { .. } | Kind::Protocol(_) | Kind::MessageTooLarge { .. } | Kind::Tls(_)
        )
    }

    /// TLS failed: the server refused it where `sslmode` requires it, its certificate was
    /// refused (unknown CA, expired, another host), it sent an alert, or a record was
    /// corrupt. The message names the cause; the source is the rustls error when there is
    /// one.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner.kind, Kind::Tls(_))
    }

    /// The server violated the protocol (including an oversized message).
    pub fn is_protocol(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::Protocol(_) | Kind::MessageTooLarge { .. }
        )
    }

    /// The connection was closed or is broken.
    pub fn is_closed(&self) -> bool {
        matches!(self.inner.kind, Kind::Closed(_))
    }

    /// Authentication failed or was refused (an unsupported method, `require_auth`, a bad
    /// server signature). A wrong password is a server error (`28P01`), not this.
    pub fn is_auth(&self) -> bool {
        matches!(self.inner.kind, Kind::Auth(_))
    }

    /// An invalid option.
    pub fn is_config(&self) -> bool {
        matches!(self.inner.kind, Kind::Config { .. })
    }

    /// The option an [`is_config`](PgError::is_config) error is about.
    pub fn config_field(&self) -> Option<&str> {
        match &self.inner.kind {
            Kind::Config { field, .. } => Some(field),
            _ => None,
        }
    }

    /// A value conversion failed, or a column name/index is wrong.
    pub fn is_conversion(&self) -> bool {
        matches!(self.inner.kind, Kind::Conversion(_))
    }

    /// The API was used in a way it cannot serve: for example a command run through the
    /// pool's shared path left its connection inside a transaction (transactions need
    /// `PgPool::rent()`). A server error that did the same keeps its SQLSTATE and carries
    /// the explanation as its cause instead.
    pub fn is_misuse(&self) -> bool {
        matches!(self.inner.kind, Kind::Misuse(_))
    }

    /// `query_one` got no row or several, or `query_opt` several: the statement ran (and
    /// committed, in autocommit) but its row count was not what the caller asked for.
    pub fn is_row_count(&self) -> bool {
        matches!(self.inner.kind, Kind::RowCount { .. })
    }

    /// For a [row-count error](PgError::is_row_count): how many rows the query returned.
    pub fn row_count(&self) -> Option<u64> {
        match self.inner.kind {
            Kind::RowCount { rows, .. } => Some(rows),
            _ => None,
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            Kind::Server(e) => fmt::Display::fmt(e, f)?,
            Kind::Io { context } => write!(f, "I/O error while {context}")?,
            Kind::Protocol(msg) => write!(f, "protocol error: {msg}")?,
            Kind::Tls(msg) => write!(f, "TLS error: {msg}")?,
            Kind::MessageTooLarge { len, max } => write!(
                f,
                "backend message of {len} bytes exceeds max_message_bytes ({max} bytes)"
            )?,
            Kind::Timeout { what, after } => write!(f, "{what} timed out after {after:?}")?,
            Kind::Auth(msg) => write!(f, "authentication failed: {msg}")?,
            Kind::Config {
                field,
                value: Some(value),
                msg,
            } => write!(f, "invalid {field} {value:?}: {msg}")?,
            Kind::Config {
                field,
                value: None,
                msg,
            } => write!(f, "invalid {field}: {msg}")?,
            Kind::Conversion(msg) => write!(f, "conversion error: {msg}")?,
            Kind::Closed(msg) => write!(f, "connection closed: {msg}")?,
            Kind::Misuse(msg) => write!(f, "misuse: {msg}")?,
            Kind::RowCount { op, expected, rows } => write!(
                f,
                "{op}: expected {expected}, the query returned {rows} row{}",
                if *rows == 1 { "" } else { "s" }
            )?,
        }
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgError")
            .field("kind", &self.inner.kind)
            .field("sent", &self.inner.sent)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl StdError for PgError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.kind {
            Kind::Server(e) => Some(&**e),
            _ => self
                .inner
                .source
                .as_deref()
                .map(|s| s as &(dyn StdError + 'static)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<PgError>();
        assert_send_sync::<DbError>();
    }

    #[test]
    fn config_error_names_field_and_value() {
        let e = PgError::config("port", Some("abc"), "invalid digit found in string");
        assert_eq!(
            e.to_string(),
            "invalid port \"abc\": invalid digit found in string"
        );
        assert!(e.is_config());
        assert_eq!(e.config_field(), Some("port"));
        assert!(!e.was_sent());
    }

    #[test]
    fn io_error_keeps_source_and_context() {
        let e = PgError::io(
            "reading from 127.0.0.1:5432",
            io::ErrorKind::ConnectionReset.into(),
        );
        assert!(e.is_transport());
        assert!(e
            .to_string()
            .starts_with("I/O error while reading from 127.0.0.1:5432: "));
        let src = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(
            src.map(io::Error::kind),
            Some(io::ErrorKind::ConnectionReset)
        );
    }

    #[test]
    fn timeout_says_what_and_after_how_long() {
        let e = PgError::timeout(TimeoutKind::Command, Duration::from_secs(30));
        assert!(e.is_timeout() && !e.is_transport());
        assert_eq!(e.timeout_kind(), Some(TimeoutKind::Command));
        assert_eq!(e.to_string(), "command timed out after 30s");
    }

    #[test]
    fn delivery_flag_round_trips() {
        let e = PgError::closed("connection reset").never_sent();
        assert!(!e.was_sent() && e.is_closed());
        assert!(e.maybe_sent().was_sent());
    }

    #[test]
    fn the_public_constructors_never_claim_never_sent() {
        // The only constructors a user can reach, and what a user can do to their errors.
        let public = [
            PgError::conversion("stop"),
            PgError::conversion_with("bad value", Box::new(io::Error::other("why"))),
            PgError::conversion("stop").with_cause("because"),
            PgError::conversion("stop").replicate(),
        ];
        for e in &public {
            assert!(e.was_sent(), "{e:?}");
            assert!(e.is_conversion(), "{e:?}");
        }
        // The driver's own constructors default to "may have been sent" as well, except a
        // config error (no command exists yet).
        assert!(PgError::closed("x").was_sent());
        assert!(PgError::protocol("x").was_sent());
        assert!(PgError::timeout(TimeoutKind::Command, Duration::ZERO).was_sent());
        assert!(!PgError::config("port", None, "x").was_sent());
    }

    #[test]
    fn too_large_is_transport_and_protocol() {
        let e = PgError::message_too_large(100, 10);
        assert!(e.is_transport() && e.is_protocol());
        assert_eq!(
            e.to_string(),
            "backend message of 100 bytes exceeds max_message_bytes (10 bytes)"
        );
    }

    #[test]
    fn a_row_count_error_says_how_many_and_is_its_own_kind() {
        let e = PgError::wrong_row_count("query_one", "exactly one row", 1);
        assert_eq!(
            e.to_string(),
            "query_one: expected exactly one row, the query returned 1 row"
        );
        let e = PgError::wrong_row_count("query_opt", "at most one row", 4);
        assert_eq!((e.is_row_count(), e.row_count()), (true, Some(4)));
        assert!(!e.is_conversion() && !e.is_misuse() && !e.is_server() && e.was_sent());
        let c = PgError::conversion("x");
        assert_eq!((c.is_row_count(), c.row_count()), (false, None));
    }
}
