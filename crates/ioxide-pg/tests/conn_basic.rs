//! Queries against a real server: simple, parameterized, typed, streamed, pipelined.
#![allow(clippy::unwrap_used)]

use ioxide_pg::{PgConnection, PgOptions};
use testkit::shared_cluster;

fn opts() -> PgOptions {
    let c = shared_cluster();
    PgOptions::new()
        .host(c.host())
        .port(c.port())
        .user(c.user())
        .password(c.password())
        .database(c.database())
}

#[test]
fn select_42_gives_value_rows_and_tag() {
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let r = conn.query("SELECT 42").await.unwrap();
        assert_eq!(r.value(), Some("42"));
        assert_eq!(r.rows(), 1);
        assert_eq!(r.command_tag(), "SELECT 1");
    });
}

#[test]
fn parameterized_query_round_trips_an_int8() {
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let rs = conn
            .query_params("SELECT $1::int8 + 1 AS n", &[&41i64])
            .await
            .unwrap();
        assert_eq!(rs.scalar::<i64>().unwrap(), 42);
        assert_eq!(rs.row(0).unwrap().get::<i64>("n").unwrap(), 42);
        assert_eq!(conn.cached_statements(), 1);
        let rs = conn
            .query_params("SELECT $1::int8 + 1 AS n", &[&1i64])
            .await
            .unwrap();
        assert_eq!(rs.scalar::<i64>().unwrap(), 2);
    });
}
