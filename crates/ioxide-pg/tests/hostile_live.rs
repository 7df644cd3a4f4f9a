//! Malformed server bytes on a connection that is already established and working (the
//! issue's "a fake-server test per malformed-input class, each ending in a clear error and a
//! broken connection, with no panic"). `conn_hostile.rs` covers most classes on the first
//! exchange or during startup; here every fake completes a normal handshake, answers one
//! query correctly, and only then — on the next exchange, with a second query pipelined
//! behind the first — sends the hostile bytes. Each case asserts:
//!
//! * the query the bytes answer fails with the right kind of error, whose text says what
//!   happened, detected from the bytes (fast, not by a timer);
//! * the connection is broken;
//! * the query pipelined behind it (sent, in flight) fails too, with the same cause, rather
//!   than hanging;
//! * a query issued afterwards fails at once, is never sent, and still names the cause.
//!
//! Every await is bounded (`within`), and every body runs under `support::run`'s hard limit.
//!
//! The property test at the end checks the live connection's receive-buffer handling
//! (`conn/state.rs`: drive, compact, growth past the receive buffer) with a VALID byte
//! stream written in random-sized pieces with pauses: the results must equal the unsplit
//! run's.
#![allow(clippy::unwrap_used)]

#[path = "hostile/support.rs"]
mod support;

use ioxide_pg::{PgConnection, PgError, PgOptions, QueryResult};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};
use support::*;
use testkit::{backend, frontend, FakeServer, Step};

/// The bound on each await in these tests: below the 3 s command timeout `opts` sets, so a
/// hang shows as a hang and is not masked by a timeout error.
const STEP: Duration = Duration::from_secs(2);

/// A query on an already broken connection must fail at least this fast.
const AT_ONCE: Duration = Duration::from_millis(250);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match ioxide::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {STEP:?} (hang)"),
    }
}

/// Polls every future (in order, so commands are enqueued in order) until all are done.
async fn join_all<'a, T>(futs: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
    let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    poll_fn(|cx| {
        for (slot, fut) in out.iter_mut().zip(futs.iter_mut()) {
            if let Some(f) = fut {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *slot = Some(v);
                    *fut = None;
                }
            }
        }
        if out.iter().all(Option::is_some) {
            Poll::Ready(out.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (mut ra, mut rb) = (None, None);
    poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            if let (Some(x), Some(y)) = (ra.take(), rb.take()) {
                return Poll::Ready((x, y));
            }
        }
        Poll::Pending
    })
    .await
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A frame header (tag + raw length field), no body.
fn header(tag: u8, len: u32) -> Vec<u8> {
    let mut h = vec![tag];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

// ---------------------------------------------------------------------------------------
// One malformed-input class per test, on the second exchange of a working connection
// ---------------------------------------------------------------------------------------

/// How the second exchange went.
struct Round {
    /// The warm-up query's result (the connection worked).
    warm: QueryResult,
    /// The query the hostile bytes answered.
    head: PgError,
    /// The query pipelined behind it.
    behind: PgError,
    broken: bool,
    /// From issuing the pair to both failing.
    took: Duration,
    /// A query issued after the break.
    later: PgError,
    later_took: Duration,
    /// Tags of the frontend messages the fake read.
    received: Vec<u8>,
}

/// A normal handshake; the fake reads the warm-up Query and answers `warm_reply`; then it
/// reads the two pipelined Queries and plays `hostile`.
fn second_round_with(
    warm_reply: Vec<u8>,
    hostile: Vec<Step>,
    tweak: impl FnOnce(PgOptions) -> PgOptions,
) -> Round {
    let mut steps = vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send(warm_reply),
        Step::ReadMessage,
        Step::ReadMessage,
    ];
    steps.extend(hostile);
    let fake = FakeServer::start(steps).expect("fake server");
    let o = tweak(opts(fake.port()));
    let mut round = run(async {
        let conn = within("connect", PgConnection::connect(&o))
            .await
            .expect("the handshake is valid");
        let warm = within("the warm-up query", conn.query("SELECT 1"))
            .await
            .expect("the warm-up reply is valid");
        assert!(!conn.is_broken(), "the warm-up left the connection working");
        let started = Instant::now();
        let (head, behind) = within(
            "the pipelined pair",
            join2(conn.query("SELECT hostile"), conn.query("SELECT behind")),
        )
        .await;
        let took = started.elapsed();
        let head = head.expect_err("the hostile reply must fail the query it answers");
        let behind = behind.expect_err("the query pipelined behind it must fail too");
        let broken = conn.is_broken();
        let started = Instant::now();
        let later = within("a query after the break", conn.query("SELECT later"))
            .await
            .expect_err("a broken connection runs nothing");
        let later_took = started.elapsed();
        Round {
            warm,
            head,
            behind,
            broken,
            took,
            later,
            later_took,
            received: Vec::new(),
        }
    });
    round.received = fake.connections()[0]
        .received
        .iter()
        .map(|m| m[0])
        .collect();
    round
}

