//! The startup machine, then pipelined reply machines, fed an arbitrary server byte stream in
//! random-sized chunks — the way a connection drives them.
//!
//! Input layout: byte 0 = max_message_bytes selector, byte 1 = which commands are in flight
//! (2 bits each: simple / prepare / bind+execute / all extended steps), byte 2 = chunk size
//! seed; the rest is the stream. A fuzzer-found valid startup is unlikely, so byte 1's top bit
//! prepends AuthenticationOk + ReadyForQuery to reach the reply machines quickly.
#![no_main]

use bytes::BytesMut;
use ioxide_pg::proto::driver::Driver;
use ioxide_pg::proto::frame::Frames;
use ioxide_pg::proto::reply::{Reply, Steps};
use ioxide_pg::PgOptions;
use libfuzzer_sys::fuzz_target;

const STARTUP_OK: &[u8] = b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I";

fuzz_target!(|data: &[u8]| {
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
});
