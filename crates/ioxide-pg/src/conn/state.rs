//! The connection's shared state and the driver that feeds backend messages to commands.
//!
//! # Who reads the socket
//! One receive is kept armed on the socket at all times. Exactly one party *drives* it — polls
//! that receive and processes what arrives:
//! * the future of the **head command** (the oldest in flight), while it is alive: it parses
//!   its own reply straight out of the receive buffer and hands rows to its consumer (a
//!   borrowed callback may run here, with no lock held), then returns — no extra task hop;
//! * otherwise the connection's **watcher task**: when nothing is in flight (so a server that
//!   closes an idle connection is noticed at once) or when the head command's future was
//!   dropped or timed out (its reply is drained and discarded, so the stream stays in sync).
//!
//! Whenever the head changes, the next driver is woken. Commands behind the head just wait.

use super::cache::StatementCache;
use super::secure::TlsParams;
use crate::listen::Notification;
use crate::proto::frame;
use crate::proto::message::{classify_async, is_async, log_notice, AsyncMessage, TxnStatus};
use crate::proto::reply::{Reply, ReplyEvent};
use crate::proto::startup::{BackendKey, ServerInfo};
use crate::tls::TlsSession;
use crate::{DbError, PgError, Target, TimeoutKind};
use bytes::BytesMut;
use ioxide::net::{Recv, Stream, TcpOptions};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Initial receive buffer capacity, and the free room a receive is always given. An idle
/// connection holds this much (its receive stays armed); the buffer grows to the largest
/// message, to the replies in flight at their typical size, and doubles whenever a receive
/// filled it (both up to [`RECV_BUF_GROW`]), so a pipelined connection reaches the size its
/// batches need within a few receives. Measured
/// (bench/FINDINGS.md, "Issue 21, items 2 and 4"): 16 KiB, with 2 × 8 KiB of send buffers,
/// made an idle pooled connection cost ~20 KiB of RSS, 1.6–1.8× a tokio-postgres client.
pub(crate) const RECV_BUF: usize = 1024;
/// Over TLS, the least room the ciphertext receive is given: a full record, unchanged (an
/// idle TLS connection keeps this much; only plaintext connections got smaller).
const TLS_RECV_BUF: usize = 16 * 1024;
/// The receive buffer doubles when a receive filled it, up to this (larger messages still get
/// room for themselves).
const RECV_BUF_GROW: usize = 64 * 1024;
/// A receive buffer grown past this is shrunk back once drained (flat memory while
/// streaming large results).
const RECV_BUF_SHRINK: usize = 256 * 1024;

/// Replies are batched (`PgOptions::reply_batch_window`) only while at least this many
/// commands are in flight on the connection. Measured (BENCHMARKS.md): with 8 connections ×
/// depth 8, batching every connection that had 2+ in flight cost 15–20 % q/s and more CPU per
/// query — the backends ran dry during the window and each refill had to wake a sleeping
/// process — while one or two connections with 32–64 in flight gain 2–3× less CPU per query at
/// the same or better q/s. A backend with 16+ queries queued does not run dry in 150 µs.
const BATCH_MIN_IN_FLIGHT: usize = 16;

/// A batched wait lasts the oldest in-flight command's age divided by this (then capped by
/// `PgOptions::reply_batch_window`), so batching adds at most a third to its latency. Measured
/// on one connection × 64 `SELECT 42` / `param` (8 interleaved rounds against tokio-postgres,
/// bench/FINDINGS.md): a third with a 150 µs cap used 7–9 % less CPU per query than a quarter
/// with 100 µs, q/s per round 1.00× (`select42`) and 0.94× (`param`) of it, inside the noise;
/// a half with 250 µs used no less CPU than a third and lost ~10 % q/s in 13 of 16 rounds.
const BATCH_AGE_DIVISOR: u32 = 3;

/// A gathering receive (TCP) waits for the bytes of this fraction of the replies in flight.
/// Half leaves the server the other half to work on while the batch is handled, so it does
/// not run dry; a third woke more often for less CPU saving (bench/FINDINGS.md, "Gathering
/// receives", with the cost on the server side).
const GATHER_DIVISOR: usize = 2;

/// Gathering holds each socket for its own batch, so it saves wake-ups only per connection;
/// the time window gathers every connection's replies in one wake-up. With more than this
/// many deep connections on a reactor the window is used instead (measured at 2, 4 and 8
/// connections: bench/FINDINGS.md, "Gathering receives").
const GATHER_MAX_CONNS: usize = 4;

/// What `PgConnection::on_notification` installs.
pub(crate) type NotificationHandler = Rc<dyn Fn(&Notification)>;
/// What `PgConnection::on_notice` installs.
pub(crate) type NoticeHandler = Rc<dyn Fn(&DbError)>;

/// One command in flight.
pub(crate) struct Cmd {
    pub(crate) seq: u64,
    pub(crate) reply: Reply,
    pub(crate) waker: Option<Waker>,
    /// Its future is gone (dropped or timed out): the reply is drained and discarded.
    pub(crate) abandoned: bool,
    /// A result decided outside the reply (a command timeout) for the future to pick up.
    pub(crate) outcome: Option<PgError>,
    pub(crate) started: Instant,
    /// In flight when our automatic CancelRequest for another command went out: a `57014`
    /// it gets may be that cancel landing late (see `CmdErrors::collateral_cancel`).
    pub(crate) exposed_to_auto_cancel: bool,
    /// In flight when the caller sent a CancelRequest itself ([`super::PgConnection::cancel`]):
    /// its `57014` is what the caller asked for, never retried.
    pub(crate) exposed_to_user_cancel: bool,
}

/// What the cancel of a timed-out command is doing.
pub(crate) struct Cancelling {
    /// The timed-out command.
    pub(crate) seq: u64,
    /// Tear the connection down if it has not resynced by then.
    pub(crate) deadline: Instant,
    /// The CancelRequest connection finished (the server acted on it, or it failed).
    pub(crate) cancel_done: bool,
}

