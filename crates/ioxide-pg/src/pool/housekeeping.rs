//! Connection lifetimes and idle timeouts: which connection to replace or close, and when
//! the maintenance task must wake for it.
//!
//! A connection past `max_lifetime` is replaced replacement first — the new connection joins,
//! then the old one takes no new commands and closes once nothing is in flight on it — one
//! connection per pool at a time, so capacity never dips and the server sees at most one
//! connection beyond `pool_size`. A connection idle past `idle_timeout` is closed while more
//! than `min_connections` are open, and the pool's target drops with it; requests that find
//! no idle connection raise the target again (`Inner::want_one_more`).

use super::connect::unit;
use super::state::{Inner, PoolState, Slot};
use crate::PgConnection;
use std::time::Instant;

/// Each connection's lifetime is drawn in [LIFETIME_JITTER_FLOOR, 1] × `max_lifetime`, so
/// connections opened together do not all expire together.
const LIFETIME_JITTER_FLOOR: f64 = 0.9;

impl Inner {
    /// When a connection opened at `now` is due for replacement.
    pub(crate) fn lifetime_from(&self, now: Instant, rng: &mut u64) -> Option<Instant> {
        let lifetime = self.max_lifetime?;
        let share = LIFETIME_JITTER_FLOOR + (1.0 - LIFETIME_JITTER_FLOOR) * unit(rng);
        now.checked_add(lifetime.mul_f64(share))
    }

    /// The serving connection past its lifetime the longest, if any may be replaced now: not
    /// rented (a renter keeps it until it comes back), not broken.
    pub(crate) fn expired(st: &PoolState, now: Instant) -> Option<usize> {
        st.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.rented && !s.conn.is_broken())
            .filter_map(|(i, s)| s.expires_at.filter(|&t| t <= now).map(|t| (i, t)))
            .min_by_key(|&(_, t)| t)
            .map(|(i, _)| i)
    }

    /// Whether a lifetime replacement may start (once any backoff is over): none is
    /// connecting, draining or closing, and the pool is not healing (short of its target, or
    /// a restart suspected: the heal logic's connects come first).
    fn may_replace(&self, st: &PoolState) -> bool {
        self.max_lifetime.is_some()
            && !st.closed
            && !st.replacing
            && !st.suspect
            && Self::serving(st) >= st.target
            && st.retiring.is_none()
            && st
                .retired_closing
                .as_ref()
                .is_none_or(PgConnection::is_broken)
    }

    /// Takes the (drained) retiring connection out of the pool: counted, and remembered until
    /// its socket has closed. Returns the handle to close with [`Inner::close_retired`],
    /// outside the borrow. (Its broken callback, when the close ends, wakes the maintenance
    /// task for the next replacement.)
    pub(crate) fn retire(st: &mut PoolState) -> Option<PgConnection> {
        let slot = st.retiring.take()?;
        st.stats.retired_total += 1;
        st.retired_closing = Some(slot.conn.share());
        Some(slot.conn)
    }

    /// Closes a retired connection gracefully (Terminate, then the socket) in the background.
    pub(crate) fn close_retired(conn: PgConnection) {
        if ioxide::Reactor::try_current().is_some() {
            drop(ioxide::spawn(conn.close()));
        }
        // Outside a reactor the handle just drops: nothing can run the close anyway.
    }

    /// One housekeeping pass (the maintenance task's): closes retiring connections that have
    /// drained and connections idle past `idle_timeout` (down to `min_connections`), and says
    /// whether to start a lifetime replacement (its `connecting` count already taken).
    pub(crate) fn housekeep(&self, now: Instant) -> bool {
        let mut closing: Vec<Slot> = Vec::new();
        let (replace, retired) = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return false;
            }
            if st
                .retired_closing
                .as_ref()
                .is_some_and(PgConnection::is_broken)
            {
                st.retired_closing = None;
            }
            let drained = st
                .retiring
                .as_ref()
                .is_some_and(|s| s.inflight == 0 && !s.rented);
            let retired = if drained { Self::retire(&mut st) } else { None };
            if let Some(idle) = self.idle_timeout {
                // Idle since this pass, unless idle at the last one with no command since.
                for s in st.slots.iter_mut() {
                    let issued = s.conn.commands_issued();
                    if issued != s.seen_commands || !idle_now(s) {
                        s.seen_commands = issued;
                        s.idle_since = now;
                    }
                }
                let mut open = st.slots.len();
                let mut closed = 0;
                // From the back: routing prefers the front, so the back idles first.
                let mut i = st.slots.len();
                while i > 0 && open > self.min_connections {
                    i -= 1;
                    let s = &st.slots[i];
                    let expired = s.idle_since.checked_add(idle).is_some_and(|t| t <= now);
                    if idle_now(s) && expired {
                        closing.push(st.slots.remove(i));
                        open -= 1;
                        closed += 1;
                    }
                }
                if closed > 0 {
                    st.target = st.target.saturating_sub(closed).max(self.min_connections);
                    st.stats.idle_closed_total += closed as u64;
                }
            }
            let replace = self.may_replace(&st)
                && now >= st.next_attempt
                && Self::expired(&st, now).is_some();
            if replace {
                st.replacing = true;
                st.connecting += 1;
            }
            (replace, retired)
        };
        if let Some(conn) = retired {
            Self::close_retired(conn);
        }
        // The last handles: each closes gracefully (Terminate), outside the borrow.
        drop(closing);
        replace
    }

    /// The next moment housekeeping has work: a lifetime up (or the end of the backoff that
    /// holds its replacement back), an idle timeout up.
    pub(crate) fn next_housekeeping(&self) -> Option<Instant> {
        if self.max_lifetime.is_none() && self.idle_timeout.is_none() {
            return None;
        }
        let st = self.st.borrow();
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(idle) = self.idle_timeout {
            if st.slots.len() > self.min_connections {
                st.slots
                    .iter()
                    .filter(|s| idle_now(s))
                    .filter_map(|s| s.idle_since.checked_add(idle))
                    .for_each(&mut at);
            }
        }
        // Not while a replacement connects or drains (its end pokes the task), nor through a
        // suspected restart (the heal logic's; the sweep looks again).
        let replaceable = self.may_replace(&st);
        if replaceable {
            let due = st
                .slots
                .iter()
                .filter(|s| !s.rented && !s.conn.is_broken())
                .filter_map(|s| s.expires_at)
                .min();
            if let Some(t) = due {
                // A backoff holds the replacement back until its end.
                at(t.max(st.next_attempt));
            }
        }
        next
    }
}

/// Nothing in flight (an abandoned command still draining counts), not rented, not broken.
fn idle_now(s: &Slot) -> bool {
    s.inflight == 0 && !s.rented && s.conn.in_flight() == 0 && !s.conn.is_broken()
}
