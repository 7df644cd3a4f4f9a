//! TLS against real servers: every `sslmode` against a server with and without TLS, the
//! certificate checks, client certificates, channel binding, and the failure contract over
//! TLS (pipelining, large replies, command timeout with its CancelRequest, restart heal).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{opts_for, run_within};
use ioxide_pg::{ChannelBinding, PgConnection, PgError, PgOptions, PgPool, RootCert, SslMode};
use testkit::tls::{ServerCert, TlsSetup};
use testkit::{Auth, Cluster};

const LIMIT: Duration = Duration::from_secs(30);

/// A SCRAM cluster with TLS whose `pg_hba.conf` is `hba`.
fn tls_cluster(setup: TlsSetup, hba: &[&str]) -> Cluster {
    let mut b = Cluster::builder().auth(Auth::ScramSha256).tls(setup);
    if !hba.is_empty() {
        b = b.hba(hba.iter().copied());
    }
    b.start().unwrap()
}

const TLS_OR_NOT: [&str; 2] = [
    "hostssl all all 127.0.0.1/32 scram-sha-256",
    "hostnossl all all 127.0.0.1/32 scram-sha-256",
];
const TLS_ONLY: [&str; 2] = [
    "hostssl all all 127.0.0.1/32 scram-sha-256",
    "hostnossl all all 127.0.0.1/32 reject",
];
const PLAIN_ONLY: [&str; 2] = [
    "hostssl all all 127.0.0.1/32 reject",
    "hostnossl all all 127.0.0.1/32 scram-sha-256",
];

/// Whether the session runs over TLS, asked of the server.
async fn server_sees_tls(c: &PgConnection) -> bool {
    let r = c
        .query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    match r.value() {
        Some("true") => true,
        Some("false") => false,
        other => panic!("pg_stat_ssl said {other:?}"),
    }
}

fn connect(o: &PgOptions) -> Result<bool, PgError> {
    let o = o.clone();
    run_within(LIMIT, async move {
        let c = PgConnection::connect(&o).await?;
        let tls = server_sees_tls(&c).await;
        c.close().await;
        Ok(tls)
    })
}

fn with_mode(c: &Cluster, mode: SslMode) -> PgOptions {
    let mut o = opts_for(c).ssl_mode(mode);
    if let Some(files) = c.tls() {
        o = o.ssl_root_cert(RootCert::File(files.ca_cert().to_owned()));
    }
    o
}

#[test]
fn every_sslmode_against_a_server_that_takes_both() {
    let c = tls_cluster(TlsSetup::new(), &TLS_OR_NOT);
    for (mode, tls) in [
        (SslMode::Disable, false),
        (SslMode::Allow, false),
        (SslMode::Prefer, true),
        (SslMode::Require, true),
        (SslMode::VerifyCa, true),
        (SslMode::VerifyFull, true),
    ] {
        assert_eq!(
            connect(&with_mode(&c, mode)).unwrap(),
            tls,
            "sslmode={mode}"
        );
    }
}

#[test]
fn every_sslmode_against_a_server_without_tls() {
    let c = Cluster::builder().auth(Auth::ScramSha256).start().unwrap();
    for mode in [SslMode::Disable, SslMode::Allow, SslMode::Prefer] {
        assert!(
            !connect(&opts_for(&c).ssl_mode(mode)).unwrap(),
            "sslmode={mode}"
        );
    }
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let root = TlsSetup::new().generate().unwrap();
        let o = opts_for(&c)
            .ssl_mode(mode)
            .ssl_root_cert(RootCert::File(root.ca_cert().to_owned()));
        let e = connect(&o).unwrap_err();
        assert!(e.is_tls(), "sslmode={mode}: {e}");
        assert!(
            e.to_string().contains("does not accept TLS") && e.to_string().contains(mode.name()),
            "{e}"
        );
    }
}

