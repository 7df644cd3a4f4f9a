//! One HTTP/1.1 connection: read, parse every complete request buffered, answer them in
//! order with one send, again — until the client closes, goes idle for too long, sends
//! something we reject, or shutdown drains the reactor.
//!
//! Requests that arrive together (pipelined) are answered concurrently — their queries go to
//! the pool together — and their responses leave in request order, in one send. While they
//! run, a receive stays armed, so a client that hangs up is noticed at once: the connection
//! closes, and the batch's queries run to completion in a detached task whose answers are
//! discarded.
//!
//! Why not drop them: a dropped query releases its pool capacity at once although the
//! command is still running on its connection (the driver drains the reply later), so the
//! pool would route the next query onto that busy connection, behind — say — an abandoned
//! `/hang`, while other connections sit idle (an ioxide-pg pool issue; see the playground's
//! README). Letting the query finish keeps the pool's picture true; it costs nothing the
//! server was not doing anyway, and `PG_COMMAND_TIMEOUT_MS` still bounds it.

use crate::app::{App, ConnectionGuard};
use crate::http::{self, Parsed, Request, Response};
use crate::routes;
use ioxide::future::{select, Either};
use ioxide::net::{Recv, Shutdown, Stream};
use ioxide::time::Sleep;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Read buffer capacity per connection, in bytes; it grows only while a request needs it.
const READ_CHUNK: usize = 4 * 1024;
/// Most pipelined requests answered as one batch; the rest wait for the next round.
const MAX_BATCH: usize = 32;
/// Bytes we buffer ahead of the batch being answered before we stop reading (backpressure):
/// one maximal request.
const MAX_BUFFERED: usize = http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES;
/// A send buffer grown past this (a big `/rows` answer) is released after the send, bytes.
const OUT_SHRINK: usize = 64 * 1024;
/// How long a closing connection waits for the client to hang up, so request bytes we never
/// read do not make the kernel reset the connection before the client read our last answer.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 1024 * 1024;

/// The connection handler given to `ioxide::Server::start`.
pub async fn serve(stream: Stream) {
    let Some(app) = App::current() else {
        tracing::error!("no playground state on this reactor; dropping the connection");
        return;
    };
    let counted = app.connection_opened();
    if app.is_draining() {
        // Shutting down: no new requests.
        return;
    }
    let mut conn = Conn {
        stream,
        app,
        counted,
        buf: Some(Vec::with_capacity(READ_CHUNK)),
        recv: None,
        out: Vec::with_capacity(1024),
        partial_since: None,
        idle: IdleTimer::default(),
    };
    if conn.run().await == End::Linger {
        conn.linger().await;
    }
    let _ = conn.stream.close().await;
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Half-close and let the client read what we sent.
    Linger,
    /// Close now (the client is gone, idle, or we are shutting down).
    Close,
}

struct Conn {
    stream: Stream,
    app: Rc<App>,
    /// Counts the connection; tells it when draining begins.
    counted: ConnectionGuard,
    /// The read buffer, when no receive holds it. Starts with unparsed request bytes.
    buf: Option<Vec<u8>>,
    /// A receive in flight, holding the read buffer.
    recv: Option<Recv<Vec<u8>>>,
    /// Responses waiting to be sent (reused).
    out: Vec<u8>,
    /// When the unfinished request at the front of the buffer began arriving: a request
    /// must be complete within one idle timeout of its first byte, however slowly it drips.
    partial_since: Option<Instant>,
    /// The idle limit of the current read or send.
    idle: IdleTimer,
}

/// The connection's idle limit on one ring timeout, kept across requests: armed for the
/// deadline, and when it fires before a deadline that has moved on since, re-armed for the
/// rest. A busy keep-alive connection so pays one timeout op per idle period instead of an
/// arm and a cancel for every receive and every send.
#[derive(Default)]
struct IdleTimer {
    /// When the wait in progress gives up (`None`: no limit set yet).
    deadline: Option<Instant>,
    /// The armed timeout and when it fires.
    armed: Option<(Sleep, Instant)>,
}

