//! The bodies of the fuzz targets, as plain functions: `fuzz_targets/*.rs` hand them
//! libFuzzer's input, and `crates/ioxide-pg/tests/hostile_more.rs` (stable Rust, every
//! `cargo test`) replays the kept corpus (`corpus/`, `artifacts-kept/`) through them.
//!
//! Both assert that no frame exceeds `max_message_bytes` and that the receive buffer never
//! holds `max_message_bytes` or more; any panic is a bug.

use bytes::BytesMut;
use ioxide_pg::proto::driver::Driver;
use ioxide_pg::proto::frame::{bytes_needed, Frames};
use ioxide_pg::proto::message::{classify_async, BackendMessage};
use ioxide_pg::proto::reply::{Reply, Steps};
use ioxide_pg::proto::row::parameter_types;
use ioxide_pg::{Columns, DbError, PgOptions, Row};

const STARTUP_OK: &[u8] = b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I";

/// Framing and message classification over arbitrary bytes.
///
/// Input: first byte picks `max_message_bytes` (small, so the limit is hit often); the rest
/// is a server byte stream. Every complete frame is decoded, classified and, for the
/// variable-length bodies, parsed the way a connection would.
pub fn backend_decoder(data: &[u8]) {
    let Some((&m, stream)) = data.split_first() else {
        return;
    };
    let max = 5 + usize::from(m) * 8;
    let mut frames = Frames::new(stream, max);
    let mut columns = Columns::default();
    for frame in frames.by_ref() {
        let Ok((tag, body)) = frame else { break };
        assert!(body.len() + 5 <= max);
        let _ = classify_async(tag, body);
        match BackendMessage::decode(tag, body) {
            Ok(BackendMessage::RowDescription(b)) => {
                if let Ok(mut c) = Columns::parse(b) {
                    c.set_format(ioxide_pg::Format::Binary);
                    columns = c;
                }
            }
            Ok(BackendMessage::DataRow(b)) => {
                if let Ok(row) = Row::new(b, &columns) {
                    for i in 0..row.len() {
                        let _ = row.get::<Option<&str>>(i);
                        let _ = row.get::<Option<i32>>(i);
                    }
                }
            }
            Ok(BackendMessage::ErrorResponse(b) | BackendMessage::NoticeResponse(b)) => {
                let _ = DbError::parse(b).map(|e| e.to_string());
            }
            Ok(BackendMessage::ParameterDescription(b)) => {
                let _ = parameter_types(b);
            }
            _ => {}
        }
    }
    let rest = &stream[frames.consumed()..];
    if let Ok(need) = bytes_needed(rest, max) {
        assert!(rest.len() + need <= max.max(5));
    }
}

/// The startup machine, then pipelined reply machines, fed an arbitrary server byte stream in
/// random-sized chunks — the way a connection drives them.
///
/// Input layout: byte 0 = max_message_bytes selector, byte 1 = which commands are in flight
/// (2 bits each: simple / prepare / bind+execute / all extended steps), byte 2 = chunk size
/// seed; the rest is the stream. A fuzzer-found valid startup is unlikely, so byte 1's top bit
/// prepends AuthenticationOk + ReadyForQuery to reach the reply machines quickly.
pub fn connection_state(data: &[u8]) {
    let [m, cmds, chunk_seed, rest @ ..] = data else {
        return;
    };
    let max = 5 + usize::from(*m) * 16;
    let mut stream = Vec::new();
    if cmds & 0x80 != 0 {
        stream.extend_from_slice(STARTUP_OK);
    }
    stream.extend_from_slice(rest);

    let mut driver = Driver::new(&PgOptions::new().user("fuzz").password("pw"));
    let mut out = BytesMut::new();
    if driver.start(&mut out).is_err() {
        return;
    }
    for i in 0..3 {
        driver.push(match (cmds >> (2 * i)) & 3 {
            0 => Reply::simple(),
            1 => Reply::prepare(),
            2 => Reply::bind_execute(),
            _ => Reply::extended(Steps {
                close: true,
                parse: true,
                describe: true,
                bind: true,
                execute: true,
                row_limit: false,
            }),
        });
    }

    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut seed = u32::from(*chunk_seed) | 1;
    while pos < stream.len() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed as usize % 64 + 1).min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        let mut frames = Frames::new(&buf, max);
        for frame in frames.by_ref() {
            let Ok((tag, body)) = frame else { return };
            assert!(body.len() + 5 <= max);
            if driver.on_frame(tag, body, &mut out).is_err() {
                return;
            }
        }
        let used = frames.consumed();
        buf.drain(..used);
        assert!(buf.len() < max);
    }
}
