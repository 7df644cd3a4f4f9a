//! Prepared statements, rows that outlive their result, `query_one`, and a pipeline batch.
//!
//! ```sh
//! DATABASE_URL=postgres://app:secret@127.0.0.1/app cargo run -p ioxide-pg --example prepared
//! ```

use ioxide_pg::types::{ToSql, Type};
use ioxide_pg::{OwnedRow, Params, PgConnection, PgError, PgOptions};

async fn names(conn: &PgConnection) -> Result<Vec<OwnedRow>, PgError> {
    // Owned rows can be returned and kept after their result set is gone.
    Ok(conn
        .query_params("SELECT id, name FROM people ORDER BY id", &[])
        .await?
        .into_rows())
}

fn main() -> Result<(), PgError> {
    let options = PgOptions::from_env()?;
    let target = options.resolve()?;
    ioxide::block_on(async move {
        let conn = PgConnection::connect_to(&options, target).await?;
        conn.batch_execute("CREATE TEMP TABLE people (id int8 PRIMARY KEY, name text)")
            .await?;

        // One statement, many parameter rows, one round trip, all or nothing.
        let people: Vec<(i64, String)> = (1..=5).map(|i| (i, format!("person {i}"))).collect();
        let params: Vec<[&(dyn ToSql + Sync); 2]> = people
            .iter()
            .map(|(id, name)| [id as _, name as _])
            .collect();
        let batch: Vec<Params<'_>> = params.iter().map(|p| &p[..]).collect();
        let n = conn
            .execute_many("INSERT INTO people VALUES ($1, $2)", &batch)
            .await?;
        println!("inserted {n}");

        // Prepared once per connection; the Statement knows its types.
        let by_id = conn
            .prepare_typed("SELECT name FROM people WHERE id = $1", &[Type::INT8])
            .await?;
        let row = conn.query_one(&by_id, &[&3i64]).await?;
        println!("id 3 is {}", row.get::<&str>("name")?);
        match conn.query_opt(&by_id, &[&99i64]).await? {
            Some(row) => println!("id 99 is {}", row.get::<&str>(0)?),
            None => println!("no id 99"),
        }

        for row in names(&conn).await? {
            let (id, name): (i64, String) = row.get_tuple()?;
            println!("{id}: {name}");
        }
        conn.close().await;
        Ok(())
    })
}
