//! COPY FROM STDIN and COPY TO STDOUT: [`CopyIn`], [`CopyOut`], and their binary-format
//! typed forms [`BinaryCopyInWriter`] and [`BinaryCopyOutStream`].
//!
//! A COPY is one simple-protocol Query; its reply machine is [`Reply::copy`]. Both directions
//! keep the connection's failure contract:
//!
//! - **Copy-in owns the send buffer.** In copy-in mode the server reads only COPY messages:
//!   the first message of a command pipelined behind the COPY would be taken as a bad COPY
//!   message and swallowed, and the replies would stop matching the queue. So from the COPY's
//!   Query until its CopyDone or CopyFail, commands other tasks queue on the connection wait
//!   in a hold behind it (`State::copy_hold`) and go out after it: delayed, never failed. A
//!   second COPY FROM STDIN waits for the first to end. A pool never shares a connection
//!   with a COPY: [`PgPool::copy_in`](crate::PgPool::copy_in) rents one.
//! - **Backpressure both ways.** [`CopyIn::send`] waits while more than
//!   [`COPY_IN_HIGH_WATER`] bytes wait for the socket. [`CopyOut`] receives only while it is
//!   polled: a consumer that stops reading stops the receives, the socket's buffers fill, and
//!   the server waits (TCP flow control) — memory stays at one receive buffer.
//! - **Endings.** [`CopyIn::finish`] sends CopyDone and returns the rows copied. Dropping a
//!   `CopyIn` (or [`CopyIn::abort`]) sends CopyFail: the server rolls the COPY back with
//!   `57014` and the connection stays usable. Dropping a `CopyOut` before its end sends a
//!   CancelRequest (new commands are held back meanwhile, as for a command timeout) and the
//!   rest of the data is drained and discarded. A server error mid-COPY ends it with that
//!   error (data already delivered stays delivered); a restart or a broken socket fails it
//!   as any command. With `command_timeout` set, a COPY times out only when it makes no
//!   progress for that long (each chunk sent or received restarts the clock), not when the
//!   whole COPY takes longer.

use super::command::abandon;
use super::state::{CmdErrors, Conn, Sink, SinkError};
use super::tasks;
use super::PgConnection;
use crate::pool::PooledConn;
use crate::proto::encode;
use crate::proto::message::CopyFormat;
use crate::proto::reply::{Reply, ReplyEvent};
use crate::PgError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_types::{FromSql, IsNull, ToSql, Type};
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// [`CopyIn::send`] waits while more than this many bytes wait for the socket.
pub const COPY_IN_HIGH_WATER: usize = 1 << 20;

/// [`BinaryCopyInWriter`] hands its rows to the connection in chunks of about this size.
const BINARY_CHUNK: usize = 64 * 1024;

/// The binary COPY header: signature, flags (no OIDs), header extension length 0.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The connection a COPY runs on: borrowed, or a rental it owns (`PgPool::copy_in`).
enum Holder<'a> {
    Borrowed(&'a PgConnection),
    Rented(PooledConn),
}

impl Holder<'_> {
    fn conn(&self) -> &Conn {
        match self {
            Holder::Borrowed(c) => &c.conn,
            Holder::Rented(r) => &r.conn,
        }
    }

    fn handle(&self) -> &PgConnection {
        match self {
            Holder::Borrowed(c) => c,
            Holder::Rented(r) => r,
        }
    }
}

/// What the COPY's reply said so far.
#[derive(Default)]
struct CopySink {
    /// CopyInResponse (true) or CopyOutResponse (false) arrived, with the formats.
    started: Option<(bool, CopyFormat)>,
    /// CopyData of a COPY TO STDOUT, not yet handed out.
    data: BytesMut,
    /// Drop CopyData instead of keeping it (a COPY TO STDOUT given to `copy_in`).
    discard: bool,
    /// The last statement's command tag and the rows it reports.
    tag: Option<String>,
    rows: u64,
    /// Rows of a statement that is not a COPY (a SELECT given to `copy_in`).
    other: bool,
}

