//! Rows as an async stream with backpressure, and a portal (cursor) read in pages inside a
//! transaction.
//!
//! ```sh
//! DATABASE_URL=postgres://app:secret@127.0.0.1/app cargo run -p ioxide-pg --example streaming
//! ```

use ioxide_pg::{PgConnection, PgError, PgOptions};

fn main() -> Result<(), PgError> {
    let options = PgOptions::from_env()?;
    let target = options.resolve()?;
    ioxide::block_on(async move {
        let conn = PgConnection::connect_to(&options, target).await?;

        // A million rows, one receive buffer at a time: memory stays flat, and the server
        // waits whenever this loop does.
        let mut rows = conn
            .query_stream(
                "SELECT n, md5(n::text) FROM generate_series(1, $1) n",
                &[&1_000_000i32],
            )
            .await?;
        let mut longest = 0;
        while let Some(row) = rows.next_row().await {
            let row = row?;
            longest = longest.max(row.get::<&str>(1)?.len());
        }
        println!("{:?}: longest hash {longest}", rows.command_tag());
        drop(rows);

        // A portal: fetch 1 000 rows at a time, stop whenever you like.
        let tx = conn.begin().await?;
        let portal = tx
            .bind("SELECT n FROM generate_series(1, 10000) n", &[])
            .await?;
        let mut pages = 0;
        loop {
            let page = tx.query_portal(&portal, 1000).await?;
            if page.is_empty() {
                break;
            }
            pages += 1;
            if pages == 3 {
                break; // no need to read the rest
            }
        }
        println!("read {pages} pages");
        drop(portal);
        tx.commit().await?;
        conn.close().await;
        Ok(())
    })
}
