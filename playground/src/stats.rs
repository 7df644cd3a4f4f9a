//! `/stats`: pool statistics per reactor.
//!
//! Pools are per reactor and share nothing, so no reactor can read another's pool. Each
//! reactor publishes a snapshot of its own `PgPool::stats()` to this board every 250 ms
//! (`app::STATS_REFRESH`); `/stats` answers with the answering reactor's *live* numbers and
//! the other reactors' *last snapshots*, each with its age. The board's lock is taken four
//! times a second per reactor and once per `/stats` request — never by a query.

use ioxide_pg::PoolStats;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// The last published statistics of every reactor.
#[derive(Debug)]
pub struct Board {
    slots: Mutex<Vec<Option<(PoolStats, Instant)>>>,
}

impl Board {
    /// A board for `reactors` reactors, none published yet.
    pub fn new(reactors: usize) -> Board {
        Board {
            slots: Mutex::new(vec![None; reactors]),
        }
    }

    /// Records reactor `index`'s statistics.
    pub fn publish(&self, index: usize, stats: PoolStats) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some((stats, Instant::now()));
        }
    }

    /// The JSON document: `{"answered_by":0,"pool_size":8,"pipeline_depth":1,
    /// "refresh_ms":250,"total":{…},"reactors":[{"reactor":0,"age_ms":0,…},…]}`. A reactor
    /// that has not published yet shows `"age_ms":null` and no counters.
    pub fn json(
        &self,
        current: usize,
        live: PoolStats,
        pool_size: usize,
        pipeline_depth: usize,
    ) -> String {
        let now = Instant::now();
        let snapshot: Vec<Option<(PoolStats, u128)>> = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if i == current {
                        Some((live, 0))
                    } else {
                        s.map(|(st, at)| (st, now.saturating_duration_since(at).as_millis()))
                    }
                })
                .collect()
        };
        let mut total = PoolStats::default();
        let mut reactors = String::new();
        for (i, s) in snapshot.iter().enumerate() {
            if i > 0 {
                reactors.push(',');
            }
            match s {
                Some((st, age)) => {
                    add(&mut total, st);
                    let _ = write!(reactors, "{{\"reactor\":{i},\"age_ms\":{age},");
                    counters(&mut reactors, st);
                    reactors.push('}');
                }
                None => {
                    let _ = write!(reactors, "{{\"reactor\":{i},\"age_ms\":null}}");
                }
            }
        }
        let mut out = String::with_capacity(256 + reactors.len());
        let _ = write!(
            out,
            "{{\"answered_by\":{current},\"pool_size\":{pool_size},\
             \"pipeline_depth\":{pipeline_depth},\"refresh_ms\":{},\"total\":{{",
            crate::app::STATS_REFRESH.as_millis()
        );
        counters(&mut out, &total);
        let _ = write!(out, "}},\"reactors\":[{reactors}]}}");
        out
    }
}

/// `"open":8,"idle":8,…` (no braces).
fn counters(out: &mut String, s: &PoolStats) {
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "\"open\":{},\"idle\":{},\"in_flight\":{},\"waiting\":{},\"connecting\":{},\
         \"opened_total\":{},\"broken_total\":{},\"timeouts_total\":{},\"retries_total\":{},\
         \"connect_failures_total\":{}",
        s.open,
        s.idle,
        s.in_flight,
        s.waiting,
        s.connecting,
        s.opened_total,
        s.broken_total,
        s.timeouts_total,
        s.retries_total,
        s.connect_failures_total
    );
}

fn add(total: &mut PoolStats, s: &PoolStats) {
    total.open += s.open;
    total.idle += s.idle;
    total.in_flight += s.in_flight;
    total.waiting += s.waiting;
    total.connecting += s.connecting;
    total.opened_total += s.opened_total;
    total.broken_total += s.broken_total;
    total.timeouts_total += s.timeouts_total;
    total.retries_total += s.retries_total;
    total.connect_failures_total += s.connect_failures_total;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_numbers_for_the_answering_reactor_snapshots_for_the_rest() {
        let board = Board::new(3);
        let mut published = PoolStats::default();
        published.open = 4;
        published.idle = 3;
        board.publish(1, published);
        board.publish(7, published); // out of range: ignored
        let mut live = PoolStats::default();
        live.open = 8;
        live.in_flight = 2;
        let json = board.json(0, live, 8, 1);
        assert!(json.starts_with("{\"answered_by\":0,\"pool_size\":8,\"pipeline_depth\":1,"));
        assert!(
            json.contains("\"total\":{\"open\":12,\"idle\":3,\"in_flight\":2,"),
            "{json}"
        );
        assert!(
            json.contains("{\"reactor\":0,\"age_ms\":0,\"open\":8,"),
            "{json}"
        );
        assert!(json.contains("{\"reactor\":1,\"age_ms\":"), "{json}");
        assert!(
            json.ends_with("{\"reactor\":2,\"age_ms\":null}]}"),
            "{json}"
        );
    }
}
