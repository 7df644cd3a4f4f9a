//! The playground against a server that accepts only TLS, configured the libpq way
//! (`PGSSLMODE`, `PGSSLROOTCERT`): the case a new user tried before TLS existed, which
//! answered 503 because the connection had been made in plaintext.
#![allow(clippy::unwrap_used)]

mod common;

use common::{pg_env, Playground};
use testkit::{Auth, Cluster, TlsSetup};

fn tls_only_cluster() -> Cluster {
    Cluster::builder()
        .auth(Auth::ScramSha256)
        .tls(TlsSetup::new())
        .hba([
            "hostssl all all 127.0.0.1/32 scram-sha-256",
            "hostnossl all all 127.0.0.1/32 reject",
        ])
        .start()
        .unwrap()
}

#[test]
fn pgsslmode_verify_full_serves_every_route_over_tls() {
    let c = tls_only_cluster();
    let mut env = pg_env(&c);
    env.push(("PGSSLMODE".into(), "verify-full".into()));
    let ca = c.tls().unwrap().ca_cert().display().to_string();
    env.push(("PGSSLROOTCERT".into(), ca));
    let p = Playground::start(&env);
    for (path, body) in [("/", "42"), ("/add/41", "42"), ("/upper/tls", "TLS")] {
        let r = p.get(path);
        assert_eq!((r.status, r.body.as_str()), (200, body), "GET {path}");
    }
    assert!(
        p.stdout_text().contains("sslmode=verify-full"),
        "the startup line names the TLS mode: {}",
        p.stdout_text()
    );
    // Every backend of the pool is encrypted.
    let plain = c
        .psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'ioxide' AND NOT s.ssl")
        .unwrap();
    assert_eq!(plain, "0");
}

#[test]
fn pgsslmode_disable_against_a_tls_only_server_answers_503_with_the_reason() {
    let c = tls_only_cluster();
    let mut env = pg_env(&c);
    env.push(("PGSSLMODE".into(), "disable".into()));
    let p = Playground::start(&env);
    let r = p.get("/");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("no encryption"), "{r:?}");
}