impl Sink for CopySink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        match ev {
            ReplyEvent::CopyIn(body) => self.started = Some((true, CopyFormat::parse(body)?)),
            ReplyEvent::CopyOut(body) => self.started = Some((false, CopyFormat::parse(body)?)),
            ReplyEvent::CopyData(body) if !self.discard => self.data.extend_from_slice(body),
            ReplyEvent::CommandComplete(tag) => {
                let tag = tag.as_str();
                self.rows = crate::proto::query_result::rows_from_tag(tag);
                self.tag = Some(tag.to_owned());
            }
            ReplyEvent::RowDescription(_) | ReplyEvent::DataRow(_) => self.other = true,
            _ => {}
        }
        Ok(())
    }

    fn took_effect(&self) -> bool {
        self.started.is_some() || self.tag.is_some()
    }
}

/// The COPY command in flight: its place in the queue and what its reply said.
struct Running {
    seq: u64,
    sent_from: u64,
    sink: CopySink,
    errs: CmdErrors,
    /// ReadyForQuery arrived (or the connection broke): the command is over.
    done: bool,
}

impl Running {
    /// Polls the COPY command once, driving the socket when it is the head.
    fn poll(&mut self, conn: &Conn, cx: &mut Context<'_>) -> Poll<Result<(), PgError>> {
        if self.done {
            return Poll::Ready(Err(PgError::closed("the COPY already ended")));
        }
        let stalled = {
            let mut st = conn.st.borrow_mut();
            match st.copy_outcome.take() {
                Some((seq, e)) if seq == self.seq => Some(e),
                other => {
                    st.copy_outcome = other;
                    None
                }
            }
        };
        if let Some(e) = stalled {
            self.done = true;
            return Poll::Ready(Err(e));
        }
        let r = conn.poll_cmd(cx, self.seq, self.sent_from, &mut self.sink, &mut self.errs);
        if r.is_ready() {
            self.done = true;
        }
        r
    }

    /// The error for a COPY command that ended (ReadyForQuery) before it started.
    fn not_started(&self, op: &str, wanted: &str) -> PgError {
        let got = match (&self.sink.started, &self.sink.tag) {
            (Some((true, _)), _) => "a COPY FROM STDIN".to_owned(),
            (Some((false, _)), _) => "a COPY TO STDOUT".to_owned(),
            (None, Some(tag)) => format!("{tag:?}"),
            (None, None) if self.sink.other => "rows".to_owned(),
            (None, None) => "nothing".to_owned(),
        };
        PgError::misuse(format!(
            "{op}: the statement is not a {wanted} (the server answered with {got})"
        ))
    }
}

/// Ends a COPY whose `begin` future was dropped before it answered (a caller's timeout):
/// the hold is released with a CopyFail (ignored by a server not in copy mode) and the
/// command is abandoned to the watcher, so the connection is neither held nor stalled.
struct BeginGuard<'c> {
    conn: &'c Conn,
    seq: u64,
    armed: bool,
}

impl Drop for BeginGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.copy_send(self.seq, true, |out| {
                encode::copy_fail("COPY abandoned by the client", out)
            });
            abandon(self.conn, self.seq);
        }
    }
}

/// Queues a COPY's Query and takes the send buffer (see `State::copy_hold`; waiting for
/// another COPY of this connection to let it go first). Both directions hold it: a COPY TO
/// STDOUT until its CopyOutResponse, because the statement may turn out to be a COPY FROM
/// STDIN after all.
async fn start<'c>(conn: &'c Conn, sql: &str) -> Result<(Running, BeginGuard<'c>), PgError> {
    poll_fn(|cx| {
        let mut st = conn.st.borrow_mut();
        if st.copy_hold.is_none() || st.broken.is_some() {
            return Poll::Ready(());
        }
        st.copy_turn.push(cx.waker().clone());
        Poll::Pending
    })
    .await;
    let (seq, sent_from) = conn.enqueue(Reply::copy(), |out| encode::query(sql, out))?;
    conn.hold_for_copy(seq);
    let run = Running {
        seq,
        sent_from,
        sink: CopySink::default(),
        errs: CmdErrors::default(),
        done: false,
    };
    Ok((
        run,
        BeginGuard {
            conn,
            seq,
            armed: true,
        },
    ))
}

/// A `COPY … FROM STDIN` in progress: send the data with [`send`](Self::send), end it with
/// [`finish`](Self::finish). Made by [`PgConnection::copy_in`] (or
/// [`PgPool::copy_in`](crate::PgPool::copy_in)); see the [module docs](self) for what it
/// does to other commands on the connection. Dropping it unfinished aborts the COPY
/// (CopyFail): nothing of it stays, and the connection stays usable.
///
/// Text and CSV data are sent as they are (any chunking: rows may span `send` calls); for
/// `FORMAT binary` use [`BinaryCopyInWriter`].
pub struct CopyIn<'a> {
    holder: Holder<'a>,
    run: Running,
    format: CopyFormat,
    /// CopyDone or CopyFail went out (the hold is released).
    ended: bool,
}

