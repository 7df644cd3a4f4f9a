//! Pipelines of mixed statements (`Pipeline`, `run_pipeline`) and scripts with their rows
//! (`batch_query`), against the shared throwaway cluster: results per entry, all or nothing
//! under one Sync, the failing entry named, aborted transactions, stale statements prepared
//! again, encode failures that send nothing, 10 000 entries, the pool.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{opts, run_within};
use ioxide::Reactor;
use ioxide_pg::types::ToSql;
use ioxide_pg::{PgConnection, PgPool, Pipeline, TxnStatus};

const LIMIT: Duration = Duration::from_secs(60);

async fn table(c: &PgConnection, name: &str) {
    c.query(&format!(
        "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int8 PRIMARY KEY, name text)"
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

#[test]
fn mixed_entries_return_their_tags_counts_and_rows() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_mixed").await;
        let by_id = c
            .prepare("SELECT name FROM pl_mixed WHERE id = $1")
            .await
            .unwrap();
        let (one, two, three) = (1i64, 2i64, 3i64);
        let (a, b) = ("ann", "bob");
        let insert = String::from("INSERT INTO pl_mixed VALUES ($1, $2)");
        let mut p = Pipeline::new();
        p.execute("DELETE FROM pl_mixed", &[])
            .execute(&insert, &[&one, &a])
            .execute(&insert, &[&two, &b])
            .execute(&insert, &[&three, &b])
            .execute(
                "UPDATE pl_mixed SET name = upper(name) WHERE name = $1",
                &[&b],
            )
            .query("SELECT id, name FROM pl_mixed ORDER BY id", &[])
            .execute("SELECT id FROM pl_mixed", &[])
            .query(&by_id, &[&two])
            .query("SELECT 1 WHERE false", &[]);
        assert_eq!(p.len(), 9);
        // Twice: first with every statement prepared in the run, then all from the cache.
        for _ in 0..2 {
            let r = c.run_pipeline(&p).await.unwrap();
            let tags: Vec<&str> = r.iter().map(|s| s.command_tag()).collect();
            assert!(tags[0].starts_with("DELETE "), "{tags:?}");
            assert_eq!(
                tags[1..],
                [
                    "INSERT 0 1",
                    "INSERT 0 1",
                    "INSERT 0 1",
                    "UPDATE 2",
                    "SELECT 3",
                    "SELECT 3",
                    "SELECT 1",
                    "SELECT 0"
                ]
            );
            assert_eq!(r[4].rows_affected(), 2);
            assert_eq!(r[5].len(), 3);
            let rows = r[5].clone().into_rows();
            let got: Vec<(i64, String)> = rows
                .iter()
                .map(|row| (row.get::<i64>("id").unwrap(), row.get::<String>(1).unwrap()))
                .collect();
            assert_eq!(
                got,
                [(1, "ann".into()), (2, "BOB".into()), (3, "BOB".into())]
            );
            // An execute entry keeps its count, not its rows.
            assert_eq!((r[6].rows_affected(), r[6].len()), (3, 0));
            assert_eq!(r[7].scalar::<&str>().unwrap(), "BOB");
            assert!(r[8].is_empty());
            assert_eq!(c.transaction_status(), TxnStatus::Idle);
        }
        // The second run deleted the first run's three rows.
        assert_eq!(
            c.run_pipeline(&p).await.unwrap()[0].command_tag(),
            "DELETE 3"
        );
        assert_eq!(count(&c, "pl_mixed").await, 3);
    });
}

#[test]
fn a_failing_entry_is_named_and_nothing_of_the_pipeline_stays() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_fail").await;
        c.query("INSERT INTO pl_fail VALUES (7, 'x')")
            .await
            .unwrap();
        let ids = [100i64, 101, 7, 102];
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_fail VALUES ($1, 'new')", &[&ids[0]])
            .execute("UPDATE pl_fail SET name = 'changed'", &[])
            .execute("INSERT INTO pl_fail VALUES ($1, 'new')", &[&ids[2]])
            .execute("INSERT INTO pl_fail VALUES ($1, 'new')", &[&ids[3]]);
        let e = c.run_pipeline(&p).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("23505"), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("pipeline entry 2"), "{msg}");
        assert!(msg.contains("2 ran before it"), "{msg}");
        assert!(msg.contains("none of its work stays"), "{msg}");
        assert_eq!(c.transaction_status(), TxnStatus::Idle);
        assert_eq!(
            count(&c, "pl_fail").await,
            1,
            "the inserts were rolled back"
        );
        let name: String = c
            .query_one("SELECT name FROM pl_fail", &[])
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(name, "x", "the update was rolled back");

        // A statement that does not prepare: named, and no entry ran.
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_fail VALUES (200, 'a')", &[])
            .execute("INSERT INTO pl_fail VALUE (201, 'b')", &[]);
        let e = c.run_pipeline(&p).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("42601"), "{e}");
        assert!(e.to_string().contains("pipeline entry 1"), "{e}");
        assert!(e.to_string().contains("could not be prepared"), "{e}");
        assert_eq!(count(&c, "pl_fail").await, 1);
    });
}

