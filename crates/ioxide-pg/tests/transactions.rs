//! Transactions on `PgConnection` and on rented pool connections: the builder's options as
//! the server sees them, commit, rollback, rollback on drop, savepoints, a second `begin`
//! refused, a failed transaction's commit reported; and the batches: `batch_execute`,
//! `execute_many`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{opts, run_within};
use ioxide::Reactor;
use ioxide_pg::{IsolationLevel, PgConnection, PgPool, TxnStatus};

const LIMIT: Duration = Duration::from_secs(30);

async fn table(c: &PgConnection, name: &str) {
    c.query(&format!(
        "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (v int8)"
    ))
    .await
    .unwrap();
}

async fn values(c: &PgConnection, name: &str) -> Vec<i64> {
    let mut out = Vec::new();
    c.query_rows(&format!("SELECT v FROM {name} ORDER BY v"), &[], |row| {
        out.push(row.get::<i64>(0)?);
        Ok(())
    })
    .await
    .unwrap();
    out
}

async fn show(c: &PgConnection, setting: &str) -> String {
    c.query(&format!("SHOW {setting}"))
        .await
        .unwrap()
        .value()
        .unwrap()
        .to_owned()
}

#[test]
fn the_builder_options_reach_the_server() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .read_only(true)
            .deferrable(true)
            .start()
            .await
            .unwrap();
        assert_eq!(show(&tx, "transaction_isolation").await, "serializable");
        assert_eq!(show(&tx, "transaction_read_only").await, "on");
        assert_eq!(show(&tx, "transaction_deferrable").await, "on");
        // Read only means it: a write is refused (25006).
        let e = tx
            .query("CREATE TEMP TABLE nope (x int)")
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("25006"), "{e}");
        tx.rollback().await.unwrap();
        assert_eq!(c.transaction_status(), TxnStatus::Idle);

        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(false)
            .start()
            .await
            .unwrap();
        assert_eq!(show(&tx, "transaction_isolation").await, "repeatable read");
        assert_eq!(show(&tx, "transaction_read_only").await, "off");
        tx.commit().await.unwrap();
        // Defaults: the session's.
        let tx = c.begin().await.unwrap();
        assert_eq!(show(&tx, "transaction_isolation").await, "read committed");
        tx.commit().await.unwrap();
    });
}

#[test]
fn commit_rollback_and_rollback_on_drop() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "txn_basic").await;
        let tx = c.begin().await.unwrap();
        tx.execute("INSERT INTO txn_basic VALUES ($1)", &[&1i64])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let tx = c.begin().await.unwrap();
        tx.execute("INSERT INTO txn_basic VALUES ($1)", &[&2i64])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        {
            let tx = c.begin().await.unwrap();
            tx.execute("INSERT INTO txn_basic VALUES ($1)", &[&3i64])
                .await
                .unwrap();
            // Dropped: rolled back, and the next begin waits for that ROLLBACK.
        }
        let tx = c.begin().await.unwrap();
        assert_eq!(values(&tx, "txn_basic").await, vec![1]);
        tx.commit().await.unwrap();
        assert_eq!(c.transaction_status(), TxnStatus::Idle);
    });
}

#[test]
fn savepoints_nest_and_roll_back_alone() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "txn_sp").await;
        let mut tx = c.begin().await.unwrap();
        tx.execute("INSERT INTO txn_sp VALUES (1)", &[])
            .await
            .unwrap();
        {
            let mut sp = tx.savepoint().await.unwrap();
            sp.execute("INSERT INTO txn_sp VALUES (2)", &[])
                .await
                .unwrap();
            {
                let sp2 = sp.savepoint().await.unwrap();
                sp2.execute("INSERT INTO txn_sp VALUES (3)", &[])
                    .await
                    .unwrap();
                // An error inside the inner savepoint…
                let e = sp2.query("SELECT 1/0").await.unwrap_err();
                assert_eq!(e.sql_state(), Some("22012"));
                // …is undone by rolling back to it; the rest stays usable.
                sp2.rollback().await.unwrap();
            }
            sp.commit().await.unwrap(); // RELEASE: 2 stays with the transaction
        }
        {
            let sp = tx.savepoint().await.unwrap();
            sp.execute("INSERT INTO txn_sp VALUES (4)", &[])
                .await
                .unwrap();
            // Dropped: rolled back to the savepoint.
        }
        tx.execute("INSERT INTO txn_sp VALUES (5)", &[])
            .await
            .unwrap();
        assert_eq!(values(&tx, "txn_sp").await, vec![1, 2, 5]);
        tx.commit().await.unwrap();
        assert_eq!(values(&c, "txn_sp").await, vec![1, 2, 5]);
    });
}

#[test]
fn a_second_begin_is_refused_and_a_failed_commit_says_so() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        c.query("BEGIN").await.unwrap();
        let e = c.begin().await.unwrap_err();
        assert!(
            e.is_misuse() && e.to_string().contains("already inside a transaction"),
            "{e}"
        );
        assert!(!e.was_sent(), "nothing was sent");
        c.query("ROLLBACK").await.unwrap();

        // An error inside: COMMIT is answered with ROLLBACK, and commit says so.
        table(&c, "txn_fail").await;
        let tx = c.begin().await.unwrap();
        tx.execute("INSERT INTO txn_fail VALUES (1)", &[])
            .await
            .unwrap();
        assert!(tx.query("SELECT 1/0").await.is_err());
        let e = tx.commit().await.unwrap_err();
        assert!(
            e.is_misuse() && e.to_string().contains("rolled it back"),
            "{e}"
        );
        assert!(values(&c, "txn_fail").await.is_empty());
        assert_eq!(c.transaction_status(), TxnStatus::Idle);
    });
}

