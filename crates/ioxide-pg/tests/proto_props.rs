//! Property tests for the protocol core.
//!
//! 1. A valid server byte stream (startup, then replies to several pipelined commands with
//!    asynchronous messages sprinkled in) split at random points and fed incrementally gives
//!    the same events as fed whole — and the events the stream was built from.
//! 2. Arbitrary (or mutated valid) bytes never panic the framer, the startup machine or the
//!    reply machines, never yield a frame larger than `max_message_bytes`, and never leave
//!    more than `max_message_bytes` buffered.
//! 3. Every body decoder survives arbitrary bodies.
//!
//! The fuzz targets in `fuzz/` reach the same entry points (`Frames`, `classify_async`,
//! `Driver`), so these also stand in for fuzzing where cargo-fuzz cannot run.

use bytes::BytesMut;
use ioxide_pg::proto::driver::Driver;
use ioxide_pg::proto::frame::{bytes_needed, next_frame, Frames};
use ioxide_pg::proto::message::{classify_async, BackendMessage};
use ioxide_pg::proto::reply::{Reply, ReplyEvent, Steps};
use ioxide_pg::proto::row::parameter_types;
use ioxide_pg::{Columns, DbError, PgOptions, QueryResult, Row};
use proptest::prelude::*;

type Msg = (u8, Vec<u8>);

fn encode(msgs: &[Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in msgs {
        out.push(*tag);
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

fn row_desc(ncols: u16, format: i16) -> Msg {
    let mut b = ncols.to_be_bytes().to_vec();
    for i in 0..ncols {
        cstr(&mut b, &format!("c{i}"));
        b.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        b.extend_from_slice(&format.to_be_bytes());
    }
    (b'T', b)
}

fn data_row(fields: &[Option<Vec<u8>>]) -> Msg {
    let mut b = (fields.len() as u16).to_be_bytes().to_vec();
    for f in fields {
        match f {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    (b'D', b)
}

fn complete(tag: &str) -> Msg {
    let mut b = Vec::new();
    cstr(&mut b, tag);
    (b'C', b)
}

fn error(code: &str, tag: u8) -> Msg {
    let mut b = Vec::new();
    for (t, v) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', code),
        (b'M', "it failed"),
    ] {
        b.push(t);
        cstr(&mut b, v);
    }
    b.push(0);
    (tag, b)
}

fn ready(status: u8) -> Msg {
    (b'Z', vec![status])
}

/// A field value: text-ish bytes or NULL.
fn field() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..12))
}

/// A result set of a simple query: rows of `ncols` fields, or a row-less command.
fn result_set() -> impl Strategy<Value = Vec<Msg>> {
    prop_oneof![
        (0u16..4).prop_flat_map(|n| {
            prop::collection::vec(prop::collection::vec(field(), n as usize), 0..5).prop_map(
                move |rows| {
                    let mut msgs = vec![row_desc(n, 0)];
                    msgs.extend(rows.iter().map(|r| data_row(r)));
                    msgs.push(complete(&format!("SELECT {}", rows.len())));
                    msgs
                },
            )
        }),
        Just(vec![complete("CREATE TABLE")]),
        Just(vec![complete("INSERT 0 3")]),
        Just(vec![(b'I', vec![])]),
    ]
}

/// One command: its reply machine and the server's messages for it.
fn command() -> impl Strategy<Value = (Reply, Vec<Msg>)> {
    let simple = (
        prop::collection::vec(result_set(), 0..4),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(sets, err)| {
            let mut msgs: Vec<Msg> = sets.into_iter().flatten().collect();
            if let Some(at) = err {
                msgs.truncate(at.index(msgs.len() + 1));
                msgs.push(error("42P01", b'E'));
            }
            msgs.push(ready(b'I'));
            (Reply::simple(), msgs)
        });
    let steps = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(close, parse, describe, exec, limit)| Steps {
            close,
            parse,
            describe,
            bind: exec,
            execute: exec,
            row_limit: exec && limit,
        });
    let extended = (
        steps,
        0u16..3,
        any::<bool>(),
        prop::collection::vec(prop::collection::vec(field(), 2), 0..5),
        0u8..3,
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(steps, nparams, no_data, rows, end, err)| {
            let mut msgs = Vec::new();
            if steps.close {
                msgs.push((b'3', vec![]));
            }
            if steps.parse {
                msgs.push((b'1', vec![]));
            }
            let mut rows_allowed = true;
            if steps.describe {
                let mut p = nparams.to_be_bytes().to_vec();
                (0..nparams).for_each(|_| p.extend_from_slice(&23u32.to_be_bytes()));
                msgs.push((b't', p));
                if no_data {
                    rows_allowed = false;
                    msgs.push((b'n', vec![]));
                } else {
                    msgs.push(row_desc(2, 0));
                }
            }
            if steps.bind {
                msgs.push((b'2', vec![]));
            }
            if steps.execute {
                if rows_allowed {
                    msgs.extend(rows.iter().map(|r| data_row(r)));
                }
                msgs.push(match end {
                    0 => complete(&format!("SELECT {}", rows.len())),
                    1 => (b'I', vec![]),
                    // PortalSuspended may end only an Execute that asked for a row limit.
                    _ if steps.row_limit => (b's', vec![]),
                    _ => complete(&format!("SELECT {}", rows.len())),
                });
            }
            if let Some(at) = err {
                msgs.truncate(at.index(msgs.len() + 1));
                msgs.push(error("22012", b'E'));
            }
            msgs.push(ready(b'T'));
            (Reply::extended(steps), msgs)
        });
    prop_oneof![simple, extended]
}

