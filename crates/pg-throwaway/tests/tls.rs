//! TLS clusters and the test certificates, checked with libpq (`psql`) and the `openssl` CLI
//! as independent judges.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use pg_throwaway::tls::{KeyAlgorithm, ServerCert, TlsFiles, TlsSetup};
use pg_throwaway::{Auth, Cluster, ErrorKind};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `openssl verify -CAfile ca cert`: Ok(stdout) or Err(combined output).
fn openssl_verify(ca: &Path, cert: &Path, extra: &[&str]) -> Result<String, String> {
    let out = Command::new("openssl")
        .arg("verify")
        .args(extra)
        .args(["-CAfile", s(ca), s(cert)])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn openssl_text(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", s(cert)])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn check_files(files: &TlsFiles, key_type: &str) {
    for which in ServerCert::ALL {
        let key = std::fs::read_to_string(files.server_key(which)).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{which:?}");
        let mode = std::fs::metadata(files.server_key(which))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{which:?}");
    }
    let valid = files.server_cert(ServerCert::Valid);
    assert!(openssl_verify(files.ca_cert(), valid, &[]).is_ok());
    let text = openssl_text(valid);
    assert!(
        text.contains("DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"),
        "{text}"
    );
    assert!(text.contains(key_type), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    // Host-name checks as a client makes them.
    let host_ok = |cert, host| openssl_verify(files.ca_cert(), cert, &["-verify_hostname", host]);
    assert!(host_ok(valid, "localhost").is_ok());
    let wrong = files.server_cert(ServerCert::WrongHost);
    assert!(host_ok(wrong, "db.example.invalid").is_ok());
    let err = host_ok(wrong, "localhost").unwrap_err();
    assert!(err.contains("hostname mismatch"), "{err}");

    let err =
        openssl_verify(files.ca_cert(), files.server_cert(ServerCert::Expired), &[]).unwrap_err();
    assert!(err.contains("certificate has expired"), "{err}");
    let err =
        openssl_verify(files.ca_cert(), files.server_cert(ServerCert::OtherCa), &[]).unwrap_err();
    assert!(
        err.contains("unable to get local issuer certificate"),
        "{err}"
    );
    assert!(openssl_verify(
        files.other_ca_cert(),
        files.server_cert(ServerCert::OtherCa),
        &[]
    )
    .is_ok());

    assert!(openssl_verify(
        files.ca_cert(),
        files.client_cert(),
        &["-purpose", "sslclient"]
    )
    .is_ok());
    let client = openssl_text(files.client_cert());
    assert!(
        client.contains(&format!("Subject: CN = {}", files.client_user())),
        "{client}"
    );
    assert!(openssl_verify(files.ca_cert(), files.other_client_cert(), &[]).is_err());

    // The encrypted key: the right header, and it decrypts (as a Rust driver would, with
    // `pkcs8`) to exactly the plain client key.
    let encrypted = std::fs::read_to_string(files.client_key_encrypted()).unwrap();
    assert!(encrypted.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let (label, doc) = pkcs8::SecretDocument::from_pem(&encrypted).unwrap();
    assert_eq!(label, "ENCRYPTED PRIVATE KEY");
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes()).unwrap();
    let plain = info.decrypt(files.key_password()).unwrap();
    let (_, expected) =
        pkcs8::SecretDocument::from_pem(&std::fs::read_to_string(files.client_key()).unwrap())
            .unwrap();
    assert_eq!(plain.as_bytes(), expected.as_bytes());
    assert!(info.decrypt("not-the-password").is_err());
}

#[test]
fn standalone_certificates_verify_as_promised() {
    let files = TlsSetup::new().generate().unwrap();
    assert_eq!(files.client_user(), "ioxide");
    check_files(&files, "id-ecPublicKey");
    let dir = files.dir().to_owned();
    let copy = files.clone();
    drop(files);
    assert!(dir.exists(), "a clone keeps the directory");
    drop(copy);
    assert!(!dir.exists(), "the last clone deletes it");
}

#[test]
fn rsa_certificates_and_a_custom_wrong_host() {
    let files = TlsSetup::new()
        .key_algorithm(KeyAlgorithm::Rsa2048)
        .client_user("alice")
        .wrong_host_name("db.example.invalid")
        .generate()
        .unwrap();
    assert_eq!(files.key_algorithm(), KeyAlgorithm::Rsa2048);
    check_files(&files, "rsaEncryption");

    let other = TlsSetup::new()
        .wrong_host_name("10.1.2.3")
        .generate()
        .unwrap();
    let text = openssl_text(other.server_cert(ServerCert::WrongHost));
    assert!(text.contains("IP Address:10.1.2.3"), "{text}");
    assert!(!text.contains("localhost"), "{text}");

    let err = TlsSetup::new()
        .wrong_host_name("bäd.example")
        .generate()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Certificate, "{err}");
    assert!(err.message().contains("WrongHost"), "{err}");
}

/// What `openssl s_client -starttls postgres` says of the server's certificate.
fn s_client(port: u16, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-CAfile", s(ca)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tls_params<'a>(files: &'a TlsFiles, mode: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("sslmode", mode), ("sslrootcert", s(files.ca_cert()))]
}

const SSL_IN_USE: &str =
    "SELECT ssl || ' ' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn verify_full_works_and_hostnossl_reject_refuses_plaintext() {
    let c = Cluster::builder()
        .auth(Auth::ScramSha256)
        .tls(TlsSetup::default())
        .hba([
            "hostssl all all 127.0.0.1/32 scram-sha-256",
            "hostnossl all all 127.0.0.1/32 reject",
        ])
        .start()
        .unwrap();
    let files = c.tls().unwrap();
    assert_eq!(files.client_user(), c.user());
    assert_eq!(c.psql("SHOW ssl").unwrap(), "on");
    // The superuser keeps its trusted socket (psql() just worked) and the CA is loaded.
    assert_eq!(c.psql("SHOW ssl_ca_file").unwrap(), s(files.ca_cert()));

    let params = tls_params(files, "verify-full");
    let got = c
        .psql_with(c.user(), Some(c.password()), &params, SSL_IN_USE)
        .unwrap();
    assert!(got.starts_with("true TLSv1."), "{got}");
    let mut by_name = params.clone();
    by_name.push(("host", "localhost"));
    assert!(c
        .psql_with(c.user(), Some(c.password()), &by_name, "SELECT 1")
        .is_ok());

    let err = c
        .psql_with(
            c.user(),
            Some(c.password()),
            &[("sslmode", "disable")],
            "SELECT 1",
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CommandFailed);
    assert!(
        err.message().contains("pg_hba.conf rejects connection"),
        "{err}"
    );
    assert!(err.message().contains("no encryption"), "{err}");
    // psql_as() goes without TLS, so it is refused too.
    assert!(c.psql_as(c.user(), c.password(), "SELECT 1").is_err());
    // A wrong password over TLS is still a password failure.
    let err = c
        .psql_with(c.user(), Some("wrong"), &params, "SELECT 1")
        .unwrap_err();
    assert!(
        err.message().contains("password authentication failed"),
        "{err}"
    );
}

