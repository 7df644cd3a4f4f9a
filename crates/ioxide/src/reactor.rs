//! The reactor: one ring, one executor and one service registry per thread, and its loop.
//!
//! The loop is: run every ready task (they queue SQEs) → one `io_uring_enter` that submits the
//! whole batch and waits for at least one completion → reap every CQE, waking the tasks they
//! belong to → again. All continuations of a batch therefore run before the next enter, on
//! this thread, and one syscall carries everything they queued.

use crate::executor::{self, JoinHandle, RemoteQueue, TaskRegistry, LOCAL_ID, RUN_QUEUE};
use crate::ring::{self, Ring, RingConfig, RingError, RingFeatures, RingStats};
use crate::shutdown::{ShutdownRequested, ShutdownWaiters};
use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Ready tasks run per loop turn before the ring is entered again (bounds the latency a task
/// that keeps waking itself can add to I/O).
const RUN_BUDGET: usize = 4096;
/// How long teardown waits for the kernel to finish cancelled ops before leaking their data.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(2);
/// How often the doorbell task looks for remote wakes and shutdown requests while reads of
/// its eventfd fail.
const DOORBELL_RETRY: Duration = Duration::from_millis(10);

/// Work on a ring, deferred until nobody up the stack borrows it.
pub(crate) type RingWork = Box<dyn FnOnce(&mut Ring)>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Inner>>> = const { RefCell::new(None) };
    /// Reactors of this thread whose teardown had to leak op data the kernel had not given
    /// back: an op of theirs that outlived them must never hand its data back or free it.
    static LEAKED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// State reachable from other threads: the doorbell and the remote run queue.
pub(crate) struct Shared {
    pub(crate) id: u64,
    eventfd: RawFd,
    pub(crate) remote: RemoteQueue,
    root_woken: AtomicBool,
    shutdown: AtomicBool,
    /// Test hook: this many doorbell reads are treated as failed.
    failing_reads: AtomicU32,
    /// Closures posted from other threads ([`RemoteHandle::post`]), run by the doorbell task;
    /// `None` once the reactor stopped (teardown drops what was still queued).
    posted: Mutex<Option<Vec<Posted>>>,
}

/// A closure posted to a reactor from another thread.
type Posted = Box<dyn FnOnce() + Send + 'static>;

impl Shared {
    pub(crate) fn ring_doorbell(&self) {
        ring::sys::eventfd_signal(self.eventfd);
    }

    /// The posted closures to run now (empty once stopped).
    fn take_posted(&self) -> Vec<Posted> {
        let mut q = self.posted.lock().unwrap_or_else(PoisonError::into_inner);
        q.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Refuses further posts and returns what was still queued.
    fn close_posted(&self) -> Vec<Posted> {
        let mut q = self.posted.lock().unwrap_or_else(PoisonError::into_inner);
        q.take().unwrap_or_default()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The eventfd lives exactly as long as anything (a waker, a remote handle) that could
        // write to it, so a late cross-thread wake never writes to a reused fd number.
        ring::sys::close(self.eventfd);
    }
}

pub(crate) struct Inner {
    pub(crate) id: u64,
    index: usize,
    pub(crate) ring: RefCell<Ring>,
    shared: Arc<Shared>,
    services: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    pub(crate) shutdown: Cell<bool>,
    pub(crate) shutdown_waiters: RefCell<ShutdownWaiters>,
    /// Ring work that found the ring borrowed further up the stack (an op dropped from inside
    /// a waker, say); the loop runs it before its next enter.
    deferred_work: RefCell<Vec<RingWork>>,
    tasks: Rc<TaskRegistry>,
    /// Tasks waiting for the end of this loop turn (see [`end_of_turn`]).
    end_of_turn: RefCell<Vec<Waker>>,
    /// The shortest batching window asked for this turn (see [`batch_wait`]).
    batch_window: Cell<Option<Duration>>,
    /// Sockets whose receive is held back until a deadline (see [`hold_receive`]).
    holds: RefCell<Vec<Rc<crate::net::Gather>>>,
    /// The ring timeout that ends the earliest hold, and when it fires.
    hold_timer: RefCell<Option<(Instant, ring::Op<ring::TimeoutOp>)>>,
    /// When this loop turn began (see [`crate::time::now`]).
    pub(crate) turn_time: Cell<Instant>,
}

/// Runs `f` with the current reactor's state, or returns None outside a reactor.
pub(crate) fn with_current<R>(f: impl FnOnce(&Inner) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| c.borrow().as_ref().map(|inner| f(inner)))
        .ok()
        .flatten()
}

/// Why [`with_ring`] did not run its closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRing {
    /// No reactor runs on this thread.
    Absent,
    /// The reactor runs, but its ring is borrowed further up the stack (code the ring called
    /// out to — a waker, a destructor — came back to it).
    Busy,
}

