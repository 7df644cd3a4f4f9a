//! `PgConnection`: one conversation with the server, driven by ring ops on the reactor that
//! opened it. See `state` for who reads the socket, `tasks` for the writer, the watcher, the
//! CancelRequest and the timeout sweep.

mod auto;
mod batch;
mod cache;
mod cancel_token;
mod command;
mod copy;
mod owned;
mod prepared;
pub(crate) mod resolve;
mod result;
mod secure;
mod state;
mod stream;
mod tasks;
mod txn;
mod types;
pub(crate) mod walk;

pub use batch::Pipeline;
pub use cancel_token::CancelToken;
pub use copy::{
    BinaryCopyInWriter, BinaryCopyOutRow, BinaryCopyOutStream, CopyIn, CopyOut, COPY_IN_HIGH_WATER,
};
pub use owned::{FromRow, OwnedRow};
pub use prepared::{Statement, StatementRef, ToStatement};
pub use result::ResultSet;
pub use stream::{Portal, RowStream};
pub use txn::{IsolationLevel, Transaction, TransactionBuilder};

use crate::proto::encode;
use crate::proto::message::TxnStatus;
use crate::proto::reply::{Reply, ReplyEvent};
use crate::proto::startup::{BackendKey, ServerInfo, Startup, StartupStatus};
use crate::proto::{
    frame,
    row::{Columns, Row},
};
use crate::{PgError, PgOptions, QueryResult, Target, TimeoutKind};
use bytes::BytesMut;
use cache::StatementCache;
use command::{CmdFuture, CountSink, RowsSink, SetSink, TagsSink};
use postgres_types::ToSql;
use state::{Conn, DeepMark, ReplyMeter, State, RECV_BUF};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

/// How long a timed-out command's connection may take to resync (the cancelled command
/// reaching ReadyForQuery) before it is torn down.
const CANCEL_GRACE: Duration = Duration::from_millis(500);

/// A parameter list: `&[&41i64, &"text"]`.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One connection to PostgreSQL, on the current reactor.
///
/// Many commands may be in flight at once (pipelining): each ends with its own Sync, so an
/// error stays with its command, and commands issued in the same loop turn leave in one send.
/// A server error is returned after the stream resynchronised; the connection stays usable.
/// A transport failure breaks it: every waiter fails and [`is_broken`](Self::is_broken) turns
/// true.
///
/// Not `Clone`: to share one connection among tasks of its reactor, put it in an `Rc` (as
/// with tokio-postgres's `Client`). A connection rented from a pool ([`crate::PooledConn`])
/// lends `&PgConnection` only, so no handle to it can outlive the rental:
///
/// ```compile_fail
/// # async fn f(pool: ioxide_pg::PgPool) -> Result<(), ioxide_pg::PgError> {
/// let rented = pool.rent().await?;
/// let escaped = ioxide_pg::PgConnection::clone(&rented);
/// drop(rented);
/// escaped.query("BEGIN").await?;
/// # Ok(()) }
/// ```
///
/// When it is dropped, the connection is closed (Terminate, then the socket).
pub struct PgConnection {
    conn: Rc<Conn>,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.conn.st.borrow();
        f.debug_struct("PgConnection")
            .field("backend_pid", &self.conn.key.map(|k| k.process_id))
            .field("in_flight", &st.queue.len())
            .field("broken", &st.broken)
            .finish()
    }
}

impl PgConnection {
    /// Another handle to the same connection, for the pool's own bookkeeping (the last
    /// handle dropped closes the connection).
    pub(crate) fn share(&self) -> PgConnection {
        self.conn.handles.set(self.conn.handles.get() + 1);
        PgConnection {
            conn: self.conn.clone(),
        }
    }
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        let n = self.conn.handles.get() - 1;
        self.conn.handles.set(n);
        if n == 0 {
            self.start_close();
        }
    }
}

impl PgConnection {
    /// Connects with `opts`. Each host may be a Unix socket directory, an IP literal (IPv6
    /// too; or have a `hostaddr`) or a host name, which is resolved on the ring at every call
    /// (`/etc/hosts`, then DNS; see [`ioxide::dns`]), so a name that moves is followed; the
    /// lookup counts towards that host's `connect_timeout`. A failed lookup is a transport
    /// error naming the host, the nameserver and the cause.
    ///
    /// A host list is walked as libpq does: each host in turn (shuffled with
    /// `load_balance_hosts=random`), each bounded by `connect_timeout`, until one accepts and
    /// fits `target_session_attrs`; the error of a failed walk names every host and why it was
    /// skipped.
    pub async fn connect(opts: &PgOptions) -> Result<PgConnection, PgError> {
        let topo = walk::Topology::new(opts, None)?;
        walk::connect(&topo).await
    }

    /// As [`connect`](Self::connect), with one resolved target per host of the options'
    /// list (from [`PgOptions::resolve_hosts`]).
    pub async fn connect_to_hosts(
        opts: &PgOptions,
        targets: Vec<Target>,
    ) -> Result<PgConnection, PgError> {
        let topo = walk::Topology::new(opts, Some(targets))?;
        walk::connect(&topo).await
    }

    /// Connects to an already resolved `target`, bounded by `connect_timeout`, and checks
    /// `target_session_attrs` (a list of one host). Invalid options fail here, naming the
    /// field, before anything is sent.
    pub async fn connect_to(opts: &PgOptions, target: Target) -> Result<PgConnection, PgError> {
        if opts.get_target_session_attrs() == crate::TargetSessionAttrs::Any {
            return Self::connect_since(opts, target, std::time::Instant::now()).await;
        }
        let topo = walk::Topology::new(opts, Some(vec![target]))?;
        walk::connect(&topo).await
    }