impl IdleTimer {
    /// Resolves once `deadline` (as last set) has passed.
    async fn expired(&mut self) {
        loop {
            let Some(deadline) = self.deadline else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            // A timeout that fires after the deadline (it moved earlier) is replaced; one
            // that fires before it is awaited, then the deadline is checked again.
            if self.armed.as_ref().is_none_or(|(_, at)| *at > deadline) {
                self.armed = Some((ioxide::time::sleep_until(deadline), deadline));
            }
            if let Some((sleep, _)) = self.armed.as_mut() {
                sleep.await;
            }
            self.armed = None;
        }
    }
}

/// What `take_batch` found in the buffer.
#[derive(Default)]
struct Batch {
    requests: Vec<Request>,
    /// A request we refuse; answered after the batch, then the connection closes.
    reject: Option<Response>,
    /// The last request asked to close the connection.
    close_after: bool,
    /// More complete requests may be buffered (the batch hit `MAX_BATCH`).
    cut: bool,
}

impl Conn {
    async fn run(&mut self) -> End {
        loop {
            if self.recv.is_none() {
                let batch = self.take_batch();
                if !batch.requests.is_empty() || batch.reject.is_some() {
                    let no_read = batch.cut || batch.close_after || batch.reject.is_some();
                    let Some((requests, responses)) = self.answer(batch.requests, no_read).await
                    else {
                        return End::Close;
                    };
                    let closing =
                        batch.reject.is_some() || batch.close_after || self.app.is_draining();
                    let last = responses.len();
                    for (i, (request, response)) in requests.iter().zip(&responses).enumerate() {
                        tracing::debug!(method = %request.method, path = %request.path,
                            status = response.status, "answered");
                        let close = !request.keep_alive
                            || (closing && batch.reject.is_none() && i + 1 == last);
                        response.write_to(&mut self.out, request.is_head(), close);
                    }
                    if let Some(reject) = &batch.reject {
                        tracing::debug!(status = reject.status, "rejected a request");
                        reject.write_to(&mut self.out, false, true);
                    }
                    if !self.flush().await {
                        return End::Close;
                    }
                    if closing {
                        return End::Linger;
                    }
                    continue;
                }
            }
            if self.app.is_draining() || !self.read().await {
                return End::Close;
            }
        }
    }

    /// Parses every complete request at the front of the buffer (up to `MAX_BATCH`).
    fn take_batch(&mut self) -> Batch {
        let mut batch = Batch::default();
        let Some(buf) = self.buf.as_mut() else {
            return batch;
        };
        let mut off = 0;
        while off < buf.len() {
            if batch.requests.len() == MAX_BATCH {
                batch.cut = true;
                break;
            }
            match http::parse(&buf[off..]) {
                Parsed::Request { request, len } => {
                    off += len;
                    let keep_alive = request.keep_alive;
                    batch.requests.push(request);
                    if !keep_alive {
                        batch.close_after = true;
                        break;
                    }
                }
                Parsed::Partial => break,
                Parsed::Reject(r) => {
                    batch.reject = Some(r);
                    break;
                }
            }
        }
        buf.drain(..off);
        self.partial_since = if buf.is_empty() {
            None
        } else if off > 0 {
            Some(Instant::now())
        } else {
            self.partial_since.or_else(|| Some(Instant::now()))
        };
        batch
    }

    /// Answers `requests` concurrently; the responses come back in request order. Unless
    /// `no_read` (more is buffered, or the connection closes after this), a receive stays
    /// armed meanwhile. `None` when the client hung up (the batch finishes detached).
    async fn answer(
        &mut self,
        requests: Vec<Request>,
        no_read: bool,
    ) -> Option<(Vec<Request>, Vec<Response>)> {
        if requests.is_empty() {
            return Some((requests, Vec::new()));
        }
        let mut work = Box::pin(respond_all(self.app.clone(), requests));
        if !no_read {
            self.arm_recv();
        }
        let responses = loop {
            let Some(recv) = self.recv.as_mut() else {
                break work.as_mut().await;
            };
            match select(work.as_mut(), recv).await {
                Either::Left(responses) => break responses,
                Either::Right((res, buf)) => {
                    self.recv = None;
                    match res {
                        Ok(n) if n > 0 => {
                            // Keep listening for a hang-up only while no complete request
                            // waits in the buffer: one that does is answered next round.
                            let complete = !matches!(http::parse(&buf), Parsed::Partial);
                            self.buf = Some(buf);
                            if !complete {
                                self.arm_recv();
                            }
                        }
                        _ => {
                            tracing::debug!(
                                "client hung up mid-request; its queries finish detached"
                            );
                            drop(ioxide::spawn(async move {
                                let _unread = work.await;
                            }));
                            return None;
                        }
                    }
                }
            }
        };
        Some(responses)
    }

