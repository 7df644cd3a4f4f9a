use super::*;
use crate::AuthMethod;

fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], extra].concat()
}

fn opts() -> PgOptions {
    PgOptions::new()
        .user("alice")
        .database("db")
        .application_name("app")
        .password("pw")
}

fn started(opts: &PgOptions) -> (Startup, BytesMut) {
    let mut s = Startup::new(opts);
    let mut out = BytesMut::new();
    s.start(&mut out).expect("start");
    (s, out)
}

/// Feeds the post-authentication messages and expects Ready.
fn finish(s: &mut Startup, out: &mut BytesMut) -> ServerInfo {
    for (tag, body) in [
        (b'S', &b"server_version\x0016.2\0"[..]),
        (b'S', b"client_encoding\0UTF8\0"),
        (b'K', &[0, 0, 0, 42, 0, 0, 0, 7]),
    ] {
        assert_eq!(s.handle(tag, body, out).ok(), Some(StartupStatus::Continue));
    }
    match s.handle(b'Z', b"I", out) {
        Ok(StartupStatus::Ready(info)) => info,
        other => panic!("expected Ready, got {other:?}"),
    }
}

fn err_text(r: Result<StartupStatus, PgError>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn startup_message_carries_user_database_encoding_and_app() {
    let (_, out) = started(&opts());
    let body = &out[8..];
    let expected: &[u8] =
        b"user\0alice\0database\0db\0client_encoding\0UTF8\0application_name\0app\0\0";
    assert_eq!(body, expected);
    assert_eq!(&out[4..8], &[0, 3, 0, 0], "protocol 3.0");
    assert_eq!(
        out.len(),
        u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize
    );
}

#[test]
fn trust_goes_straight_to_parameters() {
    let (mut s, mut out) = started(&opts());
    out.clear();
    assert_eq!(
        s.handle(b'R', &auth(0, b""), &mut out).ok(),
        Some(StartupStatus::Continue)
    );
    let info = finish(&mut s, &mut out);
    assert!(out.is_empty());
    assert!(s.is_ready());
    assert_eq!(info.server_version(), Some("16.2"));
    assert_eq!(info.parameter("client_encoding"), Some("UTF8"));
    let key = info.backend_key().expect("key");
    assert_eq!((key.process_id, key.secret_key), (42, 7));
    assert!(!format!("{key:?}").contains('7'), "secret redacted");
    assert!(
        s.handle(b'Z', b"I", &mut out).is_err(),
        "nothing after Ready"
    );
}

#[test]
fn cleartext_password_is_sent() {
    let (mut s, mut out) = started(&opts());
    out.clear();
    assert!(s.handle(b'R', &auth(3, b""), &mut out).is_ok());
    assert_eq!(&out[..], b"p\0\0\0\x07pw\0");
    assert!(s.handle(b'R', &auth(0, b""), &mut out).is_ok());
    finish(&mut s, &mut out);
}

#[test]
fn md5_password_is_hashed_with_user_and_salt() {
    let o = PgOptions::new().user("md5_user").password("password");
    let (mut s, mut out) = started(&o);
    out.clear();
    assert!(s
        .handle(b'R', &auth(5, &[0x2a, 0x3d, 0x8f, 0xe0]), &mut out)
        .is_ok());
    // known answer: md5(md5("password" + "md5_user") + salt)
    assert_eq!(&out[5..], b"md562af4dd09bbb41884907a838a3233294\0");
}

#[test]
fn missing_password_is_a_clear_error() {
    let o = PgOptions::new().user("u");
    for (code, extra) in [(3, &b""[..]), (5, b"salt"), (10, b"SCRAM-SHA-256\0\0")] {
        let (mut s, mut out) = started(&o);
        let body = auth(code, extra);
        let e = err_text(s.handle(b'R', &body, &mut out));
        assert!(e.contains("no password was configured"), "{code}: {e}");
    }
}

#[test]
fn require_auth_refuses_weaker_methods() {
    let o = opts().require_auth(RequireAuth::only(&[AuthMethod::ScramSha256]));
    for (body, needle) in [
        (auth(0, b""), "did not ask for authentication"),
        (auth(3, b""), "asked for password authentication"),
        (auth(5, b"salt"), "asked for md5 authentication"),
    ] {
        let (mut s, mut out) = started(&o);
        let before = out.len();
        let e = err_text(s.handle(b'R', &body, &mut out));
        assert!(e.contains(needle) && e.contains("require_auth"), "{e}");
        assert_eq!(out.len(), before, "no password leaves when refused");
    }
}

#[test]
fn unsupported_methods_are_named() {
    for (code, name) in [(2, "Kerberos V5"), (6, "SCM"), (7, "GSSAPI"), (9, "SSPI")] {
        let (mut s, mut out) = started(&opts());
        let e = s.handle(b'R', &auth(code, b""), &mut out).err();
        assert!(e.as_ref().is_some_and(PgError::is_auth));
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(name) && e.contains("not support"), "{e}");
    }
}