#[test]
fn a_tls_only_server_refuses_plaintext_and_allow_retries_with_tls() {
    let c = tls_cluster(TlsSetup::new(), &TLS_ONLY);
    let e = connect(&with_mode(&c, SslMode::Disable)).unwrap_err();
    assert_eq!(e.sql_state(), Some("28000"), "{e}");
    assert!(e.to_string().contains("no encryption"), "{e}");
    assert!(
        connect(&with_mode(&c, SslMode::Allow)).unwrap(),
        "allow falls to TLS"
    );
    assert!(connect(&with_mode(&c, SslMode::Prefer)).unwrap());
}

#[test]
fn prefer_falls_back_to_plaintext_when_the_server_refuses_tls_logins() {
    let c = tls_cluster(TlsSetup::new(), &PLAIN_ONLY);
    assert!(!connect(&with_mode(&c, SslMode::Prefer)).unwrap());
    let e = connect(&with_mode(&c, SslMode::Require)).unwrap_err();
    assert_eq!(
        e.sql_state(),
        Some("28000"),
        "require never falls back: {e}"
    );
}

#[test]
fn certificate_checks_name_their_cause() {
    // A certificate for another host: fine for verify-ca, refused by verify-full.
    let c = tls_cluster(
        TlsSetup::new().server_cert(ServerCert::WrongHost),
        &TLS_OR_NOT,
    );
    assert!(connect(&with_mode(&c, SslMode::VerifyCa)).unwrap());
    let e = connect(&with_mode(&c, SslMode::VerifyFull)).unwrap_err();
    assert!(e.is_tls(), "{e}");
    assert!(e.to_string().contains("not issued for the host"), "{e}");
    drop(c);

    // An unknown CA: refused by verify-ca, by require with a root certificate (libpq:
    // require then verifies as verify-ca), taken by require without one.
    let c = tls_cluster(
        TlsSetup::new().server_cert(ServerCert::OtherCa),
        &TLS_OR_NOT,
    );
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull, SslMode::Require] {
        let e = connect(&with_mode(&c, mode)).unwrap_err();
        assert!(e.is_tls(), "sslmode={mode}: {e}");
        assert!(
            e.to_string().contains("not signed by a trusted root"),
            "{e}"
        );
    }
    assert!(connect(&opts_for(&c).ssl_mode(SslMode::Require)).unwrap());
    // prefer with the root: the TLS attempt fails, and libpq's prefer then tries plaintext.
    assert!(!connect(&with_mode(&c, SslMode::Prefer)).unwrap());
    drop(c);

    let c = tls_cluster(TlsSetup::new().server_cert(ServerCert::Expired), &TLS_ONLY);
    let e = connect(&with_mode(&c, SslMode::VerifyCa)).unwrap_err();
    assert!(e.is_tls() && e.to_string().contains("expired"), "{e}");
}

#[test]
fn verify_modes_without_a_root_certificate_say_what_is_missing() {
    let c = tls_cluster(TlsSetup::new(), &TLS_OR_NOT);
    // HOME without ~/.postgresql/root.crt: point HOME at an empty directory for this test
    // binary is not possible per test, so give a root file that does not exist instead.
    let o = opts_for(&c)
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert(RootCert::File("/nonexistent/root.crt".into()));
    let e = connect(&o).unwrap_err();
    assert!(e.is_config(), "{e}");
    assert_eq!(e.config_field(), Some("sslrootcert"));
    assert!(e.to_string().contains("/nonexistent/root.crt"), "{e}");
    // A pool says so when it starts, not at every connect.
    let e = run_within(LIMIT, async move {
        PgPool::start(&ioxide::Reactor::current(), o).map(|_| ())
    })
    .unwrap_err();
    assert_eq!(e.config_field(), Some("sslrootcert"), "{e}");
}