/// Runs `f` with the current reactor's id and ring. The wakes and drops the ring owes from
/// `f` (see `ring::Deferred`) run after the borrow is released.
pub(crate) fn with_ring<R>(f: impl FnOnce(u64, &mut Ring) -> R) -> Result<R, NoRing> {
    CURRENT
        .try_with(|c| match c.borrow().as_ref() {
            Some(inner) => inner.with_ring(f),
            None => Err(NoRing::Absent),
        })
        .unwrap_or(Err(NoRing::Absent))
}

/// Where an op of reactor `id` stands with its ring (see [`with_op_ring`]).
pub(crate) enum OpRing<R> {
    /// The closure ran on the op's ring.
    Ran(R),
    /// The op's reactor runs on this thread, but its ring is borrowed further up the stack.
    Busy,
    /// The op's reactor has ended. `drained`: its teardown saw the kernel finish every op, so
    /// the kernel no longer touches this op's data; otherwise the data must be leaked.
    Ended { drained: bool },
}

/// Runs `f` on the ring of reactor `id`, the one an op was submitted to. Ops are not `Send`
/// and a thread runs one reactor at a time, so when `id` is not the current reactor it has
/// ended.
pub(crate) fn with_op_ring<R>(id: u64, f: impl FnOnce(&mut Ring) -> R) -> OpRing<R> {
    let here = CURRENT.try_with(|c| match c.borrow().as_ref() {
        Some(inner) if inner.id == id => Some(match inner.with_ring(|_, ring| f(ring)) {
            Ok(r) => OpRing::Ran(r),
            Err(_) => OpRing::Busy,
        }),
        _ => None,
    });
    match here {
        Ok(Some(r)) => r,
        Ok(None) => OpRing::Ended {
            drained: LEAKED
                .try_with(|l| !l.borrow().contains(&id))
                .unwrap_or(false),
        },
        // Thread-local state is being destroyed: nothing is known, assume the worst.
        Err(_) => OpRing::Ended { drained: false },
    }
}

/// Runs `f` on reactor `id`'s ring now or, if the ring is borrowed further up the stack,
/// before the reactor's next enter. Dropped without running if that reactor has ended.
pub(crate) fn with_ring_or_defer(id: u64, f: impl FnOnce(&mut Ring) + 'static) {
    let mut f = Some(f);
    if let OpRing::Busy = with_op_ring(id, |ring| {
        if let Some(f) = f.take() {
            f(ring);
        }
    }) {
        if let Some(f) = f {
            defer_ring_work(Box::new(f));
        }
    }
}

/// Queues ring work for the current reactor's loop (the ring was busy).
pub(crate) fn defer_ring_work(work: RingWork) {
    let queued = with_current(|inner| match inner.deferred_work.try_borrow_mut() {
        Ok(mut q) => {
            q.push(work);
            None
        }
        Err(_) => Some(work),
    });
    if let Some(Some(work)) = queued {
        // Not reachable in practice (the queue is borrowed only to push or take); dropping
        // the work would free op data the kernel may own, so leak it.
        std::mem::forget(work);
    }
}

