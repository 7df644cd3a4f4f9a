//! `CancelToken`: cancelling a connection's query from another thread.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fake_opts, opts, run_within};
use ioxide_pg::{CancelToken, PgConnection, SqlState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{backend, FakeServer, Step};

#[test]
fn a_cancel_token_is_send_sync_and_clone() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<CancelToken>();
}

#[test]
fn a_thread_cancels_a_sleeping_query_and_the_connection_stays_usable() {
    run_within(Duration::from_secs(30), async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let pid: i32 = conn
            .query_params("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        let token = conn.cancel_token();
        assert_eq!(token.backend_pid(), Some(pid));
        let done = Arc::new(AtomicBool::new(false));
        let (finished_tx, finished_rx) = futures_channel::oneshot::channel();
        let thread_done = done.clone();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            // Cancel until the query has failed (a cancel that arrives before the query starts
            // cancels nothing), at most 10 times.
            let mut results = Vec::new();
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(300));
                if thread_done.load(Ordering::SeqCst) {
                    break;
                }
                results.push(ioxide::block_on(token.cancel()).map_err(|e| e.to_string()));
            }
            let _ = finished_tx.send(results);
        });
        let e = conn.query("SELECT pg_sleep(30)").await.unwrap_err();
        let took = t0.elapsed();
        done.store(true, Ordering::SeqCst);
        eprintln!("the query failed {took:?} after it was sent (first cancel at ~300 ms)");
        assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let results = finished_rx.await.unwrap();
        assert!(!results.is_empty());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // Still usable, and the same session.
        let again: i32 = conn
            .query_params("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(again, pid);
        assert!(!conn.is_broken());
    });
}

#[test]
fn a_token_of_a_closed_connection_fails_clearly() {
    run_within(Duration::from_secs(20), async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let token = conn.cancel_token();
        // Awaited on the owning reactor itself: the request is posted to it all the same.
        token.cancel().await.unwrap();
        conn.close().await;
        let e = token.cancel().await.unwrap_err();
        assert!(e.is_closed(), "{e}");
        assert!(
            e.to_string()
                .contains("connection of this CancelToken is closed"),
            "{e}"
        );
    });
}

#[test]
fn a_token_whose_reactor_stopped_fails_clearly() {
    let token = ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        conn.cancel_token()
    });
    let e = std::thread::spawn(move || ioxide::block_on(token.cancel()))
        .join()
        .unwrap()
        .unwrap_err();
    assert!(e.is_closed(), "{e}");
    assert!(e.to_string().contains("reactor"), "{e}");
}

#[test]
fn a_token_without_backend_key_data_fails_clearly() {
    let mut startup = backend::authentication_ok();
    startup.extend(backend::parameter_status("client_encoding", "UTF8"));
    startup.extend(backend::ready_for_query(b'I'));
    let fake =
        FakeServer::start_with(move |_| vec![Step::Send(startup.clone()), Step::StallForever])
            .unwrap();
    run_within(Duration::from_secs(20), async move {
        let conn = PgConnection::connect(&fake_opts(fake.port()))
            .await
            .unwrap();
        let token = conn.cancel_token();
        assert_eq!(token.backend_pid(), None);
        let e = token.cancel().await.unwrap_err();
        assert!(e.is_closed(), "{e}");
        assert!(e.to_string().contains("BackendKeyData"), "{e}");
    });
}
