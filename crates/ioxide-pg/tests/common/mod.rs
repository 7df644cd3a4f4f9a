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

/// What the test thread logs, as text: each event at or above a level, its level, then its
/// message and fields (`WARN: message="…" command="SET"`), from `start` until dropped.
///
/// One process-wide subscriber (installed once) writes each event into a buffer of the
/// thread that emitted it. Scoped subscribers (`set_default` per test thread) lost events
/// when tests ran in parallel: tracing caches a callsite's interest and the global max
/// level across every thread's dispatcher, and a callsite first hit while another test's
/// subscriber came or went could stay disabled for ours.
pub struct Capture {
    _not_send: std::marker::PhantomData<*const ()>,
}

thread_local! {
    static CAPTURED: std::cell::RefCell<Option<(tracing::Level, String)>> =
        const { std::cell::RefCell::new(None) };
}

impl Capture {
    /// Captures this thread's events at `max` or more severe.
    pub fn start(max: tracing::Level) -> Capture {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            tracing::subscriber::set_global_default(ThreadCapture)
                .expect("no other global tracing subscriber in the driver tests");
        });
        CAPTURED.with(|c| *c.borrow_mut() = Some((max, String::new())));
        Capture {
            _not_send: std::marker::PhantomData,
        }
    }

    /// What was captured so far.
    pub fn text(&self) -> String {
        CAPTURED.with(|c| {
            c.borrow()
                .as_ref()
                .map(|(_, t)| t.clone())
                .unwrap_or_default()
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURED.with(|c| *c.borrow_mut() = None);
    }
}

struct ThreadCapture;

struct Render<'a>(&'a mut String);

impl tracing::field::Visit for Render<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for ThreadCapture {
    // Whether an event is wanted depends on the thread: never cache a callsite's interest.
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        CAPTURED.with(|c| {
            c.try_borrow()
                .ok()
                .and_then(|c| c.as_ref().map(|(max, _)| m.level() <= max))
                .unwrap_or(false)
        })
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!("{}:", event.metadata().level());
        event.record(&mut Render(&mut line));
        line.push('\n');
        CAPTURED.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                if let Some((_, text)) = c.as_mut() {
                    text.push_str(&line);
                }
            }
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
