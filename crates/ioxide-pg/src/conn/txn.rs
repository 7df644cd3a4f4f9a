//! Transactions on a connection: [`PgConnection::begin`], the builder
//! ([`PgConnection::build_transaction`]: isolation level, read only, deferrable) and
//! savepoints ([`Transaction::savepoint`]).
//!
//! A transaction borrows its connection; dropped without [`Transaction::commit`] it rolls
//! back: a `ROLLBACK` (or `ROLLBACK TO SAVEPOINT` for a savepoint) is queued on the
//! connection at once, ahead of anything issued later, and its reply is drained by the
//! connection. The same code serves a rented pool connection ([`crate::PooledConn`] derefs to
//! [`PgConnection`]), whose return path also waits for that rollback.

use std::fmt;
use std::ops::Deref;

use super::PgConnection;
use crate::{PgError, TxnStatus};

/// The isolation level of a transaction (`BEGIN ISOLATION LEVEL …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// `READ UNCOMMITTED` (PostgreSQL runs it as `READ COMMITTED`).
    ReadUncommitted,
    /// `READ COMMITTED`, PostgreSQL's default.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl IsolationLevel {
    fn sql(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "READ UNCOMMITTED",
            IsolationLevel::ReadCommitted => "READ COMMITTED",
            IsolationLevel::RepeatableRead => "REPEATABLE READ",
            IsolationLevel::Serializable => "SERIALIZABLE",
        }
    }
}

/// Options of a transaction before it starts; see [`PgConnection::build_transaction`].
#[derive(Debug)]
#[must_use = "a transaction builder does nothing until start() is awaited"]
pub struct TransactionBuilder<'a> {
    conn: &'a PgConnection,
    isolation: Option<IsolationLevel>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
}

impl<'a> TransactionBuilder<'a> {
    /// The isolation level (default: the session's, normally `READ COMMITTED`).
    pub fn isolation_level(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// `READ ONLY` (true) or `READ WRITE` (false); default: the session's.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = Some(read_only);
        self
    }

    /// `DEFERRABLE` (true) or `NOT DEFERRABLE`; only meaningful for a serializable read-only
    /// transaction, which may then wait for a snapshot that cannot fail with a
    /// serialization error.
    pub fn deferrable(mut self, deferrable: bool) -> Self {
        self.deferrable = Some(deferrable);
        self
    }

    /// The `BEGIN` statement these options make.
    fn begin_sql(&self) -> String {
        let mut sql = String::from("BEGIN");
        let mut modes = Vec::new();
        if let Some(level) = self.isolation {
            modes.push(format!("ISOLATION LEVEL {}", level.sql()));
        }
        match self.read_only {
            Some(true) => modes.push("READ ONLY".to_owned()),
            Some(false) => modes.push("READ WRITE".to_owned()),
            None => {}
        }
        match self.deferrable {
            Some(true) => modes.push("DEFERRABLE".to_owned()),
            Some(false) => modes.push("NOT DEFERRABLE".to_owned()),
            None => {}
        }
        if !modes.is_empty() {
            sql.push(' ');
            sql.push_str(&modes.join(", "));
        }
        sql
    }

    /// Sends the `BEGIN`, once the commands already in flight on the connection have
    /// answered (a dropped transaction's `ROLLBACK`, say). Fails, sending nothing, if the
    /// connection is then inside a transaction block (a second `BEGIN` would only draw a
    /// warning and nest nothing: use [`Transaction::savepoint`]), and on a connection the
    /// pool shares among callers (rent one).
    pub async fn start(self) -> Result<Transaction<'a>, PgError> {
        let conn = self.conn;
        if conn.conn.shared.get() {
            return Err(PgError::misuse(
                "a transaction needs a connection of its own: rent one with PgPool::rent()",
            )
            .never_sent());
        }
        if conn.in_flight() > 0 {
            let limit = conn
                .conn
                .command_timeout
                .unwrap_or(std::time::Duration::from_secs(30));
            conn.wait_idle(limit).await;
        }
        if let Some(e) = conn.conn.st.borrow().broken.as_ref() {
            return Err(e.replicate().never_sent());
        }
        if conn.transaction_status() != TxnStatus::Idle {
            return Err(PgError::misuse(format!(
                "begin: the connection is already inside a transaction (status {:?}); commit \
                 or roll it back, or use Transaction::savepoint for a nested one",
                conn.transaction_status()
            ))
            .never_sent());
        }
        if conn.in_flight() > 0 {
            return Err(PgError::misuse(
                "begin: commands issued concurrently on the connection are still in flight",
            )
            .never_sent());
        }
        conn.query(&self.begin_sql()).await?;
        Ok(Transaction {
            conn,
            savepoint: None,
            depth: 0,
            done: false,
        })
    }
}

