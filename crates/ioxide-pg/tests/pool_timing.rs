//! Pool wake-ups measured in milliseconds (issue 17, defect 6): in a test binary of their own,
//! so the heavier hardening tests do not run beside them and stretch their timings.
#![allow(clippy::unwrap_used)]

mod common;

use common::{answer_queries, fake_opts, opts, run_within};
use ioxide::Reactor;
use ioxide_pg::PgPool;
use std::time::{Duration, Instant};
use testkit::{backend, FakeServer, Step};

// ---------------------------------------------------------------------------------------
// Acquire deadlines, and capacity freed by a finished cancel.
// ---------------------------------------------------------------------------------------

#[test]
fn an_acquire_timeout_of_50_ms_fails_between_50_and_80_ms() {
    run_within(Duration::from_secs(30), async {
        let pool = PgPool::start(
            &Reactor::current(),
            opts()
                .pool_size(1)
                .acquire_timeout(Duration::from_millis(50)),
        )
        .unwrap();
        // Warm first: a connect (SCRAM in a debug build) may take longer than 50 ms.
        while pool.stats().open < 1 {
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        let held = pool.rent().await.unwrap();
        for i in 0..8 {
            let t = Instant::now();
            let e = pool.query("SELECT 1").await.unwrap_err();
            let took = t.elapsed();
            assert_eq!(
                e.timeout_kind(),
                Some(ioxide_pg::TimeoutKind::Acquire),
                "{e}"
            );
            assert!(!e.was_sent());
            assert!(
                took >= Duration::from_millis(50) && took < Duration::from_millis(80),
                "attempt {i}: failed after {took:?}"
            );
            // Not in step with the pool's own sweep.
            ioxide::time::sleep(Duration::from_millis(37)).await;
        }
        drop(held);
    });
}

#[test]
fn a_waiter_behind_a_cancelled_command_resumes_when_the_cancel_finishes() {
    for round in 0..3 {
        // The timed-out command's reply comes first (at 0.3 s); the CancelRequest connection
        // is closed by the server 0.4 s after it opened (about 0.6-0.7 s). Only then may the
        // connection take the next command.
        let fake = FakeServer::start_with(|i| match i {
            0 => {
                let mut s = vec![Step::Send(backend::handshake_ok()), Step::ReadMessage];
                s.push(Step::Stall(Duration::from_millis(300)));
                let mut cancelled = backend::error_response(
                    "ERROR",
                    "57014",
                    "canceling statement due to user request",
                );
                cancelled.extend(backend::ready_for_query(b'I'));
                s.push(Step::Send(cancelled));
                s.extend(answer_queries(5));
                s
            }
            _ => vec![Step::Stall(Duration::from_millis(400)), Step::Close],
        })
        .unwrap();
        let o = fake_opts(fake.port())
            .pool_size(1)
            .pipeline_depth(1)
            .command_timeout(Duration::from_millis(200));
        let (a_failed, b_done) = run_within(Duration::from_secs(10), async move {
            let pool = PgPool::start(&Reactor::current(), o).unwrap();
            let t0 = Instant::now();
            let p = pool.clone();
            let a = ioxide::spawn(async move {
                let e = p.query("SELECT slow").await.unwrap_err();
                assert!(e.is_timeout(), "{e}");
                t0.elapsed()
            });
            ioxide::time::sleep(Duration::from_millis(20)).await;
            let r = pool.query("SELECT 42").await.unwrap();
            assert_eq!(r.value(), Some("42"));
            (a.await, t0.elapsed())
        });
        // The cancel connection opened when A failed and closed 400 ms later; B must follow
        // within a few ms of that, not at the pool's next 250 ms sweep.
        let after = b_done.saturating_sub(a_failed);
        assert!(
            after >= Duration::from_millis(380) && after < Duration::from_millis(460),
            "round {round}: B finished {after:?} after A failed"
        );
        assert_eq!(fake.accepted(), 2, "one connection and one CancelRequest");
    }
}
