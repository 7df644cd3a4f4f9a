//! COPY FROM STDIN and COPY TO STDOUT against real servers: text, CSV and binary (typed
//! writer and reader), the endings (finish, abort, drop), server errors mid-stream in both
//! directions, backpressure, other callers' commands on the same connection, the pool's
//! exclusive rental, the command timeout as a stall timeout, and a restart mid-COPY.
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use common::{opts, opts_for, run_within};
use ioxide::Reactor;
use ioxide_pg::types::Type;
use ioxide_pg::{BinaryCopyInWriter, BinaryCopyOutStream, PgConnection, PgPool};
use testkit::Cluster;

const LIMIT: Duration = Duration::from_secs(60);

async fn table(c: &PgConnection, name: &str) {
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {name}; \
         CREATE TABLE {name} (id int8, name text, score float8, at timestamptz, ok bool)"
    ))
    .await
    .unwrap();
}

async fn count(c: &PgConnection, name: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .unwrap()
        .get::<i64>(0)
        .unwrap()
}

async fn answers(c: &PgConnection) {
    let n = c.query_one("SELECT $1::int8 + 1", &[&41i64]).await.unwrap();
    assert_eq!(n.get::<i64>(0).unwrap(), 42);
}

#[test]
fn text_and_csv_copy_in_with_rows_split_across_sends() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "copy_text").await;
        let mut copy = c
            .copy_in("COPY copy_text (id, name, ok) FROM STDIN")
            .await
            .unwrap();
        assert!(!copy.format().binary);
        assert_eq!(copy.format().column_formats.len(), 3);
        copy.send(b"1\tone\tt\n2\ttw").await.unwrap();
        copy.send(b"o\tf\n3\t\\N\tt\n").await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 3);
        let r = c
            .query_params("SELECT id, name, ok FROM copy_text ORDER BY id", &[])
            .await
            .unwrap();
        let got: Vec<(i64, Option<String>, bool)> = r
            .iter()
            .map(|row| {
                (
                    row.get(0).unwrap(),
                    row.get(1).unwrap(),
                    row.get(2).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, Some("one".to_owned()), true),
                (2, Some("two".to_owned()), false),
                (3, None, true)
            ]
        );

        let mut copy = c
            .copy_in("COPY copy_text (id, name) FROM STDIN (FORMAT csv, HEADER true)")
            .await
            .unwrap();
        copy.send(b"id,name\n10,\"a, quoted\"\n11,plain\n")
            .await
            .unwrap();
        assert_eq!(copy.finish().await.unwrap(), 2);
        let name: String = c
            .query_one("SELECT name FROM copy_text WHERE id = 10", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(name, "a, quoted");
        // One big send is split into 1 MB messages.
        let mut big = Vec::new();
        for i in 0..200_000 {
            big.extend_from_slice(format!("{i}\trow {i}\n").as_bytes());
        }
        assert!(big.len() > 2 << 20);
        c.query("TRUNCATE copy_text").await.unwrap();
        let mut copy = c
            .copy_in("COPY copy_text (id, name) FROM STDIN")
            .await
            .unwrap();
        copy.send(&big).await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 200_000);
        assert_eq!(count(&c, "copy_text").await, 200_000);
        answers(&c).await;
    });
}

#[test]
fn copy_out_text_and_csv_arrive_whole_with_the_row_count() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let copy = c
            .copy_out("COPY (SELECT n, 'v' || n FROM generate_series(1, 3) n) TO STDOUT")
            .await
            .unwrap();
        assert!(!copy.format().binary);
        assert_eq!(copy.collect_all().await.unwrap(), b"1\tv1\n2\tv2\n3\tv3\n");

        let mut copy = c
            .copy_out("COPY (SELECT n FROM generate_series(1, 100000) n) TO STDOUT (FORMAT csv)")
            .await
            .unwrap();
        let (mut bytes, mut chunks, mut lines) = (0usize, 0usize, 0usize);
        let mut last = Vec::new();
        while let Some(chunk) = copy.next_chunk().await {
            let chunk = chunk.unwrap();
            bytes += chunk.len();
            chunks += 1;
            lines += chunk.iter().filter(|&&b| b == b'\n').count();
            last = chunk.to_vec();
        }
        assert_eq!(lines, 100_000);
        assert!(last.ends_with(b"100000\n"));
        // Chunks are whole receives, not one per row.
        assert!(chunks < 2_000, "{chunks} chunks for {bytes} bytes");
        assert_eq!(copy.rows(), Some(100_000));
        assert!(copy.next_chunk().await.is_none());
        answers(&c).await;
    });
}

