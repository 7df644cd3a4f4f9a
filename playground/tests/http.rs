//! HTTP/1.1 behaviour: keep-alive, pipelining, limits, hostile input, idle and vanishing
//! clients.
#![allow(clippy::unwrap_used)]

mod common;

use common::{closed_within, read_responses, shared_env, Playground};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn pipelined_requests_are_answered_in_order() {
    let p = Playground::start(&shared_env(&[]));
    let mut s = p.connect();
    // Three requests in one write; the slow one first, so order is not luck.
    s.write_all(
        b"GET /sleep HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /add/1 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /upper/abc HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let (r, _) = read_responses(&mut s, 3);
    let bodies: Vec<&str> = r.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, ["42", "2", "ABC"]);
    assert!(r
        .iter()
        .all(|r| r.status == 200 && r.header("connection").is_none()));
    // The connection is still open for more.
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (r, _) = read_responses(&mut s, 1);
    assert_eq!(r[0].body, "42");
}

#[test]
fn a_request_sent_while_the_previous_one_runs_is_answered_too() {
    let p = Playground::start(&shared_env(&[]));
    let mut s = p.connect();
    let start = Instant::now();
    s.write_all(b"GET /sleep HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    // Arrives while /sleep runs; the client then waits for both answers.
    s.write_all(b"GET /add/1 HTTP/1.1\r\n\r\nGET /add/2 HTTP/1.1\r\n\r\n")
        .unwrap();
    let (r, _) = read_responses(&mut s, 3);
    let bodies: Vec<&str> = r.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, ["42", "2", "3"]);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn pipelined_requests_run_concurrently() {
    let p = Playground::start(&shared_env(&[("PG_POOL_SIZE", "4"), ("REACTORS", "1")]));
    assert_eq!(p.get("/").body, "42");
    // Wait for the warm-up to finish: with fewer connections open, pipelining would put the
    // sleeps on one connection, one after another.
    let warm = Instant::now() + Duration::from_secs(5);
    while !p.get("/stats").body.contains("\"total\":{\"open\":4,") {
        assert!(Instant::now() < warm, "pool did not warm up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = p.connect();
    let start = Instant::now();
    s.write_all(&b"GET /sleep HTTP/1.1\r\n\r\n".repeat(3))
        .unwrap();
    let (r, _) = read_responses(&mut s, 3);
    assert_eq!(r.len(), 3);
    assert!(
        start.elapsed() < Duration::from_millis(280),
        "three pipelined 100 ms sleeps took {:?}",
        start.elapsed()
    );
}

#[test]
fn keep_alive_serves_requests_split_across_writes() {
    let p = Playground::start(&shared_env(&[]));
    let mut s = p.connect();
    for n in 0..20 {
        let req = format!("GET /add/{n} HTTP/1.1\r\nHost: t\r\n\r\n");
        // Byte by byte for one of them: partial requests wait for the rest.
        if n == 7 {
            for b in req.as_bytes() {
                s.write_all(&[*b]).unwrap();
                s.flush().unwrap();
            }
        } else {
            s.write_all(req.as_bytes()).unwrap();
        }
        let (r, _) = read_responses(&mut s, 1);
        assert_eq!(r[0].body, (n + 1).to_string());
    }
}

#[test]
fn connection_close_is_honored() {
    let p = Playground::start(&shared_env(&[]));
    let mut s = p.connect();
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let (r, raw) = read_responses(&mut s, 2);
    assert_eq!(r.len(), 1, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(r[0].header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    // HTTP/1.0 closes by default.
    let mut s = p.connect();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let (r, _) = read_responses(&mut s, 1);
    assert_eq!(r[0].body, "42");
    assert!(closed_within(&mut s, Duration::from_secs(3)));
}

#[test]
fn malformed_request_is_400_and_closes() {
    let p = Playground::start(&shared_env(&[]));
    for bad in [
        &b"BLAH\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let mut s = p.connect();
        s.write_all(bad).unwrap();
        let (r, raw) = read_responses(&mut s, 1);
        assert_eq!(r.len(), 1, "{:?}: {}", bad, String::from_utf8_lossy(&raw));
        assert_eq!(r[0].status, 400);
        assert_eq!(r[0].header("connection"), Some("close"));
        assert!(closed_within(&mut s, Duration::from_secs(3)));
    }
    // Good requests before the bad one in the same write are answered first.
    let mut s = p.connect();
    s.write_all(b"GET /add/1 HTTP/1.1\r\n\r\nBLAH\r\n\r\n")
        .unwrap();
    let (r, _) = read_responses(&mut s, 2);
    let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400]);
    assert_eq!(p.get("/").body, "42");
}

#[test]
fn oversized_heads_are_431_and_close() {
    let p = Playground::start(&shared_env(&[]));
    // One huge header (the head passes 8 KiB before it ends).
    let mut s = p.connect();
    let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 20_000));
    req.extend_from_slice(b"\r\n\r\n");
    s.write_all(&req).unwrap();
    let (r, _) = read_responses(&mut s, 1);
    assert_eq!(r[0].status, 431);
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    // Too many header lines.
    let mut s = p.connect();
    let mut req = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).unwrap();
    let (r, _) = read_responses(&mut s, 1);
    assert_eq!(r[0].status, 431);
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    assert_eq!(p.get("/").body, "42");
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_timeout() {
    let p = Playground::start(&shared_env(&[("HTTP_IDLE_TIMEOUT_MS", "300")]));
    let mut s = p.connect();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (r, _) = read_responses(&mut s, 1);
    assert_eq!(r[0].body, "42");
    let start = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    let idle = start.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
    // A half-sent request counts as idle too, and dripping it byte by byte does not extend
    // the limit: a request must be complete within one timeout of its first byte.
    let mut s = p.connect();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let start = Instant::now();
    let mut closed_after = None;
    let drip = b"GET / HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain([b'a'; 200].iter());
    for b in drip {
        let mut probe = [0u8; 1];
        let gone = s.write_all(&[*b]).is_err()
            || matches!(std::io::Read::read(&mut s, &mut probe), Ok(0))
            || matches!(std::io::Read::read(&mut s, &mut probe),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
        if gone {
            closed_after = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed_after = closed_after.expect("a dripping request held the connection open");
    assert!(
        closed_after < Duration::from_millis(1500),
        "closed after {closed_after:?}"
    );
}

#[test]
fn a_busy_connection_outlives_many_idle_timeouts() {
    // The idle limit is one ring timeout per connection, re-armed when it fires before a
    // deadline that moved on: a connection that keeps sending must never be closed by it,
    // and one that stops must still be closed within about one timeout.
    let p = Playground::start(&shared_env(&[("HTTP_IDLE_TIMEOUT_MS", "300")]));
    let mut s = p.connect();
    let start = Instant::now();
    let mut answered = 0;
    let mut last_answer = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(b"GET /add/41 HTTP/1.1\r\n\r\n").unwrap();
        let (r, _) = read_responses(&mut s, 1);
        last_answer = Instant::now();
        assert_eq!((r[0].status, r[0].body.as_str()), (200, "42"));
        answered += 1;
    }
    assert!(answered >= 10, "only {answered} answers in 1.5 s");
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    let idle = last_answer.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[test]
fn client_hanging_up_mid_query_leaves_the_pool_serving() {
    // One reactor, so every request meets the same pool of four connections.
    let p = Playground::start(&shared_env(&[("REACTORS", "1"), ("PG_POOL_SIZE", "4")]));
    assert_eq!(p.get("/").body, "42");
    // Hang up mid-query: two 10 s /hang and two /sleep.
    for path in ["/hang", "/sleep", "/hang", "/sleep"] {
        let mut s = p.connect();
        write!(s, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        drop(s);
    }
    // The other connections keep answering at once: nothing waits behind an abandoned
    // query, and every answer is the right one.
    for n in 0..20 {
        let start = Instant::now();
        assert_eq!(p.get(&format!("/add/{n}")).body, (n + 1).to_string());
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "request {n} waited {:?}",
            start.elapsed()
        );
    }
    assert_eq!(p.get("/sleep").body, "42");
    let stats = p.get("/stats").body;
    assert!(stats.contains("\"broken_total\":0,"), "{stats}");
    assert!(stats.contains("\"total\":{\"open\":4,"), "{stats}");
}