impl fmt::Debug for CopyIn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_copy(f, "CopyIn", &self.format, self.ended)
    }
}

fn debug_copy(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    format: &CopyFormat,
    ended: bool,
) -> fmt::Result {
    f.debug_struct(name)
        .field("format", format)
        .field("ended", &ended)
        .finish()
}

impl<'a> CopyIn<'a> {
    async fn begin(holder: Holder<'a>, sql: &str) -> Result<CopyIn<'a>, PgError> {
        let conn = holder.conn();
        let (mut run, mut guard) = start(conn, sql).await?;
        let started = poll_fn(|cx| match run.poll(conn, cx) {
            Poll::Ready(Ok(())) => {
                Poll::Ready(Err(run.not_started("copy_in", "COPY … FROM STDIN")))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match run.sink.started {
                Some((true, _)) => Poll::Ready(Ok(())),
                Some((false, _)) => {
                    // A COPY TO STDOUT: let its data go by, then report the mix-up.
                    run.sink.discard = true;
                    run.sink.data.clear();
                    Poll::Pending
                }
                None => Poll::Pending,
            },
        })
        .await;
        guard.armed = false;
        drop(guard);
        match started {
            Ok(()) => {
                let format = match run.sink.started.take() {
                    Some((_, f)) => f,
                    None => CopyFormat {
                        binary: false,
                        column_formats: Vec::new(),
                    },
                };
                Ok(CopyIn {
                    holder,
                    run,
                    format,
                    ended: false,
                })
            }
            Err(e) => {
                // The COPY never took the stream: let the held commands go. A CopyFail
                // first when the command is still running (its future was not the end of
                // it): in copy-in mode it ends the COPY, otherwise the server ignores it.
                let running = !run.done;
                conn.copy_send(run.seq, true, |out| {
                    if running {
                        encode::copy_fail("COPY abandoned by the client", out)
                    }
                });
                if running {
                    abandon(conn, run.seq);
                    run.done = true;
                }
                Err(e)
            }
        }
    }

    /// The formats the server announced (text or binary, per column).
    pub fn format(&self) -> &CopyFormat {
        &self.format
    }

    /// The connection the COPY runs on.
    pub fn connection(&self) -> &PgConnection {
        self.holder.handle()
    }

    /// Polls the command once: an early end (a server error, a timeout, a broken connection)
    /// is returned as the error it is.
    fn poll_early_end(&mut self, cx: &mut Context<'_>) -> Poll<PgError> {
        match self.run.poll(self.holder.conn(), cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(e),
            Poll::Ready(Ok(())) => Poll::Ready(PgError::protocol(
                "the server ended the COPY FROM STDIN before the client finished it",
            )),
        }
    }

    /// Releases the hold with a CopyFail (an early end: in copy-in mode the server may still
    /// wait for data; otherwise it ignores the message).
    fn end_early(&mut self) {
        if !self.ended {
            self.ended = true;
            self.holder.conn().copy_send(self.run.seq, true, |out| {
                encode::copy_fail("COPY abandoned by the client", out)
            });
        }
    }

    /// Sends `data` (any number of bytes; it is split into messages of at most 1 MB).
    /// Waits while the connection's send buffer holds more than [`COPY_IN_HIGH_WATER`]
    /// bytes. A server error that already ended the COPY (a malformed row, a constraint) is
    /// returned here, and the COPY is over.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), PgError> {
        if self.ended {
            return Err(PgError::misuse(
                "CopyIn::send after the COPY ended (finished, aborted or failed)",
            ));
        }
        for piece in data.chunks(encode::COPY_DATA_MAX) {
            poll_fn(|cx| {
                if let Poll::Ready(e) = self.poll_early_end(cx) {
                    return Poll::Ready(Err(e));
                }
                let mut st = self.holder.conn().st.borrow_mut();
                if st.out.len() <= COPY_IN_HIGH_WATER {
                    return Poll::Ready(Ok(()));
                }
                st.copy_waker = Some(cx.waker().clone());
                Poll::Pending
            })
            .await
            .inspect_err(|_| self.end_early())?;
            self.holder
                .conn()
                .copy_send(self.run.seq, false, |out| encode::copy_data(piece, out));
        }
        Ok(())
    }

    /// Sends CopyDone and waits for the server's verdict: the rows copied (`COPY n`), or the
    /// error that rolled the COPY back.
    pub async fn finish(mut self) -> Result<u64, PgError> {
        if self.ended {
            return Err(PgError::misuse("CopyIn::finish after the COPY ended"));
        }
        self.ended = true;
        self.holder
            .conn()
            .copy_send(self.run.seq, true, encode::copy_done);
        let conn = self.holder.conn();
        let run = &mut self.run;
        poll_fn(|cx| run.poll(conn, cx)).await?;
        Ok(self.run.sink.rows)
    }

    /// Aborts the COPY with CopyFail carrying `message`: the server rolls it back (nothing
    /// of it stays) and the connection stays usable. Returns once the server confirmed.
    pub async fn abort(mut self, message: &str) -> Result<(), PgError> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.holder
            .conn()
            .copy_send(self.run.seq, true, |out| encode::copy_fail(message, out));
        let conn = self.holder.conn();
        let run = &mut self.run;
        match poll_fn(|cx| run.poll(conn, cx)).await {
            // 57014: the COPY failed as asked.
            Err(e) if e.sql_state() == Some("57014") => Ok(()),
            Err(e) => Err(e),
            Ok(()) => Ok(()),
        }
    }
}