/// A transaction (or a savepoint inside one) on a borrowed connection; derefs to
/// [`PgConnection`] for queries. Commit or roll back explicitly; dropped without either, it
/// rolls back: a `ROLLBACK` (`ROLLBACK TO SAVEPOINT` for a savepoint) is queued on the
/// connection at once, ahead of anything issued later, and the next `begin` waits for it.
///
/// ```no_run
/// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
/// use ioxide_pg::IsolationLevel;
/// let mut tx = conn
///     .build_transaction()
///     .isolation_level(IsolationLevel::Serializable)
///     .start()
///     .await?;
/// tx.execute("INSERT INTO t VALUES ($1)", &[&1i64]).await?;
/// {
///     let sp = tx.savepoint().await?;
///     sp.execute("INSERT INTO t VALUES ($1)", &[&2i64]).await?;
///     sp.rollback().await?; // the second insert is undone, the first stays
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[must_use = "a transaction rolls back when dropped: commit it"]
pub struct Transaction<'a> {
    conn: &'a PgConnection,
    /// The savepoint this is, for a nested transaction.
    savepoint: Option<String>,
    /// Nesting depth: 0 for the transaction itself.
    depth: u32,
    done: bool,
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("savepoint", &self.savepoint)
            .field("done", &self.done)
            .finish()
    }
}

impl Deref for Transaction<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.done || self.conn.is_broken() {
            return;
        }
        // Queued behind whatever is in flight, ahead of anything issued later.
        match &self.savepoint {
            None => self.conn.query_detached("ROLLBACK"),
            Some(name) => self.conn.query_detached(&format!(
                "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
            )),
        }
    }
}

impl<'a> Transaction<'a> {
    /// Commits: `COMMIT`, or `RELEASE SAVEPOINT` for a savepoint (its work then commits or
    /// rolls back with the enclosing transaction). A failed transaction (an error inside it)
    /// commits as a rollback: PostgreSQL answers `COMMIT` with `ROLLBACK`, and this returns an
    /// error saying so (`25P02`-like, [`PgError::is_misuse`]) instead of pretending it
    /// committed.
    pub async fn commit(mut self) -> Result<(), PgError> {
        self.done = true;
        match &self.savepoint {
            None => {
                let r = self.conn.query("COMMIT").await?;
                if r.command_tag() == "ROLLBACK" {
                    return Err(PgError::misuse(
                        "commit: the transaction had failed (an error inside it), so the \
                         server rolled it back instead",
                    ));
                }
                Ok(())
            }
            Some(name) => self
                .conn
                .query(&format!("RELEASE SAVEPOINT {name}"))
                .await
                .map(drop),
        }
    }

    /// Rolls back: `ROLLBACK`, or `ROLLBACK TO SAVEPOINT` (then `RELEASE`) for a savepoint,
    /// which undoes only the savepoint's work and leaves the enclosing transaction usable
    /// (even after an error inside the savepoint).
    pub async fn rollback(mut self) -> Result<(), PgError> {
        self.done = true;
        match &self.savepoint {
            None => self.conn.query("ROLLBACK").await.map(drop),
            Some(name) => self
                .conn
                .query(&format!(
                    "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
                ))
                .await
                .map(drop),
        }
    }

    /// A nested transaction: `SAVEPOINT sp_<depth>`. It borrows this one, so the outer
    /// transaction cannot be used until the savepoint is committed, rolled back or dropped
    /// (which rolls back to it).
    pub async fn savepoint(&mut self) -> Result<Transaction<'_>, PgError> {
        let depth = self.depth + 1;
        let name = format!("ioxide_sp_{depth}");
        self.conn.query(&format!("SAVEPOINT {name}")).await?;
        Ok(Transaction {
            conn: self.conn,
            savepoint: Some(name),
            depth,
            done: false,
        })
    }

    /// The connection the transaction runs on.
    pub fn connection(&self) -> &'a PgConnection {
        self.conn
    }
}

impl PgConnection {
    /// Starts a transaction (`BEGIN`) with the session's defaults. Errors, sending nothing,
    /// when the connection is already inside one (use [`Transaction::savepoint`] to nest)
    /// or has commands in flight, and on a connection the pool shares (rent one). See
    /// [`Transaction`].
    pub async fn begin(&self) -> Result<Transaction<'_>, PgError> {
        self.build_transaction().start().await
    }

    /// A transaction with options: isolation level, read only, deferrable.
    pub fn build_transaction(&self) -> TransactionBuilder<'_> {
        TransactionBuilder {
            conn: self,
            isolation: None,
            read_only: None,
            deferrable: None,
        }
    }
}
