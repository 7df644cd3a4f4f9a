//! Named SQLSTATE constants against a real server's errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::opts;
use ioxide_pg::{PgConnection, SqlState};

#[test]
fn a_unique_violation_compares_equal_to_its_constant() {
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts()).await.unwrap();
        conn.query("CREATE TEMP TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let e = conn.query("INSERT INTO t VALUES (1)").await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION), "{e}");
        assert_eq!(e.sql_state(), Some("23505"));
        let db = e.as_db_error().unwrap();
        assert_eq!(db.state(), &SqlState::UNIQUE_VIOLATION);
        assert_eq!(db.code(), "23505");

        let e = conn.query("SELECT * FROM no_such_table").await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
        let e = conn.query("SELECT 1/0").await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e}");
        // The connection is fine after server errors; a non-server error has no code.
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));
    });
}

#[test]
fn a_non_server_error_has_no_code() {
    let e = ioxide_pg::PgError::conversion("x");
    assert_eq!(e.code(), None);
}
