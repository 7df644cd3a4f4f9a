//! Rows that live on their own: `OwnedRow`, `query_one`/`query_opt`, column metadata, tuple
//! reads, against a real server and through the pool.
#![allow(clippy::unwrap_used)]

mod common;

use common::{opts, run_within};
use ioxide::Reactor;
use ioxide_pg::types::Type;
use ioxide_pg::{OwnedRow, PgConnection, PgError, PgPool};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LIMIT: Duration = Duration::from_secs(30);

/// The five columns of the benchmarks, one row, some values NULL on request.
const FIVE: &str = "SELECT $1::int8 AS i, $2::text AS t, $3::float8 AS f, $4::bool AS b, \
                    $5::timestamptz AS ts";

/// Returns a row from a function: the result set it came from is gone when the caller reads it.
async fn fetch_one(conn: &PgConnection, ts: SystemTime) -> Result<OwnedRow, PgError> {
    conn.query_one(FIVE, &[&7i64, &"héllo", &2.5f64, &true, &ts])
        .await
}

fn assert_send_sync<T: Send + Sync + 'static>() {}

#[test]
fn owned_row_is_send_sync_and_static() {
    assert_send_sync::<OwnedRow>();
    assert_send_sync::<ioxide_pg::ResultSet>();
    // An `Arc`, the row's range and the 16 recorded field offsets (ARCHITECTURE.md).
    assert_eq!(std::mem::size_of::<OwnedRow>(), 80);
}

#[test]
fn values_and_types_round_trip_through_an_owned_row() {
    run_within(LIMIT, async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        // Whole microseconds: timestamptz keeps microseconds.
        let ts = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let row = fetch_one(&conn, ts).await.unwrap();
        assert_eq!(row.len(), 5);
        assert!(!row.is_empty());
        assert_eq!(row.get::<i64>("i").unwrap(), 7);
        assert_eq!(row.get::<&str>("t").unwrap(), "héllo");
        assert_eq!(row.get::<String>(1).unwrap(), "héllo");
        assert_eq!(row.get::<f64>("f").unwrap(), 2.5);
        assert!(row.get::<bool>("b").unwrap());
        assert_eq!(row.get::<SystemTime>("ts").unwrap(), ts);
        assert_eq!(row.try_get::<i64>(0).unwrap(), 7);
        // Wrong type, bad name, bad index: conversion errors naming the column.
        let e = row.try_get::<i64>("t").unwrap_err();
        assert!(e.is_conversion(), "{e}");
        assert!(e.to_string().contains("\"t\""), "{e}");
        let e = row.get::<i64>("nope").unwrap_err();
        assert!(
            e.is_conversion() && e.to_string().contains("i, t, f, b, ts"),
            "{e}"
        );
        assert!(row.get::<i64>(5).unwrap_err().is_conversion());
        assert_eq!(row.raw(0), Some(Some(&7i64.to_be_bytes()[..])));
        assert_eq!(row.raw(5), None);
        // A row of no columns is a row all the same.
        let empty = conn.query_one("SELECT", &[]).await.unwrap();
        assert_eq!((empty.len(), empty.is_empty()), (0, true));
        assert!(empty.get_tuple::<(i64,)>().unwrap_err().is_conversion());
        // Debug shows the fields.
        assert!(format!("{row:?}").starts_with('['), "{row:?}");

        // NULL in every column: Option reads None, plain types refuse.
        let nulls: [&(dyn ioxide_pg::types::ToSql + Sync); 5] = [
            &None::<i64>,
            &None::<&str>,
            &None::<f64>,
            &None::<bool>,
            &None::<SystemTime>,
        ];
        let row = conn.query_one(FIVE, &nulls).await.unwrap();
        assert_eq!(row.get::<Option<i64>>("i").unwrap(), None);
        assert_eq!(row.get::<Option<&str>>("t").unwrap(), None);
        assert_eq!(row.get::<Option<f64>>("f").unwrap(), None);
        assert_eq!(row.get::<Option<bool>>("b").unwrap(), None);
        assert_eq!(row.get::<Option<SystemTime>>("ts").unwrap(), None);
        assert!(row.is_null("ts").unwrap());
        assert!(row.get::<i64>("i").unwrap_err().is_conversion());
        conn.close().await;
    });
}

#[test]
fn column_metadata_names_oids_and_types() {
    run_within(LIMIT, async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let ts = SystemTime::now();
        let row = fetch_one(&conn, ts).await.unwrap();
        let cols = row.columns();
        assert_eq!(cols.names().collect::<Vec<_>>(), ["i", "t", "f", "b", "ts"]);
        let types: Vec<&Type> = cols.iter().map(|c| c.type_()).collect();
        assert_eq!(
            types,
            [
                &Type::INT8,
                &Type::TEXT,
                &Type::FLOAT8,
                &Type::BOOL,
                &Type::TIMESTAMPTZ
            ]
        );
        let oids: Vec<u32> = cols.into_iter().map(|c| c.type_oid()).collect();
        assert_eq!(oids, [20, 25, 701, 16, 1184]);
        assert_eq!(cols.index_of("ts"), Some(4));

        // The result set exposes the same description, and a table column names its table.
        conn.execute("CREATE TEMP TABLE meta_t (id int8, name text)", &[])
            .await
            .unwrap();
        let rs = conn
            .query_params("SELECT id, name FROM meta_t", &[])
            .await
            .unwrap();
        let c = rs.columns().get(1).unwrap();
        assert_eq!((c.name(), c.type_oid(), c.column_id()), ("name", 25, 2));
        assert_ne!(c.table_oid(), 0);
        conn.close().await;
    });
}