#[test]
fn sasl_without_plain_scram_explains_channel_binding() {
    let (mut s, mut out) = started(&opts());
    let e = err_text(s.handle(b'R', &auth(10, b"SCRAM-SHA-256-PLUS\0\0"), &mut out));
    assert!(e.contains("SCRAM-SHA-256-PLUS") && e.contains("TLS"), "{e}");
    let (mut s, mut out) = started(&opts());
    let e = err_text(s.handle(b'R', &auth(10, b"OTHER\0\0"), &mut out));
    assert!(e.contains("no SASL mechanism"), "{e}");
    let (mut s, mut out) = started(&opts());
    assert!(
        s.handle(b'R', &auth(10, b"SCRAM-SHA-256"), &mut out)
            .is_err(),
        "unterminated"
    );
}

#[test]
fn sasl_picks_scram_sha_256() {
    let (mut s, mut out) = started(&opts());
    out.clear();
    let body = auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    assert!(s.handle(b'R', &body, &mut out).is_ok());
    assert_eq!(out[0], b'p');
    assert!(out[5..].starts_with(b"SCRAM-SHA-256\0"));
    let client_first = &out[5 + 14 + 4..];
    assert!(
        client_first.starts_with(b"n,,n=,r="),
        "{:?}",
        String::from_utf8_lossy(client_first)
    );
}

#[test]
fn server_error_during_startup_is_a_server_error() {
    let (mut s, mut out) = started(&opts());
    let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"alice\"\0\0";
    let e = s.handle(b'E', body, &mut out).err();
    assert_eq!(e.as_ref().and_then(PgError::sql_state), Some("28P01"));
    assert!(e
        .as_ref()
        .and_then(PgError::as_db_error)
        .is_some_and(DbError::is_fatal));
    assert!(
        s.handle(b'R', &auth(0, b""), &mut out).is_err(),
        "failed is final"
    );
}

#[test]
fn notices_and_protocol_negotiation_are_tolerated() {
    let (mut s, mut out) = started(&opts());
    let notice = b"SWARNING\0VWARNING\0C01000\0Mheads up\0\0";
    assert_eq!(
        s.handle(b'N', notice, &mut out).ok(),
        Some(StartupStatus::Continue)
    );
    let npv = [
        0, 0, 0, 0, 0, 0, 0, 1, b'_', b'p', b'q', b'_', b'.', b'x', 0,
    ];
    assert_eq!(
        s.handle(b'v', &npv, &mut out).ok(),
        Some(StartupStatus::Continue)
    );
    assert!(s.handle(b'R', &auth(0, b""), &mut out).is_ok());
    assert_eq!(
        s.handle(b'N', notice, &mut out).ok(),
        Some(StartupStatus::Continue)
    );
    finish(&mut s, &mut out);
}

