//! Rented connections and transactions.

use super::Lease;
use crate::{PgConnection, TxnStatus};
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

/// How long a returned connection may take to finish what is in flight on it (a transaction's
/// ROLLBACK, a dropped command's reply) before it is discarded instead.
const RETURN_GRACE: Duration = Duration::from_secs(2);

/// A connection rented exclusively from the pool; derefs to [`PgConnection`] (a borrow: no
/// handle to it outlives the guard). Returned on drop: clean ones at once; one left inside a
/// transaction or with commands in flight is drained and rolled back first, in the
/// background, still unavailable to other renters, and returns once that answers; it is
/// discarded and replaced only if that does not answer within 2 s, or if it broke. Dropped
/// outside a reactor (after it stopped), it is discarded.
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
        // The renter may open transactions and set session state: the shared path's
        // autocommit guard is off until the connection is back.
        lease.conn.set_shared(false);
        PooledConn { lease: Some(lease) }
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
        if conn.is_broken() {
            lease.discard();
            return;
        }
        if conn.in_flight() == 0 && conn.transaction_status() == TxnStatus::Idle {
            conn.set_shared(true);
            return; // clean: the lease's drop gives it back
        }
        if ioxide::Reactor::try_current().is_none() {
            // No reactor to finish the work on: let it go quietly.
            lease.discard();
            return;
        }
        // Commands in flight (a dropped transaction's ROLLBACK, a dropped future's reply) or
        // a transaction open: finish and roll back before anyone else sees it.
        drop(ioxide::spawn(async move {
            let conn = &lease.conn;
            let mut ok = conn.wait_idle(RETURN_GRACE).await;
            if ok && conn.transaction_status() != TxnStatus::Idle {
                let r = ioxide::time::timeout(RETURN_GRACE, conn.query("ROLLBACK")).await;
                ok = matches!(r, Ok(Ok(_)));
            }
            if ok && conn.transaction_status() == TxnStatus::Idle && !conn.is_broken() {
                conn.set_shared(true);
            } else {
                lease.discard();
            }
            drop(lease);
        }));
    }
}
