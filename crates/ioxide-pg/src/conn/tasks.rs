//! The connection's two tasks (writer, watcher), the CancelRequest, and the per-reactor
//! sweep that applies command timeouts.

use super::secure::{self, TlsParams};
use super::state::Conn;
use crate::proto::startup::BackendKey;
use crate::{PgError, Target};
use bytes::BytesMut;
use ioxide::net::{Shutdown, Stream, TcpOptions};
use ioxide::Reactor;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

/// A send buffer grown past this is released after the batch went out.
const SEND_BUF_SHRINK: usize = 1 << 20;
/// Initial capacity of the connection's two send buffers (commands are appended to one while
/// the other is being sent; they swap). They grow to the largest batch, so an idle
/// connection holds little (bench/FINDINGS.md, "Issue 21, items 2 and 4").
pub(crate) const SEND_BUF: usize = 256;

/// Sends whatever commands have queued, one send per loop turn: it waits for the end of the
/// turn ([`ioxide::end_of_turn`]), so every command issued in the turn leaves in the same send.
pub(crate) async fn writer(conn: Rc<Conn>) {
    let mut wbuf = BytesMut::with_capacity(SEND_BUF);
    // Over TLS: the records of a batch.
    let mut cbuf: Vec<u8> = Vec::new();
    loop {
        let go = std::future::poll_fn(|cx| {
            let mut st = conn.st.borrow_mut();
            if st.broken.is_some() {
                return Poll::Ready(None);
            }
            // While a cancel is pending, hold new commands back: a late CancelRequest must
            // not hit a command sent after the one it was meant for.
            let held = st.cancelling.is_some() && !st.closing;
            let tls_due = conn.tls.as_ref().is_some_and(|t| t.wants_write());
            if (st.out.is_empty() && !tls_due) || held {
                if st.closing && st.out.is_empty() {
                    return Poll::Ready(Some(false));
                }
                st.writer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Some(true))
        })
        .await;
        match go {
            None => return,
            Some(false) => {
                // Terminate went out: shut the socket so the watcher sees the end at once,
                // even from a server that does not close its side.
                let _ = conn.stream.shutdown(Shutdown::Both).await;
                return;
            }
            Some(true) => {}
        }
        // Let every task that is ready in this loop turn queue its commands first (the heads
        // parsing the rest of a receive buffer issue their next queries), then send them all
        // at once: measured +33–45 % q/s at 8 connections × 64 in flight.
        ioxide::end_of_turn().await;
        let copy_waker = {
            let mut st = conn.st.borrow_mut();
            if st.broken.is_some() {
                return;
            }
            let tls_due = conn.tls.as_ref().is_some_and(|t| t.wants_write());
            if (st.out.is_empty() && !tls_due) || (st.cancelling.is_some() && !st.closing) {
                continue;
            }
            std::mem::swap(&mut st.out, &mut wbuf);
            st.handed_total = st.queued_total;
            st.copy_waker.take()
        };
        // A COPY FROM STDIN waiting for room in the send buffer has it now.
        if let Some(w) = copy_waker {
            w.wake();
        }
        let r = match &conn.tls {
            None => {
                let (r, b) = conn.stream.send_all(wbuf).await;
                wbuf = b;
                r
            }
            Some(tls) => {
                // Encrypt the batch into records (after any TLS message of the session's
                // own, such as a KeyUpdate answer) and send those.
                cbuf.clear();
                if let Err(e) = tls.encrypt(&wbuf, &mut cbuf) {
                    conn.fail(&e);
                    return;
                }
                let (r, b) = conn.stream.send_all(std::mem::take(&mut cbuf)).await;
                cbuf = b;
                if cbuf.capacity() > SEND_BUF_SHRINK {
                    cbuf = Vec::new();
                }
                r
            }
        };
        wbuf.clear();
        if wbuf.capacity() > SEND_BUF_SHRINK {
            wbuf = BytesMut::with_capacity(SEND_BUF);
        }
        if let Err(e) = r {
            conn.fail(&PgError::io("sending to the server", e));
            return;
        }
    }
}

/// Drives the socket whenever no live command does (see `state` module docs).
pub(crate) async fn watcher(conn: Rc<Conn>) {
    std::future::poll_fn(|cx| conn.poll_watch(cx)).await;
}

