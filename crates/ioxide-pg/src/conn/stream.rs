//! Async row streams ([`RowStream`], [`PgConnection::query_stream`]) and portals
//! ([`Portal`], [`PgConnection::bind`], [`PgConnection::query_portal`]).
//!
//! A stream receives only while it is polled: each poll takes at most one receive buffer's
//! worth of rows from the socket, so a consumer that lags holds the server back (TCP flow
//! control) instead of growing memory. A portal is PostgreSQL's cursor of the extended
//! protocol: Bind names it inside a transaction, and each Execute with a row limit returns
//! the next rows.

use super::command::{abandon, CmdFuture, SetSink};
use super::result::ResultSet;
use super::state::{CmdErrors, Conn, Discard, Sink, SinkError};
use super::{cache, stale_statement, Params, PgConnection, Stale};
use crate::proto::encode;
use crate::proto::reply::{Reply, ReplyEvent, Steps};
use crate::proto::row::Columns;
use crate::{OwnedRow, PgError, ToStatement, TxnStatus};
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The rows of one receive, as the reply delivers them.
struct StreamSink {
    batch: ResultSet,
    /// Rows handed to the stream so far (for `took_effect`).
    delivered: usize,
}

impl Sink for StreamSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        Ok(self.batch.accept(ev)?)
    }

    fn took_effect(&self) -> bool {
        self.delivered > 0 || !self.batch.is_empty() || !self.batch.command_tag().is_empty()
    }
}

/// The rows of a query as they arrive: a [`Stream`](futures_core::Stream) of
/// [`OwnedRow`]s, also readable with [`next_row`](Self::next_row). Made by
/// [`PgConnection::query_stream`].
///
/// It receives only while polled (backpressure: a consumer that stops reading holds the
/// server back, and memory stays at one receive buffer of rows). Other commands pipelined on
/// the connection wait behind it. Dropped before its end, the rest of the rows is drained and
/// discarded by the connection; for a result you may not read to its end, a
/// [`Portal`] fetches only what you ask for. With `command_timeout` set, the stream times out
/// only when no rows arrive for that long.
pub struct RowStream<'a> {
    conn: &'a PgConnection,
    seq: u64,
    sent_from: u64,
    sink: StreamSink,
    errs: CmdErrors,
    rows: VecDeque<OwnedRow>,
    /// ReadyForQuery arrived (or the connection broke).
    done: bool,
    error: Option<PgError>,
    tag: Option<String>,
}

impl fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream")
            .field("buffered", &self.rows.len())
            .field("done", &self.done)
            .finish()
    }
}

impl<'a> RowStream<'a> {
    /// The result's columns (as of the last batch received).
    pub fn columns(&self) -> &Columns {
        self.sink.batch.columns()
    }

    /// The command tag (`SELECT 3`), once the stream has ended without an error.
    pub fn command_tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The rows the statement reported (`rows_affected` of `INSERT … RETURNING`, the rows
    /// of a `SELECT`), once the stream has ended without an error.
    pub fn rows_affected(&self) -> Option<u64> {
        self.tag
            .as_deref()
            .map(crate::proto::query_result::rows_from_tag)
    }

    /// The next row, `None` at the end, or the error that ended the query (after the rows
    /// that arrived before it).
    pub async fn next_row(&mut self) -> Option<Result<OwnedRow, PgError>> {
        poll_fn(|cx| self.poll_row(cx)).await
    }

    /// Moves the rows received so far into the queue.
    fn take_batch(&mut self) {
        if self.sink.batch.is_empty() && !self.done {
            return;
        }
        let columns = self.sink.batch.columns_arc();
        let batch = std::mem::replace(&mut self.sink.batch, ResultSet::new(columns));
        if self.done && self.error.is_none() {
            self.tag = Some(batch.command_tag().to_owned());
        }
        self.sink.delivered += batch.len();
        self.rows.extend(batch.into_rows());
    }

    /// Receives once: ready when rows arrived or the query ended.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        let conn: &Conn = &self.conn.conn;
        match conn.poll_cmd(cx, self.seq, self.sent_from, &mut self.sink, &mut self.errs) {
            Poll::Ready(r) => {
                self.done = true;
                if let Err(e) = r {
                    self.error = Some(e);
                }
                self.take_batch();
                Poll::Ready(())
            }
            Poll::Pending if self.sink.batch.is_empty() => Poll::Pending,
            Poll::Pending => {
                // Progress: the command timeout counts from here.
                conn.progress(self.seq);
                self.take_batch();
                Poll::Ready(())
            }
        }
    }

