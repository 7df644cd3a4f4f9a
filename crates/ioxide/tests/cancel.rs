//! Cancellation and teardown: dropped futures never leak fds or let the kernel write into
//! freed memory. These tests count `/proc/self/fd`, so they serialize on one lock.
#![allow(clippy::unwrap_used)]

use ioxide::future::{select, Either};
use ioxide::net::{Stream, TcpListener};
use ioxide::time::sleep;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

static FD_LOCK: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn recv_dropped_mid_flight_then_data_arrives() {
    let _g = FD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let before = open_fds();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        go_rx.recv().unwrap();
        // Data arrives after the recv future was dropped.
        s.write_all(&[0xAB; 4096]).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        for _ in 0..20 {
            // A recv into a 1 MiB buffer, dropped while in flight (buffer given to the record).
            let r = select(
                sleep(Duration::from_millis(5)),
                s.recv(Vec::with_capacity(1 << 20)),
            )
            .await;
            assert!(matches!(r, Either::Left(())));
        }
        go_tx.send(()).unwrap();
        // Give the data time to land; no cancelled op may have taken it.
        sleep(Duration::from_millis(100)).await;
        let mut got = Vec::with_capacity(8192);
        while got.len() < 4096 {
            let (r, b) = s.recv(got).await;
            got = b;
            assert!(r.unwrap() > 0);
        }
        assert_eq!(got.len(), 4096);
        assert!(got.iter().all(|&b| b == 0xAB));
        s.close().await.unwrap();
    });
    peer.join().unwrap();
    assert_eq!(open_fds(), before, "an fd leaked");
}

#[test]
fn dropped_connects_and_listeners_leak_no_fds() {
    let _g = FD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let before = open_fds();
    ioxide::block_on(async {
        // Connects cancelled mid-flight against a listener that never accepts.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        for _ in 0..20 {
            let _ = select(futures_ready(), Stream::connect(addr)).await;
        }
        // A listener with a multishot accept armed, dropped with connections queued.
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let laddr = listener.local_addr().unwrap();
        let first = select(sleep(Duration::from_millis(20)), listener.accept()).await;
        assert!(matches!(first, Either::Left(())));
        let clients: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(laddr).unwrap())
            .collect();
        sleep(Duration::from_millis(50)).await;
        drop(listener);
        sleep(Duration::from_millis(50)).await;
        drop(clients);
        drop(l);
    });
    assert_eq!(open_fds(), before, "an fd leaked");
}

async fn futures_ready() {}

#[test]
fn teardown_with_tasks_parked_on_ops_drains_and_leaks_nothing() {
    let _g = FD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let before = open_fds();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let started = std::time::Instant::now();
    ioxide::block_on(async move {
        for _ in 0..10 {
            ioxide::spawn(async move {
                let s = Stream::connect(addr).await.unwrap();
                // Parked forever on a recv: teardown must cancel it.
                let _ = s.recv(Vec::with_capacity(1024)).await;
            });
        }
        ioxide::spawn(sleep(Duration::from_secs(3600)));
        sleep(Duration::from_millis(50)).await;
        // Returning with 11 tasks still parked on ring ops.
    });
    assert!(started.elapsed() < Duration::from_secs(2), "teardown hung");
    drop(l);
    assert_eq!(open_fds(), before, "an fd leaked");
}

#[test]
fn teardown_drops_tasks_parked_on_their_own_state_and_closes_their_sockets() {
    let _g = FD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let before = open_fds();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    ioxide::block_on(async move {
        for _ in 0..5 {
            ioxide::spawn(async move {
                let s = Stream::connect(addr).await.unwrap();
                // The task's waker lives in state the task itself owns: a cycle that only
                // teardown's task registry can break.
                let cell: std::rc::Rc<std::cell::RefCell<Option<std::task::Waker>>> =
                    Default::default();
                let c2 = cell.clone();
                std::future::poll_fn(move |cx| {
                    *c2.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::<()>::Pending
                })
                .await;
                drop((s, cell));
            });
        }
        sleep(Duration::from_millis(50)).await;
    });
    drop(l);
    assert_eq!(open_fds(), before, "sockets of parked tasks leaked");
}
