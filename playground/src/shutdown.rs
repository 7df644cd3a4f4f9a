//! The orderly stop on SIGINT/SIGTERM: stop taking requests, let in-flight ones finish within
//! the grace period, close every pool connection with Terminate, then stop the reactors.
//!
//! Why not `ioxide::Server::run_with`: it turns a signal straight into a reactor shutdown,
//! and a reactor ends (cancelling every task) as soon as its last connection is gone — a task
//! awaiting `PgPool::close()` would be cancelled before its Terminates leave. So `main`
//! catches the signals itself and runs the stop in two phases:
//!
//! 1. [`Lifecycle::request_drain`] wakes each reactor's [`drain`] task (the only
//!    cross-thread path, taken once): it stops the reactor's connections from reading new
//!    requests, waits until they have closed (at most `SHUTDOWN_GRACE_MS`), awaits
//!    `pool.close()`, and reports back ([`Lifecycle::wait_done`]).
//! 2. `main` then asks the server to shut down; no connection is left to wait for.

use crate::app::App;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Longest wait for a pool to close its connections (each sends Terminate and waits for
/// the server to hang up).
pub const POOL_CLOSE_BOUND: Duration = Duration::from_secs(3);

/// Cross-thread state of the stop (never touched while serving).
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    /// Drain tasks waiting for the signal (ioxide wakers may be fired from any thread).
    wakers: Mutex<Vec<Waker>>,
    /// Reactors that finished draining.
    done: Mutex<usize>,
    done_changed: Condvar,
}

impl Lifecycle {
    /// Tells every reactor to drain (idempotent).
    pub fn request_drain(&self) {
        self.draining.store(true, Ordering::Release);
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Resolves once [`Lifecycle::request_drain`] was called.
    pub fn drain_requested(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.draining.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(cx.waker().clone());
            // Checked again after registering: a request in between took the old list.
            if self.draining.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Called by a reactor once its pool is closed.
    pub fn reactor_done(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.done_changed.notify_all();
    }

    /// Blocks (on `main`'s thread) until `reactors` reactors are done or `until` passes;
    /// returns how many are done.
    pub fn wait_done(&self, reactors: usize, until: Instant) -> usize {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        while *done < reactors {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            done = self
                .done_changed
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *done
    }
}

/// Each reactor's stop task (spawned in `on_start`).
pub async fn drain(app: Rc<App>, lifecycle: Arc<Lifecycle>) {
    lifecycle.drain_requested().await;
    app.start_draining();
    let grace = app.config.shutdown_grace;
    if ioxide::time::timeout(grace, app.idle()).await.is_err() {
        tracing::warn!(
            connections = app.connections(),
            ?grace,
            "grace period over; closing the pool under in-flight requests"
        );
    }
    if ioxide::time::timeout(POOL_CLOSE_BOUND, app.pool.close())
        .await
        .is_err()
    {
        tracing::warn!("the pool did not close within {POOL_CLOSE_BOUND:?}");
    }
    lifecycle.reactor_done();
}