/// Arranges for `waker` to be woken later in this loop turn: a future that found the ring
/// busy polls again once whoever holds it has let go (never inline, which could recurse).
pub(crate) fn defer_wake(waker: &Waker) {
    let queued = with_current(|inner| match inner.end_of_turn.try_borrow_mut() {
        Ok(mut w) => {
            w.push(waker.clone());
            true
        }
        Err(_) => false,
    });
    if queued != Some(true) {
        waker.wake_by_ref();
    }
}

/// A handle to the reactor running on this thread. Cheap to clone; not `Send`.
#[derive(Clone)]
pub struct Reactor {
    inner: Rc<Inner>,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("id", &self.inner.id)
            .field("index", &self.inner.index)
            .finish()
    }
}

impl Reactor {
    /// The reactor running on this thread. Panics when called outside one (a programming
    /// error); see [`Reactor::try_current`].
    pub fn current() -> Reactor {
        Self::try_current().expect("ioxide: no reactor is running on this thread")
    }

    /// The reactor running on this thread, if any.
    pub fn try_current() -> Option<Reactor> {
        CURRENT
            .try_with(|c| c.borrow().clone())
            .ok()
            .flatten()
            .map(|inner| Reactor { inner })
    }

    /// This reactor's position among a server's reactors (0 for a standalone runtime).
    pub fn index(&self) -> usize {
        self.inner.index
    }

    /// Spawns a task on this reactor.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        executor::spawn_on(&self.inner.shared, &self.inner.tasks, future)
    }

    /// Registers a per-reactor service, keyed by its type (replacing one of the same type).
    pub fn add_service<T: 'static>(&self, service: T) -> Rc<T> {
        let rc = Rc::new(service);
        let any: Rc<dyn Any> = rc.clone();
        let old = self
            .inner
            .services
            .borrow_mut()
            .insert(TypeId::of::<T>(), any);
        drop(old);
        rc
    }

    /// The service of type `T`. Panics if none was registered (a programming error); see
    /// [`Reactor::try_service`].
    pub fn service<T: 'static>(&self) -> Rc<T> {
        self.try_service::<T>().unwrap_or_else(|| {
            panic!(
                "ioxide: no service of type {} on this reactor",
                std::any::type_name::<T>()
            )
        })
    }

    /// The service of type `T`, if registered.
    pub fn try_service<T: 'static>(&self) -> Option<Rc<T>> {
        let any = self
            .inner
            .services
            .borrow()
            .get(&TypeId::of::<T>())?
            .clone();
        any.downcast::<T>().ok()
    }

    /// What the ring has done so far.
    pub fn ring_stats(&self) -> RingStats {
        self.inner.ring.borrow().stats
    }

    /// Whether the ring runs with `SINGLE_ISSUER | DEFER_TASKRUN`.
    pub fn defer_taskrun(&self) -> bool {
        self.inner.ring.borrow().defer_taskrun
    }

    /// The kernel features this reactor's ring uses: what the kernel offers, minus what
    /// [`RingConfig::kernel_compat`] (`IOXIDE_KERNEL_COMPAT`) masks.
    pub fn features(&self) -> RingFeatures {
        self.inner.ring.borrow().features
    }

    /// A `Send` handle other threads can use to ask this reactor to shut down.
    pub fn remote(&self) -> RemoteHandle {
        RemoteHandle {
            shared: self.inner.shared.clone(),
        }
    }

    /// Asks this reactor's tasks to wind down (see [`Reactor::shutdown_requested`]).
    pub fn request_shutdown(&self) {
        if !self.inner.shutdown.replace(true) {
            let waiters = self.inner.shutdown_waiters.borrow_mut().take_all();
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// How many [`Reactor::shutdown_requested`] futures hold a registered waker (for tests:
    /// a loop that polls such futures must not pile them up).
    #[doc(hidden)]
    pub fn shutdown_waiter_count(&self) -> usize {
        self.inner.shutdown_waiters.borrow().registered()
    }

    /// Test hook: runs `f` while this reactor's ring is borrowed, as code the ring calls out
    /// to (a waker, a destructor) would run. Ring work `f` starts is deferred.
    #[doc(hidden)]
    pub fn with_ring_borrowed<R>(&self, f: impl FnOnce() -> R) -> R {
        let ring = self.inner.ring.borrow_mut();
        let out = f();
        drop(ring);
        out
    }

    /// Test hook: the doorbell task treats its next `reads` eventfd reads as failed.
    #[doc(hidden)]
    pub fn fail_doorbell_reads(&self, reads: u32) {
        self.inner
            .shared
            .failing_reads
            .store(reads, Ordering::Release);
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.get()
    }

    /// Resolves once shutdown is requested (locally or through a [`RemoteHandle`]). The
    /// future keeps one waker registered while it waits and none once it is dropped, so a
    /// loop may keep one and poll it again and again (`select(&mut shutdown, …)`).
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + Unpin + 'static {
        ShutdownRequested::new(self.inner.clone())
    }
}