impl Drop for CopyIn<'_> {
    fn drop(&mut self) {
        if !self.run.done {
            // Unfinished: CopyFail (once), then the watcher drains the COPY's error.
            self.end_early();
            abandon(self.holder.conn(), self.run.seq);
        } else if !self.ended {
            self.end_early();
        }
    }
}

/// The data of a `COPY … TO STDOUT` as it arrives: a [`Stream`](futures_core::Stream) of
/// byte chunks (the concatenated CopyData of one receive each; text and CSV rows end with a
/// newline and may span chunks), also readable with [`next_chunk`](Self::next_chunk). Made
/// by [`PgConnection::copy_out`] (or [`PgPool::copy_out`](crate::PgPool::copy_out)).
///
/// It receives only while polled (backpressure). After the end, [`rows`](Self::rows) gives
/// the rows copied. Dropping it before the end cancels the COPY (see the [module
/// docs](self)); the connection stays usable.
pub struct CopyOut<'a> {
    holder: Holder<'a>,
    run: Running,
    format: CopyFormat,
    /// The end was reported (`None` from the stream).
    finished: bool,
    /// The error that ended the COPY, reported after the data received before it.
    error: Option<PgError>,
}

impl fmt::Debug for CopyOut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_copy(f, "CopyOut", &self.format, self.finished)
    }
}

