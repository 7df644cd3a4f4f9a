//! A scripted fake PostgreSQL server for protocol-abuse tests.

pub(crate) mod messages;
pub(crate) mod tls;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use messages::frontend::{GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};

/// How often blocked threads look at the stop flag; bounds how long `Drop` takes.
pub(crate) const POLL: Duration = Duration::from_millis(10);
/// Largest startup packet or frontend message the fake server will buffer.
pub(crate) const MAX_MESSAGE: usize = 1 << 20;

/// One step of a connection's script, played after the startup packet was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes (build them with [`crate::backend`]).
    Send(Vec<u8>),
    /// Do nothing for a while (the socket stays open).
    Stall(Duration),
    /// Hold the socket open, silent, until the server is dropped.
    StallForever,
    /// Read one frontend message (1-byte tag + i32 length + body) and record it.
    ReadMessage,
    /// Read exactly this many bytes and record them as one entry.
    ReadBytes(usize),
    /// Close the socket (FIN) now, possibly mid-message; the script ends.
    Close,
    /// Reset the connection (RST, via `SO_LINGER` 0) now; the script ends.
    Reset,
    /// Write this many pseudo-random bytes.
    SendGarbage(usize),
}

/// What the fake server saw on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionLog {
    /// How many SSLRequest/GSSENCRequest packets were answered with `N`.
    pub encryption_requests: usize,
    /// The startup packet (length prefix included), once read.
    pub startup: Option<Vec<u8>>,
    /// Each [`Step::ReadMessage`] / [`Step::ReadBytes`] result, in order.
    pub received: Vec<Vec<u8>>,
    /// Whether the client closed its end while the server was reading.
    pub client_closed: bool,
    /// Whether the whole script ran (false if the client went away early).
    pub script_completed: bool,
}

type ScriptFn = dyn Fn(usize) -> Vec<Step> + Send + Sync;

#[derive(Default)]
pub(crate) struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    logs: Mutex<Vec<ConnectionLog>>,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn update(&self, index: usize, f: impl FnOnce(&mut ConnectionLog)) {
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(log) = logs.get_mut(index) {
            f(log);
        }
    }
}

/// A loopback TCP listener on a free port that plays a script to each client.
///
/// For each accepted connection it reads the startup packet (answering SSLRequest and
/// GSSENCRequest with `N` first), records it, plays the [`Step`]s, then closes the socket.
/// Connections are served concurrently, each on its own thread. Dropping the server stops
/// every thread and closes every socket promptly, even mid-[`Step::StallForever`].
///
/// ```
/// use testkit::{backend, frontend, FakeServer, Step};
/// use std::io::{Read, Write};
///
/// let server = FakeServer::start(vec![Step::Send(backend::handshake_ok())])?;
/// let mut client = std::net::TcpStream::connect(server.addr())?;
/// client.write_all(&frontend::startup(&[("user", "me")]))?;
/// let mut answer = Vec::new();
/// client.read_to_end(&mut answer)?; // the script ends, so the server closes
/// assert_eq!(answer, backend::handshake_ok());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .field("accepted", &self.accepted())
            .finish()
    }
}

impl FakeServer {
    /// Serves `script` to every connection.
    ///
    /// # Errors
    /// If the loopback listener cannot be created.
    pub fn start(script: Vec<Step>) -> io::Result<Self> {
        Self::start_with(move |_| script.clone())
    }