#[test]
fn inside_a_transaction_a_failing_entry_aborts_it() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_txn").await;
        let tx = c.begin().await.unwrap();
        tx.execute("INSERT INTO pl_txn VALUES (1, 'before')", &[])
            .await
            .unwrap();
        let zero = 0i64;
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_txn VALUES (2, 'in')", &[])
            .query("SELECT 1 / $1::int8", &[&zero]);
        let e = tx.run_pipeline(&p).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("22012"), "{e}");
        assert!(e.to_string().contains("pipeline entry 1"), "{e}");
        assert!(
            e.to_string().contains("transaction it ran in is aborted"),
            "{e}"
        );
        assert_eq!(c.transaction_status(), TxnStatus::Failed);
        let e = tx.query("SELECT 1").await.unwrap_err();
        assert_eq!(e.sql_state(), Some("25P02"), "{e}");
        tx.rollback().await.unwrap();
        assert_eq!(count(&c, "pl_txn").await, 0);

        // Committed inside a transaction, a pipeline's work stays with it.
        let tx = c.begin().await.unwrap();
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_txn VALUES (3, 'in')", &[]);
        assert_eq!(tx.run_pipeline(&p).await.unwrap()[0].rows_affected(), 1);
        tx.commit().await.unwrap();
        assert_eq!(count(&c, "pl_txn").await, 1);
    });
}

#[test]
fn empty_pipelines_scripts_and_statements_return_nothing() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let p = Pipeline::new();
        assert!(p.is_empty());
        assert!(c.run_pipeline(&p).await.unwrap().is_empty());
        assert_eq!(c.in_flight(), 0);
        // An empty statement is an entry too: no tag, no rows.
        let mut p = Pipeline::new();
        p.execute("", &[])
            .query("SELECT 5::int8", &[])
            .query("", &[]);
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].command_tag(), r[0].len()), ("", 0));
        assert_eq!(r[1].scalar::<i64>().unwrap(), 5);
        assert_eq!((r[2].command_tag(), r[2].len()), ("", 0));
        p.clear();
        assert!(p.is_empty() && c.run_pipeline(&p).await.unwrap().is_empty());
        assert!(c.batch_query("").await.unwrap().is_empty());
        assert!(c.batch_query(" ; ").await.unwrap().is_empty());
    });
}

#[test]
fn stale_statements_are_prepared_again() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_stale").await;
        let id = 1i64;
        let mut p = Pipeline::new();
        p.execute(
            "INSERT INTO pl_stale VALUES ($1, 'a') ON CONFLICT DO NOTHING",
            &[&id],
        )
        .query("SELECT * FROM pl_stale", &[]);
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!(r[1].columns().len(), 2);
        assert_eq!(c.cached_statements(), 2);

        // The server forgot every prepared statement (26000).
        c.query("DEALLOCATE ALL").await.unwrap();
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!((r[0].rows_affected(), r[1].len()), (0, 1));

        // The cached plan's result type changed (0A000): prepared again, the new column seen.
        c.query("ALTER TABLE pl_stale ADD COLUMN extra int DEFAULT 5")
            .await
            .unwrap();
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!(r[1].columns().len(), 3);
        assert_eq!(r[1].row(0).unwrap().get::<i32>("extra").unwrap(), 5);

        // Inside a transaction a stale statement aborts it: evicted, error returned.
        c.query("DEALLOCATE ALL").await.unwrap();
        let tx = c.begin().await.unwrap();
        let e = tx.run_pipeline(&p).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("26000"), "{e}");
        tx.rollback().await.unwrap();
        // ... and the next run, outside, prepares it again.
        assert_eq!(c.run_pipeline(&p).await.unwrap()[1].len(), 1);
    });
}

