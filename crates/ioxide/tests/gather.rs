//! `Stream::recv_gather`: a receive held until a byte threshold or a deadline, against real
//! loopback sockets (a peer thread writes on a schedule).
#![allow(clippy::unwrap_used)]

use ioxide::net::Stream;
use ioxide::time::sleep;
use ioxide::Reactor;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A listener whose one accepted connection is handed to `peer` on its own thread.
fn peer(f: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        f(s);
    });
    (addr, h)
}

fn held() -> (u64, u64) {
    let s = Reactor::current().ring_stats();
    (s.held_receives, s.hold_expiries)
}

#[test]
fn a_gathering_receive_waits_for_its_threshold() {
    // 10 bytes at once, 90 more only when the test says so (after the receive has been
    // armed and left waiting a while): a receive wanting 100 completes with all 100, not
    // with the first 10.
    let (tx, rx) = mpsc::channel::<()>();
    let (addr, h) = peer(move |mut s| {
        s.write_all(&[1; 10]).unwrap();
        rx.recv().unwrap();
        s.write_all(&[2; 90]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        assert!(s.can_gather(), "TCP can gather");
        let recv = s.recv_gather(
            Vec::with_capacity(4096),
            100,
            Instant::now() + Duration::from_secs(10),
        );
        // Let the receive sit with only the first 10 bytes queued, then release the rest.
        let release = ioxide::spawn(async move {
            sleep(Duration::from_millis(100)).await;
            tx.send(()).unwrap();
        });
        let (r, buf) = recv.await;
        release.await;
        assert_eq!(r.unwrap(), 100, "the receive took the whole batch");
        assert_eq!(&buf[..10], &[1; 10]);
        assert_eq!(&buf[10..], &[2; 90]);
        assert_eq!(held(), (1, 0), "one hold, ended by its threshold");
    });
    h.join().unwrap();
}

#[test]
fn a_hold_ends_at_its_deadline_with_what_has_arrived() {
    let (addr, h) = peer(|mut s| {
        s.write_all(&[7; 10]).unwrap();
        std::thread::sleep(Duration::from_millis(800));
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        let (r, buf) = s
            .recv_gather(
                Vec::with_capacity(4096),
                1000,
                t0 + Duration::from_millis(100),
            )
            .await;
        let waited = t0.elapsed();
        assert_eq!(r.unwrap(), 10);
        assert_eq!(&buf[..], &[7; 10]);
        assert!(
            waited >= Duration::from_millis(90),
            "released after {waited:?}, before its deadline"
        );
        assert!(
            waited < Duration::from_millis(600),
            "released after {waited:?}: the deadline did not end it"
        );
        assert_eq!(held(), (1, 1), "one hold, ended by its deadline");
        // The threshold is back to one byte: a plain receive is not held.
    });
    h.join().unwrap();
}

#[test]
fn a_deadline_ends_the_hold_even_when_the_reactor_has_nothing_else_to_do() {
    // No other task, no timer of the caller's: only the reactor's hold timer can end it.
    let (addr, h) = peer(|mut s| {
        s.write_all(b"abc").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    });
    let (r, waited) = ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let (r, _) = s
            .recv_gather(
                Vec::with_capacity(64),
                50_000,
                t0 + Duration::from_millis(200),
            )
            .await;
        (r.unwrap(), t0.elapsed())
    });
    assert_eq!(r, 3);
    assert!(waited >= Duration::from_millis(190), "{waited:?}");
    assert!(
        waited < Duration::from_millis(1200),
        "{waited:?}: held until the peer closed?"
    );
    h.join().unwrap();
}

#[test]
fn end_of_stream_completes_a_held_receive_at_once() {
    let (tx, rx) = mpsc::channel::<()>();
    let (addr, h) = peer(move |mut s| {
        s.write_all(&[9; 5]).unwrap();
        rx.recv().unwrap();
        drop(s); // FIN while the receive waits for 10 000 bytes
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let recv = s.recv_gather(Vec::with_capacity(64), 10_000, t0 + Duration::from_secs(10));
        sleep(Duration::from_millis(50)).await;
        tx.send(()).unwrap();
        let (r, buf) = recv.await;
        assert_eq!(r.unwrap(), 5, "the bytes that came before the end");
        assert_eq!(&buf[..], &[9; 5]);
        let (r, _) = s.recv(Vec::with_capacity(64)).await;
        assert_eq!(r.unwrap(), 0, "then end of stream");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    });
    h.join().unwrap();
}

