//! Custom types — enums, composites (nested), domains, ranges and arrays of them — looked up
//! in `pg_type` once per connection, round-tripped with `postgres-types`' derives through
//! every query method, with caching off, and through a pool.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::{opts, run_within};
use ioxide::Reactor;
use ioxide_pg::types::{FromSql, Kind, ToSql, Type};
use ioxide_pg::{PgConnection, PgPool};

const LIMIT: Duration = Duration::from_secs(30);

/// The types, created once per test binary (the shared cluster is this process's own).
fn setup() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        ioxide::block_on(async {
            let c = PgConnection::connect(&opts()).await.unwrap();
            c.batch_execute(
                "DROP TABLE IF EXISTS ct_items; \
                 DROP TYPE IF EXISTS ct_line, ct_point2, ct_moodrange, ct_floatrange CASCADE; \
                 DROP TYPE IF EXISTS ct_mood CASCADE; \
                 DROP DOMAIN IF EXISTS ct_posint, ct_label CASCADE; \
                 CREATE EXTENSION IF NOT EXISTS hstore; CREATE EXTENSION IF NOT EXISTS citext; \
                 CREATE TYPE ct_mood AS ENUM ('sad', 'ok', 'happy'); \
                 CREATE TYPE ct_point2 AS (x int4, y int4); \
                 CREATE TYPE ct_line AS (name text, a ct_point2, b ct_point2, mood ct_mood); \
                 CREATE DOMAIN ct_posint AS int4 CHECK (VALUE > 0); \
                 CREATE DOMAIN ct_label AS text; \
                 CREATE TYPE ct_moodrange AS RANGE (subtype = ct_mood); \
                 CREATE TYPE ct_floatrange AS RANGE (subtype = float8); \
                 CREATE TABLE ct_items (id int8 PRIMARY KEY, mood ct_mood, at ct_point2, \
                                        n ct_posint, moods ct_mood[])",
            )
            .await
            .unwrap();
            c.close().await;
        })
    });
}

#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql)]
#[postgres(name = "ct_mood")]
enum Mood {
    #[postgres(name = "sad")]
    Sad,
    #[postgres(name = "ok")]
    Ok,
    #[postgres(name = "happy")]
    Happy,
}

/// The same enum with a variant the database's `ct_mood` lacks.
#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql)]
#[postgres(name = "ct_mood")]
enum WideMood {
    #[postgres(name = "sad")]
    Sad,
    #[postgres(name = "ok")]
    Ok,
    #[postgres(name = "happy")]
    Happy,
    #[postgres(name = "ecstatic")]
    Ecstatic,
}

#[derive(Debug, Clone, PartialEq, ToSql, FromSql)]
#[postgres(name = "ct_point2")]
struct Point2 {
    x: i32,
    y: i32,
}

#[derive(Debug, Clone, PartialEq, ToSql, FromSql)]
#[postgres(name = "ct_line")]
struct Line {
    name: String,
    a: Point2,
    b: Option<Point2>,
    mood: Mood,
}

/// A domain: a derived newtype checks the name and the domain's base type.
#[derive(Debug, Clone, Copy, PartialEq, ToSql, FromSql)]
#[postgres(name = "ct_posint")]
struct PosInt(i32);

#[derive(Debug, Clone, PartialEq, ToSql, FromSql)]
#[postgres(name = "ct_label")]
struct Label(String);

fn line() -> Line {
    Line {
        name: "diag".into(),
        a: Point2 { x: 1, y: 2 },
        b: None,
        mood: Mood::Happy,
    }
}

