//! Connecting: every auth method against real clusters, Unix sockets, timeouts, refusals.
#![allow(clippy::unwrap_used)]

mod common;

use common::opts_for;
use ioxide_pg::{PgConnection, PgOptions, RequireAuth};
use std::time::{Duration, Instant};
use testkit::{Auth, Cluster};

fn check_method(auth: Auth) {
    let c = Cluster::builder().auth(auth).start().unwrap();
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts_for(&c)).await.unwrap();
        assert_eq!(
            conn.query("SELECT current_user").await.unwrap().value(),
            Some(c.user())
        );
        let e = PgConnection::connect(&opts_for(&c).password("wrong"))
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("28P01"), "{auth:?}: {e}");
        let e = PgConnection::connect(
            &PgOptions::new()
                .host(c.host())
                .port(c.port())
                .user(c.user())
                .database(c.database()),
        )
        .await
        .unwrap_err();
        assert!(
            e.is_auth() && e.to_string().contains("no password"),
            "{auth:?}: {e}"
        );
    });
}

#[test]
fn scram_sha_256_authenticates_and_rejects_a_wrong_password() {
    check_method(Auth::ScramSha256);
}

#[test]
fn md5_authenticates_and_rejects_a_wrong_password() {
    check_method(Auth::Md5);
}

#[test]
fn cleartext_password_authenticates_and_rejects_a_wrong_password() {
    check_method(Auth::Password);
}

#[test]
fn trust_needs_no_password_and_unix_sockets_work() {
    let c = testkit::shared_cluster();
    ioxide::block_on(async {
        let o = PgOptions::new()
            .host(c.socket_dir().to_str().unwrap())
            .port(c.port())
            .user(c.user())
            .database(c.database());
        let conn = PgConnection::connect(&o).await.unwrap();
        let r = conn
            .query("SELECT inet_client_addr() IS NULL")
            .await
            .unwrap();
        assert_eq!(r.value(), Some("t"), "expected a Unix-socket session");
    });
}

#[test]
fn require_auth_scram_refuses_a_cleartext_server() {
    let c = Cluster::builder().auth(Auth::Password).start().unwrap();
    ioxide::block_on(async {
        let o = opts_for(&c).require_auth("scram-sha-256".parse::<RequireAuth>().unwrap());
        let e = PgConnection::connect(&o).await.unwrap_err();
        assert!(e.is_auth(), "{e}");
        assert!(
            !e.to_string().contains(c.password()),
            "password leaked: {e}"
        );
    });
}

#[test]
fn connection_refused_fails_fast_with_a_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let e = ioxide::block_on(PgConnection::connect(
        &PgOptions::new().host("127.0.0.1").port(port).user("x"),
    ))
    .unwrap_err();
    assert!(e.is_transport(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn connect_timeout_bounds_a_server_that_never_answers() {
    let fake = testkit::FakeServer::start(vec![testkit::Step::StallForever]).unwrap();
    let started = Instant::now();
    let o = PgOptions::new()
        .host("127.0.0.1")
        .port(fake.port())
        .user("x")
        .connect_timeout(Duration::from_millis(300));
    let e = ioxide::block_on(PgConnection::connect(&o)).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn a_host_name_is_resolved_on_the_ring_or_beforehand() {
    let c = testkit::shared_cluster();
    let o = PgOptions::new()
        .host("localhost")
        .port(c.port())
        .user(c.user())
        .database(c.database());
    // On the ring (the system resolver: /etc/hosts names localhost).
    ioxide::block_on(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));
    });
    // Resolved beforehand (blocking), it connects to the pinned target.
    let target = o.resolve().unwrap();
    ioxide::block_on(async {
        let conn = PgConnection::connect_to(&o, target.clone()).await.unwrap();
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));
        // Options are validated on this path too, naming the field, before any byte is sent.
        let bad = o.clone().max_message_bytes(16);
        let e = PgConnection::connect_to(&bad, target).await.unwrap_err();
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains("max_message_bytes"), "{e}");
    });
}