#[test]
fn an_unencodable_value_names_its_entry_and_sends_nothing() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_encode").await;
        let ok = 1i64;
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_encode VALUES ($1, 'a')", &[&ok])
            .execute("INSERT INTO pl_encode VALUES ($1, 'b')", &[&"not a number"]);
        let e = c.run_pipeline(&p).await.unwrap_err();
        assert!(!e.was_sent(), "{e}");
        assert!(e.to_string().contains("pipeline entry 1"), "{e}");
        assert!(
            e.to_string().contains("no entry of the pipeline was sent"),
            "{e}"
        );
        // Too few parameters: the same.
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_encode VALUES ($1, 'a')", &[&ok])
            .execute("INSERT INTO pl_encode VALUES ($1, $2)", &[&ok]);
        let e = c.run_pipeline(&p).await.unwrap_err();
        assert!(
            !e.was_sent() && e.to_string().contains("pipeline entry 1"),
            "{e}"
        );
        assert_eq!(c.query("SELECT 42").await.unwrap().value(), Some("42"));
        assert_eq!(count(&c, "pl_encode").await, 0);
        assert!(!c.is_broken());
    });
}

#[test]
fn a_pipeline_of_ten_thousand_entries_completes() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_big").await;
        let ids: Vec<i64> = (0..10_000).collect();
        let mut p = Pipeline::with_capacity(ids.len());
        for id in &ids {
            if id % 1000 == 999 {
                p.query("SELECT count(*) FROM pl_big", &[]);
            } else {
                p.execute(
                    "INSERT INTO pl_big VALUES ($1, 'x')",
                    &[id as &(dyn ToSql + Sync)],
                );
            }
        }
        let started = Instant::now();
        let r = c.run_pipeline(&p).await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.len(), 10_000);
        // Each count sees the inserts before it in the same implicit transaction.
        assert_eq!(r[999].scalar::<i64>().unwrap(), 999);
        assert_eq!(r[9999].scalar::<i64>().unwrap(), 9990);
        let inserted: u64 = r
            .iter()
            .filter(|s| s.command_tag().starts_with("INSERT"))
            .map(|s| s.rows_affected())
            .sum();
        assert_eq!(inserted, 9990);
        assert_eq!(count(&c, "pl_big").await, 9990);
        assert!(took < Duration::from_secs(30), "took {took:?}");
        eprintln!("10 000 entries in {took:?}");
    });
}

#[test]
fn a_cache_smaller_than_the_pipeline_or_none_at_all() {
    run_within(LIMIT, async {
        for capacity in [0, 1] {
            let c = PgConnection::connect(&opts().statement_cache_capacity(capacity))
                .await
                .unwrap();
            let mut p = Pipeline::new();
            let (x, y, z) = (1i64, 2i64, 3i64);
            p.query("SELECT $1::int8 + 10", &[&x])
                .query("SELECT $1::int8 + 20", &[&y])
                .query("SELECT $1::int8 + 30", &[&z])
                .query("SELECT $1::int8 + 10", &[&z]);
            for _ in 0..3 {
                let r = c.run_pipeline(&p).await.unwrap();
                let got: Vec<i64> = r.iter().map(|s| s.scalar::<i64>().unwrap()).collect();
                assert_eq!(got, [11, 22, 33, 13], "capacity {capacity}");
            }
            assert_eq!(c.cached_statements(), capacity);
            // Every statement the cache let go was closed on the server.
            let open = c
                .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
                .await
                .unwrap()
                .get::<i64>(0)
                .unwrap();
            assert_eq!(open as usize, c.cached_statements(), "capacity {capacity}");
        }
    });
}

#[test]
fn batch_query_returns_every_statements_tag_and_text_rows() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let r = c
            .batch_query(
                "DROP TABLE IF EXISTS pl_script; CREATE TABLE pl_script (v int, t text); \
                 INSERT INTO pl_script VALUES (1, 'a'), (2, NULL); \
                 SELECT v, t FROM pl_script ORDER BY v; UPDATE pl_script SET v = v + 1",
            )
            .await
            .unwrap();
        let tags: Vec<&str> = r.iter().map(|s| s.command_tag()).collect();
        assert_eq!(
            tags,
            [
                "DROP TABLE",
                "CREATE TABLE",
                "INSERT 0 2",
                "SELECT 2",
                "UPDATE 2"
            ]
        );
        assert_eq!(r[3].len(), 2);
        let rows = r[3].clone().into_rows();
        assert_eq!(rows[0].get_text("v").unwrap(), Some("1"));
        assert_eq!(rows[0].get_text(1).unwrap(), Some("a"));
        assert_eq!(rows[1].get_text("t").unwrap(), None);
        assert!(
            r[3].row(0).unwrap().get::<i32>(0).is_err(),
            "text, not binary"
        );
        assert_eq!(r[4].rows_affected(), 2);
        assert!(r[4].is_empty());

        let e = c
            .batch_query("INSERT INTO pl_script VALUES (3, 'c'); SELECT 1/0; SELECT 1")
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("22012"), "{e}");
        assert!(
            e.to_string().contains("statement 1 of the batch failed"),
            "{e}"
        );
        let n = c
            .batch_query("SELECT count(*) FROM pl_script")
            .await
            .unwrap();
        assert_eq!(n[0].row(0).unwrap().get_text(0).unwrap(), Some("2"));
    });
}