#[test]
fn sslrootcert_system_uses_the_platform_roots() {
    // The platform's roots do not include the test CA: verify-full (implied) refuses it.
    let c = tls_cluster(TlsSetup::new(), &TLS_OR_NOT);
    let o = opts_for(&c).ssl_root_cert(RootCert::System);
    assert_eq!(o.get_ssl_mode(), SslMode::VerifyFull);
    let e = connect(&o).unwrap_err();
    let platform_has_roots = std::fs::read_dir("/etc/ssl/certs").is_ok_and(|d| d.count() > 0);
    if platform_has_roots {
        assert!(
            e.is_tls() && e.to_string().contains("not signed by a trusted root"),
            "{e}"
        );
    } else {
        assert_eq!(e.config_field(), Some("sslrootcert"), "{e}");
    }
}

#[test]
fn client_certificate_login() {
    let c = tls_cluster(
        TlsSetup::new(),
        &[
            "hostssl all all 127.0.0.1/32 cert",
            "hostnossl all all 127.0.0.1/32 reject",
        ],
    );
    let files = c.tls().unwrap();
    let base = with_mode(&c, SslMode::VerifyFull);
    // No certificate: the server refuses.
    let e = connect(&base).unwrap_err();
    assert!(e.is_server() || e.is_tls(), "{e}");

    let o = base
        .clone()
        .ssl_client_cert(files.client_cert(), files.client_key());
    assert!(connect(&o).unwrap());

    // The encrypted key: refused without its password, with a clear error…
    let enc = base
        .clone()
        .ssl_client_cert(files.client_cert(), files.client_key_encrypted());
    let e = connect(&enc).unwrap_err();
    assert!(
        e.is_config() && e.to_string().contains("sslpassword"),
        "{e}"
    );
    // …taken with it, refused with a wrong one.
    assert!(connect(&enc.clone().ssl_password(files.key_password())).unwrap());
    let e = connect(&enc.ssl_password("wrong")).unwrap_err();
    assert!(e.is_config() && e.to_string().contains("decrypted"), "{e}");

    // A certificate the server's CA did not sign: the server refuses it.
    let other = base.ssl_client_cert(files.other_client_cert(), files.other_client_key());
    let e = connect(&other).unwrap_err();
    assert!(e.is_tls() || e.is_server() || e.is_transport(), "{e}");
}

#[test]
fn channel_binding() {
    let c = tls_cluster(TlsSetup::new(), &TLS_OR_NOT);
    // require over TLS: only SCRAM-SHA-256-PLUS can satisfy it.
    let o = with_mode(&c, SslMode::VerifyFull).channel_binding(ChannelBinding::Require);
    assert!(connect(&o).unwrap());
    // prefer (default) and disable log in too.
    for cb in [ChannelBinding::Prefer, ChannelBinding::Disable] {
        assert!(connect(&with_mode(&c, SslMode::Require).channel_binding(cb)).unwrap());
    }
    // require without TLS: refused by the options, or at login.
    let e = opts_for(&c)
        .ssl_mode(SslMode::Disable)
        .channel_binding(ChannelBinding::Require)
        .validate()
        .unwrap_err();
    assert_eq!(e.config_field(), Some("channel_binding"), "{e}");
    drop(c);
    let plain = Cluster::builder().auth(Auth::ScramSha256).start().unwrap();
    let e = connect(&opts_for(&plain).channel_binding(ChannelBinding::Require)).unwrap_err();
    assert!(
        e.is_auth() && e.to_string().contains("does not use TLS"),
        "{e}"
    );
    // require against a login that is not SCRAM: refused.
    let trust = Cluster::builder().tls(TlsSetup::new()).start().unwrap();
    let e = connect(
        &opts_for(&trust)
            .ssl_mode(SslMode::Require)
            .channel_binding(ChannelBinding::Require),
    )
    .unwrap_err();
    assert!(
        e.is_auth() && e.to_string().contains("without channel binding"),
        "{e}"
    );
}

