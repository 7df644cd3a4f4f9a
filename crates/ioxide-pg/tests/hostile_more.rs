//! More hostile servers (issue 8, item 2): the phases `conn_hostile.rs` does not reach —
//! more of startup/authentication, the extended protocol, row streaming (`query_rows`),
//! asynchronous messages (notifications, notices, parameter status) arriving malformed or
//! out of place, ReadyForQuery in a wrong state, bytes after Terminate — and the pool's side
//! of the contract: a connection broken by hostile bytes is replaced.
//!
//! Same rules as `conn_hostile.rs`: every case ends in a clear error (its text is asserted),
//! a broken connection (or a failed connect), no panic, no hang (every body runs under a
//! hard timeout and byte-detected failures must come back well before any timer), and no
//! unbounded allocation (`max_message_bytes`).
#![allow(clippy::unwrap_used)]

#[path = "hostile/support.rs"]
mod support;

use ioxide::Reactor;
use ioxide_pg::{PgConnection, PgError, PgOptions, PgPool};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};
use support::*;
use testkit::{backend, FakeServer, Step};

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------
// Startup and authentication
// ---------------------------------------------------------------------------------------

fn auth_request(code: i32, data: &[u8]) -> Vec<u8> {
    backend::message(b'R', &[&code.to_be_bytes()[..], data].concat())
}

#[test]
fn negotiate_protocol_version_is_tolerated_and_the_handshake_goes_on() {
    // We ask for 3.0 with no `_pq_` options; a server may still answer that it only speaks
    // an older minor version (and name options it did not recognise). As libpq does for a
    // lower minor version, the driver logs it and goes on: the handshake completes, and
    // the connection serves.
    let mut body = 0i32.to_be_bytes().to_vec();
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(b"_pq_.hostile\0");
    let fake = FakeServer::start(vec![
        Step::Send(concat(&[
            backend::message(b'v', &body),
            backend::handshake_ok(),
        ])),
        Step::ReadMessage,
        Step::Send(backend::simple_query_result("a", "1")),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        assert_eq!(conn.query("SELECT a").await.unwrap().value(), Some("1"));
    });
}

#[test]
fn negotiate_protocol_version_then_silence_is_bounded_by_connect_timeout() {
    let mut body = 0i32.to_be_bytes().to_vec();
    body.extend_from_slice(&0i32.to_be_bytes());
    let (e, took, _fake) = startup_error_with(
        vec![
            Step::Send(backend::message(b'v', &body)),
            Step::StallForever,
        ],
        |o| o.connect_timeout(Duration::from_millis(300)),
    );
    assert!(e.is_timeout(), "{e}");
    assert_mentions(&e, &["connect timed out"]);
    assert!(took < FAST, "{took:?}");
}

#[test]
fn md5_request_with_a_truncated_salt_is_a_protocol_error() {
    let (e, took, fake) = startup_error(vec![
        Step::Send(auth_request(5, &[1, 2])),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["Authentication"]);
    assert_fast(&e, took);
    assert!(fake.connections()[0].received.is_empty(), "no reply sent");
}

#[test]
fn sasl_request_listing_no_mechanism_is_refused() {
    let (e, took, fake) = startup_error(vec![
        Step::Send(backend::authentication_sasl(&[])),
        Step::StallForever,
    ]);
    assert!(e.is_auth() || e.is_protocol(), "{e}");
    assert_mentions(&e, &["SCRAM-SHA-256"]);
    assert_fast(&e, took);
    assert!(fake.connections()[0].received.is_empty(), "no reply sent");
}

#[test]
fn sasl_request_with_an_unterminated_mechanism_list_is_a_protocol_error() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(auth_request(10, b"SCRAM-SHA-256")),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_fast(&e, took);
}

#[test]
fn sasl_continue_without_a_sasl_exchange_is_refused() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(auth_request(11, b"r=abc,s=c2FsdA==,i=4096")),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["unexpected Authentication ('R') during startup"]);
    assert_fast(&e, took);
}

#[test]
fn sasl_final_without_a_server_first_is_refused() {
    let (e, took, fake) = startup_error(vec![
        Step::Send(backend::authentication_sasl(&["SCRAM-SHA-256"])),
        Step::ReadMessage,
        Step::Send(auth_request(12, b"v=AAAA")),
        Step::StallForever,
    ]);
    assert!(e.is_protocol() || e.is_auth(), "{e}");
    assert_mentions(&e, &["SASL"]);
    assert_fast(&e, took);
    assert_eq!(fake.connections()[0].received.len(), 1);
}