#[test]
fn an_enum_round_trips_and_is_looked_up_once_per_connection() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        // Built-in types only: no lookup.
        c.query_one("SELECT $1::int8, 'x'::text", &[&1i64])
            .await
            .unwrap();
        assert_eq!(c.type_lookups(), 0);

        let row = c
            .query_one("SELECT $1::ct_mood AS m", &[&Mood::Ok])
            .await
            .unwrap();
        assert_eq!(row.get::<Mood>("m").unwrap(), Mood::Ok);
        let col = row.columns().get(0).unwrap().type_().clone();
        assert_eq!(
            (col.name(), col.schema(), col.kind()),
            (
                "ct_mood",
                "public",
                &Kind::Enum(vec!["sad".into(), "ok".into(), "happy".into()])
            )
        );
        assert_eq!(c.type_lookups(), 1, "one round trip for one enum");

        // Another statement with the same type, and the same one again: from the cache.
        let rs = c
            .query_params(
                "SELECT m FROM unnest($1::ct_mood[]) m ORDER BY m",
                &[&vec![Mood::Happy, Mood::Sad]],
            )
            .await
            .unwrap();
        let moods: Vec<Mood> = rs.iter().map(|r| r.get(0).unwrap()).collect();
        assert_eq!(moods, [Mood::Sad, Mood::Happy]);
        // The array type is a new OID (a lookup), its element is cached.
        assert_eq!(c.type_lookups(), 2);
        for m in [Mood::Sad, Mood::Happy] {
            let back: Mood = c
                .query_params("SELECT $1::ct_mood AS m", &[&m])
                .await
                .unwrap()
                .scalar()
                .unwrap();
            assert_eq!(back, m);
        }
        assert_eq!(c.type_lookups(), 2, "cached statements: no lookup");

        // NULLs both ways.
        let none: Option<Mood> = None;
        let row = c
            .query_one("SELECT $1::ct_mood, NULL::ct_mood[]", &[&none])
            .await
            .unwrap();
        assert_eq!(row.get::<Option<Mood>>(0).unwrap(), None);
        assert_eq!(row.get::<Option<Vec<Mood>>>(1).unwrap(), None);
        assert!(row.get::<Mood>(0).is_err(), "NULL read as non-Option");
        assert_eq!(c.type_lookups(), 2);

        // A second connection looks the type up on its own.
        let d = PgConnection::connect(&opts()).await.unwrap();
        let back: Mood = d
            .query_params("SELECT $1::ct_mood", &[&Mood::Sad])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!((back, d.type_lookups()), (Mood::Sad, 1));
    });
}

#[test]
fn nested_composites_and_arrays_of_them_round_trip() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let l = line();
        let mut l2 = line();
        l2.b = Some(Point2 { x: -3, y: 4 });
        l2.mood = Mood::Sad;
        let row = c
            .query_one(
                "SELECT $1::ct_line AS l, $2::ct_line[] AS ls, ($1::ct_line).a AS a",
                &[&l, &vec![l.clone(), l2.clone()]],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<Line>("l").unwrap(), l);
        assert_eq!(row.get::<Vec<Line>>("ls").unwrap(), [l.clone(), l2]);
        assert_eq!(row.get::<Point2>("a").unwrap(), Point2 { x: 1, y: 2 });
        // ct_line and _ct_line first, then the types their fields name: two round trips.
        assert_eq!(c.type_lookups(), 2);
        let t = row.columns().get(0).unwrap().type_().clone();
        let Kind::Composite(fields) = t.kind() else {
            panic!("ct_line is not a composite: {t:?}")
        };
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["name", "a", "b", "mood"]);
        assert_eq!(fields[0].type_(), &Type::TEXT);
        assert_eq!(fields[1].type_().name(), "ct_point2");

        // Arrays of a composite, with a NULL element.
        let pts = vec![Some(Point2 { x: 0, y: 0 }), None];
        let back: Vec<Option<Point2>> = c
            .query_params("SELECT $1::ct_point2[]", &[&pts])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(back, pts);
        // _ct_point2 is new; ct_point2 is cached from ct_line's fields.
        assert_eq!(c.type_lookups(), 3);

        // Through a table, with execute and a prepared statement.
        c.execute("DELETE FROM ct_items WHERE id = 1", &[])
            .await
            .unwrap();
        let ins = c
            .prepare("INSERT INTO ct_items (id, mood, at, n, moods) VALUES ($1, $2, $3, $4, $5)")
            .await
            .unwrap();
        assert_eq!(ins.params()[1].name(), "ct_mood");
        assert_eq!(ins.params()[3].name(), "ct_posint");
        let n = c
            .execute(
                &ins,
                &[
                    &1i64,
                    &Mood::Ok,
                    &Point2 { x: 5, y: 6 },
                    &PosInt(7),
                    &vec![Mood::Sad, Mood::Ok],
                ],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        let row = c
            .query_one(
                "SELECT mood, at, n, moods FROM ct_items WHERE id = $1",
                &[&1i64],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<Mood>(0).unwrap(), Mood::Ok);
        assert_eq!(row.get::<Point2>(1).unwrap(), Point2 { x: 5, y: 6 });
        // A result column of a domain type is described as the base type (the server sends
        // the base type's OID in RowDescription).
        assert_eq!(row.columns().get(2).unwrap().type_(), &Type::INT4);
        assert_eq!(row.get::<i32>(2).unwrap(), 7);
        assert_eq!(row.get::<Vec<Mood>>(3).unwrap(), [Mood::Sad, Mood::Ok]);
    });
}

