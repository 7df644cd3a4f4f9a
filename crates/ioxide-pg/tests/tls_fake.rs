//! TLS failures a real server will not produce, against `testkit::FakeTlsServer`: refusals
//! and replies to the SSLRequest, plaintext injected after `S`, alerts, truncated records,
//! garbage, direct TLS and its ALPN, SNI, client certificates and protocol versions. Each
//! ends with an error that names the cause, quickly, with no panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{fake_opts, run_within};
use ioxide_pg::{PgConnection, PgError, PgOptions, RootCert, SslMode, SslNegotiation, TlsVersion};
use testkit::{
    backend, AfterHandshake, Alpn, ClientCertPolicy, FakeTlsServer, SslReply, TlsScript,
    TlsVersion as FakeVersion, ALPN_POSTGRESQL,
};

const LIMIT: Duration = Duration::from_secs(20);

fn opts_for(fake: &FakeTlsServer, mode: SslMode) -> PgOptions {
    fake_opts(fake.port())
        .ssl_mode(mode)
        .ssl_root_cert(RootCert::File(fake.tls().ca_cert().to_owned()))
}

/// Connects, runs `SELECT 1` (the fake answers `1`), closes; returns how long the connect
/// took when it failed.
fn try_connect(o: &PgOptions) -> Result<(), (PgError, Duration)> {
    let o = o.clone();
    run_within(LIMIT, async move {
        let started = Instant::now();
        let c = PgConnection::connect(&o)
            .await
            .map_err(|e| (e, started.elapsed()))?;
        let r = c
            .query("SELECT 1")
            .await
            .map_err(|e| (e, started.elapsed()))?;
        assert_eq!(r.value(), Some("1"));
        c.close().await;
        Ok(())
    })
}

fn fails(o: &PgOptions, needle: &str) -> PgError {
    let (e, took) = try_connect(o).expect_err("the connect must fail");
    assert!(took < Duration::from_secs(5), "took {took:?}: {e}");
    assert!(
        e.to_string().contains(needle),
        "the error should say {needle:?}: {e}"
    );
    e
}

#[test]
fn a_healthy_fake_connects_over_tls_1_3_and_1_2() {
    for version in [FakeVersion::Tls13, FakeVersion::Tls12] {
        let fake = FakeTlsServer::start(TlsScript::new().only(version)).unwrap();
        try_connect(&opts_for(&fake, SslMode::VerifyFull)).unwrap();
        let log = &fake.connections()[0];
        assert!(log.ssl_request && !log.direct_tls && log.handshake_done);
        assert_eq!(log.tls_version, Some(version));
        // libpq 17 offers ALPN postgresql on every TLS connection; so do we.
        assert_eq!(log.alpn_offered, vec![ALPN_POSTGRESQL.to_vec()]);
        // An IP address is never sent as SNI.
        assert_eq!(log.sni, None);
    }
}

#[test]
fn ssl_min_protocol_version_refuses_an_older_server() {
    let fake = FakeTlsServer::start(TlsScript::new().only(FakeVersion::Tls12)).unwrap();
    let o = opts_for(&fake, SslMode::VerifyFull)
        .ssl_protocol_versions(TlsVersion::Tls13, TlsVersion::Tls13);
    let e = fails(&o, "TLS");
    assert!(e.is_tls(), "{e}");
}

#[test]
fn sni_carries_the_host_name_unless_sslsni_is_off() {
    let fake = FakeTlsServer::start(TlsScript::new()).unwrap();
    let o = opts_for(&fake, SslMode::VerifyFull).host("localhost");
    // A host name is resolved before the reactor connects to it.
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], fake.port()));
    let target = ioxide_pg::Target::Tcp(vec![v4]);
    for (sni, expect) in [(true, Some("localhost".to_owned())), (false, None)] {
        let o = o.clone().ssl_sni(sni);
        let t = target.clone();
        run_within(LIMIT, async move {
            let c = PgConnection::connect_to(&o, t).await.unwrap();
            c.close().await;
        });
        let logs = fake.connections();
        assert_eq!(logs.last().unwrap().sni, expect, "sslsni={sni}");
    }
}

#[test]
fn an_n_is_plaintext_for_prefer_and_an_error_for_require() {
    let fake =
        FakeTlsServer::start(TlsScript::new().reply(SslReply::No(TlsScript::connect_and_query())))
            .unwrap();
    try_connect(&opts_for(&fake, SslMode::Prefer)).unwrap();
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let e = fails(&opts_for(&fake, mode), "does not accept TLS");
        assert!(e.is_tls() && !e.is_server(), "{e}");
    }
}

