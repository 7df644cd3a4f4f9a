//! Hostile and malformed server bytes against scripted fake servers (issue 4, item 5 and
//! "Done when"; DESIGN.md's failure contract): every class of bad input ends in a clear
//! error that says what happened and a broken connection — no panic, no hang, no unbounded
//! allocation. Startup-phase failures are a failed `connect` (there is no connection to
//! break); query-phase failures leave `is_broken()` true.
//!
//! Every script ends by stalling rather than closing where a close would mask the failure
//! under test (an EOF error), and every test is bounded: the whole test body runs under
//! `ioxide::time::timeout`, and a failure that is detected from the bytes (not by a timer)
//! must come back well before the connect/command timeouts.
#![allow(clippy::unwrap_used)]

#[path = "hostile/scram.rs"]
mod scram;
#[path = "hostile/support.rs"]
mod support;

use ioxide_pg::{PgConnection, PgError, PgOptions, TimeoutKind};
use std::rc::Rc;
use std::time::{Duration, Instant};
use support::*;
use testkit::{backend, frontend, FakeServer, Step};

// ---------------------------------------------------------------------------------------
// Startup phase
// ---------------------------------------------------------------------------------------

#[test]
fn startup_length_below_four_is_a_protocol_error() {
    for len in [0u32, 3] {
        let mut msg = vec![b'R'];
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(&[0; 8]);
        let (e, took, _fake) = startup_error(vec![Step::Send(msg), Step::StallForever]);
        assert!(e.is_protocol(), "{e}");
        assert_mentions(
            &e,
            &[
                "Authentication ('R')",
                &format!("length {len}"),
                "below the minimum of 4",
            ],
        );
        assert_fast(&e, took);
    }
}

#[test]
fn startup_length_that_overflows_is_rejected() {
    // 0xFFFFFFFF is negative as an i32; i32::MAX is a legal i32 but needs a 2 GiB message.
    let cases: [(&[u8], &str); 2] = [
        (b"R\xff\xff\xff\xff", "overflows a signed 32-bit length"),
        (b"R\x7f\xff\xff\xff", "exceeds max_message_bytes"),
    ];
    for (header, says) in cases {
        let (e, took, _fake) = startup_error(vec![Step::Send(header.to_vec()), Step::StallForever]);
        assert!(e.is_protocol(), "{e}");
        assert_mentions(&e, &[says]);
        assert_fast(&e, took);
    }
}

#[test]
fn startup_message_over_max_message_bytes_fails_from_the_header_alone() {
    // Announce 1 MiB, send only the header and a few body bytes, then go silent: the
    // client must refuse without waiting for (or buffering) the body.
    let mut msg = vec![b'S'];
    msg.extend_from_slice(&(1u32 << 20).to_be_bytes());
    msg.extend_from_slice(b"server_version\0");
    let (e, took, _fake) = startup_error_with(
        vec![
            Step::Send(backend::authentication_ok()),
            Step::Send(msg),
            Step::StallForever,
        ],
        |o| o.max_message_bytes(1024),
    );
    assert!(e.is_protocol() && e.is_transport(), "{e}");
    assert_mentions(&e, &["1048577 bytes", "max_message_bytes (1024 bytes)"]);
    assert_fast(&e, took);
}

#[test]
fn startup_truncated_message_then_eof_is_a_transport_error() {
    let mut bytes = backend::authentication_ok();
    let status = backend::parameter_status("server_version", "15.0");
    bytes.extend_from_slice(&status[..status.len() / 2]);
    let (e, took, _fake) = startup_error(vec![Step::Send(bytes), Step::Close]);
    assert!(e.is_transport() && !e.is_protocol(), "{e}");
    assert_mentions(&e, &["closed the connection during startup"]);
    assert_fast(&e, took);
}

#[test]
fn startup_reset_mid_handshake_is_a_transport_error() {
    let mut bytes = backend::authentication_ok();
    bytes.extend(backend::parameter_status("server_version", "15.0"));
    let (e, took, _fake) = startup_error(vec![
        Step::Send(bytes),
        Step::Stall(Duration::from_millis(30)),
        Step::Reset,
    ]);
    assert!(e.is_transport(), "{e}");
    assert_mentions(&e, &["startup"]);
    assert_fast(&e, took);
}

