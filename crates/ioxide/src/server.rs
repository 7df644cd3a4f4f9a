//! A TCP server on N reactor threads: one ring, one executor and one `SO_REUSEPORT` listener
//! per thread, a task per connection, graceful shutdown on SIGINT/SIGTERM.

use crate::future::{select, Either};
use crate::net::{Stream, TcpListener};
use crate::reactor::{Reactor, RemoteHandle, Runtime};
use crate::ring::{signal, sys, Fd, RingConfig};
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// The signals that stop [`Server::run`] gracefully.
const STOP_SIGNALS: [i32; 2] = [signal::SIGINT, signal::SIGTERM];

type OnStart = Arc<dyn Fn(&Reactor) + Send + Sync>;
type OnStop = Arc<dyn Fn(Reactor) -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// Builds and starts a server. See [`Server::run`] and [`Server::start`].
#[derive(Clone)]
pub struct Server {
    addr: SocketAddr,
    reactors: usize,
    ring: RingConfig,
    on_start: Option<OnStart>,
    on_stop: Option<OnStop>,
    grace: Duration,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("reactors", &self.reactors)
            .field("grace", &self.grace)
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// A server on 0.0.0.0:8080 with one reactor per core and a 5 s shutdown grace period.
    pub fn new() -> Server {
        Server {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
            reactors: thread::available_parallelism().map_or(1, usize::from),
            ring: RingConfig::default(),
            on_start: None,
            on_stop: None,
            grace: Duration::from_secs(5),
        }
    }

    /// The address to listen on (port 0 picks a free port; see [`ServerHandle::local_addr`]).
    pub fn bind(mut self, addr: SocketAddr) -> Server {
        self.addr = addr;
        self
    }

    /// The port to listen on, all interfaces.
    pub fn port(mut self, port: u16) -> Server {
        self.addr.set_port(port);
        self
    }

    /// Number of reactor threads (at least 1).
    pub fn reactors(mut self, n: usize) -> Server {
        self.reactors = n.max(1);
        self
    }

    /// Ring settings for every reactor.
    pub fn ring_config(mut self, config: RingConfig) -> Server {
        self.ring = config;
        self
    }

    /// A hook run on each reactor thread before it serves (register services here).
    pub fn on_start(mut self, f: impl Fn(&Reactor) + Send + Sync + 'static) -> Server {
        self.on_start = Some(Arc::new(f));
        self
    }

    /// An async hook run on each reactor thread after it stopped accepting and its
    /// connections finished (or the grace period ran out), before its tasks are cancelled:
    /// the place for services to close cleanly (a pool sending Terminate, say). Bounded by the
    /// grace period too.
    pub fn on_stop<F, Fut>(mut self, f: F) -> Server
    where
        F: Fn(Reactor) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.on_stop = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// How long in-flight connections may run after shutdown is requested.
    pub fn shutdown_grace(mut self, grace: Duration) -> Server {
        self.grace = grace;
        self
    }