#[test]
fn pipelines_and_scripts_through_the_pool() {
    run_within(LIMIT, async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(2)).unwrap();
        {
            let rented = pool.rent().await.unwrap();
            table(&rented, "pl_pool").await;
            let ids = [1i64, 2, 3];
            let mut p = Pipeline::new();
            for id in &ids {
                p.execute("INSERT INTO pl_pool VALUES ($1, 'r')", &[id]);
            }
            p.query("SELECT count(*) FROM pl_pool", &[]);
            let r = rented.run_pipeline(&p).await.unwrap();
            assert_eq!(r[3].scalar::<i64>().unwrap(), 3);

            // In a rented connection's transaction, then rolled back.
            let tx = rented.begin().await.unwrap();
            let four = 4i64;
            let mut p = Pipeline::new();
            p.execute("INSERT INTO pl_pool VALUES ($1, 't')", &[&four]);
            tx.run_pipeline(&p).await.unwrap();
            tx.rollback().await.unwrap();
        }
        // On the shared path.
        let id = 10i64;
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_pool VALUES ($1, 's')", &[&id])
            .query("SELECT id FROM pl_pool ORDER BY id", &[]);
        let r = pool.run_pipeline(&p).await.unwrap();
        let ids: Vec<i64> = r[1].iter().map(|row| row.get(0).unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 10]);
        let e = pool.run_pipeline(&p).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("23505"), "{e}");
        assert!(e.to_string().contains("pipeline entry 0"), "{e}");
        let s = pool
            .batch_query("SELECT count(*) FROM pl_pool; SELECT 'done'")
            .await
            .unwrap();
        assert_eq!(s[0].row(0).unwrap().get_text(0).unwrap(), Some("4"));
        assert_eq!(s[1].row(0).unwrap().get_text(0).unwrap(), Some("done"));
        pool.close().await;
    });
}

#[test]
fn a_pipeline_given_up_on_leaves_the_connection_usable_and_all_or_nothing() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_drop").await;
        let ids: Vec<i64> = (0..5000).collect();
        for round in 0..3u32 {
            let mut p = Pipeline::new();
            // Statements this connection has not cached: the caller gives up while they
            // are prepared (round 0) or while the pipeline's reply arrives (later rounds).
            let sql: Vec<String> = (0..3)
                .map(|k| {
                    format!(
                        "INSERT INTO pl_drop VALUES ($1::int8 + {k} * 100000 + {round} * 1000000, 'd')"
                    )
                })
                .collect();
            for (i, id) in ids.iter().enumerate() {
                p.execute(&sql[i % 3], &[id as &(dyn ToSql + Sync)]);
            }
            let wait = Duration::from_micros(if round == 0 { 1 } else { 2000 });
            let r = ioxide::time::timeout(wait, c.run_pipeline(&p)).await;
            // Whatever happened, the connection answers the next command in order.
            assert_eq!(c.query("SELECT 42").await.unwrap().value(), Some("42"));
            let n = count(&c, "pl_drop").await;
            let lo = i64::from(round) * 1_000_000;
            let this_round = c
                .query_one(
                    "SELECT count(*) FROM pl_drop WHERE id >= $1 AND id < $1 + 1000000",
                    &[&lo],
                )
                .await
                .unwrap()
                .get::<i64>(0)
                .unwrap();
            assert!(
                this_round == 0 || this_round == 5000,
                "round {round}: {this_round} of 5000"
            );
            let finished = r.map(|r| r.map(|sets| sets.len()));
            eprintln!("round {round}: {finished:?}, {this_round} rows stayed, {n} in all");
            if let Ok(done) = finished {
                assert_eq!(done.unwrap(), 5000);
                assert_eq!(this_round, 5000);
            }
        }
        assert!(!c.is_broken());
        assert_eq!(c.in_flight(), 0);
        // Every statement is prepared once and either cached or closed.
        let open = c
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .unwrap()
            .get::<i64>(0)
            .unwrap();
        assert_eq!(open as usize, c.cached_statements());
    });
}