#[test]
fn domains_and_ranges_get_their_kinds() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let stmt = c
            .prepare(
                "SELECT $1::ct_posint::int4 + 1, $2::ct_label::text, \
                 $3::ct_moodrange::text, 'empty'::ct_floatrange, $4::ct_moodrange",
            )
            .await
            .unwrap();
        let p = stmt.params();
        assert_eq!(
            (p[0].name(), p[0].kind()),
            ("ct_posint", &Kind::Domain(Type::INT4))
        );
        assert_eq!(p[1].kind(), &Kind::Domain(Type::TEXT));
        let Kind::Range(sub) = p[2].kind() else {
            panic!("ct_moodrange is not a range: {:?}", p[2])
        };
        assert_eq!(sub.name(), "ct_mood");
        let cols = stmt.columns();
        assert_eq!(
            cols.get(3).unwrap().type_().kind(),
            &Kind::Range(Type::FLOAT8)
        );
        assert_eq!(cols.get(4).unwrap().type_().name(), "ct_moodrange");
        // PostgreSQL 14+ made a multirange for it.
        let multi = c
            .prepare("SELECT '{[sad,ok)}'::ct_moodmultirange")
            .await
            .unwrap();
        let t = multi.columns().get(0).unwrap().type_().clone();
        let Kind::Multirange(sub) = t.kind() else {
            panic!("ct_moodmultirange is not a multirange: {t:?}")
        };
        assert_eq!(sub.name(), "ct_mood");

        let r = MoodRange(Mood::Sad, Mood::Happy);
        let row = c
            .query_one(&stmt, &[&PosInt(41), &Label("hi".into()), &r, &r])
            .await
            .unwrap();
        assert_eq!(row.get::<i32>(0).unwrap(), 42);
        assert_eq!(row.get::<&str>(1).unwrap(), "hi");
        assert_eq!(row.get::<&str>(2).unwrap(), "[sad,happy)");
        assert_eq!(row.get::<MoodRange>(4).unwrap(), r);

        // A plain i32 is not a ct_posint (as in tokio-postgres); a cast in SQL is.
        let e = c
            .query_one("SELECT $1::ct_posint::int4", &[&5i32])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ct_posint"), "{e}");
        let n: i32 = c
            .query_params("SELECT $1::int4::ct_posint", &[&5i32])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(n, 5);

        // The domain's check still applies: a server error, not a client one.
        let e = c
            .query_one("SELECT $1::ct_posint::int4", &[&PosInt(0)])
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("23514"), "{e}");
    });
}

/// `[lower, upper)` of a `ct_moodrange`, encoded by hand (the derives do not cover ranges).
#[derive(Debug, PartialEq)]
struct MoodRange(Mood, Mood);

impl ToSql for MoodRange {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<ioxide_pg::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres_protocol::types::{range_to_sql, RangeBound};
        use postgres_protocol::IsNull;
        let Kind::Range(sub) = ty.kind() else {
            return Err("not a range".into());
        };
        let bound = |m: Mood, buf: &mut bytes::BytesMut| match m.to_sql(sub, buf) {
            Ok(_) => Ok(RangeBound::Inclusive(IsNull::No)),
            Err(e) => Err(e),
        };
        range_to_sql(
            |buf| bound(self.0, buf),
            |buf| {
                bound(self.1, buf)?;
                Ok(RangeBound::Exclusive(IsNull::No))
            },
            out,
        )?;
        Ok(ioxide_pg::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Range(sub) if <Mood as ToSql>::accepts(sub))
    }

    ioxide_pg::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for MoodRange {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use postgres_protocol::types::{range_from_sql, Range, RangeBound};
        let Kind::Range(sub) = ty.kind() else {
            return Err("not a range".into());
        };
        match range_from_sql(raw)? {
            Range::Nonempty(RangeBound::Inclusive(Some(lo)), RangeBound::Exclusive(Some(hi))) => {
                Ok(MoodRange(
                    Mood::from_sql(sub, lo)?,
                    Mood::from_sql(sub, hi)?,
                ))
            }
            _ => Err("unexpected bounds".into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Range(sub) if <Mood as FromSql>::accepts(sub))
    }
}

