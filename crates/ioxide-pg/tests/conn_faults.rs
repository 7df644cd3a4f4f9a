//! Statement cache, command timeouts with a real CancelRequest, broken connections, close.
#![allow(clippy::unwrap_used)]

mod common;

use common::{established_to, opts, opts_for};
use ioxide_pg::PgConnection;
use std::rc::Rc;
use std::time::{Duration, Instant};
use testkit::Cluster;

#[test]
fn statement_cache_evicts_the_least_recently_used_and_closes_it_on_the_server() {
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts().statement_cache_capacity(2))
            .await
            .unwrap();
        for i in 0..5i32 {
            let sql = format!("SELECT $1::int4 + {i}");
            let rs = conn.query_params(&sql, &[&1i32]).await.unwrap();
            assert_eq!(rs.scalar::<i32>().unwrap(), 1 + i);
        }
        assert_eq!(conn.cached_statements(), 2);
        // Closes are queued behind the last command; one more round trip settles them.
        conn.query("SELECT 1").await.unwrap();
        let n = conn
            .query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        assert_eq!(
            n.value(),
            Some("2"),
            "evicted statements must be closed on the server"
        );
    });
}

#[test]
fn caching_off_uses_the_unnamed_statement_even_when_pipelined() {
    ioxide::block_on(async {
        let conn = Rc::new(
            PgConnection::connect(&opts().statement_cache_capacity(0))
                .await
                .unwrap(),
        );
        // pg_prepared_statements lists named statements only: read inside the very query,
        // a named statement would count itself (1); the unnamed one is not listed (0).
        let inside = "SELECT count(*) FROM pg_prepared_statements WHERE $1::int4 = 1";
        for _ in 0..3 {
            let rs = conn.query_params(inside, &[&1i32]).await.unwrap();
            assert_eq!(rs.scalar::<i64>().unwrap(), 0);
        }
        // Without parameters too (that path skips the describing round trip).
        let rs = conn
            .query_params("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .unwrap();
        assert_eq!(rs.scalar::<i64>().unwrap(), 0);
        let mut rows = 0;
        let n = conn
            .query_rows(
                "SELECT n, n::text AS t FROM generate_series(1, 3) n",
                &[],
                |r| {
                    rows += 1;
                    assert_eq!(r.get::<i32>("n")?.to_string(), r.get::<&str>("t")?);
                    Ok(())
                },
            )
            .await
            .unwrap();
        assert_eq!((n, rows), (3, 3));
        assert_eq!(conn.cached_statements(), 0);
        // Many first uses of different statements pipelined at once: each one's unnamed
        // statement is replaced by the next's while it waits, so each must parse its own
        // again with its Bind — every answer has the right value and the right type.
        let tasks: Vec<_> = (0..60i32)
            .map(|i| {
                let conn = conn.clone();
                ioxide::spawn(async move {
                    match i % 3 {
                        0 => {
                            let rs = conn.query_params("SELECT $1::int4 + 1", &[&i]).await?;
                            Ok::<_, ioxide_pg::PgError>(rs.scalar::<i32>()?.to_string())
                        }
                        1 => {
                            let s = format!("v{i}");
                            let rs = conn.query_params("SELECT $1::text || '!'", &[&s]).await?;
                            Ok(rs.scalar::<&str>()?.to_owned())
                        }
                        _ => {
                            let big = i64::from(i) << 33;
                            let rs = conn
                                .query_params("SELECT $1::int8, 'x'::text", &[&big])
                                .await?;
                            Ok(rs.scalar::<i64>()?.to_string())
                        }
                    }
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let i = i as i32;
            let want = match i % 3 {
                0 => (i + 1).to_string(),
                1 => format!("v{i}!"),
                _ => (i64::from(i) << 33).to_string(),
            };
            assert_eq!(t.await.unwrap(), want);
        }
        // A server error with caching off stays with its query; the connection goes on.
        let e = conn
            .query_params("SELECT 1 / $1::int4", &[&0i32])
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("22012"));
        let n = conn
            .query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        assert_eq!(n.value(), Some("0"));
    });
}

#[test]
fn with_caching_on_the_statement_is_named_and_listed() {
    // The control for the test above: the same probe sees the cached statement.
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let inside = "SELECT count(*) FROM pg_prepared_statements WHERE $1::int4 = 1";
        let rs = conn.query_params(inside, &[&1i32]).await.unwrap();
        assert_eq!(rs.scalar::<i64>().unwrap(), 1);
        assert_eq!(conn.cached_statements(), 1);
    });
}

#[test]
fn a_statement_deallocated_on_the_server_is_reprepared_transparently_outside_a_transaction() {
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let q = "SELECT $1::int4 * 2";
        assert_eq!(
            conn.query_params(q, &[&4i32])
                .await
                .unwrap()
                .scalar::<i32>()
                .unwrap(),
            8
        );
        assert_eq!(conn.cached_statements(), 1);
        // The server forgets every prepared statement: the next use gets 26000, which the
        // driver answers by preparing again and running the query once more.
        conn.query("DEALLOCATE ALL").await.unwrap();
        assert_eq!(
            conn.query_params(q, &[&5i32])
                .await
                .unwrap()
                .scalar::<i32>()
                .unwrap(),
            10
        );
        assert_eq!(conn.cached_statements(), 1);

        // Inside a transaction block the 26000 has already aborted the block: running the
        // query again would only be refused (25P02). The caller gets the real cause, and the
        // stale entry is gone, so the query works once the block ends.
        conn.query("BEGIN").await.unwrap();
        conn.query("DEALLOCATE ALL").await.unwrap();
        let e = conn.query_params(q, &[&6i32]).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("26000"), "{e}");
        assert_eq!(e.transaction_status(), Some(ioxide_pg::TxnStatus::Failed));
        assert_eq!(conn.cached_statements(), 0);
        conn.query("ROLLBACK").await.unwrap();
        assert_eq!(
            conn.query_params(q, &[&7i32])
                .await
                .unwrap()
                .scalar::<i32>()
                .unwrap(),
            14
        );
        // An ordinary server error says no block is open.
        let e = conn
            .query_params("SELECT 1 / $1::int4", &[&0i32])
            .await
            .unwrap_err();
        assert_eq!(e.transaction_status(), Some(ioxide_pg::TxnStatus::Idle));
    });
}

