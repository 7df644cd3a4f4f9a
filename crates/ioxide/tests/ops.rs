//! Every ring op against real loopback sockets.
#![allow(clippy::unwrap_used)]

use ioxide::future::{select, Either};
use ioxide::net::{Shutdown, Stream, TcpListener};
use ioxide::time::{sleep, timeout, Ticker};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn std_listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[test]
fn tcp_connect_send_recv_roundtrip() {
    let (l, addr) = std_listener();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        buf
    });
    let got = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        assert!(s.nodelay().unwrap(), "connect sets TCP_NODELAY");
        let (r, _) = s.send_all(b"hello".to_vec()).await;
        r.unwrap();
        let mut buf = Vec::with_capacity(16);
        while buf.len() < 5 {
            let (r, b) = s.recv(buf).await;
            buf = b;
            assert!(r.unwrap() > 0, "unexpected EOF");
        }
        buf
    });
    assert_eq!(&got, b"hello");
    assert_eq!(&peer.join().unwrap(), b"hello");
}

#[test]
fn ipv6_loopback_connect_works() {
    let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback on this machine; skipping");
        return;
    };
    let addr = l.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"v6").unwrap();
    });
    let got = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        assert!(s.peer_addr().unwrap().is_ipv6());
        let (r, b) = s.recv(Vec::with_capacity(8)).await;
        r.unwrap();
        b
    });
    peer.join().unwrap();
    assert_eq!(&got, b"v6");
}

#[test]
fn unix_socket_connect_send_recv() {
    let dir = std::env::temp_dir().join(format!("ioxide-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    let p = path.clone();
    let got = ioxide::block_on(async move {
        let s = Stream::connect_unix(&p).await.unwrap();
        let (r, _) = s.send_all(b"ping".to_vec()).await;
        r.unwrap();
        let (r, b) = s.recv(Vec::with_capacity(8)).await;
        assert_eq!(r.unwrap(), 4);
        b
    });
    peer.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(&got, b"ping");
}

#[test]
fn connect_refused_is_an_io_error_with_errno() {
    let (l, addr) = std_listener();
    drop(l);
    let err = ioxide::block_on(Stream::connect(addr)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(err.raw_os_error(), Some(libc_econnrefused()));
}

fn libc_econnrefused() -> i32 {
    111
}

#[test]
fn connect_to_a_blackholed_listener_times_out_via_timeout() {
    // A listener whose accept queue is full drops further SYNs: connect hangs, on loopback.
    let (l, addr) = std_listener();
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..4096 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => held.push(s),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "could not fill the accept queue");
    let started = Instant::now();
    let r = ioxide::block_on(timeout(Duration::from_millis(300), Stream::connect(addr)));
    let took = started.elapsed();
    assert!(r.is_err(), "connect should not complete");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(l);
}

#[test]
fn short_writes_are_finished_by_send_all() {
    let (l, addr) = std_listener();
    const LEN: usize = 8 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // Let the sender fill the socket buffers first.
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).unwrap();
        got
    });
    let (short, sent) = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        // One send of 8 MiB to a peer that is not reading takes only what fits.
        let (r, data) = s.send(data, 0).await;
        let first = r.unwrap();
        let (r, data) = s.send_all(data[first..].to_vec()).await;
        r.unwrap();
        let _ = data;
        s.shutdown(Shutdown::Write).await.unwrap();
        (first, LEN)
    });
    let got = peer.join().unwrap();
    assert!(
        short < sent,
        "expected a short write, the kernel took all {short} bytes"
    );
    assert_eq!(got.len(), LEN);
    assert!(got == expected, "payload corrupted");
}

#[test]
fn shutdown_write_gives_the_peer_eof_and_close_releases_the_socket() {
    let (l, addr) = std_listener();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let (r, _) = s.send_all(&b"bye"[..]).await;
        r.unwrap();
        s.shutdown(Shutdown::Write).await.unwrap();
        s.close().await.unwrap();
    });
    assert_eq!(peer.join().unwrap(), b"bye");
}