#[test]
fn a_rust_enum_the_database_does_not_match_is_a_clear_error() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let e = c
            .query_one("SELECT $1::ct_mood", &[&WideMood::Happy])
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("$1") && msg.contains("ct_mood"), "{msg}");
        let row = c.query_one("SELECT 'ok'::ct_mood AS m", &[]).await.unwrap();
        let e = row.get::<WideMood>("m").unwrap_err();
        assert!(e.to_string().contains("ct_mood"), "{e}");
        assert_eq!(row.get::<Mood>("m").unwrap(), Mood::Ok);
        // The connection serves on.
        let back: WideMood = {
            // Reading with a type that accepts the text is fine: the labels are a subset.
            let m: Mood = c
                .query_params("SELECT $1::ct_mood", &[&Mood::Sad])
                .await
                .unwrap()
                .scalar()
                .unwrap();
            match m {
                Mood::Sad => WideMood::Sad,
                Mood::Ok => WideMood::Ok,
                Mood::Happy => WideMood::Happy,
            }
        };
        assert_eq!(back, WideMood::Sad);
    });
}

#[test]
fn with_caching_off_every_query_method_gets_the_real_types() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts().statement_cache_capacity(0))
            .await
            .unwrap();
        // With parameters: described first (one lookup), the reply's rows take its types.
        let row = c
            .query_one(
                "SELECT $1::ct_mood, $2::ct_point2",
                &[&Mood::Happy, &Point2 { x: 1, y: 1 }],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<Mood>(0).unwrap(), Mood::Happy);
        assert_eq!(row.get::<Point2>(1).unwrap(), Point2 { x: 1, y: 1 });
        assert_eq!(c.type_lookups(), 1);
        let mut seen = Vec::new();
        c.query_rows("SELECT $1::ct_mood", &[&Mood::Sad], |r| {
            seen.push(r.get::<Mood>(0)?);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(seen, [Mood::Sad]);
        // Without parameters nothing is described before the reply: the result is fixed
        // after it, from the connection's cache (no round trip for cached types).
        let m: Mood = c
            .query_params("SELECT 'ok'::ct_mood", &[])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!((m, c.type_lookups()), (Mood::Ok, 1));
        let l: Line = c
            .query_params("SELECT ROW('diag', ROW(1, 2), NULL, 'happy')::ct_line", &[])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(l, line());
        assert_eq!(c.type_lookups(), 2, "ct_line (its field types are cached)");
        let stmt = c.prepare("SELECT $1::ct_mood[]").await.unwrap();
        let v: Vec<Mood> = c
            .query_params(&stmt, &[&vec![Mood::Ok]])
            .await
            .unwrap()
            .scalar()
            .unwrap();
        assert_eq!(v, [Mood::Ok]);
        assert_eq!(c.cached_statements(), 0);
    });
}

#[test]
fn execute_many_and_a_pool_use_the_types() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        c.execute("DELETE FROM ct_items WHERE id BETWEEN 100 AND 199", &[])
            .await
            .unwrap();
        let rows: Vec<(i64, Mood, Point2)> = (100..110)
            .map(|i| {
                let m = [Mood::Sad, Mood::Ok, Mood::Happy][i as usize % 3];
                (
                    i,
                    m,
                    Point2 {
                        x: i as i32,
                        y: -(i as i32),
                    },
                )
            })
            .collect();
        let params: Vec<[&(dyn ToSql + Sync); 3]> = rows
            .iter()
            .map(|(i, m, p)| [i as _, m as _, p as _])
            .collect();
        let batch: Vec<ioxide_pg::Params<'_>> = params.iter().map(|p| &p[..]).collect();
        let n = c
            .execute_many(
                "INSERT INTO ct_items (id, mood, at) VALUES ($1, $2, $3)",
                &batch,
            )
            .await
            .unwrap();
        assert_eq!(n, 10);

        let pool = PgPool::start(&Reactor::current(), opts().pool_size(2)).unwrap();
        let mut tasks = Vec::new();
        for (i, m, p) in rows.clone() {
            let pool = pool.clone();
            tasks.push(ioxide::spawn(async move {
                let row = pool
                    .query_one("SELECT mood, at FROM ct_items WHERE id = $1", &[&i])
                    .await
                    .unwrap();
                assert_eq!(row.get::<Mood>(0).unwrap(), m);
                assert_eq!(row.get::<Point2>(1).unwrap(), p);
                let back: Vec<Mood> = pool
                    .query_params("SELECT $1::ct_mood[]", &[&vec![m, m]])
                    .await
                    .unwrap()
                    .scalar()
                    .unwrap();
                assert_eq!(back, [m, m]);
            }));
        }
        for t in tasks {
            t.await;
        }
        // Each of the pool's connections looked each type up once, though several tasks
        // prepared the same statements on it at once: ct_mood and ct_point2 (one round
        // trip), _ct_mood (one more).
        let (a, b) = (pool.rent().await.unwrap(), pool.rent().await.unwrap());
        assert!(!a.same_as(&b));
        let counts = [a.type_lookups(), b.type_lookups()];
        assert!(counts.iter().all(|&n| n <= 2), "{counts:?}");
        assert!(counts.iter().sum::<u64>() >= 2, "{counts:?}");
        drop((a, b));
        pool.close().await;
    });
}

