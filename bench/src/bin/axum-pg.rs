//! The HTTP peer of the playground: axum + deadpool-postgres with the same routes the
//! benchmark drives (`/` → `SELECT 42`, `/add/N` → `SELECT $1::int8 + 1`).
//!
//! Environment, as the playground's: `PORT` (default 8080), `REACTORS` (tokio worker threads,
//! default 1), `PG_POOL_SIZE` (per worker, default 8: the pool holds PG_POOL_SIZE × REACTORS
//! connections, as the playground's pools do), and the libpq variables or `DATABASE_URL`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use ioxide_pg::{Host, PgOptions};
use std::process::ExitCode;
use tokio_postgres::NoTls;

type Answer = Result<String, (StatusCode, String)>;

fn fail(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn root(State(pool): State<Pool>) -> Answer {
    let c = pool.get().await.map_err(fail)?;
    let s = c.prepare_cached("SELECT 42").await.map_err(fail)?;
    let row = c.query_one(&s, &[]).await.map_err(fail)?;
    Ok(row.try_get::<_, i32>(0).map_err(fail)?.to_string())
}

async fn add(State(pool): State<Pool>, Path(n): Path<i64>) -> Answer {
    let c = pool.get().await.map_err(fail)?;
    let s = c
        .prepare_cached("SELECT $1::int8 + 1")
        .await
        .map_err(fail)?;
    let row = c.query_one(&s, &[&n]).await.map_err(fail)?;
    Ok(row.try_get::<_, i64>(0).map_err(fail)?.to_string())
}

fn env_num(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| format!("{name}: not a number: {v}")),
        _ => Ok(default),
    }
}

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum-pg: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), String> {
    let port = env_num("PORT", 8080)?;
    let workers = env_num("REACTORS", 1)?.max(1);
    let pool_size = env_num("PG_POOL_SIZE", 8)?.max(1) * workers;
    let o = PgOptions::from_env().map_err(|e| e.to_string())?;
    let mut cfg = tokio_postgres::Config::new();
    match o.get_host() {
        Host::Tcp(h) => cfg.host(h),
        Host::Unix(d) => cfg.host_path(d),
        other => return Err(format!("unsupported host {other:?}")),
    };
    cfg.port(o.get_port())
        .user(o.get_user())
        .dbname(o.get_database());
    if let Some(p) = o.get_password() {
        cfg.password(p);
    }
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(pool_size)
        .build()
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        // Open the whole pool up front, as the playground's warmup does.
        let mut held = Vec::with_capacity(pool_size);
        for _ in 0..pool_size {
            held.push(pool.get().await.map_err(|e| e.to_string())?);
        }
        drop(held);
        let app = Router::new()
            .route("/", get(root))
            .route("/add/{n}", get(add))
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port as u16))
            .await
            .map_err(|e| format!("binding port {port}: {e}"))?;
        eprintln!("axum-pg: listening on 127.0.0.1:{port}, {workers} worker(s), pool {pool_size}");
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}
