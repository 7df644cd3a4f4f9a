//! A wrong `PG_BIN` gives one clear error (own test binary: the lookup is cached per process).
#![allow(clippy::unwrap_used)]

#[test]
fn wrong_pg_bin_is_a_clear_error() {
    std::env::set_var("PG_BIN", "/nonexistent/pg/bin");
    let err = testkit::Cluster::new().unwrap_err();
    assert_eq!(err.kind(), testkit::ErrorKind::MissingBinaries);
    assert!(
        err.message().contains("PG_BIN=/nonexistent/pg/bin"),
        "{err}"
    );
    assert!(testkit::server_bin_dir().is_err());
}
