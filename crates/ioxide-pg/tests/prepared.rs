//! Prepared statements as API: `prepare`, `prepare_typed`, and a `Statement` used on the
//! connection that prepared it, on another one, through the pool, after `DEALLOCATE ALL`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{opts, run_within};
use ioxide::Reactor;
use ioxide_pg::types::Type;
use ioxide_pg::{PgConnection, PgPool};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_statement_describes_itself_and_runs_with_every_query_method() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let stmt = c
            .prepare("SELECT $1::int8 AS n, $2::text AS label")
            .await
            .unwrap();
        assert_eq!(stmt.params(), &[Type::INT8, Type::TEXT]);
        let cols: Vec<(&str, Type)> = stmt
            .columns()
            .iter()
            .map(|c| (c.name(), c.type_().clone()))
            .collect();
        assert_eq!(cols, [("n", Type::INT8), ("label", Type::TEXT)]);
        assert_eq!(stmt.sql(), "SELECT $1::int8 AS n, $2::text AS label");

        let rs = c.query_params(&stmt, &[&7i64, &"seven"]).await.unwrap();
        let row = rs.row(0).unwrap();
        assert_eq!(
            (row.get::<i64>(0).unwrap(), row.get::<&str>(1).unwrap()),
            (7, "seven")
        );
        let mut seen = 0;
        c.query_rows(&stmt, &[&8i64, &"eight"], |row| {
            assert_eq!(row.get::<i64>("n")?, 8);
            seen += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(seen, 1);
        let ins = c.prepare("SELECT 1 WHERE $1::int4 > 0").await.unwrap();
        assert_eq!(c.execute(&ins, &[&1i32]).await.unwrap(), 1);
        // Preparing is cached: the same text again costs nothing new on the server.
        let before = c.cached_statements();
        c.prepare("SELECT $1::int8 AS n, $2::text AS label")
            .await
            .unwrap();
        assert_eq!(c.cached_statements(), before);
    });
}

#[test]
fn typed_statements_take_their_types_and_do_not_collide_with_untyped_ones() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let as_int = c.prepare_typed("SELECT $1", &[Type::INT8]).await.unwrap();
        let as_text = c.prepare_typed("SELECT $1", &[Type::TEXT]).await.unwrap();
        assert_eq!(as_int.params(), &[Type::INT8]);
        assert_eq!(as_text.params(), &[Type::TEXT]);
        let n: i64 = c
            .query_params(&as_int, &[&41i64])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(n, 41);
        let rs = c.query_params(&as_text, &[&"x"]).await.unwrap();
        assert_eq!(rs.row(0).unwrap().get::<&str>(0).unwrap(), "x");
        // A value of the wrong type is refused before anything is sent.
        let e = c.query_params(&as_int, &[&"not an int"]).await.unwrap_err();
        assert!(e.is_conversion() && !e.was_sent(), "{e}");
        // Unknown type (OID 0): the server infers it.
        let inferred = c
            .prepare_typed("SELECT $1::int4 + $2", &[Type::UNKNOWN])
            .await
            .unwrap();
        assert_eq!(inferred.params(), &[Type::INT4, Type::INT4]);
    });
}

#[test]
fn a_statement_runs_on_any_connection_and_survives_deallocate() {
    run_within(LIMIT, async {
        let a = PgConnection::connect(&opts()).await.unwrap();
        let b = PgConnection::connect(&opts()).await.unwrap();
        let stmt = a.prepare("SELECT $1::int8 * 2").await.unwrap();
        let on_b = b.cached_statements();
        let n: i64 = b
            .query_params(&stmt, &[&21i64])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(n, 42);
        assert_eq!(
            b.cached_statements(),
            on_b + 1,
            "prepared on b on first use"
        );
        // The server forgets every prepared statement: the next use prepares again.
        a.query("DEALLOCATE ALL").await.unwrap();
        let n: i64 = a
            .query_params(&stmt, &[&5i64])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(n, 10);

        // Through a pool of three: whichever connection runs it prepares it.
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(3)).unwrap();
        let mut tasks = Vec::new();
        for i in 0..60i64 {
            let (pool, stmt) = (pool.clone(), stmt.clone());
            tasks.push(ioxide::spawn(async move {
                let n: i64 = pool
                    .query_params(&stmt, &[&i])
                    .await
                    .unwrap()
                    .scalar()
                    .unwrap();
                assert_eq!(n, 2 * i);
            }));
        }
        for t in tasks {
            t.await;
        }
        pool.close().await;
    });
}