#[test]
fn a_statement_invalidated_by_alter_table_is_reprepared_transparently() {
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        conn.query("CREATE TEMP TABLE inval (a int); INSERT INTO inval VALUES (1)")
            .await
            .unwrap();
        let rs = conn
            .query_params("SELECT * FROM inval WHERE a = $1", &[&1i32])
            .await
            .unwrap();
        assert_eq!(rs.columns().len(), 1);
        conn.query("ALTER TABLE inval ADD COLUMN b text DEFAULT 'x'")
            .await
            .unwrap();
        let rs = conn
            .query_params("SELECT * FROM inval WHERE a = $1", &[&1i32])
            .await
            .unwrap();
        assert_eq!(rs.columns().len(), 2);
        assert_eq!(rs.row(0).unwrap().get::<&str>("b").unwrap(), "x");
    });
}

#[test]
fn command_timeout_cancels_the_server_query_and_the_connection_stays_usable() {
    let c = Cluster::new().unwrap();
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts_for(&c).command_timeout(Duration::from_millis(500)))
            .await
            .unwrap();
        let pid = conn.backend_pid().unwrap();
        let started = Instant::now();
        let e = conn.query("SELECT pg_sleep(10)").await.unwrap_err();
        let took = started.elapsed();
        assert!(e.is_timeout(), "{e}");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(
            took >= Duration::from_millis(480) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // The cancel reaches the server: the backend is no longer sleeping.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let state = c
                .psql(&format!("SELECT coalesce(state, '') || ':' || query FROM pg_stat_activity WHERE pid = {pid}"))
                .unwrap();
            if !state.starts_with("active:SELECT pg_sleep") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server query still running: {state}"
            );
            ioxide::time::sleep(Duration::from_millis(50)).await;
        }
        // Same backend, still usable.
        let r = conn.query("SELECT pg_backend_pid()").await.unwrap();
        assert_eq!(r.value().unwrap().parse::<i32>().unwrap(), pid);
        assert!(!conn.is_broken());
    });
}

