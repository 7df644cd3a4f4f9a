//! Async row streams (`query_stream`) and portals (`bind` / `query_portal`) against a real
//! server: values and counts, the `Stream` trait, backpressure, an error mid-stream and
//! before the first row, a stale cached statement, commands pipelined behind a stream, the
//! command timeout as a stall timeout, and portals' life inside a transaction.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{opts, run_within};
use futures_core::Stream;
use ioxide_pg::{OwnedRow, PgConnection, PgError};

const LIMIT: Duration = Duration::from_secs(60);

async fn answers(c: &PgConnection) {
    let n = c.query_one("SELECT $1::int8 + 1", &[&41i64]).await.unwrap();
    assert_eq!(n.get::<i64>(0).unwrap(), 42);
}

/// The next item through the `Stream` trait itself.
async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

#[test]
fn a_stream_delivers_every_row_in_order_with_the_tag() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let mut rows = c
            .query_stream(
                "SELECT n, 'row ' || n AS label FROM generate_series(1, $1) n",
                &[&100_000i32],
            )
            .await
            .unwrap();
        assert_eq!(rows.columns().len(), 2);
        let (mut count, mut sum) = (0i64, 0i64);
        let mut kept: Vec<OwnedRow> = Vec::new();
        while let Some(row) = next(&mut rows).await {
            let row = row.unwrap();
            let n = row.get::<i32>(0).unwrap() as i64;
            count += 1;
            assert_eq!(n, count);
            sum += n;
            if n % 25_000 == 0 {
                kept.push(row);
            }
        }
        assert_eq!((count, sum), (100_000, 5_000_050_000));
        assert_eq!(rows.rows_affected(), Some(100_000));
        assert_eq!(rows.command_tag(), Some("SELECT 100000"));
        assert!(rows.next_row().await.is_none());
        drop(rows);
        // Rows outlive the stream.
        let labels: Vec<&str> = kept.iter().map(|r| r.get("label").unwrap()).collect();
        assert_eq!(
            labels,
            ["row 25000", "row 50000", "row 75000", "row 100000"]
        );
        // No rows: the stream ends at once, with its tag.
        let mut none = c.query_stream("SELECT 1 WHERE false", &[]).await.unwrap();
        assert!(none.next_row().await.is_none());
        assert_eq!(none.rows_affected(), Some(0));
        // Not a query: the tag says what it did.
        c.query("CREATE TEMP TABLE st (v int)").await.unwrap();
        let mut ins = c
            .query_stream(
                "INSERT INTO st SELECT generate_series(1, 5) RETURNING v",
                &[],
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(r) = ins.next_row().await {
            got.push(r.unwrap().get::<i32>(0).unwrap());
        }
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert_eq!(ins.command_tag(), Some("INSERT 0 5"));
        answers(&c).await;
    });
}

#[test]
fn errors_before_the_first_row_come_from_query_stream_and_later_ones_from_the_stream() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let e = c
            .query_stream("SELECT * FROM no_such_table", &[])
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("42P01"), "{e}");
        let e = c
            .query_stream("SELECT 1 / $1::int", &[&0i32])
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("22012"), "{e}");
        // Mid-stream: the rows before the error, then the error, then the end.
        let mut rows = c
            .query_stream(
                "SELECT 1 / (n - 60000) FROM generate_series(1, 70000) n",
                &[],
            )
            .await
            .unwrap();
        let mut count = 0;
        let mut error: Option<PgError> = None;
        while let Some(r) = rows.next_row().await {
            match r {
                Ok(_) => count += 1,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let e = error.expect("the error reached the stream");
        assert_eq!(e.sql_state(), Some("22012"), "{e}");
        assert!(count < 60_000, "{count}");
        assert!(rows.next_row().await.is_none());
        assert_eq!(rows.rows_affected(), None);
        drop(rows);
        answers(&c).await;
    });
}

#[test]
fn a_stale_cached_statement_is_prepared_again() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        c.batch_execute("CREATE TEMP TABLE stale_s (v int); INSERT INTO stale_s VALUES (7)")
            .await
            .unwrap();
        let mut rows = c.query_stream("SELECT * FROM stale_s", &[]).await.unwrap();
        assert_eq!(
            rows.next_row()
                .await
                .unwrap()
                .unwrap()
                .get::<i32>(0)
                .unwrap(),
            7
        );
        drop(rows);
        c.query("ALTER TABLE stale_s ALTER v TYPE int8")
            .await
            .unwrap();
        let mut rows = c.query_stream("SELECT * FROM stale_s", &[]).await.unwrap();
        assert_eq!(
            rows.next_row()
                .await
                .unwrap()
                .unwrap()
                .get::<i64>(0)
                .unwrap(),
            7
        );
        assert!(rows.next_row().await.is_none());
    });
}

