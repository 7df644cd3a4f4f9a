//! Stop, start, restart, crash, freeze/thaw, terminate, drop — against real clusters.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{process_alive, Cluster, ErrorKind};

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn restart_keeps_port_and_data_and_serves_again() {
    let c = Cluster::builder()
        .setting("work_mem", "7MB")
        .start()
        .unwrap();
    assert_eq!(c.psql("SHOW work_mem").unwrap(), "7MB");
    assert_eq!(c.psql("SHOW max_connections").unwrap(), "200");
    assert_eq!(c.psql("SHOW fsync").unwrap(), "off");
    c.psql("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 5)")
        .unwrap();
    // Default privileges let the test role use what the superuser created.
    assert_eq!(
        c.psql_as(c.user(), c.password(), "SELECT sum(n) FROM t")
            .unwrap(),
        "15"
    );

    let (port, pid) = (c.port(), c.postmaster_pid().unwrap());
    c.restart().unwrap();
    let new_pid = c.postmaster_pid().unwrap();
    assert_ne!(pid, new_pid);
    assert!(!process_alive(pid));
    assert_eq!(c.port(), port);
    assert_eq!(c.psql("SELECT 1").unwrap(), "1");
    assert_eq!(
        c.psql_as(c.user(), c.password(), "SELECT count(*) FROM t")
            .unwrap(),
        "5"
    );
}

#[test]
fn stop_refuses_connections_until_start() {
    let c = Cluster::new().unwrap();
    c.stop().unwrap();
    assert!(!c.is_running());
    assert_eq!(c.postmaster_pid(), None);
    let err = c.psql("SELECT 1").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CommandFailed, "{err}");
    assert!(std::net::TcpStream::connect((c.host(), c.port())).is_err());
    c.stop().unwrap(); // stopping a stopped cluster is fine
    c.start().unwrap();
    assert_eq!(c.psql("SELECT 1").unwrap(), "1");
}

#[test]
fn crash_then_start_recovers() {
    let c = Cluster::new().unwrap();
    let pid = c.postmaster_pid().unwrap();
    c.crash().unwrap();
    assert!(!process_alive(pid));
    assert!(c.psql("SELECT 1").is_err());
    c.start().unwrap();
    assert_eq!(c.psql("SELECT 1").unwrap(), "1");
    let log = c.log_tail();
    assert!(
        log.contains("not properly shut down"),
        "no crash recovery in log:\n{log}"
    );
}

#[test]
fn freeze_holds_queries_until_thaw() {
    let c = Cluster::new().unwrap();
    let children_before = c.psql("SELECT count(*) FROM pg_stat_activity").unwrap();
    assert_ne!(children_before, "0");
    c.freeze().unwrap();
    assert!(c.is_frozen());
    std::thread::scope(|s| {
        let query = s.spawn(|| c.psql_as(c.user(), c.password(), "SELECT 42"));
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            !query.is_finished(),
            "query completed against a frozen server"
        );
        c.thaw();
        assert!(!c.is_frozen());
        assert_eq!(query.join().unwrap().unwrap(), "42");
    });
    assert_eq!(c.psql("SELECT 1").unwrap(), "1");
}

#[test]
fn dropping_a_frozen_cluster_still_cleans_up() {
    let c = Cluster::new().unwrap();
    let (root, pid) = (c.socket_dir().to_owned(), c.postmaster_pid().unwrap());
    c.freeze().unwrap();
    drop(c);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(!process_alive(pid));
}

#[test]
fn drop_removes_directory_and_processes() {
    let c = Cluster::new().unwrap();
    let root = c.socket_dir().to_owned();
    let data = c.data_dir().to_owned();
    let pid = c.postmaster_pid().unwrap();
    assert!(data.join("PG_VERSION").exists());
    assert!(c.socket_path().exists());
    assert!(process_alive(pid));
    drop(c);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(!process_alive(pid), "postmaster {pid} survived drop");
}

fn sleeping_psql(c: &Cluster) -> Child {
    let bin = testkit::server_bin_dir().unwrap().join("psql");
    Command::new(bin)
        .args(["-X", "-w", "-h", c.host(), "-p", &c.port().to_string()])
        .args([
            "-U",
            c.user(),
            "-d",
            c.database(),
            "-c",
            "SELECT pg_sleep(30)",
        ])
        .env("PGPASSWORD", c.password())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn terminate_backends_ends_every_session() {
    let c = Cluster::new().unwrap();
    assert_eq!(c.backend_count().unwrap(), 0);
    let mut sessions: Vec<Child> = (0..3).map(|_| sleeping_psql(&c)).collect();
    wait_until("3 sleeping sessions", Duration::from_secs(20), || {
        c.backend_count_for(c.user()).unwrap() == 3
    });
    assert_eq!(c.backend_count().unwrap(), 3);
    assert_eq!(c.terminate_backends().unwrap(), 3);
    wait_until("backends to go", Duration::from_secs(10), || {
        c.backend_count().unwrap() == 0
    });
    for session in &mut sessions {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = session.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Kill (by our own Child handle) whatever did not exit, then fail.
        let _ = session.kill();
        let _ = session.wait();
        let status = status.expect("psql session kept running after termination");
        assert!(!status.success(), "terminated session exited successfully");
    }
    assert_eq!(c.psql("SELECT 1").unwrap(), "1");
}