    fn poll_row(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<OwnedRow, PgError>>> {
        loop {
            if let Some(row) = self.rows.pop_front() {
                return Poll::Ready(Some(Ok(row)));
            }
            if let Some(e) = self.error.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if self.fill(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl futures_core::Stream for RowStream<'_> {
    type Item = Result<OwnedRow, PgError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_row(cx)
    }
}

impl Drop for RowStream<'_> {
    fn drop(&mut self) {
        if !self.done {
            abandon(&self.conn.conn, self.seq);
        }
    }
}

/// Portal names: unique in the process, so unique on every connection.
static PORTALS: AtomicU64 = AtomicU64::new(0);

/// A portal: a bound statement inside a transaction, read a few rows at a time with
/// [`PgConnection::query_portal`] (PostgreSQL's cursor of the extended protocol). Made by
/// [`PgConnection::bind`]. It lives until its transaction ends; dropping it closes it on the
/// server at once (queued, nobody waits).
pub struct Portal {
    conn: Weak<Conn>,
    name: String,
    columns: Arc<Columns>,
    /// A statement prepared for this portal alone (statement caching off): closed with it.
    close_statement: Option<Rc<str>>,
}

impl fmt::Debug for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Portal").field("name", &self.name).finish()
    }
}

impl Portal {
    /// The rows' columns.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        let Some(conn) = self.conn.upgrade() else {
            return;
        };
        if conn.is_broken() {
            return;
        }
        // Closing a portal (or statement) that no longer exists is not an error.
        let steps = Steps {
            close: true,
            ..Steps::default()
        };
        let r = conn.enqueue(Reply::extended(steps), |out| {
            encode::close(encode::Target::Portal, &self.name, out)?;
            encode::sync(out);
            Ok(())
        });
        if let Ok((seq, _)) = r {
            abandon(&conn, seq);
        }
        if let Some(stmt) = &self.close_statement {
            let r = conn.enqueue(Reply::extended(steps), |out| {
                encode::close(encode::Target::Statement, stmt, out)?;
                encode::sync(out);
                Ok(())
            });
            if let Ok((seq, _)) = r {
                abandon(&conn, seq);
            }
        }
    }
}

