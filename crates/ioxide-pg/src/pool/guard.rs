//! Rented connections and transactions.

use super::Lease;
use crate::{PgConnection, PgError, TxnStatus};
use std::fmt;
use std::ops::Deref;

/// A connection rented exclusively from the pool; derefs to [`PgConnection`]. Returned on
/// drop: clean ones at once; one left inside a transaction is rolled back first (in the
/// background, still unavailable to other renters); one dropped with a command in flight or
/// broken is discarded and replaced.
pub struct PooledConn {
    lease: Option<Lease>,
}

impl fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field("conn", &self.lease.as_ref().map(|l| &l.conn))
            .finish()
    }
}

impl PooledConn {
    pub(crate) fn new(lease: Lease) -> PooledConn {
        PooledConn { lease: Some(lease) }
    }

    /// Starts a transaction (`BEGIN`); it rolls back if dropped without
    /// [`Transaction::commit`].
    pub async fn begin(&self) -> Result<Transaction<'_>, PgError> {
        self.query("BEGIN").await?;
        Ok(Transaction {
            conn: self,
            done: false,
        })
    }
}

impl Deref for PooledConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match &self.lease {
            Some(l) => &l.conn,
            None => unreachable_conn(),
        }
    }
}

#[cold]
fn unreachable_conn() -> &'static PgConnection {
    // The lease is only taken out in Drop; Deref cannot run after that.
    panic!("ioxide-pg: PooledConn used after drop")
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let conn = &lease.conn;
        if conn.is_broken() || conn.in_flight() > 0 {
            lease.discard();
            return;
        }
        if conn.transaction_status() == TxnStatus::Idle {
            return; // clean: the lease's drop gives it back
        }
        // Inside a transaction: roll back before anyone else sees it.
        drop(ioxide::spawn(async move {
            let ok = lease.conn.query("ROLLBACK").await.is_ok()
                && lease.conn.transaction_status() == TxnStatus::Idle;
            if !ok {
                lease.discard();
            }
            drop(lease);
        }));
    }
}

/// A transaction on a rented connection. Dropped without commit, it rolls back (through the
/// rented connection's return path).
pub struct Transaction<'a> {
    conn: &'a PooledConn,
    done: bool,
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
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
        if !self.done {
            // Queued behind whatever is in flight, ahead of anything issued later.
            self.conn.query_detached("ROLLBACK");
        }
    }
}

impl Transaction<'_> {
    /// `COMMIT`.
    pub async fn commit(mut self) -> Result<(), PgError> {
        self.done = true;
        self.conn.query("COMMIT").await.map(drop)
    }

    /// `ROLLBACK`.
    pub async fn rollback(mut self) -> Result<(), PgError> {
        self.done = true;
        self.conn.query("ROLLBACK").await.map(drop)
    }
}
