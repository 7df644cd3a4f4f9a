//! Connect, run a query, read typed values.
//!
//! ```sh
//! DATABASE_URL=postgres://app:secret@127.0.0.1/app cargo run -p ioxide-pg --example quickstart
//! ```
//! (or the libpq variables `PGHOST`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, …).

use ioxide_pg::{PgConnection, PgError, PgOptions};

fn main() -> Result<(), PgError> {
    // Resolve the host (a blocking DNS lookup) before the reactor runs.
    let options = PgOptions::from_env()?;
    let target = options.resolve()?;
    ioxide::block_on(async move {
        let conn = PgConnection::connect_to(&options, target).await?;

        // The simple protocol: several statements allowed, text results.
        let r = conn.query("SELECT 40 + 2").await?;
        println!("simple: {:?}", r.value());

        // Parameters are bound, never interpolated; the statement is prepared once per
        // connection and cached.
        let rs = conn
            .query_params("SELECT $1::int8 * 2, upper($2)", &[&21i64, &"ring"])
            .await?;
        let row = rs.row(0)?;
        let (n, s): (i64, &str) = (row.get(0)?, row.get(1)?);
        println!("params: {n} {s}");

        // Rows streamed to a callback as they arrive, without collecting them.
        let mut total = 0i64;
        conn.query_rows(
            "SELECT n FROM generate_series(1, $1::int8) n",
            &[&1000i64],
            |row| {
                total += row.get::<i64>(0)?;
                Ok(())
            },
        )
        .await?;
        println!("streamed sum: {total}");

        conn.close().await;
        Ok(())
    })
}