#[test]
fn query_one_demands_exactly_one_row() {
    run_within(LIMIT, async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let sql = "SELECT n FROM generate_series(1, $1::int4) n";
        let row = conn.query_one(sql, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<i32>(0).unwrap(), 1);

        let e = conn.query_one(sql, &[&0i32]).await.unwrap_err();
        assert!(e.is_row_count(), "{e}");
        assert_eq!(e.row_count(), Some(0));
        assert!(!e.is_conversion() && !e.is_server() && e.was_sent());
        assert_eq!(
            e.to_string(),
            "query_one: expected exactly one row, the query returned 0 rows"
        );

        let e = conn.query_one(sql, &[&2i32]).await.unwrap_err();
        assert_eq!(e.row_count(), Some(2));
        assert_eq!(
            e.to_string(),
            "query_one: expected exactly one row, the query returned 2 rows"
        );
        // A replicated error keeps the kind and the count.
        let r = e.replicate();
        assert_eq!((r.is_row_count(), r.row_count()), (true, Some(2)));

        // A server error stays a server error.
        let e = conn.query_one("SELECT 1/0", &[]).await.unwrap_err();
        assert_eq!((e.sql_state(), e.is_row_count()), (Some("22012"), false));
        // The connection is fine afterwards.
        assert_eq!(
            conn.query_one("SELECT 5::int8", &[])
                .await
                .unwrap()
                .get::<i64>(0)
                .unwrap(),
            5
        );
        conn.close().await;
    });
}

#[test]
fn query_opt_accepts_zero_or_one_row() {
    run_within(LIMIT, async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let sql = "SELECT n::int8 FROM generate_series(1, $1::int4) n";
        assert!(conn.query_opt(sql, &[&0i32]).await.unwrap().is_none());
        let row = conn.query_opt(sql, &[&1i32]).await.unwrap().unwrap();
        assert_eq!(row.get::<i64>(0).unwrap(), 1);
        let e = conn.query_opt(sql, &[&2i32]).await.unwrap_err();
        assert_eq!((e.is_row_count(), e.row_count()), (true, Some(2)));
        assert_eq!(
            e.to_string(),
            "query_opt: expected at most one row, the query returned 2 rows"
        );
        let e = conn.query_opt(sql, &[&3i32]).await.unwrap_err();
        assert_eq!(e.row_count(), Some(3));
        conn.close().await;
    });
}

#[test]
fn owned_rows_outlive_their_result_set_and_move_to_another_task() {
    run_within(LIMIT, async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        // Large enough that the buffer is on the heap; and a one-row inline result too.
        let rows = conn
            .query_params(
                "SELECT n::int8, repeat('x', n) AS s FROM generate_series(1, 100) n",
                &[],
            )
            .await
            .unwrap()
            .into_rows();
        let small: Vec<OwnedRow> = conn
            .query_params("SELECT 1::int8 AS n, 'y' AS s", &[])
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!((rows.len(), small.len()), (100, 1));

        // Sent to another task on this reactor, read there after this task dropped its copy.
        let clones = rows.clone();
        let handle = ioxide::spawn(async move {
            ioxide::time::sleep(Duration::from_millis(5)).await;
            let mut sum = 0i64;
            for row in &rows {
                let n: i64 = row.get(0).unwrap();
                assert_eq!(row.get::<&str>("s").unwrap().len() as i64, n);
                sum += n;
            }
            (sum, small[0].get_tuple::<(i64, String)>().unwrap())
        });
        drop(clones);
        let (sum, first) = handle.await;
        assert_eq!(sum, 5050);
        assert_eq!(first, (1, "y".to_string()));

        // And to another thread (another reactor could own it): Send is real.
        let row = conn.query_one("SELECT 'far'::text", &[]).await.unwrap();
        let s = std::thread::spawn(move || row.get::<String>(0).unwrap())
            .join()
            .unwrap();
        assert_eq!(s, "far");
        conn.close().await;
    });
}

