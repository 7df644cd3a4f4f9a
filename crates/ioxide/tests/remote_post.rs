//! `RemoteHandle::post`: closures sent from other threads run on the reactor.
#![allow(clippy::unwrap_used)]

use ioxide::{Reactor, ReactorStopped};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn posted_closures_run_on_the_reactor_thread_in_order() {
    let (tx, rx) = mpsc::channel();
    let (out_tx, out_rx) = mpsc::channel::<(usize, std::thread::ThreadId, bool)>();
    let t = std::thread::spawn(move || {
        ioxide::block_on(async move {
            let r = Reactor::current();
            tx.send((r.remote(), std::thread::current().id())).unwrap();
            r.shutdown_requested().await;
        })
    });
    let (remote, reactor_thread) = rx.recv().unwrap();
    let start = Instant::now();
    for i in 0..100 {
        let out = out_tx.clone();
        remote
            .post(move || {
                let on_reactor = Reactor::try_current().is_some();
                // A local future may be spawned from the closure.
                drop(ioxide::spawn(async {}));
                out.send((i, std::thread::current().id(), on_reactor))
                    .unwrap();
            })
            .unwrap();
    }
    // A panicking closure is contained: later posts still run.
    remote.post(|| panic!("posted panic")).unwrap();
    let out = out_tx.clone();
    remote
        .post(move || out.send((100, std::thread::current().id(), true)).unwrap())
        .unwrap();
    for i in 0..=100 {
        let (n, thread, on_reactor) = out_rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(n, i);
        assert_eq!(thread, reactor_thread);
        assert!(on_reactor);
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(!remote.is_stopped());
    remote.request_shutdown();
    t.join().unwrap();
    assert!(remote.is_stopped());
    assert_eq!(remote.post(|| {}), Err(ReactorStopped));
    assert_eq!(ReactorStopped.to_string(), "the reactor has stopped");
}

#[test]
fn closures_still_queued_at_teardown_are_dropped_not_run() {
    // The reactor is kept busy (a root future that blocks its thread) while a closure is
    // posted, then stops without ever polling the doorbell again: the closure is dropped, so
    // a channel sender it owns disconnects.
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        ioxide::block_on(async move {
            tx.send(Reactor::current().remote()).unwrap();
            go_rx.recv().unwrap();
        })
    });
    let remote = rx.recv().unwrap();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ran2 = ran.clone();
    remote
        .post(move || {
            ran2.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(done_tx);
        })
        .unwrap();
    go_tx.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(2)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(remote.post(|| {}), Err(ReactorStopped));
}