#[test]
fn client_certificate_logs_in_with_cert_auth() {
    let c = Cluster::builder()
        .tls(TlsSetup::default())
        .hba(["hostssl all all 127.0.0.1/32 cert"])
        .start()
        .unwrap();
    let files = c.tls().unwrap();
    let mut params = tls_params(files, "verify-full");
    params.extend([
        ("sslcert", s(files.client_cert())),
        ("sslkey", s(files.client_key())),
    ]);
    let who = "SELECT current_user || ' ' || client_dn FROM pg_stat_ssl \
               WHERE pid = pg_backend_pid()";
    let got = c.psql_with(c.user(), None, &params, who).unwrap();
    assert_eq!(got, format!("{0} /CN={0}", c.user()));

    // The encrypted key with its password works; with a wrong one libpq cannot load it.
    let mut encrypted = tls_params(files, "verify-full");
    encrypted.extend([
        ("sslcert", s(files.client_cert())),
        ("sslkey", s(files.client_key_encrypted())),
        ("sslpassword", files.key_password()),
    ]);
    assert_eq!(
        c.psql_with(c.user(), None, &encrypted, "SELECT current_user")
            .unwrap(),
        c.user()
    );
    encrypted.last_mut().unwrap().1 = "wrong";
    let err = c
        .psql_with(c.user(), None, &encrypted, "SELECT 1")
        .unwrap_err();
    assert!(
        err.message().contains("could not load private key"),
        "{err}"
    );

    // No certificate, or one from the unrelated CA: refused.
    let err = c
        .psql_with(
            c.user(),
            None,
            &tls_params(files, "verify-full"),
            "SELECT 1",
        )
        .unwrap_err();
    assert!(err.message().contains("certificate"), "{err}");
    let mut stranger = tls_params(files, "verify-full");
    stranger.extend([
        ("sslcert", s(files.other_client_cert())),
        ("sslkey", s(files.other_client_key())),
    ]);
    let err = c
        .psql_with(c.user(), None, &stranger, "SELECT 1")
        .unwrap_err();
    assert!(
        err.message().contains("unknown ca") || err.message().contains("certificate verify"),
        "{err}"
    );
    // The certificate's CN must be the role: as the superuser's name it is refused.
    let mut as_other = params.clone();
    as_other.push(("dbname", "postgres"));
    c.psql("CREATE ROLE bob LOGIN").unwrap();
    let err = c.psql_with("bob", None, &as_other, "SELECT 1").unwrap_err();
    assert!(
        err.message().contains("certificate authentication failed"),
        "{err}"
    );
}

