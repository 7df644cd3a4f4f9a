//! A server under connection churn: what its accept loop keeps per connection must not grow.
//! A test binary of its own, so the RSS it reads is this test's alone.
#![allow(clippy::unwrap_used)]

use ioxide::net::Stream;
use ioxide::{Reactor, Server};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn accepting_100k_short_connections_keeps_shutdown_wakers_and_rss_bounded() {
    const CONNECTIONS: usize = 100_000;
    const BASELINE_AFTER: usize = 10_000;
    let most_waiters = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (m, h) = (most_waiters.clone(), handled.clone());
    let server = Server::new()
        .bind("127.0.0.1:0".parse().unwrap())
        .reactors(1)
        .start(move |s: Stream| {
            let (m, h) = (m.clone(), h.clone());
            async move {
                // The accept loop has re-armed by now: what it holds is registered.
                let waiters = Reactor::current().shutdown_waiter_count();
                m.fetch_max(waiters, Ordering::Relaxed);
                h.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        })
        .unwrap();
    let addr = server.local_addr();
    let started = Instant::now();
    let mut baseline = 0;
    for i in 0..CONNECTIONS {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let _ = c.write_all(b"x");
        // Returns once the handler dropped the socket (EOF, or a reset since the byte was
        // never read): one connection at a time, and the server side closes first.
        let mut b = [0u8; 1];
        let _ = c.read(&mut b);
        if i + 1 == BASELINE_AFTER {
            baseline = rss_bytes();
        }
    }
    let after = rss_bytes();
    let took = started.elapsed();
    server.shutdown();
    server.join().unwrap();
    eprintln!(
        "{CONNECTIONS} connections in {took:?}; RSS {} KiB after {BASELINE_AFTER}, {} KiB after all; \
         at most {} shutdown wakers registered",
        baseline / 1024,
        after / 1024,
        most_waiters.load(Ordering::Relaxed)
    );
    assert_eq!(handled.load(Ordering::Relaxed), CONNECTIONS);
    let most = most_waiters.load(Ordering::Relaxed);
    assert!(most <= 4, "{most} shutdown wakers registered at once");
    assert!(
        after <= baseline + 1024 * 1024,
        "RSS grew by {} KiB over {} connections",
        (after.saturating_sub(baseline)) / 1024,
        CONNECTIONS - BASELINE_AFTER
    );
}