#[test]
fn a_frozen_server_tears_the_timed_out_connection_down_promptly() {
    let c = Cluster::new().unwrap();
    ioxide::block_on(async {
        let conn = Rc::new(
            PgConnection::connect(&opts_for(&c).command_timeout(Duration::from_millis(400)))
                .await
                .unwrap(),
        );
        let port: u16 = conn
            .query("SELECT inet_client_port()")
            .await
            .unwrap()
            .value()
            .unwrap()
            .parse()
            .unwrap();
        assert!(established_to(c.port()).contains(&port));
        c.freeze().unwrap();
        let started = Instant::now();
        let a = {
            let conn = conn.clone();
            ioxide::spawn(async move { conn.query("SELECT 1").await })
        };
        let b = {
            let conn = conn.clone();
            ioxide::spawn(async move { conn.query("SELECT 2").await })
        };
        let ea = a.await.unwrap_err();
        let eb = b.await.unwrap_err();
        let took = started.elapsed();
        assert!(ea.is_timeout(), "{ea}");
        assert!(
            eb.is_timeout() || eb.is_transport() || eb.is_closed(),
            "{eb}"
        );
        // Timeout at ~0.4 s, teardown within the grace period after it.
        assert!(took < Duration::from_millis(1600), "{took:?}");
        assert!(conn.is_broken());
        // Torn down means the socket is shut, though this handle still holds the connection
        // (one loop turn for the shutdown SQE to reach the kernel).
        ioxide::time::sleep(Duration::from_millis(50)).await;
        let open = established_to(c.port());
        assert!(
            !open.contains(&port),
            "the torn-down socket {port} is still open: {open:?}"
        );
        c.thaw();
    });
}

#[test]
fn streaming_100k_rows_keeps_memory_flat() {
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let rss_before = rss_kib();
        let mut total = 0i64;
        let mut bytes = 0usize;
        let n = conn
            .query_rows(
                "SELECT n::int8, repeat('x', 200) AS pad FROM generate_series(1, 100000) n",
                &[],
                |row| {
                    total += row.get::<i64>(0)?;
                    bytes += row.get::<&str>("pad")?.len();
                    Ok(())
                },
            )
            .await
            .unwrap();
        let grew = rss_kib().saturating_sub(rss_before);
        assert_eq!(n, 100_000);
        assert_eq!(total, 100_000 * 100_001 / 2);
        assert_eq!(bytes, 200 * 100_000);
        // ~21 MB went through; the connection may hold a buffer or two, not the result.
        assert!(grew < 8 * 1024, "RSS grew by {grew} KiB while streaming");
    });
}

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn terminated_backend_breaks_the_connection_with_the_servers_reason() {
    let c = Cluster::new().unwrap();
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts_for(&c)).await.unwrap();
        conn.query("SELECT 1").await.unwrap();
        assert_eq!(c.terminate_backends().unwrap(), 1);
        // The idle connection notices on its own, without a query.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !conn.is_broken() {
            assert!(
                Instant::now() < deadline,
                "idle connection did not notice the FATAL"
            );
            ioxide::time::sleep(Duration::from_millis(10)).await;
        }
        let e = conn.query("SELECT 1").await.unwrap_err();
        assert!(
            !e.was_sent(),
            "a query on a dead connection was never sent: {e}"
        );
        assert!(
            e.to_string().contains("57P01") || e.to_string().contains("terminat"),
            "{e}"
        );
    });
}