    /// One connect to one target, no `target_session_attrs` check, with `connect_timeout`
    /// counted from `began` (when the lookup of the target started).
    pub(crate) async fn connect_since(
        opts: &PgOptions,
        target: Target,
        began: std::time::Instant,
    ) -> Result<PgConnection, PgError> {
        opts.validate_connection()?;
        let open = open(opts, target);
        match opts.get_connect_timeout() {
            Some(t) => match ioxide::time::timeout(t.saturating_sub(began.elapsed()), open).await {
                Ok(r) => r,
                Err(_) => Err(PgError::timeout(TimeoutKind::Connect, t)),
            },
            None => open.await,
        }
    }

    /// Runs `sql` with the simple protocol (several `;`-separated statements allowed; see
    /// [`QueryResult`] for what is reported).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let r = conn.query("SELECT 42").await?;
    /// assert_eq!((r.value(), r.rows(), r.command_tag()), (Some("42"), 1, "SELECT 1"));
    /// # Ok(()) }
    /// ```
    pub async fn query(&self, sql: &str) -> Result<QueryResult, PgError> {
        let mut retried = false;
        loop {
            let (seq, from) = self
                .conn
                .enqueue(Reply::simple(), |out| encode::query(sql, out))?;
            let mut sink = QrSink(QueryResult::new());
            let (r, collateral) = CmdFuture::new(&self.conn, seq, from, &mut sink)
                .outcome()
                .await;
            match r {
                Ok(()) => return Ok(sink.0),
                Err(_) if collateral && !retried => retried = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a script of `;`-separated statements (simple protocol, one round trip) and
    /// returns every statement's command tag, in order (`["CREATE TABLE", "INSERT 0 3",
    /// "SELECT 2"]`); rows are read and dropped. An empty script returns no tags.
    ///
    /// Without an explicit `BEGIN`/`COMMIT` in it, PostgreSQL runs the whole script in one
    /// implicit transaction: if a statement fails, none of the script's work stays, and the
    /// error says which statement (0-based) failed, counting the ones that completed before
    /// it.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let tags = conn
    ///     .batch_execute("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)")
    ///     .await?;
    /// assert_eq!(tags, ["CREATE TABLE", "INSERT 0 2"]);
    /// # Ok(()) }
    /// ```
    pub async fn batch_execute(&self, sql: &str) -> Result<Vec<String>, PgError> {
        let (seq, from) = self
            .conn
            .enqueue(Reply::simple(), |out| encode::query(sql, out))?;
        let mut sink = TagsSink::default();
        let (r, _) = CmdFuture::new(&self.conn, seq, from, &mut sink)
            .outcome()
            .await;
        match r {
            Ok(()) => Ok(sink.0),
            Err(e) if e.is_server() => {
                let done = sink.0.len();
                Err(e.with_cause(format!(
                    "statement {done} of the batch failed ({done} completed before it; \
                     without an explicit transaction none of the batch's work stays)"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one statement once per parameter row, as one pipeline batch: the statement is
    /// prepared (and cached) once, then every row's Bind + Execute leaves in one send under
    /// a single Sync — libpq's pipeline mode, JDBC's batches — and the server answers them in
    /// one go. Returns the rows affected, summed. Use it for bulk inserts and updates that
    /// are too few or too mixed for COPY.
    ///
    /// The batch is **one implicit transaction** (outside an explicit `BEGIN`): if any row
    /// fails, none of the batch's rows stay, and the error says which row (0-based) failed.
    /// Inside a transaction a failure aborts that transaction, as any failed statement does.
    /// A value that cannot be encoded fails before anything is sent, naming its row. Every
    /// row is encoded into the send buffer first: memory grows with the batch (split very
    /// large ones).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let rows: Vec<(i64, String)> = (0..1000).map(|i| (i, format!("item {i}"))).collect();
    /// let params: Vec<[&(dyn ioxide_pg::types::ToSql + Sync); 2]> =
    ///     rows.iter().map(|(id, name)| [id as _, name as _]).collect();
    /// let batch: Vec<ioxide_pg::Params<'_>> = params.iter().map(|p| &p[..]).collect();
    /// let n = conn
    ///     .execute_many("INSERT INTO items (id, name) VALUES ($1, $2)", &batch)
    ///     .await?;
    /// assert_eq!(n, 1000);
    /// # Ok(()) }
    /// ```
    pub async fn execute_many<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        rows: &[Params<'_>],
    ) -> Result<u64, PgError> {
        let target = statement.statement_ref();
        let Ok(n) = u32::try_from(rows.len()) else {
            return Err(PgError::misuse(format!(
                "execute_many: {} rows is more than one batch can carry (2^32 - 1)",
                rows.len()
            ))
            .never_sent());
        };
        if n == 0 {
            return Ok(0);
        }
        let mut attempt = 0;
        loop {
            let (hit, naming) = {
                let mut st = self.conn.st.borrow_mut();
                (st.cache.get(target.key), st.cache.enabled())
            };
            let fresh = hit.is_none();
            let (stmt, close_after) = match hit {
                Some(stmt) => (stmt, None),
                None if !naming => {
                    let stmt = self.describe_as_unnamed(target.sql, target.types).await?;
                    self.keep_description(target.key, &stmt);
                    (stmt, None)
                }
                None => match self.statement_with(target).await {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        if attempt < 2 && self.naming_refused(&e, true) {
                            attempt += 1;
                            continue;
                        }
                        return Err(e);
                    }
                },
            };
            let unnamed = stmt.name.is_empty();
            let reply = if unnamed {
                Reply::parse_bind_execute_many(n)
            } else {
                Reply::bind_execute_many(n)
            };
            let oids: Vec<u32> = if unnamed {
                stmt.params.iter().map(postgres_types::Type::oid).collect()
            } else {
                Vec::new()
            };
            let (seq, from) = self.conn.enqueue(reply, |out| {
                for (i, params) in rows.iter().enumerate() {
                    if unnamed {
                        // Each row parses the statement again: a Parse per Bind is what
                        // the reply machine expects of an unnamed batch.
                        encode::parse("", target.sql, &oids, out)?;
                    }
                    encode::bind("", &stmt.name, params, &stmt.params, out)
                        .map_err(|e| e.with_cause(format!("execute_many: row {i}")))?;
                    encode::execute("", 0, out)?;
                }
                encode::sync(out);
                Ok(())
            })?;
            if let Some(name) = close_after {
                self.close_statement_detached(&name);
            }
            let mut sink = CountSink::default();
            let (r, _) = CmdFuture::new(&self.conn, seq, from, &mut sink)
                .outcome()
                .await;
            let e = match r {
                Ok(()) => return Ok(sink.rows),
                Err(e) => e,
            };
            let stale = stale_statement(&e);
            if stale != Stale::No {
                let name = self.conn.st.borrow_mut().cache.remove(target.key);
                if let Some(name) = name {
                    self.close_statement_detached(&name);
                }
                // The statement was prepared just now, or again after a first refusal.
                if (fresh || attempt > 0) && attempt < 2 && self.naming_refused(&e, true) {
                    attempt += 1;
                    continue;
                }
                if stale == Stale::Retry && attempt == 0 {
                    attempt += 1;
                    continue;
                }
            }
            if !e.is_server() {
                return Err(e);
            }
            let failed = sink.completed;
            let what = if e.transaction_status() == Some(TxnStatus::Idle) {
                "the batch ran as one implicit transaction, so none of its rows stay"
            } else {
                "the transaction it ran in is aborted"
            };
            return Err(e.with_cause(format!(
                "execute_many: row {failed} failed ({failed} ran before it); {what}"
            )));
        }
    }

    /// Runs a parameterized statement (prepared and cached per connection) and collects its
    /// rows. Values travel in binary; the first use of `sql` costs two round trips, later
    /// ones one.
    pub async fn query_params<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<ResultSet, PgError> {
        let mut sink = SetSink(ResultSet::new(Columns::none()));
        self.run_cached(
            statement.statement_ref(),
            params,
            &mut sink,
            &mut |s, stmt| {
                s.0 = ResultSet::new(stmt.columns.clone());
            },
        )
        .await?;
        if sink.0.columns().unresolved() {
            // Caching off, no parameters: the reply described the rows and nobody has looked
            // their types up yet (boxed: the slow path's state stays out of this future). The
            // statement ran: a failed lookup leaves the placeholders, it does not fail it.
            if let Err(e) = Box::pin(self.resolve_result(&mut sink.0)).await {
                tracing::debug!(error = %e, "result column types could not be looked up");
            }
        }
        Ok(sink.0)
    }

    /// Runs a parameterized statement and hands each row to `f` as it arrives, borrowed from
    /// the receive buffer (no allocation per row). Returns the number of rows. If `f` returns
    /// an error, no more rows are delivered, the reply is drained, and that error is returned.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let mut sum = 0i64;
    /// let n = conn
    ///     .query_rows("SELECT n FROM generate_series(1, 10) n", &[], |row| {
    ///         sum += row.get::<i32>("n")? as i64;
    ///         Ok(())
    ///     })
    ///     .await?;
    /// assert_eq!((n, sum), (10, 55));
    /// # Ok(()) }
    /// ```
    pub async fn query_rows<S, F>(
        &self,
        statement: &S,
        params: Params<'_>,
        mut f: F,
    ) -> Result<u64, PgError>
    where
        S: ToStatement + ?Sized,
        F: FnMut(Row<'_>) -> Result<(), PgError>,
    {
        let mut sink = RowsSink::new(Columns::none(), &mut f);
        self.run_cached(
            statement.statement_ref(),
            params,
            &mut sink,
            &mut |s, stmt| {
                s.columns = stmt.columns.clone();
                s.rows = 0;
            },
        )
        .await?;
        Ok(sink.rows)
    }

    /// Runs a parameterized statement that must return exactly one row, and returns it.
    /// No row, or several, is an error ([`PgError::is_row_count`], [`PgError::row_count`])
    /// saying how many came back; the statement has run all the same.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT $1::int8 + 1 AS n", &[&41i64]).await?;
    /// assert_eq!(row.get::<i64>("n")?, 42);
    /// let e = conn.query_one("SELECT 1 WHERE false", &[]).await.unwrap_err();
    /// assert_eq!((e.is_row_count(), e.row_count()), (true, Some(0)));
    /// # Ok(()) }
    /// ```
    pub async fn query_one<S: crate::ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<OwnedRow, PgError> {
        self.query_params(statement, params)
            .await?
            .into_one("query_one")
    }

    /// Runs a parameterized statement that returns at most one row: `None` for no row, a
    /// [row-count error](PgError::is_row_count) for several.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_opt("SELECT 1 WHERE $1", &[&false]).await?;
    /// assert!(row.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn query_opt<S: crate::ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<Option<OwnedRow>, PgError> {
        self.query_params(statement, params)
            .await?
            .into_opt("query_opt")
    }

    /// Runs a parameterized statement and returns the rows it affected.
    pub async fn execute<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<u64, PgError> {
        self.query_params(statement, params)
            .await
            .map(|r| r.rows_affected())
    }

    /// Sends a CancelRequest for whatever this connection is running now (on a separate
    /// connection, as the protocol requires) and waits until the server has acted on it.
    pub async fn cancel(&self) -> Result<(), PgError> {
        match self.conn.key {
            Some(key) => {
                // Whatever it hits was asked for: a 57014 is never retried as collateral.
                for c in self.conn.st.borrow_mut().queue.iter_mut() {
                    c.exposed_to_user_cancel = true;
                }
                tasks::send_cancel(
                    &self.conn.target,
                    &self.conn.tcp,
                    self.conn.tls_params.as_ref(),
                    key,
                )
                .await
            }
            None => Err(PgError::closed(
                "the server sent no BackendKeyData; cannot cancel",
            )),
        }
    }

    /// A [`CancelToken`] for this connection: `Send + Sync`, so another thread can cancel
    /// what the connection runs (the request is posted to this reactor and sent on its ring).
    pub fn cancel_token(&self) -> CancelToken {
        CancelToken::new(&self.conn)
    }

    /// Closes gracefully: Terminate, then the socket. Commands in flight finish first.
    pub async fn close(self) {
        self.start_close();
        let conn = self.conn.clone();
        drop(self);
        let wait = std::future::poll_fn(|cx| {
            if conn.is_broken() {
                std::task::Poll::Ready(())
            } else {
                conn.st.borrow_mut().close_waiters.push(cx.waker().clone());
                std::task::Poll::Pending
            }
        });
        let _ = ioxide::time::timeout(Duration::from_secs(2), wait).await;
        if !conn.is_broken() {
            conn.fail(&PgError::closed("connection closed"));
        }
    }

    fn start_close(&self) {
        let mut st = self.conn.st.borrow_mut();
        if st.closing || st.broken.is_some() {
            return;
        }
        st.closing = true;
        encode::terminate(&mut st.out);
        st.queued_total += 5;
        if let Some(w) = st.writer_waker.take() {
            drop(st);
            w.wake();
        }
    }

    /// True once a transport failure (or close) ended this connection.
    pub fn is_broken(&self) -> bool {
        self.conn.is_broken()
    }

    /// Whether new commands may go to this connection now: not broken, not closing, and not
    /// waiting for the outcome of a CancelRequest (a late cancel must never hit a command
    /// that was not the one it was meant for).
    pub fn accepts_commands(&self) -> bool {
        self.routing_load().is_some()
    }

    /// For routing, in one look at the state: `None` if the connection takes no commands now
    /// (see [`accepts_commands`](Self::accepts_commands)), else the commands in flight and when
    /// the oldest of them was issued.
    pub(crate) fn routing_load(&self) -> Option<(usize, Option<std::time::Instant>)> {
        let st = self.conn.st.borrow();
        if st.broken.is_some() || st.closing || st.cancelling.is_some() || st.txn_dirty {
            return None;
        }
        Some((st.queue.len(), st.queue.front().map(|c| c.started)))
    }

    /// Commands sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.conn.st.borrow().queue.len()
    }

    /// The session's transaction state after the last completed command.
    pub fn transaction_status(&self) -> TxnStatus {
        self.conn.st.borrow().txn
    }

    /// The server process serving this connection, as the server's BackendKeyData says;
    /// `None` if it sent none. Behind PgBouncer this is PgBouncer's own cancel key (1.18
    /// sends random bytes, not a backend's pid: the session moves between server processes),
    /// good only for cancelling through PgBouncer, which the driver does; do not pass it to
    /// `pg_terminate_backend` or compare it with `pg_backend_pid()`.
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.key.map(|k| k.process_id)
    }

    /// A server parameter (`server_version`, `client_encoding`, `TimeZone`, …), as last
    /// reported.
    pub fn parameter(&self, name: &str) -> Option<String> {
        self.conn
            .st
            .borrow()
            .info
            .parameter(name)
            .map(str::to_owned)
    }

    /// Queues a simple query nobody awaits (its reply is drained and discarded), ordered
    /// before any command issued after it.
    pub(crate) fn query_detached(&self, sql: &str) {
        if let Ok((seq, _)) = self
            .conn
            .enqueue(Reply::simple(), |out| encode::query(sql, out))
        {
            command::abandon(&self.conn, seq);
        }
    }

    /// Whether the pool shares this connection among callers in autocommit (see
    /// `Conn::shared`): on while it is in rotation, off while a guard rents it.
    pub(crate) fn set_shared(&self, shared: bool) {
        self.conn.shared.set(shared);
    }

    /// Resolves once nothing is in flight on this connection (or it broke), or after `limit`;
    /// true if it is idle and unbroken then.
    pub(crate) async fn wait_idle(&self, limit: Duration) -> bool {
        let conn = &self.conn;
        let idle = std::future::poll_fn(|cx| {
            let mut st = conn.st.borrow_mut();
            if st.broken.is_some() || st.queue.is_empty() {
                std::task::Poll::Ready(())
            } else {
                st.idle_waiters.push(cx.waker().clone());
                std::task::Poll::Pending
            }
        });
        let _ = ioxide::time::timeout(limit, idle).await;
        let st = conn.st.borrow();
        st.broken.is_none() && st.queue.is_empty()
    }

    /// Registers a callback run once when this connection breaks or closes.
    pub(crate) fn on_broken(&self, f: impl FnOnce() + 'static) {
        *self.conn.on_broken.borrow_mut() = Some(Box::new(f));
    }

    /// Registers a callback run whenever an abandoned command finished draining.
    pub(crate) fn on_drained(&self, f: impl Fn() + 'static) {
        *self.conn.on_drained.borrow_mut() = Some(Box::new(f));
    }

    /// Commands issued on this connection so far (the pool reads it to tell an idle
    /// connection from one used since it last looked).
    pub(crate) fn commands_issued(&self) -> u64 {
        self.conn.st.borrow().next_seq
    }

    /// Runs `f` for every NotificationResponse this connection receives (a `NOTIFY` on a
    /// channel it `LISTEN`s to), on its reactor, in arrival order, replacing any earlier
    /// handler. Without one, notifications are dropped (logged at debug). `f` runs while the
    /// connection reads its socket: keep it short. One that panics is removed (the panic is
    /// logged) and the connection serves on. For a dedicated
    /// connection that reconnects and re-listens on its own, see [`crate::PgListener`]; on a
    /// connection rented from a pool the handler (like a `LISTEN`) stays with the connection
    /// after it returns, so listen on a connection of your own.
    pub fn on_notification(&self, f: impl Fn(&crate::Notification) + 'static) {
        *self.conn.on_notification.borrow_mut() = Some(Rc::new(f));
    }

    /// Runs `f` for every NoticeResponse (`RAISE NOTICE`, a warning) this connection receives
    /// after startup, replacing any earlier handler; notices are logged through `tracing`
    /// whether or not one is set. The same rules as [`on_notification`](Self::on_notification).
    pub fn on_notice(&self, f: impl Fn(&crate::DbError) + 'static) {
        *self.conn.on_notice.borrow_mut() = Some(Rc::new(f));
    }

    /// Whether two handles are the same connection.
    pub fn same_as(&self, other: &PgConnection) -> bool {
        Rc::ptr_eq(&self.conn, &other.conn)
    }

    /// The socket's keepalive and user-timeout settings as the kernel has them (tests; an
    /// error over a Unix socket). See [`ioxide::net::Stream::tcp_options`].
    #[doc(hidden)]
    pub fn tcp_socket_options(&self) -> std::io::Result<ioxide::net::TcpOptions> {
        self.conn.stream.tcp_options()
    }

    /// Statements currently in the cache.
    pub fn cached_statements(&self) -> usize {
        self.conn.st.borrow().cache.len()
    }

    /// Whether this connection names its statements on the server (false with
    /// `statement_cache_capacity=0` or once a transaction-mode pooler was seen; tests).
    #[doc(hidden)]
    pub fn names_statements(&self) -> bool {
        self.conn.st.borrow().cache.enabled()
    }

    /// Round trips this connection made to look types up in `pg_type` (tests).
    #[doc(hidden)]
    pub fn type_lookups(&self) -> u64 {
        self.conn.st.borrow().cache.type_lookups
    }

    /// Runs `sql` through the statement cache, re-preparing once if the server says the
    /// cached statement is stale (`0A000` cached plan changed, `26000` no such statement).
    /// A named statement refused in a way only a transaction-mode pooler explains (see
    /// [`pooler_symptom`]) turns naming off for this connection and runs the query again
    /// with the unnamed statement.
    async fn run_cached<S: state::Sink>(
        &self,
        target: StatementRef<'_>,
        params: Params<'_>,
        sink: &mut S,
        reset: &mut dyn FnMut(&mut S, &cache::Statement),
    ) -> Result<(), PgError> {
        let mut attempt = 0;
        let mut collateral_retried = false;
        loop {
            // The cache hit is the common case: take it without entering `statement`'s future.
            let (hit, naming) = {
                let mut st = self.conn.st.borrow_mut();
                (st.cache.get(target.key), st.cache.enabled())
            };
            let (stmt, fresh, close_after) = match hit {
                Some(stmt) => (stmt, false, None),
                None => match self.missed(target, params, naming, &mut attempt).await? {
                    Some(found) => found,
                    None => continue,
                },
            };
            let (seq, from) = self.enqueue_bound(&stmt, target.sql, params)?;
            if let Some(name) = close_after {
                self.close_statement_detached(&name);
            }
            reset(sink, &stmt);
            let (r, collateral) = CmdFuture::new(&self.conn, seq, from, sink).outcome().await;
            let Err(e) = r else { return r };
            if collateral && !collateral_retried {
                // Our automatic cancel of another command hit this one, in autocommit,
                // before any of it completed: the server rolled it back. Run it again, once.
                collateral_retried = true;
                continue;
            }
            self.retry_after(target, e, fresh, &mut attempt)?;
        }
    }

    /// A cache miss of a cached run (`run_cached`, `query_stream`): the unnamed statement's
    /// description when this connection does not name statements, else prepared now —
    /// `(statement, fresh, statement to close after use)`. `Ok(None)`: the prepare was
    /// refused in the way only a transaction-mode pooler explains and naming is now off;
    /// try again.
    async fn missed(
        &self,
        target: StatementRef<'_>,
        params: Params<'_>,
        naming: bool,
        attempt: &mut u32,
    ) -> Result<Option<(cache::Statement, bool, Option<Rc<str>>)>, PgError> {
        if !naming {
            return Ok(Some((self.unnamed_for(target, params).await?, false, None)));
        }
        match self.statement_with(target).await {
            Ok((stmt, close_after)) => Ok(Some((stmt, true, close_after))),
            Err(e) if *attempt < 2 && self.naming_refused(&e, true) => {
                *attempt += 1;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A cached run failed with `e`: `Ok(())` to run it again (a stale statement evicted and
    /// re-prepared once; a fresh statement refused by a transaction-mode pooler, naming now
    /// off), else the error to return (a stale statement inside a transaction block names
    /// the block as lost).
    #[cold]
    fn retry_after(
        &self,
        target: StatementRef<'_>,
        e: PgError,
        fresh: bool,
        attempt: &mut u32,
    ) -> Result<(), PgError> {
        let stale = stale_statement(&e);
        if stale == Stale::No {
            return Err(e);
        }
        let name = self.conn.st.borrow_mut().cache.remove(target.key);
        if let Some(name) = name {
            self.close_statement_detached(&name);
        }
        if (fresh || *attempt > 0) && self.naming_refused(&e, true) && *attempt < 2 {
            *attempt += 1;
            return Ok(());
        }
        if stale == Stale::EvictOnly || *attempt > 0 {
            return Err(lost_in_block(e));
        }
        *attempt += 1;
        Ok(())
    }

    /// A command of the pool's shared path completed with `tag`: a `SET` or `LISTEN` there
    /// changes a session other callers share (and, behind a transaction-mode pooler, some
    /// server session nobody chose): warn, once per connection. One comparison of a tag the
    /// caller already has; nothing on the per-query path of parameterized queries.
    #[inline]
    pub(crate) fn note_shared_tag(&self, tag: &str) {
        if tag == "SET" || tag == "LISTEN" {
            self.warn_session_state(tag);
        }
    }

    #[cold]
    fn warn_session_state(&self, tag: &str) {
        let first = !std::mem::replace(&mut self.conn.st.borrow_mut().session_state_warned, true);
        if first {
            tracing::warn!(
                command = tag,
                "{tag} ran on a pool's shared connection: the session it changes is shared \
                 with every caller of that connection, and behind a transaction-mode pooler \
                 (PgBouncer) it is whichever server session ran it. Use SET LOCAL in a \
                 transaction on PgPool::rent(), the `options` setting, or PgListener for LISTEN"
            );
        }
    }

    /// After a named statement of ours was refused: if `e` is a pooler's symptom
    /// ([`pooler_symptom`], with `fresh` saying whether we had just prepared it), stops
    /// naming statements on this connection for good (warning once) and says whether the
    /// command may simply run again (nothing of it ran, outside a transaction block).
    #[cold]
    fn naming_refused(&self, e: &PgError, fresh: bool) -> bool {
        if !pooler_symptom(e, fresh) {
            return false;
        }
        if self.conn.st.borrow_mut().cache.stop_naming() {
            tracing::warn!(
                sqlstate = e.sql_state().unwrap_or(""),
                "a statement this connection had just named was refused: the server session \
                 changes between commands, as behind a transaction-mode pooler (PgBouncer \
                 pool_mode=transaction); this connection uses unnamed statements from now on \
                 (statement_cache_capacity=0 says so up front)"
            );
        }
        e.transaction_status() == Some(TxnStatus::Idle)
    }

    /// Queues Bind + Execute (all rows) + Sync of `stmt` with `params`; for the unnamed
    /// statement (caching off), Parse + Describe of `sql` first.
    #[inline(always)]
    fn enqueue_bound(
        &self,
        stmt: &cache::Statement,
        sql: &str,
        params: Params<'_>,
    ) -> Result<(u64, u64), PgError> {
        if stmt.name.is_empty() {
            // The unnamed statement is parsed again in the same command as its Bind:
            // another command pipelined in between may have replaced it since it was
            // described. Its reply describes the rows afresh.
            let steps = crate::proto::reply::Steps {
                parse: true,
                describe: true,
                bind: true,
                execute: true,
                ..Default::default()
            };
            self.conn.enqueue(Reply::extended(steps), |out| {
                let oids: smallvec::SmallVec<[u32; 8]> =
                    stmt.params.iter().map(postgres_types::Type::oid).collect();
                encode::parse("", sql, &oids, out)?;
                encode::describe(encode::Target::Statement, "", out)?;
                encode::bind_execute_sync("", params, &stmt.params, out)
            })
        } else {
            self.conn.enqueue(Reply::bind_execute(), |out| {
                encode::bind_execute_sync(&stmt.name, params, &stmt.params, out)
            })
        }
    }

    /// The prepared statement for `target`: from the cache (by its key), or prepared now
    /// (Parse with its asked-for types + Describe + Sync). The second value names a
    /// statement to close after use (caching off, or a race with another first use).
    async fn statement_with(
        &self,
        target: StatementRef<'_>,
    ) -> Result<(cache::Statement, Option<Rc<str>>), PgError> {
        if let Some(stmt) = self.conn.st.borrow_mut().cache.get(target.key) {
            return Ok((stmt, None));
        }
        let name = self.conn.st.borrow_mut().cache.new_name();
        let oids: Vec<u32> = target.types.iter().map(postgres_types::Type::oid).collect();
        let (seq, from) = self.conn.enqueue(Reply::prepare(), |out| {
            encode::parse(&name, target.sql, &oids, out)?;
            encode::describe(encode::Target::Statement, &name, out)?;
            encode::sync(out);
            Ok(())
        })?;
        let mut prep = command::PrepareSink::default();
        CmdFuture::new(&self.conn, seq, from, &mut prep).await?;
        let stmt = match prep.unknown_oids() {
            oids if oids.is_empty() => prep.into_statement(name)?,
            oids => match Box::pin(self.described(prep, oids, name.clone())).await {
                Ok(stmt) => stmt,
                Err(e) => {
                    // Its types could not be looked up: not cached, so not kept on the server.
                    self.close_statement_detached(&name);
                    return Err(e);
                }
            },
        };
        let extra = self
            .conn
            .st
            .borrow_mut()
            .cache
            .insert(target.key, stmt.clone());
        let close_after = match extra {
            Some(n) if n == stmt.name => Some(n),
            Some(evicted) => {
                self.close_statement_detached(&evicted);
                None
            }
            None => None,
        };
        Ok((stmt, close_after))
    }

    /// Without naming: the description of `target` for `params` (see `describe_unnamed`),
    /// kept in the cache once a pooler turned naming off (caching on), so the next use is
    /// one round trip.
    pub(crate) async fn unnamed_for(
        &self,
        target: StatementRef<'_>,
        params: Params<'_>,
    ) -> Result<cache::Statement, PgError> {
        let stmt = self
            .describe_unnamed(target.sql, target.types, params)
            .await?;
        if !params.is_empty() {
            self.keep_description(target.key, &stmt);
        }
        Ok(stmt)
    }

    /// Keeps the description of an unnamed statement (a no-op with caching off).
    pub(crate) fn keep_description(&self, key: &str, stmt: &cache::Statement) {
        // An unnamed entry has nothing to close on the server, nor does one it evicts.
        let _ = self.conn.st.borrow_mut().cache.insert(key, stmt.clone());
    }

    /// With caching off: the parameter types of `sql` (with the asked-for `types`) for
    /// encoding `params`, from the unnamed statement (Parse + Describe + Sync: one round trip,
    /// none when there are no parameters to encode). The query itself parses `sql` again
    /// with these types.
    async fn describe_unnamed(
        &self,
        sql: &str,
        types: &[postgres_types::Type],
        params: Params<'_>,
    ) -> Result<cache::Statement, PgError> {
        if params.is_empty() {
            return Ok(Rc::new(cache::Prepared {
                name: Rc::from(""),
                params: Rc::from(Vec::new()),
                columns: Columns::none(),
            }));
        }
        self.describe_as_unnamed(sql, types).await
    }

    /// Parse + Describe + Sync of `sql` as the unnamed statement: its parameter and column
    /// types, with nothing left behind on the server session (which a transaction-mode
    /// pooler may hand to someone else right after).
    pub(crate) async fn describe_as_unnamed(
        &self,
        sql: &str,
        types: &[postgres_types::Type],
    ) -> Result<cache::Statement, PgError> {
        let oids: Vec<u32> = types.iter().map(postgres_types::Type::oid).collect();
        let (seq, from) = self.conn.enqueue(Reply::prepare(), |out| {
            encode::parse("", sql, &oids, out)?;
            encode::describe(encode::Target::Statement, "", out)?;
            encode::sync(out);
            Ok(())
        })?;
        let mut prep = command::PrepareSink::default();
        CmdFuture::new(&self.conn, seq, from, &mut prep).await?;
        match prep.unknown_oids() {
            oids if oids.is_empty() => prep.into_statement(Rc::from("")),
            oids => Box::pin(self.described(prep, oids, Rc::from(""))).await,
        }
    }

    /// Queues Close(statement) + Sync; nobody awaits it (the watcher drains its reply).
    fn close_statement_detached(&self, name: &str) {
        let steps = crate::proto::reply::Steps {
            close: true,
            ..Default::default()
        };
        let r = self.conn.enqueue(Reply::extended(steps), |out| {
            encode::close(encode::Target::Statement, name, out)?;
            encode::sync(out);
            Ok(())
        });
        if let Ok((seq, _)) = r {
            command::abandon(&self.conn, seq);
        }
    }
}

/// Builds (and caches in the options) the TLS configuration when connections to `target`
/// may use TLS, so that a bad certificate or key file is reported once, up front.
pub(crate) fn check_tls_files(opts: &PgOptions, target: &Target) -> Result<(), PgError> {
    if secure::plans(opts, target) != [secure::Plan::Plain] {
        opts.tls_client_config()?;
    }
    Ok(())
}

/// Whether a named statement of ours being refused proves that the server session is not
/// the one we named it in — a transaction-mode pooler (PgBouncer `pool_mode=transaction`)
/// runs each command on whichever server connection is free: `42P05` on a Parse of a name
/// this connection just made up (names are never reused, so only another client's statement
/// can hold it), or `26000` on the Bind right after our own Parse succeeded (`fresh`; a
/// `DEALLOCATE ALL` gives a cached statement `26000` too, but not one prepared just now).
fn pooler_symptom(e: &PgError, fresh: bool) -> bool {
    match e.sql_state() {
        Some("42P05") => true,
        Some("26000") => fresh,
        _ => false,
    }
}

/// A cached statement the session lacks (`26000`) inside a transaction block: the block is
/// aborted, so nothing can be retried; the error says why and what avoids it.
#[cold]
pub(crate) fn lost_in_block(e: PgError) -> PgError {
    if e.sql_state() == Some("26000") && e.transaction_status() != Some(TxnStatus::Idle) {
        e.with_cause(
            "the server session lacks this connection's prepared statement (after DEALLOCATE \
             ALL or DISCARD ALL, or behind a transaction-mode pooler such as PgBouncer, where \
             statement_cache_capacity=0 avoids it); the transaction block is aborted",
        )
    } else {
        e
    }
}

/// What a failed use of a cached statement means for the cache.
#[derive(Debug, PartialEq, Eq)]
enum Stale {
    /// Not a stale-statement error.
    No,
    /// Stale: evict it; the query may be re-prepared and run again at once.
    Retry,
    /// Stale, but the error aborted an open transaction block: evict it, and return the error
    /// (running the query again would only be refused with `25P02`, hiding the cause).
    EvictOnly,
}

/// A cached statement the server no longer accepts: `26000` (no such prepared statement,
/// e.g. after `DEALLOCATE ALL` or `DISCARD ALL`), or `0A000` raised while revalidating a
/// cached plan whose result type changed (`ALTER TABLE`). The latter is recognised by the
/// server routine that raises it, so it works whatever `lc_messages` translates the message
/// to; the English text is the fallback for a server that sends no routine.
fn stale_statement(e: &PgError) -> Stale {
    let Some(db) = e.as_db_error() else {
        return Stale::No;
    };
    let stale = match db.code() {
        "26000" => true,
        "0A000" => match db.routine() {
            Some(r) => r == "RevalidateCachedQuery",
            None => db.message().contains("cached plan must not change"),
        },
        _ => false,
    };
    match (stale, e.transaction_status()) {
        (false, _) => Stale::No,
        (true, Some(TxnStatus::Idle)) => Stale::Retry,
        (true, _) => Stale::EvictOnly,
    }
}

/// `QueryResult` fed by a reply: a simple query's, or an auto-prepared text's Bind/Execute.
pub(super) struct QrSink(pub(super) QueryResult);

impl state::Sink for QrSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), state::SinkError> {
        Ok(self.0.accept(ev)?)
    }

    fn took_effect(&self) -> bool {
        self.0.statements() > 0 || self.0.saw_rows()
    }
}

/// As libpq does, a wrong password that came from the password file says so.
fn passfile_hint(e: PgError, passfile: Option<&std::path::Path>) -> PgError {
    match passfile {
        Some(path) if e.sql_state() == Some("28P01") => e.with_cause(format!(
            "password retrieved from file \"{}\"",
            path.display()
        )),
        _ => e,
    }
}

/// Connect, TLS as `sslmode` says, startup and authentication, then start the writer and
/// watcher tasks. `allow` and `prefer` may take a second attempt on a new socket (see
/// `secure::plans`).
async fn open(opts: &PgOptions, target: Target) -> Result<PgConnection, PgError> {
    let plans = secure::plans(opts, &target);
    let mut first: Option<PgError> = None;
    for (i, plan) in plans.iter().enumerate() {
        let handshake_failed = Cell::new(false);
        match open_once(opts, target.clone(), *plan, &handshake_failed).await {
            Ok(c) => return Ok(c),
            Err(e) if i + 1 < plans.len() && (e.is_server() || handshake_failed.get()) => {
                tracing::debug!(error = %e, sslmode = %opts.get_ssl_mode(), "connection attempt refused; trying the next way sslmode allows");
                first = Some(e);
            }
            Err(e) => {
                if let Some(f) = first {
                    tracing::debug!(first_attempt = %f, "both attempts sslmode allows failed");
                }
                return Err(e);
            }
        }
    }
    Err(first.unwrap_or_else(|| PgError::closed("no connection attempt was made")))
}

/// One connection attempt with one TLS plan.
async fn open_once(
    opts: &PgOptions,
    target: Target,
    plan: secure::Plan,
    handshake_failed: &Cell<bool>,
) -> Result<PgConnection, PgError> {
    let max = opts.get_max_message_bytes();
    // Read before the socket exists: a file read, once per connect, only without a password.
    let file_password = opts.password_from_file();
    let from_file = file_password.is_some();
    let stream = tasks::connect_target(&target, &opts.get_tcp_options()).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    let (tls, tls_params) = if plan == secure::Plan::Plain {
        (None, None)
    } else {
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let params = secure::params(opts, peer)?;
        let mode = opts.get_ssl_mode();
        match secure::start(&stream, &params, plan, mode, handshake_failed).await? {
            Some((session, early)) => {
                buf.extend_from_slice(&early);
                (Some(session), Some(params))
            }
            None => (None, None),
        }
    };
    let mut startup = Startup::new(opts);
    if let Some(password) = file_password {
        startup.set_password(password);
    }
    if let Some(t) = &tls {
        startup = startup.with_tls(t.server_cert());
    }
    let mut out = BytesMut::with_capacity(512);
    startup.start(&mut out)?;
    let mut pipe = secure::Pipe::new(&stream, tls.as_ref());
    let info: ServerInfo = 'handshake: loop {
        if !out.is_empty() {
            pipe.send(&out, "the startup handshake").await?;
            out.clear();
        }
        let mut pos = 0;
        while let Some(f) = frame::next_frame(&buf[pos..], max)? {
            let body = &buf[pos + frame::HEADER_LEN..pos + f.len];
            pos += f.len;
            let status = startup
                .handle(f.tag, body, &mut out)
                .map_err(|e| passfile_hint(e, from_file.then(|| opts.get_passfile()).flatten()))?;
            if let StartupStatus::Ready(info) = status {
                buf.drain(..pos);
                break 'handshake info;
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            continue;
        }
        let needed = frame::bytes_needed(&buf, max)?;
        buf.reserve(needed.max(1024));
        if !pipe.recv(&mut buf, "the startup handshake").await? {
            return Err(PgError::io(
                "the server closed the connection during startup",
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    };
    drop(pipe);
    // Bytes that arrived with the final ReadyForQuery (a notice, a ParameterStatus, even a
    // FATAL) stay in the receive buffer: the watcher handles them on its first poll.
    let key: Option<BackendKey> = info.backend_key();
    // Zero when the socket cannot hold a receive for a byte count (Unix) or it is off.
    let gather_limit = if stream.can_gather() {
        opts.get_reply_gather_limit()
            .min(crate::options::MAX_REPLY_GATHER_LIMIT)
    } else {
        Duration::ZERO
    };
    let conn = Rc::new(Conn {
        stream,
        tls: tls.map(Box::new),
        tls_params,
        gather_limit,
        replies: ReplyMeter::default(),
        deep: DeepMark::default(),
        st: RefCell::new(State {
            out: BytesMut::with_capacity(tasks::SEND_BUF),
            queued_total: 0,
            handed_total: 0,
            writer_waker: None,
            watcher_waker: None,
            rbuf: Some(buf),
            rpos: 0,
            recv: None,
            parked: None,
            cipher: None,
            queue: VecDeque::new(),
            next_seq: 0,
            broken: None,
            closing: false,
            txn: TxnStatus::Idle,
            cache: StatementCache::new(opts.get_statement_cache_capacity()),
            cancelling: None,
            info,
            close_waiters: Vec::new(),
            idle_waiters: Vec::new(),
            txn_dirty: false,
            session_state_warned: false,
            copy_hold: None,
            copy_waker: None,
            copy_turn: Vec::new(),
            copy_outcome: None,
        }),
        target,
        tcp: opts.get_tcp_options(),
        key,
        max_message: max,
        // validate() refuses more; clamp for options that skipped it.
        batch_window: opts.get_reply_batch_window().min(ioxide::MAX_BATCH_WINDOW),
        command_timeout: opts.get_command_timeout(),
        cancel_grace: CANCEL_GRACE,
        handles: Cell::new(1),
        on_broken: RefCell::new(None),
        on_drained: RefCell::new(None),
        shared: Cell::new(false),
        on_notification: RefCell::new(None),
        on_notice: RefCell::new(None),
    });
    drop(ioxide::spawn(tasks::writer(conn.clone())));
    drop(ioxide::spawn(tasks::watcher(conn.clone())));
    if conn.command_timeout.is_some() {
        tasks::Sweeper::register(&conn);
    }
    Ok(PgConnection { conn })
}