#[test]
fn startup_unknown_message_tag_is_a_protocol_error() {
    let (e, took, _fake) = startup_error(vec![
        Step::Send(backend::message(b'!', b"whatever")),
        Step::StallForever,
    ]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["unknown backend message type", "('!')"]);
    assert_fast(&e, took);
}

#[test]
fn unsupported_auth_methods_fail_naming_the_method() {
    for (code, name) in [
        (2i32, "Kerberos V5"),
        (6, "SCM credential"),
        (7, "GSSAPI"),
        (9, "SSPI"),
    ] {
        let (e, took, _fake) = startup_error(vec![
            Step::Send(backend::message(b'R', &code.to_be_bytes())),
            Step::StallForever,
        ]);
        assert!(e.is_auth(), "code {code}: {e}");
        assert_mentions(&e, &[name, "does not support"]);
        assert_fast(&e, took);
    }
}

#[test]
fn sasl_offering_only_scram_plus_fails_mentioning_channel_binding() {
    let (e, took, fake) = startup_error(vec![
        Step::Send(backend::authentication_sasl(&["SCRAM-SHA-256-PLUS"])),
        Step::StallForever,
    ]);
    assert!(e.is_auth(), "{e}");
    assert_mentions(&e, &["SCRAM-SHA-256-PLUS", "channel binding", "TLS"]);
    assert_fast(&e, took);
    // Nothing was sent in reply: no SASLInitialResponse for a mechanism we cannot do.
    assert!(fake.connections()[0].received.is_empty());
}

#[test]
fn scram_server_first_with_a_foreign_nonce_is_an_auth_error() {
    let server_first = b"r=someone-elses-nonce,s=c2FsdA==,i=4096";
    let continue_msg = backend::message(b'R', &[&11i32.to_be_bytes()[..], server_first].concat());
    let (e, took, fake) = startup_error(vec![
        Step::Send(backend::authentication_sasl(&["SCRAM-SHA-256"])),
        Step::ReadMessage,
        Step::Send(continue_msg),
        Step::StallForever,
    ]);
    assert!(e.is_auth(), "{e}");
    assert_mentions(&e, &["SCRAM server-first", "nonce"]);
    assert_fast(&e, took);
    let log = &fake.connections()[0];
    assert_eq!(log.received.len(), 1, "only the SASLInitialResponse");
    assert_eq!(log.received[0][0], b'p');
}

#[test]
fn scram_server_with_a_wrong_final_signature_is_refused() {
    let (port, server) = scram::wrong_signature_server().unwrap();
    let o = opts(port).password(scram::PASSWORD);
    let started = Instant::now();
    let e = run(PgConnection::connect(&o)).unwrap_err();
    let took = started.elapsed();
    assert!(e.is_auth(), "{e}");
    assert_mentions(&e, &["SCRAM server signature"]);
    assert!(
        e.to_string().to_lowercase().contains("signature"),
        "error should mention the signature: {e}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    let outcome = server.join().unwrap().unwrap();
    assert!(
        outcome.client_proof_valid,
        "the exchange up to SASLFinal must be genuine: {outcome:?}"
    );
    assert!(
        outcome.client_hung_up && outcome.bytes_after_final == 0,
        "the client must hang up on the impostor: {outcome:?}"
    );
}

#[test]
fn ready_for_query_before_authentication_completes_is_a_protocol_error() {
    // As the very first message, and after the password but before AuthenticationOk.
    let scripts = [
        vec![
            Step::Send(backend::ready_for_query(b'I')),
            Step::StallForever,
        ],
        vec![
            Step::Send(backend::authentication_cleartext_password()),
            Step::ReadMessage,
            Step::Send(backend::ready_for_query(b'I')),
            Step::StallForever,
        ],
    ];
    for steps in scripts {
        let (e, took, _fake) = startup_error(steps);
        assert!(e.is_protocol(), "{e}");
        assert_mentions(&e, &["unexpected ReadyForQuery ('Z') during startup"]);
        assert_fast(&e, took);
    }
}

#[test]
fn startup_garbage_bytes_are_a_protocol_error() {
    // The fake's deterministic garbage starts with a header announcing ~1 GB.
    let (e, took, _fake) = startup_error(vec![Step::SendGarbage(64), Step::StallForever]);
    assert!(e.is_protocol(), "{e}");
    assert_mentions(&e, &["max_message_bytes"]);
    assert_fast(&e, took);
}

#[test]
fn async_notice_right_after_startup_is_tolerated() {
    // NoticeResponse may arrive at any time; here it shares a segment with the handshake.
    let mut bytes = backend::handshake_ok();
    bytes.extend(backend::notice_response("WARNING", "01000", "hello"));
    let fake = FakeServer::start(vec![
        Step::Send(bytes),
        Step::ReadMessage,
        Step::Send(backend::simple_query_result("n", "1")),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));
    });
}