/// Resolves at the end of the current loop turn: after every task that is ready now (and
/// every task those wake) has run, just before the reactor enters the kernel. A writer that
/// awaits this before sending puts everything the turn produced into one send.
pub fn end_of_turn() -> impl Future<Output = ()> {
    let mut queued = false;
    std::future::poll_fn(move |cx| {
        if queued {
            return Poll::Ready(());
        }
        match Reactor::try_current() {
            Some(r) => {
                r.inner.end_of_turn.borrow_mut().push(cx.waker().clone());
                queued = true;
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    })
}

/// The longest window [`batch_wait`] accepts; longer requests are clamped to it.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Tells the reactor that more completions are expected shortly (say, replies to commands
/// already pipelined on a socket), so its next wait may gather them into one wake-up.
///
/// When the loop turn ends with nothing ready, the reactor waits for at least `window`
/// (clamped to [`MAX_BATCH_WINDOW`]) before waking for a completion, and never longer than
/// `window` once something has completed; a completion after the window wakes it at once.
/// Timers end the wait early; readiness-driven completions do not — socket receives, and also
/// the eventfd doorbell, so a wake or shutdown request from another thread is seen up to
/// `window` late. The receives that became ready meanwhile then run once each and copy
/// everything that arrived: fewer wake-ups, receives and sends per message for up to `window`
/// of latency. The hint lasts for one wait; the shortest window asked for in a turn wins.
/// Outside a reactor it does nothing.
pub fn batch_wait(window: Duration) {
    if window.is_zero() {
        return;
    }
    let window = window.min(MAX_BATCH_WINDOW);
    let _ = CURRENT.try_with(|c| {
        if let Some(inner) = c.borrow().as_ref() {
            let w = match inner.batch_window.get() {
                Some(old) if old <= window => old,
                _ => window,
            };
            inner.batch_window.set(Some(w));
        }
    });
}

/// Spawns a task on the current thread's reactor. Panics outside a reactor.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    Reactor::current().spawn(future)
}

/// A handle to a reactor that may be used from any thread.
#[derive(Clone)]
pub struct RemoteHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for RemoteHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteHandle")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl RemoteHandle {
    /// Asks the reactor to shut down; its tasks see [`Reactor::shutdown_requested`] resolve.
    pub fn request_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.ring_doorbell();
    }

    /// Runs `f` on the reactor's thread, with the reactor current (so it may
    /// [`spawn`] local futures and reach services), soon after the call: the doorbell wakes
    /// the reactor, and closures run in the order they were posted, from the reactor's
    /// internal doorbell task. `f` should be short and must not block: it holds up the
    /// reactor while it runs. A panic in `f` is caught and logged.
    ///
    /// Fails with [`ReactorStopped`] once the reactor has stopped. A closure posted just
    /// before the reactor stops may be dropped without running (on the reactor's thread,
    /// during its teardown): anything that waits for it should hold something `f` owns (a
    /// channel's sender) and treat its drop as "the reactor stopped".
    pub fn post<F>(&self, f: F) -> Result<(), ReactorStopped>
    where
        F: FnOnce() + Send + 'static,
    {
        {
            let mut q = self
                .shared
                .posted
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match q.as_mut() {
                Some(q) => q.push(Box::new(f)),
                None => return Err(ReactorStopped),
            }
        }
        self.shared.ring_doorbell();
        Ok(())
    }

    /// Whether the reactor has stopped (a [`post`](RemoteHandle::post) would fail).
    pub fn is_stopped(&self) -> bool {
        self.shared
            .posted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }
}

