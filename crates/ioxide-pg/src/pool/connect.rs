//! Connecting: how many connects to start, when the next probe is due, what a finished
//! connect does to the pool, and the backoff between failed ones.

use super::state::{Inner, PoolState, Slot};
use crate::{PgConnection, PgError};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// The retry step (±50 %) while requests wait and the last walk found a host that answered
/// but did not fit `target_session_attrs`: one connect to the standby per ~5 ms during a
/// promotion, where a pool connecting per waiting request would open one per request.
const MISFIT_RETRY: Duration = Duration::from_millis(5);
/// First reconnect delay after a failed connect; doubles per failure up to `BACKOFF_CAP`.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Longest reconnect delay, so a restarted server is reused within about this long.
const BACKOFF_CAP: Duration = Duration::from_millis(500);

impl Inner {
    /// How many connects to start now to head back to the target (`size`, unless idle_timeout
    /// closed connections no demand has reopened): all missing ones when healthy,
    /// one probe first after connections broke (then the rest once it connects), one probe
    /// at a time (after the backoff) while connects fail. `urgent` (a request found
    /// no live connection) starts one more at once, even beside probes in flight (up to
    /// `size + 1` in flight; `connected` closes a surplus connection): a probe begun before
    /// the server came back may still be waiting on a half-started server, and the request
    /// must not wait for its verdict.
    pub(crate) fn connects_to_start(&self, now: Instant, urgent: bool) -> usize {
        let mut st = self.st.borrow_mut();
        if st.closed {
            return 0;
        }
        let have = Self::serving(&st);
        let want = st.target;
        let n = if st.failures == 0 && !st.suspect {
            want.saturating_sub(have)
        } else if st.failures == 0 && st.connecting == 0 && have < want {
            // Coalesced: one probe after connections broke (see `suspect`).
            1
        } else if urgent && st.slots.is_empty() {
            // At most one beyond `size` in flight (`connected` closes a surplus connection).
            usize::from(st.connecting <= self.size)
        } else if have < want && st.connecting == 0 && now >= st.next_attempt {
            1
        } else {
            0
        };
        st.connecting += n;
        n
    }

    /// Connections serving or on their way: open (not retiring), plus connects in flight
    /// other than a lifetime replacement (which stands for a connection still open).
    pub(crate) fn serving(st: &PoolState) -> usize {
        st.slots.len() + st.connecting.saturating_sub(usize::from(st.replacing))
    }

    /// When the next backoff probe is due, if one is wanted: connects are failing, none is
    /// in flight, and the pool is short of `size`.
    pub(crate) fn next_probe(&self) -> Option<Instant> {
        let st = self.st.borrow();
        let short = Self::serving(&st) < st.target;
        (!st.closed && st.failures > 0 && st.connecting == 0 && short).then_some(st.next_attempt)
    }