#[test]
fn backend_key_data_with_a_short_body_is_a_protocol_error() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(concat(&[
            backend::authentication_ok(),
            backend::message(b'K', &[0, 0, 0, 1]),
        ])),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["BackendKeyData"]);
    assert_fast(&e, took);
}

#[test]
fn parameter_status_without_terminators_is_a_protocol_error() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(concat(&[
            backend::authentication_ok(),
            backend::message(b'S', b"server_version"),
        ])),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["ParameterStatus"]);
    assert_fast(&e, took);
}

#[test]
fn startup_error_response_with_an_unterminated_field_is_a_protocol_error() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(backend::message(b'E', b"SFATAL")),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["ErrorResponse"]);
    assert_fast(&e, took);
}

#[test]
fn server_closing_right_after_authentication_ok_is_a_transport_error() {
    let (e, took, _fake) =
        startup_error(vec![Step::Send(backend::authentication_ok()), Step::Close]);
    assert!(e.is_transport(), "{e}");
    assert_mentions(&e, &["closed the connection during startup"]);
    assert_fast(&e, took);
}

#[test]
fn a_second_authentication_ok_after_the_handshake_began_is_a_protocol_error() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(concat(&[
            backend::authentication_ok(),
            backend::parameter_status("server_version", "15.0"),
            backend::authentication_ok(),
        ])),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["unexpected Authentication ('R') during startup"]);
    assert_fast(&e, took);
}

#[test]
fn a_password_request_without_a_password_configured_is_refused_without_sending_one() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::authentication_cleartext_password()),
        Step::StallForever,
    ])
    .unwrap();
    let o = PgOptions::new()
        .host("127.0.0.1")
        .port(fake.port())
        .user("u")
        .connect_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let e = run(PgConnection::connect(&o)).unwrap_err();
    assert!(e.is_auth() || e.is_config(), "{e}");
    assert_mentions(&e, &["password"]);
    assert_fast(&e, started.elapsed());
    assert!(fake.connections()[0].received.is_empty(), "nothing sent");
}

/// A one-connection SCRAM server that answers the client's real nonce with the
/// server-first message built by `make(client_nonce)`, then stays silent. Its thread
/// returns whether the client went on to send its client-final message (its proof).
fn scram_first_server(make: fn(&str) -> String) -> (u16, std::thread::JoinHandle<bool>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        // The startup packet, after an SSLRequest (sslmode=prefer) answered `N`.
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                return false;
            }
            let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            let _ = s.read_exact(&mut startup);
            if startup != [0x04, 0xd2, 0x16, 0x2f] || s.write_all(b"N").is_err() {
                break;
            }
        }
        let _ = s.write_all(&backend::authentication_sasl(&["SCRAM-SHA-256"]));
        let mut head = [0u8; 5];
        if s.read_exact(&mut head).is_err() {
            return false;
        }
        let body_len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; body_len.saturating_sub(4)];
        if s.read_exact(&mut body).is_err() {
            return false;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let nonce = text
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .unwrap_or("")
            .to_owned();
        let _ = s.write_all(&auth_request(11, make(&nonce).as_bytes()));
        // A client-final ('p') would come next; a refusing client hangs up instead.
        let mut tag = [0u8; 1];
        matches!(s.read(&mut tag), Ok(1) if tag[0] == b'p')
    });
    (port, handle)
}

/// Connects to a [`scram_first_server`] on its own thread (so that even a reactor stuck
/// in PBKDF2 cannot hang the test); returns the error, how long it took, and whether the
/// client sent its proof.
fn scram_first_refusal(make: fn(&str) -> String) -> (PgError, Duration, bool) {
    let (port, server) = scram_first_server(make);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let o = opts(port).connect_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let r = ioxide::block_on(PgConnection::connect(&o)).map(|_| ());
        let _ = tx.send((r, started.elapsed()));
    });
    let (r, took) = rx.recv_timeout(TEST_LIMIT).unwrap_or_else(|_| {
        panic!("connect did not return within {TEST_LIMIT:?} (connect_timeout 2 s): the reactor is stuck")
    });
    let e = r.expect_err("the SCRAM exchange must fail");
    (e, took, server.join().unwrap())
}

