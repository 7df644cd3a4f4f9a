//! The per-binary shared cluster: one server, usable from many tests at once.
#![allow(clippy::unwrap_used)]

use testkit::{shared_cluster, Auth};

#[test]
fn shared_cluster_answers_queries() {
    let c = shared_cluster();
    assert_eq!(c.auth(), Auth::Trust);
    assert_eq!(c.psql("SELECT 40 + 2").unwrap(), "42");
    assert_eq!(
        c.psql_as("ioxide", "", "SELECT current_database()")
            .unwrap(),
        "ioxide"
    );
    assert_eq!(
        c.major_version(),
        c.psql("SHOW server_version_num").unwrap()[..2]
            .parse()
            .unwrap()
    );
}

#[test]
fn shared_cluster_is_one_server() {
    let ports: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| shared_cluster().port()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ports.iter().all(|&p| p == ports[0]));
    let c = shared_cluster();
    assert_eq!(
        c.url(),
        format!(
            "postgres://ioxide:ioxide-secret@127.0.0.1:{}/ioxide",
            c.port()
        )
    );
    assert_eq!(
        c.superuser_url(),
        format!("postgres://postgres@127.0.0.1:{}/ioxide", c.port())
    );
    assert!(c.socket_path().ends_with(format!(".s.PGSQL.{}", c.port())));
}

#[test]
fn psql_reports_server_errors() {
    let err = shared_cluster()
        .psql("SELECT * FROM this_table_does_not_exist")
        .unwrap_err();
    assert_eq!(err.kind(), testkit::ErrorKind::CommandFailed);
    assert!(err.message().contains("does not exist"), "{err}");
}