#[test]
fn a_slow_reader_holds_the_server_back_and_commands_behind_it_wait_their_turn() {
    run_within(LIMIT, async {
        let c = Rc::new(PgConnection::connect(&opts()).await.unwrap());
        let watch = PgConnection::connect(&opts()).await.unwrap();
        let pid = c.backend_pid().unwrap();
        let mut rows = c
            .query_stream(
                "SELECT n, repeat('x', 200) FROM generate_series(1, 2000000) n",
                &[],
            )
            .await
            .unwrap();
        rows.next_row().await.unwrap().unwrap();
        // A command pipelined behind the stream.
        let behind = {
            let c = c.clone();
            ioxide::spawn(async move { c.query_one("SELECT 'behind'::text", &[]).await })
        };
        let started = Instant::now();
        let mut waiting = false;
        while started.elapsed() < Duration::from_secs(10) {
            let r = watch
                .query_one(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap();
            if r.get::<Option<&str>>(0).unwrap() == Some("ClientWrite") {
                waiting = true;
                break;
            }
            ioxide::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(waiting, "the server never waited for the slow reader");
        // Read a little more, then drop: the rest is drained and the command behind runs.
        for _ in 0..1000 {
            rows.next_row().await.unwrap().unwrap();
        }
        drop(rows);
        let r = behind.await.unwrap();
        assert_eq!(r.get::<&str>(0).unwrap(), "behind");
        answers(&c).await;
    });
}

#[test]
fn the_command_timeout_counts_from_the_last_rows_received() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts().command_timeout(Duration::from_millis(800)))
            .await
            .unwrap();
        // pg_sleep every 20 000 rows: 6 pauses of 300 ms, 1.8 s in all, more than the timeout
        // but never a stall that long.
        let mut rows = c
            .query_stream(
                "SELECT n, CASE WHEN n % 20000 = 0 THEN pg_sleep(0.3)::text END \
                 FROM generate_series(1, 120000) n",
                &[],
            )
            .await
            .unwrap();
        let mut count = 0;
        while let Some(r) = rows.next_row().await {
            r.unwrap();
            count += 1;
        }
        assert_eq!(count, 120_000);
        // A real stall times out.
        let e = c
            .query_stream("SELECT 1, pg_sleep(2)", &[])
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        answers(&c).await;
    });
}

#[test]
fn portals_fetch_in_steps_inside_a_transaction_and_close_on_drop() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let e = c.bind("SELECT 1", &[]).await.unwrap_err();
        assert!(e.is_misuse(), "{e}");
        let tx = c.begin().await.unwrap();
        let portal = tx
            .bind("SELECT n FROM generate_series(1, $1) n", &[&1000i32])
            .await
            .unwrap();
        assert_eq!(portal.columns().len(), 1);
        let open = tx
            .query_one(
                "SELECT count(*) FROM pg_cursors WHERE name LIKE 'ioxide_p%'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(open.get::<i64>(0).unwrap(), 1);
        let first = tx.query_portal(&portal, 100).await.unwrap();
        assert_eq!(first.len(), 100);
        assert_eq!(first.command_tag(), "");
        assert_eq!(first.row(99).unwrap().get::<i32>(0).unwrap(), 100);
        let mut total = first.len();
        let mut last = 0;
        loop {
            let next = tx.query_portal(&portal, 300).await.unwrap();
            total += next.len();
            if let Some(r) = next.iter().last() {
                last = r.get::<i32>(0).unwrap();
            }
            if next.len() < 300 {
                // 100 + 3 × 300 = 1000: the fifth fetch finds nothing left and completes.
                assert_eq!(next.command_tag(), "SELECT 0");
                break;
            }
            assert_eq!(next.command_tag(), "", "a suspended portal has no tag");
        }
        assert_eq!((total, last), (1000, 1000));
        // Two portals interleave.
        let a = tx
            .bind("SELECT 'a' || n FROM generate_series(1, 3) n", &[])
            .await
            .unwrap();
        let b = tx
            .bind("SELECT 'b' || n FROM generate_series(1, 3) n", &[])
            .await
            .unwrap();
        let ra = tx.query_portal(&a, 1).await.unwrap();
        let rb = tx.query_portal(&b, 2).await.unwrap();
        let ra2 = tx.query_portal(&a, 0).await.unwrap();
        assert_eq!(ra.row(0).unwrap().get::<&str>(0).unwrap(), "a1");
        assert_eq!(rb.len(), 2);
        assert_eq!(ra2.len(), 2);
        assert_eq!(ra2.row(1).unwrap().get::<&str>(0).unwrap(), "a3");
        drop((portal, a, b));
        let open = tx
            .query_one(
                "SELECT count(*) FROM pg_cursors WHERE name LIKE 'ioxide_p%'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(open.get::<i64>(0).unwrap(), 0);
        // A portal of another connection is refused.
        let other = PgConnection::connect(&opts()).await.unwrap();
        let otx = other.begin().await.unwrap();
        let foreign = otx.bind("SELECT 1", &[]).await.unwrap();
        let e = tx.query_portal(&foreign, 1).await.unwrap_err();
        assert!(e.is_misuse(), "{e}");
        let e = tx.query_portal(&foreign, -1).await.unwrap_err();
        assert!(e.is_misuse(), "{e}");
        tx.commit().await.unwrap();
        answers(&c).await;
    });
}

#[test]
fn portals_work_without_the_statement_cache_and_close_their_statement() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts().statement_cache_capacity(0))
            .await
            .unwrap();
        let tx = c.begin().await.unwrap();
        let p = tx
            .bind(
                "SELECT n FROM generate_series(1, 10) n WHERE n > $1",
                &[&5i32],
            )
            .await
            .unwrap();
        let r = tx.query_portal(&p, 0).await.unwrap();
        assert_eq!(r.len(), 5);
        drop(p);
        let n = tx
            .query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        assert_eq!(n.value(), Some("0"));
        tx.commit().await.unwrap();
    });
}