pub(crate) struct State {
    pub(crate) out: BytesMut,
    /// Bytes ever appended to `out` / handed to the kernel.
    pub(crate) queued_total: u64,
    pub(crate) handed_total: u64,
    pub(crate) writer_waker: Option<Waker>,
    pub(crate) watcher_waker: Option<Waker>,
    /// The receive buffer when no receive is in flight and no driver holds it.
    pub(crate) rbuf: Option<Vec<u8>>,
    /// Bytes of `rbuf` already consumed. The buffer is compacted only before a receive, not
    /// after every command, so draining a pipelined batch moves no bytes.
    pub(crate) rpos: usize,
    pub(crate) recv: Option<Recv<Vec<u8>>>,
    /// Over TLS: the plaintext receive buffer while a receive of ciphertext is in flight
    /// (`rbuf` is then `None`), and the ciphertext buffer between receives.
    pub(crate) parked: Option<Vec<u8>>,
    pub(crate) cipher: Option<Vec<u8>>,
    pub(crate) queue: VecDeque<Cmd>,
    pub(crate) next_seq: u64,
    /// Why the connection ended; every failed command gets a replica of it.
    pub(crate) broken: Option<PgError>,
    pub(crate) closing: bool,
    pub(crate) txn: TxnStatus,
    pub(crate) cache: StatementCache,
    pub(crate) cancelling: Option<Cancelling>,
    pub(crate) info: ServerInfo,
    /// Woken when the connection ends (graceful close waits on this).
    pub(crate) close_waiters: Vec<Waker>,
    /// Woken when nothing is in flight any more (a returned rental waits on this).
    pub(crate) idle_waiters: Vec<Waker>,
    /// A command on a shared connection (see `Conn::shared`) left it inside a transaction:
    /// it takes no new commands until the ROLLBACK queued behind it brings it back to Idle.
    pub(crate) txn_dirty: bool,
    /// A `SET` or `LISTEN` ran through the pool's shared path on this connection and was
    /// warned about (once per connection).
    pub(crate) session_state_warned: bool,
    /// A COPY owns the send buffer (`copy` module): the COPY command's seq, and the bytes of
    /// commands queued behind it. From its Query until its CopyDone or CopyFail (copy-in), or
    /// until its CopyOutResponse (copy-out), commands queued behind it encode here and go out
    /// after it: in copy-in mode the server would take their first message as a bad COPY
    /// message, swallow it, and the replies would no longer match the queue. `None` when no
    /// COPY holds the connection.
    pub(crate) copy_hold: Option<(u64, BytesMut)>,
    /// A COPY FROM STDIN waiting for the writer to take `out` (its backpressure).
    pub(crate) copy_waker: Option<Waker>,
    /// COPY FROM STDINs of other tasks waiting for the hold to be released.
    pub(crate) copy_turn: Vec<Waker>,
    /// A COPY FROM STDIN the sweep ended for stalling (its seq and the timeout error): the
    /// watcher drains its reply at once, so its `CopyIn` may find the command gone and
    /// reports this instead.
    pub(crate) copy_outcome: Option<(u64, PgError)>,
}

/// A connection: the socket, its state, and what it needs to cancel.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    /// The TLS session, when the connection is encrypted: the writer encrypts each batch,
    /// the driver decrypts each receive into the plaintext buffer the parser reads.
    /// Boxed: a rustls session is ~1 KiB, which a plaintext connection should not carry
    /// (bench/FINDINGS.md, "Issue 21, items 2 and 4").
    pub(crate) tls: Option<Box<TlsSession>>,
    /// How to open a connection like this one (the CancelRequest goes over TLS too).
    pub(crate) tls_params: Option<TlsParams>,
    pub(crate) st: RefCell<State>,
    pub(crate) target: Target,
    /// Keepalives and the user timeout, for the CancelRequest connections too.
    pub(crate) tcp: TcpOptions,
    pub(crate) key: Option<BackendKey>,
    pub(crate) max_message: usize,
    /// Reply batching (see `PgOptions::reply_batch_window`): the window, zero when off.
    pub(crate) batch_window: Duration,
    /// The longest a receive is held for a batch of replies (`Stream::recv_gather`); zero
    /// when the socket cannot (Unix) or gathering is off.
    pub(crate) gather_limit: Duration,
    /// Bytes received and replies completed, for the size of a typical reply.
    pub(crate) replies: ReplyMeter,
    /// Counted among this thread's deep connections (see `DeepMark`).
    pub(crate) deep: DeepMark,
    pub(crate) command_timeout: Option<Duration>,
    pub(crate) cancel_grace: Duration,
    pub(crate) handles: Cell<usize>,
    /// Called once when the connection breaks (the pool replaces it at once).
    pub(crate) on_broken: RefCell<Option<Box<dyn FnOnce()>>>,
    /// Called when an abandoned command (its future dropped, timed out, or a detached
    /// Close/ROLLBACK) has been drained, or a cancel or a rollback ended: the connection has
    /// room again.
    pub(crate) on_drained: RefCell<Option<Box<dyn Fn()>>>,
    /// The pool shares this connection among callers (pipelined, autocommit): a command that
    /// leaves it inside a transaction is an error and is rolled back at once, and commands
    /// that ran inside that stranger's transaction are failed as never having taken effect.
    /// Off for a direct connection and while a guard rents it.
    pub(crate) shared: Cell<bool>,
    /// `PgConnection::on_notification` / `on_notice`: run for each NotificationResponse /
    /// NoticeResponse (cloned out of the cell first, so a handler may replace itself).
    pub(crate) on_notification: RefCell<Option<NotificationHandler>>,
    pub(crate) on_notice: RefCell<Option<NoticeHandler>>,
}

