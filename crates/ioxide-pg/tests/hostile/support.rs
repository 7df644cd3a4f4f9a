//! Shared by the hostile-server tests (`conn_hostile.rs`, `hostile_more.rs`): the hard time
//! bound on every test body, fake-server options, and the assertions on errors.
#![allow(dead_code)]

use ioxide_pg::{PgConnection, PgError, PgOptions};
use std::future::Future;
use std::time::{Duration, Instant};
use testkit::{FakeServer, Step};

/// The hard bound on every test body.
pub const TEST_LIMIT: Duration = Duration::from_secs(5);
/// A failure detected from the bytes themselves must surface within this (far below the
/// 3 s connect/command timeouts the tests configure, so waiting for a timer would show).
pub const FAST: Duration = Duration::from_secs(1);

/// Runs a test body on a fresh reactor, failing the test if it does not finish in
/// [`TEST_LIMIT`].
pub fn run<T>(f: impl Future<Output = T>) -> T {
    ioxide::block_on(async {
        match ioxide::time::timeout(TEST_LIMIT, f).await {
            Ok(v) => v,
            Err(e) => panic!("test body did not finish: {e}"),
        }
    })
}

/// Options for a fake server on loopback: user `u`, password `p`, 3 s timeouts.
pub fn opts(port: u16) -> PgOptions {
    PgOptions::new()
        .host("127.0.0.1")
        .port(port)
        .user("u")
        .password("p")
        .connect_timeout(Duration::from_secs(3))
        .command_timeout(Duration::from_secs(3))
}

#[track_caller]
pub fn assert_mentions(e: &PgError, needles: &[&str]) {
    let text = e.to_string();
    for n in needles {
        assert!(text.contains(n), "error {text:?} should mention {n:?}");
    }
}

/// Connects to a fake playing `steps`; returns the connect error, how long it took, and the
/// fake (kept alive until the caller is done with it).
pub fn startup_error_with(
    steps: Vec<Step>,
    tweak: impl FnOnce(PgOptions) -> PgOptions,
) -> (PgError, Duration, FakeServer) {
    let fake = FakeServer::start(steps).expect("fake server");
    let o = tweak(opts(fake.port()));
    let started = Instant::now();
    let e = run(PgConnection::connect(&o)).expect_err("the connect must fail");
    (e, started.elapsed(), fake)
}

pub fn startup_error(steps: Vec<Step>) -> (PgError, Duration, FakeServer) {
    startup_error_with(steps, |o| o)
}

/// The failure came from the bytes (not a timer), and fast.
#[track_caller]
pub fn assert_fast(e: &PgError, took: Duration) {
    assert!(!e.is_timeout(), "detected by a timer, not the bytes: {e}");
    assert!(took < FAST, "took {took:?} to fail: {e}");
}
