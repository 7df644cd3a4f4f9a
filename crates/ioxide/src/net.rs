//! Sockets on the ring: connect, send, recv, shutdown, close and multishot accept are all
//! io_uring ops, for TCP and Unix streams and for UDP ([`UdpSocket`]). Only listener setup at
//! server start (bind/listen) and socket options are plain syscalls; none of them blocks.

use crate::ring::{self, sys, Fd, IoBuf, IoBufMut, MultiOp, RecvBuf};
use std::cell::{Cell, OnceCell};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::{Rc, Weak};
use std::time::Instant;

pub use std::net::Shutdown;
pub use tcp_options::{TcpOptions, MAX_KEEPALIVE_COUNT, MAX_KEEPALIVE_SECS};
pub use udp::UdpSocket;

mod tcp_options;
mod udp;

/// A connected stream socket (TCP or Unix), driven by ring ops on the current reactor.
///
/// Every method that touches the network takes buffers by value and gives them back with the
/// result (`(io::Result<_>, B)`), because the kernel owns a buffer while the op is in flight.
/// Dropping a future mid-flight cancels the op safely.
pub struct Stream {
    fd: Rc<Fd>,
    /// Receive-threshold state, made on the first [`Stream::recv_gather`].
    gather: OnceCell<Rc<Gather>>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("fd", &self.fd.raw())
            .finish()
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

impl Stream {
    /// Opens a TCP connection (socket and connect are ring ops) with `TCP_NODELAY` set.
    pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
        Stream::connect_with(addr, &TcpOptions::new()).await
    }