impl<'a> CopyOut<'a> {
    async fn begin(holder: Holder<'a>, sql: &str) -> Result<CopyOut<'a>, PgError> {
        let conn = holder.conn();
        let (mut run, mut guard) = start(conn, sql).await?;
        let started = poll_fn(|cx| {
            if run.sink.started.is_some() {
                return Poll::Ready(Ok(()));
            }
            match run.poll(conn, cx) {
                Poll::Ready(Ok(())) if run.sink.started.is_some() => Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Err(run.not_started("copy_out", "COPY … TO STDOUT")))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending if run.sink.started.is_some() => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        guard.armed = false;
        drop(guard);
        if let Err(e) = started {
            // Ended before it started (no CopyFail needed: the server is not in copy-in
            // mode): let the held commands go.
            conn.copy_send(run.seq, true, |_| {});
            if !run.done {
                abandon(conn, run.seq);
            }
            return Err(e);
        }
        match run.sink.started.take() {
            Some((false, format)) => {
                // Nothing more to send for this COPY: the held commands may go.
                conn.copy_send(run.seq, true, |_| {});
                Ok(CopyOut {
                    holder,
                    run,
                    format,
                    finished: false,
                    error: None,
                })
            }
            _ => {
                // A COPY FROM STDIN: the server waits for data; end it at once (the commands
                // held behind it follow).
                conn.copy_send(run.seq, true, |out| {
                    encode::copy_fail("copy_out was given a COPY FROM STDIN", out)
                });
                if !run.done {
                    abandon(conn, run.seq);
                }
                Err(PgError::misuse(
                    "copy_out: the statement is not a COPY … TO STDOUT (the server answered \
                     with a COPY FROM STDIN; it was aborted)",
                ))
            }
        }
    }

    /// The formats the server announced (text or binary, per column).
    pub fn format(&self) -> &CopyFormat {
        &self.format
    }

    /// The connection the COPY runs on.
    pub fn connection(&self) -> &PgConnection {
        self.holder.handle()
    }

    /// The rows the server reported copying (`COPY n`), once the stream has ended.
    pub fn rows(&self) -> Option<u64> {
        (self.finished && self.error.is_none() && self.run.sink.tag.is_some())
            .then_some(self.run.sink.rows)
    }

    /// The next chunk of data, `None` at the end, or the error that ended the COPY.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, PgError>> {
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Reads the rest of the data into one buffer (for small results).
    pub async fn collect_all(mut self) -> Result<Vec<u8>, PgError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, PgError>>> {
        loop {
            if !self.run.sink.data.is_empty() {
                return Poll::Ready(Some(Ok(self.run.sink.data.split().freeze())));
            }
            if let Some(e) = self.error.take() {
                self.finished = true;
                return Poll::Ready(Some(Err(e)));
            }
            if self.run.done {
                self.finished = true;
                return Poll::Ready(None);
            }
            match self.run.poll(self.holder.conn(), cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => self.error = Some(e),
                Poll::Pending if self.run.sink.data.is_empty() => return Poll::Pending,
                Poll::Pending => self.holder.conn().progress(self.run.seq),
            }
        }
    }
}

impl futures_core::Stream for CopyOut<'_> {
    type Item = Result<Bytes, PgError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
    }
}

impl Drop for CopyOut<'_> {
    fn drop(&mut self) {
        if self.run.done {
            return;
        }
        let conn = self.holder.conn();
        abandon(conn, self.run.seq);
        // Stop the server rather than drain what may be a whole table. (A COPY not yet at
        // the head of the queue cannot be stopped without hitting the command before it:
        // it is drained.)
        if conn.cancel_head(self.run.seq) {
            tasks::spawn_cancel(&self.holder.handle().conn);
        }
    }
}

impl PgConnection {
    /// Starts `COPY … FROM STDIN` (`sql`, text, CSV or binary format) and returns once the
    /// server is ready for the data. An error in the statement (no such table, a COPY TO
    /// STDOUT, not a COPY at all) is returned here. Commands other tasks queue on this
    /// connection meanwhile wait until the COPY ends (see [`CopyIn`]) — so the task that
    /// holds the `CopyIn` must finish (or drop) it before it awaits another command on the
    /// same connection.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let mut copy = conn.copy_in("COPY items (id, name) FROM STDIN (FORMAT csv)").await?;
    /// copy.send(b"1,apple\n2,pear\n").await?;
    /// copy.send(b"3,plum\n").await?;
    /// assert_eq!(copy.finish().await?, 3);
    /// # Ok(()) }
    /// ```
    pub async fn copy_in(&self, sql: &str) -> Result<CopyIn<'_>, PgError> {
        CopyIn::begin(Holder::Borrowed(self), sql).await
    }

    /// Starts `COPY … TO STDOUT` (`sql`, a table or a `(query)`, text, CSV or binary) and
    /// returns the data as a stream of chunks once the server started sending.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let mut copy = conn.copy_out("COPY (SELECT n FROM generate_series(1, 3) n) TO STDOUT").await?;
    /// let mut text = Vec::new();
    /// while let Some(chunk) = copy.next_chunk().await {
    ///     text.extend_from_slice(&chunk?);
    /// }
    /// assert_eq!(text, b"1\n2\n3\n");
    /// assert_eq!(copy.rows(), Some(3));
    /// # Ok(()) }
    /// ```
    pub async fn copy_out(&self, sql: &str) -> Result<CopyOut<'_>, PgError> {
        CopyOut::begin(Holder::Borrowed(self), sql).await
    }
}

impl crate::PgPool {
    /// [`PgConnection::copy_in`] on a connection rented for the COPY alone (no other caller
    /// pipelines on it); the rental returns to the pool when the `CopyIn` is finished or
    /// dropped.
    pub async fn copy_in(&self, sql: &str) -> Result<CopyIn<'static>, PgError> {
        let rented = self.rent().await?;
        CopyIn::begin(Holder::Rented(rented), sql).await
    }

    /// [`PgConnection::copy_out`] on a connection rented for the COPY alone; the rental
    /// returns to the pool when the `CopyOut` is dropped.
    pub async fn copy_out(&self, sql: &str) -> Result<CopyOut<'static>, PgError> {
        let rented = self.rent().await?;
        CopyOut::begin(Holder::Rented(rented), sql).await
    }
}