#[test]
fn recv_reports_eof_as_zero() {
    let (l, addr) = std_listener();
    let peer = std::thread::spawn(move || drop(l.accept().unwrap()));
    let n = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let (r, _) = s.recv(Vec::with_capacity(8)).await;
        r.unwrap()
    });
    peer.join().unwrap();
    assert_eq!(n, 0);
}

#[test]
fn recv_into_a_full_buffer_is_an_error_not_eof() {
    let (l, addr) = std_listener();
    let peer = std::thread::spawn(move || l.accept().unwrap());
    let err = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let (r, _) = s.recv(Vec::new()).await;
        r.unwrap_err()
    });
    drop(peer.join().unwrap());
    assert_eq!(err.raw_os_error(), Some(105)); // ENOBUFS
}

#[test]
fn multishot_accept_serves_many_connections() {
    let clients = 50;
    let got = ioxide::block_on(async move {
        let mut l = TcpListener::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            for i in 0..clients {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(&[i as u8]).unwrap();
            }
        });
        let reactor = ioxide::Reactor::current();
        let before = reactor.ring_stats().sqes;
        let mut seen = Vec::new();
        for _ in 0..clients {
            let s = l.accept().await.unwrap();
            let (r, b) = s.recv(Vec::with_capacity(1)).await;
            assert_eq!(r.unwrap(), 1);
            seen.push(b[0]);
        }
        // Per client one recv and one close; the accepts themselves are one multishot SQE
        // (re-armed only if the kernel ends it), not one each.
        let accept_sqes = reactor.ring_stats().sqes - before - 2 * clients as u64;
        assert!(
            accept_sqes <= 3,
            "{accept_sqes} accept SQEs for {clients} connections"
        );
        t.join().unwrap();
        seen
    });
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..clients as u8).collect::<Vec<_>>());
}

#[test]
fn accepted_connections_inherit_tcp_nodelay_from_the_listener() {
    // The listener carries TCP_NODELAY and Linux copies it into every accepted socket, so
    // accept makes no setsockopt per connection; the option must still be on.
    ioxide::block_on(async {
        let mut l = TcpListener::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = l.local_addr().unwrap();
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        for _ in &clients {
            let s = l.accept().await.unwrap();
            assert!(s.nodelay().unwrap(), "accepted socket without TCP_NODELAY");
        }
    });
}