    /// As [`Stream::connect`], with `options` (keepalives, user timeout) set on the socket
    /// before it connects. A value the kernel refuses (out of range) fails the connect.
    pub async fn connect_with(addr: SocketAddr, options: &TcpOptions) -> io::Result<Stream> {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = Rc::new(ring::socket(domain, libc::SOCK_STREAM).await?);
        sys::set_int_opt(fd.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        options.apply(fd.raw())?;
        ring::connect(fd.clone(), sys::RawAddr::from_inet(&addr)).await?;
        Ok(Stream::new(fd))
    }

    /// Opens a Unix-domain stream connection to the socket at `path`.
    pub async fn connect_unix(path: impl AsRef<Path>) -> io::Result<Stream> {
        let addr = sys::RawAddr::from_unix(path.as_ref())?;
        let fd = Rc::new(ring::socket(libc::AF_UNIX, libc::SOCK_STREAM).await?);
        ring::connect(fd.clone(), addr).await?;
        Ok(Stream::new(fd))
    }

    pub(crate) fn from_fd(fd: Fd) -> Stream {
        Stream::new(Rc::new(fd))
    }

    fn new(fd: Rc<Fd>) -> Stream {
        Stream {
            fd,
            gather: OnceCell::new(),
        }
    }

    /// One send of `buf[off..]`; returns how many bytes the kernel took (may be fewer).
    pub async fn send<B: IoBuf>(&self, buf: B, off: usize) -> (io::Result<usize>, B) {
        ring::send(self.fd.clone(), buf, off).await
    }

    /// Sends all of `buf`, resubmitting after short writes.
    pub async fn send_all<B: IoBuf>(&self, mut buf: B) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut off = 0;
        while off < total {
            let (r, b) = ring::send(self.fd.clone(), buf, off).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Receives into the spare capacity of `buf` (after its initialised bytes), extending
    /// its length. `Ok(0)` means the peer closed. A buffer without spare capacity is an error
    /// (`ENOBUFS`), never a silent zero-length read.
    ///
    /// The op is submitted when this is called; the returned [`Recv`] is a nameable, `Unpin`
    /// future, so a connection can keep one receive armed in its own state.
    pub fn recv<B: IoBufMut>(&self, buf: B) -> Recv<B> {
        self.reset_gather();
        Recv {
            op: ring::recv(self.fd.clone(), buf),
            gather: None,
        }
    }

    /// Whether [`recv_gather`](Stream::recv_gather) can hold receives back on this socket:
    /// TCP (IPv4 or IPv6) only. Unix-domain sockets signal readiness for every queued
    /// message whatever the threshold, so on them it is a plain receive.
    pub fn can_gather(&self) -> bool {
        self.gather().max > 1
    }

    /// A receive that the kernel holds back until at least `min_bytes` are queued on the
    /// socket, or until `hold_until` passes; then it completes like [`recv`](Stream::recv)
    /// with everything that has arrived. End of stream, errors and resets complete it at once.
    ///
    /// This turns "wake me for every reply" into "wake me for this many": a client that
    /// knows how many replies it has in flight, and roughly how big they are, gets them in
    /// one wake-up and one receive instead of a wake-up per reply, with no timer to guess the
    /// server's pace. It is `SO_RCVLOWAT`: TCP normally signals readability only once the
    /// threshold is met (memory pressure or a nearly closed window signal earlier, and the
    /// receive then takes what is there), so the ring's poll for this receive does not fire
    /// before; the receive is submitted with `POLL_FIRST`, so it does not take a partial read
    /// on submission either. When `hold_until` passes first, the reactor lowers the threshold
    /// to one byte (which makes the kernel signal at once if anything is queued). A hold can
    /// outlast `hold_until` only by a [`batch_wait`](crate::batch_wait) window another task
    /// asked for in the same turn. The threshold is capped at an eighth of the socket's
    /// receive buffer (and 64 KiB), below what would make the kernel grow the buffer and
    /// clamp the receive window, and it is set only when it changes by more than a quarter:
    /// one `setsockopt` per change, none in a steady pipeline. Only one receive should be in
    /// flight on a socket at a time; a later plain `recv` or `recv_stream` resets the
    /// threshold. On sockets that cannot gather ([`can_gather`](Stream::can_gather)), or after
    /// the kernel refused the option, this is `recv`.
    pub fn recv_gather<B: IoBufMut>(
        &self,
        buf: B,
        min_bytes: usize,
        hold_until: Instant,
    ) -> Recv<B> {
        let g = self.gather();
        if g.max <= 1 || g.failed.get() || min_bytes <= 1 {
            return self.recv(buf);
        }
        let want = u32::try_from(min_bytes).unwrap_or(u32::MAX).min(g.max);
        let cur = g.lowat.get();
        if cur <= 1 || want < cur - cur / 4 || want > cur + cur / 4 {
            g.set_lowat(want);
        }
        // Only the newest gathering receive owns the hold: an older one dropped later must
        // not end it.
        let generation = g.generation.get().wrapping_add(1);
        g.generation.set(generation);
        if g.lowat.get() > 1 {
            g.deadline.set(Some(hold_until));
            crate::reactor::hold_receive(g);
        }
        Recv {
            op: ring::recv(self.fd.clone(), buf),
            gather: Some((g.clone(), generation)),
        }
    }

    /// A threshold left by an earlier gathering receive must not hold a plain one.
    fn reset_gather(&self) {
        if let Some(g) = self.gather.get() {
            g.expire();
        }
    }

    fn gather(&self) -> &Rc<Gather> {
        self.gather.get_or_init(|| {
            let raw = self.fd.raw();
            let tcp = matches!(
                sys::get_int_opt(raw, libc::SOL_SOCKET, libc::SO_DOMAIN),
                Ok(libc::AF_INET | libc::AF_INET6)
            );
            let max = match sys::get_int_opt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF) {
                Ok(rcvbuf) if tcp => u32::try_from(rcvbuf / 8).unwrap_or(0).min(GATHER_MAX),
                _ => 0,
            };
            Rc::new(Gather {
                fd: Rc::downgrade(&self.fd),
                lowat: Cell::new(1),
                max,
                deadline: Cell::new(None),
                listed: Cell::new(false),
                generation: Cell::new(0),
                failed: Cell::new(false),
            })
        })
    }

    /// A stream of received chunks from one multishot receive with provided buffers: no SQE
    /// and no poll re-arm per chunk (see [`RecvStream`]). Only one receive (of either kind)
    /// should be in flight on a socket at a time, or the data interleaves unpredictably.
    pub fn recv_stream(&self) -> RecvStream {
        self.reset_gather();
        RecvStream {
            fd: self.fd.clone(),
            op: None,
            starved: false,
        }
    }

    /// Shuts down one or both directions. Pending receives complete (with 0) once the read
    /// side is shut.
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        ring::shutdown(self.fd.clone(), how).await
    }