// ---------------------------------------------------------------------------------------
// Query phase
// ---------------------------------------------------------------------------------------

/// How a query against a misbehaving fake ended.
struct Failure {
    err: PgError,
    broken: bool,
    took: Duration,
    fake: FakeServer,
}

/// Connects (a normal handshake), then runs one simple query; the fake reads the Query and
/// plays `reply`.
fn simple_query_failure_with(
    reply: Vec<Step>,
    tweak: impl FnOnce(PgOptions) -> PgOptions,
) -> Failure {
    let mut steps = vec![Step::Send(backend::handshake_ok()), Step::ReadMessage];
    steps.extend(reply);
    let fake = FakeServer::start(steps).unwrap();
    let o = tweak(opts(fake.port()));
    let (err, broken, took) = run(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        let started = Instant::now();
        let err = conn.query("SELECT hostile").await.unwrap_err();
        (err, conn.is_broken(), started.elapsed())
    });
    Failure {
        err,
        broken,
        took,
        fake,
    }
}

fn simple_query_failure(reply: Vec<Step>) -> Failure {
    simple_query_failure_with(reply, |o| o)
}

/// Connects, then runs one parameterized query: the fake answers the prepare (Parse,
/// Describe, Sync) with `prepare`, and, if given, the Bind/Execute/Sync with `execute`.
fn extended_query_failure(prepare: Vec<u8>, execute: Option<Vec<u8>>) -> Failure {
    let mut steps = vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::ReadMessage,
        Step::ReadMessage,
        Step::Send(prepare),
    ];
    if let Some(execute) = execute {
        steps.extend([
            Step::ReadMessage,
            Step::ReadMessage,
            Step::ReadMessage,
            Step::Send(execute),
        ]);
    }
    steps.push(Step::StallForever);
    let fake = FakeServer::start(steps).unwrap();
    let o = opts(fake.port());
    let (err, broken, took) = run(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        let started = Instant::now();
        let err = conn
            .query_params("SELECT $1::int4", &[&1i32])
            .await
            .unwrap_err();
        (err, conn.is_broken(), started.elapsed())
    });
    Failure {
        err,
        broken,
        took,
        fake,
    }
}

impl Failure {
    /// A clear error naming `needles`, a broken connection, found from the bytes (fast).
    #[track_caller]
    fn assert_broken(&self, needles: &[&str]) {
        let e = &self.err;
        assert!(self.broken, "the connection must be broken after: {e}");
        // A FATAL from the server ends the session: it arrives as that server error.
        let fatal = e.as_db_error().is_some_and(|d| d.is_fatal());
        assert!(e.is_transport() || e.is_closed() || fatal, "{e}");
        assert_mentions(e, needles);
        assert_fast(e, self.took);
    }
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
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

/// A DataRow from a raw body.
fn raw_data_row(body: &[u8]) -> Vec<u8> {
    backend::message(b'D', body)
}

/// A DataRow of one field whose announced length (100) runs past the body (3 bytes).
fn overrunning_data_row() -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&100i32.to_be_bytes());
    body.extend_from_slice(b"abc");
    raw_data_row(&body)
}

fn notification(process_id: i32, channel: &str, payload: &str) -> Vec<u8> {
    let mut body = process_id.to_be_bytes().to_vec();
    body.extend_from_slice(channel.as_bytes());
    body.push(0);
    body.extend_from_slice(payload.as_bytes());
    body.push(0);
    backend::message(b'A', &body)
}

/// A complete, valid reply to a simple query except for `middle` between the row and the
/// CommandComplete — so a driver that tolerates `middle` would happily resync.
fn reply_around(middle: Vec<u8>) -> Vec<Step> {
    vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            backend::data_row(&[Some("1")]),
            middle,
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ]
}

#[test]
fn data_row_before_row_description_breaks_the_connection() {
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ]);
    f.assert_broken(&["unexpected DataRow ('D')", "simple"]);
}