#[test]
fn close_sends_terminate_and_the_backend_goes_away() {
    let c = Cluster::new().unwrap();
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts_for(&c)).await.unwrap();
        conn.query("SELECT 1").await.unwrap();
        assert_eq!(c.backend_count_for(c.user()).unwrap(), 1);
        conn.close().await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while c.backend_count_for(c.user()).unwrap() != 0 {
            assert!(Instant::now() < deadline, "backend still there after close");
            ioxide::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn explicit_cancel_stops_a_running_query() {
    ioxide::block_on(async {
        let conn = Rc::new(PgConnection::connect(&opts()).await.unwrap());
        let c2 = conn.clone();
        let q = ioxide::spawn(async move { c2.query("SELECT pg_sleep(5)").await });
        ioxide::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        conn.cancel().await.unwrap();
        let e = q.await.unwrap_err();
        assert_eq!(e.sql_state(), Some("57014"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(conn.query("SELECT 3").await.unwrap().value(), Some("3"));
    });
}

/// 64 closed-loop callers on one connection (deep enough that replies are batched): each
/// runs `SELECT $1::int8 + 1` until a query fails, checking every answer. Returns, per
/// caller, the successes and the error that stopped it.
async fn deep_pipeline_until_failure(conn: Rc<PgConnection>) -> Vec<(u64, ioxide_pg::PgError)> {
    let tasks: Vec<_> = (0..64i64)
        .map(|t| {
            let c = conn.clone();
            ioxide::spawn(async move {
                let mut ok = 0u64;
                loop {
                    let n = t * 1_000_000 + ok as i64;
                    match c.query_params("SELECT $1::int8 + 1", &[&n]).await {
                        Ok(rs) => {
                            assert_eq!(rs.scalar::<i64>().unwrap(), n + 1);
                            ok += 1;
                        }
                        Err(e) => return (ok, e),
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await);
    }
    out
}

#[test]
fn a_deep_batched_pipeline_fails_every_caller_promptly_when_the_backend_is_terminated() {
    let c = Cluster::new().unwrap();
    ioxide::block_on(async {
        let conn = Rc::new(PgConnection::connect(&opts_for(&c)).await.unwrap());
        // Over TCP the batches are gathering receives (held for a byte count): the
        // termination must end one that is held, not wait out its threshold.
        let before = ioxide::Reactor::current().ring_stats().held_receives;
        let load = ioxide::spawn(deep_pipeline_until_failure(conn.clone()));
        ioxide::time::sleep(Duration::from_millis(300)).await;
        let batched = ioxide::Reactor::current().ring_stats().held_receives - before;
        let killed_at = Instant::now();
        assert_eq!(c.terminate_backends().unwrap(), 1);
        let results = ioxide::time::timeout(Duration::from_secs(5), load)
            .await
            .expect("every caller resolves after the termination");
        let took = killed_at.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(batched > 0, "the load never held a receive for a batch");
        let ok: u64 = results.iter().map(|(n, _)| n).sum();
        assert!(
            ok > 64,
            "only {ok} queries succeeded before the termination"
        );
        for (_, e) in &results {
            assert!(
                e.is_transport() || e.is_closed() || e.sql_state() == Some("57P01"),
                "{e}"
            );
        }
        assert!(conn.is_broken());
    });
}

#[test]
fn a_deep_batched_pipeline_on_a_frozen_server_resolves_within_the_command_timeout() {
    let c = Cluster::new().unwrap();
    ioxide::block_on(async {
        let conn = Rc::new(
            PgConnection::connect(&opts_for(&c).command_timeout(Duration::from_millis(400)))
                .await
                .unwrap(),
        );
        let load = ioxide::spawn(deep_pipeline_until_failure(conn.clone()));
        ioxide::time::sleep(Duration::from_millis(200)).await;
        c.freeze().unwrap();
        let frozen_at = Instant::now();
        let results = ioxide::time::timeout(Duration::from_secs(5), load).await;
        let took = frozen_at.elapsed();
        c.thaw();
        let results = results.expect("every caller resolves while the server is frozen");
        // Timeout at 0.4 s, the 500 ms resync grace, then teardown; generous for CI.
        assert!(took < Duration::from_millis(1900), "{took:?}");
        assert!(results.iter().any(|(_, e)| e.is_timeout()));
        for (_, e) in &results {
            assert!(e.is_timeout() || e.is_transport() || e.is_closed(), "{e}");
        }
        assert!(conn.is_broken());
    });
}