    /// Asks the kernel to cancel every op in flight on this socket (they complete with
    /// `ECANCELED`). Fire-and-forget.
    pub fn cancel_pending(&self) {
        let raw = self.fd.raw();
        let _ = crate::reactor::with_ring(|_, r| r.cancel_fd(raw));
    }

    /// Tears the connection down now, without waiting: cancels every op in flight on the
    /// socket and shuts it down in both directions, so the peer sees the end at once and any
    /// op still pending completes (a receive with 0, a send with `EPIPE`) even while this
    /// `Stream` stays alive. The fd itself is closed when the `Stream` is dropped.
    /// Fire-and-forget; a no-op outside a reactor.
    pub fn abort(&self) {
        let raw = self.fd.raw();
        if crate::reactor::with_ring(|_, r| r.cancel_fd(raw)).is_err() {
            return;
        }
        // Queued after the cancel (which is issued first, so it cannot cancel this). The op
        // holds the fd: the kernel runs a shutdown on a worker thread, and by then the number
        // alone could name another socket.
        ring::shutdown(self.fd.clone(), libc::SHUT_RDWR).detach();
    }

    /// Closes the socket with a ring Close op once no op holds it any more. If ops are still
    /// in flight, the close happens when the last one completes. Outside a reactor it is a
    /// plain `close(2)`.
    pub async fn close(self) -> io::Result<()> {
        match Rc::try_unwrap(self.fd) {
            Ok(fd) => ring::close(fd).await,
            Err(_) => Ok(()),
        }
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        sys::set_int_opt(
            self.fd.raw(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            i32::from(on),
        )
    }

    /// Whether `TCP_NODELAY` is set.
    pub fn nodelay(&self) -> io::Result<bool> {
        sys::get_int_opt(self.fd.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY).map(|v| v != 0)
    }

    /// The socket's keepalive and user-timeout settings as the kernel has them (TCP only; an
    /// error on a Unix socket): the keepalive timers are the effective values, the kernel's
    /// defaults included, even when keepalives are off.
    pub fn tcp_options(&self) -> io::Result<TcpOptions> {
        TcpOptions::read(self.fd.raw())
    }

    /// The remote address (TCP only).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        inet(sys::sock_addr(self.fd.raw(), true)?)
    }

    /// The local address (TCP only).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        inet(sys::sock_addr(self.fd.raw(), false)?)
    }
}

fn inet(addr: sys::RawAddr) -> io::Result<SocketAddr> {
    addr.to_inet()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// A receive in flight (see [`Stream::recv`]). Dropping it cancels the op; the buffer stays
/// with the ring until the kernel is done with it.
pub struct Recv<B: IoBufMut> {
    op: ring::Op<ring::RecvOp<B>>,
    /// For a gathering receive: its hold deadline ends when it completes or is dropped.
    gather: Option<(Rc<Gather>, u64)>,
}

impl<B: IoBufMut> Recv<B> {
    /// This receive is over (completed or dropped): so is its hold.
    fn end_hold(&mut self) {
        if let Some((g, generation)) = self.gather.take() {
            g.release(generation);
        }
    }
}

impl<B: IoBufMut> Drop for Recv<B> {
    fn drop(&mut self) {
        self.end_hold();
    }
}

impl<B: IoBufMut> fmt::Debug for Recv<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recv")
    }
}

impl<B: IoBufMut> std::future::Future for Recv<B> {
    type Output = (io::Result<usize>, B);
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let out = std::pin::Pin::new(&mut self.op).poll(cx);
        if out.is_ready() {
            self.end_hold();
        }
        out
    }
}

/// The largest receive threshold [`Stream::recv_gather`] sets.
const GATHER_MAX: u32 = 64 * 1024;