#[test]
fn data_row_with_more_fields_than_described_breaks_the_connection() {
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            backend::data_row(&[Some("1"), Some("2")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ]);
    assert!(f.err.is_protocol(), "{}", f.err);
    assert_mentions(&f.err, &["DataRow", "2 fields", "1 columns"]);
    f.assert_broken(&["DataRow"]);
}

#[test]
fn data_row_with_more_fields_than_described_breaks_an_extended_query() {
    let f = extended_query_failure(
        prepare_reply(&["a"]),
        Some(concat(&[
            backend::bind_complete(),
            backend::data_row(&[Some("1"), Some("2"), Some("3")]),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ])),
    );
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["DataRow"]);
}

#[test]
fn data_row_field_length_past_the_body_breaks_the_connection() {
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            overrunning_data_row(),
            backend::command_complete("SELECT 1"),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ]);
    assert!(f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["DataRow", "truncated"]);
}

#[test]
fn a_malformed_later_data_row_is_not_accepted() {
    // The second row has the right field count, but its field runs past the body.
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            backend::data_row(&[Some("1")]),
            overrunning_data_row(),
            backend::command_complete("SELECT 2"),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        let r = conn.query("SELECT a").await;
        let e = r.expect_err("a DataRow whose field runs past its body must not be accepted");
        assert!(e.is_protocol() || e.is_transport(), "{e}");
        assert_mentions(&e, &["DataRow", "truncated"]);
        assert!(conn.is_broken(), "{e}");
    });
}

#[test]
fn command_complete_with_invalid_utf8_breaks_the_connection() {
    let f = simple_query_failure(reply_around(backend::message(b'C', b"SELECT \xff\xfe1\0")));
    f.assert_broken(&["CommandComplete", "not UTF-8"]);
}

#[test]
fn ready_for_query_with_an_invalid_status_breaks_the_connection() {
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::message(b'Z', b"X"),
        ])),
        Step::StallForever,
    ]);
    f.assert_broken(&["ReadyForQuery", "unknown transaction status 0x58"]);
}

#[test]
fn parse_complete_in_reply_to_a_simple_query_breaks_the_connection() {
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::parse_complete(),
            backend::ready_for_query(b'I'),
        ])),
        Step::StallForever,
    ]);
    f.assert_broken(&["unexpected ParseComplete ('1')", "simple"]);
}

#[test]
fn bind_complete_where_row_description_is_expected_breaks_the_connection() {
    let f = extended_query_failure(
        concat(&[
            backend::parse_complete(),
            backend::parameter_description(&[23]),
            backend::bind_complete(),
            backend::ready_for_query(b'I'),
        ]),
        None,
    );
    f.assert_broken(&[
        "unexpected BindComplete ('2')",
        "extended-protocol",
        "RowDescription or NoData",
    ]);
    // The fake saw exactly the prepare: Parse, Describe, Sync — nothing else was sent.
    let received = &f.fake.connections()[0].received;
    let tags: Vec<u8> = received.iter().map(|m| m[0]).collect();
    assert_eq!(tags, b"PDS");
}

#[test]
fn copy_in_and_copy_out_responses_outside_copy_in_and_copy_out_are_protocol_errors() {
    // Format 0 (text), one column, text.
    let copy_body = [0u8, 0, 1, 0, 0];
    for (tag, name) in [
        (b'G', "CopyInResponse ('G')"),
        (b'H', "CopyOutResponse ('H')"),
    ] {
        let f = simple_query_failure(vec![
            Step::Send(backend::message(tag, &copy_body)),
            Step::StallForever,
        ]);
        f.assert_broken(&["cannot carry one", "copy_in / copy_out", name]);
    }
}

#[test]
fn eof_mid_reply_breaks_the_connection() {
    let row = backend::data_row(&[Some("hello")]);
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            row[..7].to_vec(),
        ])),
        Step::Close,
    ]);
    assert!(f.err.is_transport(), "{}", f.err);
    f.assert_broken(&["the server closed the connection"]);
}

#[test]
fn giant_data_row_mid_result_fails_from_the_header() {
    // A valid row, then a header announcing 1 MiB (limit 4 KiB) and a little of its body.
    let mut giant = vec![b'D'];
    giant.extend_from_slice(&(1u32 << 20).to_be_bytes());
    giant.extend_from_slice(&[0x41; 2000]);
    let f = simple_query_failure_with(
        vec![
            Step::Send(concat(&[
                backend::row_description(&["a"]),
                backend::data_row(&[Some("1")]),
                giant,
            ])),
            Step::StallForever,
        ],
        |o| o.max_message_bytes(4096),
    );
    f.assert_broken(&["1048577 bytes", "max_message_bytes (4096 bytes)"]);
}

