//! The failure answers: command timeout, unreachable database, bad configuration.
#![allow(clippy::unwrap_used)]

mod common;

use common::{closed_port, shared_env, Playground};
use std::time::{Duration, Instant};

#[test]
fn command_timeout_answers_503_and_the_pool_recovers() {
    let p = Playground::start(&shared_env(&[("PG_COMMAND_TIMEOUT_MS", "1000")]));
    let start = Instant::now();
    let r = p.get("/hang");
    let took = start.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("timed out"), "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "/hang answered after {took:?}"
    );
    // The cancelled connection resynchronised (or was replaced): queries keep working.
    for n in 0..10 {
        assert_eq!(p.get(&format!("/add/{n}")).body, (n + 1).to_string());
    }
    assert_eq!(p.get("/sleep").body, "42");
}

#[test]
fn unreachable_database_answers_503_quickly() {
    let port = closed_port().to_string();
    let p = Playground::start(&[
        ("PGHOST".to_owned(), "127.0.0.1".to_owned()),
        ("PGPORT".to_owned(), port),
        ("PGUSER".to_owned(), "nobody".to_owned()),
    ]);
    for path in ["/", "/add/1", "/sleep", "/rows/3"] {
        let start = Instant::now();
        let r = p.get(path);
        let took = start.elapsed();
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert!(r.body.starts_with("database unavailable: "), "{r:?}");
        assert!(took < Duration::from_secs(3), "{path} took {took:?}");
    }
    // Routes that need no database still answer.
    assert_eq!(p.get("/stats").status, 200);
    assert_eq!(p.get("/nope").status, 404);
}

#[test]
fn a_bad_setting_exits_2_naming_the_variable() {
    let shared = shared_env(&[]);
    for (var, value) in [
        ("PG_POOL_SIZE", "many"),
        ("PORT", "80x"),
        ("REACTORS", "0"),
        ("PG_COMMAND_TIMEOUT_MS", "-1"),
        ("PG_PIPELINE_DEPTH", "0"),
        ("HTTP_IDLE_TIMEOUT_MS", "soon"),
        ("PGPORT", "not-a-port"),
    ] {
        let mut env = shared.clone();
        env.retain(|(k, _)| k != var);
        env.push((var.to_owned(), value.to_owned()));
        let mut p = Playground::spawn(&env);
        let status = p
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{var}={value}: still running"));
        assert_eq!(status.code(), Some(2), "{var}={value}");
        let err = p.stderr_text();
        assert_eq!(err.lines().count(), 1, "{var}={value}: one line: {err}");
        assert!(err.contains(var), "{var}={value}: {err}");
        assert!(err.contains(value), "{var}={value}: {err}");
        assert!(p.stdout_text().is_empty(), "{var}={value}");
    }
}

#[test]
fn the_startup_line_names_the_database_but_never_the_password() {
    let cluster = testkit::shared_cluster();
    let url = cluster.url();
    assert!(url.contains(cluster.password()));
    let p = Playground::start(&[
        ("DATABASE_URL".to_owned(), url),
        ("PG_POOL_SIZE".to_owned(), "3".to_owned()),
    ]);
    let out = p.stdout_text();
    let line = out.lines().last().unwrap();
    assert!(line.starts_with("playground: 2 reactors on :"), "{line}");
    let db = format!(
        "database 127.0.0.1:{}/{} sslmode=prefer, pool 3 per reactor",
        cluster.port(),
        cluster.database()
    );
    assert!(line.ends_with(&db), "{line}");
    assert!(!out.contains(cluster.password()), "{out}");
    assert!(!p.stderr_text().contains(cluster.password()));
    assert_eq!(p.get("/").body, "42");
}