/// A socket's receive threshold (`SO_RCVLOWAT`) and how long it may hold a receive.
pub(crate) struct Gather {
    /// Weak: a pending hold must not keep the socket open (or stop `Stream::close`).
    fd: Weak<Fd>,
    /// The threshold set on the socket; 1 is the kernel's default (no holding).
    lowat: Cell<u32>,
    /// The largest threshold this socket takes; 0 when it cannot gather (not TCP).
    max: u32,
    /// When the reactor lowers the threshold again, if the receive has not completed.
    deadline: Cell<Option<Instant>>,
    /// Listed in the reactor's holds (see `reactor::hold_receive`).
    listed: Cell<bool>,
    /// Counts gathering receives; the newest one owns the deadline.
    generation: Cell<u64>,
    /// A `setsockopt` failed: the kernel's threshold is unknown, so this socket no longer
    /// gathers (and every plain receive tries again to reset it).
    failed: Cell<bool>,
}

impl Gather {
    fn set_lowat(&self, bytes: u32) {
        if self.lowat.get() == bytes {
            return;
        }
        let Some(fd) = self.fd.upgrade() else {
            return;
        };
        let value = i32::try_from(bytes).unwrap_or(i32::MAX);
        match sys::set_int_opt(fd.raw(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, value) {
            Ok(()) => self.lowat.set(bytes),
            // The kernel kept its old value (a security hook, say): stop gathering on this
            // socket and leave the cached value as it was, so the reset is tried again.
            Err(_) => self.failed.set(true),
        }
    }

    /// A gathering receive completed or was dropped: its hold (if still the newest) is over.
    fn release(&self, generation: u64) {
        if self.generation.get() == generation {
            self.deadline.set(None);
        }
    }

    /// The pending hold's deadline, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// The hold is over: lower the threshold so whatever has arrived completes the receive
    /// (the kernel re-checks readiness when the threshold changes).
    pub(crate) fn expire(&self) {
        self.deadline.set(None);
        self.set_lowat(1);
    }

    /// Whether the reactor lists this socket among its holds.
    pub(crate) fn listed(&self) -> bool {
        self.listed.get()
    }

    pub(crate) fn set_listed(&self, listed: bool) {
        self.listed.set(listed);
    }
}

/// Received data as a stream of chunks, from one multishot receive that stays armed on the
/// socket and fills buffers from the reactor's provided-buffer ring (5.19+; 6.0+ for
/// multishot). Each chunk is a [`RecvBuf`] that derefs to the bytes and hands its buffer back
/// when dropped — so drop chunks promptly: a reactor has 256 buffers of 4 KiB for all its
/// streams. An armed stream keeps filling buffers while its consumer is busy elsewhere, up to
/// 32 queued chunks: then the ring stops its receive (so one lagging stream cannot take the
/// buffers every other stream needs) and [`next`](RecvStream::next) re-arms it once the queue
/// is drained. When none is left, the kernel ends the receive (`ENOBUFS`) and [`next`](RecvStream::next)
/// waits for a buffer to be given back before re-arming (a consumer that holds every buffer
/// itself and awaits `next` waits forever). A cancel of the socket's ops is returned as an
/// error. Dropping the stream cancels the receive; chunks it had queued go back to the ring.
pub struct RecvStream {
    fd: Rc<Fd>,
    op: Option<MultiOp<Rc<Fd>>>,
    /// The last arm ended for lack of buffers: let the consumer run before re-arming.
    starved: bool,
}

impl fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvStream")
            .field("fd", &self.fd.raw())
            .finish()
    }
}