#[test]
fn sleep_waits_about_its_duration() {
    let started = Instant::now();
    ioxide::block_on(sleep(Duration::from_millis(120)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(115) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn timeout_returns_the_value_when_in_time() {
    let r = ioxide::block_on(timeout(Duration::from_secs(2), async {
        sleep(Duration::from_millis(10)).await;
        7
    }));
    assert_eq!(r, Ok(7));
}

#[test]
fn tickers_fire_at_their_period() {
    let started = Instant::now();
    let (scheduled, fired) = ioxide::block_on(async {
        let mut t = Ticker::new(Duration::from_millis(50));
        let (mut scheduled, mut fired) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            scheduled.push(t.tick().await);
            fired.push(Instant::now());
        }
        (scheduled, fired)
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    for w in scheduled.windows(2) {
        assert_eq!(
            w[1] - w[0],
            Duration::from_millis(50),
            "scheduled instants drift"
        );
    }
    // Each tick actually fires at its scheduled instant (never early; late by at most a
    // generous margin on a shared machine), so the gaps between firings are ~the period.
    for (s, f) in scheduled.iter().zip(&fired) {
        assert!(f >= s, "a tick fired before its instant");
        let late = *f - *s;
        assert!(
            late < Duration::from_millis(40),
            "a tick fired {late:?} late"
        );
    }
    for w in fired.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(10) && gap < Duration::from_millis(90),
            "{gap:?} between two firings of a 50 ms ticker"
        );
    }
}

#[test]
fn every_runs_a_periodic_callback_on_the_reactor() {
    let (n, at) = ioxide::block_on(async {
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let at = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let (c, a) = (count.clone(), at.clone());
        let started = Instant::now();
        let _h = ioxide::time::every(Duration::from_millis(20), move || {
            c.set(c.get() + 1);
            a.borrow_mut().push(started.elapsed());
            c.get() < 5
        });
        sleep(Duration::from_millis(400)).await;
        let at = at.borrow().clone();
        (count.get(), at)
    });
    assert_eq!(n, 5, "the callback stops the ticker by returning false");
    // The k-th call comes k periods after the start (never early, generously bounded late).
    for (k, t) in at.iter().enumerate() {
        let due = Duration::from_millis(20 * (k as u64 + 1));
        assert!(
            *t >= due && *t < due + Duration::from_millis(60),
            "call {k} at {t:?}, due {due:?}"
        );
    }
}

#[test]
fn durations_too_long_to_represent_mean_never_not_a_panic() {
    ioxide::block_on(async {
        // The kernel reads tv_sec as signed: Duration::MAX must saturate, not wrap to EINVAL.
        let r = timeout(Duration::from_millis(30), sleep(Duration::MAX)).await;
        assert!(r.is_err(), "a Duration::MAX sleep completed");
        let r = timeout(Duration::MAX, async { 5 }).await;
        assert_eq!(r, Ok(5));
        let mut t = Ticker::new(Duration::MAX);
        let r = timeout(Duration::from_millis(30), t.tick()).await;
        assert!(r.is_err(), "a Duration::MAX ticker fired");
        // A zero period is taken as 1 ms: it ticks, and leaves the loop time to run.
        let mut t = Ticker::new(Duration::ZERO);
        assert_eq!(t.period(), Duration::from_millis(1));
        let started = Instant::now();
        for _ in 0..5 {
            t.tick().await;
        }
        assert!(started.elapsed() >= Duration::from_millis(4));
    });
}

#[test]
fn select_drops_the_loser_and_cancels_its_op() {
    let (l, addr) = std_listener();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(b"late").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let r = select(
            sleep(Duration::from_millis(50)),
            s.recv(Vec::with_capacity(64)),
        )
        .await;
        assert!(
            matches!(r, Either::Left(())),
            "the recv should still be pending"
        );
        // The cancelled recv must not have consumed the late bytes.
        let (r, b) = s.recv(Vec::with_capacity(64)).await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(&b, b"late");
    });
    peer.join().unwrap();
}

/// A peer that writes `total` bytes (a counting pattern) in `piece`-byte writes with a pause
/// every 64 writes (so the data arrives as many separate chunks), then closes.
fn pattern_writer(total: usize, piece: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (l, addr) = std_listener();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        for (n, c) in data.chunks(piece).enumerate() {
            s.write_all(c).unwrap();
            if n % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    (addr, h)
}

#[test]
fn recv_stream_delivers_every_byte_in_order_through_recycled_buffers_then_eof() {
    // 2 000 writes of 1 000 bytes: with chunks of at most 4 KiB that is at least 489
    // chunks, far more than the reactor's 256 provided buffers, however the reads fall (a
    // slow reader sees full chunks: 1 MB once came in exactly 256 on a loaded machine), so
    // this passes only if dropped chunks go back to the kernel.
    let total = 2_000_000;
    let (addr, writer) = pattern_writer(total, 1000);
    let (got, chunks) = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let mut rx = s.recv_stream();
        let mut got = Vec::new();
        let mut chunks = 0usize;
        while let Some(chunk) = rx.next().await.unwrap() {
            assert!(!chunk.is_empty() && chunk.len() <= 4096, "{}", chunk.len());
            got.extend_from_slice(&chunk);
            chunks += 1;
        }
        // After EOF the stream keeps saying so.
        assert!(rx.next().await.unwrap().is_none());
        (got, chunks)
    });
    writer.join().unwrap();
    assert_eq!(got.len(), total);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(
        chunks > 256,
        "only {chunks} chunks: the test did not cycle the buffers"
    );
}

