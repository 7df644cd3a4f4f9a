//! The pool's shared `query` prepares a parameterless single statement on its second run and
//! binds it with text results: what the caller sees must be exactly what the simple protocol
//! gives (values, tags, statement counts, errors), for single and multi-statement texts,
//! through DDL that changes a result type, and for texts the server will not prepare.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{opts, run_within};
use ioxide::Reactor;
use ioxide_pg::{PgConnection, PgError, PgPool, QueryResult};

const LIMIT: Duration = Duration::from_secs(60);

/// What a caller can observe of a result or an error.
fn seen(r: &Result<QueryResult, PgError>) -> String {
    match r {
        Ok(q) => format!(
            "ok value={:?} rows={} tag={:?} statements={} empty={}",
            q.value(),
            q.rows(),
            q.command_tag(),
            q.statements(),
            q.is_empty_query()
        ),
        Err(e) => format!(
            "err state={:?} server={} misuse={}",
            e.sql_state(),
            e.is_server(),
            e.is_misuse()
        ),
    }
}

async fn prepared_count(pool: &PgPool, text: &str) -> i64 {
    let r = pool
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
            &[&text],
        )
        .await
        .unwrap();
    r.get::<i64>(0).unwrap()
}

#[test]
fn every_run_of_a_text_answers_as_the_simple_protocol_does() {
    run_within(LIMIT, async {
        let direct = PgConnection::connect(&opts()).await.unwrap();
        direct
            .batch_execute("DROP TABLE IF EXISTS auto_t; CREATE TABLE auto_t (v int)")
            .await
            .unwrap();
        // One connection, so every run of a text lands on the same session.
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        let texts = [
            "SELECT 42",
            "SELECT 1.5::float8, 'second column'",
            "SELECT '1e100'::float8",
            "SELECT true",
            "SELECT NULL::int",
            "SELECT 'x'::text",
            "SELECT ''",
            "SELECT '2020-01-02 03:04:05+00'::timestamptz",
            "SELECT ARRAY[1, 2, NULL]",
            "SELECT ROW(1, 'a')",
            "SELECT '\\x00ff'::bytea",
            "SELECT 1 WHERE false",
            "SELECT n FROM generate_series(1, 3) n",
            "VALUES (1), (2)",
            "SHOW server_version_num",
            "INSERT INTO auto_t VALUES (1)",
            "UPDATE auto_t SET v = v + 1",
            "DELETE FROM auto_t WHERE v > 100",
            "",
            "   ",
            "-- only a comment",
            "SELECT 1; SELECT 2",
            "SELECT 1;",
            "INSERT INTO auto_t VALUES (5); SELECT count(*) FROM auto_t",
            "SELECT * FROM no_such_table",
            "SELEKT 1",
            "SELECT 1 / 0",
            "SELECT $1",
        ];
        for text in texts {
            for run in 0..3 {
                let expected = seen(&direct.query(text).await);
                let got = seen(&pool.query(text).await);
                // Values that change between calls (counts of a growing table) differ in
                // both; compare the shape for those, the whole for the rest.
                if text.contains("count(*)") || text.starts_with("UPDATE") {
                    assert_eq!(
                        got.split(" value=").next(),
                        expected.split(" value=").next(),
                        "{text:?} run {run}"
                    );
                } else {
                    assert_eq!(got, expected, "{text:?} run {run}");
                }
            }
        }
        // The pool's rule holds on every run, prepared or not: no transaction on a shared
        // connection.
        for _ in 0..3 {
            let e = pool.query("BEGIN").await.unwrap_err();
            assert!(e.is_misuse(), "{e}");
        }
        // The single statements were prepared; scripts and failures were not.
        assert_eq!(prepared_count(&pool, "SELECT 42").await, 1);
        assert_eq!(
            prepared_count(&pool, "INSERT INTO auto_t VALUES (1)").await,
            1
        );
        assert_eq!(prepared_count(&pool, "SELECT 1; SELECT 2").await, 0);
        assert_eq!(
            prepared_count(&pool, "SELECT * FROM no_such_table").await,
            0
        );
        pool.close().await;
    });
}

#[test]
fn a_result_type_changed_by_ddl_is_answered_afresh() {
    run_within(LIMIT, async {
        let direct = PgConnection::connect(&opts()).await.unwrap();
        direct
            .batch_execute(
                "DROP TABLE IF EXISTS auto_ddl; CREATE TABLE auto_ddl (v int); \
                 INSERT INTO auto_ddl VALUES (7)",
            )
            .await
            .unwrap();
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        for _ in 0..3 {
            assert_eq!(
                pool.query("SELECT * FROM auto_ddl").await.unwrap().value(),
                Some("7")
            );
        }
        assert_eq!(prepared_count(&pool, "SELECT * FROM auto_ddl").await, 1);
        direct
            .batch_execute(
                "ALTER TABLE auto_ddl ALTER v TYPE text; UPDATE auto_ddl SET v = 'seven'",
            )
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(
                pool.query("SELECT * FROM auto_ddl").await.unwrap().value(),
                Some("seven")
            );
        }
        // DEALLOCATE ALL behind the cache's back: answered all the same.
        pool.query("DEALLOCATE ALL").await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                pool.query("SELECT * FROM auto_ddl").await.unwrap().value(),
                Some("seven")
            );
        }
        pool.close().await;
    });
}

#[test]
fn caching_off_keeps_the_simple_protocol() {
    run_within(LIMIT, async {
        let pool = PgPool::start(
            &Reactor::current(),
            opts().pool_size(1).statement_cache_capacity(0),
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(pool.query("SELECT 42").await.unwrap().value(), Some("42"));
        }
        assert_eq!(prepared_count(&pool, "SELECT 42").await, 0);
        pool.close().await;
    });
}

#[test]
fn many_concurrent_first_uses_prepare_the_text_once() {
    run_within(LIMIT, async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        let text = "SELECT 'concurrent'::text";
        for _round in 0..3 {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let pool = pool.clone();
                    ioxide::spawn(async move {
                        pool.query(text).await.map(|r| r.value().map(str::to_owned))
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap().as_deref(), Some("concurrent"));
            }
        }
        // One statement for the text, none closed and re-made along the way: the session's
        // statement names (`ioxide_<connection's random tag>_<n>`) count up from 1, and only
        // the text's and this query's exist.
        let r = pool
            .query_params(
                "SELECT count(*), max(name) FROM pg_prepared_statements WHERE statement = $1",
                &[&text],
            )
            .await
            .unwrap();
        let row = r.row(0).unwrap();
        assert_eq!(row.get::<i64>(0).unwrap(), 1);
        let name = row.get::<Option<&str>>(1).unwrap().unwrap();
        assert!(
            name.starts_with("ioxide_") && name.ends_with("_1"),
            "{name}"
        );
        pool.close().await;
    });
}