#[test]
fn stray_message_while_idle_breaks_the_connection_on_its_own() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::Stall(Duration::from_millis(100)),
        Step::Send(backend::data_row(&[Some("stray")])),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        let started = Instant::now();
        while !conn.is_broken() {
            assert!(
                started.elapsed() < FAST,
                "an idle connection must notice the stray DataRow by itself"
            );
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        let e = conn.query("SELECT 1").await.unwrap_err();
        assert!(!e.was_sent(), "{e}");
        assert!(e.is_transport() || e.is_closed(), "{e}");
        assert_mentions(&e, &["DataRow ('D')", "no command was in flight"]);
    });
    assert!(fake.connections()[0].received.is_empty());
}

#[test]
fn garbage_bytes_mid_reply_break_the_connection() {
    // The fake's deterministic garbage starts with a header announcing ~1 GB.
    let f = simple_query_failure(vec![
        Step::Send(backend::row_description(&["a"])),
        Step::SendGarbage(64),
        Step::StallForever,
    ]);
    f.assert_broken(&["exceeds max_message_bytes"]);
}

#[test]
fn hostile_reply_to_an_abandoned_command_breaks_the_connection_via_the_watcher() {
    // The query's future is dropped (caller-side timeout) before the reply arrives; the
    // watcher drains that reply on its own and must still refuse nonsense in it.
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Stall(Duration::from_millis(150)),
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            backend::parse_complete(),
        ])),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        let started = Instant::now();
        let r = ioxide::time::timeout(Duration::from_millis(30), conn.query("SELECT a")).await;
        assert!(r.is_err(), "the fake answers only after 150 ms");
        assert!(!conn.is_broken());
        while !conn.is_broken() {
            assert!(
                started.elapsed() < FAST,
                "the watcher did not see the bad reply"
            );
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        let e = conn.query("SELECT 1").await.unwrap_err();
        assert!(!e.was_sent(), "{e}");
        assert_mentions(&e, &["unexpected ParseComplete ('1')"]);
    });
}

fn fatal_admin_shutdown() -> Vec<u8> {
    backend::error_response(
        "FATAL",
        "57P01",
        "terminating connection due to administrator command",
    )
}

#[test]
fn bytes_after_a_fatal_error_are_ignored_and_the_fatal_is_reported() {
    let f = simple_query_failure(vec![
        Step::Send(fatal_admin_shutdown()),
        Step::SendGarbage(100),
        Step::StallForever,
    ]);
    f.assert_broken(&[
        "57P01",
        "terminating connection due to administrator command",
    ]);
    assert!(
        !f.err.to_string().contains("max_message_bytes"),
        "{}",
        f.err
    );
}

#[test]
fn fatal_error_mid_query_fails_with_the_servers_code_and_message() {
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            backend::data_row(&[Some("1")]),
            fatal_admin_shutdown(),
        ])),
        Step::Close,
    ]);
    f.assert_broken(&[
        "FATAL",
        "57P01",
        "terminating connection due to administrator command",
    ]);
}

#[test]
fn fatal_error_mid_query_keeps_its_sql_state() {
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            fatal_admin_shutdown(),
        ])),
        Step::Close,
    ]);
    assert!(f.broken);
    assert_eq!(f.err.sql_state(), Some("57P01"), "{}", f.err);
}

#[test]
fn fatal_after_an_error_surfaces_with_its_sql_state() {
    // The query fails (42P01); while the server skips to ReadyForQuery, an administrator
    // terminates the backend: the FATAL must reach the caller as itself, not as a protocol
    // error about a second ErrorResponse.
    let f = simple_query_failure(vec![
        Step::Send(concat(&[
            backend::error_response("ERROR", "42P01", "relation \"hostile\" does not exist"),
            fatal_admin_shutdown(),
        ])),
        Step::Close,
    ]);
    assert!(f.broken);
    assert_eq!(f.err.sql_state(), Some("57P01"), "{}", f.err);
    assert!(!f.err.is_protocol(), "{}", f.err);
    f.assert_broken(&["terminating connection due to administrator command"]);
}

