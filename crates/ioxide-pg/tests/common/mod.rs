//! Shared helpers for the driver's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use ioxide_pg::PgOptions;
use std::future::Future;
use std::time::Duration;
use testkit::{backend, Cluster, Step};

/// Options for a cluster's test user over TCP.
pub fn opts_for(c: &Cluster) -> PgOptions {
    PgOptions::new()
        .host(c.host())
        .port(c.port())
        .user(c.user())
        .password(c.password())
        .database(c.database())
        .application_name("ioxide-pg-tests")
}

/// Options for the shared cluster.
pub fn opts() -> PgOptions {
    opts_for(testkit::shared_cluster())
}

/// Local ports of client-side ESTABLISHED TCP sockets to `port` on loopback.
pub fn established_to(port: u16) -> Vec<u16> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.split(':').nth(1))
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && f.get(3) == Some(&"01")
        })
        .filter_map(|l| {
            let local = l.split_whitespace().nth(1)?;
            u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
        })
        .collect()
}

/// Options for a fake server on loopback (user `u`, password `p`, 3 s connect timeout).
pub fn fake_opts(port: u16) -> PgOptions {
    PgOptions::new()
        .host("127.0.0.1")
        .port(port)
        .user("u")
        .password("p")
        .connect_timeout(Duration::from_secs(3))
}

/// A fake server's script: answer `n` simple queries with `42`, one at a time, then stall.
pub fn answer_queries(n: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..n {
        steps.push(Step::ReadMessage);
        steps.push(Step::Send(backend::simple_query_result("?column?", "42")));
    }
    steps.push(Step::StallForever);
    steps
}

/// Runs a test body on a fresh reactor, failing the test if it takes longer than `limit`.
pub fn run_within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    ioxide::block_on(async move {
        match ioxide::time::timeout(limit, f).await {
            Ok(v) => v,
            Err(e) => panic!("test body did not finish: {e}"),
        }
    })
}

/// An environment lookup over `pairs`, for `PgOptions::from_env_with`.
pub fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// The error text of a failed parse, or "no error".
pub fn err(r: Result<PgOptions, ioxide_pg::PgError>) -> String {
    r.err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "no error".into())
}

/// A `tracing` subscriber keeping every event at or above a level as text: its level, then
/// its message and fields (`WARN: message="…" command="SET"`).
#[derive(Clone)]
pub struct Capture {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    max: tracing::Level,
}

impl Capture {
    /// Every event, down to TRACE.
    pub fn all() -> Capture {
        Capture::at(tracing::Level::TRACE)
    }

    /// Events at `max` or more severe.
    pub fn at(max: tracing::Level) -> Capture {
        Capture {
            text: std::sync::Arc::default(),
            max,
        }
    }

    /// What was captured so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

struct Render<'a>(&'a mut String);

impl tracing::field::Visit for Render<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= self.max
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        use std::fmt::Write as _;
        let mut t = self.text.lock().unwrap();
        let _ = write!(t, "{}:", event.metadata().level());
        event.record(&mut Render(&mut t));
        t.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