/// The reactor a [`RemoteHandle`] names has stopped: nothing posted to it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorStopped;

impl fmt::Display for ReactorStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the reactor has stopped")
    }
}

impl std::error::Error for ReactorStopped {}

struct RootWaker {
    shared: Arc<Shared>,
}

impl Wake for RootWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.root_woken.store(true, Ordering::Release);
        if LOCAL_ID.try_with(Cell::get).unwrap_or(0) != self.shared.id {
            self.shared.ring_doorbell();
        }
    }
}

/// A reactor not yet running: build it, then [`Runtime::block_on`] a root future on it.
pub struct Runtime {
    config: RingConfig,
    index: usize,
    ring: Ring,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("index", &self.index)
            .finish()
    }
}

impl Runtime {
    /// A runtime with the default ring configuration.
    pub fn new() -> Result<Runtime, RingError> {
        Self::with_config(RingConfig::default(), 0)
    }

    /// A runtime with a given ring configuration and reactor index.
    pub fn with_config(config: RingConfig, index: usize) -> Result<Runtime, RingError> {
        let ring = Ring::new(&config)?;
        Ok(Runtime {
            config,
            index,
            ring,
        })
    }

    /// Runs `future` to completion on this thread, serving every task spawned meanwhile.
    /// When it returns, remaining tasks are cancelled and every in-flight op is drained before
    /// any buffer is freed. Panics if this thread already runs a reactor.
    pub fn block_on<F: Future>(self, future: F) -> F::Output {
        let eventfd = match ring::sys::eventfd() {
            Ok(fd) => fd,
            Err(e) => panic!("ioxide: could not create the reactor's eventfd: {e}"),
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            id,
            eventfd,
            remote: RemoteQueue::default(),
            root_woken: AtomicBool::new(true),
            shutdown: AtomicBool::new(false),
            failing_reads: AtomicU32::new(0),
            posted: Mutex::new(Some(Vec::new())),
        });
        let inner = Rc::new(Inner {
            id,
            index: self.index,
            ring: RefCell::new(self.ring),
            shared: shared.clone(),
            services: RefCell::new(HashMap::new()),
            shutdown: Cell::new(false),
            shutdown_waiters: RefCell::new(ShutdownWaiters::default()),
            deferred_work: RefCell::new(Vec::new()),
            tasks: Rc::new(TaskRegistry::default()),
            end_of_turn: RefCell::new(Vec::new()),
            batch_window: Cell::new(None),
            holds: RefCell::new(Vec::new()),
            hold_timer: RefCell::new(None),
            turn_time: Cell::new(Instant::now()),
        });
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            assert!(
                c.is_none(),
                "ioxide: a reactor is already running on this thread"
            );
            *c = Some(inner.clone());
        });
        LOCAL_ID.with(|l| l.set(id));
        // Declared before the future so it drops after it: teardown runs with the reactor
        // still current, even when the root future panics.
        let _teardown = Teardown {
            inner: inner.clone(),
        };
        let reactor = Reactor { inner };
        // Detached: teardown cancels it with every other task.
        drop(reactor.spawn(doorbell(reactor.clone(), shared.clone())));
        run_loop(&reactor, &shared, future)
    }
}

/// Runs `future` on a fresh reactor on this thread (for tools and tests). Panics with the
/// ring error's explanation if io_uring is unavailable; use [`Runtime::new`] to handle that.
pub fn block_on<F: Future>(future: F) -> F::Output {
    match Runtime::new() {
        Ok(rt) => rt.block_on(future),
        Err(e) => panic!("ioxide: {e}"),
    }
}

