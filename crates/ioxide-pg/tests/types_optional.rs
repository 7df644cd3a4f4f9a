//! The optional types, each round-tripped through a real server in binary (parameters and
//! results): uuid, chrono, time, serde_json (the `with-*` features) and rust_decimal (its own
//! `db-postgres` feature). Run with `cargo test -p ioxide-pg --all-features --test
//! types_optional` (`.ci/run` does).
#![allow(clippy::unwrap_used)]
#![cfg(all(
    feature = "with-uuid-1",
    feature = "with-chrono-0_4",
    feature = "with-time-0_3",
    feature = "with-serde_json-1"
))]

mod common;

use std::time::Duration;

use common::{opts, run_within};
use ioxide_pg::PgConnection;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn uuid_round_trips() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let row = c
            .query_one("SELECT $1::uuid, $1::uuid::text", &[&id])
            .await
            .unwrap();
        assert_eq!(row.get::<uuid::Uuid>(0).unwrap(), id);
        assert_eq!(
            row.get::<&str>(1).unwrap(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        let r = c.query_one("SELECT gen_random_uuid()", &[]).await.unwrap();
        assert_eq!(r.get::<uuid::Uuid>(0).unwrap().get_version_num(), 4);
    });
}

#[test]
fn chrono_round_trips() {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        let ts: NaiveDateTime = d.and_hms_micro_opt(16, 49, 32, 123_456).unwrap();
        let tz: DateTime<Utc> = ts.and_utc();
        let row = c
            .query_one(
                "SELECT $1::date, $2::timestamp, $3::timestamptz, $3::timestamptz::text",
                &[&d, &ts, &tz],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<NaiveDate>(0).unwrap(), d);
        assert_eq!(row.get::<NaiveDateTime>(1).unwrap(), ts);
        assert_eq!(row.get::<DateTime<Utc>>(2).unwrap(), tz);
        assert!(row.get::<&str>(3).unwrap().starts_with("2026-12-06"));
    });
}

#[test]
fn time_round_trips() {
    use time::macros::{date, datetime};
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let d = date!(2026 - 12 - 06);
        let ts = datetime!(2026-12-06 16:49:32.123456);
        let tz = datetime!(2026-12-06 16:49:32.123456 UTC);
        let row = c
            .query_one(
                "SELECT $1::date, $2::timestamp, $3::timestamptz",
                &[&d, &ts, &tz],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<time::Date>(0).unwrap(), d);
        assert_eq!(row.get::<time::PrimitiveDateTime>(1).unwrap(), ts);
        assert_eq!(row.get::<time::OffsetDateTime>(2).unwrap(), tz);
    });
}

#[test]
fn serde_json_round_trips_as_json_and_jsonb() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let v = serde_json::json!({"a": [1, 2, {"b": null}], "é": "ü", "n": 1.5});
        let row = c
            .query_one(
                "SELECT $1::jsonb, $2::json, ($1::jsonb -> 'a' -> 2)",
                &[&v, &v],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<serde_json::Value>(0).unwrap(), v);
        assert_eq!(row.get::<serde_json::Value>(1).unwrap(), v);
        assert_eq!(
            row.get::<serde_json::Value>(2).unwrap(),
            serde_json::json!({"b": null})
        );
    });
}

#[test]
fn rust_decimal_round_trips_as_numeric() {
    use rust_decimal::Decimal;
    use std::str::FromStr;
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        for text in ["0", "-1.5", "1234567890123456789.012345678", "0.000001"] {
            let d = Decimal::from_str(text).unwrap();
            let row = c
                .query_one("SELECT $1::numeric, $1::numeric::text", &[&d])
                .await
                .unwrap();
            assert_eq!(row.get::<Decimal>(0).unwrap(), d, "{text}");
            assert_eq!(row.get::<&str>(1).unwrap(), text);
        }
    });
}