#[test]
fn scram_server_first_with_a_huge_iteration_count_is_refused_before_any_pbkdf2() {
    // 2^31-1 iterations of HMAC-SHA-256 would stall the reactor for a long time
    // (postgres-protocol caps the count at 100 000).
    let (e, took, sent_proof) =
        scram_first_refusal(|n| format!("r={n}srv,s=c2FsdA==,i=2147483647"));
    assert!(e.is_auth(), "{e}");
    assert_mentions(&e, &["SCRAM server-first", "iteration count"]);
    assert_fast(&e, took);
    assert!(!sent_proof, "no proof for an absurd iteration count");
}

#[test]
fn scram_server_first_with_a_zero_iteration_count_is_refused() {
    let (e, took, sent_proof) = scram_first_refusal(|n| format!("r={n}srv,s=c2FsdA==,i=0"));
    assert!(e.is_auth(), "{e}");
    assert_mentions(&e, &["iteration"]);
    assert_fast(&e, took);
    assert!(!sent_proof, "no proof may be computed with zero iterations");
}

#[test]
fn scram_server_first_with_a_salt_that_is_not_base64_is_refused() {
    let (e, took, sent_proof) =
        scram_first_refusal(|n| format!("r={n}srv,s=@@not base64@@,i=4096"));
    assert!(e.is_auth(), "{e}");
    assert_mentions(&e, &["SCRAM server-first"]);
    assert_fast(&e, took);
    assert!(!sent_proof);
}

#[test]
fn scram_server_first_missing_the_salt_is_refused() {
    let (e, took, sent_proof) = scram_first_refusal(|n| format!("r={n}srv,i=4096"));
    assert!(e.is_auth(), "{e}");
    assert_mentions(&e, &["SCRAM server-first"]);
    assert_fast(&e, took);
    assert!(!sent_proof);
}

// ---------------------------------------------------------------------------------------
// Query phase: the extended protocol
// ---------------------------------------------------------------------------------------

/// How a query against a misbehaving fake ended.
struct Failure {
    err: PgError,
    broken: bool,
    took: Duration,
    /// Rows handed to a `query_rows` callback before the failure.
    rows_delivered: u64,
    fake: FakeServer,
}

impl Failure {
    /// A clear error naming `needles`, a broken connection, found from the bytes (fast).
    #[track_caller]
    fn assert_broken(&self, needles: &[&str]) {
        let e = &self.err;
        assert!(self.broken, "the connection must be broken after: {e}");
        assert!(e.is_transport() || e.is_closed(), "{e}");
        assert_mentions(e, needles);
        assert_fast(e, self.took);
    }
}

/// What the client runs against the fake.
#[derive(Clone, Copy)]
enum Op {
    /// `query_params("SELECT $1::int4", [1])`: Parse/Describe/Sync, then Bind/Execute/Sync.
    Params,
    /// `query_rows` of the same statement, counting rows in the callback.
    Rows,
    /// `query("SELECT hostile")` (simple protocol).
    Simple,
}

/// Connects (a normal handshake), then runs `op`; the fake answers the prepare (three
/// messages read) with `prepare` and, if given, the bind/execute (three more) with
/// `execute`. For `Op::Simple`, `prepare` is the reply to the one Query message.
fn failure_with(
    op: Op,
    prepare: Vec<u8>,
    execute: Option<Vec<u8>>,
    tweak: impl FnOnce(PgOptions) -> PgOptions,
) -> Failure {
    let mut steps = vec![Step::Send(backend::handshake_ok())];
    let reads = match op {
        Op::Simple => 1,
        Op::Params | Op::Rows => 3,
    };
    steps.extend(std::iter::repeat_n(Step::ReadMessage, reads));
    steps.push(Step::Send(prepare));
    if let Some(execute) = execute {
        steps.extend(std::iter::repeat_n(Step::ReadMessage, 3));
        steps.push(Step::Send(execute));
    }
    steps.push(Step::StallForever);
    let fake = FakeServer::start(steps).unwrap();
    let o = tweak(opts(fake.port()));
    let (err, broken, took, rows_delivered) = run(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        let started = Instant::now();
        let mut rows = 0u64;
        let err = match op {
            Op::Params => conn
                .query_params("SELECT $1::int4", &[&1i32])
                .await
                .map(|_| ())
                .unwrap_err(),
            Op::Rows => conn
                .query_rows("SELECT $1::int4", &[&1i32], |_row| {
                    rows += 1;
                    Ok(())
                })
                .await
                .map(|_| ())
                .unwrap_err(),
            Op::Simple => conn.query("SELECT hostile").await.map(|_| ()).unwrap_err(),
        };
        (err, conn.is_broken(), started.elapsed(), rows)
    });
    Failure {
        err,
        broken,
        took,
        rows_delivered,
        fake,
    }
}