    /// Starts a receive into the buffer's spare room, unless one is armed or the buffer
    /// already holds `MAX_BUFFERED` bytes.
    fn arm_recv(&mut self) {
        if self.recv.is_some() {
            return;
        }
        let Some(mut buf) = self.buf.take() else {
            return;
        };
        if buf.len() >= MAX_BUFFERED {
            self.buf = Some(buf);
            return;
        }
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        self.recv = Some(self.stream.recv(buf));
    }

    /// Waits for more request bytes. False when the connection should close: the client
    /// hung up or failed, stayed idle past `HTTP_IDLE_TIMEOUT_MS`, or shutdown began.
    async fn read(&mut self) -> bool {
        self.arm_recv();
        let idle = self.app.config.idle_timeout;
        let Some(recv) = self.recv.as_mut() else {
            // The buffer is full without a complete request: parse would have refused it.
            return false;
        };
        self.idle.deadline = Some(self.partial_since.unwrap_or_else(ioxide::time::now) + idle);
        match select(self.counted.drained(), select(recv, self.idle.expired())).await {
            Either::Left(()) => false,
            Either::Right(Either::Right(())) => {
                tracing::debug!(?idle, "closing an idle connection");
                false
            }
            Either::Right(Either::Left((res, buf))) => {
                self.recv = None;
                match res {
                    Ok(n) if n > 0 => {
                        self.buf = Some(buf);
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// Sends whatever is queued in `out`, bounded by the idle timeout.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        self.idle.deadline = Some(ioxide::time::now() + self.app.config.idle_timeout);
        let send = pin!(self.stream.send_all(out));
        match select(send, self.idle.expired()).await {
            Either::Left((Ok(()), mut out)) => {
                out.clear();
                if out.capacity() > OUT_SHRINK {
                    out = Vec::with_capacity(1024);
                }
                self.out = out;
                true
            }
            Either::Left((Err(e), _)) => {
                tracing::debug!(error = %e, "client went away before reading its answer");
                false
            }
            Either::Right(()) => {
                tracing::debug!("client did not read its answer in time");
                false
            }
        }
    }

    /// Half-closes, then discards what the client still sends until it hangs up (bounded).
    async fn linger(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write).await;
        let deadline = Instant::now() + LINGER;
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            if self.recv.is_none() {
                if let Some(buf) = self.buf.as_mut() {
                    buf.clear();
                }
                self.arm_recv();
            }
            let Some(recv) = self.recv.as_mut() else {
                return;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match ioxide::time::timeout(left, recv).await {
                Ok((Ok(n), buf)) if n > 0 => {
                    self.recv = None;
                    self.buf = Some(buf);
                    discarded += n;
                }
                _ => return,
            }
        }
    }
}

/// Runs every request's handler concurrently; the responses come back in request order.
async fn respond_all(app: Rc<App>, requests: Vec<Request>) -> (Vec<Request>, Vec<Response>) {
    let responses = answer_each(&app, &requests).await;
    (requests, responses)
}

async fn answer_each(app: &App, requests: &[Request]) -> Vec<Response> {
    if let [one] = requests {
        // The usual case (a client that waits for each answer): no boxing, no slots.
        return vec![routes::handle(app, one).await];
    }
    let mut running: Vec<Pin<Box<dyn Future<Output = Response> + '_>>> = requests
        .iter()
        .map(|r| Box::pin(routes::handle(app, r)) as Pin<Box<dyn Future<Output = Response>>>)
        .collect();
    let mut done: Vec<Option<Response>> = requests.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in running.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => *slot = Some(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}
