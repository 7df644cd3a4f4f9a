//! Starting with no configuration (a throwaway cluster) and stopping on SIGTERM/SIGINT:
//! in-flight requests finish, pool connections close with Terminate, the throwaway cluster
//! is stopped and deleted, and the exit code is 0.
#![allow(clippy::unwrap_used)]

mod common;

use common::{pg_env, read_responses, Playground};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn no_configuration_starts_a_throwaway_cluster_and_sigterm_removes_it() {
    let mut p = Playground::start(&[]);
    let out = p.stdout_text();
    let line = out
        .lines()
        .find(|l| l.contains("throwaway PostgreSQL") && l.contains("data dir "))
        .unwrap_or_else(|| panic!("no throwaway line in:\n{out}"));
    let data_dir = data_dir_in(line);
    assert!(
        data_dir.join("PG_VERSION").is_file(),
        "{}",
        data_dir.display()
    );
    assert!(out.contains("(throwaway), pool 8 per reactor"), "{out}");
    // Reached over its Unix socket, and the line says so and why.
    let socket = line
        .split(" at ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(
        PathBuf::from(socket).parent(),
        data_dir.parent(),
        "the socket lives in the cluster's directory: {line}"
    );
    assert!(line.contains("(Unix socket; cheaper than TCP"), "{line}");
    let port: u16 = socket.rsplit('.').next().unwrap().parse().unwrap();
    let postmaster: u32 = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(testkit::process_alive(postmaster));

    assert_eq!(p.get("/").body, "42");
    let (unix, tcp) = playground_backends(data_dir.parent().unwrap(), port);
    assert!(unix >= 1, "no playground backend over the Unix socket");
    assert_eq!(tcp, 0, "playground backends over TCP");
    assert_eq!(
        p.get("/upper/%C3%A9t%C3%A9").body,
        "ÉTÉ",
        "a UTF-8 locale where available"
    );

    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr_text());
    assert!(
        !testkit::process_alive(postmaster),
        "postmaster {postmaster} still runs"
    );
    let root = data_dir.parent().unwrap();
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(
        p.stdout_text().contains("throwaway PostgreSQL stopped"),
        "{}",
        p.stdout_text()
    );
}

#[test]
fn pg_throwaway_tcp_reaches_the_throwaway_cluster_over_tcp() {
    let env = [("PG_THROWAWAY_TCP".to_owned(), "1".to_owned())];
    let mut p = Playground::start(&env);
    let out = p.stdout_text();
    let line = out
        .lines()
        .find(|l| l.contains("throwaway PostgreSQL") && l.contains("data dir "))
        .unwrap_or_else(|| panic!("no throwaway line in:\n{out}"));
    assert!(line.contains("(TCP, PG_THROWAWAY_TCP=1)"), "{line}");
    let addr = line.split(" at 127.0.0.1:").nth(1).unwrap();
    let port: u16 = addr.split(' ').next().unwrap().parse().unwrap();
    let data_dir = data_dir_in(line);
    assert_eq!(p.get("/").body, "42");
    let (unix, tcp) = playground_backends(data_dir.parent().unwrap(), port);
    assert_eq!(unix, 0, "playground backends over the Unix socket");
    assert!(tcp >= 1, "no playground backend over TCP");
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr_text());
}

/// The playground's backends on the throwaway cluster (psql over its socket in `dir`):
/// (over a Unix socket, over TCP), from `pg_stat_activity.client_addr` (NULL for a socket).
fn playground_backends(dir: &std::path::Path, port: u16) -> (usize, usize) {
    let psql = pg_throwaway::server_bin_dir().unwrap().join("psql");
    let out = std::process::Command::new(psql)
        .args(["-XAtq", "-F", " ", "-h"])
        .arg(dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "playground",
            "-d",
            "playground",
            "-c",
        ])
        .arg(
            "SELECT count(*) FILTER (WHERE client_addr IS NULL), \
                    count(*) FILTER (WHERE client_addr IS NOT NULL) \
             FROM pg_stat_activity WHERE application_name = 'playground'",
        )
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut it = text.split_whitespace().map(|n| n.parse::<usize>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn sigint_closes_every_pool_connection_with_terminate() {
    // DEBUG1 makes the server log a client that vanishes without Terminate ("unexpected
    // EOF on client connection"); log_disconnections shows the sessions did end.
    let cluster = testkit::Cluster::builder()
        .setting("log_min_messages", "debug1")
        .setting("log_disconnections", "on")
        .start()
        .unwrap();
    let mut env = pg_env(&cluster);
    env.push(("PG_POOL_SIZE".to_owned(), "3".to_owned()));
    let mut p = Playground::start(&env);
    assert_eq!(p.get("/sleep").body, "42");
    assert_eq!(cluster.backend_count_for(cluster.user()).unwrap(), 6);

    p.signal("INT");
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGINT");
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr_text());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cluster.backend_count_for(cluster.user()).unwrap(), 0);
    let log = std::fs::read_to_string(cluster.socket_dir().join("server.log")).unwrap();
    let ended = log
        .lines()
        .filter(|l| l.contains("disconnection:") && l.contains(cluster.user()))
        .count();
    assert!(ended >= 6, "expected 6 pool sessions to end:\n{log}");
    assert!(
        !log.contains("unexpected EOF on client connection"),
        "a pool connection closed without Terminate:\n{log}"
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let mut p = Playground::start(&pg_env(testkit::shared_cluster()));
    let mut s = p.connect();
    s.write_all(b"GET /sleep HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    p.signal("TERM");
    let (r, _) = read_responses(&mut s, 1);
    assert_eq!(r.len(), 1, "the in-flight request was answered");
    assert_eq!((r[0].status, r[0].body.as_str()), (200, "42"));
    assert_eq!(r[0].header("connection"), Some("close"));
    drop(s);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr_text());
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // stderr is a pipe here: the log lines must be plain text (colour only on a terminal).
    let env = common::shared_env(&[("RUST_LOG", "info")]);
    let mut p = Playground::start(&env);
    assert_eq!(p.get("/").body, "42");
    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr_text());
    let logs = p.stderr_text();
    assert!(logs.contains("shutting down"), "no info log line:\n{logs}");
    assert!(
        !logs.contains("\x1b["),
        "escape codes in piped logs:\n{logs:?}"
    );
    let out = p.stdout_text();
    assert!(!out.contains('\x1b'), "escape codes on stdout:\n{out:?}");
}

/// The throwaway cluster's data directory named in the playground's startup line.
fn data_dir_in(line: &str) -> PathBuf {
    PathBuf::from(
        line.split("data dir ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap(),
    )
}