/// Where a driver's events go: the head command's consumer, or nowhere (drained replies).
pub(crate) trait Sink {
    /// One event of the head command's reply. A `Stream` error (bytes that do not decode)
    /// breaks the connection; a `User` error (a row callback's) stops delivery, the reply is
    /// drained to its ReadyForQuery, and the command fails with it.
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError>;

    /// Whether part of the command took effect for its caller: a row reached the consumer or
    /// a statement completed. Asked only when a command failed (see
    /// `CmdErrors::collateral_cancel`); a command that took effect is never run again.
    fn took_effect(&self) -> bool {
        true
    }
}

/// Why a sink refused an event.
pub(crate) enum SinkError {
    /// The server's bytes are malformed: the connection cannot be trusted any more.
    Stream(PgError),
    /// The consumer gave up (a row callback returned an error).
    User(PgError),
}

impl From<PgError> for SinkError {
    fn from(e: PgError) -> SinkError {
        SinkError::Stream(e)
    }
}

pub(crate) struct Discard;

impl Sink for Discard {
    fn event(&mut self, _: &ReplyEvent<'_>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Errors seen while driving one command's reply.
#[derive(Default)]
pub(crate) struct CmdErrors {
    pub(crate) server: Option<PgError>,
    pub(crate) sink: Option<PgError>,
    /// The command failed with `57014` (query_canceled) while our automatic CancelRequest of
    /// *another* command was in flight, in autocommit, before any statement of it completed:
    /// the cancel meant for the timed-out command landed on this one, and the server rolled
    /// it back. Safe to run again (once).
    pub(crate) collateral_cancel: bool,
    pub(crate) txn: TxnVerdict,
}

/// What a command on a shared connection did to the session's transaction state.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TxnVerdict {
    /// Autocommit as it should be (or the connection is not shared).
    #[default]
    Clean,
    /// It left the connection inside a transaction: its caller gets `TXN_NEEDS_RENT`.
    LeftOpen,
    /// It ran inside a transaction another command left open (rolled back since).
    RanInForeign,
}

impl CmdErrors {
    /// The command's outcome; the `collateral_cancel` flag stays readable.
    #[inline]
    pub(crate) fn take_result(&mut self) -> Result<(), PgError> {
        if self.txn != TxnVerdict::Clean {
            return Err(self.txn_error());
        }
        match (self.server.take(), self.sink.take()) {
            (Some(e), _) | (None, Some(e)) => Err(e),
            (None, None) => Ok(()),
        }
    }

    /// The error of a command that left a shared connection inside a transaction, or ran
    /// inside one another command left open.
    #[cold]
    fn txn_error(&mut self) -> PgError {
        let server = self.server.take();
        self.sink = None;
        match self.txn {
            TxnVerdict::LeftOpen => match server {
                Some(e) => e.with_cause(TXN_NEEDS_RENT),
                None => PgError::misuse(TXN_NEEDS_RENT),
            },
            TxnVerdict::RanInForeign | TxnVerdict::Clean => PgError::closed(
                "the command ran inside a transaction another caller left open on the pool's \
                 shared connection; that transaction was rolled back, so the command took no \
                 effect",
            )
            .never_sent(),
        }
    }
}

/// The message for a command on a shared connection that left it inside a transaction.
pub(crate) const TXN_NEEDS_RENT: &str = "the command left the pool's shared connection inside a \
     transaction; it was rolled back. Transactions and session state need an exclusive \
     connection: PgPool::rent()";

/// How driving went.
enum Driven {
    /// The head command reached ReadyForQuery.
    HeadDone,
    Pending,
    Broken,
}

impl Conn {
    /// Error for a command of this connection that finds it broken: a replica of what broke
    /// it (so a FATAL keeps its SQLSTATE, a protocol violation stays one), marked never sent
    /// when the command's bytes never reached the kernel.
    pub(crate) fn broken_error(&self, sent_from: u64) -> PgError {
        let st = self.st.borrow();
        let e = match &st.broken {
            Some(why) => why.replicate().maybe_sent(),
            None if st.closing => PgError::closed("connection closed"),
            None => PgError::closed("command no longer in flight"),
        };
        if sent_from >= st.handed_total {
            e.never_sent()
        } else {
            e
        }
    }

    /// Marks the connection broken, fails every waiter and stops its ops. Idempotent.
    pub(crate) fn fail(&self, why: &PgError) {
        let wakers = {
            let mut st = self.st.borrow_mut();
            if st.broken.is_some() {
                return;
            }
            st.broken = Some(why.replicate());
            st.cache.clear();
            // A broken connection arms no receive again: it must not keep counting as deep.
            self.deep.set(false);
            let mut wakers: Vec<Waker> = st.queue.drain(..).filter_map(|c| c.waker).collect();
            wakers.extend(st.writer_waker.take());
            wakers.extend(st.copy_waker.take());
            wakers.append(&mut st.copy_turn);
            wakers.extend(st.watcher_waker.take());
            wakers.append(&mut st.close_waiters);
            wakers.append(&mut st.idle_waiters);
            wakers
        };
        if !self.st.borrow().closing {
            tracing::debug!(error = %why, "postgres connection broken");
        }
        // Tear the socket down now, not when the last handle goes: cancel every op in flight
        // on it (they complete with ECANCELED) and shut it in both directions, so the server
        // sees the end at once even while a renter or a caller still holds this connection.
        self.stream.abort();
        wakers.into_iter().for_each(Waker::wake);
        let hook = self.on_broken.borrow_mut().take();
        if let Some(hook) = hook {
            hook();
        }
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.st.borrow().broken.is_some()
    }