#[test]
fn direct_negotiation_against_postgresql_15_fails_clearly() {
    let c = tls_cluster(TlsSetup::new(), &TLS_OR_NOT);
    let o = with_mode(&c, SslMode::Require).ssl_negotiation(ioxide_pg::SslNegotiation::Direct);
    let started = Instant::now();
    let e = connect(&o).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    assert!(e.is_tls() || e.is_transport(), "{e}");
}

#[test]
fn pipelined_and_large_replies_over_tls() {
    let c = tls_cluster(TlsSetup::new(), &TLS_ONLY);
    let o = with_mode(&c, SslMode::VerifyFull);
    run_within(LIMIT, async move {
        let conn = std::rc::Rc::new(PgConnection::connect(&o).await.unwrap());
        assert!(server_sees_tls(&conn).await);
        // 64 in flight, 20 rounds: every reply is the caller's own.
        for round in 0..20i64 {
            let mut tasks = Vec::new();
            for i in 0..64i64 {
                let conn = conn.clone();
                tasks.push(ioxide::spawn(async move {
                    let v = round * 1000 + i;
                    let r = conn.query_params("SELECT $1::int8", &[&v]).await.unwrap();
                    assert_eq!(r.scalar::<i64>().unwrap(), v);
                }));
            }
            for t in tasks {
                t.await;
            }
        }
        // Replies far larger than a TLS record (16 KiB) and than the receive buffer.
        for size in [1usize, 16_383, 16_384, 100_000, 3_000_000] {
            let r = conn
                .query(&format!("SELECT repeat('x', {size})"))
                .await
                .unwrap();
            assert_eq!(r.value().unwrap().len(), size);
        }
    });
}

#[test]
fn command_timeout_cancels_over_tls() {
    // TLS only: the CancelRequest connection must use TLS too or the server refuses it.
    let c = tls_cluster(TlsSetup::new(), &TLS_ONLY);
    let o = with_mode(&c, SslMode::VerifyFull).command_timeout(Duration::from_millis(300));
    run_within(LIMIT, async move {
        let conn = PgConnection::connect(&o).await.unwrap();
        let started = Instant::now();
        let e = conn.query("SELECT pg_sleep(20)").await.unwrap_err();
        assert!(e.is_timeout() || e.sql_state() == Some("57014"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The cancel landed (not a teardown): the connection resynced and still serves.
        let r = conn.query("SELECT 42").await.unwrap();
        assert_eq!(r.value(), Some("42"));
        assert!(!conn.is_broken());
    });
}

#[test]
fn a_pool_over_tls_heals_after_a_restart() {
    let c = tls_cluster(TlsSetup::new(), &TLS_ONLY);
    let o = with_mode(&c, SslMode::VerifyFull).pool_size(4);
    let target = o.resolve().unwrap();
    let c = std::sync::Arc::new(c);
    let c2 = c.clone();
    run_within(Duration::from_secs(60), async move {
        let pool = PgPool::start_with_target(&ioxide::Reactor::current(), o, target).unwrap();
        for _ in 0..50 {
            assert_eq!(pool.query("SELECT 1").await.unwrap().value(), Some("1"));
        }
        let pids_before = c2.backend_count_for(c2.user()).unwrap();
        assert!(pids_before >= 1);
        c2.restart().unwrap();
        // Within a few seconds every query succeeds again, over TLS.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ok_streak = 0;
        while ok_streak < 50 {
            assert!(Instant::now() < deadline, "the pool did not heal");
            match pool
                .query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .await
            {
                Ok(r) => {
                    assert_eq!(r.value(), Some("true"));
                    ok_streak += 1;
                }
                Err(_) => {
                    ok_streak = 0;
                    ioxide::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        pool.close().await;
    });
}

#[test]
fn unix_sockets_never_use_tls() {
    let c = Cluster::builder()
        .tls(TlsSetup::new())
        .hba(["local all all trust"])
        .start()
        .unwrap();
    let o = opts_for(&c)
        .host(c.socket_dir().to_str().unwrap())
        .ssl_mode(SslMode::Require);
    assert!(!connect(&o).unwrap());
}
