//! The startup machine, then pipelined reply machines, fed an arbitrary server byte stream in
//! random-sized chunks — the way a connection drives them.
//!
//! Input layout: byte 0 = max_message_bytes selector, byte 1 = which commands are in flight
//! (2 bits each: simple / prepare / bind+execute / all extended steps), byte 2 = chunk size
//! seed; the rest is the stream. A fuzzer-found valid startup is unlikely, so byte 1's top bit
//! prepends AuthenticationOk + ReadyForQuery to reach the reply machines quickly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ioxide_pg_fuzz::connection_state(data));
