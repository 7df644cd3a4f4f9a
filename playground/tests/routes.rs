//! Every route of the playground contract (DESIGN.md), against the real binary and a real
//! PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use common::{shared_env, Playground};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn every_route_answers_per_the_contract() {
    let p = Playground::start(&shared_env(&[]));
    let cases: &[(&str, u16, &str)] = &[
        ("/", 200, "42"),
        ("/sleep", 200, "42"),
        ("/err", 500, "42P01"),
        ("/add/41", 200, "42"),
        ("/add/-5", 200, "-4"),
        ("/add/abc", 400, "N must be a whole number (64-bit)"),
        ("/add/9223372036854775807", 400, "22003"),
        ("/upper/hello%20world", 200, "HELLO WORLD"),
        ("/upper/", 200, ""),
        ("/rows/3", 200, "rows=3: 1^2=1 2^2=4 3^2=9"),
        ("/rows/0", 200, "rows=0:"),
        ("/rows/100001", 400, "N must be from 0 to 100000"),
        ("/rows/-1", 400, "N must be from 0 to 100000"),
        ("/rows/many", 400, "N must be from 0 to 100000"),
    ];
    for &(path, status, body) in cases {
        let r = p.get(path);
        assert_eq!((r.status, r.body.as_str()), (status, body), "GET {path}");
        assert_eq!(r.header("content-type"), Some("text/plain"), "GET {path}");
    }
    let err = p.get("/err");
    assert!(
        err.header("x-pg-message")
            .is_some_and(|m| m.contains("this_table_does_not_exist")),
        "{err:?}"
    );
    let nope = p.get("/nope");
    assert_eq!(nope.status, 404);
}

#[test]
fn stats_reports_every_reactors_pool() {
    let p = Playground::start(&shared_env(&[("PG_POOL_SIZE", "3")]));
    assert_eq!(p.get("/").body, "42");
    // Every reactor publishes within one refresh period (250 ms).
    std::thread::sleep(Duration::from_millis(600));
    let r = p.get("/stats");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let b = &r.body;
    assert!(b.starts_with("{\"answered_by\":"), "{b}");
    assert!(b.contains("\"pool_size\":3,"), "{b}");
    assert!(b.contains("{\"reactor\":0,\"age_ms\":"), "{b}");
    assert!(b.contains("{\"reactor\":1,\"age_ms\":"), "{b}");
    assert!(!b.contains("null"), "both reactors published: {b}");
    assert!(
        b.contains("\"total\":{\"open\":6,"),
        "3 per reactor × 2: {b}"
    );
}

#[test]
fn injection_through_upper_comes_back_as_data() {
    let cluster = testkit::shared_cluster();
    cluster
        .psql("CREATE TABLE IF NOT EXISTS playground_victim (n int)")
        .unwrap();
    let p = Playground::start(&shared_env(&[]));
    // x');DROP TABLE playground_victim;--
    let r = p.get("/upper/x%27)%3BDROP%20TABLE%20playground_victim%3B--");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "X');DROP TABLE PLAYGROUND_VICTIM;--");
    assert_eq!(
        cluster
            .psql("SELECT to_regclass('playground_victim') IS NOT NULL")
            .unwrap(),
        "t",
        "the table must survive"
    );
    let r = p.get("/upper/%27%3B%20SELECT%201%3B%20--%20%E2%9C%93");
    assert_eq!(r.body, "'; SELECT 1; -- ✓");
}

#[test]
fn rows_streams_a_large_result() {
    let p = Playground::start(&shared_env(&[]));
    let r = p.get("/rows/100000");
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("rows=100000: 1^2=1 2^2=4 "));
    assert!(
        r.body.ends_with(" 100000^2=10000000000"),
        "no int4 overflow"
    );
    assert_eq!(r.body.matches('^').count(), 100_000);
}

#[test]
fn head_answers_headers_only() {
    let p = Playground::start(&shared_env(&[]));
    let mut s = p.connect();
    s.write_all(b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("Content-Length: 2\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "no body: {raw:?}");
    let r = p.get("/sleep");
    assert_eq!(r.status, 200);
    let mut s = p.connect();
    s.write_all(b"DELETE / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (responses, _) = common::read_responses(&mut s, 1);
    assert_eq!(responses[0].status, 405);
    assert_eq!(responses[0].header("allow"), Some("GET, HEAD"));
}

/// "See the overlap": eight concurrent /sleep (100 ms each) finish together, not in 800 ms.
#[test]
fn eight_concurrent_sleeps_overlap() {
    let p = Playground::start(&shared_env(&[("PG_POOL_SIZE", "8")]));
    assert_eq!(p.get("/").body, "42");
    let mut best = Duration::MAX;
    // Best of three, so a test running in parallel cannot make it flaky.
    for _ in 0..3 {
        let start = Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let addr = p.addr();
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
                    s.write_all(b"GET /sleep HTTP/1.1\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    let (r, _) = common::read_responses(&mut s, 1);
                    assert_eq!(r[0].body, "42");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        best = best.min(start.elapsed());
    }
    assert!(
        best < Duration::from_millis(400),
        "eight 100 ms sleeps took {best:?}: they did not overlap"
    );
}
