//! Time on the ring: `sleep`, `timeout` and periodic tickers are `IORING_OP_TIMEOUT` ops —
//! no timer thread, no timerfd.

use crate::ring::{self, Op, TimeoutOp};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The time the current loop turn began (when the reactor last returned from the kernel):
/// one clock read per turn instead of one per call, for deadlines and ages that do not need
/// better than a turn's precision (a turn is normally microseconds; the reactor's run budget
/// bounds it). Outside a reactor, `Instant::now()`.
pub fn now() -> Instant {
    crate::reactor::with_current(|inner| inner.turn_time.get()).unwrap_or_else(Instant::now)
}

/// A future that completes after a duration. The ring timeout is armed on first poll (so a
/// `Sleep` may be created outside the reactor that awaits it); dropping it cancels the timeout.
pub struct Sleep {
    duration: Duration,
    op: Option<Op<TimeoutOp>>,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("duration", &self.duration)
            .finish()
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let duration = self.duration;
        let op = self.op.get_or_insert_with(|| ring::timeout(duration));
        match Pin::new(op).poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(e)) => {
                // Only possible when polled outside a reactor or if the ring failed: a
                // programming or environment error a caller could not handle anyway.
                panic!("ioxide: sleep failed ({e}); is a reactor running on this thread?")
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep { duration, op: None }
}

/// Completes at `deadline` (at once if it has passed).
pub fn sleep_until(deadline: Instant) -> Sleep {
    sleep(deadline.saturating_duration_since(Instant::now()))
}

/// The error of [`timeout`]: the inner future did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}

/// Runs `future` for at most `duration`. On expiry the inner future is dropped (cancelling
/// its ring ops) and `Err(Elapsed)` is returned.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: None,
        duration,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`timeout`].
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Option<Sleep>,
        duration: Duration,
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("duration", &self.duration)
            .finish()
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let duration = *this.duration;
        // The ring timeout is armed on first poll, so an unpolled Timeout costs nothing.
        let sleep = this.sleep.get_or_insert_with(|| sleep(duration));
        match Pin::new(sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(duration))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Fires every `period`, measured from when it was created (missed ticks are skipped, never
/// bunched up).
#[derive(Debug)]
pub struct Ticker {
    period: Duration,
    next: Instant,
}

impl Ticker {
    /// A ticker whose first tick is one `period` from now. A zero period is taken as 1 ms (a
    /// ticker must leave the loop time to do anything else); a period too long to represent
    /// never fires.
    pub fn new(period: Duration) -> Ticker {
        let period = if period.is_zero() {
            Duration::from_millis(1)
        } else {
            period
        };
        let now = Instant::now();
        Ticker {
            period,
            next: now.checked_add(period).unwrap_or_else(|| far_future(now)),
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Waits for the next tick and returns its scheduled instant.
    pub async fn tick(&mut self) -> Instant {
        let at = self.next;
        sleep_until(at).await;
        let now = Instant::now();
        self.next = match at.checked_add(self.period) {
            Some(next) if next > now => next,
            _ => {
                // Skip the ticks we missed while the reactor was busy.
                let behind = now.saturating_duration_since(at).as_nanos() / self.period.as_nanos();
                u32::try_from(behind + 1)
                    .ok()
                    .and_then(|n| self.period.checked_mul(n))
                    .and_then(|d| at.checked_add(d))
                    .unwrap_or_else(|| far_future(now))
            }
        };
        at
    }
}

/// An instant no ticker reaches: 30 years from `now` (or `now` itself if even that cannot be
/// represented, which no monotonic clock gets near).
fn far_future(now: Instant) -> Instant {
    now.checked_add(Duration::from_secs(30 * 365 * 24 * 3600))
        .unwrap_or(now)
}

/// Spawns a task on the current reactor that calls `f` every `period` until `f` returns
/// `false` (or the reactor shuts down). For services' periodic sweeps.
pub fn every(period: Duration, mut f: impl FnMut() -> bool + 'static) -> crate::JoinHandle<()> {
    crate::spawn(async move {
        let mut ticker = Ticker::new(period);
        loop {
            ticker.tick().await;
            if !f() {
                return;
            }
        }
    })
}
