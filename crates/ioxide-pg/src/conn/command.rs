//! The future of one command, and the consumers ("sinks") its reply events go to.

use super::cache::{Prepared, Statement};
use super::result::ResultSet;
use super::state::{CmdErrors, Conn, Sink, SinkError};
use crate::proto::reply::ReplyEvent;
use crate::proto::row::{is_placeholder, parameter_types, Columns, Format, Row};
use crate::PgError;
use postgres_types::Type;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Awaits command `seq`'s reply, feeding its events to `sink`. Dropping it before the end
/// abandons the command: its reply is drained by the watcher and discarded, so the next
/// command is never handed a stale reply.
pub(crate) struct CmdFuture<'c, 's, S: Sink> {
    conn: &'c Conn,
    seq: u64,
    sent_from: u64,
    sink: &'s mut S,
    errs: CmdErrors,
    done: bool,
}

impl<'c, 's, S: Sink> CmdFuture<'c, 's, S> {
    pub(crate) fn new(conn: &'c Conn, seq: u64, sent_from: u64, sink: &'s mut S) -> Self {
        CmdFuture {
            conn,
            seq,
            sent_from,
            sink,
            errs: CmdErrors::default(),
            done: false,
        }
    }
}

impl<'c, 's, S: Sink> CmdFuture<'c, 's, S> {
    /// The command's result and whether its error was our own automatic cancel of another
    /// command landing on this one (see `CmdErrors::collateral_cancel`), which makes it safe
    /// to run again. (A plain forwarding future: an `async fn` here cost ~40 instructions per
    /// query, callgrind.)
    pub(crate) fn outcome(self) -> Outcome<'c, 's, S> {
        Outcome(self)
    }
}

/// See [`CmdFuture::outcome`].
pub(crate) struct Outcome<'c, 's, S: Sink>(CmdFuture<'c, 's, S>);

impl<S: Sink> Future for Outcome<'_, '_, S> {
    type Output = (Result<(), PgError>, bool);
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let cmd = &mut self.get_mut().0;
        Pin::new(&mut *cmd)
            .poll(cx)
            .map(|r| (r, cmd.errs.collateral_cancel))
    }
}

impl<S: Sink> Unpin for CmdFuture<'_, '_, S> {}

impl<S: Sink> Future for CmdFuture<'_, '_, S> {
    type Output = Result<(), PgError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(PgError::closed("command polled after completion")));
        }
        let r = this
            .conn
            .poll_cmd(cx, this.seq, this.sent_from, this.sink, &mut this.errs);
        if r.is_ready() {
            this.done = true;
        }
        r
    }
}

impl<S: Sink> Drop for CmdFuture<'_, '_, S> {
    fn drop(&mut self) {
        if !self.done {
            abandon(self.conn, self.seq);
        }
    }
}

/// Marks command `seq` as having no future; if it is the head, the watcher takes over.
pub(crate) fn abandon(conn: &Conn, seq: u64) {
    let was_head = {
        let mut st = conn.st.borrow_mut();
        let Some(front) = st.queue.front().map(|c| c.seq) else {
            return;
        };
        let pos = seq.wrapping_sub(front) as usize;
        match st.queue.get_mut(pos) {
            Some(cmd) => {
                cmd.abandoned = true;
                cmd.waker = None;
                pos == 0
            }
            None => false,
        }
    };
    if was_head {
        conn.wake_driver();
    }
}

/// Collects a Describe's ParameterDescription and RowDescription/NoData.
#[derive(Default)]
pub(crate) struct PrepareSink {
    params: Option<Vec<Type>>,
    columns: Option<Columns>,
}

/// The result columns a Describe reported, as Bind will deliver them: every column in binary.
/// The description an unnamed statement's reply carries (it is parsed afresh with every
/// Bind): `current` (the cached description, looked-up types included) when it is the same,
/// else parsed, taking `current`'s looked-up types where the OIDs agree.
pub(crate) fn redescribed(current: &Arc<Columns>, body: &[u8]) -> Result<Arc<Columns>, PgError> {
    if current.same_description(body) {
        return Ok(current.clone());
    }
    let mut columns = described_columns(body)?;
    columns.resolve_like(current);
    Ok(Arc::new(columns))
}

pub(crate) fn described_columns(body: &[u8]) -> Result<Columns, PgError> {
    let mut cols = Columns::parse(body)?;
    cols.set_format(Format::Binary);
    Ok(cols)
}

