//! A loopback TCP proxy that can take its port down and bring it back: a flapping server.
//!
//! While up it listens on a fixed loopback port and relays every accepted connection to the
//! upstream server (two pump threads per connection). [`FlakyProxy::down`] closes the
//! listener — connects are refused, as with a stopped server — and cuts every relayed
//! connection in both directions, as a crash would; [`FlakyProxy::up`] listens on the same
//! port again. The port never changes, so a client keeps one address throughout.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the acceptor looks for a connection or a stop request.
const ACCEPT_POLL: Duration = Duration::from_millis(1);
/// How long a relay may take to reach the upstream server. The acceptor thread makes that
/// connect, so [`FlakyProxy::down`] can wait this long for it (never with a live loopback
/// server, which answers at once).
const UPSTREAM_CONNECT: Duration = Duration::from_secs(1);

/// A TCP proxy in front of one upstream server whose port can go down and come back.
///
/// ```no_run
/// let cluster = testkit::shared_cluster();
/// let mut proxy = testkit::FlakyProxy::start(([127, 0, 0, 1], cluster.port()).into())?;
/// // connect clients to 127.0.0.1:proxy.port() …
/// proxy.down(); // refused, and every relayed connection is cut
/// proxy.up()?; // serving again on the same port
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FlakyProxy {
    ip: IpAddr,
    port: u16,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

#[derive(Default)]
struct Shared {
    /// Connections accepted while up (each relayed, or dropped if upstream was unreachable).
    accepted: AtomicUsize,
    /// Both ends of every relayed connection still open, to cut them on `down`.
    relays: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    next_id: AtomicUsize,
}

impl std::fmt::Debug for FlakyProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlakyProxy")
            .field("port", &self.port)
            .field("upstream", &self.upstream)
            .field("up", &self.is_up())
            .field("accepted", &self.accepted())
            .field("live", &self.live())
            .finish()
    }
}

impl FlakyProxy {
    /// Starts listening (up) on a free loopback port, relaying to `upstream`.
    ///
    /// # Errors
    /// If the loopback listener cannot be created.
    pub fn start(upstream: SocketAddr) -> io::Result<Self> {
        Self::start_on((Ipv4Addr::LOCALHOST, 0).into(), upstream)
    }

    /// As [`start`](Self::start), listening on `listen` (a loopback address such as
    /// `127.0.0.2`; port 0 for a free one): a second "host" for tests where a name moves
    /// between servers on the same port.
    ///
    /// # Errors
    /// If the listener cannot be created.
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let port = listener.local_addr()?.port();
        let mut proxy = Self {
            ip: listen.ip(),
            port,
            upstream,
            shared: Arc::default(),
            acceptor: None,
        };
        proxy.serve(listener)?;
        Ok(proxy)
    }

    /// The port clients connect to (on 127.0.0.1); the same whether up or down.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the port is accepting.
    pub fn is_up(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Connections accepted while up, in total.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Relayed connections currently open.
    pub fn live(&self) -> usize {
        self.shared
            .relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Closes the port (new connects are refused) and cuts every relayed connection.
    pub fn down(&mut self) {
        if let Some((stop, acceptor)) = self.acceptor.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = acceptor.join();
        }
        let relays = std::mem::take(
            &mut *self
                .shared
                .relays
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (_, client, server) in relays {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Listens on the same port again (a no-op when up).
    ///
    /// # Errors
    /// If the port cannot be bound again (something else took it meanwhile).
    pub fn up(&mut self) -> io::Result<()> {
        if self.is_up() {
            return Ok(());
        }
        let listener = TcpListener::bind((self.ip, self.port))?;
        self.serve(listener)
    }

    fn serve(&mut self, listener: TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (stop, shared, upstream) = (stop.clone(), self.shared.clone(), self.upstream);
            std::thread::Builder::new()
                .name(format!("flaky-proxy-{}", self.port))
                .spawn(move || accept_loop(&listener, &stop, &shared, upstream))?
        };
        self.acceptor = Some((stop, acceptor));
        Ok(())
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.down();
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, shared: &Arc<Shared>, up: SocketAddr) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                // A relay that cannot be set up is dropped: the client sees the connection
                // closed, as with a server that died during the handshake.
                let _ = relay(client, shared, up);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

fn relay(client: TcpStream, shared: &Arc<Shared>, upstream: SocketAddr) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let server = TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT)?;
    server.set_nodelay(true)?;
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst) as u64;
    shared
        .relays
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((id, client.try_clone()?, server.try_clone()?));
    for (from, to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("flaky-relay-{id}"))
            .spawn(move || {
                pump(from, to);
                // Either side ended: end both, and forget the pair.
                let mut relays = shared.relays.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(i) = relays.iter().position(|r| r.0 == id) {
                    let (_, a, b) = relays.swap_remove(i);
                    let _ = a.shutdown(Shutdown::Both);
                    let _ = b.shutdown(Shutdown::Both);
                }
            })?;
    }
    Ok(())
}

/// Copies `from` to `to` until EOF or an error, then shuts `to` down for writing.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relays_refuses_when_down_cuts_live_connections_and_comes_back_on_the_same_port() {
        // An echo server as the upstream.
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let upstream = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in echo.incoming().flatten() {
                std::thread::spawn(move || pump(s.try_clone().unwrap(), s));
            }
        });
        let mut proxy = FlakyProxy::start(upstream).unwrap();
        let port = proxy.port();
        let mut a = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        a.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.live(), 1);

        proxy.down();
        assert!(!proxy.is_up());
        assert_eq!(proxy.live(), 0);
        // The live connection is cut: EOF (or a reset) instead of an echo — not a timeout.
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = a.write_all(b"more");
        match a.read(&mut got) {
            Ok(0) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "the cut connection stayed open: {e}"
            ),
            Ok(n) => panic!("{n} bytes through a cut connection"),
        }
        let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

        proxy.up().unwrap();
        assert_eq!(proxy.port(), port);
        let mut b = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        b.write_all(b"back").unwrap();
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"back");
        assert_eq!(proxy.accepted(), 2);
    }
}