/// The internal task that keeps a read armed on the reactor's eventfd: cross-thread wakes and
/// shutdown requests arrive through it. A failed read is logged and the task falls back to
/// looking every `DOORBELL_RETRY` (re-arming the read each time) until reads work again:
/// without it no remote wake or shutdown request would ever arrive.
async fn doorbell(reactor: Reactor, shared: Arc<Shared>) {
    let mut failing = false;
    loop {
        let mut read = ring::eventfd_read(shared.eventfd).await;
        let injected = shared
            .failing_reads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            read = Err(std::io::Error::other("injected doorbell read failure"));
        }
        match read {
            Ok(_) if failing => {
                tracing::info!("ioxide: the reactor's doorbell reads work again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::error!(
                        error = %e,
                        "ioxide: reading the reactor's doorbell eventfd failed; looking for \
                         remote wakes and shutdown every {DOORBELL_RETRY:?} until it works"
                    );
                    failing = true;
                }
                crate::time::sleep(DOORBELL_RETRY).await;
            }
        }
        for r in shared.remote.take() {
            RUN_QUEUE.with(|q| q.borrow_mut().push_back(r));
        }
        for f in shared.take_posted() {
            // A panicking closure must not take the doorbell (every remote wake) with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                tracing::error!("ioxide: a closure posted to the reactor panicked");
            }
        }
        if shared.shutdown.load(Ordering::Acquire) {
            reactor.request_shutdown();
        }
    }
}

fn run_loop<F: Future>(reactor: &Reactor, shared: &Arc<Shared>, future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(RootWaker {
        shared: shared.clone(),
    }));
    let mut cx = Context::from_waker(&waker);
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(256);
    loop {
        // Run everything ready, including tasks woken by tasks in this same turn, up to the
        // budget: root polls count too, so a root future that yields (wakes itself) cannot
        // keep the loop from entering the kernel.
        let mut used = 0;
        loop {
            let mut progressed = false;
            if shared.root_woken.swap(false, Ordering::AcqRel) {
                progressed = true;
                used += 1;
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return out;
                }
            }
            let ran = executor::run_ready(RUN_BUDGET.saturating_sub(used));
            used += ran;
            if used >= RUN_BUDGET {
                // Out of budget with work still ready: the end-of-turn waiters (writers) must
                // not starve behind it either — wake them to run after this enter.
                let waiters = std::mem::take(&mut *reactor.inner.end_of_turn.borrow_mut());
                waiters.into_iter().for_each(Waker::wake);
                break;
            }
            if ran == 0 && !progressed {
                // Nothing else is ready: release the end-of-turn waiters (writers flushing
                // everything this turn queued), then run them before entering.
                let waiters = std::mem::take(&mut *reactor.inner.end_of_turn.borrow_mut());
                if waiters.is_empty() {
                    break;
                }
                waiters.into_iter().for_each(Waker::wake);
            }
        }
        // Completions moved to the backlog while SQEs were pushed into a full ring are
        // dispatched after the enter; waiting on top of them could sleep past them.
        reactor.inner.run_deferred_work();
        let wait = !executor::has_ready()
            && !shared.root_woken.load(Ordering::Acquire)
            && !reactor.inner.ring.borrow().has_backlog();
        let window = reactor.inner.batch_window.take();
        reactor.inner.arm_hold_timer();
        let entered = match window {
            Some(w) if wait => reactor.inner.ring.borrow_mut().enter_batched(w),
            _ => reactor.inner.ring.borrow_mut().enter(wait, None),
        };
        if let Err(e) = entered {
            // The ring itself failed (not an op): nothing can make progress any more.
            panic!("ioxide: io_uring_enter failed: {e}");
        }
        reactor.inner.turn_time.set(Instant::now());
        reap_and_complete(&reactor.inner, &mut cqes);
        reactor.inner.expire_holds();
    }
}