fn second_round(hostile: Vec<Step>) -> Round {
    second_round_with(backend::simple_query_result("n", "1"), hostile, |o| o)
}

impl Round {
    /// The failure contract; `needles` must appear in every error's text.
    #[track_caller]
    fn assert_contract(&self, needles: &[&str]) {
        let e = &self.head;
        assert!(self.broken, "the connection must be broken after: {e}");
        assert!(e.is_transport(), "{e}");
        assert!(e.was_sent(), "the query reached the server: {e}");
        assert_mentions(e, needles);
        assert_fast(e, self.took);

        let b = &self.behind;
        assert!(b.is_transport(), "{b}");
        assert_eq!(b.is_protocol(), e.is_protocol(), "same cause: {e} / {b}");
        assert!(b.was_sent(), "the pipelined query reached the server: {b}");
        assert_mentions(b, needles);

        let l = &self.later;
        assert!(!l.was_sent(), "nothing is sent on a broken connection: {l}");
        assert!(l.is_transport() || l.is_closed(), "{l}");
        assert!(!l.is_timeout(), "{l}");
        assert_mentions(l, needles);
        assert!(self.later_took < AT_ONCE, "took {:?}", self.later_took);

        assert_eq!(
            self.received, b"QQQ",
            "the fake read the warm-up and the pair, and nothing after"
        );
    }
}

#[test]
fn frame_length_below_four_on_a_working_connection_breaks_it() {
    for len in 0u32..=3 {
        // The bad header right behind a valid row (one segment), and split across two
        // writes so the receive sees a partial header first.
        let bad = header(b'D', len);
        let good = concat(&[
            backend::row_description(&["a"]),
            backend::data_row(&[Some("1")]),
        ]);
        let layouts = [
            vec![
                Step::Send(concat(&[good.clone(), bad.clone(), vec![0; 8]])),
                Step::StallForever,
            ],
            vec![
                Step::Send(concat(&[good, bad[..2].to_vec()])),
                Step::Stall(Duration::from_millis(20)),
                Step::Send(bad[2..].to_vec()),
                Step::StallForever,
            ],
        ];
        for hostile in layouts {
            let r = second_round(hostile);
            assert_eq!(r.warm.value(), Some("1"));
            assert!(r.head.is_protocol(), "{}", r.head);
            r.assert_contract(&[
                "DataRow ('D')",
                &format!("announces length {len},"),
                "below the minimum of 4",
            ]);
        }
    }
}

#[test]
fn frame_length_that_overflows_i32_on_a_working_connection_breaks_it() {
    // 0xFFFFFFFF and the smallest overflowing value, 0x80000000; as the first message of
    // the reply and after a row.
    for (len, prefix) in [
        (0xFFFF_FFFFu32, Vec::new()),
        (0x8000_0000, backend::row_description(&["a"])),
    ] {
        let r = second_round(vec![
            Step::Send(concat(&[prefix, header(b'D', len), vec![0x41; 64]])),
            Step::StallForever,
        ]);
        assert!(r.head.is_protocol(), "{}", r.head);
        r.assert_contract(&[
            "DataRow ('D')",
            &format!("announces length {len},"),
            "overflows a signed 32-bit length",
        ]);
    }
}

#[test]
fn frame_length_i32_max_is_refused_by_max_message_bytes_not_allocated() {
    let r = second_round(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            header(b'D', 0x7FFF_FFFF),
        ])),
        Step::StallForever,
    ]);
    assert!(r.head.is_protocol(), "{}", r.head);
    r.assert_contract(&["2147483648 bytes", "exceeds max_message_bytes"]);
}