#[test]
fn a_plain_receive_after_a_gathering_one_is_not_held() {
    let (tx, rx) = mpsc::channel::<()>();
    let (addr, h) = peer(move |mut s| {
        s.write_all(&[1; 200]).unwrap();
        rx.recv().unwrap();
        s.write_all(&[2; 3]).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let (r, _) = s
            .recv_gather(
                Vec::with_capacity(4096),
                200,
                Instant::now() + Duration::from_secs(5),
            )
            .await;
        assert_eq!(r.unwrap(), 200);
        tx.send(()).unwrap();
        // The socket's threshold was 200 bytes; a plain receive must not inherit it.
        let t0 = Instant::now();
        let (r, _) = s.recv(Vec::with_capacity(64)).await;
        assert_eq!(r.unwrap(), 3);
        assert!(
            t0.elapsed() < Duration::from_millis(800),
            "{:?}",
            t0.elapsed()
        );
    });
    h.join().unwrap();
}

#[test]
fn a_dropped_gathering_receive_leaves_no_hold_behind() {
    let (addr, h) = peer(|mut s| {
        s.write_all(&[5; 4]).unwrap();
        std::thread::sleep(Duration::from_millis(800));
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let recv = s.recv_gather(
            Vec::with_capacity(64),
            1000,
            Instant::now() + Duration::from_millis(100),
        );
        sleep(Duration::from_millis(20)).await;
        drop(recv);
        // Past the dropped hold's deadline: it must not be counted as expiring.
        sleep(Duration::from_millis(200)).await;
        assert_eq!(held(), (1, 0));
        let (r, buf) = s.recv(Vec::with_capacity(64)).await;
        assert_eq!(
            r.unwrap(),
            4,
            "the bytes are still there for the next receive"
        );
        assert_eq!(&buf[..], &[5; 4]);
    });
    h.join().unwrap();
}

#[test]
fn unix_sockets_cannot_gather_and_receive_plainly() {
    let dir = std::env::temp_dir().join(format!("ioxide-gather-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.sock");
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"xy").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    });
    let p = path.clone();
    ioxide::block_on(async move {
        let s = Stream::connect_unix(&p).await.unwrap();
        assert!(!s.can_gather());
        let t0 = Instant::now();
        let (r, _) = s
            .recv_gather(
                Vec::with_capacity(64),
                1000,
                Instant::now() + Duration::from_secs(10),
            )
            .await;
        assert_eq!(r.unwrap(), 2, "a plain receive: not held for 1000 bytes");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(held(), (0, 0));
    });
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_timer_serves_many_holds_and_each_ends_by_its_own_deadline() {
    // Three sockets, each with a few bytes and a hold of its own length.
    let mut peers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let (a, h) = peer(|mut s| {
            s.write_all(&[3; 8]).unwrap();
            std::thread::sleep(Duration::from_millis(1200));
        });
        addrs.push(a);
        peers.push(h);
    }
    ioxide::block_on(async move {
        let mut streams = Vec::new();
        for a in &addrs {
            streams.push(Stream::connect(*a).await.unwrap());
        }
        sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        let holds = [300u64, 100, 200];
        let tasks: Vec<_> = streams
            .into_iter()
            .zip(holds)
            .map(|(s, ms)| {
                ioxide::spawn(async move {
                    let (r, _) = s
                        .recv_gather(Vec::with_capacity(64), 5000, t0 + Duration::from_millis(ms))
                        .await;
                    (r.unwrap(), t0.elapsed(), ms)
                })
            })
            .collect();
        for t in tasks {
            let (n, waited, ms) = t.await;
            assert_eq!(n, 8);
            let want = Duration::from_millis(ms);
            assert!(
                waited >= want - Duration::from_millis(10),
                "{ms} ms hold ended at {waited:?}"
            );
            assert!(
                waited < want + Duration::from_millis(400),
                "{ms} ms hold ended at {waited:?}"
            );
        }
        assert_eq!(held(), (3, 3));
    });
    for h in peers {
        h.join().unwrap();
    }
}
