//! The per-command reply state machine.
//!
//! Each command the connection sends ends with its own Sync (extended protocol) or is one
//! Query (simple protocol), so each ends with exactly one ReadyForQuery. The connection keeps
//! a FIFO of in-flight commands and feeds every backend message to the head command's
//! [`Reply`]; when it returns [`ReplyEvent::Done`] the head is popped.
//!
//! A server error moves the machine to "skip to ReadyForQuery": the server discards the rest
//! of that command up to its Sync, so the next command's replies start right after — one
//! failing command in a pipeline never desynchronises the others.
//!
//! An ErrorResponse is accepted in every state before ReadyForQuery, also after an earlier
//! one (as libpq does). PostgreSQL ends a failed command with one ErrorResponse, but a FATAL
//! may follow at any time before ReadyForQuery — a `pg_terminate_backend` (57P01), a shutdown
//! or a timeout is processed while the backend reads the next frontend message, i.e. while it
//! skips to our Sync — and it must surface as itself: the connection breaks on a fatal
//! error and every command still in flight gets it, SQLSTATE included. A second non-fatal
//! ERROR (an error raised while the server recovers from the first) changes nothing for the
//! stream — exactly one ReadyForQuery still ends the command — so it is reported as an event
//! too, and the connection keeps the first error (the cause) as the command's outcome.
//!
//! COPY is accepted only by the machine of a COPY command ([`Reply::copy`], what
//! `PgConnection::copy_in`/`copy_out` send, simple protocol): CopyInResponse (the server now
//! waits for our CopyData, then CopyDone or CopyFail) and CopyOutResponse (CopyData*, CopyDone)
//! are followed by the COPY's CommandComplete (or an ErrorResponse) and ReadyForQuery. In any
//! other command's reply they are a protocol error and the connection must be marked broken:
//! the server now waits for COPY data nobody will send (and would swallow the next pipelined
//! command as a bad COPY message), or streams data nobody reads. CopyBothResponse (streaming
//! replication) is always one.

use super::db_error::DbError;
use super::message::{is_async, tag_name, BackendMessage, CommandTag, TxnStatus};
use crate::PgError;

/// Which extended-protocol messages a command sent before its Sync, in this order:
/// Close (statement), Parse, Describe (statement), Bind, Execute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Steps {
    /// Close of a statement: expect CloseComplete.
    pub close: bool,
    /// Parse: expect ParseComplete.
    pub parse: bool,
    /// Describe of a statement: expect ParameterDescription, then RowDescription or NoData.
    pub describe: bool,
    /// Bind: expect BindComplete.
    pub bind: bool,
    /// Execute: expect DataRow*, then CommandComplete or EmptyQueryResponse (or
    /// PortalSuspended when `row_limit`).
    pub execute: bool,
    /// The Execute asked for a row limit, so PortalSuspended may end it. Without one (the
    /// driver always executes to completion) a PortalSuspended would silently truncate the
    /// result: it is a protocol error.
    pub row_limit: bool,
}

/// One element of the extended sequence, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ext {
    CloseComplete,
    ParseComplete,
    ParameterDescription,
    RowDescriptionOrNoData,
    BindComplete,
    Execute,
}

const EXT_ORDER: [Ext; 6] = [
    Ext::CloseComplete,
    Ext::ParseComplete,
    Ext::ParameterDescription,
    Ext::RowDescriptionOrNoData,
    Ext::BindComplete,
    Ext::Execute,
];

impl Steps {
    fn includes(&self, e: Ext) -> bool {
        match e {
            Ext::CloseComplete => self.close,
            Ext::ParseComplete => self.parse,
            Ext::ParameterDescription | Ext::RowDescriptionOrNoData => self.describe,
            Ext::BindComplete => self.bind,
            Ext::Execute => self.execute,
        }
    }

