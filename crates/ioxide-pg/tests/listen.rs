//! LISTEN/NOTIFY against real clusters: `PgListener` (delivery, unlisten, quoting, a burst,
//! the bounded buffer, reconnecting after a restart or a terminated backend with one `Gap`),
//! and the per-connection `on_notification` / `on_notice` handlers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{opts, opts_for, run_within};
use ioxide_pg::{ListenEvent, Notification, PgConnection, PgListener};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use testkit::Cluster;

/// The next event within `limit`, or a panic saying what was awaited.
async fn next_within(l: &mut PgListener, limit: Duration, what: &str) -> ListenEvent {
    match ioxide::time::timeout(limit, l.next()).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("no event within {limit:?} ({what})"),
    }
}

/// The next event must be a notification.
async fn next_note(l: &mut PgListener) -> Notification {
    match next_within(l, Duration::from_secs(10), "a notification").await {
        ListenEvent::Notification(n) => n,
        other => panic!("{other:?} where a notification was expected"),
    }
}

async fn pid_of(c: &PgConnection) -> i32 {
    c.query("SELECT pg_backend_pid()")
        .await
        .unwrap()
        .value()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_notification_carries_channel_payload_and_the_senders_pid() {
    run_within(Duration::from_secs(30), async {
        let mut l = PgListener::connect(&opts()).await.unwrap();
        l.listen("jobs").await.unwrap();
        let sender = PgConnection::connect(&opts()).await.unwrap();
        sender.query("NOTIFY jobs, 'payload 1'").await.unwrap();
        let n = next_note(&mut l).await;
        assert_eq!(n.channel, "jobs");
        assert_eq!(n.payload, "payload 1");
        assert_eq!(n.process_id, pid_of(&sender).await);
        assert_eq!(sender.backend_pid(), Some(n.process_id));
        // No payload: an empty one.
        sender.query("NOTIFY jobs").await.unwrap();
        assert_eq!(next_note(&mut l).await.payload, "");
        assert_eq!(l.channels(), ["jobs".to_string()]);
        l.close().await;
    });
}

#[test]
fn unlisten_stops_delivery() {
    run_within(Duration::from_secs(30), async {
        let mut l = PgListener::connect(&opts()).await.unwrap();
        for c in ["a", "b", "fin"] {
            l.listen(c).await.unwrap();
        }
        l.unlisten("a").await.unwrap();
        let sender = PgConnection::connect(&opts()).await.unwrap();
        // One sender's notifications arrive in order: "fin" last means "a" would have come.
        sender
            .query("NOTIFY a, '1'; NOTIFY b, '2'; NOTIFY fin")
            .await
            .unwrap();
        assert_eq!(next_note(&mut l).await.channel, "b");
        assert_eq!(next_note(&mut l).await.channel, "fin");
        l.unlisten_all().await.unwrap();
        assert!(l.channels().is_empty());
        l.listen("fin").await.unwrap();
        sender
            .query("NOTIFY a; NOTIFY b; NOTIFY fin, 'again'")
            .await
            .unwrap();
        let n = next_note(&mut l).await;
        assert_eq!((n.channel.as_str(), n.payload.as_str()), ("fin", "again"));
        assert_eq!(l.buffered(), 0);
        l.close().await;
    });
}

#[test]
fn channel_names_with_capitals_spaces_and_quotes_are_quoted() {
    run_within(Duration::from_secs(30), async {
        let mut l = PgListener::connect(&opts()).await.unwrap();
        let odd = r#"Mixed Case "quoted"; chan"#;
        l.listen(odd).await.unwrap();
        l.listen("lower").await.unwrap();
        let sender = PgConnection::connect(&opts()).await.unwrap();
        // pg_notify takes the channel as text: the exact name, no case folding. An unquoted
        // LOWER folds to "lower"; a differently cased exact name does not match.
        sender
            .query_params("SELECT pg_notify($1, 'odd')", &[&odd])
            .await
            .unwrap();
        sender
            .query("SELECT pg_notify('mixed case \"quoted\"; chan', 'no'); NOTIFY LOWER, 'folded'")
            .await
            .unwrap();
        let n = next_note(&mut l).await;
        assert_eq!((n.channel.as_str(), n.payload.as_str()), (odd, "odd"));
        let n = next_note(&mut l).await;
        assert_eq!(
            (n.channel.as_str(), n.payload.as_str()),
            ("lower", "folded")
        );
        l.unlisten(odd).await.unwrap();
        sender
            .query_params("SELECT pg_notify($1, 'x')", &[&odd])
            .await
            .unwrap();
        sender.query("NOTIFY lower, 'last'").await.unwrap();
        assert_eq!(next_note(&mut l).await.payload, "last");
        assert!(l.listen("nul\0").await.unwrap_err().is_misuse());
        l.close().await;
    });
}

#[test]
fn a_hundred_thousand_notifications_arrive_in_order_none_lost() {
    run_within(Duration::from_secs(120), async {
        let mut l = PgListener::connect(&opts()).await.unwrap();
        l.listen("burst").await.unwrap();
        let sender = Rc::new(PgConnection::connect(&opts()).await.unwrap());
        let sent = Instant::now();
        // Half in one transaction (delivered at its commit, all at once), half as separate
        // pipelined commits sent while the consumer reads, with the default buffer limit.
        let sending = {
            let sender = sender.clone();
            ioxide::spawn(async move {
                sender
                    .query("SELECT pg_notify('burst', i::text) FROM generate_series(1, 50000) i")
                    .await
                    .unwrap();
                for chunk in (50_001..=100_000).collect::<Vec<i32>>().chunks(1000) {
                    let tasks: Vec<_> = chunk
                        .iter()
                        .map(|&i| {
                            let s = sender.clone();
                            ioxide::spawn(
                                async move { s.query(&format!("NOTIFY burst, '{i}'")).await },
                            )
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
            })
        };
        for want in 1..=100_000 {
            let n = next_note(&mut l).await;
            assert_eq!(n.payload, want.to_string());
        }
        sending.await;
        assert_eq!(l.buffered(), 0);
        eprintln!(
            "100 000 notifications: all received {:?} after the first was sent",
            sent.elapsed()
        );
        l.close().await;
    });
}

#[test]
fn a_lagging_consumer_loses_the_oldest_past_the_limit_and_gets_one_gap() {
    run_within(Duration::from_secs(30), async {
        let mut l = PgListener::connect(&opts()).await.unwrap();
        l.set_buffer_limit(100);
        l.listen("lag").await.unwrap();
        let sender = PgConnection::connect(&opts()).await.unwrap();
        sender
            .query("SELECT pg_notify('lag', i::text) FROM generate_series(1, 1000) i")
            .await
            .unwrap();
        sender.query("NOTIFY lag, 'end'").await.unwrap();
        // Wait (without consuming) until the last one is in the buffer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while l.buffered() < 100 && Instant::now() < deadline {
            ioxide::time::sleep(Duration::from_millis(20)).await;
        }
        ioxide::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(l.buffered(), 100);
        assert_eq!(
            next_within(&mut l, Duration::from_secs(1), "gap").await,
            ListenEvent::Gap
        );
        for want in 902..=1000 {
            assert_eq!(next_note(&mut l).await.payload, want.to_string());
        }
        assert_eq!(next_note(&mut l).await.payload, "end");
        assert_eq!(l.buffered(), 0);
        l.close().await;
    });
}

/// Listens, buffers one notification, applies `fault`, and checks: the buffered one first,
/// then exactly one `Gap` (after which the listener listens again on a new backend), then a
/// notification sent after the fault.
fn gap_after(fault: impl FnOnce(&Cluster), name: &str) {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c);
    run_within(Duration::from_secs(90), async {
        let mut l = PgListener::connect(&o).await.unwrap();
        l.listen("Fault Chan").await.unwrap();
        l.listen("other").await.unwrap();
        let old_pid = l.backend_pid().unwrap();
        {
            let sender = PgConnection::connect(&o).await.unwrap();
            sender
                .query("NOTIFY \"Fault Chan\", 'before'")
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while l.buffered() == 0 && Instant::now() < deadline {
                ioxide::time::sleep(Duration::from_millis(10)).await;
            }
            sender.close().await;
        }
        fault(&c);
        let started = Instant::now();
        assert_eq!(next_note(&mut l).await.payload, "before");
        assert_eq!(
            next_within(&mut l, Duration::from_secs(30), "the gap").await,
            ListenEvent::Gap,
            "{name}"
        );
        let healed = started.elapsed();
        let new_pid = l.backend_pid().unwrap();
        assert_ne!(new_pid, old_pid, "{name}: the listener is on a new backend");
        let sender = PgConnection::connect(&o).await.unwrap();
        sender
            .query("NOTIFY other, 'o'; NOTIFY \"Fault Chan\", 'after'")
            .await
            .unwrap();
        let n = next_note(&mut l).await;
        assert_eq!((n.channel.as_str(), n.payload.as_str()), ("other", "o"));
        let n = next_note(&mut l).await;
        assert_eq!(
            (n.channel.as_str(), n.payload.as_str()),
            ("Fault Chan", "after")
        );
        assert_eq!(n.process_id, pid_of(&sender).await);
        assert_eq!(l.buffered(), 0, "{name}: exactly one gap");
        eprintln!("{name}: listening again {healed:?} after the fault");
        l.close().await;
    });
}

#[test]
fn after_a_restart_the_listener_yields_one_gap_and_listens_again() {
    gap_after(|c| c.restart().unwrap(), "restart");
}

#[test]
fn after_its_backend_is_terminated_the_listener_yields_one_gap_and_listens_again() {
    gap_after(
        |c| {
            assert!(c.terminate_backends().unwrap() >= 1);
        },
        "terminate",
    );
}

#[test]
fn on_notification_on_a_plain_connection_receives_what_it_listens_to() {
    run_within(Duration::from_secs(30), async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let got: Rc<RefCell<Vec<Notification>>> = Rc::default();
        let sink = got.clone();
        conn.on_notification(move |n| sink.borrow_mut().push(n.clone()));
        conn.query("LISTEN plain").await.unwrap();
        let sender = PgConnection::connect(&opts()).await.unwrap();
        sender
            .query("NOTIFY plain, 'p1'; NOTIFY plain, 'p2'")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.borrow().len() < 2 && Instant::now() < deadline {
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = pid_of(&sender).await;
        let got = got.borrow().clone();
        let want: Vec<Notification> = ["p1", "p2"]
            .iter()
            .map(|p| Notification {
                channel: "plain".into(),
                payload: p.to_string(),
                process_id: pid,
            })
            .collect();
        assert_eq!(got, want);
        // The connection still works normally.
        assert_eq!(conn.query("SELECT 7").await.unwrap().value(), Some("7"));
    });
}

#[test]
fn on_notice_receives_raise_notice_from_a_do_block() {
    run_within(Duration::from_secs(30), async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let got: Rc<RefCell<Vec<(String, String, String)>>> = Rc::default();
        let sink = got.clone();
        conn.on_notice(move |n| {
            sink.borrow_mut().push((
                n.severity().to_string(),
                n.code().to_string(),
                n.message().to_string(),
            ))
        });
        conn.query("DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
            .await
            .unwrap();
        // Notices precede the command's ReadyForQuery: they are in when it returns.
        assert_eq!(
            *got.borrow(),
            vec![
                ("NOTICE".into(), "00000".into(), "hello 42".into()),
                ("WARNING".into(), "01000".into(), "careful".into()),
            ]
        );
    });
}

#[test]
fn a_listener_waiting_while_the_server_is_down_reconnects_soon_after_it_starts() {
    let c = Cluster::new().unwrap();
    let o = opts_for(&c);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<Instant>();
        let c = &c;
        run_within(Duration::from_secs(60), async {
            let mut l = PgListener::connect(&o).await.unwrap();
            l.listen("down").await.unwrap();
            c.stop().unwrap();
            s.spawn(move || {
                // Down for 1.5 s: the listener's reconnects are refused meanwhile.
                std::thread::sleep(Duration::from_millis(1500));
                c.start().unwrap();
                tx.send(Instant::now()).unwrap();
            });
            let started = Instant::now();
            assert_eq!(
                next_within(&mut l, Duration::from_secs(30), "the gap").await,
                ListenEvent::Gap
            );
            let gap_at = Instant::now();
            let up_at = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(started.elapsed() >= Duration::from_millis(1400));
            // The backoff is capped at 500 ms (±50 %): listening again well within a second
            // of the server accepting again.
            let after_up = gap_at.saturating_duration_since(up_at);
            assert!(after_up < Duration::from_secs(1), "{after_up:?}");
            let sender = PgConnection::connect(&o).await.unwrap();
            sender.query("NOTIFY down, 'back'").await.unwrap();
            assert_eq!(next_note(&mut l).await.payload, "back");
            assert_eq!(l.buffered(), 0);
            eprintln!("down: listening again {after_up:?} after the server started");
            l.close().await;
        });
    });
}

