//! Backend message decoding: ioxide-pg's own decoder against `postgres-protocol`'s
//! `Message::parse`, on the reply streams of the two benchmark queries.
//!
//! `decode [--replies N] [--rounds R]` builds N pipelined replies of each query, then decodes
//! them R times both ways and prints nanoseconds per message (median of 5 runs). Run it under
//! `valgrind --tool=callgrind` for instruction counts instead of times.
//!
//! * ours: `frame::next_frame` + `BackendMessage::decode` over the receive buffer (`&[u8]`),
//!   borrowing every body;
//! * the crate's: `Message::parse(&mut BytesMut)`, which splits each message off the buffer
//!   and freezes it into a `Bytes` (a reference count per message). Its input buffers are
//!   prepared outside the timed loop, as if received straight into `BytesMut`.
//!
//! Both only decode (bodies stay unparsed: DataRow and RowDescription are lazy in both).

use bytes::{BufMut, BytesMut};
use ioxide_pg::proto::frame;
use ioxide_pg::proto::message::BackendMessage;
use postgres_protocol::message::backend::Message;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// RowDescription for one column of `type_oid`.
fn row_description(out: &mut Vec<u8>, name: &str, type_oid: u32, len: i16) {
    let mut b = Vec::new();
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(&0u32.to_be_bytes()); // table oid
    b.extend_from_slice(&0i16.to_be_bytes()); // column
    b.extend_from_slice(&type_oid.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // modifier
    b.extend_from_slice(&0i16.to_be_bytes()); // format
    message(out, b'T', &b);
}

fn data_row(out: &mut Vec<u8>, value: &[u8]) {
    let mut b = Vec::new();
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
    b.extend_from_slice(value);
    message(out, b'D', &b);
}

/// `SELECT 42` (simple protocol): RowDescription, DataRow, CommandComplete, ReadyForQuery.
fn select42(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        row_description(&mut out, "?column?", 23, 4);
        data_row(&mut out, b"42");
        message(&mut out, b'C', b"SELECT 1\0");
        message(&mut out, b'Z', b"I");
    }
    out
}

/// `SELECT $1::int8 + 1` from the statement cache: BindComplete, DataRow (binary int8),
/// CommandComplete, ReadyForQuery.
fn param(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        message(&mut out, b'2', b"");
        data_row(&mut out, &42i64.to_be_bytes());
        message(&mut out, b'C', b"SELECT 1\0");
        message(&mut out, b'Z', b"I");
    }
    out
}

fn ours(stream: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while let Ok(Some(f)) = frame::next_frame(&stream[pos..], 1 << 26) {
        let body = &stream[pos + frame::HEADER_LEN..pos + f.len];
        match BackendMessage::decode(f.tag, body) {
            Ok(m) => {
                black_box(&m);
            }
            Err(_) => return usize::MAX,
        }
        pos += f.len;
        n += 1;
    }
    n
}

fn crates(mut buf: BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(m)) = Message::parse(&mut buf) {
        black_box(&m);
        n += 1;
    }
    n
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let mut replies = 1000usize;
    let mut rounds = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--replies", Some(v)) => replies = v,
            ("--rounds", Some(v)) => rounds = v,
            _ => {
                eprintln!("usage: decode [--replies N] [--rounds R]");
                return ExitCode::from(2);
            }
        }
    }
    println!("decode: {replies} pipelined replies x {rounds} rounds, ns per message, median of 5");
    println!(
        "{:<10} {:>8} {:>16} {:>8}",
        "query", "ours", "postgres-protocol", "ratio"
    );
    for (name, stream) in [("select42", select42(replies)), ("param", param(replies))] {
        let msgs = ours(&stream);
        let mut template = BytesMut::with_capacity(stream.len());
        template.put_slice(&stream);
        if crates(template.clone()) != msgs {
            eprintln!("decode: the two decoders disagree on {name}");
            return ExitCode::FAILURE;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..rounds {
                black_box(ours(black_box(&stream)));
            }
            a.push(t.elapsed().as_nanos() as f64 / (rounds * msgs) as f64);
            let inputs: Vec<BytesMut> = (0..rounds).map(|_| template.clone()).collect();
            let t = Instant::now();
            for buf in inputs {
                black_box(crates(black_box(buf)));
            }
            b.push(t.elapsed().as_nanos() as f64 / (rounds * msgs) as f64);
        }
        let (a, b) = (median(a), median(b));
        println!("{name:<10} {a:>8.1} {b:>16.1} {:>7.2}x", b / a);
    }
    ExitCode::SUCCESS
}
