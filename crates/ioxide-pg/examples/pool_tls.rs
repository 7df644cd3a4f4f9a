//! A pool per reactor over TLS, with an after-connect hook, on two reactor threads.
//!
//! ```sh
//! PGHOST=db.example.com PGUSER=app PGPASSWORD=… PGDATABASE=app \
//! PGSSLMODE=verify-full PGSSLROOTCERT=/path/to/ca.pem \
//!     cargo run -p ioxide-pg --example pool_tls
//! ```

use ioxide::Reactor;
use ioxide_pg::{PgError, PgOptions, PgPool, SslMode};

fn main() -> Result<(), PgError> {
    let options = PgOptions::from_env()?.pool_size(4);
    if options.get_ssl_mode() == SslMode::Disable {
        eprintln!("note: PGSSLMODE=disable, this runs in plaintext");
    }
    let target = options.resolve()?;
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (options, target) = (options.clone(), target.clone());
            std::thread::spawn(move || {
                ioxide::block_on(async move {
                    let pool = PgPool::builder(options)
                        .target(target)
                        // Every new connection gets this before it serves anyone.
                        .after_connect(|conn| {
                            Box::pin(async move {
                                conn.query("SET statement_timeout = '5s'").await?;
                                Ok(())
                            })
                        })
                        .start(&Reactor::current())?;
                    let r = pool
                        .query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                        .await?;
                    println!("reactor {i}: TLS in use: {:?}", r.value());
                    pool.close().await;
                    Ok::<(), PgError>(())
                })
            })
        })
        .collect();
    for t in threads {
        match t.join() {
            Ok(r) => r?,
            Err(_) => eprintln!("a reactor thread panicked"),
        }
    }
    Ok(())
}