    /// Serves `script_for(n)` to the n-th connection (0-based), e.g. a broken first
    /// connection and a healthy reconnect.
    ///
    /// # Errors
    /// If the loopback listener cannot be created.
    pub fn start_with(
        script_for: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let script_for: Arc<ScriptFn> = Arc::new(script_for);
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("fake-pg-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared, &script_for))?
        };
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The listening address (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// A snapshot of what each connection (in accept order) sent and how it ended.
    pub fn connections(&self) -> Vec<ConnectionLog> {
        self.shared
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The startup packets received so far, in accept order.
    pub fn startup_packets(&self) -> Vec<Vec<u8>> {
        self.connections()
            .into_iter()
            .filter_map(|c| c.startup)
            .collect()
    }

    /// Waits until at least `n` connections were accepted; false on timeout.
    pub fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.accepted() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, script_for: &Arc<ScriptFn>) {
    let mut workers = Vec::new();
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                let index = {
                    let mut logs = shared.logs.lock().unwrap_or_else(PoisonError::into_inner);
                    logs.push(ConnectionLog::default());
                    logs.len() - 1
                };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(shared);
                let script = script_for(index);
                workers.push(std::thread::spawn(move || {
                    let _ = serve(stream, index, &script, &shared);
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(listener, POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Blocks until the listener has a pending connection or `timeout` passes, so accepts are
/// immediate while the stop flag is still checked every `POLL`.
#[allow(unsafe_code)] // one libc poll(2)
pub(crate) fn wait_readable(listener: &TcpListener, timeout: Duration) {
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is one valid, initialised pollfd for a live fd, and nfds is 1.
    let _ = unsafe { libc::poll(&mut fds, 1, ms) };
}

/// Why a connection's script stopped early.
pub(crate) enum Halt {
    Stopping,
    ClientClosed,
    Io,
}

impl From<io::Error> for Halt {
    fn from(_: io::Error) -> Self {
        Halt::Io
    }
}

fn serve(
    mut stream: TcpStream,
    index: usize,
    script: &[Step],
    shared: &Shared,
) -> Result<(), Halt> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(POLL))?;
    let _ = stream.set_nodelay(true);
    let result = play(&mut stream, index, script, shared);
    if let Err(Halt::ClientClosed) = result {
        shared.update(index, |log| log.client_closed = true);
    }
    result
}

/// A byte stream a script plays over: plain TCP, or TLS on top of it.
pub(crate) trait Transport: Read + Write {
    /// Closes the connection in order (FIN; a TLS stream sends `close_notify` first).
    fn close(&mut self);
    /// Arranges for the connection to be reset (RST) when it is dropped.
    fn reset(&mut self);
}

impl Transport for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }

    fn reset(&mut self) {
        set_linger_zero(self);
    }
}

pub(crate) fn play<T: Transport>(
    stream: &mut T,
    index: usize,
    script: &[Step],
    shared: &Shared,
) -> Result<(), Halt> {
    // Startup phase: refuse encryption until a real startup packet arrives.
    loop {
        let mut len = [0u8; 4];
        read_exact(stream, &mut len, shared)?;
        let total = usize::try_from(i32::from_be_bytes(len)).map_err(|_| Halt::Io)?;
        if !(8..=MAX_MESSAGE).contains(&total) {
            return Err(Halt::Io);
        }
        let mut packet = len.to_vec();
        packet.resize(total, 0);
        read_exact(stream, &mut packet[4..], shared)?;
        let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if code == SSL_REQUEST_CODE || code == GSSENC_REQUEST_CODE {
            shared.update(index, |log| log.encryption_requests += 1);
            write_all(stream, b"N", shared)?;
            continue;
        }
        shared.update(index, |log| log.startup = Some(packet));
        break;
    }
    let mut rng = 0x9E37_79B9_u32 ^ u32::try_from(index % 65_536).unwrap_or(0);
    for step in script {
        match step {
            Step::Send(bytes) => write_all(stream, bytes, shared)?,
            Step::SendGarbage(n) => {
                let garbage: Vec<u8> = (0..*n).map(|_| xorshift(&mut rng)).collect();
                write_all(stream, &garbage, shared)?;
            }
            Step::Stall(d) => sleep_unless_stopping(*d, shared)?,
            Step::StallForever => loop {
                sleep_unless_stopping(Duration::from_secs(3600), shared)?;
            },
            Step::ReadMessage => {
                let mut head = [0u8; 5];
                read_exact(stream, &mut head, shared)?;
                let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                let len = usize::try_from(len).map_err(|_| Halt::Io)?;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(Halt::Io);
                }
                let mut msg = head.to_vec();
                msg.resize(len + 1, 0);
                read_exact(stream, &mut msg[5..], shared)?;
                shared.update(index, |log| log.received.push(msg));
            }
            Step::ReadBytes(n) => {
                let mut buf = vec![0u8; (*n).min(MAX_MESSAGE)];
                read_exact(stream, &mut buf, shared)?;
                shared.update(index, |log| log.received.push(buf));
            }
            Step::Close => {
                stream.close();
                break;
            }
            Step::Reset => {
                stream.reset();
                break;
            }
        }
    }
    shared.update(index, |log| log.script_completed = true);
    Ok(())
}

pub(crate) fn xorshift(state: &mut u32) -> u8 {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    state.to_le_bytes()[0]
}

pub(crate) fn sleep_unless_stopping(d: Duration, shared: &Shared) -> Result<(), Halt> {
    let deadline = Instant::now() + d;
    loop {
        if shared.stopping() {
            return Err(Halt::Stopping);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

pub(crate) fn read_exact(
    stream: &mut impl Read,
    mut buf: &mut [u8],
    shared: &Shared,
) -> Result<(), Halt> {
    while !buf.is_empty() {
        if shared.stopping() {
            return Err(Halt::Stopping);
        }
        match stream.read(buf) {
            Ok(0) => return Err(Halt::ClientClosed),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if is_retry(&e) => {}
            Err(_) => return Err(Halt::ClientClosed),
        }
    }
    Ok(())
}

pub(crate) fn write_all(
    stream: &mut impl Write,
    mut buf: &[u8],
    shared: &Shared,
) -> Result<(), Halt> {
    while !buf.is_empty() {
        if shared.stopping() {
            return Err(Halt::Stopping);
        }
        match stream.write(buf) {
            Ok(0) => return Err(Halt::ClientClosed),
            Ok(n) => buf = &buf[n..],
            Err(e) if is_retry(&e) => {}
            Err(_) => return Err(Halt::ClientClosed),
        }
    }
    // A TLS stream may hold records back; a TcpStream's flush does nothing.
    loop {
        if shared.stopping() {
            return Err(Halt::Stopping);
        }
        match stream.flush() {
            Ok(()) => return Ok(()),
            Err(e) if is_retry(&e) => {}
            Err(_) => return Err(Halt::ClientClosed),
        }
    }
}

pub(crate) fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// `SO_LINGER {on, 0}` so that closing sends RST instead of FIN.
#[allow(unsafe_code)] // one libc setsockopt(2)
pub(crate) fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8);
    // SAFETY: the fd is a live socket owned by `stream`; the option value points at a
    // properly sized, initialised `linger` that outlives the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            len,
        );
    }
}
