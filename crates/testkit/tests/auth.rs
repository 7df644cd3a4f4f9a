//! Each authentication method accepts the right password and (except trust) rejects a
//! wrong one, over TCP, with the password stored in the format the method needs.
#![allow(clippy::unwrap_used)]

use testkit::{Auth, Cluster, ErrorKind};

fn cluster(auth: Auth) -> Cluster {
    Cluster::builder().auth(auth).start().unwrap()
}

fn current_user(c: &Cluster, password: &str) -> testkit::Result<String> {
    c.psql_as(c.user(), password, "SELECT current_user")
}

fn assert_rejected(c: &Cluster) {
    let err = current_user(c, "not-the-password").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CommandFailed);
    assert!(
        err.message().contains("password authentication failed"),
        "unexpected error: {err}"
    );
}

fn stored_password_prefix(c: &Cluster) -> String {
    c.psql(&format!(
        "SELECT left(rolpassword, 6) FROM pg_authid WHERE rolname = '{}'",
        c.user()
    ))
    .unwrap()
}

fn hba_method(c: &Cluster) -> String {
    c.psql("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND user_name = '{all}' LIMIT 1")
        .unwrap()
}

#[test]
fn trust_accepts_any_password() {
    let c = cluster(Auth::Trust);
    assert_eq!(hba_method(&c), "trust");
    assert_eq!(current_user(&c, "ioxide-secret").unwrap(), "ioxide");
    assert_eq!(current_user(&c, "anything").unwrap(), "ioxide");
}

#[test]
fn password_auth_checks_the_password() {
    let c = cluster(Auth::Password);
    assert_eq!(hba_method(&c), "password");
    assert_eq!(current_user(&c, c.password()).unwrap(), "ioxide");
    assert_rejected(&c);
}

#[test]
fn md5_auth_uses_an_md5_stored_password() {
    let c = Cluster::builder()
        .auth(Auth::Md5)
        .password("p'w \"odd\"")
        .start()
        .unwrap();
    assert_eq!(hba_method(&c), "md5");
    let is_md5 = "SELECT rolpassword ~ '^md5[0-9a-f]{32}$' FROM pg_authid WHERE rolname = 'ioxide'";
    assert_eq!(c.psql(is_md5).unwrap(), "t");
    assert_eq!(current_user(&c, "p'w \"odd\"").unwrap(), "ioxide");
    assert_rejected(&c);
}

#[test]
fn scram_auth_uses_a_scram_verifier() {
    let c = Cluster::builder()
        .auth(Auth::ScramSha256)
        .user("scram_user")
        .database("scram_db")
        .start()
        .unwrap();
    assert_eq!(hba_method(&c), "scram-sha-256");
    assert_eq!(stored_password_prefix(&c), "SCRAM-");
    assert_eq!(
        c.psql_as(
            "scram_user",
            "ioxide-secret",
            "SELECT current_user || '@' || current_database()"
        )
        .unwrap(),
        "scram_user@scram_db"
    );
    assert_rejected(&c);
    // The superuser stays trusted over the socket and over TCP whatever the method.
    assert_eq!(c.psql_as("postgres", "wrong", "SELECT 1").unwrap(), "1");
}