#[test]
fn message_one_byte_over_max_message_bytes_on_a_working_connection_breaks_it() {
    // The smallest limit allowed; the warm-up reply carries a DataRow of exactly that size,
    // which must pass; the next reply announces one byte more.
    const MAX: usize = 1024;
    let at_limit = "x".repeat(MAX - 11);
    let row = backend::data_row(&[Some(&at_limit)]);
    assert_eq!(
        row.len(),
        MAX,
        "tag + length + field count + field length + value"
    );
    let warm = concat(&[
        backend::row_description(&["big"]),
        row,
        backend::command_complete("SELECT 1"),
        backend::ready_for_query(b'I'),
    ]);
    let over = u32::try_from(MAX).unwrap(); // length field excludes the tag: total MAX + 1
    let hostile = vec![
        Step::Send(concat(&[
            backend::row_description(&["big"]),
            header(b'D', over),
            vec![0x41; 100],
        ])),
        // Never the rest of the body: the refusal must come from the header alone.
        Step::StallForever,
    ];
    let r = second_round_with(warm, hostile, |o| o.max_message_bytes(MAX));
    assert_eq!(r.warm.value(), Some(at_limit.as_str()));
    assert!(r.head.is_protocol(), "{}", r.head);
    r.assert_contract(&[
        "backend message of 1025 bytes",
        "exceeds max_message_bytes (1024 bytes)",
    ]);
}

#[test]
fn tcp_reset_mid_reply_on_a_working_connection_breaks_it() {
    let row = backend::data_row(&[Some("hello")]);
    let r = second_round(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            row[..7].to_vec(),
        ])),
        // Let the client take the partial reply in, then RST (SO_LINGER 0 + close).
        Step::Stall(Duration::from_millis(50)),
        Step::Reset,
    ]);
    assert!(!r.head.is_protocol(), "{}", r.head);
    r.assert_contract(&["receiving from the server"]);
    for e in [&r.head, &r.behind, &r.later] {
        assert!(
            e.to_string().to_lowercase().contains("reset"),
            "error should say the connection was reset: {e}"
        );
        let kind = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        assert_eq!(kind, Some(std::io::ErrorKind::ConnectionReset), "{e}");
    }
}

#[test]
fn eof_mid_data_row_on_a_working_connection_breaks_it() {
    let row = backend::data_row(&[Some("hello")]);
    // Mid-header (3 of 5 bytes) and mid-body (header, field count, part of the value).
    for cut in [3, 12] {
        let r = second_round(vec![
            Step::Send(concat(&[
                backend::row_description(&["a"]),
                backend::data_row(&[Some("first")]),
                row[..cut].to_vec(),
            ])),
            Step::Stall(Duration::from_millis(30)),
            Step::Close,
        ]);
        assert!(!r.head.is_protocol(), "cut {cut}: {}", r.head);
        r.assert_contract(&["the server closed the connection"]);
    }
}

#[test]
fn message_out_of_place_on_a_working_connection_breaks_it() {
    // Well-framed messages that make no sense in the reply to a simple query.
    for (stray, name) in [
        (backend::parse_complete(), "unexpected ParseComplete ('1')"),
        (backend::bind_complete(), "unexpected BindComplete ('2')"),
    ] {
        let r = second_round(vec![
            Step::Send(concat(&[
                backend::row_description(&["a"]),
                backend::data_row(&[Some("1")]),
                stray,
                backend::command_complete("SELECT 1"),
                backend::ready_for_query(b'I'),
                // A whole valid reply for the pipelined query: it must not be accepted.
                backend::simple_query_result("b", "2"),
            ])),
            Step::StallForever,
        ]);
        assert!(r.head.is_protocol(), "{}", r.head);
        r.assert_contract(&[name, "a simple command"]);
    }
}

// ---------------------------------------------------------------------------------------
// Property: a valid stream in random pieces gives the same results as in one piece
// ---------------------------------------------------------------------------------------

type Outcome = Result<QueryResult, (Option<String>, String)>;

/// What the baseline must show for one query: `Ok((value, rows, tag))` or `Err(sqlstate)`.
type Expected = Result<(Option<String>, u64, String), String>;

fn notification(process_id: i32, channel: &str, payload: &str) -> Vec<u8> {
    let mut body = process_id.to_be_bytes().to_vec();
    body.extend_from_slice(channel.as_bytes());
    body.push(0);
    body.extend_from_slice(payload.as_bytes());
    body.push(0);
    backend::message(b'A', &body)
}

fn ok(value: Option<&str>, rows: u64, tag: &str) -> Expected {
    Ok((value.map(str::to_owned), rows, tag.to_owned()))
}