    /// The first included step after `after` (or from the start).
    fn next(&self, after: Option<Ext>) -> State {
        EXT_ORDER
            .iter()
            .copied()
            .filter(|&e| after.is_none_or(|a| e > a))
            .find(|&e| self.includes(e))
            .map_or(State::AwaitReady { after_error: false }, State::Ext)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Simple query, between result sets.
    SimpleIdle,
    /// Simple query, inside a result set (after RowDescription).
    SimpleRows,
    /// Extended: expecting this step's message.
    Ext(Ext),
    /// Everything expected arrived, or the server reported an error: only ReadyForQuery or
    /// an ErrorResponse (the implicit commit's, or a FATAL after an error) may follow.
    AwaitReady { after_error: bool },
    /// ReadyForQuery arrived: this command is finished.
    Done,
    /// COPY FROM STDIN: the server waits for our data; it answers only after CopyDone or
    /// CopyFail (CommandComplete or ErrorResponse).
    CopyIn,
    /// COPY TO STDOUT: CopyData until CopyDone.
    CopyOut,
    /// COPY TO STDOUT after CopyDone: CommandComplete next.
    CopyOutDone,
}

impl State {
    fn expecting(&self) -> &'static str {
        match self {
            State::SimpleIdle => {
                "RowDescription, CommandComplete, EmptyQueryResponse, ErrorResponse or ReadyForQuery"
            }
            State::SimpleRows => "DataRow, CommandComplete or ErrorResponse",
            State::Ext(Ext::CloseComplete) => "CloseComplete",
            State::Ext(Ext::ParseComplete) => "ParseComplete",
            State::Ext(Ext::ParameterDescription) => "ParameterDescription",
            State::Ext(Ext::RowDescriptionOrNoData) => "RowDescription or NoData",
            State::Ext(Ext::BindComplete) => "BindComplete",
            State::Ext(Ext::Execute) => {
                "DataRow, CommandComplete or EmptyQueryResponse (PortalSuspended only after a row limit)"
            }
            State::AwaitReady { .. } => "ReadyForQuery or ErrorResponse",
            State::Done => "nothing (the reply is complete)",
            State::CopyIn => "CommandComplete or ErrorResponse (after our CopyDone/CopyFail)",
            State::CopyOut => "CopyData, CopyDone or ErrorResponse",
            State::CopyOutDone => "CommandComplete or ErrorResponse",
        }
    }
}