#[test]
fn messages_in_the_wrong_phase_are_protocol_errors() {
    let (mut s, mut out) = started(&opts());
    let e = err_text(s.handle(b'Z', b"I", &mut out));
    assert_eq!(
        e,
        "protocol error: unexpected ReadyForQuery ('Z') during startup, waiting for an authentication request"
    );
    let (mut s, mut out) = started(&opts());
    assert!(
        s.handle(b'K', &[0; 8], &mut out).is_err(),
        "BackendKeyData before AuthenticationOk"
    );
    let (mut s, mut out) = started(&opts());
    assert!(
        s.handle(b'R', &auth(11, b"r=x"), &mut out).is_err(),
        "SASLContinue unasked"
    );
    let (mut s, mut out) = started(&opts());
    assert!(s.handle(b'R', &auth(3, b""), &mut out).is_ok());
    assert!(
        s.handle(b'R', &auth(3, b""), &mut out).is_err(),
        "asked twice"
    );
    let (mut s, mut out) = started(&opts());
    assert!(s.handle(b'D', b"\0\0", &mut out).is_err());
    let mut fresh = Startup::new(&opts());
    assert!(
        fresh.handle(b'R', &auth(0, b""), &mut out).is_err(),
        "before start"
    );
    let mut fresh = Startup::new(&opts());
    assert!(
        fresh.start(&mut out).is_ok() && fresh.start(&mut out).is_err(),
        "start twice"
    );
}

#[test]
fn server_info_bounds_the_parameters_a_server_reports() {
    let mut info = ServerInfo::default();
    for i in 0..MAX_PARAMETERS {
        assert!(info.set_parameter(&format!("p{i}"), "v").is_ok(), "p{i}");
    }
    // An update of a known name is always fine; a new name past the cap is not.
    assert!(info.set_parameter("p0", "changed").is_ok());
    assert_eq!(info.parameter("p0"), Some("changed"));
    let e = info
        .set_parameter("one_too_many", "v")
        .expect_err("past the cap");
    assert!(e.is_protocol(), "{e}");
    assert!(e.to_string().contains("limit of 256 distinct"), "{e}");
    assert_eq!(info.parameter("one_too_many"), None);
    assert_eq!(info.parameters().count(), MAX_PARAMETERS);
    // Sorted by name, every update visible, old bytes reclaimed after many updates.
    let names: Vec<&str> = info.parameters().map(|(k, _)| k).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    for round in 0..2000 {
        let v = format!("value-{round}");
        assert!(info.set_parameter("p7", &v).is_ok());
        assert_eq!(info.parameter("p7"), Some(v.as_str()));
    }
    assert_eq!(info.parameter("p0"), Some("changed"));
    assert_eq!(info.parameter("p255"), Some("v"));
    assert_eq!(info.parameters().count(), MAX_PARAMETERS);
    let mut same = ServerInfo::default();
    for (k, v) in info.parameters() {
        assert!(same.set_parameter(k, v).is_ok());
    }
    assert_eq!(same, info, "equal whatever the update history");
    assert!(
        info.parameters.text.len() < 3 * info.parameters.live + 2048,
        "replaced values are compacted away: {} bytes for {} live",
        info.parameters.text.len(),
        info.parameters.live
    );

    let mut info = ServerInfo::default();
    let long = "x".repeat(MAX_PARAMETER_VALUE_BYTES + 1);
    let e = info
        .set_parameter("search_path", &long)
        .expect_err("too long");
    assert!(e.is_protocol(), "{e}");
    assert!(e.to_string().contains("limit of 65536 bytes"), "{e}");
    assert_eq!(info.parameter("search_path"), None);
    let max = "x".repeat(MAX_PARAMETER_VALUE_BYTES);
    assert!(info.set_parameter("search_path", &max).is_ok());

    let name = "n".repeat(MAX_PARAMETER_NAME_BYTES + 1);
    let e = info.set_parameter(&name, "v").expect_err("name too long");
    assert!(e.to_string().contains("limit of 1024 bytes"), "{e}");
    assert!(
        e.to_string().len() < 200,
        "the name is not echoed whole: {e}"
    );
}

#[test]
fn endless_distinct_parameters_during_startup_fail_the_handshake() {
    let (mut s, mut out) = started(&opts());
    assert!(s.handle(b'R', &auth(0, b""), &mut out).is_ok());
    let mut failed = None;
    for i in 0..300 {
        let body = format!("hostile_{i}\0v\0");
        if let Err(e) = s.handle(b'S', body.as_bytes(), &mut out) {
            failed = Some((i, e));
            break;
        }
    }
    let (i, e) = failed.expect("the 257th distinct name must be refused");
    assert_eq!(i, MAX_PARAMETERS);
    assert!(e.is_protocol(), "{e}");
    assert!(e.to_string().contains("256 distinct"), "{e}");
    assert!(
        s.handle(b'Z', b"I", &mut out).is_err(),
        "startup failed for good"
    );
}