#[test]
fn a_dropped_recv_stream_gives_its_queued_buffers_back() {
    // The first stream is dropped while chunks are queued (and some held); the second
    // stream on the same reactor must still cycle through more chunks than there are buffers.
    let (addr1, w1) = pattern_writer(200_000, 500);
    let (addr2, w2) = pattern_writer(1_000_000, 1000);
    let body = async move {
        let s1 = Stream::connect(addr1).await.unwrap();
        let mut rx1 = s1.recv_stream();
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(rx1.next().await.unwrap().unwrap());
        }
        // Let more data queue up on the armed receive, then drop the stream and the chunks.
        sleep(Duration::from_millis(50)).await;
        drop(rx1);
        let held_len: usize = held.iter().map(|c| c.len()).sum();
        drop(held);
        drop(s1);
        let s2 = Stream::connect(addr2).await.unwrap();
        let mut rx2 = s2.recv_stream();
        let mut got2 = 0usize;
        while let Some(chunk) = rx2.next().await.unwrap() {
            got2 += chunk.len();
        }
        (held_len, got2)
    };
    // Leaked buffers would leave the second stream starved: bound it instead of hanging.
    let (held, got2) = ioxide::block_on(async move {
        timeout(Duration::from_secs(20), body)
            .await
            .expect("the second stream starved: buffers were not given back")
    });
    let _ = w1.join();
    w2.join().unwrap();
    assert!(held > 0);
    assert_eq!(got2, 1_000_000);
}

#[test]
fn recv_stream_chunks_may_be_held_across_awaits() {
    let (addr, writer) = pattern_writer(64 * 1024, 1024);
    let total = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let mut rx = s.recv_stream();
        let mut total = 0usize;
        let mut batch = Vec::new();
        loop {
            match rx.next().await.unwrap() {
                Some(c) => batch.push(c),
                None => break,
            }
            if batch.len() == 16 {
                total += batch.iter().map(|c| c.len()).sum::<usize>();
                batch.clear();
            }
        }
        total + batch.iter().map(|c| c.len()).sum::<usize>()
    });
    writer.join().unwrap();
    assert_eq!(total, 64 * 1024);
}

#[test]
fn a_chunk_kept_after_its_reactor_ended_still_reads_its_bytes() {
    let (addr, writer) = pattern_writer(100, 100);
    let chunk = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let mut rx = s.recv_stream();
        rx.next().await.unwrap().unwrap()
    });
    writer.join().unwrap();
    // The reactor and its ring are gone; the buffer memory is reference-counted.
    assert!(!chunk.is_empty());
    assert!(chunk.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

#[test]
fn a_starved_recv_stream_waits_for_a_buffer_instead_of_spinning() {
    // Hold every provided buffer, then ask for more: the stream must park (few enters) until
    // another task gives the buffers back, then go on and deliver every byte.
    let (addr, writer) = pattern_writer(1_000_000, 1000);
    let (total, enters_while_starved) = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let mut rx = s.recv_stream();
        let mut held = Vec::new();
        let mut total = 0usize;
        while held.len() < 256 {
            let c = rx.next().await.unwrap().expect("data before EOF");
            total += c.len();
            held.push(c);
        }
        let r = ioxide::Reactor::current();
        let before = r.ring_stats().enters;
        let release = ioxide::spawn(async move {
            sleep(Duration::from_millis(200)).await;
            drop(held);
        });
        let waited = Instant::now();
        let next = rx.next().await.unwrap().expect("data after the release");
        let enters = r.ring_stats().enters - before;
        assert!(
            waited.elapsed() >= Duration::from_millis(150),
            "next() did not starve: {:?}",
            waited.elapsed()
        );
        total += next.len();
        drop(next);
        release.await;
        while let Some(c) = rx.next().await.unwrap() {
            total += c.len();
        }
        (total, enters)
    });
    writer.join().unwrap();
    assert_eq!(total, 1_000_000);
    assert!(
        enters_while_starved < 1000,
        "{enters_while_starved} enters while starved: the stream spun"
    );
}

