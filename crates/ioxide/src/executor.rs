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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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

/// Spawns `future` as a task of the reactor described by `shared`.
pub(crate) fn spawn_on<F>(shared: &Arc<Shared>, future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let shared = shared.clone();
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
