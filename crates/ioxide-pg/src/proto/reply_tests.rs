use super::*;

const ROW_DESC: &[u8] = b"\0\x01n\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\x01";
const ROW: &[u8] = b"\0\x01\0\0\0\x04\0\0\0\x2a";
const PARAM_DESC: &[u8] = b"\0\x01\0\0\0\x17";

fn error_body(code: &str) -> Vec<u8> {
    format!("SERROR\0VERROR\0C{code}\0Mboom\0\0").into_bytes()
}

/// Feeds `(tag, body)` messages, returning a short name per event, or the error text.
fn run(reply: &mut Reply, msgs: &[(u8, &[u8])]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for &(tag, body) in msgs {
        let ev = reply.on_message(tag, body).map_err(|e| e.to_string())?;
        out.push(match ev {
            ReplyEvent::Nothing => "ack".to_owned(),
            ReplyEvent::ParameterDescription(_) => "params".to_owned(),
            ReplyEvent::RowDescription(_) => "desc".to_owned(),
            ReplyEvent::NoData => "nodata".to_owned(),
            ReplyEvent::DataRow(_) => "row".to_owned(),
            ReplyEvent::CommandComplete(t) => format!("complete:{t}"),
            ReplyEvent::EmptyQuery => "empty".to_owned(),
            ReplyEvent::PortalSuspended => "suspended".to_owned(),
            ReplyEvent::CopyIn(_) => "copy-in".to_owned(),
            ReplyEvent::CopyOut(_) => "copy-out".to_owned(),
            ReplyEvent::CopyData(d) => format!("data:{}", String::from_utf8_lossy(d)),
            ReplyEvent::ServerError(e) => format!("error:{}", e.code()),
            ReplyEvent::Done { txn_status } => format!("done:{}", txn_status.as_byte() as char),
        });
    }
    Ok(out)
}

fn names(s: &[&str]) -> Result<Vec<String>, String> {
    Ok(s.iter().map(|s| s.to_string()).collect())
}

#[test]
fn simple_select_yields_rows_then_done() {
    let mut r = Reply::simple();
    let got = run(
        &mut r,
        &[
            (b'T', ROW_DESC),
            (b'D', ROW),
            (b'D', ROW),
            (b'C', b"SELECT 2\0"),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&["desc", "row", "row", "complete:SELECT 2", "done:I"])
    );
    assert!(r.is_done() && !r.failed());
}

#[test]
fn simple_multi_statement_and_empty_query() {
    let mut r = Reply::simple();
    let got = run(
        &mut r,
        &[
            (b'C', b"BEGIN\0"),
            (b'T', ROW_DESC),
            (b'C', b"SELECT 0\0"),
            (b'I', b""),
            (b'Z', b"T"),
        ],
    );
    assert_eq!(
        got,
        names(&[
            "complete:BEGIN",
            "desc",
            "complete:SELECT 0",
            "empty",
            "done:T"
        ])
    );
}

#[test]
fn simple_error_skips_to_ready_for_query() {
    let e = error_body("42P01");
    let mut r = Reply::simple();
    let got = run(
        &mut r,
        &[(b'T', ROW_DESC), (b'D', ROW), (b'E', &e), (b'Z', b"I")],
    );
    assert_eq!(got, names(&["desc", "row", "error:42P01", "done:I"]));
    assert!(r.failed());
}

#[test]
fn simple_out_of_place_messages_are_protocol_errors() {
    type Case<'a> = (&'a str, &'a [(u8, &'a [u8])], &'a str);
    let cases: [Case<'_>; 6] = [
        (
            "row before desc",
            &[(b'D', ROW)],
            "unexpected DataRow ('D') in the reply to a simple command",
        ),
        (
            "ready mid rows",
            &[(b'T', ROW_DESC), (b'Z', b"I")],
            "expecting DataRow, CommandComplete",
        ),
        ("bind complete", &[(b'2', b"")], "BindComplete ('2')"),
        ("copy in", &[(b'G', b"\0\0\0")], "PgConnection::copy_in"),
        ("copy out", &[(b'H', b"\0\0\0")], "CopyOutResponse"),
        ("copy both", &[(b'W', b"\0\0\0")], "CopyBothResponse"),
    ];
    for (what, msgs, needle) in cases {
        let got = run(&mut Reply::simple(), msgs);
        assert!(
            got.as_ref().is_err_and(|e| e.contains(needle)),
            "{what}: {got:?}"
        );
    }
}