fn async_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        ("[a-z_]{1,12}", "[ -~]{0,12}").prop_map(|(n, v)| {
            let mut b = Vec::new();
            cstr(&mut b, &n);
            cstr(&mut b, &v);
            (b'S', b)
        }),
        Just(error("01000", b'N')),
        ("[a-z]{1,8}", "[ -~]{0,20}").prop_map(|(c, p)| {
            let mut b = 77i32.to_be_bytes().to_vec();
            cstr(&mut b, &c);
            cstr(&mut b, &p);
            (b'A', b)
        }),
    ]
}

fn startup_msgs() -> impl Strategy<Value = Vec<Msg>> {
    (prop::collection::vec(async_msg(), 0..6), any::<bool>()).prop_map(|(params, notice)| {
        let mut msgs = vec![(b'R', vec![0, 0, 0, 0])];
        if notice {
            msgs.push(error("01000", b'N'));
        }
        msgs.extend(params.into_iter().filter(|(t, _)| *t == b'S'));
        msgs.push((b'K', vec![0, 0, 0, 9, 0, 0, 0, 4]));
        msgs.push(ready(b'I'));
        msgs
    })
}

/// A whole valid session: startup, then commands with async messages in between messages.
fn session() -> impl Strategy<Value = (Vec<Reply>, Vec<u8>)> {
    (
        startup_msgs(),
        prop::collection::vec(command(), 0..8),
        prop::collection::vec((any::<prop::sample::Index>(), async_msg()), 0..6),
    )
        .prop_map(|(startup, cmds, asyncs)| {
            let (replies, replies_msgs): (Vec<Reply>, Vec<Vec<Msg>>) = cmds.into_iter().unzip();
            let mut after: Vec<Msg> = replies_msgs.into_iter().flatten().collect();
            for (at, m) in asyncs {
                let i = at.index(after.len() + 1);
                after.insert(i, m);
            }
            let mut bytes = encode(&startup);
            bytes.extend(encode(&after));
            (replies, bytes)
        })
}