#[test]
fn the_presented_certificate_and_the_rules_change_at_run_time() {
    let c = Cluster::builder()
        .tls(TlsSetup::new().server_cert(ServerCert::Expired))
        .start()
        .unwrap();
    let files = c.tls().unwrap().clone();
    let user = c.user().to_owned();
    let try_verify = |mode: &str| c.psql_with(&user, None, &tls_params(&files, mode), "SELECT 1");

    let err = try_verify("verify-full").unwrap_err();
    assert!(err.message().contains("certificate verify failed"), "{err}");
    let seen = s_client(c.port(), files.ca_cert());
    assert!(seen.contains("(certificate has expired)"), "{seen}");
    // (libpq treats `require` with a root certificate as `verify-ca`, so none here.)
    let no_check = c.psql_with(&user, None, &[("sslmode", "require")], "SELECT 1");
    assert_eq!(no_check.unwrap(), "1", "no verification, no complaint");

    c.set_server_cert(ServerCert::WrongHost).unwrap();
    let err = try_verify("verify-full").unwrap_err();
    assert!(err.message().contains("does not match host name"), "{err}");
    assert_eq!(try_verify("verify-ca").unwrap(), "1");

    c.set_server_cert(ServerCert::OtherCa).unwrap();
    let err = try_verify("verify-ca").unwrap_err();
    assert!(err.message().contains("certificate verify failed"), "{err}");

    c.set_server_cert(ServerCert::Valid).unwrap();
    assert_eq!(try_verify("verify-full").unwrap(), "1");
    let seen = s_client(c.port(), files.ca_cert());
    assert!(seen.contains("Verify return code: 0 (ok)"), "{seen}");

    // Default rules take plaintext too; then plaintext is turned away.
    assert_eq!(c.psql_as(&user, "", "SELECT 1").unwrap(), "1");
    c.set_hba([
        "hostssl all all 127.0.0.1/32 trust",
        "hostnossl all all 127.0.0.1/32 reject",
    ])
    .unwrap();
    let err = c.psql_as(&user, "", "SELECT 1").unwrap_err();
    assert!(err.message().contains("no encryption"), "{err}");
    assert_eq!(try_verify("verify-full").unwrap(), "1");

    // A rule the server cannot load is refused and the old file stays.
    let err = c
        .set_hba(["hostssl all all 127.0.0.1/32 no-such-method"])
        .unwrap_err();
    assert!(err.message().contains("no-such-method"), "{err}");
    let err = c.set_hba(["two\nlines"]).unwrap_err();
    assert!(err.message().contains("hba"), "{err}");
    c.restart().unwrap();
    assert!(c.psql_as(&user, "", "SELECT 1").is_err());
    assert_eq!(
        try_verify("verify-full").unwrap(),
        "1",
        "the choice survives a restart"
    );
}

#[test]
fn clusters_without_tls_are_unchanged() {
    let c = Cluster::new().unwrap();
    assert!(c.tls().is_none());
    assert_eq!(c.psql("SHOW ssl").unwrap(), "off");
    let err = c.set_server_cert(ServerCert::Valid).unwrap_err();
    assert!(
        err.message().contains("without ClusterBuilder::tls"),
        "{err}"
    );
    let err = c
        .psql_with(c.user(), None, &[("sslmode", "require")], "SELECT 1")
        .unwrap_err();
    assert!(err.message().contains("does not support SSL"), "{err}");
}