#[test]
fn binary_writer_and_reader_round_trip_five_types_and_nulls() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "copy_bin").await;
        let types = [
            Type::INT8,
            Type::TEXT,
            Type::FLOAT8,
            Type::TIMESTAMPTZ,
            Type::BOOL,
        ];
        let copy = c
            .copy_in("COPY copy_bin (id, name, score, at, ok) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let mut w = BinaryCopyInWriter::new(copy, &types).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        const N: i64 = 50_000;
        for i in 0..N {
            let name = (i % 7 != 0).then(|| format!("name {i}"));
            let at = t0 + Duration::from_millis(i as u64);
            w.write(&[&i, &name, &(i as f64 / 2.0), &at, &(i % 2 == 0)])
                .await
                .unwrap();
        }
        // A value of the wrong type fails alone; the COPY goes on.
        let e = w
            .write(&[&"not a number", &None::<&str>, &0.0f64, &t0, &true])
            .await
            .unwrap_err();
        assert!(e.is_conversion(), "{e}");
        assert!(e.to_string().contains("row 50000, column 0"), "{e}");
        assert_eq!(w.rows_written(), N as u64);
        assert_eq!(w.finish().await.unwrap(), N as u64);

        let copy = c
            .copy_out("COPY (SELECT id, name, score, at, ok FROM copy_bin ORDER BY id) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        assert!(copy.format().binary);
        let mut rows = BinaryCopyOutStream::new(copy, &types).unwrap();
        let mut i = 0i64;
        while let Some(row) = rows.next_row().await {
            let row = row.unwrap();
            assert_eq!(row.get::<i64>(0).unwrap(), i);
            let name: Option<&str> = row.get(1).unwrap();
            assert_eq!(
                name.map(str::to_owned),
                (i % 7 != 0).then(|| format!("name {i}"))
            );
            assert_eq!(row.get::<f64>(2).unwrap(), i as f64 / 2.0);
            assert_eq!(
                row.get::<SystemTime>(3).unwrap(),
                t0 + Duration::from_millis(i as u64)
            );
            assert_eq!(row.get::<bool>(4).unwrap(), i % 2 == 0);
            // The wrong Rust type is a clear error, not a panic.
            let e = row.get::<String>(0).unwrap_err();
            assert!(e.to_string().contains("int8"), "{e}");
            i += 1;
        }
        assert_eq!(i, N);
        assert_eq!(rows.rows(), Some(N as u64));
        drop(rows);
        // A small result: header, rows and trailer in one chunk.
        let copy = c
            .copy_out("COPY (SELECT id, name, score, at, ok FROM copy_bin WHERE id < 3 ORDER BY id) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let mut rows = BinaryCopyOutStream::new(copy, &types).unwrap();
        let mut ids = Vec::new();
        while let Some(row) = rows.next_row().await {
            ids.push(row.unwrap().get::<i64>(0).unwrap());
        }
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(rows.rows(), Some(3));
        drop(rows);
        // No rows at all.
        let copy = c
            .copy_out("COPY (SELECT id, name, score, at, ok FROM copy_bin WHERE false) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let mut rows = BinaryCopyOutStream::new(copy, &types).unwrap();
        assert!(rows.next_row().await.is_none());
        assert_eq!(rows.rows(), Some(0));

        // The writer checks the COPY's format and width.
        let copy = c.copy_in("COPY copy_bin (id) FROM STDIN").await.unwrap();
        let e = BinaryCopyInWriter::new(copy, &[Type::INT8]).unwrap_err();
        assert!(e.is_misuse(), "{e}");
        let copy = c
            .copy_in("COPY copy_bin (id) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let e = BinaryCopyInWriter::new(copy, &types).unwrap_err();
        assert!(e.to_string().contains("1 columns"), "{e}");
        assert_eq!(count(&c, "copy_bin").await, N);
        answers(&c).await;
    });
}

#[test]
fn drop_and_abort_roll_the_copy_back_and_the_connection_serves_on() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "copy_drop").await;
        let mut copy = c.copy_in("COPY copy_drop (id) FROM STDIN").await.unwrap();
        copy.send(b"1\n2\n").await.unwrap();
        drop(copy);
        answers(&c).await;
        assert_eq!(count(&c, "copy_drop").await, 0);

        let mut copy = c.copy_in("COPY copy_drop (id) FROM STDIN").await.unwrap();
        copy.send(b"1\n2\n").await.unwrap();
        copy.abort("changed my mind").await.unwrap();
        assert_eq!(count(&c, "copy_drop").await, 0);

        // Inside a transaction, the aborted COPY aborts it, as any failed statement does.
        let tx = c.begin().await.unwrap();
        let mut copy = tx.copy_in("COPY copy_drop (id) FROM STDIN").await.unwrap();
        copy.send(b"5\n").await.unwrap();
        copy.abort("no").await.unwrap();
        let e = tx.query("SELECT 1").await.unwrap_err();
        assert_eq!(e.sql_state(), Some("25P02"), "{e}");
        tx.rollback().await.unwrap();
        answers(&c).await;
    });
}