/// Writes typed rows into a `COPY … FROM STDIN (FORMAT binary)`: each row's values are
/// encoded with their [`ToSql`] for the column types given (in the COPY's column order), and
/// sent in chunks of about 64 KB.
///
/// ```no_run
/// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
/// use ioxide_pg::{types::Type, BinaryCopyInWriter};
/// let copy = conn.copy_in("COPY items (id, name) FROM STDIN (FORMAT binary)").await?;
/// let mut w = BinaryCopyInWriter::new(copy, &[Type::INT8, Type::TEXT])?;
/// for i in 0..1000i64 {
///     w.write(&[&i, &format!("item {i}")]).await?;
/// }
/// assert_eq!(w.finish().await?, 1000);
/// # Ok(()) }
/// ```
pub struct BinaryCopyInWriter<'a> {
    copy: CopyIn<'a>,
    types: Vec<Type>,
    buf: BytesMut,
    rows: u64,
}

impl fmt::Debug for BinaryCopyInWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyInWriter")
            .field("types", &self.types)
            .field("rows", &self.rows)
            .finish()
    }
}

impl<'a> BinaryCopyInWriter<'a> {
    /// A writer for `copy`, whose columns have `types`. Fails (and aborts the COPY) when the
    /// COPY is not in binary format or has another number of columns.
    pub fn new(copy: CopyIn<'a>, types: &[Type]) -> Result<BinaryCopyInWriter<'a>, PgError> {
        if !copy.format.binary {
            return Err(PgError::misuse(
                "BinaryCopyInWriter needs COPY … FROM STDIN (FORMAT binary); this COPY is text",
            ));
        }
        let n = copy.format.column_formats.len();
        if n != types.len() {
            return Err(PgError::misuse(format!(
                "BinaryCopyInWriter: the COPY has {n} columns, but {} types were given",
                types.len()
            )));
        }
        let mut buf = BytesMut::with_capacity(BINARY_CHUNK + 1024);
        buf.put_slice(BINARY_HEADER);
        Ok(BinaryCopyInWriter {
            copy,
            types: types.to_vec(),
            buf,
            rows: 0,
        })
    }

    /// Encodes one row (one value per column, `None` for NULL through `Option`) and sends
    /// the buffered rows when about 64 KB have gathered. A value that cannot be encoded for
    /// its column's type fails without sending anything of that row; the COPY goes on.
    pub async fn write(&mut self, row: &[&(dyn ToSql + Sync)]) -> Result<(), PgError> {
        self.encode_row(row)?;
        if self.buf.len() >= BINARY_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    fn encode_row(&mut self, row: &[&(dyn ToSql + Sync)]) -> Result<(), PgError> {
        if row.len() != self.types.len() {
            return Err(PgError::conversion(format!(
                "BinaryCopyInWriter: row {} has {} values for {} columns",
                self.rows,
                row.len(),
                self.types.len()
            )));
        }
        let before = self.buf.len();
        // At most 1600 columns: fits an i16.
        self.buf.put_i16(row.len() as i16);
        for (i, (value, ty)) in row.iter().zip(&self.types).enumerate() {
            let at = self.buf.len();
            self.buf.put_i32(0);
            let r = value.to_sql_checked(ty, &mut self.buf);
            let len = self.buf.len() - at - 4;
            match r {
                Ok(IsNull::No) if i32::try_from(len).is_ok() => {
                    self.buf[at..at + 4].copy_from_slice(&(len as i32).to_be_bytes());
                }
                Ok(IsNull::Yes) => {
                    self.buf.truncate(at + 4);
                    self.buf[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                }
                Ok(IsNull::No) => {
                    self.buf.truncate(before);
                    return Err(PgError::conversion(format!(
                        "BinaryCopyInWriter: row {}, column {i}: value of {len} bytes is too \
                         large",
                        self.rows
                    )));
                }
                Err(e) => {
                    self.buf.truncate(before);
                    return Err(PgError::conversion_with(
                        format!(
                            "BinaryCopyInWriter: row {}, column {i} (type {}) cannot be encoded",
                            self.rows,
                            ty.name()
                        ),
                        e,
                    ));
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        if !self.buf.is_empty() {
            self.copy.send(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    /// Sends the rest and the trailer, ends the COPY, and returns the rows copied.
    pub async fn finish(mut self) -> Result<u64, PgError> {
        self.buf.put_i16(-1);
        self.flush().await?;
        self.copy.finish().await
    }

    /// Aborts the COPY (nothing of it stays); see [`CopyIn::abort`].
    pub async fn abort(self, message: &str) -> Result<(), PgError> {
        self.copy.abort(message).await
    }
}

/// Reads typed rows out of a `COPY … TO STDOUT (FORMAT binary)`: a
/// [`Stream`](futures_core::Stream) of [`BinaryCopyOutRow`]s (also [`next_row`](Self::next_row)),
/// decoded with the column types given.
///
/// ```no_run
/// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
/// use ioxide_pg::{types::Type, BinaryCopyOutStream};
/// let copy = conn.copy_out("COPY items (id, name) TO STDOUT (FORMAT binary)").await?;
/// let mut rows = BinaryCopyOutStream::new(copy, &[Type::INT8, Type::TEXT])?;
/// while let Some(row) = rows.next_row().await {
///     let row = row?;
///     let (id, name): (i64, &str) = (row.get(0)?, row.get(1)?);
///     println!("{id} {name}");
/// }
/// # Ok(()) }
/// ```
pub struct BinaryCopyOutStream<'a> {
    copy: CopyOut<'a>,
    types: Arc<[Type]>,
    buf: BytesMut,
    header: bool,
    trailer: bool,
    ended: bool,
}

impl fmt::Debug for BinaryCopyOutStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyOutStream")
            .field("types", &self.types)
            .finish()
    }
}

/// One row of a binary COPY TO STDOUT. Owns its bytes (`Send + Sync`, cheap to keep).
#[derive(Clone)]
pub struct BinaryCopyOutRow {
    data: Bytes,
    /// Each field's range in `data`, `None` for NULL.
    fields: Vec<Option<(u32, u32)>>,
    types: Arc<[Type]>,
}

impl fmt::Debug for BinaryCopyOutRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyOutRow")
            .field("fields", &self.fields.len())
            .finish()
    }
}

impl BinaryCopyOutRow {
    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the row has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The raw bytes of field `idx` (`None` for NULL); an error for a bad index.
    pub fn raw(&self, idx: usize) -> Result<Option<&[u8]>, PgError> {
        match self.fields.get(idx) {
            Some(Some((a, b))) => Ok(Some(&self.data[*a as usize..*b as usize])),
            Some(None) => Ok(None),
            None => Err(PgError::conversion(format!(
                "BinaryCopyOutRow: no field {idx} (the row has {})",
                self.fields.len()
            ))),
        }
    }

    /// Decodes field `idx` as `T` (with the type given for its column).
    pub fn get<'r, T: FromSql<'r>>(&'r self, idx: usize) -> Result<T, PgError> {
        let raw = self.raw(idx)?;
        let ty = self
            .types
            .get(idx)
            .ok_or_else(|| PgError::conversion("BinaryCopyOutRow: column type vanished"))?;
        let rust = std::any::type_name::<T>();
        if !T::accepts(ty) {
            return Err(PgError::conversion(format!(
                "COPY column {idx} has type {}, which cannot be read as {rust}",
                ty.name()
            )));
        }
        T::from_sql_nullable(ty, raw).map_err(|e| {
            PgError::conversion_with(
                format!(
                    "COPY column {idx} (type {}) could not be read as {rust}",
                    ty.name()
                ),
                e,
            )
        })
    }

    /// Same as [`get`](Self::get); named for tokio-postgres users.
    pub fn try_get<'r, T: FromSql<'r>>(&'r self, idx: usize) -> Result<T, PgError> {
        self.get(idx)
    }
}

impl<'a> BinaryCopyOutStream<'a> {
    /// Reads `copy`'s rows as `types` (one per column). Fails when the COPY is not binary or
    /// has another number of columns.
    pub fn new(copy: CopyOut<'a>, types: &[Type]) -> Result<BinaryCopyOutStream<'a>, PgError> {
        if !copy.format.binary {
            return Err(PgError::misuse(
                "BinaryCopyOutStream needs COPY … TO STDOUT (FORMAT binary); this COPY is text",
            ));
        }
        let n = copy.format.column_formats.len();
        if n != types.len() {
            return Err(PgError::misuse(format!(
                "BinaryCopyOutStream: the COPY has {n} columns, but {} types were given",
                types.len()
            )));
        }
        Ok(BinaryCopyOutStream {
            copy,
            types: Arc::from(types),
            buf: BytesMut::new(),
            header: false,
            trailer: false,
            ended: false,
        })
    }

    /// The rows the server reported copying, once the stream has ended.
    pub fn rows(&self) -> Option<u64> {
        self.copy.rows()
    }

    /// The next row, `None` at the end, or the error that ended the COPY.
    pub async fn next_row(&mut self) -> Option<Result<BinaryCopyOutRow, PgError>> {
        poll_fn(|cx| self.poll_row(cx)).await
    }

    /// Parses the header, if it is complete. `Ok(false)` when more bytes are needed.
    fn parse_header(&mut self) -> Result<bool, PgError> {
        if self.buf.len() < BINARY_SIGNATURE.len() + 8 {
            return Ok(false);
        }
        if &self.buf[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE {
            return Err(PgError::protocol(
                "binary COPY data lacks the PGCOPY signature",
            ));
        }
        let at = BINARY_SIGNATURE.len();
        let flags = i32::from_be_bytes([
            self.buf[at],
            self.buf[at + 1],
            self.buf[at + 2],
            self.buf[at + 3],
        ]);
        let ext = i32::from_be_bytes([
            self.buf[at + 4],
            self.buf[at + 5],
            self.buf[at + 6],
            self.buf[at + 7],
        ]);
        if flags & (1 << 16) != 0 {
            return Err(PgError::protocol(
                "binary COPY data with OIDs is not supported",
            ));
        }
        let ext = usize::try_from(ext)
            .map_err(|_| PgError::protocol("binary COPY header extension length is negative"))?;
        let total = at + 8 + ext;
        if self.buf.len() < total {
            return Ok(false);
        }
        self.buf.advance(total);
        self.header = true;
        Ok(true)
    }

    /// Parses one row out of the buffer: `Ok(None)` when it is incomplete (or the trailer
    /// was read).
    fn parse_row(&mut self) -> Result<Option<BinaryCopyOutRow>, PgError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([b[0], b[1]]);
        if count == -1 {
            self.buf.advance(2);
            self.trailer = true;
            return Ok(None);
        }
        if usize::try_from(count).ok() != Some(self.types.len()) {
            return Err(PgError::protocol(format!(
                "binary COPY row has {count} fields, expected {}",
                self.types.len()
            )));
        }
        let mut at = 2usize;
        let mut fields = Vec::with_capacity(self.types.len());
        for _ in 0..count {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            at += 4;
            if len == -1 {
                fields.push(None);
                continue;
            }
            let len = usize::try_from(len)
                .map_err(|_| PgError::protocol(format!("binary COPY field length {len}")))?;
            if b.len() < at + len {
                return Ok(None);
            }
            let (start, end) = (at, at + len);
            let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(end)) else {
                return Err(PgError::protocol("binary COPY row larger than 4 GB"));
            };
            fields.push(Some((start, end)));
            at += len;
        }
        let data = self.buf.split_to(at).freeze();
        Ok(Some(BinaryCopyOutRow {
            data,
            fields,
            types: self.types.clone(),
        }))
    }

    fn poll_row(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BinaryCopyOutRow, PgError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            let parsed = if !self.header {
                match self.parse_header() {
                    // The rows may be in the same chunk.
                    Ok(true) => continue,
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                }
            } else if self.trailer {
                Ok(None)
            } else {
                self.parse_row()
            };
            match parsed {
                Ok(Some(row)) => return Poll::Ready(Some(Ok(row))),
                Ok(None) => {}
                Err(e) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match self.copy.poll_chunk(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if self.trailer {
                        if chunk.is_empty() {
                            continue;
                        }
                        self.ended = true;
                        return Poll::Ready(Some(Err(PgError::protocol(
                            "binary COPY data after the trailer",
                        ))));
                    }
                    if self.buf.is_empty() {
                        self.buf = BytesMut::from(chunk);
                    } else {
                        self.buf.extend_from_slice(&chunk);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    if !self.trailer {
                        return Poll::Ready(Some(Err(PgError::protocol(
                            "binary COPY data ended without its trailer",
                        ))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl futures_core::Stream for BinaryCopyOutStream<'_> {
    type Item = Result<BinaryCopyOutRow, PgError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_row(cx)
    }
}