impl Inner {
    /// Runs `f` with this reactor's ring; the wakes and drops the ring owes from it run after
    /// the borrow is released.
    fn with_ring<R>(&self, f: impl FnOnce(u64, &mut Ring) -> R) -> Result<R, NoRing> {
        let mut ring = self.ring.try_borrow_mut().map_err(|_| NoRing::Busy)?;
        let out = f(self.id, &mut ring);
        let deferred = ring.has_deferred().then(|| ring.take_deferred());
        drop(ring);
        if let Some(d) = deferred {
            d.run();
        }
        Ok(out)
    }

    /// Runs the ring work deferred because the ring was busy (see [`defer_ring_work`]).
    fn run_deferred_work(&self) {
        loop {
            let work = match self.deferred_work.try_borrow_mut() {
                Ok(mut w) if !w.is_empty() => std::mem::take(&mut *w),
                _ => return,
            };
            let mut work = Some(work);
            let ran = self.with_ring(|_, ring| {
                for w in work.take().into_iter().flatten() {
                    w(ring);
                }
            });
            if ran.is_err() {
                // Called from the loop, never under a ring borrow; if it ever is, keep the
                // work for the next call.
                if let Some(w) = work {
                    if let Ok(mut q) = self.deferred_work.try_borrow_mut() {
                        q.extend(w);
                    }
                }
                return;
            }
        }
    }

    /// Makes sure a ring timeout fires by the earliest pending hold deadline.
    ///
    /// One timeout serves every hold, and it is not re-armed per receive: a hold that ends
    /// on its threshold leaves the timer running, and when it fires the next pending
    /// deadline (if any) gets a new one. Arming a timer for each wait instead would cost a
    /// timer start and cancel per batch — on a virtual machine a few timer-register writes
    /// (VM exits) each, measured at ~0.3 µs per query at one connection × 64 in flight.
    fn arm_hold_timer(&self) {
        let Some(next) = self.next_hold() else {
            return;
        };
        let mut timer = self.hold_timer.borrow_mut();
        if matches!(&*timer, Some((at, _)) if *at <= next) {
            return;
        }
        let after = next.saturating_duration_since(Instant::now());
        // Replacing an armed timer (a hold with an earlier deadline came) cancels it.
        *timer = Some((next, ring::timeout(after)));
    }

    /// The earliest pending hold deadline; sockets without one leave the list.
    fn next_hold(&self) -> Option<Instant> {
        let mut holds = self.holds.borrow_mut();
        if holds.is_empty() {
            return None;
        }
        let mut next: Option<Instant> = None;
        holds.retain(|g| match g.deadline() {
            Some(d) => {
                next = Some(next.map_or(d, |n| n.min(d)));
                true
            }
            None => {
                g.set_listed(false);
                false
            }
        });
        next
    }

    /// Ends every hold whose deadline has passed (after a wait, at this turn's time), and
    /// forgets the hold timer once it has fired.
    fn expire_holds(&self) {
        let mut timer = self.hold_timer.borrow_mut();
        if let Some((_, op)) = timer.as_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            if Pin::new(op).poll(&mut cx).is_ready() {
                *timer = None;
            }
        }
        drop(timer);
        if self.holds.borrow().is_empty() {
            return;
        }
        let now = self.turn_time.get();
        let due: Vec<Rc<crate::net::Gather>> = self
            .holds
            .borrow()
            .iter()
            .filter(|g| g.deadline().is_some_and(|d| d <= now))
            .cloned()
            .collect();
        self.ring.borrow_mut().stats.hold_expiries += due.len() as u64;
        for g in due {
            g.expire();
        }
    }
}

/// Counts a held receive and, unless already listed, lists its socket: the reactor's
/// hold timer then ends the hold by its deadline even when nothing else happens (see
/// `Inner::arm_hold_timer`). Outside a reactor nothing would, so the hold ends at once.
pub(crate) fn hold_receive(g: &Rc<crate::net::Gather>) {
    let listed = with_current(|inner| {
        if let Ok(mut ring) = inner.ring.try_borrow_mut() {
            ring.stats.held_receives += 1;
        }
        if !g.listed() {
            g.set_listed(true);
            inner.holds.borrow_mut().push(g.clone());
        }
    })
    .is_some();
    if !listed {
        g.expire();
    }
}