#[test]
fn fatal_after_an_error_in_an_extended_reply_surfaces_with_its_sql_state() {
    let f = extended_query_failure(
        prepare_reply(&["a"]),
        Some(concat(&[
            backend::error_response("ERROR", "22012", "division by zero"),
            fatal_admin_shutdown(),
        ])),
    );
    assert!(f.broken);
    assert_eq!(f.err.sql_state(), Some("57P01"), "{}", f.err);
}

#[test]
fn fatal_after_an_error_fails_the_pipelined_command_behind_with_it_too() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::ReadMessage,
        Step::Send(concat(&[
            backend::error_response("ERROR", "42P01", "relation \"t\" does not exist"),
            fatal_admin_shutdown(),
        ])),
        Step::Close,
    ])
    .unwrap();
    run(async {
        let conn = Rc::new(PgConnection::connect(&opts(fake.port())).await.unwrap());
        let tasks: Vec<_> = ["SELECT * FROM t", "SELECT 2"]
            .into_iter()
            .map(|sql| {
                let conn = conn.clone();
                ioxide::spawn(async move { conn.query(sql).await })
            })
            .collect();
        for t in tasks {
            let e = t.await.unwrap_err();
            assert_eq!(e.sql_state(), Some("57P01"), "{e}");
            assert!(e.as_db_error().is_some_and(|d| d.is_fatal()), "{e}");
        }
        assert!(conn.is_broken());
    });
}

#[test]
fn protocol_violation_in_a_reply_is_reported_as_a_protocol_error() {
    let f = simple_query_failure(vec![
        Step::Send(backend::message(b'G', &[0, 0, 1, 0, 0])),
        Step::StallForever,
    ]);
    assert!(f.broken);
    assert!(f.err.is_protocol(), "{}", f.err);
}

#[test]
fn stalled_reply_times_out_sends_a_cancel_and_tears_the_connection_down() {
    let fake = FakeServer::start_with(|i| match i {
        0 => vec![
            Step::Send(backend::handshake_ok()),
            Step::ReadMessage,
            Step::Send(concat(&[
                backend::row_description(&["a"]),
                backend::data_row(&[Some("1")]),
            ])),
            Step::StallForever,
        ],
        // The CancelRequest connection: the fake reads its 16 bytes as a "startup packet",
        // then closes, as a server does after acting on a cancel.
        _ => vec![],
    })
    .unwrap();
    let o = opts(fake.port()).command_timeout(Duration::from_millis(300));
    run(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        let started = Instant::now();
        let e = conn.query("SELECT pg_sleep(1000)").await.unwrap_err();
        let took = started.elapsed();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(e.timeout_kind(), Some(TimeoutKind::Command));
        assert_mentions(&e, &["command timed out"]);
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // The fake never resyncs: torn down after the grace period.
        while !conn.is_broken() {
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "not torn down"
            );
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        let later = conn.query("SELECT 1").await.unwrap_err();
        assert!(!later.was_sent(), "{later}");
        assert_mentions(&later, &["timed out"]);
    });
    // The CancelRequest reached the fake's port with the BackendKeyData of handshake_ok().
    assert!(fake.wait_for_connections(2, Duration::from_secs(1)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let cancel = loop {
        if let Some(p) = fake.connections()[1].startup.clone() {
            break p;
        }
        assert!(Instant::now() < deadline, "no CancelRequest arrived");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(cancel, frontend::cancel_request(4242, 1_234_567));
    assert_eq!(fake.accepted(), 2, "exactly one CancelRequest");
}

#[test]
fn notices_and_notifications_inside_a_reply_are_tolerated() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send(concat(&[
            backend::notice_response("NOTICE", "00000", "before the rows"),
            backend::row_description(&["a"]),
            notification(77, "chan", "payload"),
            backend::data_row(&[Some("42")]),
            backend::notice_response("WARNING", "01000", "between rows"),
            backend::data_row(&[Some("43")]),
            notification(77, "chan", ""),
            backend::command_complete("SELECT 2"),
            backend::notice_response("NOTICE", "00000", "before ready"),
            backend::ready_for_query(b'I'),
        ])),
        Step::ReadMessage,
        Step::Send(backend::simple_query_result("b", "7")),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        let r = conn.query("SELECT a").await.unwrap();
        assert_eq!(
            (r.value(), r.rows(), r.command_tag()),
            (Some("42"), 2, "SELECT 2")
        );
        assert!(!conn.is_broken());
        // Still in sync: the next reply is read as the next query's.
        assert_eq!(conn.query("SELECT b").await.unwrap().value(), Some("7"));
    });
}