#[test]
fn prepare_reads_parameters_and_columns() {
    let mut r = Reply::prepare();
    let got = run(
        &mut r,
        &[
            (b'1', b""),
            (b't', PARAM_DESC),
            (b'T', ROW_DESC),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(got, names(&["ack", "params", "desc", "done:I"]));
    let got = run(
        &mut Reply::prepare(),
        &[(b'1', b""), (b't', b"\0\0"), (b'n', b""), (b'Z', b"I")],
    );
    assert_eq!(got, names(&["ack", "params", "nodata", "done:I"]));
}

#[test]
fn bind_execute_streams_rows() {
    let got = run(
        &mut Reply::bind_execute(),
        &[
            (b'2', b""),
            (b'D', ROW),
            (b'D', ROW),
            (b'C', b"SELECT 2\0"),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&["ack", "row", "row", "complete:SELECT 2", "done:I"])
    );
    // PortalSuspended ends an Execute only when it asked for a row limit…
    let limited = Steps {
        bind: true,
        execute: true,
        row_limit: true,
        ..Steps::default()
    };
    let got = run(
        &mut Reply::extended(limited),
        &[(b'2', b""), (b'D', ROW), (b's', b""), (b'Z', b"T")],
    );
    assert_eq!(got, names(&["ack", "row", "suspended", "done:T"]));
    // …otherwise it would silently truncate the result.
    let got = run(
        &mut Reply::bind_execute(),
        &[(b'2', b""), (b'D', ROW), (b's', b""), (b'Z', b"T")],
    );
    assert!(got.is_err(), "{got:?}");
    let got = run(
        &mut Reply::bind_execute(),
        &[(b'2', b""), (b'I', b""), (b'Z', b"I")],
    );
    assert_eq!(got, names(&["ack", "empty", "done:I"]));
}

#[test]
fn every_step_in_wire_order() {
    let steps = Steps {
        close: true,
        parse: true,
        describe: true,
        bind: true,
        execute: true,
        row_limit: false,
    };
    let got = run(
        &mut Reply::extended(steps),
        &[
            (b'3', b""),
            (b'1', b""),
            (b't', PARAM_DESC),
            (b'T', ROW_DESC),
            (b'2', b""),
            (b'D', ROW),
            (b'C', b"SELECT 1\0"),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&[
            "ack",
            "ack",
            "params",
            "desc",
            "ack",
            "row",
            "complete:SELECT 1",
            "done:I"
        ])
    );
    // Sync alone: just ReadyForQuery.
    let got = run(&mut Reply::extended(Steps::default()), &[(b'Z', b"I")]);
    assert_eq!(got, names(&["done:I"]));
}

#[test]
fn extended_error_resyncs_at_ready_for_query() {
    let e = error_body("42601");
    let mut r = Reply::extended(Steps {
        parse: true,
        describe: true,
        bind: true,
        execute: true,
        row_limit: false,
        close: false,
    });
    let got = run(&mut r, &[(b'E', &e), (b'Z', b"I")]);
    assert_eq!(got, names(&["error:42601", "done:I"]));
    assert!(r.failed() && r.is_done());
    // after an error, anything but ReadyForQuery is nonsense
    let got = run(
        &mut Reply::bind_execute(),
        &[(b'2', b""), (b'E', &e), (b'D', ROW)],
    );
    assert!(got.is_err_and(|e| e.contains("expecting ReadyForQuery")));
}

fn fatal_body(code: &str) -> Vec<u8> {
    format!("SFATAL\0VFATAL\0C{code}\0Mterminating connection due to administrator command\0\0")
        .into_bytes()
}

#[test]
fn fatal_after_an_error_surfaces_with_its_sqlstate() {
    // The server is skipping to our Sync after 42P01 when pg_terminate_backend arrives: the
    // FATAL 57P01 is the event, not a protocol error, in either protocol.
    let e = error_body("42P01");
    let fatal = fatal_body("57P01");
    for mut r in [Reply::simple(), Reply::bind_execute(), Reply::prepare()] {
        let got = run(&mut r, &[(b'E', &e), (b'E', &fatal)]);
        assert_eq!(got, names(&["error:42P01", "error:57P01"]));
        assert!(r.failed() && !r.is_done());
    }
    // The event carries a fatal DbError, which the connection breaks on.
    let mut r = Reply::bind_execute();
    assert!(r.on_message(b'E', &e).is_ok());
    match r.on_message(b'E', &fatal) {
        Ok(ReplyEvent::ServerError(db)) => {
            assert!(db.is_fatal());
            assert_eq!(db.code(), "57P01");
        }
        other => panic!("expected the FATAL as a server error, got {other:?}"),
    }
}

#[test]
fn a_second_error_before_ready_for_query_keeps_the_stream_in_sync() {
    let first = error_body("42P01");
    let second = error_body("XX000");
    let got = run(
        &mut Reply::bind_execute(),
        &[(b'E', &first), (b'E', &second), (b'Z', b"I")],
    );
    assert_eq!(got, names(&["error:42P01", "error:XX000", "done:I"]));
    // Still only ReadyForQuery or another error: rows after errors are nonsense.
    let got = run(
        &mut Reply::simple(),
        &[(b'E', &first), (b'E', &second), (b'D', ROW)],
    );
    assert!(got.is_err_and(|e| e.contains("expecting ReadyForQuery or ErrorResponse")));
}

#[test]
fn error_from_the_implicit_commit_is_reported() {
    // A deferred constraint fails at Sync, after CommandComplete, before ReadyForQuery.
    let e = error_body("23505");
    let got = run(
        &mut Reply::bind_execute(),
        &[
            (b'2', b""),
            (b'C', b"INSERT 0 1\0"),
            (b'E', &e),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&["ack", "complete:INSERT 0 1", "error:23505", "done:I"])
    );
}

#[test]
fn extended_out_of_place_messages_are_protocol_errors() {
    let got = run(&mut Reply::bind_execute(), &[(b'Z', b"I")]);
    assert_eq!(
        got,
        Err("protocol error: unexpected ReadyForQuery ('Z') in the reply to an extended-protocol command: expecting BindComplete".to_owned())
    );
    let got = run(&mut Reply::prepare(), &[(b'1', b""), (b'T', ROW_DESC)]);
    assert!(got.is_err_and(|e| e.contains("expecting ParameterDescription")));
    let steps = Steps {
        parse: true,
        describe: true,
        bind: true,
        execute: true,
        row_limit: false,
        close: false,
    };
    let got = run(
        &mut Reply::extended(steps),
        &[
            (b'1', b""),
            (b't', b"\0\0"),
            (b'n', b""),
            (b'2', b""),
            (b'D', ROW),
        ],
    );
    assert!(got.is_err(), "DataRow after NoData");
    let got = run(
        &mut Reply::bind_execute(),
        &[(b'2', b""), (b'C', b"SELECT 1\0"), (b'D', ROW)],
    );
    assert!(got.is_err(), "DataRow after CommandComplete");
}

#[test]
fn async_messages_and_messages_after_done_are_rejected() {
    let got = run(&mut Reply::simple(), &[(b'S', b"a\0b\0")]);
    assert!(got.is_err_and(|e| e.contains("classify_async")));
    let got = run(&mut Reply::simple(), &[(b'Z', b"I"), (b'Z', b"I")]);
    assert!(got.is_err_and(|e| e.contains("the reply is complete")));
    let got = run(&mut Reply::simple(), &[(b'x', b"")]);
    assert!(got.is_err_and(|e| e.contains("unknown backend message type")));
}

#[test]
fn a_batch_of_parse_bind_execute_triples_under_one_sync() {
    let mut r = Reply::parse_bind_execute_many(2);
    let got = run(
        &mut r,
        &[
            (b'1', b""),
            (b'2', b""),
            (b'C', b"INSERT 0 1\0"),
            (b'1', b""),
            (b'2', b""),
            (b'C', b"INSERT 0 1\0"),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&[
            "ack",
            "ack",
            "complete:INSERT 0 1",
            "ack",
            "ack",
            "complete:INSERT 0 1",
            "done:I"
        ])
    );
    // A BindComplete where the second Parse's ParseComplete belongs: out of sync.
    let mut r = Reply::parse_bind_execute_many(2);
    let e = run(
        &mut r,
        &[
            (b'1', b""),
            (b'2', b""),
            (b'C', b"INSERT 0 1\0"),
            (b'2', b""),
        ],
    )
    .err()
    .unwrap_or_default();
    assert!(e.contains("BindComplete"), "{e}");
}

#[test]
fn a_batch_of_bind_execute_pairs_under_one_sync() {
    let mut r = Reply::bind_execute_many(3);
    let got = run(
        &mut r,
        &[
            (b'2', b""),
            (b'C', b"INSERT 0 1\0"),
            (b'2', b""),
            (b'D', ROW),
            (b'C', b"INSERT 0 1\0"),
            (b'2', b""),
            (b'C', b"INSERT 0 1\0"),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&[
            "ack",
            "complete:INSERT 0 1",
            "ack",
            "row",
            "complete:INSERT 0 1",
            "ack",
            "complete:INSERT 0 1",
            "done:I"
        ])
    );
    // ReadyForQuery before the last pair answered: the stream is out of sync.
    let mut r = Reply::bind_execute_many(2);
    let e = run(
        &mut r,
        &[(b'2', b""), (b'C', b"INSERT 0 1\0"), (b'Z', b"I")],
    )
    .err()
    .unwrap_or_default();
    assert!(e.contains("unexpected ReadyForQuery"), "{e}");
    // An error in the second pair: the server skips to the Sync.
    let mut r = Reply::bind_execute_many(3);
    let body = error_body("23505");
    let got = run(
        &mut r,
        &[
            (b'2', b""),
            (b'C', b"INSERT 0 1\0"),
            (b'2', b""),
            (b'E', &body),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&["ack", "complete:INSERT 0 1", "ack", "error:23505", "done:I"])
    );
}

#[test]
fn copy_in_waits_for_the_client_then_completes() {
    let mut r = Reply::copy();
    let got = run(&mut r, &[(b'G', b"\0\0\x01\0\0")]);
    assert_eq!(got, names(&["copy-in"]));
    assert!(r.in_copy_in());
    // The client's CopyDone happens here; the server answers.
    let got = run(&mut r, &[(b'C', b"COPY 3\0"), (b'Z', b"I")]);
    assert_eq!(got, names(&["complete:COPY 3", "done:I"]));
    assert!(!r.in_copy_in() && r.is_done());
}

#[test]
fn copy_in_error_skips_to_ready() {
    let mut r = Reply::copy();
    let e = error_body("22P02");
    let got = run(&mut r, &[(b'G', b"\0\0\0"), (b'E', &e), (b'Z', b"I")]);
    assert_eq!(got, names(&["copy-in", "error:22P02", "done:I"]));
}

#[test]
fn copy_out_streams_data_until_copy_done() {
    let mut r = Reply::copy();
    let got = run(
        &mut r,
        &[
            (b'H', b"\0\0\x01\0\0"),
            (b'd', b"1\n"),
            (b'd', b"2\n"),
            (b'c', b""),
            (b'C', b"COPY 2\0"),
            (b'Z', b"I"),
        ],
    );
    assert_eq!(
        got,
        names(&[
            "copy-out",
            "data:1\n",
            "data:2\n",
            "ack",
            "complete:COPY 2",
            "done:I"
        ])
    );
    // Data after CopyDone, CopyDone before CopyOutResponse, CopyBoth: refused.
    let cases: [&[(u8, &[u8])]; 3] = [
        &[(b'H', b"\0\0\0"), (b'c', b""), (b'd', b"x")],
        &[(b'c', b"")],
        &[(b'W', b"\0\0\0")],
    ];
    for msgs in cases {
        assert!(run(&mut Reply::copy(), msgs).is_err(), "{msgs:?}");
    }
    // A bad format byte in the response is a protocol error when parsed.
    assert!(crate::proto::message::CopyFormat::parse(b"\x02\0\0").is_err());
    assert!(crate::proto::message::CopyFormat::parse(b"\x01\0\x01\0\x05").is_err());
    let f = crate::proto::message::CopyFormat::parse(b"\x01\0\x02\0\x01\0\x01");
    assert_eq!(
        f.map(|f| (f.binary, f.column_formats)).ok(),
        Some((true, vec![1, 1]))
    );
}