#[test]
fn cancelling_a_sockets_ops_ends_a_recv_stream_with_an_error() {
    let (l, addr) = std_listener();
    let peer = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop(s);
    });
    let r = ioxide::block_on(async move {
        let s = std::rc::Rc::new(Stream::connect(addr).await.unwrap());
        let s2 = s.clone();
        let canceller = ioxide::spawn(async move {
            sleep(Duration::from_millis(50)).await;
            s2.cancel_pending();
        });
        let mut rx = s.recv_stream();
        let r = timeout(Duration::from_secs(2), rx.next()).await;
        canceller.await;
        r
    });
    peer.join().unwrap();
    let e = r
        .expect("the cancel must end next(), not leave it waiting")
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_ecanceled()), "{e}");
}

#[test]
fn abort_ends_pending_ops_and_gives_the_peer_eof_while_the_stream_is_held() {
    let (l, addr) = std_listener();
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut v = Vec::new();
        // EOF (Ok) arrives only when the other side shuts or closes its socket.
        let r = s.read_to_end(&mut v);
        tx.send(Instant::now()).unwrap();
        r.map(|_| v)
    });
    let (aborted_at, recv_result) = ioxide::block_on(async move {
        let s = std::rc::Rc::new(Stream::connect(addr).await.unwrap());
        let s2 = s.clone();
        let pending = ioxide::spawn(async move { s2.recv(Vec::with_capacity(16)).await.0 });
        sleep(Duration::from_millis(50)).await;
        let aborted_at = Instant::now();
        s.abort();
        let r = timeout(Duration::from_secs(2), pending).await;
        // `s` is still alive here: the peer's EOF must not wait for the drop.
        let eof_at = rx.recv_timeout(Duration::from_secs(2));
        assert!(
            eof_at.is_ok(),
            "the peer saw no EOF while the stream was held"
        );
        drop(s);
        (aborted_at, r)
    });
    let r = recv_result.expect("abort must complete the pending recv");
    assert!(
        matches!(&r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc_ecanceled())),
        "{r:?}"
    );
    assert_eq!(peer.join().unwrap().unwrap(), b"");
    assert!(aborted_at.elapsed() < Duration::from_secs(3));
}

#[test]
fn an_aborted_stream_dropped_at_once_cannot_touch_the_next_socket_with_its_fd_number() {
    // Each round: abort A and drop it in the same turn, then connect B, which would get A's
    // fd number back as soon as A is closed. The shutdown runs on a kernel worker, possibly
    // after that: it must still hit A's socket, never B's.
    let (l, addr) = std_listener();
    let peer = std::thread::spawn(move || {
        let mut served = 0;
        for s in l.incoming().take(40) {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut b = [0u8; 4];
                while s.read_exact(&mut b).is_ok() {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            });
            served += 1;
        }
        served
    });
    let mut reused = 0;
    ioxide::block_on(async move {
        for i in 0..20u32 {
            let a = Stream::connect(addr).await.unwrap();
            let a_fd = std::os::fd::AsRawFd::as_raw_fd(&a);
            a.abort();
            drop(a);
            let b = Stream::connect(addr).await.unwrap();
            if std::os::fd::AsRawFd::as_raw_fd(&b) == a_fd {
                reused += 1;
            }
            for k in 0..3u32 {
                let msg = (i * 10 + k).to_be_bytes().to_vec();
                let (r, _) = b.send_all(msg.clone()).await;
                r.unwrap_or_else(|e| panic!("round {i}: send on the new socket: {e}"));
                let mut got = Vec::with_capacity(4);
                while got.len() < 4 {
                    let (r, g) = b.recv(got).await;
                    got = g;
                    let n = r.unwrap_or_else(|e| panic!("round {i}: recv on the new socket: {e}"));
                    assert!(n > 0, "round {i}: the new socket was shut down");
                }
                assert_eq!(got, msg);
            }
        }
        // With the shutdown holding A's fd until it has run, B gets another number while it
        // is pending (reused stays low); a shutdown that held only the number shut B down
        // in the first round when this test was written.
        let _ = reused;
    });
    assert_eq!(peer.join().unwrap(), 40);
}

