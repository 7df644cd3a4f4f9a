//! Datagram sockets on the ring: the socket, its connect, every send and every receive are
//! io_uring ops; a receive can be bounded by a ring timer.

use crate::ring::{self, sys, Fd, IoBuf, IoBufMut};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// A UDP socket connected to one peer, driven by ring ops on the current reactor.
///
/// Connected, so the kernel delivers only the peer's datagrams, and an ICMP "port
/// unreachable" from it fails the next receive with `ConnectionRefused` instead of leaving it
/// to time out. As [`Stream`](super::Stream), buffers go by value and come back with the
/// result; dropping a future mid-flight cancels its op.
///
/// ```no_run
/// use ioxide::net::UdpSocket;
/// use std::time::Duration;
/// ioxide::block_on(async {
///     let s = UdpSocket::connect("127.0.0.1:5353".parse().unwrap()).await.unwrap();
///     let (r, _) = s.send(b"ping".to_vec()).await;
///     r.unwrap();
///     let (r, reply) = s.recv_timeout(Vec::with_capacity(512), Duration::from_secs(1)).await;
///     println!("{} bytes: {:?}", r.unwrap(), reply);
/// });
/// ```
pub struct UdpSocket {
    fd: Rc<Fd>,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("fd", &self.fd.raw())
            .finish()
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

impl UdpSocket {
    /// Opens a UDP socket (a ring op) and connects it to `peer` (a ring op; the kernel picks
    /// an ephemeral local port). Nothing is sent.
    pub async fn connect(peer: SocketAddr) -> io::Result<UdpSocket> {
        let domain = if peer.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = Rc::new(ring::socket(domain, libc::SOCK_DGRAM).await?);
        ring::connect(fd.clone(), sys::RawAddr::from_inet(&peer)).await?;
        Ok(UdpSocket { fd })
    }

    /// Sends all of `buf` as one datagram; returns the number of bytes sent.
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        ring::send(self.fd.clone(), buf, 0).await
    }

    /// Receives one datagram into the spare capacity of `buf` (after its initialised bytes),
    /// extending its length. A datagram longer than the spare capacity is cut to it (the rest
    /// is lost, as with `recv(2)`). A buffer without spare capacity is an error (`ENOBUFS`).
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        ring::recv(self.fd.clone(), buf).await
    }

    /// As [`recv`](UdpSocket::recv), bounded by `limit` (a ring timer): when it passes first
    /// the receive is cancelled and the result is an error of kind `TimedOut`. The buffer
    /// comes back either way.
    pub async fn recv_timeout<B: IoBufMut>(
        &self,
        buf: B,
        limit: Duration,
    ) -> (io::Result<usize>, B) {
        let mut op = ring::recv(self.fd.clone(), buf);
        match crate::time::timeout(limit, &mut op).await {
            Ok(out) => out,
            Err(_) => {
                // Cancel, then wait for the kernel's final word: the buffer is the op's
                // until then, and a datagram that raced the timer is kept, not lost. (The
                // ring is borrowed only inside wakers and destructors, never across this
                // await, so a busy ring is retried after a yield.)
                let raw = self.fd.raw();
                while let Err(crate::reactor::NoRing::Busy) =
                    crate::reactor::with_ring(|_, r| r.cancel_fd(raw))
                {
                    crate::future::yield_now().await;
                }
                match op.await {
                    (Ok(n), buf) => (Ok(n), buf),
                    (Err(_), buf) => (
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no datagram within {limit:?}"),
                        )),
                        buf,
                    ),
                }
            }
        }
    }

    /// Asks the kernel to cancel every op in flight on this socket (they complete with
    /// `ECANCELED`). Fire-and-forget; a no-op outside a reactor.
    pub fn cancel_pending(&self) {
        let raw = self.fd.raw();
        let _ = crate::reactor::with_ring(|_, r| r.cancel_fd(raw));
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        addr(sys::sock_addr(self.fd.raw(), true)?)
    }

    /// The local address (the ephemeral port the kernel picked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        addr(sys::sock_addr(self.fd.raw(), false)?)
    }
}

fn addr(a: sys::RawAddr) -> io::Result<SocketAddr> {
    a.to_inet()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}
