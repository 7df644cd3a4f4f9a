//! [`CancelToken`]: cancels a connection's running query from any thread.
//!
//! A connection lives on one reactor and is not `Send`; the token is. It holds the owning
//! reactor's [`RemoteHandle`] and an id under which that reactor's [`TokenTargets`] service
//! keeps a weak reference to the connection. [`CancelToken::cancel`] posts a closure to the
//! reactor; there the closure finds the connection, marks its commands in flight as
//! user-cancelled (as [`PgConnection::cancel`](crate::PgConnection::cancel) does) and spawns
//! the CancelRequest on that reactor's ring, with the connection's target, TCP options and
//! TLS parameters. The result comes back through a oneshot channel.

use super::state::Conn;
use super::tasks;
use crate::proto::startup::BackendKey;
use crate::PgError;
use futures_channel::oneshot;
use ioxide::{Reactor, RemoteHandle};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};

/// Per-reactor registry of the connections tokens were made for.
#[derive(Default)]
pub(crate) struct TokenTargets {
    next: Cell<u64>,
    conns: RefCell<Vec<(u64, Weak<Conn>)>>,
}

impl TokenTargets {
    /// The id under which `conn` is found (the same for every token of one connection).
    fn register(conn: &Rc<Conn>, reactor: &Reactor) -> u64 {
        let targets = match reactor.try_service::<TokenTargets>() {
            Some(t) => t,
            None => reactor.add_service(TokenTargets::default()),
        };
        let mut conns = targets.conns.borrow_mut();
        conns.retain(|(_, w)| w.strong_count() > 0);
        let me = Rc::downgrade(conn);
        if let Some((id, _)) = conns.iter().find(|(_, w)| w.ptr_eq(&me)) {
            return *id;
        }
        let id = targets.next.get() + 1;
        targets.next.set(id);
        conns.push((id, me));
        id
    }

    /// The connection registered under `id` on the current reactor, if it still lives.
    fn find(id: u64) -> Option<Rc<Conn>> {
        let targets = Reactor::try_current()?.try_service::<TokenTargets>()?;
        let conns = targets.conns.borrow();
        conns
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, w)| w.upgrade())
    }
}

/// Cancels whatever a connection is running, from any thread: `Send + Sync + Clone`.
///
/// Made by [`PgConnection::cancel_token`](crate::PgConnection::cancel_token). Like
/// tokio-postgres's `CancelToken::cancel_query`, [`cancel`](CancelToken::cancel) is async
/// and resolves once the server has acted on the CancelRequest. It runs on any executor: the
/// work happens on the reactor that owns the connection (the request is posted to it and the
/// CancelRequest sent on its ring), and the future only waits for the answer. From a plain
/// thread, `ioxide::block_on(token.cancel())` waits for it.
///
/// ```no_run
/// # async fn f(conn: &ioxide_pg::PgConnection) {
/// let token = conn.cancel_token();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(1));
///     if let Err(e) = ioxide::block_on(token.cancel()) {
///         eprintln!("cancel failed: {e}");
///     }
/// });
/// // Fails with SQLSTATE 57014 (query_canceled) after about a second.
/// let r = conn.query("SELECT pg_sleep(30)").await;
/// # }
/// ```
///
/// A CancelRequest targets the server session, not a command: whatever the connection runs
/// when it arrives is cancelled (and not retried), possibly nothing.
#[derive(Clone)]
pub struct CancelToken {
    /// `None` when the token was made with no reactor running (its reactor had stopped).
    remote: Option<RemoteHandle>,
    id: u64,
    key: Option<BackendKey>,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("backend_pid", &self.key.map(|k| k.process_id))
            .field("reactor", &self.remote)
            .finish()
    }
}

impl CancelToken {
    /// A token for `conn`, which lives on the current reactor.
    pub(crate) fn new(conn: &Rc<Conn>) -> CancelToken {
        let reactor = Reactor::try_current();
        let id = reactor
            .as_ref()
            .map_or(0, |r| TokenTargets::register(conn, r));
        CancelToken {
            remote: reactor.map(|r| r.remote()),
            id,
            key: conn.key,
        }
    }

    /// The server process the token cancels on (`pg_backend_pid()` of its session); `None`
    /// when the server sent no BackendKeyData, and [`cancel`](CancelToken::cancel) fails.
    pub fn backend_pid(&self) -> Option<i32> {
        self.key.map(|k| k.process_id)
    }

    /// Sends a CancelRequest for whatever the connection is running and resolves once the
    /// server has acted on it (closed the cancel connection), bounded by 2 s. Lazy: nothing
    /// is sent until the future is polled.
    ///
    /// Fails ([`PgError::is_closed`]) when the server sent no BackendKeyData, when the
    /// connection is closed or broken, or when its reactor has stopped; with an I/O, TLS or
    /// timeout error when the cancel connection fails.
    pub async fn cancel(&self) -> Result<(), PgError> {
        if self.key.is_none() {
            return Err(PgError::closed(
                "the server sent no BackendKeyData; cannot cancel",
            ));
        }
        let (tx, rx) = oneshot::channel();
        let id = self.id;
        self.remote
            .as_ref()
            .ok_or_else(reactor_stopped)?
            .post(move || start_cancel(id, tx))
            .map_err(|_| reactor_stopped())?;
        rx.await.unwrap_or_else(|_| Err(reactor_stopped()))
    }
}

fn reactor_stopped() -> PgError {
    PgError::closed("the reactor that owned the connection has stopped; cannot cancel")
}

/// On the owning reactor: finds the connection, marks its commands and spawns the request.
fn start_cancel(id: u64, tx: oneshot::Sender<Result<(), PgError>>) {
    let conn = TokenTargets::find(id);
    let Some(conn) = conn.filter(|c| !c.is_broken() && !c.st.borrow().closing) else {
        let _ = tx.send(Err(PgError::closed(
            "the connection of this CancelToken is closed; cannot cancel",
        )));
        return;
    };
    let Some(key) = conn.key else {
        let _ = tx.send(Err(PgError::closed(
            "the server sent no BackendKeyData; cannot cancel",
        )));
        return;
    };
    // Whatever it hits was asked for: a 57014 is never retried as collateral.
    for c in conn.st.borrow_mut().queue.iter_mut() {
        c.exposed_to_user_cancel = true;
    }
    let target = conn.target.clone();
    let tcp = conn.tcp;
    let tls = conn.tls_params.clone();
    drop(conn);
    drop(ioxide::spawn(async move {
        let r = tasks::send_cancel(&target, &tcp, tls.as_ref(), key).await;
        let _ = tx.send(r);
    }));
}

#[cfg(test)]
mod tests {
    use super::CancelToken;

    #[test]
    fn a_cancel_token_crosses_threads() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<CancelToken>();
    }
}