#[test]
fn rented_connections_take_transactions_and_the_shared_path_does_not() {
    run_within(LIMIT, async {
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(2)).unwrap();
        {
            let conn = pool.rent().await.unwrap();
            table(&conn, "txn_pool").await;
            let mut tx = conn
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await
                .unwrap();
            tx.execute("INSERT INTO txn_pool VALUES (7)", &[])
                .await
                .unwrap();
            let sp = tx.savepoint().await.unwrap();
            sp.execute("INSERT INTO txn_pool VALUES (8)", &[])
                .await
                .unwrap();
            drop(sp);
            tx.commit().await.unwrap();
        }
        let conn = pool.rent().await.unwrap();
        assert_eq!(values(&conn, "txn_pool").await, vec![7]);
        drop(conn);
        pool.close().await;
    });
}

#[test]
fn batch_execute_returns_every_tag_and_fails_as_one_implicit_transaction() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        let tags = c
            .batch_execute(
                "DROP TABLE IF EXISTS batch_t; CREATE TABLE batch_t (v int8 PRIMARY KEY); \
                 INSERT INTO batch_t VALUES (1), (2); SELECT * FROM batch_t; \
                 UPDATE batch_t SET v = v + 10 WHERE v = 2",
            )
            .await
            .unwrap();
        assert_eq!(
            tags,
            [
                "DROP TABLE",
                "CREATE TABLE",
                "INSERT 0 2",
                "SELECT 2",
                "UPDATE 1"
            ]
        );
        assert!(c.batch_execute("").await.unwrap().is_empty());
        // The third statement fails: the first two are undone with it (one implicit
        // transaction), and the error says which statement it was.
        let e = c
            .batch_execute(
                "INSERT INTO batch_t VALUES (3); INSERT INTO batch_t VALUES (4); \
                 INSERT INTO batch_t VALUES (1); INSERT INTO batch_t VALUES (5)",
            )
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("23505"), "{e}");
        assert!(e.to_string().contains("statement 2 of the batch"), "{e}");
        assert_eq!(values(&c, "batch_t").await, vec![1, 12]);
        assert_eq!(c.transaction_status(), TxnStatus::Idle);
        // Through the pool's shared path too.
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        let tags = pool
            .batch_execute("INSERT INTO batch_t VALUES (6); DELETE FROM batch_t WHERE v = 6")
            .await
            .unwrap();
        assert_eq!(tags, ["INSERT 0 1", "DELETE 1"]);
        pool.close().await;
    });
}

#[test]
fn execute_many_runs_a_pipeline_batch_all_or_nothing() {
    run_within(LIMIT, async {
        let c = PgConnection::connect(&opts()).await.unwrap();
        table(&c, "many_t").await;
        c.query("ALTER TABLE many_t ADD PRIMARY KEY (v)")
            .await
            .unwrap();
        let ids: Vec<i64> = (0..2000).collect();
        let params: Vec<[&(dyn ioxide_pg::types::ToSql + Sync); 1]> =
            ids.iter().map(|v| [v as _]).collect();
        let batch: Vec<ioxide_pg::Params<'_>> = params.iter().map(|p| &p[..]).collect();
        let n = c
            .execute_many("INSERT INTO many_t VALUES ($1)", &batch)
            .await
            .unwrap();
        assert_eq!(n, 2000);
        assert_eq!(values(&c, "many_t").await.len(), 2000);
        assert_eq!(
            c.execute_many("INSERT INTO many_t VALUES ($1)", &[])
                .await
                .unwrap(),
            0
        );

        // Row 3 collides: none of the batch stays, and the error names the row.
        let more: Vec<i64> = vec![5000, 5001, 5002, 7, 5003];
        let params: Vec<[&(dyn ioxide_pg::types::ToSql + Sync); 1]> =
            more.iter().map(|v| [v as _]).collect();
        let batch: Vec<ioxide_pg::Params<'_>> = params.iter().map(|p| &p[..]).collect();
        let e = c
            .execute_many("INSERT INTO many_t VALUES ($1)", &batch)
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("23505"), "{e}");
        assert!(e.to_string().contains("row 3 failed"), "{e}");
        assert_eq!(
            values(&c, "many_t").await.len(),
            2000,
            "nothing of the batch stays"
        );
        assert_eq!(c.transaction_status(), TxnStatus::Idle);

        // A value that cannot be encoded: nothing is sent, the row is named.
        let bad: Vec<[&(dyn ioxide_pg::types::ToSql + Sync); 1]> =
            vec![[&1_000_000i64], [&"not a number"]];
        let batch: Vec<ioxide_pg::Params<'_>> = bad.iter().map(|p| &p[..]).collect();
        let e = c
            .execute_many("INSERT INTO many_t VALUES ($1)", &batch)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        assert!(!values(&c, "many_t").await.contains(&1_000_000));

        // UPDATE counts add up; the pool runs batches too.
        let pool = PgPool::start(&Reactor::current(), opts().pool_size(1)).unwrap();
        let ks: Vec<i64> = vec![1, 2, 3];
        let params: Vec<[&(dyn ioxide_pg::types::ToSql + Sync); 1]> =
            ks.iter().map(|v| [v as _]).collect();
        let batch: Vec<ioxide_pg::Params<'_>> = params.iter().map(|p| &p[..]).collect();
        let n = pool
            .execute_many("UPDATE many_t SET v = v + 100000 WHERE v <= $1", &batch)
            .await
            .unwrap();
        // v <= 1 → 2 rows (0, 1); then v <= 2 → 1 row (2); then v <= 3 → 1 row (3).
        assert_eq!(n, 4);
        pool.close().await;
    });
}