impl RecvStream {
    /// The next chunk; `Ok(None)` once the peer closed its side.
    pub async fn next(&mut self) -> io::Result<Option<RecvBuf>> {
        loop {
            if self.op.as_ref().is_none_or(MultiOp::ended) {
                if std::mem::take(&mut self.starved) {
                    // Every provided buffer is out: wait until one comes back, not in a loop.
                    std::future::poll_fn(|cx| {
                        match crate::reactor::with_ring(|_, ring| {
                            ring.poll_buffer_available(cx.waker())
                        }) {
                            Ok(true) | Err(crate::reactor::NoRing::Absent) => {
                                std::task::Poll::Ready(())
                            }
                            Ok(false) => std::task::Poll::Pending,
                            Err(crate::reactor::NoRing::Busy) => {
                                crate::reactor::defer_wake(cx.waker());
                                std::task::Poll::Pending
                            }
                        }
                    })
                    .await;
                }
                self.op = Some(ring::recv_multi(self.fd.clone())?);
            }
            // The provided buffer a completion names is taken in the same borrow of the ring
            // that pops the completion, so it cannot be lost between the two.
            let (res, _flags, buf) = match self.op.as_mut() {
                Some(op) => {
                    std::future::poll_fn(|cx| {
                        op.poll_next_with(cx, |ring, (res, flags)| {
                            let (id, ring) = ring?;
                            if res > 0 {
                                ring.take_buffer(id, flags, res as usize)
                            } else {
                                // A completion without data should not carry a buffer; give
                                // it back if it does.
                                ring.drop_cqe_buffer(flags);
                                None
                            }
                        })
                    })
                    .await
                }
                None => continue,
            };
            if res > 0 {
                match buf {
                    Some(b) => return Ok(Some(b)),
                    None => {
                        return Err(io::Error::other(
                            "multishot receive completed without a usable provided buffer",
                        ))
                    }
                }
            }
            if res == 0 {
                return Ok(None);
            }
            match -res {
                libc::ENOBUFS => self.starved = true,
                // Interrupted: re-arm. A cancel (`ECANCELED`) is reported like any error.
                libc::EINTR | libc::EAGAIN => {}
                errno => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }
}

/// A TCP listener whose connections arrive through one multishot accept op.
pub struct TcpListener {
    fd: Rc<Fd>,
    accept: Option<MultiOp<Rc<Fd>>>,
    /// `TCP_NODELAY` is set on the listener, so accepted sockets inherit it (Linux copies the
    /// listener's TCP state into each child) and need no `setsockopt` each.
    nodelay_inherited: bool,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("fd", &self.fd.raw())
            .finish()
    }
}

/// Accept backlog for listeners.
const BACKLOG: i32 = 1024;

impl TcpListener {
    /// Binds and listens (plain syscalls: this happens once, before serving). With
    /// `reuse_port`, several reactors may bind the same port and the kernel spreads incoming
    /// connections over them.
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let fd = Self::bind_raw(addr, reuse_port)?;
        Ok(Self::from_fd(fd))
    }

    pub(crate) fn bind_raw(addr: SocketAddr, reuse_port: bool) -> io::Result<Fd> {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = Fd::from_raw(sys::socket(domain, libc::SOCK_STREAM)?);
        sys::set_int_opt(fd.raw(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if reuse_port {
            sys::set_int_opt(fd.raw(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        sys::bind(fd.raw(), &sys::RawAddr::from_inet(&addr))?;
        sys::listen(fd.raw(), BACKLOG)?;
        Ok(fd)
    }

    pub(crate) fn from_fd(fd: Fd) -> TcpListener {
        // Best effort: if the listener refuses, each accepted socket gets the option itself.
        let nodelay_inherited =
            sys::set_int_opt(fd.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).is_ok();
        TcpListener {
            fd: Rc::new(fd),
            accept: None,
            nodelay_inherited,
        }
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        inet(sys::sock_addr(self.fd.raw(), false)?)
    }

    /// The next connection, with `TCP_NODELAY` set (inherited from the listener, so no
    /// `setsockopt` per connection). The multishot accept op is armed on first
    /// use and re-armed whenever the kernel ends it; dropping the listener cancels it, and fds
    /// of connections accepted after that are closed.
    pub async fn accept(&mut self) -> io::Result<Stream> {
        loop {
            if self.accept.as_ref().is_none_or(MultiOp::ended) {
                self.accept = Some(ring::accept_multi(self.fd.clone()));
            }
            let (res, _flags) = match self.accept.as_mut() {
                Some(op) => std::future::poll_fn(|cx| op.poll_next(cx)).await,
                None => continue,
            };
            if res >= 0 {
                let stream = Stream::from_fd(Fd::from_raw(res));
                if !self.nodelay_inherited {
                    // Best effort: a socket that fails this is still usable.
                    let _ = stream.set_nodelay(true);
                }
                return Ok(stream);
            }
            match -res {
                // Transient: the op ended (or a connection was aborted); re-arm and go on.
                libc::ECANCELED | libc::ECONNABORTED | libc::EINTR | libc::EAGAIN => continue,
                errno => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }
}