    /// Queues a command's bytes (encoded by `encode`) and its reply machine. Returns its seq
    /// and the offset of its first byte.
    #[inline]
    pub(crate) fn enqueue(
        &self,
        reply: Reply,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), PgError>,
    ) -> Result<(u64, u64), PgError> {
        let st = self.st.borrow_mut();
        if st.broken.is_some() || st.closing {
            drop(st);
            return Err(self.broken_error(u64::MAX));
        }
        let mut guard = st;
        let st = &mut *guard;
        // Behind a COPY FROM STDIN: wait in the hold (a command's first byte then counts as
        // at most where it will be sent; see `copy_hold`).
        let (out, counted) = match &mut st.copy_hold {
            None => (&mut st.out, true),
            Some((_, held)) => (held, false),
        };
        let before = out.len();
        if let Err(e) = encode(out) {
            out.truncate(before);
            return Err(e.never_sent());
        }
        let added = (out.len() - before) as u64;
        let sent_from = st.queued_total;
        if counted {
            st.queued_total += added;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.queue.push_back(Cmd {
            seq,
            reply,
            waker: None,
            abandoned: false,
            outcome: None,
            started: ioxide::time::now(),
            exposed_to_auto_cancel: false,
            exposed_to_user_cancel: false,
        });
        if let Some(w) = st.writer_waker.take() {
            drop(guard);
            w.wake();
        }
        Ok((seq, sent_from))
    }

    /// COPY `seq` was just queued: commands queued from now on wait behind it (see
    /// `State::copy_hold`). The caller waited for any other COPY's hold to end.
    pub(crate) fn hold_for_copy(&self, seq: u64) {
        let mut st = self.st.borrow_mut();
        if st.copy_hold.is_none() {
            st.copy_hold = Some((seq, BytesMut::new()));
            st.copy_outcome = None;
        }
    }

    /// Appends COPY `seq`'s messages (encoded by `f`) to the send buffer — the COPY's own
    /// bytes go out past the hold — and wakes the writer. When `release` (after CopyDone or
    /// CopyFail, or a COPY TO STDOUT that started), the commands held behind it follow.
    /// Nothing happens unless `seq` holds the connection: once its hold is released (by a
    /// stall's CopyFail from the sweep, say), the COPY sends nothing more.
    pub(crate) fn copy_send(&self, seq: u64, release: bool, f: impl FnOnce(&mut BytesMut)) {
        let (w, turn) = {
            let mut st = self.st.borrow_mut();
            if st.broken.is_some() || st.copy_hold.as_ref().is_none_or(|(s, _)| *s != seq) {
                return;
            }
            let st = &mut *st;
            let before = st.out.len();
            f(&mut st.out);
            let mut turn = Vec::new();
            if release {
                if let Some((_, held)) = st.copy_hold.take() {
                    st.out.extend_from_slice(&held);
                }
                turn = std::mem::take(&mut st.copy_turn);
            }
            st.queued_total += (st.out.len() - before) as u64;
            touch(st, seq);
            (st.writer_waker.take(), turn)
        };
        if let Some(w) = w {
            w.wake();
        }
        turn.into_iter().for_each(Waker::wake);
    }

    /// Command `seq` (a COPY, a row stream) made progress (see `touch`).
    pub(crate) fn progress(&self, seq: u64) {
        touch(&mut self.st.borrow_mut(), seq);
    }

    /// Starts cancelling head command `seq`, whose future is gone (a COPY TO STDOUT dropped
    /// before its end): a CancelRequest ends it sooner than draining the rest would. New
    /// commands are held back meanwhile, as for a command timeout. True when the caller
    /// should send the CancelRequest now (`tasks::spawn_cancel`).
    pub(crate) fn cancel_head(&self, seq: u64) -> bool {
        if self.key.is_none() {
            return false;
        }
        let mut st = self.st.borrow_mut();
        if st.broken.is_some() || st.closing || st.cancelling.is_some() {
            return false;
        }
        if st.queue.front().is_none_or(|h| h.seq != seq) {
            return false;
        }
        st.cancelling = Some(Cancelling {
            seq,
            deadline: Instant::now() + self.cancel_grace,
            cancel_done: false,
        });
        for c in st.queue.iter_mut().skip(1) {
            c.exposed_to_auto_cancel = true;
        }
        true
    }

    /// Wakes whoever must drive the socket now: the head command's future, or the watcher.
    pub(crate) fn wake_driver(&self) {
        let w = {
            let mut st = self.st.borrow_mut();
            match st.queue.front_mut() {
                Some(head) if !head.abandoned => head.waker.take(),
                _ => st.watcher_waker.take(),
            }
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Polls command `seq` on behalf of its future, driving the socket when it is the head.
    pub(crate) fn poll_cmd(
        &self,
        cx: &mut Context<'_>,
        seq: u64,
        sent_from: u64,
        sink: &mut dyn Sink,
        errs: &mut CmdErrors,
    ) -> Poll<Result<(), PgError>> {
        {
            let mut st = self.st.borrow_mut();
            if st.broken.is_some() {
                drop(st);
                return Poll::Ready(Err(self.broken_error(sent_from)));
            }
            let Some(front) = st.queue.front() else {
                drop(st);
                return Poll::Ready(Err(self.broken_error(sent_from)));
            };
            let pos = seq.wrapping_sub(front.seq) as usize;
            let Some(cmd) = st.queue.get_mut(pos) else {
                drop(st);
                return Poll::Ready(Err(PgError::closed("command no longer in flight")));
            };
            if let Some(e) = cmd.outcome.take() {
                cmd.abandoned = true;
                cmd.waker = None;
                return Poll::Ready(Err(e));
            }
            if pos != 0 {
                match &mut cmd.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            cmd.waker = Some(cx.waker().clone());
        }
        // The head's consumer (a row callback) runs inside `drive` and may panic. The reply
        // is then half read and the receive buffer gone with the unwinding stack: the
        // connection is closed (never reused out of sync) before the panic goes on to the
        // caller. One catch per poll, not per row.
        let driven =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drive(cx, sink, errs)));
        let driven = match driven {
            Ok(d) => d,
            Err(panic) => {
                self.fail(&PgError::closed(
                    "a row callback panicked in the middle of a reply; the connection was \
                     closed",
                ));
                std::panic::resume_unwind(panic);
            }
        };
        match driven {
            Driven::HeadDone => {
                let r = errs.take_result();
                self.pop_head();
                Poll::Ready(r)
            }
            Driven::Pending => Poll::Pending,
            Driven::Broken => Poll::Ready(Err(self.broken_error(sent_from))),
        }
    }

    /// Tells the pool (the `on_drained` hook) that the connection has room again.
    fn room_freed(&self) {
        if let Some(hook) = self.on_drained.borrow().as_ref() {
            hook();
        }
    }

    /// Removes the finished head command and hands the socket to the next driver.
    fn pop_head(&self) {
        let room = {
            let mut st = self.st.borrow_mut();
            let done = st.queue.pop_front();
            self.replies.completed();
            let mut room = done.as_ref().is_some_and(|d| d.abandoned);
            if let (Some(done), Some(c)) = (&done, &st.cancelling) {
                if c.seq == done.seq && c.cancel_done {
                    st.cancelling = None;
                    room = true;
                }
            }
            if st.cancelling.is_none() && !st.out.is_empty() {
                if let Some(w) = st.writer_waker.take() {
                    w.wake();
                }
            }
            if st.queue.is_empty() {
                std::mem::take(&mut st.idle_waiters)
                    .into_iter()
                    .for_each(Waker::wake);
            }
            room
        };
        self.wake_driver();
        if room {
            // Nobody awaited this command, so nobody gives its capacity back, or the cancel
            // that held the connection back ended with it: tell the pool.
            self.room_freed();
        }
    }

    /// The watcher's turn: drive while nothing is in flight or the head is abandoned.
    pub(crate) fn poll_watch(&self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            {
                let mut st = self.st.borrow_mut();
                if st.broken.is_some() {
                    return Poll::Ready(());
                }
                match st.queue.front() {
                    Some(head) if !head.abandoned => {
                        st.watcher_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    _ => st.watcher_waker = Some(cx.waker().clone()),
                }
            }
            let mut errs = CmdErrors::default();
            match self.drive(cx, &mut Discard, &mut errs) {
                Driven::HeadDone => self.pop_head(),
                Driven::Pending => return Poll::Pending,
                Driven::Broken => return Poll::Ready(()),
            }
        }
    }

    /// Processes buffered messages for the head command (or, with an empty queue, messages
    /// that may arrive while idle), receiving more as needed.
    fn drive(&self, cx: &mut Context<'_>, sink: &mut dyn Sink, errs: &mut CmdErrors) -> Driven {
        loop {
            // Get the receive buffer: idle in the state, or back from a finished receive.
            let (mut buf, mut pos) = {
                let mut st = self.st.borrow_mut();
                match st.rbuf.take() {
                    Some(b) => (b, std::mem::take(&mut st.rpos)),
                    None => {
                        let Some(recv) = st.recv.as_mut() else {
                            drop(st);
                            self.fail(&PgError::protocol("receive buffer lost (driver bug)"));
                            return Driven::Broken;
                        };
                        match Pin::new(recv).poll(cx) {
                            Poll::Pending => return Driven::Pending,
                            Poll::Ready((r, b)) => {
                                st.recv = None;
                                match r {
                                    Ok(0) => {
                                        drop(st);
                                        self.fail_eof(&b);
                                        return Driven::Broken;
                                    }
                                    Ok(n) => {
                                        self.replies.received(n);
                                        match &self.tls {
                                            None => (b, 0),
                                            Some(tls) => {
                                                let mut plain =
                                                    st.parked.take().unwrap_or_default();
                                                // A close_notify needs no handling here:
                                                // the end of the socket follows it.
                                                let r = tls.decrypt(&b, &mut plain);
                                                st.cipher = Some(b);
                                                if let Err(e) = r {
                                                    drop(st);
                                                    self.fail(&e);
                                                    return Driven::Broken;
                                                }
                                                // A KeyUpdate to answer, say.
                                                if tls.wants_write() {
                                                    if let Some(w) = st.writer_waker.take() {
                                                        w.wake();
                                                    }
                                                }
                                                (plain, 0)
                                            }
                                        }
                                    }
                                    Err(e) => {
                                        drop(st);
                                        let closing = self.st.borrow().closing;
                                        let err = if closing {
                                            PgError::closed("connection closed")
                                        } else {
                                            PgError::io("receiving from the server", e)
                                        };
                                        self.fail(&err);
                                        return Driven::Broken;
                                    }
                                }
                            }
                        }
                    }
                }
            };
            // Process every complete message for the head command.
            let outcome = self.process(&buf, &mut pos, sink, errs);
            match outcome {
                Err(e) => {
                    self.fail(&e);
                    return Driven::Broken;
                }
                Ok(true) => {
                    let mut st = self.st.borrow_mut();
                    st.rbuf = Some(buf);
                    st.rpos = pos;
                    drop(st);
                    return Driven::HeadDone;
                }
                Ok(false) => {}
            }
            // Need more bytes: keep what is left, make room, and arm the receive.
            let needed = match frame::bytes_needed(&buf[pos..], self.max_message) {
                Ok(n) => n,
                Err(e) => {
                    self.fail(&e);
                    return Driven::Broken;
                }
            };
            // The last receive filled every byte of room: more is likely waiting.
            let filled = buf.len() == buf.capacity();
            compact(&mut buf, pos);
            let mut want = (buf.len() + needed).max(RECV_BUF);
            // Room for the replies in flight (at their typical size) or double after a full
            // receive, up to RECV_BUF_GROW: a busy connection takes its batch in one receive.
            let in_flight = self.st.borrow().queue.len();
            let replies = in_flight.saturating_mul(self.replies.typical_size());
            want = want.max(replies.min(RECV_BUF_GROW));
            if filled {
                want = want.max((buf.capacity() * 2).min(RECV_BUF_GROW));
            }
            if buf.capacity() < want {
                buf.reserve(want - buf.len());
            } else if buf.capacity() > RECV_BUF_SHRINK && buf.len() < RECV_BUF / 2 {
                let mut small = Vec::with_capacity(want.max(RECV_BUF));
                small.extend_from_slice(&buf);
                buf = small;
            }
            if buf.capacity() - buf.len() < RECV_BUF / 4 {
                buf.reserve(RECV_BUF);
            }
            let recv = self.arm_recv(buf);
            self.st.borrow_mut().recv = Some(recv);
        }
    }

    /// Submits the next receive. With many commands in flight their replies are queued
    /// behind each other on the server, so the receive waits for a batch of them (see
    /// `PgOptions::reply_batch_window`): over TCP, with at most `GATHER_MAX_CONNS` such
    /// connections on this reactor, until the bytes of a `GATHER_DIVISOR`th of them have
    /// arrived, held at most the gather limit; otherwise the reactor's wait lasts a third of
    /// the oldest command's age, capped by the window.
    ///
    /// Over TLS the plaintext buffer is parked and the receive takes ciphertext, as much as
    /// the plaintext buffer has room for; gathering then counts ciphertext bytes (the reply
    /// meter measured ciphertext too).
    fn arm_recv(&self, buf: Vec<u8>) -> Recv<Vec<u8>> {
        let buf = match &self.tls {
            None => buf,
            Some(_) => {
                let mut st = self.st.borrow_mut();
                let want = (buf.capacity() - buf.len()).max(TLS_RECV_BUF);
                st.parked = Some(buf);
                let mut c = st.cipher.take().unwrap_or_default();
                c.clear();
                if c.capacity() > RECV_BUF_SHRINK && want < RECV_BUF_SHRINK {
                    c = Vec::new();
                }
                c.reserve(want);
                c
            }
        };
        let (in_flight, oldest) = {
            let st = self.st.borrow();
            (st.queue.len(), st.queue.front().map(|c| c.started))
        };
        let deep = in_flight >= BATCH_MIN_IN_FLIGHT && !self.batch_window.is_zero();
        let deep_here = self.deep.set(deep);
        if !deep {
            self.replies.gathering_for(0);
            return self.stream.recv(buf);
        }
        let now = ioxide::time::now();
        if !self.gather_limit.is_zero() && deep_here <= GATHER_MAX_CONNS {
            let per_reply = self.replies.typical_size();
            if per_reply > 0 {
                // No more than this receive can take: more would only wait out the limit.
                let spare = buf.capacity() - buf.len();
                let want = (in_flight / GATHER_DIVISOR)
                    .saturating_mul(per_reply)
                    .min(spare);
                self.replies.gathering_for(want);
                return self.stream.recv_gather(buf, want, now + self.gather_limit);
            }
        }
        self.replies.gathering_for(0);
        if let Some(oldest) = oldest {
            let age = now.saturating_duration_since(oldest);
            ioxide::batch_wait((age / BATCH_AGE_DIVISOR).min(self.batch_window));
        }
        self.stream.recv(buf)
    }

    /// Feeds complete messages at `buf[*pos..]` to the head command. `Ok(true)` when the head
    /// reached ReadyForQuery, `Ok(false)` when more bytes are needed, `Err` when the stream
    /// is broken.
    fn process(
        &self,
        buf: &[u8],
        pos: &mut usize,
        sink: &mut dyn Sink,
        errs: &mut CmdErrors,
    ) -> Result<bool, PgError> {
        while let Some(f) = frame::next_frame(&buf[*pos..], self.max_message)? {
            let body = &buf[*pos + frame::HEADER_LEN..*pos + f.len];
            *pos += f.len;
            if is_async(f.tag) {
                if let Some(msg) = classify_async(f.tag, body)? {
                    self.on_async(msg)?;
                    continue;
                }
            }
            let ev = {
                let mut st = self.st.borrow_mut();
                match st.queue.front_mut() {
                    Some(head) => head.reply.on_message(f.tag, body)?,
                    None => {
                        drop(st);
                        return Err(idle_message(f.tag, body));
                    }
                }
            };
            match ev {
                ReplyEvent::ServerError(e) => {
                    let fatal = e.is_fatal();
                    let err = PgError::server(e);
                    if fatal {
                        return Err(err);
                    }
                    errs.server.get_or_insert(err);
                }
                ReplyEvent::Done { txn_status } => {
                    self.command_done(txn_status, errs, sink);
                    return Ok(true);
                }
                // An acknowledgement (ParseComplete, BindComplete, CloseComplete): no sink
                // wants it, so skip the dynamic call.
                ReplyEvent::Nothing => {}
                ev => {
                    if errs.sink.is_none() && errs.server.is_none() {
                        // A consumer's callback may panic here: see `poll_cmd`.
                        match sink.event(&ev) {
                            Ok(()) => {}
                            Err(SinkError::Stream(e)) => return Err(e),
                            Err(SinkError::User(e)) => errs.sink = Some(e),
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// The head command reached ReadyForQuery with `txn_status`: record the session's state,
    /// and on a shared connection judge what the command did to it (see `Conn::shared`).
    fn command_done(&self, txn_status: TxnStatus, errs: &mut CmdErrors, sink: &dyn Sink) {
        let mut rollback = false;
        let mut room = false;
        let (auto, user) = {
            let mut st = self.st.borrow_mut();
            st.txn = txn_status;
            if self.shared.get() {
                if txn_status != TxnStatus::Idle {
                    if st.txn_dirty {
                        errs.txn = TxnVerdict::RanInForeign;
                    } else {
                        // The first command that left the session in a transaction: out of
                        // rotation, and rolled back behind whatever is already queued.
                        st.txn_dirty = true;
                        errs.txn = TxnVerdict::LeftOpen;
                        rollback = true;
                    }
                } else if st.txn_dirty {
                    st.txn_dirty = false;
                    room = true;
                }
            }
            st.queue.front().map_or((false, false), |h| {
                (h.exposed_to_auto_cancel, h.exposed_to_user_cancel)
            })
        };
        if let Some(e) = errs.server.as_mut() {
            e.set_transaction_status(txn_status);
            errs.collateral_cancel = auto
                && !user
                && txn_status == TxnStatus::Idle
                && e.sql_state() == Some("57014")
                && !sink.took_effect();
        }
        if rollback {
            let r = self.enqueue(Reply::simple(), |out| {
                crate::proto::encode::query("ROLLBACK", out)
            });
            if let Ok((seq, _)) = r {
                super::command::abandon(self, seq);
            }
        }
        if room {
            self.room_freed();
        }
    }

    /// Asynchronous messages: notices (logged, and to `on_notice`), ParameterStatus,
    /// notifications (to `on_notification`). A handler that panics is removed and the panic
    /// logged: the message was consumed, so the stream stays in sync and the connection
    /// serves on — an idle connection's watcher must not unwind the reactor.
    fn on_async(&self, msg: AsyncMessage<'_>) -> Result<(), PgError> {
        match msg {
            AsyncMessage::Notice(n) => {
                log_notice(&n);
                let handler = self.on_notice.borrow().clone();
                if let Some(h) = handler {
                    if !run_handler(|| h(&n)) {
                        self.on_notice.borrow_mut().take();
                    }
                }
            }
            AsyncMessage::ParameterStatus { name, value } => {
                self.st.borrow_mut().info.set_parameter(name, value)?;
            }
            AsyncMessage::Notification {
                process_id,
                channel,
                payload,
            } => {
                let handler = self.on_notification.borrow().clone();
                match handler {
                    Some(h) => {
                        let n = Notification {
                            channel: channel.to_owned(),
                            payload: payload.to_owned(),
                            process_id,
                        };
                        if !run_handler(|| h(&n)) {
                            self.on_notification.borrow_mut().take();
                        }
                    }
                    None => {
                        tracing::debug!(process_id, channel, payload, "notification (no handler)")
                    }
                }
            }
        }
        Ok(())
    }

    /// The server closed the connection. Say why if it told us (a FATAL error before EOF was
    /// already turned into an error by `process`).
    fn fail_eof(&self, _buf: &[u8]) {
        let closing = self.st.borrow().closing;
        let e = if closing {
            PgError::closed("connection closed")
        } else {
            PgError::io(
                "the server closed the connection",
                std::io::ErrorKind::UnexpectedEof.into(),
            )
        };
        self.fail(&e);
    }

    /// Applies the command timeout to the oldest command (called by the per-reactor sweep).
    /// Returns true when a CancelRequest should be sent now.
    pub(crate) fn sweep(&self, now: Instant) -> bool {
        let Some(limit) = self.command_timeout else {
            return false;
        };
        let mut copy_stalled = None;
        let (wake, teardown, cancel) = {
            let mut st = self.st.borrow_mut();
            if st.broken.is_some() {
                return false;
            }
            if let Some(c) = &st.cancelling {
                let still_there = st.queue.front().is_some_and(|h| h.seq == c.seq);
                (None, still_there && now >= c.deadline, false)
            } else {
                match st.queue.front_mut() {
                    // A COPY FROM STDIN the client stopped feeding: the server waits for our
                    // data and would act on a CancelRequest only when some arrived. A
                    // CopyFail ends it at once (the next `send` reports the timeout).
                    // (Once: if the CopyFail is not answered within another timeout, the
                    // CancelRequest below follows.)
                    Some(head)
                        if now.duration_since(head.started) >= limit
                            && head.reply.in_copy_in()
                            && !head.abandoned =>
                    {
                        let wake = head.waker.take();
                        head.abandoned = true;
                        // The CopyFail's answer gets a whole timeout of its own.
                        head.started = now;
                        let seq = head.seq;
                        st.copy_outcome =
                            Some((seq, PgError::timeout(TimeoutKind::Command, limit)));
                        copy_stalled = Some(seq);
                        (wake, false, false)
                    }
                    // Nothing can cancel the query without the server's key (a pooler or
                    // proxy may not pass one on): the connection goes, at the timeout.
                    Some(head)
                        if self.key.is_none() && now.duration_since(head.started) >= limit =>
                    {
                        (None, true, false)
                    }
                    Some(head) if now.duration_since(head.started) >= limit => {
                        let seq = head.seq;
                        let wake = head.waker.take();
                        if !head.abandoned {
                            head.outcome = Some(PgError::timeout(TimeoutKind::Command, limit));
                        }
                        head.abandoned = true;
                        st.cancelling = Some(Cancelling {
                            seq,
                            deadline: now + self.cancel_grace,
                            cancel_done: false,
                        });
                        // The CancelRequest targets the backend, not the command: should the
                        // timed-out one finish first, it lands on the next one already sent.
                        for c in st.queue.iter_mut().skip(1) {
                            c.exposed_to_auto_cancel = true;
                        }
                        (wake, false, true)
                    }
                    _ => (None, false, false),
                }
            }
        };
        if teardown {
            self.fail(&PgError::timeout(TimeoutKind::Command, limit).maybe_sent());
            return false;
        }
        if let Some(seq) = copy_stalled {
            self.copy_send(seq, true, |out| {
                crate::proto::encode::copy_fail(
                    &format!("COPY FROM STDIN stalled: no data for {limit:?} (command_timeout)"),
                    out,
                )
            });
            // The head is abandoned now: the watcher drains the COPY's answer.
            self.wake_driver();
        }
        if let Some(w) = wake {
            w.wake();
        }
        if cancel {
            self.wake_driver();
        }
        cancel
    }

    /// The CancelRequest for `seq` finished.
    pub(crate) fn cancel_finished(&self, seq: u64) {
        let released = {
            let mut st = self.st.borrow_mut();
            let head_seq = st.queue.front().map(|h| h.seq);
            match &mut st.cancelling {
                Some(c) if c.seq == seq => {
                    c.cancel_done = true;
                    if head_seq != Some(seq) {
                        st.cancelling = None;
                        if !st.out.is_empty() {
                            if let Some(w) = st.writer_waker.take() {
                                w.wake();
                            }
                        }
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            }
        };
        // The connection takes commands again: hand its capacity to waiting requests now,
        // not at the pool's next sweep.
        if released {
            self.room_freed();
        }
    }
}

/// A COPY or a row stream at the head made progress: its command timeout counts from now, so
/// that it measures a stall, not the length of the whole COPY or stream (see
/// `PgOptions::command_timeout`).
fn touch(st: &mut State, seq: u64) {
    if let Some(head) = st.queue.front_mut() {
        if head.seq == seq {
            head.started = ioxide::time::now();
        }
    }
}

/// What a message arriving with no command in flight means: a FATAL error before the server
/// hangs up (restart, terminated backend, idle timeout), or nonsense.
fn idle_message(tag: u8, body: &[u8]) -> PgError {
    if tag == b'E' {
        match DbError::parse(body) {
            Ok(e) => PgError::server(Box::new(e)),
            Err(e) => e,
        }
    } else {
        PgError::protocol(format!(
            "unexpected {} while no command was in flight",
            crate::proto::message::tag_name(tag)
        ))
    }
}

/// Drops the consumed prefix of the receive buffer.
fn compact(buf: &mut Vec<u8>, pos: usize) {
    if pos == 0 {
        return;
    }
    if pos >= buf.len() {
        buf.clear();
    } else {
        buf.copy_within(pos.., 0);
        buf.truncate(buf.len() - pos);
    }
}

/// Counts a connection's received bytes and completed replies, for the size of a typical
/// reply (what a gathering receive waits for is a number of replies in bytes).
#[derive(Default)]
pub(crate) struct ReplyMeter {
    bytes: Cell<u64>,
    replies: Cell<u64>,
    /// The counters when the estimate was last updated.
    mark: Cell<(u64, u64)>,
    /// Bytes per reply, a moving average; 0 until enough replies were seen.
    typical: Cell<u64>,
    /// The bytes the receive in flight gathers for (0: not a gathering receive).
    gathering: Cell<u64>,
}

impl ReplyMeter {
    /// Replies needed before a sample counts (fewer give a noisy size).
    const SAMPLE: u64 = 8;

    /// A receive completed with `n` bytes. A gathering receive that got fewer than it
    /// waited for ended at its deadline (or on a close): the replies in flight are smaller
    /// than the estimate, so it is scaled down at once — otherwise a run of large results
    /// followed by small ones would wait out the limit batch after batch while the moving
    /// average caught up.
    pub(crate) fn received(&self, n: usize) {
        let n = n as u64;
        self.bytes.set(self.bytes.get().wrapping_add(n));
        let want = self.gathering.replace(0);
        if n < want {
            let scaled = u128::from(self.typical.get()) * u128::from(n) / u128::from(want);
            self.typical
                .set(u64::try_from(scaled).unwrap_or(u64::MAX).max(1));
        }
    }

    /// The next receive gathers for `bytes` (0: it does not gather).
    pub(crate) fn gathering_for(&self, bytes: usize) {
        self.gathering.set(bytes as u64);
    }

    pub(crate) fn completed(&self) {
        self.replies.set(self.replies.get().wrapping_add(1));
    }

    /// Bytes per reply: an average over the replies since the last sample, folded into a
    /// moving average (¾ old, ¼ new) so one odd batch does not swing it.
    pub(crate) fn typical_size(&self) -> usize {
        let (b0, r0) = self.mark.get();
        let (b, r) = (self.bytes.get(), self.replies.get());
        let n = r.wrapping_sub(r0);
        if n >= Self::SAMPLE {
            let sample = b.wrapping_sub(b0) / n;
            let old = self.typical.get();
            let new = if old == 0 {
                sample
            } else {
                old.saturating_mul(3).saturating_add(sample) / 4
            };
            self.typical.set(new.max(1));
            self.mark.set((b, r));
        }
        usize::try_from(self.typical.get()).unwrap_or(usize::MAX)
    }
}

thread_local! {
    /// Connections on this thread (so on this reactor) that had `BATCH_MIN_IN_FLIGHT` or more
    /// commands in flight when they last armed a receive.
    static DEEP: Cell<usize> = const { Cell::new(0) };
}

/// Whether a connection counts among its thread's deep connections.
#[derive(Default)]
pub(crate) struct DeepMark(Cell<bool>);

impl DeepMark {
    /// Records whether this connection is deep; returns how many are, on this thread.
    fn set(&self, deep: bool) -> usize {
        DEEP.with(|d| {
            if self.0.replace(deep) != deep {
                d.set(if deep {
                    d.get() + 1
                } else {
                    d.get().saturating_sub(1)
                });
            }
            d.get()
        })
    }
}

impl Drop for DeepMark {
    fn drop(&mut self) {
        if self.0.get() {
            let _ = DEEP.try_with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
}

/// Runs a user handler; `false` (after logging) if it panicked.
fn run_handler(f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(_) => {
            tracing::error!("a notification or notice handler panicked; it was removed");
            false
        }
    }
}