    /// Starts the reactors and returns once every one of them is serving. `handler` runs as
    /// one task per accepted connection, on the reactor that accepted it.
    pub fn start<H, Fut>(self, handler: H) -> io::Result<ServerHandle>
    where
        H: Fn(Stream) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        // Bind every listener here so errors surface synchronously and port 0 resolves once.
        let first = TcpListener::bind_raw(self.addr, true)?;
        let local_addr = sys::sock_addr(first.raw(), false)?
            .to_inet()
            .ok_or_else(|| io::Error::other("listener has no inet address"))?;
        let mut fds = vec![first.into_raw()];
        for _ in 1..self.reactors {
            match TcpListener::bind_raw(local_addr, true) {
                Ok(fd) => fds.push(fd.into_raw()),
                Err(e) => {
                    fds.into_iter().for_each(sys::close);
                    return Err(e);
                }
            }
        }
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<RemoteHandle>>();
        let mut threads = Vec::new();
        for (index, raw) in fds.into_iter().enumerate() {
            let ready = ready_tx.clone();
            let cfg = self.ring.clone();
            let on_start = self.on_start.clone();
            let on_stop = self.on_stop.clone();
            let handler = handler.clone();
            let grace = self.grace;
            let t = thread::Builder::new()
                .name(format!("ioxide-reactor-{index}"))
                .spawn(move || {
                    let listener_fd = Fd::from_raw(raw);
                    let rt = match Runtime::with_config(cfg, index) {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready.send(Err(io::Error::other(e.to_string())));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let reactor = Reactor::current();
                        if let Some(f) = on_start {
                            f(&reactor);
                        }
                        let _ = ready.send(Ok(reactor.remote()));
                        drop(ready);
                        serve(
                            reactor.clone(),
                            TcpListener::from_fd(listener_fd),
                            handler,
                            grace,
                        )
                        .await;
                        if let Some(f) = on_stop {
                            if crate::time::timeout(grace, f(reactor)).await.is_err() {
                                tracing::warn!(
                                    "on_stop hook did not finish within the grace period"
                                );
                            }
                        }
                    });
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => return Err(e),
            }
        }
        drop(ready_tx);
        let mut remotes = Vec::new();
        let mut failure = None;
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(remote)) => remotes.push(remote),
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(io::Error::other("a reactor thread died while starting")),
            }
        }
        let handle = ServerHandle {
            local_addr,
            remotes,
            threads,
        };
        if let Some(e) = failure {
            handle.shutdown();
            let _ = handle.join();
            return Err(e);
        }
        Ok(handle)
    }

    /// Starts the server and serves until SIGINT or SIGTERM, then shuts down gracefully: stop
    /// accepting, let in-flight connections finish within the grace period, and return.
    pub fn run<H, Fut>(self, handler: H) -> io::Result<()>
    where
        H: Fn(Stream) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.run_with(|_| {}, handler)
    }

    /// As [`Server::run`], calling `started` with the bound address once every reactor
    /// serves (to print a startup line, for example).
    pub fn run_with<H, Fut>(self, started: impl FnOnce(SocketAddr), handler: H) -> io::Result<()>
    where
        H: Fn(Stream) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        // Blocked before the reactors spawn, so they inherit the mask and only this thread
        // receives the signals (with sigtimedwait).
        let old = signal::block_saving(&STOP_SIGNALS)?;
        let handle = match self.start(handler) {
            Ok(h) => h,
            Err(e) => {
                signal::restore(&old);
                return Err(e);
            }
        };
        started(handle.local_addr());
        loop {
            // Valid, fixed signals: sigtimedwait cannot refuse them.
            let taken = signal::wait_timeout(&STOP_SIGNALS, Duration::from_millis(500));
            if let Ok(Some(sig)) = taken {
                tracing::info!(signal = sig, "shutdown requested");
                break;
            }
            if handle.threads.iter().any(|t| t.is_finished()) {
                break;
            }
        }
        handle.shutdown();
        let r = handle.join();
        signal::restore(&old);
        r
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    remotes: Vec<RemoteHandle>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Asks every reactor to shut down gracefully.
    pub fn shutdown(&self) {
        self.remotes.iter().for_each(RemoteHandle::request_shutdown);
    }

    /// Waits for every reactor thread to finish.
    pub fn join(self) -> io::Result<()> {
        let mut panicked = false;
        for t in self.threads {
            panicked |= t.join().is_err();
        }
        if panicked {
            Err(io::Error::other("a reactor thread panicked"))
        } else {
            Ok(())
        }
    }
}

/// One live connection handler, counted in `serve`'s `active` while it exists.
struct Active(Rc<Cell<usize>>);

impl Active {
    fn enter(count: &Rc<Cell<usize>>) -> Active {
        count.set(count.get() + 1);
        Active(count.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

async fn serve<H, Fut>(reactor: Reactor, mut listener: TcpListener, handler: H, grace: Duration)
where
    H: Fn(Stream) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let active = Rc::new(Cell::new(0usize));
    // One shutdown future for the whole loop: it keeps a single waker registered.
    let mut shutdown = reactor.shutdown_requested();
    loop {
        match select(&mut shutdown, listener.accept()).await {
            Either::Left(()) => break,
            Either::Right(Ok(stream)) => {
                // Counted out when the handler's future is dropped: finished, panicked (the
                // executor catches it) or cancelled, so a failed handler cannot hold the
                // shutdown for the whole grace period.
                let guard = Active::enter(&active);
                let fut = handler(stream);
                drop(reactor.spawn(async move {
                    let _guard = guard;
                    fut.await;
                }));
            }
            Either::Right(Err(e)) => {
                tracing::error!(error = %e, "accept failed; this reactor stops accepting");
                break;
            }
        }
    }
    // Stop accepting: dropping the listener cancels the multishot accept and closes the fd.
    drop(listener);
    let now = std::time::Instant::now();
    // A grace too long to represent waits for every handler.
    let deadline = now.checked_add(grace);
    while active.get() > 0 && deadline.is_none_or(|d| std::time::Instant::now() < d) {
        crate::time::sleep(Duration::from_millis(10)).await;
    }
    if active.get() > 0 {
        tracing::warn!(
            connections = active.get(),
            "grace period over; dropping connections"
        );
    }
}