#[test]
fn parameter_status_mid_reply_updates_the_connections_parameters() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send(concat(&[
            backend::row_description(&["a"]),
            backend::parameter_status("TimeZone", "Antarctica/Troll"),
            backend::data_row(&[Some("1")]),
            backend::command_complete("SELECT 1"),
            backend::parameter_status("application_name", "hostile"),
            backend::ready_for_query(b'I'),
        ])),
        Step::ReadMessage,
        Step::Send(backend::simple_query_result("b", "2")),
        Step::StallForever,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        assert_eq!(conn.parameter("TimeZone"), None);
        assert_eq!(conn.query("SET x").await.unwrap().value(), Some("1"));
        assert_eq!(
            conn.parameter("TimeZone").as_deref(),
            Some("Antarctica/Troll")
        );
        assert_eq!(
            conn.parameter("application_name").as_deref(),
            Some("hostile")
        );
        assert_eq!(conn.parameter("server_version").as_deref(), Some("15.0"));
        assert_eq!(conn.query("SELECT b").await.unwrap().value(), Some("2"));
    });
}

#[test]
fn pipelined_queries_fail_cleanly_when_the_server_closes_after_the_first_reply() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::ReadMessage,
        Step::ReadMessage,
        Step::Send(backend::simple_query_result("n", "1")),
        Step::Close,
    ])
    .unwrap();
    run(async {
        let conn = Rc::new(PgConnection::connect(&opts(fake.port())).await.unwrap());
        let tasks: Vec<_> = (1..=3)
            .map(|i| {
                let conn = conn.clone();
                ioxide::spawn(async move { conn.query(&format!("SELECT {i}")).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await);
        }
        assert_eq!(results[0].as_ref().unwrap().value(), Some("1"));
        for r in &results[1..] {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_transport() || e.is_closed(), "{e}");
            assert!(e.was_sent(), "these reached the server: {e}");
            assert_mentions(e, &["closed the connection"]);
        }
        assert!(conn.is_broken());
    });
    let queries: Vec<u8> = fake.connections()[0]
        .received
        .iter()
        .map(|m| m[0])
        .collect();
    assert_eq!(queries, b"QQQ");
}

#[test]
fn a_query_issued_after_the_connection_broke_was_never_sent() {
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Close,
    ])
    .unwrap();
    run(async {
        let conn = PgConnection::connect(&opts(fake.port())).await.unwrap();
        let first = conn.query("SELECT 1").await.unwrap_err();
        assert!(first.was_sent(), "the fake read it: {first}");
        assert!(conn.is_broken());
        let started = Instant::now();
        let second = conn.query("SELECT 2").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(!second.was_sent(), "{second}");
        assert!(second.is_transport() || second.is_closed(), "{second}");
        assert_mentions(&second, &["closed the connection"]);
        let third = conn
            .query_params("SELECT $1::int4", &[&1i32])
            .await
            .unwrap_err();
        assert!(!third.was_sent(), "{third}");
    });
    assert_eq!(fake.connections()[0].received.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Memory bounds
// ---------------------------------------------------------------------------------------

#[test]
fn announced_60_mib_data_row_then_eof_is_an_error() {
    // Under the default 64 MiB limit the header is legal; only its end never comes.
    let mut header = vec![b'D'];
    header.extend_from_slice(&(60u32 << 20).to_be_bytes());
    let f = simple_query_failure(vec![
        Step::Send(concat(&[backend::row_description(&["a"]), header])),
        Step::Stall(Duration::from_millis(50)),
        Step::Close,
    ]);
    f.assert_broken(&["the server closed the connection"]);
}

#[test]
fn announced_1_mib_message_over_a_4_kib_limit_fails_immediately() {
    // Header only, then silence: the limit is enforced before any body byte.
    let mut header = vec![b'T'];
    header.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let f = simple_query_failure_with(vec![Step::Send(header), Step::StallForever], |o| {
        o.max_message_bytes(4096)
    });
    f.assert_broken(&["1048577 bytes", "max_message_bytes (4096 bytes)"]);
}
