//! LISTEN/NOTIFY with a listener that reconnects: prints notifications, and says when some
//! may have been missed (a `Gap` after a lost connection).
//!
//! ```sh
//! DATABASE_URL=postgres://app:secret@127.0.0.1/app cargo run -p ioxide-pg --example listen
//! # elsewhere: psql -c "NOTIFY jobs, 'hello'"
//! ```

use ioxide_pg::{ListenEvent, PgError, PgListener, PgOptions};

fn main() -> Result<(), PgError> {
    let options = PgOptions::from_env()?;
    let target = options.resolve()?;
    ioxide::block_on(async move {
        let mut listener = PgListener::connect_to(&options, target).await?;
        listener.listen("jobs").await?;
        println!("listening on \"jobs\" (NOTIFY jobs, 'payload'); 10 events, then exit");
        for _ in 0..10 {
            match listener.next().await? {
                ListenEvent::Notification(n) => {
                    println!(
                        "{}: {} (from backend {})",
                        n.channel, n.payload, n.process_id
                    )
                }
                ListenEvent::Gap => println!("reconnected: notifications may have been missed"),
                other => println!("{other:?}"),
            }
        }
        listener.close().await;
        Ok(())
    })
}