#[test]
fn tuple_reads_and_the_arity_error() {
    run_within(LIMIT, async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let row = conn
            .query_one("SELECT 1::int8, 'two'::text, NULL::float8", &[])
            .await
            .unwrap();
        let t: (i64, String, Option<f64>) = row.get_tuple().unwrap();
        assert_eq!(t, (1, "two".to_string(), None));
        let (a, b, c) = row.get_tuple::<(i64, &str, Option<f64>)>().unwrap();
        assert_eq!((a, b, c), (1, "two", None));

        let e = row.get_tuple::<(i64, String)>().unwrap_err();
        assert!(e.is_conversion(), "{e}");
        assert!(
            e.to_string()
                .contains("row of 3 columns (int8, text, float8) into a tuple of 2 elements"),
            "{e}"
        );
        let e = row
            .get_tuple::<(i64, String, Option<f64>, bool)>()
            .unwrap_err();
        assert!(e.to_string().contains("into a tuple of 4 elements"), "{e}");
        // A type mismatch inside the tuple names the column.
        let e = row.get_tuple::<(i64, i64, Option<f64>)>().unwrap_err();
        assert!(
            e.is_conversion() && e.to_string().contains("index 1"),
            "{e}"
        );

        // Twelve columns, and borrowed rows read tuples too.
        let row = conn
            .query_one(
                "SELECT 1::int4, 2::int4, 3::int4, 4::int4, 5::int4, 6::int4, \
                 7::int4, 8::int4, 9::int4, 10::int4, 11::int4, 12::int4",
                &[],
            )
            .await
            .unwrap();
        type Twelve = (i32, i32, i32, i32, i32, i32, i32, i32, i32, i32, i32, i32);
        let t: Twelve = row.get_tuple().unwrap();
        assert_eq!(t, (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12));
        let mut pairs = Vec::new();
        conn.query_rows("SELECT n, n * 2 FROM generate_series(1, 3) n", &[], |r| {
            pairs.push(r.get_tuple::<(i32, i32)>()?);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(pairs, [(1, 2), (2, 4), (3, 6)]);
        conn.close().await;
    });
}

#[test]
fn the_pool_and_a_rented_connection_have_query_one_and_query_opt() {
    run_within(LIMIT, async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(2)).unwrap();
        let row = pool
            .query_one("SELECT $1::text AS name", &[&"ann"])
            .await
            .unwrap();
        assert_eq!(row.get::<&str>("name").unwrap(), "ann");
        let e = pool
            .query_one("SELECT 1 WHERE false", &[])
            .await
            .unwrap_err();
        assert_eq!((e.is_row_count(), e.row_count()), (true, Some(0)));
        let e = pool
            .query_one("SELECT generate_series(1, 3)", &[])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "query_one: expected exactly one row, the query returned 3 rows"
        );
        assert!(pool
            .query_opt("SELECT 1 WHERE false", &[])
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            pool.query_opt("SELECT 9::int8", &[])
                .await
                .unwrap()
                .unwrap()
                .get::<i64>(0)
                .unwrap(),
            9
        );
        // PooledConn derefs to PgConnection; the row outlives the rental.
        let row = {
            let conn = pool.rent().await.unwrap();
            conn.query_one("SELECT 3::int8", &[]).await.unwrap()
        };
        assert_eq!(row.get::<i64>(0).unwrap(), 3);
        pool.close().await;
    });
}

/// Client CPU per row of reading 10 000 rows of the five columns through typed `get`: borrowed
/// from the `ResultSet`, and as `OwnedRow`s (including `into_rows`). Prints the figures;
/// asserts only that owned rows cost at most three times the borrowed read. Meant for
/// `--release -- --ignored`.
#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn owned_rows_cost_about_what_borrowed_rows_cost() {
    run_within(Duration::from_secs(120), async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let sql = "SELECT n::int8 AS i, 'row ' || n AS t, n * 0.5::float8 AS f, n % 2 = 0 AS b, \
                   now() AS ts FROM generate_series(1, 10000) n";
        let rounds = 30u32;
        let (mut borrowed, mut owned, mut convert) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..rounds {
            let rs = conn.query_params(sql, &[]).await.unwrap();
            let t = std::time::Instant::now();
            let mut acc = 0i64;
            for row in rs.iter() {
                acc += row.get::<i64>(0).unwrap();
                acc += row.get::<&str>(1).unwrap().len() as i64;
                acc += row.get::<f64>(2).unwrap() as i64;
                acc += i64::from(row.get::<bool>(3).unwrap());
                acc += i64::from(row.get::<SystemTime>(4).unwrap() > UNIX_EPOCH);
            }
            borrowed += t.elapsed();
            assert!(acc > 0);
            let t = std::time::Instant::now();
            let rows = rs.into_rows();
            convert += t.elapsed();
            let mut acc2 = 0i64;
            for row in rows {
                acc2 += row.get::<i64>(0).unwrap();
                acc2 += row.get::<&str>(1).unwrap().len() as i64;
                acc2 += row.get::<f64>(2).unwrap() as i64;
                acc2 += i64::from(row.get::<bool>(3).unwrap());
                acc2 += i64::from(row.get::<SystemTime>(4).unwrap() > UNIX_EPOCH);
            }
            owned += t.elapsed();
            assert_eq!(acc, acc2);
        }
        let per_row = |d: Duration| d.as_nanos() as f64 / f64::from(rounds) / 10_000.0;
        println!(
            "10 000 rows x 5 columns, typed get: borrowed {:.1} ns/row, owned (into_rows + get + drop) {:.1} ns/row, of which into_rows {:.1}",
            per_row(borrowed),
            per_row(owned),
            per_row(convert)
        );
        assert!(
            owned <= borrowed * 3,
            "owned {owned:?} vs borrowed {borrowed:?}"
        );
        conn.close().await;
    });
}