/// The SASLInitialResponse's mechanism and the start of its client-first message.
fn initial_response(out: &BytesMut) -> (String, String) {
    assert_eq!(out[0], b'p');
    let body = &out[5..];
    let nul = body.iter().position(|&b| b == 0).unwrap_or(0);
    let mech = String::from_utf8_lossy(&body[..nul]).into_owned();
    let first = String::from_utf8_lossy(&body[nul + 1 + 4..]).into_owned();
    (mech, first)
}

fn server_cert_der() -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let files = testkit::TlsSetup::new().generate().expect("certificates");
    rustls::pki_types::CertificateDer::from_pem_file(files.server_cert(testkit::ServerCert::Valid))
        .expect("PEM")
        .as_ref()
        .to_vec()
}

#[test]
fn channel_binding_flags_follow_tls_the_offer_and_the_policy() {
    use crate::options::ChannelBinding as Cb;
    let cert = server_cert_der();
    let both = auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    let plain_only = auth(10, b"SCRAM-SHA-256\0\0");
    // (policy, TLS?, offer) -> (mechanism, GS2 header)
    let cases: [(Cb, bool, &[u8], &str, &str); 6] = [
        (
            Cb::Prefer,
            true,
            &both,
            "SCRAM-SHA-256-PLUS",
            "p=tls-server-end-point,,",
        ),
        (
            Cb::Require,
            true,
            &both,
            "SCRAM-SHA-256-PLUS",
            "p=tls-server-end-point,,",
        ),
        // TLS and a hash, but no PLUS offered: "y" lets a server that did offer it see a
        // downgrade.
        (Cb::Prefer, true, &plain_only, "SCRAM-SHA-256", "y,,"),
        (Cb::Disable, true, &both, "SCRAM-SHA-256", "n,,"),
        (Cb::Prefer, false, &both, "SCRAM-SHA-256", "n,,"),
        (Cb::Disable, false, &plain_only, "SCRAM-SHA-256", "n,,"),
    ];
    for (policy, tls, offer, mech, gs2) in cases {
        let o = opts().channel_binding(policy);
        let mut s = Startup::new(&o);
        if tls {
            s = s.with_tls(cert.clone());
        }
        let mut out = BytesMut::new();
        s.start(&mut out).expect("start");
        out.clear();
        s.handle(b'R', offer, &mut out).expect("SASL");
        let (m, first) = initial_response(&out);
        assert_eq!(m, mech, "{policy:?} tls={tls}");
        assert!(first.starts_with(gs2), "{policy:?} tls={tls}: {first}");
    }
}

#[test]
fn channel_binding_require_refuses_what_cannot_bind() {
    use crate::options::ChannelBinding as Cb;
    let o = opts().channel_binding(Cb::Require);
    let cert = server_cert_der();
    // No TLS.
    let (mut s, mut out) = started(&o);
    let e = err_text(s.handle(
        b'R',
        &auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
        &mut out,
    ));
    assert!(e.contains("does not use TLS"), "{e}");
    // TLS, but the server offers no PLUS.
    let mut s = Startup::new(&o).with_tls(cert.clone());
    s.start(&mut out).expect("start");
    let e = err_text(s.handle(b'R', &auth(10, b"SCRAM-SHA-256\0\0"), &mut out));
    assert!(e.contains("does not offer SCRAM-SHA-256-PLUS"), "{e}");
    // TLS, but the certificate has no end-point hash.
    let mut s = Startup::new(&o).with_tls(b"not a certificate".to_vec());
    s.start(&mut out).expect("start");
    let e = err_text(s.handle(b'R', &auth(10, b"SCRAM-SHA-256-PLUS\0\0"), &mut out));
    assert!(e.contains("no tls-server-end-point hash"), "{e}");
    // A login that never reaches SCRAM: trust, cleartext, MD5.
    for (code, extra) in [(0, &b""[..]), (3, b""), (5, b"salt")] {
        let mut s = Startup::new(&o).with_tls(cert.clone());
        s.start(&mut out).expect("start");
        let e = err_text(s.handle(b'R', &auth(code, extra), &mut out));
        assert!(e.contains("without channel binding"), "code {code}: {e}");
    }
}