impl PgConnection {
    /// Runs a parameterized statement and returns its rows as an async stream (see
    /// [`RowStream`]), once the first rows (or the end) arrived: an error before any row —
    /// a bad statement, a parameter the server refuses — is returned here, and a stale
    /// cached statement is prepared again as [`query_params`](Self::query_params) does.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let mut rows = conn
    ///     .query_stream("SELECT n FROM generate_series(1, $1) n", &[&100_000i32])
    ///     .await?;
    /// let mut sum = 0i64;
    /// while let Some(row) = rows.next_row().await {
    ///     sum += row?.get::<i32>(0)? as i64;
    /// }
    /// assert_eq!(sum, 5_000_050_000);
    /// assert_eq!(rows.rows_affected(), Some(100_000));
    /// # Ok(()) }
    /// ```
    pub async fn query_stream<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<RowStream<'_>, PgError> {
        let target = statement.statement_ref();
        let mut attempt = 0;
        let mut collateral_retried = false;
        loop {
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
            let (seq, sent_from) = self.enqueue_bound(&stmt, target.sql, params)?;
            if let Some(name) = close_after {
                self.close_statement_detached(&name);
            }
            let mut s = RowStream {
                conn: self,
                seq,
                sent_from,
                sink: StreamSink {
                    batch: ResultSet::new(stmt.columns.clone()),
                    delivered: 0,
                },
                errs: CmdErrors::default(),
                rows: VecDeque::new(),
                done: false,
                error: None,
                tag: None,
            };
            poll_fn(|cx| s.fill(cx)).await;
            let e = match s.error.take() {
                Some(e) if s.rows.is_empty() => e,
                other => {
                    s.error = other;
                    return Ok(s);
                }
            };
            if s.errs.collateral_cancel && !collateral_retried {
                collateral_retried = true;
                continue;
            }
            self.retry_after(target, e, fresh, &mut attempt)?;
        }
    }

    /// Binds a statement to a new [`Portal`] (a cursor) inside the open transaction; read
    /// it with [`query_portal`](Self::query_portal). Outside a transaction block the server
    /// would destroy the portal at once, so that is an error ([`PgError::is_misuse`]).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let tx = conn.begin().await?;
    /// let portal = tx.bind("SELECT n FROM generate_series(1, 1000) n", &[]).await?;
    /// let first = tx.query_portal(&portal, 100).await?;
    /// assert_eq!(first.len(), 100);
    /// let mut total = first.len();
    /// loop {
    ///     let next = tx.query_portal(&portal, 300).await?;
    ///     total += next.len();
    ///     if next.len() < 300 {
    ///         break; // the portal is exhausted
    ///     }
    /// }
    /// assert_eq!(total, 1000);
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: Params<'_>,
    ) -> Result<Portal, PgError> {
        if self.transaction_status() == TxnStatus::Idle {
            return Err(PgError::misuse(
                "bind: a portal lives only inside a transaction block; call it on a \
                 Transaction (PgConnection::begin)",
            )
            .never_sent());
        }
        let target = statement.statement_ref();
        let (stmt, close_statement): (cache::Statement, _) = match self.statement_with(target).await
        {
            Ok(prepared) => prepared,
            Err(e) => {
                // Inside a block nothing is retried, but a refused name still tells.
                self.naming_refused(&e, true);
                return Err(e);
            }
        };
        let name = format!("ioxide_p{}", PORTALS.fetch_add(1, Ordering::Relaxed));
        let steps = Steps {
            bind: true,
            ..Steps::default()
        };
        let (seq, from) = self.conn.enqueue(Reply::extended(steps), |out| {
            encode::bind(&name, &stmt.name, params, &stmt.params, out)?;
            encode::sync(out);
            Ok(())
        })?;
        let portal = Portal {
            conn: Rc::downgrade(&self.conn),
            name,
            columns: stmt.columns.clone(),
            close_statement,
        };
        if let Err(e) = CmdFuture::new(&self.conn, seq, from, &mut Discard).await {
            if stale_statement(&e) != Stale::No {
                let name = self.conn.st.borrow_mut().cache.remove(target.key);
                if let Some(name) = name {
                    self.close_statement_detached(&name);
                }
                return Err(super::lost_in_block(e));
            }
            return Err(e);
        }
        Ok(portal)
    }

    /// Fetches the next rows of `portal`: at most `max_rows` (0: all that are left). Fewer
    /// than `max_rows` rows means the portal is exhausted (the result then carries the
    /// statement's command tag; a suspended portal's has none).
    pub async fn query_portal(&self, portal: &Portal, max_rows: i32) -> Result<ResultSet, PgError> {
        if !std::ptr::eq(portal.conn.as_ptr(), Rc::as_ptr(&self.conn)) {
            return Err(
                PgError::misuse("query_portal: the portal belongs to another connection")
                    .never_sent(),
            );
        }
        if max_rows < 0 {
            return Err(
                PgError::misuse(format!("query_portal: max_rows {max_rows} is negative"))
                    .never_sent(),
            );
        }
        let steps = Steps {
            execute: true,
            row_limit: true,
            ..Steps::default()
        };
        let (seq, from) = self.conn.enqueue(Reply::extended(steps), |out| {
            encode::execute(&portal.name, max_rows, out)?;
            encode::sync(out);
            Ok(())
        })?;
        let mut sink = SetSink(ResultSet::new(portal.columns.clone()));
        CmdFuture::new(&self.conn, seq, from, &mut sink).await?;
        Ok(sink.0)
    }
}