    /// Records a finished connect (begun at `started`; `replacement`: for a connection past
    /// its lifetime). Returns true when waiters that must fail fast are still waiting for a
    /// connect of their own.
    pub(crate) fn connected(
        self: &Rc<Self>,
        r: Result<PgConnection, PgError>,
        started: Instant,
        replacement: bool,
    ) -> bool {
        let mut st = self.st.borrow_mut();
        st.connecting -= 1;
        if replacement {
            st.replacing = false;
        }
        match r {
            Ok(conn) => {
                if st.closed {
                    return false;
                }
                if st.last_success.is_none_or(|t| t < started) {
                    st.last_success = Some(started);
                }
                st.suspect = false;
                let live = st.slots.iter().filter(|s| !s.conn.is_broken()).count();
                let mut retired = None;
                if live >= st.target {
                    // A replacement takes over from an expired connection; anything else is
                    // surplus (an urgent connect beside a probe that then succeeded too, or
                    // a connect idle_timeout overtook).
                    let old = if replacement {
                        Self::expired(&st, Instant::now())
                    } else {
                        None
                    };
                    let Some(i) = old else {
                        drop(st);
                        drop(conn);
                        return false;
                    };
                    let old = st.slots.remove(i);
                    let idle = old.inflight == 0 && !old.rented;
                    st.retiring = Some(old);
                    if idle {
                        retired = Self::retire(&mut st);
                    }
                }
                let id = st.next_id;
                st.next_id += 1;
                let weak: Weak<Inner> = Rc::downgrade(self);
                conn.on_broken(move || {
                    if let Some(p) = weak.upgrade() {
                        p.poke();
                    }
                });
                conn.set_shared(true);
                let weak: Weak<Inner> = Rc::downgrade(self);
                conn.on_drained(move || {
                    if let Some(p) = weak.upgrade() {
                        p.dispatch();
                    }
                });
                let now = Instant::now();
                let expires_at = self.lifetime_from(now, &mut st.rng);
                let conn_commands = conn.commands_issued();
                st.slots.push(Slot {
                    id,
                    conn,
                    inflight: 0,
                    rented: false,
                    expires_at,
                    idle_since: now,
                    seen_commands: conn_commands,
                });
                st.failures = 0;
                st.failing_since = None;
                st.timed_out_while_down = false;
                st.last_error = None;
                st.stats.opened_total += 1;
                drop(st);
                if let Some(conn) = retired {
                    Self::close_retired(conn);
                }
                self.dispatch();
                self.poke();
                false
            }
            Err(e) => {
                st.stats.connect_failures_total += 1;
                if st.last_success.is_some_and(|t| t > started) {
                    // Overtaken: a connect begun after this one has succeeded since, so this
                    // failure is old news — no backoff, no "down" state, no failed waiters.
                    tracing::debug!(error = %e, "pool connect failed after a later one succeeded");
                    return false;
                }
                st.failures = st.failures.saturating_add(1);
                st.failing_since.get_or_insert_with(Instant::now);
                // Requests are waiting for a connection right now: retry at the first
                // step's pace, not the growing backoff meant for a server down for long
                // (which the waiters' own deadline, acquire_timeout, bounds anyway).
                let step = if st.waiters.is_empty() {
                    st.failures
                } else {
                    1
                };
                let delay = if !st.waiters.is_empty() && self.target.misfit_seen() {
                    // A host answered but did not fit (a standby of a read-write pool):
                    // a promotion may be under way, and the first connect after it ends
                    // is the pool's failover time. Probe at a short step meanwhile.
                    MISFIT_RETRY.mul_f64(0.5 + unit(&mut st.rng))
                } else {
                    backoff(step, &mut st.rng)
                };
                st.next_attempt = Instant::now() + delay;
                st.last_error = Some(e.to_string());
                let fatal = !transient(&e);
                // Warn on the first failure and then at powers of two, not on every probe.
                if st.failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = st.failures, ?delay, "pool connect failed");
                } else {
                    tracing::debug!(error = %e, failures = st.failures, ?delay, "pool connect failed");
                }
                drop(st);
                // A failed replacement leaves the expired connection serving: nobody waits
                // for want of it.
                let waiting = if replacement {
                    false
                } else if fatal {
                    self.fail_waiters(&e);
                    false
                } else {
                    self.fail_fast_waiters(&e, started)
                };
                self.poke();
                waiting
            }
        }
    }
}

/// Connect errors worth retrying: the transport, or the server not ready yet (starting up,
/// shutting down, too many connections). Authentication and configuration errors are not.
pub(crate) fn transient(e: &PgError) -> bool {
    if e.is_transport() || e.is_timeout() || e.is_closed() {
        return true;
    }
    matches!(
        e.sql_state(),
        Some("57P01" | "57P02" | "57P03" | "53300" | "08006" | "08001")
    )
}

/// Capped exponential backoff with ±50 % jitter, so reactors and processes that lost the
/// server together do not reconnect in lockstep.
pub(crate) fn backoff(failures: u32, rng: &mut u64) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << failures.min(10).saturating_sub(1));
    let base = exp.min(BACKOFF_CAP);
    base.mul_f64(0.5 + unit(rng))
}

/// A draw in [0, 1) from a xorshift generator, in steps of 1/1000.
pub(crate) fn unit(rng: &mut u64) -> f64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut rng = 12345;
        let first = backoff(1, &mut rng);
        assert!(
            first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE * 3 / 2,
            "{first:?}"
        );
        for _ in 0..100 {
            let d = backoff(30, &mut rng);
            assert!(d >= BACKOFF_CAP / 2 && d <= BACKOFF_CAP * 3 / 2, "{d:?}");
        }
        let a = backoff(8, &mut rng);
        let b = backoff(8, &mut rng);
        assert_ne!(a, b, "no jitter");
    }
}