#[test]
fn a_lookup_in_an_aborted_transaction_names_the_type() {
    setup();
    run_within(LIMIT, async {
        let c = std::rc::Rc::new(PgConnection::connect(&opts()).await.unwrap());
        c.query("BEGIN").await.unwrap();
        // The Describe succeeds; the failing statement pipelined behind it aborts the
        // transaction before the lookup the Describe calls for runs.
        let c2 = c.clone();
        let prep = ioxide::spawn(async move { c2.prepare("SELECT $1::ct_line").await });
        let c3 = c.clone();
        let fail = ioxide::spawn(async move { c3.query("SELECT 1/0").await });
        let e = prep.await.unwrap_err();
        assert!(fail.await.is_err());
        assert_eq!(e.sql_state(), Some("25P02"), "{e}");
        let oid: u32 = {
            c.query("ROLLBACK").await.unwrap();
            c.query_one("SELECT 'ct_line'::regtype::oid", &[])
                .await
                .unwrap()
                .get(0)
                .unwrap()
        };
        assert!(format!("{e:#}").contains(&oid.to_string()), "{e:#}");
        // The statement whose types could not be looked up was not kept on the server.
        let kept: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
                &[&"SELECT $1::ct_line"],
            )
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(kept, 0);
        // After the rollback the same statement prepares.
        let stmt = c.prepare("SELECT $1::ct_line").await.unwrap();
        assert_eq!(stmt.params()[0].name(), "ct_line");
    });
}

#[test]
fn a_type_dropped_and_created_again_is_looked_up_again() {
    setup();
    run_within(LIMIT, async {
        #[derive(Debug, PartialEq, ToSql, FromSql)]
        #[postgres(name = "ct_tmp")]
        enum Before {
            #[postgres(name = "a")]
            A,
            #[postgres(name = "b")]
            B,
        }
        #[derive(Debug, PartialEq, ToSql, FromSql)]
        #[postgres(name = "ct_tmp")]
        enum After {
            #[postgres(name = "a")]
            A,
            #[postgres(name = "b")]
            B,
            #[postgres(name = "c")]
            C,
        }
        let c = PgConnection::connect(&opts()).await.unwrap();
        let recreate = |labels: &'static str| {
            format!(
                "DROP TABLE IF EXISTS ct_tmp_t; DROP TYPE IF EXISTS ct_tmp; \
                 CREATE TYPE ct_tmp AS ENUM ({labels}); \
                 CREATE TABLE ct_tmp_t (v ct_tmp); INSERT INTO ct_tmp_t VALUES ('b')"
            )
        };
        c.batch_execute(&recreate("'a', 'b'")).await.unwrap();
        let sql = "SELECT v FROM ct_tmp_t";
        let v: Before = c.query_params(sql, &[]).await.unwrap().scalar().unwrap();
        assert_eq!((v, c.type_lookups()), (Before::B, 1));

        // New OID, new labels: the cached statement is stale (its result type changed), the
        // retry empties the type cache and looks the new type up.
        c.batch_execute(&recreate("'a', 'b', 'c'")).await.unwrap();
        let rs = c.query_params(sql, &[]).await.unwrap();
        assert_eq!(rs.scalar::<After>().unwrap(), After::B);
        assert!(rs.scalar::<Before>().is_err(), "the old definition is gone");
        assert_eq!(c.type_lookups(), 2);
        c.batch_execute("DROP TABLE ct_tmp_t; DROP TYPE ct_tmp")
            .await
            .unwrap();
    });
}

