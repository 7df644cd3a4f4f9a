//! No hidden threads: a process running R reactors with pools has R reactor threads and its
//! main thread, nothing else, and every continuation after a query runs on the thread of the
//! reactor that issued it. Runs without the libtest harness so the process is ours alone.
#![allow(clippy::unwrap_used)]

mod common;

use ioxide::Reactor;
use ioxide_pg::PgPool;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

const REACTORS: usize = 2;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn main() {
    let cluster = testkit::Cluster::new().unwrap();
    let opts = common::opts_for(&cluster).pool_size(4);
    let baseline = threads();
    assert_eq!(baseline, 1, "the test must start single-threaded");
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let reactors: Vec<_> = (0..REACTORS)
        .map(|_| {
            let opts = opts.clone();
            let ready_tx = ready_tx.clone();
            let stop_rx = stop_rx.clone();
            std::thread::spawn(move || {
                ioxide::block_on(async move {
                    let me = std::thread::current().id();
                    let pool = PgPool::start(&Reactor::current(), opts).unwrap();
                    let checked = Rc::new(Cell::new(0usize));
                    let tasks: Vec<_> = (0..16)
                        .map(|i: i64| {
                            let pool = pool.clone();
                            let checked = checked.clone();
                            ioxide::spawn(async move {
                                for j in 0..25 {
                                    let r = pool
                                        .query_params("SELECT $1::int8", &[&(i * 100 + j)])
                                        .await
                                        .unwrap();
                                    assert_eq!(r.scalar::<i64>().unwrap(), i * 100 + j);
                                    assert_eq!(
                                        std::thread::current().id(),
                                        me,
                                        "resumed on another thread"
                                    );
                                    let r = pool.query("SELECT 1").await.unwrap();
                                    assert_eq!(r.value(), Some("1"));
                                    assert_eq!(
                                        std::thread::current().id(),
                                        me,
                                        "resumed on another thread"
                                    );
                                    checked.set(checked.get() + 2);
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await;
                    }
                    ready_tx.send(checked.get()).unwrap();
                    // Stay alive (pools open) while the main thread counts threads.
                    loop {
                        if stop_rx.lock().unwrap().try_recv().is_ok() {
                            break;
                        }
                        ioxide::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
        })
        .collect();
    let mut checked = 0;
    for _ in 0..REACTORS {
        checked += ready_rx.recv().unwrap();
    }
    let during = threads();
    for _ in 0..REACTORS {
        stop_tx.send(()).unwrap();
    }
    for r in reactors {
        r.join().unwrap();
    }
    assert_eq!(checked, REACTORS * 16 * 25 * 2);
    assert_eq!(
        during,
        REACTORS + 1,
        "expected {REACTORS} reactor threads + main, found {during}"
    );
    drop(cluster);
    println!("pool_threads: {checked} continuations on their reactor's thread, {during} threads");
    println!("2 passed, 0 failed");
}