/// 20 pipelined simple queries: their SQL, the server's reply, what the client must see.
fn workload() -> Vec<(String, Vec<u8>, Expected)> {
    let rz = || backend::ready_for_query(b'I');
    let select = |n: i32| {
        (
            format!("SELECT {n}"),
            backend::simple_query_result("n", &n.to_string()),
            ok(Some(&n.to_string()), 1, "SELECT 1"),
        )
    };
    let rows = |k: usize| {
        let mut reply = backend::row_description(&["a", "b"]);
        for j in 0..k {
            let a = format!("r{j}");
            let b = (j % 3 != 0).then(|| "x".repeat(j));
            reply.extend(backend::data_row(&[Some(&a), b.as_deref()]));
        }
        reply.extend(backend::command_complete(&format!("SELECT {k}")));
        reply.extend(rz());
        let first = (k > 0).then_some("r0");
        (
            format!("SELECT rows {k}"),
            reply,
            ok(first, k as u64, &format!("SELECT {k}")),
        )
    };
    let error = |code: &str| {
        (
            format!("SELECT fail {code}"),
            concat(&[
                backend::error_response("ERROR", code, &format!("failure {code}")),
                rz(),
            ]),
            Err(code.to_owned()),
        )
    };
    let big = |len: usize| {
        let v = "b".repeat(len);
        (
            format!("SELECT big {len}"),
            backend::simple_query_result("big", &v),
            ok(Some(&v), 1, "SELECT 1"),
        )
    };
    let noisy = |i: usize| {
        (
            format!("SELECT noisy {i}"),
            concat(&[
                backend::notice_response("NOTICE", "00000", &format!("noise {i}")),
                backend::row_description(&["n"]),
                backend::parameter_status("application_name", &format!("pieces-{i}")),
                notification(77, "chan", &format!("payload {i}")),
                backend::data_row(&[Some("noisy")]),
                backend::notice_response("WARNING", "01000", "between"),
                backend::command_complete("SELECT 1"),
                notification(77, "chan", ""),
                rz(),
            ]),
            ok(Some("noisy"), 1, "SELECT 1"),
        )
    };
    let multi = || {
        (
            "SELECT 'x'; SELECT 'y' UNION ALL SELECT 'z'".to_owned(),
            concat(&[
                backend::row_description(&["a"]),
                backend::data_row(&[Some("x")]),
                backend::command_complete("SELECT 1"),
                backend::row_description(&["b"]),
                backend::data_row(&[Some("y")]),
                backend::data_row(&[Some("z")]),
                backend::command_complete("SELECT 2"),
                rz(),
            ]),
            ok(Some("x"), 2, "SELECT 2"),
        )
    };
    let error_after_rows = || {
        (
            "SELECT 1/(3-n) FROM generate_series(1,5) n".to_owned(),
            concat(&[
                backend::row_description(&["q"]),
                backend::data_row(&[Some("0")]),
                backend::data_row(&[Some("1")]),
                backend::error_response("ERROR", "22012", "division by zero"),
                rz(),
            ]),
            Err("22012".to_owned()),
        )
    };
    vec![
        select(1),
        rows(5),
        error("42P01"),
        select(42),
        // Larger than the 16 KiB receive buffer, twice over: the buffer must grow.
        big(40_000),
        noisy(5),
        rows(0),
        multi(),
        error("42703"),
        (
            String::new(),
            concat(&[backend::empty_query_response(), rz()]),
            ok(None, 0, ""),
        ),
        rows(50),
        select(7),
        // Just over the receive buffer.
        big(17_000),
        error_after_rows(),
        select(-3),
        noisy(15),
        rows(3),
        error("23505"),
        multi(),
        select(20),
    ]
}

struct Run {
    outcomes: Vec<Outcome>,
    broken: bool,
    application_name: Option<String>,
    received: Vec<Vec<u8>>,
}