#[test]
fn an_error_to_the_ssl_request_ends_the_attempt_even_under_prefer() {
    // libpq 17: "server sent an error response during SSL exchange" ends the attempt; the
    // error is not trusted (the server is not authenticated yet) and no plaintext retry
    // follows, which a man in the middle could otherwise force.
    let refusal = backend::error_response("FATAL", "08P01", "unsupported frontend protocol");
    let fake = FakeTlsServer::start(TlsScript::new().reply(SslReply::Error(refusal))).unwrap();
    for mode in [SslMode::Prefer, SslMode::Require] {
        let e = fails(
            &opts_for(&fake, mode),
            "answered the SSLRequest with an error",
        );
        assert!(e.is_tls() && !e.is_server(), "{e}");
    }
    assert_eq!(fake.accepted(), 2, "no retry");
}

#[test]
fn prefer_retries_in_plaintext_after_a_failed_handshake() {
    // The handshake fails (a certificate the root given does not vouch for): libpq's prefer
    // tries a new connection without TLS. (A failure after the handshake, such as an alert
    // during startup, ends the attempt, as in libpq.)
    let fake =
        FakeTlsServer::start(TlsScript::new().server_cert(testkit::ServerCert::OtherCa)).unwrap();
    let _ = try_connect(&opts_for(&fake, SslMode::Prefer)).unwrap_err();
    assert!(fake.wait_for_connections(2, Duration::from_secs(5)));
    let logs = fake.connections();
    assert!(logs[0].ssl_request && !logs[1].ssl_request, "{logs:?}");
}

#[test]
fn plaintext_injected_after_s_is_refused_before_any_handshake() {
    let fake = FakeTlsServer::start(
        TlsScript::new().reply(SslReply::PlaintextAfterS(backend::handshake_ok())),
    )
    .unwrap();
    // Even prefer does not fall back past an injection.
    for mode in [SslMode::Prefer, SslMode::Require] {
        let e = fails(
            &opts_for(&fake, mode),
            "unencrypted bytes after accepting TLS",
        );
        assert!(e.is_tls(), "{e}");
    }
    assert_eq!(fake.accepted(), 2, "no retry");
    assert!(fake.wait_for_end(0, Duration::from_secs(5)));
    assert_eq!(
        fake.connections()[0].bytes_after_reply,
        0,
        "the client hung up without a handshake"
    );
}

#[test]
fn alerts_truncated_records_garbage_and_close_notify_end_the_connect_clearly() {
    for (after, needle) in [
        (AfterHandshake::FatalAlert, "TLS"),
        (AfterHandshake::TruncatedRecord, "closed the connection"),
        (AfterHandshake::Garbage(256 * 1024), "not valid TLS"),
        (AfterHandshake::CloseNotify, "closed the connection"),
    ] {
        let fake = FakeTlsServer::start(TlsScript::new().after(after.clone())).unwrap();
        let e = fails(&opts_for(&fake, SslMode::VerifyFull), needle);
        assert!(e.is_tls() || e.is_transport(), "{after:?}: {e}");
    }
}

#[test]
fn a_required_client_certificate_missing_or_present() {
    let fake =
        FakeTlsServer::start(TlsScript::new().client_cert(ClientCertPolicy::Required)).unwrap();
    let o = opts_for(&fake, SslMode::VerifyFull);
    let e = fails(&o, "client certificate");
    assert!(e.is_tls(), "{e}");
    let files = fake.tls().clone();
    let o = o.ssl_client_cert(files.client_cert(), files.client_key());
    try_connect(&o).unwrap();
    let log = fake.connections().pop().unwrap();
    assert!(log.client_cert.is_some(), "the certificate was presented");
}

#[test]
fn direct_tls_with_alpn() {
    let fake = FakeTlsServer::start(TlsScript::new().direct()).unwrap();
    let o = opts_for(&fake, SslMode::VerifyFull).ssl_negotiation(SslNegotiation::Direct);
    try_connect(&o).unwrap();
    let log = &fake.connections()[0];
    assert!(log.direct_tls && !log.ssl_request, "{log:?}");
    assert_eq!(log.alpn_selected.as_deref(), Some(ALPN_POSTGRESQL));

    // A server that selects no ALPN is not a PostgreSQL 17 speaking direct TLS.
    let fake = FakeTlsServer::start(TlsScript::new().direct().alpn(Alpn::SelectNothing)).unwrap();
    let o = opts_for(&fake, SslMode::VerifyFull).ssl_negotiation(SslNegotiation::Direct);
    let e = fails(&o, "did not select ALPN postgresql");
    assert!(e.is_tls(), "{e}");

    // One that refuses the protocol says so with an alert.
    let fake = FakeTlsServer::start(TlsScript::new().direct().alpn(Alpn::Refuse)).unwrap();
    let o = opts_for(&fake, SslMode::VerifyFull).ssl_negotiation(SslNegotiation::Direct);
    let e = fails(&o, "ALPN");
    assert!(e.is_tls(), "{e}");
}
