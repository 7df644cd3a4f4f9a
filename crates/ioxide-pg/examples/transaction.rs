//! A transaction with options, a savepoint, commit; and one rolled back by dropping it.
//!
//! ```sh
//! DATABASE_URL=postgres://app:secret@127.0.0.1/app cargo run -p ioxide-pg --example transaction
//! ```

use ioxide_pg::{IsolationLevel, PgConnection, PgError, PgOptions};

fn main() -> Result<(), PgError> {
    let options = PgOptions::from_env()?;
    let target = options.resolve()?;
    ioxide::block_on(async move {
        let conn = PgConnection::connect_to(&options, target).await?;
        conn.query("CREATE TEMP TABLE accounts (id int8 PRIMARY KEY, balance int8)")
            .await?;

        let mut tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await?;
        tx.execute("INSERT INTO accounts VALUES (1, 100), (2, 0)", &[])
            .await?;
        {
            // A savepoint: its work can be undone alone.
            let sp = tx.savepoint().await?;
            sp.execute(
                "UPDATE accounts SET balance = balance - 500 WHERE id = 1",
                &[],
            )
            .await?;
            sp.rollback().await?; // overdrawn: undo just this
        }
        tx.execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = 2",
            &[&50i64],
        )
        .await?;
        tx.commit().await?;

        {
            let tx = conn.begin().await?;
            tx.execute("DELETE FROM accounts", &[]).await?;
            // Dropped without commit: rolled back.
        }
        let rs = conn
            .query_params("SELECT sum(balance)::int8 FROM accounts", &[])
            .await?;
        println!("total balance: {}", rs.scalar::<i64>()?);
        conn.close().await;
        Ok(())
    })
}
