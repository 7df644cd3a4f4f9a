//! Tasks: `async-task` runnables in a thread-local FIFO run queue.
//!
//! A waker fired on the reactor's own thread pushes the task straight onto the local queue; a
//! waker fired on another thread pushes onto the reactor's locked remote queue and rings its
//! eventfd doorbell (the only cross-thread path, never taken on the hot path).

use async_task::Runnable;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::reactor::Shared;

thread_local! {
    /// Id of the reactor running on this thread (0: none).
    pub(crate) static LOCAL_ID: Cell<u64> = const { Cell::new(0) };
    /// Tasks ready to run on this thread's reactor.
    pub(crate) static RUN_QUEUE: RefCell<VecDeque<Runnable>> = RefCell::new(VecDeque::with_capacity(256));
}

/// The queue a reactor's tasks land on when woken from another thread.
#[derive(Default)]
pub(crate) struct RemoteQueue {
    queue: Mutex<Vec<Runnable>>,
}

impl RemoteQueue {
    pub(crate) fn push(&self, r: Runnable) {
        match self.queue.lock() {
            Ok(mut q) => q.push(r),
            Err(poisoned) => poisoned.into_inner().push(r),
        }
    }

    pub(crate) fn take(&self) -> Vec<Runnable> {
        match self.queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

fn schedule(shared: &Arc<Shared>, runnable: Runnable) {
    let here = LOCAL_ID.try_with(Cell::get).unwrap_or(0);
    if here == shared.id {
        // Same thread: straight onto the local queue (if the thread is being torn down the
        // runnable is dropped, which cancels the task).
        let _ = RUN_QUEUE.try_with(|q| q.borrow_mut().push_back(runnable));
    } else {
        shared.remote.push(runnable);
        shared.ring_doorbell();
    }
}

/// Every live task of a reactor, by the waker it was first polled with, so teardown can
/// cancel tasks parked on anything (a channel, a waker stored in some state), not only those
/// parked on ring ops — otherwise a task whose waker lives inside state the task itself keeps
/// alive would never be dropped, and its sockets never closed.
#[derive(Default)]
pub(crate) struct TaskRegistry {
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl TaskRegistry {
    fn register(&self, waker: Waker) -> usize {
        let mut wakers = self.wakers.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                wakers[i] = Some(waker);
                i
            }
            None => {
                wakers.push(Some(waker));
                wakers.len() - 1
            }
        }
    }

    fn unregister(&self, i: usize) {
        let w = self.wakers.borrow_mut().get_mut(i).and_then(Option::take);
        if w.is_some() {
            self.free.borrow_mut().push(i);
        }
        drop(w);
    }

    /// Clones of every live task's waker (teardown).
    pub(crate) fn all_wakers(&self) -> Vec<Waker> {
        self.wakers.borrow().iter().flatten().cloned().collect()
    }

    pub(crate) fn live(&self) -> usize {
        self.wakers.borrow().iter().flatten().count()
    }
}

pin_project_lite::pin_project! {
    /// A spawned future, registered with its reactor's [`TaskRegistry`] from its first poll
    /// until it completes or is dropped.
    struct Tracked<F> {
        #[pin]
        future: F,
        id: Option<usize>,
        registry: Rc<TaskRegistry>,
    }

    impl<F> PinnedDrop for Tracked<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(id) = this.id.take() {
                this.registry.unregister(id);
            }
        }
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.id.is_none() {
            *this.id = Some(this.registry.register(cx.waker().clone()));
        }
        let out = this.future.poll(cx);
        if out.is_ready() {
            if let Some(id) = this.id.take() {
                this.registry.unregister(id);
            }
        }
        out
    }
}

/// Spawns `future` as a task of the reactor described by `shared`.
pub(crate) fn spawn_on<F>(
    shared: &Arc<Shared>,
    registry: &Rc<TaskRegistry>,
    future: F,
) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let shared = shared.clone();
    let future = Tracked {
        future,
        id: None,
        registry: registry.clone(),
    };
    let (runnable, task) = async_task::Builder::new()
        .propagate_panic(true)
        .spawn_local(move |()| future, move |r| schedule(&shared, r));
    runnable.schedule();
    JoinHandle { task: Some(task) }
}

/// Runs up to `budget` ready tasks; returns how many ran.
pub(crate) fn run_ready(budget: usize) -> usize {
    let mut ran = 0;
    while ran < budget {
        let next = RUN_QUEUE.with(|q| q.borrow_mut().pop_front());
        match next {
            Some(r) => {
                r.run();
                ran += 1;
            }
            None => break,
        }
    }
    ran
}

pub(crate) fn has_ready() -> bool {
    RUN_QUEUE.with(|q| !q.borrow().is_empty())
}

/// Drops every queued runnable (which cancels its task); returns how many.
pub(crate) fn drop_ready() -> usize {
    let mut n = 0;
    loop {
        let next = RUN_QUEUE.with(|q| q.borrow_mut().pop_front());
        match next {
            Some(r) => {
                drop(r);
                n += 1;
            }
            None => return n,
        }
    }
}

/// A handle to a spawned task. Awaiting it gives the task's output (a panic in the task is
/// resumed in the awaiter). Dropping the handle lets the task run on, detached; use
/// [`JoinHandle::abort`] to cancel it.
#[derive(Debug)]
pub struct JoinHandle<T> {
    task: Option<async_task::Task<T>>,
}

impl<T> JoinHandle<T> {
    /// Cancels the task: its future is dropped the next time the executor sees it.
    pub fn abort(mut self) {
        drop(self.task.take());
    }

    /// Whether the task has finished (or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.task.as_mut() {
            Some(t) => Pin::new(t).poll(cx),
            None => Poll::Pending,
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.detach();
        }
    }
}
