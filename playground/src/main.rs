//! The playground: Postgres over the ring, behind HTTP/1.1 on the reactors.
//!
//! ```sh
//! cargo run --release -p playground     # :8080, a throwaway PostgreSQL unless PGHOST/DATABASE_URL
//! curl -s localhost:8080/               # 42
//! ```
//!
//! Map: `config` (knobs) · `database` (which server; the throwaway cluster) · `app` (per-reactor
//! state, started in `on_start`) · `conn` (one HTTP connection) · `http` (framing) · `routes`
//! (the contract's routes and error statuses) · `stats` (`/stats`) · `shutdown` (the orderly
//! stop).

mod app;
mod config;
mod conn;
mod database;
mod http;
mod routes;
mod shutdown;
mod stats;

use config::Config;
use database::{Database, DbError};
use ioxide::signal::{self, SIGINT, SIGTERM};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the reactors get to stop once every pool is closed (connections are gone by
/// then; this only bounds the ring teardown).
const SERVER_STOP_GRACE: Duration = Duration::from_millis(500);

/// The signals that stop the playground.
const STOP_SIGNALS: [i32; 2] = [SIGINT, SIGTERM];

fn main() -> ExitCode {
    // First, before any thread exists (every thread inherits the mask, so none dies of the
    // signal): a Ctrl-C while the throwaway cluster starts stays pending and still cleans up
    // through Drop. No handler and no self-pipe: `main` takes the signal with sigtimedwait.
    if let Err(e) = signal::block(&STOP_SIGNALS) {
        return fail(1, &format!("cannot block SIGINT/SIGTERM: {e}"));
    }
    init_logs();
    let config = match Config::from_env() {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(2, &e.to_string()),
    };
    let db = match Database::open(&config, say) {
        Ok(db) => db,
        Err(e @ DbError::Config(_)) => return fail(2, &e.to_string()),
        Err(e @ DbError::Start(_)) => return fail(1, &e.to_string()),
    };
    if let (Some(c), Some(place)) = (&db.cluster, db.throwaway_place()) {
        say(&format!(
            "playground: throwaway PostgreSQL {} at {place} (data dir {}), deleted on exit",
            c.major_version(),
            c.data_dir().display()
        ));
    }
    match signal::wait_timeout(&STOP_SIGNALS, Duration::ZERO) {
        Ok(None) => {}
        Ok(Some(_)) => {
            say("playground: stopped before serving");
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(1, &format!("cannot check for SIGINT/SIGTERM: {e}")),
    }

    let lifecycle = Arc::new(shutdown::Lifecycle::default());
    let shared = app::Shared {
        config: config.clone(),
        options: db.options.clone(),
        targets: db.targets.clone(),
        board: Arc::new(stats::Board::new(config.reactors)),
        lifecycle: lifecycle.clone(),
    };
    let listen = SocketAddr::new(config.host, config.port);
    let server = ioxide::Server::new()
        .bind(listen)
        .reactors(config.reactors)
        .shutdown_grace(SERVER_STOP_GRACE)
        .on_start(move |reactor| app::start(reactor, &shared));
    let handle = match server.start(conn::serve) {
        Ok(h) => h,
        Err(e) => return fail(1, &format!("cannot serve on {listen}: {e}")),
    };
    let bound = handle.local_addr();
    let on = if bound.ip().is_unspecified() {
        format!(":{}", bound.port())
    } else {
        bound.to_string()
    };
    say(&format!(
        "playground: {} reactors on {on}, database {}, pool {} per reactor",
        config.reactors,
        db.describe(),
        db.options.get_pool_size()
    ));

    match signal::wait(&STOP_SIGNALS) {
        Ok(signal) => tracing::info!(
            signal,
            "shutting down: draining connections, closing the pools"
        ),
        // Cannot happen with valid signal numbers; stop rather than serve unstoppably.
        Err(e) => tracing::error!("waiting for SIGINT/SIGTERM failed ({e}); shutting down"),
    }
    lifecycle.request_drain();
    let until = Instant::now() + config.shutdown_grace + shutdown::POOL_CLOSE_BOUND;
    let done = lifecycle.wait_done(config.reactors, until);
    if done < config.reactors {
        tracing::warn!(
            done,
            reactors = config.reactors,
            "not every reactor drained in time"
        );
    }
    handle.shutdown();
    let joined = handle.join();
    if let Some(cluster) = db.cluster {
        let dir = cluster.data_dir().display().to_string();
        drop(cluster);
        say(&format!(
            "playground: throwaway PostgreSQL stopped, {dir} deleted"
        ));
    }
    match joined {
        Ok(()) => {
            say("playground: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &format!("a reactor failed: {e}")),
    }
}

/// Prints a line on stdout at once (tests and scripts read it while we run).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("playground: {message}");
    ExitCode::from(code)
}

/// `tracing` to stderr, level from `RUST_LOG` (default `info`); colours only when stderr is
/// a terminal, so logs written to a file or a pipe carry no escape codes.
fn init_logs() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