#[test]
fn a_server_error_mid_copy_ends_it_with_its_sqlstate_in_both_directions() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "copy_err").await;
        // A malformed row: the server answers at once; the error comes from a later send
        // or from finish, with the row's SQLSTATE, and nothing stays.
        let mut copy = c.copy_in("COPY copy_err (id) FROM STDIN").await.unwrap();
        copy.send(b"1\nnot a number\n").await.unwrap();
        let mut failed = None;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Err(e) = copy.send(b"2\n").await {
                failed = Some(e);
                break;
            }
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        let e = failed.expect("the server error reached a send");
        assert_eq!(e.sql_state(), Some("22P02"), "{e}");
        let e2 = copy.finish().await.unwrap_err();
        assert!(e2.is_misuse(), "{e2}");
        assert_eq!(count(&c, "copy_err").await, 0);
        // finish reports an error of the last rows.
        let mut copy = c.copy_in("COPY copy_err (id) FROM STDIN").await.unwrap();
        copy.send(b"1\n2\nx\n").await.unwrap();
        let e = copy.finish().await.unwrap_err();
        assert_eq!(e.sql_state(), Some("22P02"), "{e}");
        answers(&c).await;

        // Out: a division by zero at row 50 000 ends the stream after the rows before it.
        let mut copy = c
            .copy_out("COPY (SELECT 1 / (n - 50000) FROM generate_series(1, 60000) n) TO STDOUT")
            .await
            .unwrap();
        let mut lines = 0;
        let mut error = None;
        while let Some(chunk) = copy.next_chunk().await {
            match chunk {
                Ok(b) => lines += b.iter().filter(|&&b| b == b'\n').count(),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let e = error.expect("the error reached the stream");
        assert_eq!(e.sql_state(), Some("22012"), "{e}");
        assert!(lines < 50_000, "{lines}");
        assert!(copy.next_chunk().await.is_none());
        assert_eq!(copy.rows(), None);
        drop(copy);
        answers(&c).await;
    });
}

#[test]
fn statements_that_are_not_the_asked_for_copy_are_refused_and_the_connection_serves_on() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "copy_mix").await;
        let e = c.copy_in("SELECT 1").await.unwrap_err();
        assert!(e.is_misuse() && e.to_string().contains("SELECT 1"), "{e}");
        let e = c.copy_in("COPY (SELECT 1) TO STDOUT").await.unwrap_err();
        assert!(e.to_string().contains("COPY TO STDOUT"), "{e}");
        let e = c
            .copy_out("COPY copy_mix (id) FROM STDIN")
            .await
            .unwrap_err();
        assert!(e.is_misuse() && e.to_string().contains("FROM STDIN"), "{e}");
        let e = c
            .copy_in("COPY no_such_table FROM STDIN")
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("42P01"), "{e}");
        // COPY through the other APIs is refused by the server's own rules or ours, and
        // the connection is replaced only in the latter case (the server waits for data).
        answers(&c).await;
        assert_eq!(count(&c, "copy_mix").await, 0);
    });
}

