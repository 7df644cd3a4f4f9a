//! Framing and message classification over arbitrary bytes.
//!
//! Input: first byte picks `max_message_bytes` (small, so the limit is hit often); the rest
//! is a server byte stream. Every complete frame is decoded, classified and, for the
//! variable-length bodies, parsed the way a connection would.
#![no_main]

use ioxide_pg::proto::frame::{bytes_needed, Frames};
use ioxide_pg::proto::message::{classify_async, BackendMessage};
use ioxide_pg::proto::row::parameter_types;
use ioxide_pg::{Columns, DbError, Row};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