fn failure(op: Op, prepare: Vec<u8>, execute: Option<Vec<u8>>) -> Failure {
    failure_with(op, prepare, execute, |o| o)
}

/// ParseComplete, ParameterDescription(int4), RowDescription(`columns`), ReadyForQuery.
fn prepare_reply(columns: &[&str]) -> Vec<u8> {
    concat(&[
        backend::parse_complete(),
        backend::parameter_description(&[23]),
        backend::row_description(columns),
        backend::ready_for_query(b'I'),
    ])
}

#[test]
fn ready_for_query_before_the_statement_description_breaks_the_connection() {
    let f = failure(
        Op::Params,
        concat(&[backend::parse_complete(), backend::ready_for_query(b'I')]),
        None,
    );
    f.assert_broken(&["unexpected ReadyForQuery ('Z')", "extended-protocol"]);
}

#[test]
fn parameter_description_announcing_more_types_than_it_carries_breaks_the_connection() {
    // Announces 5 parameter types, carries one.
    let mut body = 5i16.to_be_bytes().to_vec();
    body.extend_from_slice(&23u32.to_be_bytes());
    let f = failure(
        Op::Params,
        concat(&[
            backend::parse_complete(),
            backend::message(b't', &body),
            backend::row_description(&["a"]),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["ParameterDescription"]);
}

#[test]
fn truncated_row_description_in_a_prepare_breaks_the_connection() {
    // Announces 3 columns; the body holds one.
    let one = backend::row_description(&["a"]);
    let mut body = 3i16.to_be_bytes().to_vec();
    body.extend_from_slice(&one[7..]);
    let f = failure(
        Op::Params,
        concat(&[
            backend::parse_complete(),
            backend::parameter_description(&[23]),
            backend::message(b'T', &body),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["RowDescription"]);
}

#[test]
fn parameter_description_count_differing_from_the_parameters_sent_is_refused() {
    // The statement has one parameter ($1) and we send one; the server claims three.
    let f = failure(
        Op::Params,
        concat(&[
            backend::parse_complete(),
            backend::parameter_description(&[23, 23, 23]),
            backend::row_description(&["a"]),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    // Not a framing error: a clear error about the count, never a Bind with the wrong
    // number of values.
    assert_mentions(&f.err, &["parameter"]);
    let tags: Vec<u8> = f.fake.connections()[0]
        .received
        .iter()
        .map(|m| m[0])
        .collect();
    assert_eq!(tags, b"PDS", "nothing after the prepare");
}

#[test]
fn data_row_before_bind_complete_breaks_the_connection() {
    let f = failure(
        Op::Params,
        prepare_reply(&["a"]),
        Some(concat(&[
            backend::data_row(&[Some("1")]),
            backend::bind_complete(),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ])),
    );
    f.assert_broken(&["unexpected DataRow ('D')", "BindComplete"]);
}

#[test]
fn portal_suspended_without_a_row_limit_breaks_the_connection() {
    let f = failure(
        Op::Params,
        prepare_reply(&["a"]),
        Some(concat(&[
            backend::bind_complete(),
            backend::data_row(&[Some("1")]),
            backend::message(b's', &[]),
            backend::ready_for_query(b'I'),
        ])),
    );
    f.assert_broken(&["PortalSuspended"]);
}

#[test]
fn data_rows_for_a_statement_described_as_returning_no_data_break_the_connection() {
    let f = failure(
        Op::Params,
        concat(&[
            backend::parse_complete(),
            backend::parameter_description(&[23]),
            backend::no_data(),
            backend::ready_for_query(b'I'),
        ]),
        Some(concat(&[
            backend::bind_complete(),
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ])),
    );
    f.assert_broken(&["DataRow"]);
}

#[test]
fn ready_for_query_before_command_complete_breaks_the_connection() {
    // ReadyForQuery in a wrong state: rows, then Z without CommandComplete.
    let f = failure(
        Op::Params,
        prepare_reply(&["a"]),
        Some(concat(&[
            backend::bind_complete(),
            backend::data_row(&[Some("1")]),
            backend::ready_for_query(b'I'),
        ])),
    );
    f.assert_broken(&["unexpected ReadyForQuery ('Z')"]);
}

#[test]
fn unknown_message_type_mid_extended_reply_breaks_the_connection() {
    let f = failure(
        Op::Params,
        prepare_reply(&["a"]),
        Some(concat(&[
            backend::bind_complete(),
            backend::message(b'!', b"boo"),
            backend::command_complete("SELECT 0"),
            backend::ready_for_query(b'I'),
        ])),
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["unknown backend message type", "('!')"]);
}

#[test]
fn unsolicited_close_complete_breaks_the_connection() {
    let f = failure(
        Op::Params,
        concat(&[backend::close_complete(), prepare_reply(&["a"])]),
        None,
    );
    f.assert_broken(&["unexpected CloseComplete ('3')"]);
}

#[test]
fn copy_both_response_to_an_execute_breaks_the_connection() {
    let f = failure(
        Op::Params,
        prepare_reply(&["a"]),
        Some(concat(&[
            backend::bind_complete(),
            backend::message(b'W', &[0, 0, 0]),
        ])),
    );
    f.assert_broken(&["CopyBothResponse ('W')"]);
}

// ---------------------------------------------------------------------------------------
// Query phase: row streaming (query_rows)
// ---------------------------------------------------------------------------------------

/// A valid execute reply with `rows` text rows of one column, then `tail`.
fn rows_then(rows: usize, tail: Vec<u8>) -> Vec<u8> {
    let mut out = backend::bind_complete();
    for i in 0..rows {
        out.extend(backend::data_row(&[Some(&i.to_string())]));
    }
    out.extend(tail);
    out
}

#[test]
fn streamed_data_row_with_more_fields_than_described_stops_the_stream() {
    let f = failure(
        Op::Rows,
        prepare_reply(&["a"]),
        Some(rows_then(
            2,
            concat(&[
                backend::data_row(&[Some("x"), Some("y")]),
                backend::data_row(&[Some("3")]),
                backend::command_complete("SELECT 4"),
                backend::ready_for_query(b'I'),
            ]),
        )),
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["DataRow", "2 fields", "1 columns"]);
    assert_eq!(
        f.rows_delivered, 2,
        "the bad row and anything after it never reach f"
    );
}

#[test]
fn streamed_data_row_with_a_negative_field_length_stops_the_stream() {
    let mut body = 1i16.to_be_bytes().to_vec();
    body.extend_from_slice(&(-2i32).to_be_bytes());
    let f = failure(
        Op::Rows,
        prepare_reply(&["a"]),
        Some(rows_then(
            1,
            concat(&[
                backend::message(b'D', &body),
                backend::command_complete("SELECT 2"),
                backend::ready_for_query(b'I'),
            ]),
        )),
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["DataRow"]);
    assert_eq!(f.rows_delivered, 1);
}

#[test]
fn streamed_giant_data_row_over_the_limit_fails_from_the_header() {
    let mut giant = vec![b'D'];
    giant.extend_from_slice(&(8u32 << 20).to_be_bytes());
    giant.extend_from_slice(&[0x41; 1000]);
    let f = failure_with(
        Op::Rows,
        prepare_reply(&["a"]),
        Some(rows_then(3, giant)),
        |o| o.max_message_bytes(64 * 1024),
    );
    f.assert_broken(&["exceeds max_message_bytes (65536 bytes)"]);
    assert_eq!(f.rows_delivered, 3);
}

#[test]
fn eof_mid_stream_after_rows_were_delivered_is_a_transport_error_that_was_sent() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::ReadMessage,
        Step::ReadMessage,
        Step::Send(prepare_reply(&["a"])),
        Step::ReadMessage,
        Step::ReadMessage,
        Step::ReadMessage,
        Step::Send(rows_then(
            5,
            backend::data_row(&[Some("cut")])[..6].to_vec(),
        )),
        Step::Close,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        let mut rows = 0;
        let e = conn
            .query_rows("SELECT $1::int4", &[&1i32], |_| {
                rows += 1;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(rows, 5);
        assert!(e.is_transport(), "{e}");
        assert!(e.was_sent(), "rows came back, so it ran: {e}");
        assert_mentions(&e, &["the server closed the connection"]);
        assert!(conn.is_broken());
    });
}

// ---------------------------------------------------------------------------------------
// Asynchronous messages: notifications, notices, parameter status, stray messages
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_notification_mid_reply_breaks_the_connection() {
    // process id, then a channel name with no terminator.
    let mut body = 7i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"chan");
    let f = failure(
        Op::Simple,
        concat(&[
            backend::row_description(&["a"]),
            backend::message(b'A', &body),
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["NotificationResponse"]);
}

#[test]
fn malformed_parameter_status_mid_reply_breaks_the_connection() {
    let f = failure(
        Op::Simple,
        concat(&[
            backend::row_description(&["a"]),
            backend::message(b'S', b"TimeZone\0UTC"),
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["ParameterStatus"]);
}

/// `n` ParameterStatus messages, each with a new name.
fn distinct_parameters(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| backend::parameter_status(&format!("hostile_{i}"), "v"))
        .collect()
}

#[test]
fn endless_distinct_parameters_during_startup_fail_the_connect() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(concat(&[
            backend::authentication_ok(),
            distinct_parameters(300),
            backend::backend_key_data(1, 2),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["ParameterStatus", "limit of 256 distinct"]);
    assert_fast(&e, took);
}

#[test]
fn an_oversized_parameter_value_during_startup_fails_the_connect() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(concat(&[
            backend::authentication_ok(),
            backend::parameter_status("search_path", &"x".repeat(64 * 1024 + 1)),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(
        &e,
        &["ParameterStatus value of \"search_path\"", "65536 bytes"],
    );
    assert_fast(&e, took);
}

/// Needs `on_async` in `conn/state.rs` to propagate `ServerInfo::set_parameter`'s error (the
/// lead's change, see the report): without it the parameters are dropped silently instead.
#[test]
fn endless_distinct_parameters_mid_session_break_the_connection() {
    let f = failure(
        Op::Simple,
        concat(&[
            backend::row_description(&["a"]),
            distinct_parameters(300),
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["ParameterStatus", "limit of 256 distinct"]);
}

fn malformed_notice_mid_reply() -> Failure {
    failure(
        Op::Simple,
        concat(&[
            backend::row_description(&["a"]),
            backend::message(b'N', b"SWARNING"),
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ]),
        None,
    )
}

#[test]
fn malformed_notice_mid_reply_breaks_the_connection() {
    let f = malformed_notice_mid_reply();
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["truncated", "unterminated string"]);
}

#[test]
fn malformed_notice_is_reported_as_a_notice() {
    let f = malformed_notice_mid_reply();
    f.assert_broken(&["NoticeResponse"]);
}

#[test]
fn ready_for_query_in_the_middle_of_a_simple_result_breaks_the_connection() {
    let f = failure(
        Op::Simple,
        concat(&[
            backend::row_description(&["a"]),
            backend::data_row(&[Some("1")]),
            backend::ready_for_query(b'I'),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    f.assert_broken(&["unexpected ReadyForQuery ('Z')"]);
}

/// Connects, then waits (idle) for the fake to send `stray`; the connection must break on
/// its own, and the next query must fail as never sent, with an error naming `needles`.
fn idle_stray(stray: Vec<u8>, tweak: impl FnOnce(PgOptions) -> PgOptions, needles: &[&str]) {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::Stall(Duration::from_millis(100)),
        Step::Send(stray),
        Step::StallForever,
    ])
    .unwrap();
    let o = tweak(opts(fake.port()));
    run(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        let started = Instant::now();
        while !conn.is_broken() {
            assert!(
                started.elapsed() < FAST,
                "an idle connection must notice the stray message by itself"
            );
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        let e = conn.query("SELECT 1").await.unwrap_err();
        assert!(!e.was_sent(), "{e}");
        assert!(e.is_transport() || e.is_closed(), "{e}");
        assert_mentions(&e, needles);
    });
    assert!(fake.connections()[0].received.is_empty(), "nothing sent");
}

#[test]
fn stray_ready_for_query_while_idle_breaks_the_connection() {
    idle_stray(
        backend::ready_for_query(b'I'),
        |o| o,
        &["ReadyForQuery ('Z')", "no command was in flight"],
    );
}

#[test]
fn unsolicited_copy_data_while_idle_breaks_the_connection() {
    idle_stray(
        backend::message(b'd', b"rows nobody asked for"),
        |o| o,
        &["CopyData ('d')"],
    );
}

#[test]
fn malformed_notification_while_idle_breaks_the_connection() {
    idle_stray(
        backend::message(b'A', &[0, 0]),
        |o| o,
        &["NotificationResponse"],
    );
}

#[test]
fn oversized_notification_while_idle_breaks_the_connection_from_the_header() {
    let mut header = vec![b'A'];
    header.extend_from_slice(&(1u32 << 20).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 7]);
    idle_stray(
        header,
        |o| o.max_message_bytes(4096),
        &["exceeds max_message_bytes (4096 bytes)"],
    );
}

#[test]
fn a_flood_of_valid_notices_and_notifications_is_drained_and_the_connection_stays_usable() {
    // 20 000 asynchronous messages (~1 MB) between two replies: handled one by one, nothing
    // retained, the connection stays in sync.
    let mut flood = Vec::new();
    for i in 0..10_000 {
        flood.extend(backend::notice_response("NOTICE", "00000", "spam"));
        let mut body = 1i32.to_be_bytes().to_vec();
        body.extend_from_slice(format!("chan\0payload {i}\0").as_bytes());
        flood.extend(backend::message(b'A', &body));
    }
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send(concat(&[flood, backend::simple_query_result("a", "1")])),
        Step::ReadMessage,
        Step::Send(backend::simple_query_result("b", "2")),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        assert_eq!(conn.query("SELECT a").await.unwrap().value(), Some("1"));
        assert_eq!(conn.query("SELECT b").await.unwrap().value(), Some("2"));
        assert!(!conn.is_broken());
    });
}

// ---------------------------------------------------------------------------------------
// Bytes after Terminate
// ---------------------------------------------------------------------------------------

#[test]
fn bytes_after_terminate_do_not_panic_or_hold_close() {
    for tail in [
        backend::simple_query_result("a", "1"),
        backend::data_row(&[Some("after goodbye")]),
        b"\xff\xff\xff\xff garbage after Terminate".to_vec(),
    ] {
        let fake = FakeServer::start(vec![
            Step::Send(backend::handshake_ok()),
            Step::ReadMessage,
            Step::Send(tail),
            Step::StallForever,
        ])
        .unwrap();
        run(async {
            let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
            let started = Instant::now();
            conn.close().await;
            let took = started.elapsed();
            assert!(took < FAST, "close took {took:?}");
        });
        assert!(fake.wait_for_connections(1, FAST));
        let deadline = Instant::now() + FAST;
        loop {
            let log = &fake.connections()[0];
            if !log.received.is_empty() {
                assert_eq!(log.received[0][0], b'X', "Terminate went out");
                break;
            }
            assert!(Instant::now() < deadline, "no Terminate arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn bytes_after_terminate_on_drop_do_not_disturb_the_reactor() {
    // The last handle is dropped (close without awaiting); the fake answers the Terminate
    // with a whole reply and garbage; the reactor keeps serving other work.
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send(concat(&[
            backend::simple_query_result("a", "1"),
            b"\x00\x01garbage".to_vec(),
        ])),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        drop(conn);
        for _ in 0..20 {
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let log = &fake.connections()[0];
    assert_eq!(log.received.len(), 1);
    assert_eq!(log.received[0][0], b'X');
}

// ---------------------------------------------------------------------------------------
// The pool replaces what hostile bytes broke
// ---------------------------------------------------------------------------------------

/// A healthy script: the handshake, then `n` simple queries answered with `value`.
fn healthy(n: usize, value: &str) -> Vec<Step> {
    let mut steps = vec![Step::Send(backend::handshake_ok())];
    for _ in 0..n {
        steps.push(Step::ReadMessage);
        steps.push(Step::Send(backend::simple_query_result("v", value)));
    }
    steps.push(Step::StallForever);
    steps
}

#[test]
fn the_pool_replaces_a_connection_broken_by_hostile_bytes() {
    let fake = FakeServer::start_with(|i| match i {
        // The first connection answers its first query with a DataRow of more fields than
        // described; every later connection is healthy.
        0 => vec![
            Step::Send(backend::handshake_ok()),
            Step::ReadMessage,
            Step::Send(concat(&[
                backend::row_description(&["v"]),
                backend::data_row(&[Some("1"), Some("2")]),
                backend::command_complete("SELECT 1"),
                backend::ready_for_query(b'I'),
            ])),
            Step::StallForever,
        ],
        _ => healthy(20, "ok"),
    })
    .unwrap();
    // The fake speaks only the simple protocol: no auto-prepare of the repeated text.
    let o = opts(fake.port())
        .pool_size(1)
        .statement_cache_capacity(0)
        .acquire_timeout(Duration::from_secs(2));
    run(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        let e = pool.query("SELECT v").await.unwrap_err();
        assert!(e.is_protocol(), "{e}");
        assert!(e.was_sent(), "{e}");
        assert_mentions(&e, &["DataRow", "2 fields"]);
        // The next requests are served by a replacement.
        for _ in 0..5 {
            assert_eq!(pool.query("SELECT v").await.unwrap().value(), Some("ok"));
        }
        let s = pool.stats();
        assert_eq!((s.broken_total, s.opened_total, s.open), (1, 2, 1), "{s:?}");
    });
    assert_eq!(fake.accepted(), 2);
}

#[test]
fn the_pool_replaces_a_connection_whose_handshake_was_hostile() {
    let fake = FakeServer::start_with(|i| match i {
        0 => vec![Step::SendGarbage(64), Step::StallForever],
        _ => healthy(20, "ok"),
    })
    .unwrap();
    let o = opts(fake.port())
        .pool_size(1)
        .acquire_timeout(Duration::from_secs(2));
    run(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        // The first request may see the hostile handshake's error (never sent) or, after the
        // pool's reconnect, the answer; within the acquire timeout the pool serves.
        let started = Instant::now();
        loop {
            match pool.query("SELECT v").await {
                Ok(r) => {
                    assert_eq!(r.value(), Some("ok"));
                    break;
                }
                Err(e) => {
                    assert!(!e.was_sent(), "{e}");
                    assert_mentions(&e, &["max_message_bytes"]);
                    assert!(started.elapsed() < Duration::from_secs(2), "{e}");
                }
            }
        }
        let s = pool.stats();
        assert!(s.connect_failures_total >= 1, "{s:?}");
        assert_eq!(s.open, 1, "{s:?}");
    });
}

#[test]
fn the_pool_survives_a_server_that_is_hostile_in_every_phase_in_turn() {
    // Connection i is hostile in a different way each time; connection 6 and later are
    // healthy. Every request ends (an error or an answer), the pool keeps replacing, and in
    // the end it serves.
    let fake = FakeServer::start_with(|i| {
        let reply = |bytes: Vec<u8>| {
            vec![
                Step::Send(backend::handshake_ok()),
                Step::ReadMessage,
                Step::Send(bytes),
                Step::StallForever,
            ]
        };
        match i {
            0 => vec![Step::Send(auth_request(12, b"v=AAAA")), Step::StallForever],
            1 => reply(backend::message(b'!', b"")),
            2 => reply(concat(&[
                backend::row_description(&["v"]),
                backend::ready_for_query(b'I'),
            ])),
            3 => reply(backend::message(b'A', &[0, 0])),
            4 => {
                let mut big = vec![b'D'];
                big.extend_from_slice(&(1u32 << 30).to_be_bytes());
                reply(big)
            }
            5 => vec![
                Step::Send(backend::handshake_ok()),
                Step::ReadMessage,
                Step::Close,
            ],
            _ => healthy(50, "ok"),
        }
    })
    .unwrap();
    let o = opts(fake.port())
        .pool_size(1)
        .max_message_bytes(1 << 20)
        .acquire_timeout(Duration::from_secs(2));
    run(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        let mut errors = Vec::new();
        let mut served = 0;
        for _ in 0..20 {
            match pool.query("SELECT v").await {
                Ok(r) => {
                    assert_eq!(r.value(), Some("ok"));
                    served += 1;
                }
                Err(e) => errors.push(e.to_string()),
            }
            if served == 3 {
                break;
            }
        }
        assert_eq!(served, 3, "errors: {errors:#?}");
        assert!(!errors.is_empty());
        assert!(errors.len() <= 6, "{errors:#?}");
        assert!(pool.stats().open == 1, "{:?}", pool.stats());
    });
    assert!(fake.accepted() >= 7);
}

// ---------------------------------------------------------------------------------------
// The fuzz corpus, replayed on stable
// ---------------------------------------------------------------------------------------

/// The fuzz targets' bodies (`fuzz/src/lib.rs`), compiled here without libFuzzer.
#[path = "../../../fuzz/src/lib.rs"]
mod fuzz_bodies;

/// Replays every kept input of `target` (the minimized corpus and any kept crash
/// reproducers) through its body; returns how many.
fn replay(target: &str, body: fn(&[u8])) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["corpus", "artifacts-kept"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                let r = std::panic::catch_unwind(|| body(&data));
                assert!(r.is_ok(), "{target}: {} panicked", path.display());
                n += 1;
            }
        }
    }
    n
}

#[test]
fn the_fuzz_corpus_replays_clean_through_the_decoder_and_the_connection_state_machine() {
    let decoder = replay("backend_decoder", fuzz_bodies::backend_decoder);
    let state = replay("connection_state", fuzz_bodies::connection_state);
    // The corpus is committed: an empty replay means the paths moved.
    assert!(decoder > 100 && state > 100, "{decoder} / {state} inputs");
}