#[test]
fn a_parameterless_query_rows_with_caching_off_says_why_it_cannot_read_a_custom_type() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts().statement_cache_capacity(0))
            .await
            .unwrap();
        let e = c
            .query_rows("SELECT 'ok'::ct_mood", &[], |r| r.get::<Mood>(0).map(drop))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("use query_params"), "{e}");
        // Text rows of the simple protocol need no lookup.
        let r = c.query("SELECT 'happy'::ct_mood").await.unwrap();
        assert_eq!(r.value(), Some("happy"));
        assert_eq!(c.type_lookups(), 0);
    });
}

#[test]
fn extension_types_get_their_names() {
    setup();
    run_within(LIMIT, async {
        // hstore and citext have no fixed OID: postgres-types' impls recognise them by name.
        let c = PgConnection::connect(&opts()).await.unwrap();
        let mut h = std::collections::HashMap::new();
        h.insert("k".to_string(), Some("v".to_string()));
        h.insert("none".to_string(), None);
        let row = c
            .query_one(
                "SELECT $1::hstore, $2::citext = 'HELLO', 'Mixed'::citext",
                &[&h, &"hello"],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<std::collections::HashMap<String, Option<String>>>(0)
                .unwrap(),
            h
        );
        assert!(row.get::<bool>(1).unwrap());
        assert_eq!(row.get::<String>(2).unwrap(), "Mixed");
        assert_eq!(row.columns().get(2).unwrap().type_().name(), "citext");
    });
}

#[test]
fn pipelines_streams_portals_and_binary_copy_use_the_types() {
    setup();
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        // A pipeline prepares its statements itself: they get the real types too.
        let l = line();
        let mut p = ioxide_pg::Pipeline::new();
        p.query("SELECT $1::ct_mood AS m", &[&Mood::Sad]);
        p.query("SELECT $1::ct_line AS l", &[&l]);
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!(r[0].row(0).unwrap().get::<Mood>(0).unwrap(), Mood::Sad);
        assert_eq!(r[1].row(0).unwrap().get::<Line>(0).unwrap(), line());
        // A row stream.
        let mut rows = c
            .query_stream(
                "SELECT (ARRAY['sad','ok','happy']::ct_mood[])[1 + n % 3] FROM generate_series(0, 5) n",
                &[],
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(r) = rows.next_row().await {
            got.push(r.unwrap().get::<Mood>(0).unwrap());
        }
        assert_eq!(
            got,
            [
                Mood::Sad,
                Mood::Ok,
                Mood::Happy,
                Mood::Sad,
                Mood::Ok,
                Mood::Happy
            ]
        );
        drop(rows);
        // A portal.
        let tx = c.begin().await.unwrap();
        let portal = tx
            .bind("SELECT $1::ct_line FROM generate_series(1, 3)", &[&line()])
            .await
            .unwrap();
        let page = tx.query_portal(&portal, 2).await.unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page.row(1).unwrap().get::<Line>(0).unwrap(), line());
        drop(portal);
        tx.rollback().await.unwrap();
        // Binary COPY takes the types from a prepared statement.
        c.batch_execute("CREATE TEMP TABLE ct_copy (m ct_mood, l ct_line)")
            .await
            .unwrap();
        let stmt = c.prepare("SELECT m, l FROM ct_copy").await.unwrap();
        let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        assert!(matches!(types[0].kind(), Kind::Enum(_)), "{types:?}");
        let copy = c
            .copy_in("COPY ct_copy (m, l) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let mut w = ioxide_pg::BinaryCopyInWriter::new(copy, &types).unwrap();
        w.write(&[&Mood::Ok, &line()]).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 1);
        let copy = c
            .copy_out("COPY ct_copy (m, l) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let mut out = ioxide_pg::BinaryCopyOutStream::new(copy, &types).unwrap();
        let row = out.next_row().await.unwrap().unwrap();
        assert_eq!(row.get::<Mood>(0).unwrap(), Mood::Ok);
        assert_eq!(row.get::<Line>(1).unwrap(), line());
        assert!(out.next_row().await.is_none());
    });
}