#[test]
fn commands_of_other_tasks_wait_behind_a_copy_in_and_all_succeed() {
    run_within(LIMIT, async {
        let c = Rc::new(PgConnection::connect(&opts()).await.unwrap());
        table(&c, "copy_shared").await;
        // A query in flight ahead of the COPY, then the COPY, then queries from other tasks
        // while the data flows.
        let ahead = {
            let c = c.clone();
            ioxide::spawn(async move {
                c.query_one("SELECT pg_sleep(0.05)::text || 'ahead'", &[])
                    .await
                    .map(|r| r.get::<String>(0).unwrap())
            })
        };
        let mut copy = c.copy_in("COPY copy_shared (id) FROM STDIN").await.unwrap();
        let done = Rc::new(Cell::new(0));
        let mut others = Vec::new();
        for i in 0..20i64 {
            let c = c.clone();
            let done = done.clone();
            others.push(ioxide::spawn(async move {
                let r = c.query_one("SELECT $1::int8 * 2", &[&i]).await;
                done.set(done.get() + 1);
                r.map(|r| r.get::<i64>(0).unwrap())
            }));
        }
        for i in 0..50 {
            copy.send(format!("{i}\n").as_bytes()).await.unwrap();
            ioxide::time::sleep(Duration::from_millis(1)).await;
        }
        // None of them could run: they wait behind the COPY.
        assert_eq!(done.get(), 0);
        assert_eq!(copy.finish().await.unwrap(), 50);
        for (i, h) in others.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), i as i64 * 2);
        }
        assert_eq!(ahead.await.unwrap(), "ahead");
        // A second COPY waits for the first.
        let c2 = c.clone();
        let first = c.copy_in("COPY copy_shared (id) FROM STDIN").await.unwrap();
        let second = ioxide::spawn(async move {
            let mut copy = c2
                .copy_in("COPY copy_shared (id) FROM STDIN")
                .await
                .unwrap();
            copy.send(b"1000\n").await.unwrap();
            copy.finish().await.unwrap()
        });
        let mut first = first;
        ioxide::time::sleep(Duration::from_millis(50)).await;
        first.send(b"999\n").await.unwrap();
        assert_eq!(first.finish().await.unwrap(), 1);
        assert_eq!(second.await, 1);
        assert_eq!(count(&c, "copy_shared").await, 52);
    });
}

#[test]
fn a_slow_consumer_holds_the_server_back_and_a_dropped_one_is_cancelled() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let watch = PgConnection::connect(&opts()).await.unwrap();
        let pid = c.backend_pid().unwrap();
        let mut copy = c
            .copy_out(
                "COPY (SELECT n, repeat('x', 100) FROM generate_series(1, 5000000) n) TO STDOUT",
            )
            .await
            .unwrap();
        let first = copy.next_chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());
        // Stop reading: the server fills the socket and waits to write.
        let started = Instant::now();
        let mut waiting = false;
        while started.elapsed() < Duration::from_secs(10) {
            let r = watch
                .query_opt(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .unwrap();
            if r.get::<Option<&str>>(0).unwrap() == Some("ClientWrite") {
                waiting = true;
                break;
            }
            ioxide::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(waiting, "the server never waited for the slow consumer");
        // Dropping it mid-stream cancels the rest; the connection answers soon after.
        let dropped = Instant::now();
        drop(copy);
        answers(&c).await;
        assert!(
            dropped.elapsed() < Duration::from_secs(5),
            "{:?}",
            dropped.elapsed()
        );
        assert!(!c.is_broken());
    });
}

#[test]
fn the_pool_rents_a_connection_for_the_copy_alone() {
    run_within(LIMIT, async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(2)).unwrap();
        let c = pool.rent().await.unwrap();
        table(&c, "copy_pool").await;
        drop(c);
        let mut copy = pool
            .copy_in("COPY copy_pool (id) FROM STDIN")
            .await
            .unwrap();
        let copy_pid = copy.connection().backend_pid();
        // Shared queries go to the other connection meanwhile, at once.
        for _ in 0..5 {
            let r = pool
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap();
            assert_ne!(Some(r.get::<i32>(0).unwrap()), copy_pid);
        }
        copy.send(b"1\n2\n3\n").await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 3);
        let copy = pool
            .copy_out("COPY copy_pool (id) TO STDOUT")
            .await
            .unwrap();
        assert_eq!(copy.collect_all().await.unwrap(), b"1\n2\n3\n");
        // A dropped COPY's connection comes back clean.
        let mut copy = pool
            .copy_in("COPY copy_pool (id) FROM STDIN")
            .await
            .unwrap();
        copy.send(b"4\n").await.unwrap();
        drop(copy);
        for _ in 0..10 {
            let n = pool
                .query_one("SELECT count(*) FROM copy_pool", &[])
                .await
                .unwrap();
            assert_eq!(n.get::<i64>(0).unwrap(), 3);
        }
        pool.close().await;
    });
}