/// Feeds `bytes` in chunks cut at `cuts`, returning every event (as text) or the first error,
/// checking buffer bounds on the way.
fn drive(
    replies: &[Reply],
    bytes: &[u8],
    cuts: &[usize],
    max: usize,
) -> Result<Vec<String>, String> {
    let mut driver = Driver::new(&PgOptions::new().user("u").password("p"));
    let mut out = BytesMut::new();
    driver.start(&mut out).map_err(|e| e.to_string())?;
    replies.iter().for_each(|r| driver.push(r.clone()));
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut prev = 0;
    for cut in cuts {
        buf.extend_from_slice(&bytes[prev..cut]);
        prev = cut;
        let mut frames = Frames::new(&buf, max);
        for frame in frames.by_ref() {
            let (tag, body) = frame.map_err(|e| e.to_string())?;
            assert!(body.len() + 5 <= max, "frame over max");
            let ev = driver
                .on_frame(tag, body, &mut out)
                .map_err(|e| e.to_string())?;
            events.push(format!("{ev:?}"));
        }
        let used = frames.consumed();
        buf.drain(..used);
        assert!(
            buf.len() < max,
            "buffered {} bytes with max {max}",
            buf.len()
        );
        let need = bytes_needed(&buf, max).map_err(|e| e.to_string())?;
        assert!(buf.len() + need <= max.max(5));
    }
    if !buf.is_empty() {
        return Err(format!("{} bytes left over", buf.len()));
    }
    if driver.in_flight() != 0 {
        return Err(format!("{} commands still in flight", driver.in_flight()));
    }
    Ok(events)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_splits_parse_the_same((replies, bytes) in session(), cuts in prop::collection::vec(any::<usize>(), 0..24)) {
        let whole = drive(&replies, &bytes, &[], 1 << 20);
        prop_assert!(whole.is_ok(), "valid stream failed: {:?}", whole);
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        let split = drive(&replies, &bytes, &cuts, 1 << 20);
        prop_assert_eq!(&whole, &split);
        let byte_by_byte: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(&whole, &drive(&replies, &bytes, &byte_by_byte, 1 << 20));
        let events = whole.unwrap_or_default();
        let dones = events.iter().filter(|e| e.contains("Done {")).count();
        prop_assert_eq!(dones, replies.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        max in 5usize..600,
        valid_prefix in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        if valid_prefix {
            stream = encode(&[(b'R', vec![0; 4]), (b'Z', vec![b'I'])]);
        }
        stream.extend_from_slice(&bytes);
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        let replies = [Reply::simple(), Reply::prepare(), Reply::bind_execute()];
        let _ = drive(&replies, &stream, &cuts, max);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        (replies, mut bytes) in session(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max in 5usize..4096,
    ) {
        for (at, b) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
        }
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        let _ = drive(&replies, &bytes, &cuts, max);
    }

    #[test]
    fn framer_never_reports_more_than_max(buf in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
        if let Ok(Some(f)) = next_frame(&buf, max) {
            prop_assert!(f.len <= max && f.len <= buf.len() && f.len >= 5);
            prop_assert_eq!(f.body(&buf).len(), f.len - 5);
        }
    }

    #[test]
    fn body_decoders_survive_arbitrary_bodies(tag in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = BackendMessage::decode(tag, &body);
        let _ = classify_async(tag, &body);
        let _ = DbError::parse(&body);
        let _ = parameter_types(&body);
        if let Ok(cols) = Columns::parse(&body) {
            for c in cols.iter() {
                let _ = c.type_().name();
            }
        }
        for ncols in 0..3u16 {
            let cols = Columns::parse(&row_desc(ncols, 1).1).unwrap_or_default();
            if let Ok(row) = Row::new(&body, &cols) {
                for i in 0..row.len() {
                    let _ = row.get::<Option<&str>>(i);
                    let _ = row.get::<Option<i64>>(i);
                    let _ = row.get_text(i);
                }
            }
        }
        let mut r = QueryResult::new();
        let _ = r.accept(&ReplyEvent::RowDescription(&body));
        let _ = r.accept(&ReplyEvent::DataRow(&body));
        for reply in [Reply::simple(), Reply::prepare(), Reply::bind_execute()] {
            let _ = reply.clone().on_message(tag, &body);
        }
    }
}