/// Plays the workload: the fake reads all 20 Queries, then plays `reply`.
fn run_workload(sqls: &[String], reply: Vec<Step>) -> Run {
    let mut steps = vec![Step::Send(backend::handshake_ok())];
    steps.extend(sqls.iter().map(|_| Step::ReadMessage));
    steps.extend(reply);
    steps.push(Step::StallForever);
    let fake = FakeServer::start(steps).expect("fake server");
    let o = opts(fake.port());
    let (outcomes, broken, application_name) = run(async {
        let conn = within("connect", PgConnection::connect(&o))
            .await
            .expect("the handshake is valid");
        let futs = sqls
            .iter()
            .map(|sql| {
                Box::pin(conn.query(sql))
                    as Pin<Box<dyn Future<Output = Result<QueryResult, PgError>> + '_>>
            })
            .collect();
        let results = within("the pipelined workload", join_all(futs)).await;
        let outcomes: Vec<Outcome> = results
            .into_iter()
            .map(|r| r.map_err(|e| (e.sql_state().map(str::to_owned), e.to_string())))
            .collect();
        (
            outcomes,
            conn.is_broken(),
            conn.parameter("application_name"),
        )
    });
    Run {
        outcomes,
        broken,
        application_name,
        received: fake.connections()[0].received.clone(),
    }
}

fn xorshift64(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `stream` as Send steps of 1..=`max_piece` bytes, with `pauses` short stalls at random
/// piece boundaries (so the client's receive completes on partial frames).
fn split(stream: &[u8], seed: u64, max_piece: usize, pauses: usize) -> Vec<Step> {
    let mut rng = seed | 1;
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = 1 + (xorshift64(&mut rng) % max_piece as u64) as usize;
        let end = (at + n).min(stream.len());
        pieces.push(&stream[at..end]);
        at = end;
    }
    let mut pause_after = vec![false; pieces.len()];
    for _ in 0..pauses {
        let i = (xorshift64(&mut rng) % pieces.len() as u64) as usize;
        pause_after[i] = true;
    }
    let mut steps = Vec::with_capacity(pieces.len() + pauses);
    for (piece, pause) in pieces.into_iter().zip(pause_after) {
        steps.push(Step::Send(piece.to_vec()));
        if pause {
            let us = 200 + xorshift64(&mut rng) % 400;
            steps.push(Step::Stall(Duration::from_micros(us)));
        }
    }
    steps
}

#[test]
fn a_valid_stream_in_random_pieces_gives_the_same_results_as_unsplit() {
    let work = workload();
    let sqls: Vec<String> = work.iter().map(|(s, _, _)| s.clone()).collect();
    let stream: Vec<u8> = work.iter().flat_map(|(_, r, _)| r.clone()).collect();
    let expected_received: Vec<Vec<u8>> = sqls.iter().map(|s| frontend::query(s)).collect();

    // The baseline: the whole stream in one write, checked against what each reply means.
    let baseline = run_workload(&sqls, vec![Step::Send(stream.clone())]);
    assert_eq!(baseline.received, expected_received, "queries in order");
    assert!(!baseline.broken);
    assert_eq!(baseline.application_name.as_deref(), Some("pieces-15"));
    assert_eq!(baseline.outcomes.len(), work.len());
    for (i, (got, (_, _, want))) in baseline.outcomes.iter().zip(&work).enumerate() {
        let got_view: Expected = match got {
            Ok(r) => Ok((
                r.value().map(str::to_owned),
                r.rows(),
                r.command_tag().to_owned(),
            )),
            Err((state, text)) => Err(state.clone().unwrap_or_else(|| text.clone())),
        };
        assert_eq!(&got_view, want, "query {i} ({:?})", sqls[i]);
    }

    let config = Config {
        cases: 48,
        max_shrink_iters: 32,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5EED_CAFE),
        ..Config::default()
    };
    let pieces = prop_oneof![
        1 => 1usize..=3,
        2 => 4usize..=64,
        2 => 65usize..=4096,
        1 => 4097usize..=60_000,
    ];
    let mut runner = TestRunner::new(config);
    let result = runner.run(
        &(any::<u64>(), pieces, 0usize..=40),
        |(seed, max_piece, pauses)| {
            let split_run = run_workload(&sqls, split(&stream, seed, max_piece, pauses));
            prop_assert_eq!(&split_run.received, &expected_received);
            prop_assert!(!split_run.broken, "the connection broke on a valid stream");
            prop_assert_eq!(&split_run.application_name, &baseline.application_name);
            for (i, (got, want)) in split_run
                .outcomes
                .iter()
                .zip(&baseline.outcomes)
                .enumerate()
            {
                if got != want {
                    return Err(TestCaseError::fail(format!(
                        "query {i} ({:?}): split {got:?} != unsplit {want:?}",
                        sqls[i]
                    )));
                }
            }
            prop_assert_eq!(split_run.outcomes.len(), baseline.outcomes.len());
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