/// What a backend message meant for the command. Bodies are borrowed from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent<'a> {
    /// An acknowledgement (ParseComplete, BindComplete, CloseComplete): nothing to do.
    Nothing,
    /// The statement's parameter types; read with [`super::row::parameter_types`].
    ParameterDescription(&'a [u8]),
    /// The columns of the rows that follow (or of the described statement); parse with
    /// [`crate::Columns::parse`] or reuse a cached description.
    RowDescription(&'a [u8]),
    /// The described statement returns no rows.
    NoData,
    /// One row; read with [`crate::Row::new`].
    DataRow(&'a [u8]),
    /// A statement finished; the command tag (`SELECT 1`, `INSERT 0 3`, …).
    CommandComplete(CommandTag<'a>),
    /// The query string was empty.
    EmptyQuery,
    /// Execute's row limit was reached; the portal could continue.
    PortalSuspended,
    /// CopyInResponse ([`Reply::copy`] only): the server waits for COPY data. The body is
    /// read with [`super::message::CopyFormat::parse`].
    CopyIn(&'a [u8]),
    /// CopyOutResponse ([`Reply::copy`] only): CopyData follows. The body is read with
    /// [`super::message::CopyFormat::parse`].
    CopyOut(&'a [u8]),
    /// One CopyData message of a COPY TO STDOUT.
    CopyData(&'a [u8]),
    /// The server reported an error. The machine now skips to ReadyForQuery; the error
    /// belongs to this command and is reported once the command is [`Done`](Self::Done). If
    /// [`DbError::is_fatal`], the server closes the connection instead.
    ServerError(Box<DbError>),
    /// ReadyForQuery: the command is finished and the next command's replies follow.
    Done {
        /// The session's transaction state now.
        txn_status: TxnStatus,
    },
}

/// The reply state machine for one command. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Reply {
    steps: Option<Steps>,
    state: State,
    /// Set when the Describe in this command answered NoData: DataRow would be nonsense.
    no_data: bool,
    failed: bool,
    /// Bind + Execute pairs still expected before the Sync (`bind_execute_many`); 1 for
    /// every other command.
    repeat: u32,
    /// Each further pair of a batch starts with a Parse of the unnamed statement
    /// (`parse_bind_execute_many`): ParseComplete comes before its BindComplete.
    parse_each: bool,
    /// A COPY command ([`Reply::copy`]): CopyInResponse/CopyOutResponse are expected.
    copy: bool,
}

impl Reply {
    /// The reply to a Query message (simple protocol): zero or more result sets (RowDescription,
    /// DataRow*, CommandComplete) or EmptyQueryResponse, possibly an ErrorResponse, then
    /// ReadyForQuery.
    pub fn simple() -> Reply {
        Reply {
            steps: None,
            state: State::SimpleIdle,
            no_data: false,
            failed: false,
            repeat: 1,
            parse_each: false,
            copy: false,
        }
    }

    /// The reply to a Query message that runs a COPY (FROM STDIN or TO STDOUT): as
    /// [`Reply::simple`], and CopyInResponse / CopyOutResponse, CopyData, CopyDone are
    /// accepted (see the [module docs](self)).
    pub fn copy() -> Reply {
        Reply {
            copy: true,
            ..Reply::simple()
        }
    }

    /// The reply to an extended-protocol command that sent `steps`, then Sync.
    pub fn extended(steps: Steps) -> Reply {
        Reply {
            steps: Some(steps),
            state: steps.next(None),
            no_data: false,
            failed: false,
            repeat: 1,
            parse_each: false,
            copy: false,
        }
    }

    /// Parse + Describe statement + Sync: preparing a statement.
    pub fn prepare() -> Reply {
        Reply::extended(Steps {
            parse: true,
            describe: true,
            ..Steps::default()
        })
    }

    /// Bind + Execute + Sync: running a prepared statement.
    pub fn bind_execute() -> Reply {
        Reply::extended(Steps {
            bind: true,
            execute: true,
            ..Steps::default()
        })
    }

    /// `n` Bind + Execute pairs of one prepared statement, then one Sync (a pipeline batch:
    /// one implicit transaction). `n` is at least 1.
    pub fn bind_execute_many(n: u32) -> Reply {
        let mut r = Reply::bind_execute();
        r.repeat = n.max(1);
        r
    }

    /// `n` Parse (of the unnamed statement) + Bind + Execute triples, then one Sync: a batch
    /// without named statements (a transaction-mode pooler may run each command on another
    /// server session). `n` is at least 1.
    pub fn parse_bind_execute_many(n: u32) -> Reply {
        let mut r = Reply::extended(Steps {
            parse: true,
            bind: true,
            execute: true,
            ..Steps::default()
        });
        r.repeat = n.max(1);
        r.parse_each = true;
        r
    }

    /// The steps of an extended command; `None` for a simple query.
    pub fn steps(&self) -> Option<Steps> {
        self.steps
    }

    /// A COPY FROM STDIN is in progress: the server waits for the client's data.
    pub fn in_copy_in(&self) -> bool {
        self.state == State::CopyIn
    }

    /// ReadyForQuery arrived.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A server error was reported for this command.
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn unexpected(&self, tag: u8) -> PgError {
        if matches!(tag, b'G' | b'H' | b'W') {
            return PgError::protocol(format!(
                "the server started a COPY ({}) in the reply to a command that cannot carry \
                 one: run COPY FROM STDIN / TO STDOUT with PgConnection::copy_in / copy_out",
                tag_name(tag)
            ));
        }
        let kind = if self.steps.is_some() {
            "an extended-protocol"
        } else {
            "a simple"
        };
        PgError::protocol(format!(
            "unexpected {} in the reply to {kind} command: expecting {}",
            tag_name(tag),
            self.state.expecting()
        ))
    }

    /// Feeds the next backend message of this command (asynchronous messages must have been
    /// taken out by [`super::message::classify_async`] first). An error is final: the stream
    /// is out of sync and the connection must be discarded.
    pub fn on_message<'a>(&mut self, tag: u8, body: &'a [u8]) -> Result<ReplyEvent<'a>, PgError> {
        // COPY TO STDOUT sends one CopyData per row: the one message that needs no decoding
        // skips the general path (~100 instructions per row, callgrind).
        if tag == b'd' && self.state == State::CopyOut {
            return Ok(ReplyEvent::CopyData(body));
        }
        if is_async(tag) {
            return Err(PgError::protocol(format!(
                "asynchronous {} reached a reply machine; classify_async must take it first",
                tag_name(tag)
            )));
        }
        if self.state == State::Done {
            return Err(self.unexpected(tag));
        }
        let msg = BackendMessage::decode(tag, body)?;
        use BackendMessage as M;
        match (self.state, msg) {
            // Any ErrorResponse, including one after the command already failed: a FATAL
            // (`pg_terminate_backend`, shutdown, a timeout) can come while the server reads
            // our Sync, and must surface with its SQLSTATE; a second ERROR cannot desync the
            // stream (ReadyForQuery still ends the command), so it is reported and the
            // connection keeps the first as the command's outcome. See the module docs.
            (_, M::ErrorResponse(body)) => {
                let err = DbError::parse(body)?;
                self.failed = true;
                self.state = State::AwaitReady { after_error: true };
                Ok(ReplyEvent::ServerError(Box::new(err)))
            }
            (State::SimpleIdle | State::AwaitReady { .. }, M::ReadyForQuery(txn_status)) => {
                self.state = State::Done;
                Ok(ReplyEvent::Done { txn_status })
            }
            (State::SimpleIdle, M::RowDescription(body)) => {
                self.state = State::SimpleRows;
                Ok(ReplyEvent::RowDescription(body))
            }
            (State::SimpleIdle | State::SimpleRows, M::CommandComplete(tag)) => {
                self.state = State::SimpleIdle;
                Ok(ReplyEvent::CommandComplete(tag))
            }
            (State::SimpleIdle, M::EmptyQueryResponse) => Ok(ReplyEvent::EmptyQuery),
            (State::SimpleRows, M::DataRow(body)) => Ok(ReplyEvent::DataRow(body)),
            (State::Ext(step), msg) => self.on_extended(step, tag, msg),
            (state, msg) => self.on_copy(state, tag, msg),
        }
    }

    /// The COPY messages (kept out of `on_message`'s match: every query pays for the arms
    /// there), and anything else that does not fit the state.
    #[cold]
    #[inline(never)]
    fn on_copy<'a>(
        &mut self,
        state: State,
        tag: u8,
        msg: BackendMessage<'a>,
    ) -> Result<ReplyEvent<'a>, PgError> {
        use BackendMessage as M;
        match (state, msg) {
            (State::SimpleIdle, M::CopyInResponse(body)) if self.copy => {
                self.state = State::CopyIn;
                Ok(ReplyEvent::CopyIn(body))
            }
            (State::SimpleIdle, M::CopyOutResponse(body)) if self.copy => {
                self.state = State::CopyOut;
                Ok(ReplyEvent::CopyOut(body))
            }
            (State::CopyOut, M::CopyData(body)) => Ok(ReplyEvent::CopyData(body)),
            (State::CopyOut, M::CopyDone) => {
                self.state = State::CopyOutDone;
                Ok(ReplyEvent::Nothing)
            }
            (State::CopyIn | State::CopyOutDone, M::CommandComplete(tag)) => {
                self.state = State::SimpleIdle;
                Ok(ReplyEvent::CommandComplete(tag))
            }
            _ => Err(self.unexpected(tag)),
        }
    }

    fn on_extended<'a>(
        &mut self,
        step: Ext,
        tag: u8,
        msg: BackendMessage<'a>,
    ) -> Result<ReplyEvent<'a>, PgError> {
        use BackendMessage as M;
        let event = match (step, msg) {
            (Ext::CloseComplete, M::CloseComplete)
            | (Ext::ParseComplete, M::ParseComplete)
            | (Ext::BindComplete, M::BindComplete) => ReplyEvent::Nothing,
            (Ext::ParameterDescription, M::ParameterDescription(body)) => {
                ReplyEvent::ParameterDescription(body)
            }
            (Ext::RowDescriptionOrNoData, M::RowDescription(body)) => {
                ReplyEvent::RowDescription(body)
            }
            (Ext::RowDescriptionOrNoData, M::NoData) => {
                self.no_data = true;
                ReplyEvent::NoData
            }
            (Ext::Execute, M::DataRow(body)) if !self.no_data => {
                // stay in Execute: more rows may follow
                return Ok(ReplyEvent::DataRow(body));
            }
            (Ext::Execute, M::CommandComplete(tag)) => ReplyEvent::CommandComplete(tag),
            (Ext::Execute, M::EmptyQueryResponse) => ReplyEvent::EmptyQuery,
            (Ext::Execute, M::PortalSuspended) if self.steps.is_some_and(|s| s.row_limit) => {
                ReplyEvent::PortalSuspended
            }
            _ => return Err(self.unexpected(tag)),
        };
        if step == Ext::Execute && self.repeat > 1 {
            // The next pair of a batch: its BindComplete comes next (its ParseComplete first
            // in a batch of unnamed statements).
            self.repeat -= 1;
            self.state = State::Ext(if self.parse_each {
                Ext::ParseComplete
            } else {
                Ext::BindComplete
            });
            return Ok(event);
        }
        let steps = self.steps.unwrap_or_default();
        self.state = steps.next(Some(step));
        Ok(event)
    }
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