fn reap_and_complete(inner: &Inner, cqes: &mut Vec<(u64, i32, u32)>) {
    inner.ring.borrow_mut().reap(cqes);
    for (ud, res, flags) in cqes.drain(..) {
        let mut ring = inner.ring.borrow_mut();
        let after = ring.complete(ud, res, flags);
        let deferred = ring.has_deferred().then(|| ring.take_deferred());
        drop(ring);
        after.run();
        if let Some(d) = deferred {
            d.run();
        }
    }
}

struct Teardown {
    inner: Rc<Inner>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let inner = &self.inner;
        // 0. Refuse further posts; drop the closures still queued (their owners learn the
        //    reactor stopped from what the closures owned being dropped).
        drop(inner.shared.close_posted());
        // 1. Services first: they may own connections whose fds close through the ring.
        let services = std::mem::take(&mut *inner.services.borrow_mut());
        drop(services);
        let waiters = inner.shutdown_waiters.borrow_mut().take_all();
        drop(waiters);
        let waiters = std::mem::take(&mut *inner.end_of_turn.borrow_mut());
        drop(waiters);
        // A stream may outlive this reactor (returned from `block_on`): release its hold so
        // it is neither held without a timer nor thought listed by the next reactor.
        for g in std::mem::take(&mut *inner.holds.borrow_mut()) {
            g.set_listed(false);
            g.expire();
        }
        drop(inner.hold_timer.borrow_mut().take());
        // 2. Cancel every task: wake each one (parked on a ring op or on anything else) and
        //    drop its runnable. Dropping a task's future drops its ops, which hand their data
        //    to the records, and its sockets, which close through the ring.
        for _ in 0..64 {
            let mut wakers = inner.ring.borrow_mut().take_wakers();
            wakers.extend(inner.tasks.all_wakers());
            let woke = wakers.len();
            wakers.into_iter().for_each(Waker::wake);
            for r in inner.shared.remote.take() {
                drop(r);
            }
            let dropped = executor::drop_ready();
            if dropped == 0 && (woke == 0 || inner.tasks.live() == 0) {
                break;
            }
        }
        // 3. Cancel whatever is still in flight and wait for the kernel to give every buffer
        //    back. Closing the ring fd alone would not make this synchronous.
        //    Only what the kernel may still touch is waited for: a completed op whose future
        //    outlives the reactor (returned from `block_on`) keeps its data, and the kernel
        //    is done with it.
        inner.run_deferred_work();
        inner.ring.borrow_mut().cancel_all();
        let deadline = Instant::now() + TEARDOWN_DEADLINE;
        let mut cqes = Vec::new();
        while inner.ring.borrow().kernel_owned() > 0 && Instant::now() < deadline {
            let r = inner
                .ring
                .borrow_mut()
                .enter(true, Some(Duration::from_millis(50)));
            if r.is_err() {
                break;
            }
            reap_and_complete(inner, &mut cqes);
            executor::drop_ready();
            inner.run_deferred_work();
        }
        let left = inner.ring.borrow().kernel_owned();
        if left > 0 {
            tracing::warn!(
                left,
                "ioxide: ops still in flight at teardown; leaking their buffers"
            );
            inner.ring.borrow_mut().leak_in_flight();
            // Ops of this reactor that outlive it (returned from `block_on`) must not hand
            // their data back either.
            let _ = LEAKED.try_with(|l| l.borrow_mut().push(inner.id));
            std::mem::forget(std::mem::take(&mut *inner.deferred_work.borrow_mut()));
        }
        executor::drop_ready();
        CURRENT.with(|c| c.borrow_mut().take());
        LOCAL_ID.with(|l| l.set(0));
    }
}
