//! COPY in both directions: CSV in, binary in with typed rows, binary out read back typed,
//! and text out as a stream of chunks.
//!
//! ```sh
//! DATABASE_URL=postgres://app:secret@127.0.0.1/app cargo run -p ioxide-pg --example copy
//! ```

use ioxide_pg::types::Type;
use ioxide_pg::{BinaryCopyInWriter, BinaryCopyOutStream, PgConnection, PgError, PgOptions};
use std::time::SystemTime;

fn main() -> Result<(), PgError> {
    let options = PgOptions::from_env()?;
    let target = options.resolve()?;
    ioxide::block_on(async move {
        let conn = PgConnection::connect_to(&options, target).await?;
        conn.batch_execute(
            "CREATE TEMP TABLE events (id int8, name text, score float8, at timestamptz, ok bool)",
        )
        .await?;

        // CSV: bytes as they are; rows may span sends.
        let mut copy = conn
            .copy_in("COPY events (id, name, ok) FROM STDIN (FORMAT csv)")
            .await?;
        copy.send(b"1,first,true\n2,sec").await?;
        copy.send(b"ond,false\n").await?;
        println!("csv: {} rows", copy.finish().await?);

        // Binary: typed rows, encoded with ToSql, sent in 64 KB chunks.
        let types = [
            Type::INT8,
            Type::TEXT,
            Type::FLOAT8,
            Type::TIMESTAMPTZ,
            Type::BOOL,
        ];
        let copy = conn
            .copy_in("COPY events FROM STDIN (FORMAT binary)")
            .await?;
        let mut writer = BinaryCopyInWriter::new(copy, &types)?;
        let now = SystemTime::now();
        for i in 3..100_003i64 {
            writer
                .write(&[
                    &i,
                    &format!("event {i}"),
                    &(i as f64 * 0.5),
                    &now,
                    &(i % 2 == 0),
                ])
                .await?;
        }
        println!("binary: {} rows", writer.finish().await?);

        // Binary out, read back typed.
        let copy = conn
            .copy_out("COPY (SELECT id, name, score, at, ok FROM events WHERE id > 99990) TO STDOUT (FORMAT binary)")
            .await?;
        let mut rows = BinaryCopyOutStream::new(copy, &types)?;
        while let Some(row) = rows.next_row().await {
            let row = row?;
            let (id, name): (i64, &str) = (row.get(0)?, row.get(1)?);
            println!("{id} {name} {}", row.get::<f64>(2)?);
        }
        drop(rows);

        // Text out as chunks (one receive each): count the lines.
        let mut copy = conn.copy_out("COPY events TO STDOUT").await?;
        let mut lines = 0;
        while let Some(chunk) = copy.next_chunk().await {
            lines += chunk?.iter().filter(|&&b| b == b'\n').count();
        }
        println!(
            "text out: {lines} lines, server says {:?} rows",
            copy.rows()
        );
        drop(copy);
        conn.close().await;
        Ok(())
    })
}