#[test]
fn the_command_timeout_measures_a_stall_not_the_length_of_the_copy() {
    run_within(LIMIT, async {
        let o = opts().command_timeout(Duration::from_millis(800));
        let c = PgConnection::connect(&o).await.unwrap();
        table(&c, "copy_slow").await;
        let mut copy = c.copy_in("COPY copy_slow (id) FROM STDIN").await.unwrap();
        // 2 s of steady progress: longer than the timeout, never stalled that long.
        for i in 0..10 {
            copy.send(format!("{i}\n").as_bytes()).await.unwrap();
            ioxide::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(copy.finish().await.unwrap(), 10);
        // A stall: the COPY is cancelled and the next send says it timed out.
        let mut copy = c.copy_in("COPY copy_slow (id) FROM STDIN").await.unwrap();
        copy.send(b"100\n").await.unwrap();
        ioxide::time::sleep(Duration::from_millis(2000)).await;
        let e = copy.send(b"101\n").await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        drop(copy);
        answers(&c).await;
        assert_eq!(count(&c, "copy_slow").await, 10);
    });
}

#[test]
fn a_restart_mid_copy_fails_it_and_new_connections_work() {
    let cluster = Cluster::new().unwrap();
    let o = opts_for(&cluster);
    run_within(LIMIT, async {
        let c = PgConnection::connect(&o).await.unwrap();
        table(&c, "copy_restart").await;
        let mut copy = c
            .copy_in("COPY copy_restart (id) FROM STDIN")
            .await
            .unwrap();
        copy.send(b"1\n2\n").await.unwrap();
        cluster.restart().unwrap();
        let mut failed = None;
        for i in 0..1000 {
            if let Err(e) = copy.send(format!("{i}\n").as_bytes()).await {
                failed = Some(e);
                break;
            }
            ioxide::time::sleep(Duration::from_millis(5)).await;
        }
        let e = match failed {
            Some(e) => e,
            None => copy.finish().await.unwrap_err(),
        };
        assert!(e.is_transport() || e.is_server(), "{e}");
        assert!(c.is_broken());
        let c = PgConnection::connect(&o).await.unwrap();
        assert_eq!(count(&c, "copy_restart").await, 0);

        // Out: the stream ends with the error.
        let mut copy = c
            .copy_out("COPY (SELECT n FROM generate_series(1, 5000000) n) TO STDOUT")
            .await
            .unwrap();
        copy.next_chunk().await.unwrap().unwrap();
        cluster.restart().unwrap();
        let mut error = None;
        while let Some(chunk) = copy.next_chunk().await {
            if let Err(e) = chunk {
                error = Some(e);
                break;
            }
        }
        let e = error.expect("the restart reached the stream");
        assert!(e.is_transport() || e.is_server(), "{e}");
        let c = PgConnection::connect(&o).await.unwrap();
        answers(&c).await;
    });
}

#[test]
fn a_copy_whose_start_is_given_up_leaves_the_connection_free() {
    run_within(LIMIT, async {
        let c = Rc::new(PgConnection::connect(&opts()).await.unwrap());
        table(&c, "copy_giveup").await;
        // A slow query ahead keeps the COPY from starting; the caller gives up on it.
        let ahead = {
            let c = c.clone();
            ioxide::spawn(async move { c.query("SELECT pg_sleep(0.3)").await.map(|_| ()) })
        };
        ioxide::time::sleep(Duration::from_millis(20)).await;
        let r = ioxide::time::timeout(
            Duration::from_millis(50),
            c.copy_in("COPY copy_giveup (id) FROM STDIN"),
        )
        .await;
        assert!(r.is_err(), "the COPY should still have been waiting");
        let r = ioxide::time::timeout(
            Duration::from_millis(50),
            c.copy_out("COPY copy_giveup (id) TO STDOUT"),
        )
        .await;
        assert!(r.is_err(), "the COPY should still have been waiting");
        ahead.await.unwrap();
        // Nothing is held back: a query and a new COPY go through.
        answers(&c).await;
        let mut copy = c.copy_in("COPY copy_giveup (id) FROM STDIN").await.unwrap();
        copy.send(b"1\n").await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 1);
        assert_eq!(count(&c, "copy_giveup").await, 1);
    });
}