#[test]
fn a_reconnect_refused_for_good_is_returned_and_the_next_call_tries_again() {
    let c = testkit::shared_cluster();
    c.psql("DROP DATABASE IF EXISTS listen_gone").unwrap();
    c.psql("CREATE DATABASE listen_gone").unwrap();
    let o = opts().database("listen_gone");
    run_within(Duration::from_secs(30), async {
        let mut l = PgListener::connect(&o).await.unwrap();
        l.listen("x").await.unwrap();
        // Terminates the listener's backend; its reconnect then finds no database (3D000),
        // which no retry can fix: next() returns it rather than retrying for ever.
        c.psql("DROP DATABASE listen_gone WITH (FORCE)").unwrap();
        let e = match ioxide::time::timeout(Duration::from_secs(10), l.next()).await {
            Ok(r) => r.unwrap_err(),
            Err(_) => panic!("next() kept retrying a missing database"),
        };
        assert_eq!(e.sql_state(), Some("3D000"), "{e}");
        c.psql("CREATE DATABASE listen_gone").unwrap();
        assert_eq!(
            next_within(&mut l, Duration::from_secs(10), "the gap").await,
            ListenEvent::Gap
        );
        let sender = PgConnection::connect(&o).await.unwrap();
        sender.query("NOTIFY x, 'back'").await.unwrap();
        assert_eq!(next_note(&mut l).await.payload, "back");
        sender.close().await;
        l.close().await;
    });
    c.psql("DROP DATABASE listen_gone WITH (FORCE)").unwrap();
}

#[test]
fn a_panicking_handler_is_removed_and_the_idle_connection_serves_on() {
    let o = common::opts();
    common::run_within(std::time::Duration::from_secs(20), async move {
        let c = ioxide_pg::PgConnection::connect(&o).await.unwrap();
        let sender = ioxide_pg::PgConnection::connect(&o).await.unwrap();
        c.query("LISTEN panicky").await.unwrap();
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = calls.clone();
        c.on_notification(move |_| {
            seen.set(seen.get() + 1);
            panic!("handler bug");
        });
        // Two notifications reach the idle connection (its watcher reads them).
        sender.query("NOTIFY panicky, 'a'").await.unwrap();
        sender.query("NOTIFY panicky, 'b'").await.unwrap();
        ioxide::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(calls.get(), 1, "the handler is gone after its panic");
        assert!(!c.is_broken());
        assert_eq!(c.query("SELECT 42").await.unwrap().value(), Some("42"));
    });
}