impl Sink for PrepareSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        match ev {
            ReplyEvent::ParameterDescription(body) => self.params = Some(parameter_types(body)?),
            ReplyEvent::RowDescription(body) => self.columns = Some(described_columns(body)?),
            ReplyEvent::NoData => self.columns = Some(Columns::default()),
            _ => {}
        }
        Ok(())
    }
}

impl PrepareSink {
    /// The described OIDs `postgres-types` does not know (placeholder types), if any.
    pub(crate) fn unknown_oids(&self) -> Vec<u32> {
        let params = self.params.iter().flatten();
        let mut oids: Vec<u32> = params
            .filter(|t| is_placeholder(t))
            .map(Type::oid)
            .collect();
        if let Some(c) = self.columns.as_ref().filter(|c| c.unresolved()) {
            oids.extend(c.placeholder_oids());
        }
        oids
    }

    /// Replaces each placeholder type for which `find` has the real one.
    pub(crate) fn resolve_with(&mut self, mut find: impl FnMut(u32) -> Option<Type>) {
        for t in self.params.iter_mut().flatten() {
            if is_placeholder(t) {
                if let Some(real) = find(t.oid()) {
                    *t = real;
                }
            }
        }
        if let Some(c) = &mut self.columns {
            c.resolve_with(find);
        }
    }

    pub(crate) fn into_statement(self, name: Rc<str>) -> Result<Statement, PgError> {
        match (self.params, self.columns) {
            (Some(params), Some(columns)) => Ok(Rc::new(Prepared {
                name,
                params: Rc::from(params),
                columns: Arc::new(columns),
            })),
            _ => Err(PgError::protocol(
                "the server did not describe the prepared statement",
            )),
        }
    }
}

/// Collects every row into a [`ResultSet`].
pub(crate) struct SetSink(pub(crate) ResultSet);

impl Sink for SetSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        Ok(self.0.accept(ev)?)
    }

    fn took_effect(&self) -> bool {
        !self.0.is_empty() || !self.0.command_tag().is_empty()
    }
}

/// Collects the command tag of every statement of a simple-protocol script; rows are read
/// and dropped.
#[derive(Default)]
pub(crate) struct TagsSink(pub(crate) Vec<String>);

impl Sink for TagsSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        if let ReplyEvent::CommandComplete(tag) = ev {
            self.0.push(tag.as_str().to_owned());
        }
        Ok(())
    }

    fn took_effect(&self) -> bool {
        !self.0.is_empty()
    }
}

/// Counts the statements of a batch that completed and the rows they affected.
#[derive(Default)]
pub(crate) struct CountSink {
    pub(crate) completed: usize,
    pub(crate) rows: u64,
}

impl Sink for CountSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        if let ReplyEvent::CommandComplete(tag) = ev {
            self.completed += 1;
            self.rows += crate::proto::query_result::rows_from_tag(tag.as_str());
        }
        Ok(())
    }

    fn took_effect(&self) -> bool {
        self.completed > 0
    }
}

/// Hands each row to a borrowed callback as it arrives.
pub(crate) struct RowsSink<'f, F> {
    pub(crate) columns: Arc<Columns>,
    f: &'f mut F,
    pub(crate) rows: u64,
    /// A row reached the callback or a statement completed (see `Sink::took_effect`).
    delivered: bool,
}

impl<'f, F> RowsSink<'f, F> {
    pub(crate) fn new(columns: Arc<Columns>, f: &'f mut F) -> Self {
        RowsSink {
            columns,
            f,
            rows: 0,
            delivered: false,
        }
    }
}

impl<F> Sink for RowsSink<'_, F>
where
    F: FnMut(Row<'_>) -> Result<(), PgError>,
{
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        match ev {
            ReplyEvent::DataRow(body) => {
                self.delivered = true;
                let row = Row::new(body, &self.columns)?;
                // A callback may hand back any PgError, one the driver marked "never sent" included;
                // this command was sent, and the flag must not let the pool retry it.
                (self.f)(row).map_err(|e| SinkError::User(e.maybe_sent()))?;
                self.rows += 1;
            }
            // Only an unnamed statement's reply describes its rows (it is parsed afresh).
            ReplyEvent::RowDescription(body) => {
                self.columns = redescribed(&self.columns, body)?;
            }
            ReplyEvent::NoData => self.columns = Columns::none(),
            ReplyEvent::CommandComplete(_) => self.delivered = true,
            _ => {}
        }
        Ok(())
    }

    fn took_effect(&self) -> bool {
        self.delivered
    }
}