fn libc_ecanceled() -> i32 {
    125
}

#[test]
fn a_lagging_recv_stream_cannot_take_every_buffer_from_the_others() {
    // Stream A is armed, then left alone while its peer sends 2 MB; stream B on the same
    // reactor must still receive its 1 MB (A's receive is stopped after a bounded number of
    // queued chunks instead of taking all 256 buffers), and A still gets all its data later.
    let (addr_a, wa) = pattern_writer(2_000_000, 4000);
    let (addr_b, wb) = pattern_writer(1_000_000, 1000);
    let (a_total, b_total) = ioxide::block_on(async move {
        let body = async move {
            let sa = Stream::connect(addr_a).await.unwrap();
            let mut rxa = sa.recv_stream();
            let mut a_total = rxa.next().await.unwrap().unwrap().len();
            // Let A's peer fill everything it can while nobody reads A.
            sleep(Duration::from_millis(200)).await;
            let sb = Stream::connect(addr_b).await.unwrap();
            let mut rxb = sb.recv_stream();
            let mut b_total = 0usize;
            while let Some(c) = rxb.next().await.unwrap() {
                b_total += c.len();
            }
            while let Some(c) = rxa.next().await.unwrap() {
                a_total += c.len();
            }
            (a_total, b_total)
        };
        timeout(Duration::from_secs(20), body)
            .await
            .expect("stream B starved behind the lagging stream A")
    });
    wa.join().unwrap();
    wb.join().unwrap();
    assert_eq!(b_total, 1_000_000);
    assert_eq!(a_total, 2_000_000);
}

#[test]
fn connect_with_sets_keepalives_and_the_user_timeout_before_connecting() {
    use ioxide::net::TcpOptions;
    let (l, addr) = std_listener();
    let opts = TcpOptions::new()
        .with_keepalive(true)
        .with_keepalive_idle(Some(Duration::from_secs(37)))
        .with_keepalive_interval(Some(Duration::from_millis(4500)))
        .with_keepalive_count(Some(5))
        .with_user_timeout(Some(Duration::from_millis(12_345)));
    ioxide::block_on(async move {
        let s = Stream::connect_with(addr, &opts).await.unwrap();
        let got = s.tcp_options().unwrap();
        assert!(got.keepalive);
        assert_eq!(got.keepalive_idle, Some(Duration::from_secs(37)));
        assert_eq!(
            got.keepalive_interval,
            Some(Duration::from_secs(5)),
            "rounded up"
        );
        assert_eq!(got.keepalive_count, Some(5));
        assert_eq!(got.user_timeout, Some(Duration::from_millis(12_345)));
        assert!(s.nodelay().unwrap());
        // The plain connect leaves the kernel's defaults: keepalives off, no user timeout.
        let plain = Stream::connect(addr).await.unwrap().tcp_options().unwrap();
        assert!(
            !plain.keepalive && plain.user_timeout.is_none(),
            "{plain:?}"
        );
        assert!(
            plain.keepalive_idle.is_some(),
            "the kernel's idle time is read back"
        );
        // Out of range: the connect fails before any SYN, naming the option.
        let bad = TcpOptions::new()
            .with_keepalive(true)
            .with_keepalive_count(Some(128));
        let e = Stream::connect_with(addr, &bad).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("keepalive_count"), "{e}");
    });
    drop(l);
}

#[test]
fn tcp_options_of_a_unix_socket_is_an_error() {
    let dir = std::env::temp_dir().join(format!("ioxide-tcpopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s");
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    ioxide::block_on(async {
        let s = Stream::connect_unix(&path).await.unwrap();
        assert!(s.tcp_options().is_err());
    });
    drop(l);
    std::fs::remove_dir_all(&dir).unwrap();
}
