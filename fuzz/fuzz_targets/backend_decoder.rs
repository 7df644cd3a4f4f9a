//! Framing and message classification over arbitrary bytes.
//!
//! Input: first byte picks `max_message_bytes` (small, so the limit is hit often); the rest
//! is a server byte stream. Every complete frame is decoded, classified and, for the
//! variable-length bodies, parsed the way a connection would.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ioxide_pg_fuzz::backend_decoder(data));