#[test]
fn concurrent_pipelines_on_one_connection_each_get_their_own_results() {
    run_within(LIMIT, async {
        let c = std::rc::Rc::new(PgConnection::connect(&opts()).await.unwrap());
        table(&c, "pl_conc").await;
        let mut tasks = Vec::new();
        for t in 0..16i64 {
            let c = c.clone();
            tasks.push(ioxide::spawn(async move {
                let mut sums = Vec::new();
                for round in 0..10i64 {
                    let id = t * 1000 + round;
                    let (x, bad) = (t + round, i64::from(t % 5 == 0 && round == 3));
                    let mut p = Pipeline::new();
                    // The same statements in every task: first uses race on the cache.
                    p.execute("INSERT INTO pl_conc VALUES ($1, 'c')", &[&id])
                        .query("SELECT $1::int8 * 2", &[&x])
                        .query("SELECT 10 / (1 - $1::int8)", &[&bad])
                        .query("SELECT count(*) FROM pl_conc WHERE id = $1", &[&id]);
                    match c.run_pipeline(&p).await {
                        Ok(r) => {
                            assert_eq!(r[1].scalar::<i64>().unwrap(), x * 2);
                            assert_eq!(r[3].scalar::<i64>().unwrap(), 1);
                            sums.push(id);
                        }
                        Err(e) => {
                            assert_eq!(bad, 1, "{e}");
                            assert_eq!(e.sql_state(), Some("22012"));
                            assert!(e.to_string().contains("pipeline entry 2"), "{e}");
                        }
                    }
                    // A plain query pipelined between the batches.
                    let one = c.query_params("SELECT $1::int8", &[&id]).await.unwrap();
                    assert_eq!(one.scalar::<i64>().unwrap(), id);
                }
                sums
            }));
        }
        let mut expected = Vec::new();
        for t in tasks {
            expected.extend(t.await);
        }
        expected.sort_unstable();
        let mut stayed = Vec::new();
        c.query_rows("SELECT id FROM pl_conc ORDER BY id", &[], |row| {
            stayed.push(row.get::<i64>(0)?);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(stayed.len(), 160 - 4, "four pipelines failed");
        assert_eq!(stayed, expected);
        assert_eq!(c.in_flight(), 0);
        // Statements prepared twice by racing first uses were closed: none left over.
        let open = c
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .unwrap()
            .get::<i64>(0)
            .unwrap();
        assert_eq!(open as usize, c.cached_statements());
    });
}

#[test]
fn a_commit_inside_the_pipeline_keeps_what_it_committed() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "pl_commit").await;
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_commit VALUES (1, 'kept')", &[])
            .execute("COMMIT", &[])
            .execute("INSERT INTO pl_commit VALUES (2, 'undone')", &[])
            .execute("INSERT INTO pl_commit VALUES (1, 'dup')", &[]);
        let e = c.run_pipeline(&p).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("23505"), "{e}");
        assert!(e.to_string().contains("pipeline entry 3"), "{e}");
        assert!(e.to_string().contains("entry 1 committed"), "{e}");
        let kept = c
            .query_one("SELECT string_agg(name, ',') FROM pl_commit", &[])
            .await
            .unwrap()
            .get::<String>(0)
            .unwrap();
        assert_eq!(kept, "kept");
        assert_eq!(c.transaction_status(), TxnStatus::Idle);

        // A stale statement after a COMMIT entry is not run again (that would repeat the
        // committed part): evicted, error returned; the next run prepares it again.
        let mut p = Pipeline::new();
        p.execute("INSERT INTO pl_commit VALUES (10, 'once')", &[])
            .execute("COMMIT", &[])
            .query("SELECT * FROM pl_commit ORDER BY id", &[]);
        c.run_pipeline(&p).await.unwrap();
        c.query("DELETE FROM pl_commit WHERE id = 10; ALTER TABLE pl_commit ADD COLUMN x int")
            .await
            .unwrap();
        let e = c.run_pipeline(&p).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("0A000"), "{e}");
        assert!(e.to_string().contains("pipeline entry 2"), "{e}");
        let n = count(&c, "pl_commit").await;
        assert_eq!(n, 2, "entry 0 ran once, committed");
        c.query("DELETE FROM pl_commit WHERE id = 10")
            .await
            .unwrap();
        let r = c.run_pipeline(&p).await.unwrap();
        assert_eq!(r[2].columns().len(), 3);
    });
}