/// Opens a stream to the server (each TCP address in turn); a TCP socket gets `tcp`
/// (keepalives, user timeout) before its connect, a Unix socket ignores it.
pub(crate) async fn connect_target(target: &Target, tcp: &TcpOptions) -> Result<Stream, PgError> {
    match target {
        Target::Unix(path) => Stream::connect_unix(path)
            .await
            .map_err(|e| PgError::io(format!("connecting to {}", path.display()), e)),
        Target::Tcp(addrs) => {
            let mut last = None;
            for addr in addrs {
                match Stream::connect_with(*addr, tcp).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(PgError::io(format!("connecting to {addr}"), e)),
                }
            }
            Err(last.unwrap_or_else(|| PgError::config("host", None, "no address to connect to")))
        }
    }
}

/// How long a CancelRequest connection may take before we stop waiting for it.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// Sends a CancelRequest on a fresh connection, over TLS when the session is (as libpq), and
/// waits until the server closes it (it does so after acting on the request).
pub(crate) async fn send_cancel(
    target: &Target,
    tcp: &TcpOptions,
    tls: Option<&TlsParams>,
    key: BackendKey,
) -> Result<(), PgError> {
    let work = async {
        let s = connect_target(target, tcp).await?;
        let session = match tls {
            Some(p) => secure::start(
                &s,
                p,
                secure::Plan::Must,
                crate::SslMode::Require,
                &Default::default(),
            )
            .await?
            .map(|(session, _)| session),
            None => None,
        };
        let mut pipe = secure::Pipe::new(&s, session.as_ref());
        pipe.send(&key.cancel_request(), "a CancelRequest").await?;
        let mut buf = Vec::with_capacity(64);
        let _ = pipe.recv(&mut buf, "the end of the CancelRequest").await;
        Ok(())
    };
    match ioxide::time::timeout(CANCEL_WAIT, work).await {
        Ok(r) => r,
        Err(_) => Err(PgError::timeout(crate::TimeoutKind::Connect, CANCEL_WAIT)),
    }
}

/// How often the sweep looks for commands past their timeout.
pub(crate) const SWEEP_PERIOD: Duration = Duration::from_millis(100);

/// Per-reactor registry of connections with a command timeout, swept by one ring ticker.
#[derive(Default)]
pub(crate) struct Sweeper {
    conns: RefCell<Vec<Weak<Conn>>>,
}

impl Sweeper {
    /// Registers a connection for command-timeout sweeps on the current reactor.
    pub(crate) fn register(conn: &Rc<Conn>) {
        let Some(reactor) = Reactor::try_current() else {
            return;
        };
        let sweeper = match reactor.try_service::<Sweeper>() {
            Some(s) => s,
            None => {
                let s = reactor.add_service(Sweeper::default());
                let weak = Rc::downgrade(&s);
                drop(ioxide::time::every(SWEEP_PERIOD, move || {
                    match weak.upgrade() {
                        Some(s) => {
                            s.sweep();
                            true
                        }
                        None => false,
                    }
                }));
                s
            }
        };
        sweeper.conns.borrow_mut().push(Rc::downgrade(conn));
    }

    fn sweep(&self) {
        let now = Instant::now();
        let live: Vec<Rc<Conn>> = {
            let mut conns = self.conns.borrow_mut();
            conns.retain(|w| w.upgrade().is_some_and(|c| !c.is_broken()));
            conns.iter().filter_map(Weak::upgrade).collect()
        };
        for conn in live {
            if conn.sweep(now) {
                spawn_cancel(&conn);
            }
        }
    }
}

/// Sends the CancelRequest for the connection's timed-out (or dropped, `Conn::cancel_head`)
/// command in the background.
pub(crate) fn spawn_cancel(conn: &Rc<Conn>) {
    let Some(key) = conn.key else {
        return;
    };
    let seq = conn.st.borrow().cancelling.as_ref().map(|c| c.seq);
    let Some(seq) = seq else { return };
    let tls = conn.tls_params.clone();
    let target = conn.target.clone();
    let tcp = conn.tcp;
    let conn = Rc::downgrade(conn);
    drop(ioxide::spawn(async move {
        if let Err(e) = send_cancel(&target, &tcp, tls.as_ref(), key).await {
            tracing::debug!(error = %e, "CancelRequest failed");
        }
        if let Some(c) = conn.upgrade() {
            c.cancel_finished(seq);
        }
    }));
}
