//! The fake TLS server, driven by a hand-rolled rustls client over std TCP.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use testkit::{
    backend, frontend, AfterHandshake, Alpn, ClientCertPolicy, FakeTlsServer, ServerCert, SslReply,
    Step, TlsFiles, TlsScript, TlsVersion, ALPN_POSTGRESQL,
};

const WAIT: Duration = Duration::from_secs(10);

struct Client<'a> {
    ca: &'a Path,
    alpn: Vec<Vec<u8>>,
    cert: Option<(&'a Path, &'a Path)>,
    name: &'a str,
}

impl<'a> Client<'a> {
    fn new(files: &'a TlsFiles) -> Self {
        Self {
            ca: files.ca_cert(),
            alpn: vec![ALPN_POSTGRESQL.to_vec()],
            cert: None,
            name: "localhost",
        }
    }

    fn config(&self) -> Arc<ClientConfig> {
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.ca).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match self.cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(cert).unwrap()],
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = self.alpn.clone();
        Arc::new(config)
    }

    /// TLS over `tcp`; the handshake is driven to its end (Err: the client's failure).
    fn handshake(
        &self,
        mut tcp: TcpStream,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, std::io::Error> {
        let name = ServerName::try_from(self.name.to_owned()).unwrap();
        let mut conn = ClientConnection::new(self.config(), name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(StreamOwned::new(conn, tcp))
    }

    /// SSLRequest, expect `S`, then TLS.
    fn over_ssl_request(
        &self,
        server: &FakeTlsServer,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, std::io::Error> {
        let mut tcp = connect(server);
        tcp.write_all(&frontend::ssl_request()).unwrap();
        assert_eq!(read_n(&mut tcp, 1), b"S");
        self.handshake(tcp)
    }
}

fn connect(server: &FakeTlsServer) -> TcpStream {
    let s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn read_n(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Startup, handshake answer, one query, Terminate, then the server's close_notify.
fn converse(tls: &mut (impl Read + Write)) {
    tls.write_all(&frontend::startup(&[("user", "ioxide")]))
        .unwrap();
    let ok = backend::handshake_ok();
    assert_eq!(read_n(tls, ok.len()), ok);
    tls.write_all(&frontend::query("SELECT 1")).unwrap();
    let answer = backend::simple_query_result("?column?", "1");
    assert_eq!(read_n(tls, answer.len()), answer);
    tls.write_all(&frontend::terminate()).unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).unwrap(); // close_notify: a clean end, not an error
    assert!(rest.is_empty());
}

fn log_of(server: &FakeTlsServer, i: usize) -> testkit::TlsConnectionLog {
    assert!(server.wait_for_end(i, WAIT), "connection {i} did not end");
    server.connections()[i].clone()
}

#[test]
fn ssl_request_then_tls_then_a_query_on_both_versions() {
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let server = FakeTlsServer::start(TlsScript::new().only(version)).unwrap();
        let client = Client::new(server.tls());
        let mut tls = client.over_ssl_request(&server).unwrap();
        converse(&mut tls);

        let log = log_of(&server, 0);
        assert!(log.ssl_request && !log.direct_tls);
        assert!(log.handshake_done);
        assert_eq!(log.tls_version, Some(version));
        assert_eq!(log.sni.as_deref(), Some("localhost"));
        assert_eq!(log.alpn_offered, vec![ALPN_POSTGRESQL.to_vec()]);
        assert_eq!(log.alpn_selected.as_deref(), Some(ALPN_POSTGRESQL));
        assert_eq!(log.client_cert, None);
        let startup = frontend::parse_startup(log.script.startup.as_deref().unwrap()).unwrap();
        assert_eq!(startup.param("user"), Some("ioxide"));
        assert_eq!(
            log.script.received,
            vec![frontend::query("SELECT 1"), frontend::terminate()]
        );
        assert!(log.script.script_completed);
    }
}

#[test]
fn an_ip_address_gets_no_sni_and_alpn_may_go_unselected() {
    let server = FakeTlsServer::start(TlsScript::new().alpn(Alpn::SelectNothing)).unwrap();
    let mut client = Client::new(server.tls());
    client.name = "127.0.0.1";
    let mut tls = client.over_ssl_request(&server).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), None);
    converse(&mut tls);
    let log = log_of(&server, 0);
    assert_eq!(log.sni, None, "no SNI for an IP address (RFC 6066)");
    assert_eq!(log.alpn_offered, vec![ALPN_POSTGRESQL.to_vec()]);
    assert_eq!(log.alpn_selected, None);
}

#[test]
fn direct_tls_needs_alpn() {
    let server = FakeTlsServer::start_with(fresh_files(), |n| match n {
        2 => TlsScript::new().direct().alpn(Alpn::Refuse),
        _ => TlsScript::new().direct(),
    })
    .unwrap();
    let client = Client::new(server.tls());
    // 0: ClientHello first, ALPN postgresql: a full conversation, no SSLRequest.
    let mut tls = client.handshake(connect(&server)).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(ALPN_POSTGRESQL));
    converse(&mut tls);
    let log = log_of(&server, 0);
    assert!(log.direct_tls && !log.ssl_request && log.handshake_done);
    assert_eq!(log.alpn_offered, vec![ALPN_POSTGRESQL.to_vec()]);

    // 1: no ALPN offered: the server hangs up right after the handshake.
    let mut no_alpn = Client::new(server.tls());
    no_alpn.alpn.clear();
    let mut tls = no_alpn.handshake(connect(&server)).unwrap();
    let mut buf = [0u8; 1];
    let end = tls.read(&mut buf);
    assert!(
        matches!(&end, Ok(0)) || matches!(&end, Err(e) if e.kind() == ErrorKind::UnexpectedEof),
        "{end:?}"
    );
    let log = log_of(&server, 1);
    assert!(log.alpn_offered.is_empty() && log.handshake_done);
    assert_eq!(log.script.startup, None);

    // 2: ALPN refused: a fatal no_application_protocol alert during the handshake.
    let err = client.handshake(connect(&server)).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    let log = log_of(&server, 2);
    assert!(!log.handshake_done);
    let why = log.tls_error.unwrap();
    assert!(why.contains("support any known protocol"), "{why}");

    // 3: a PostgreSQL 17 server still takes an SSLRequest first.
    let mut tls = client.over_ssl_request(&server).unwrap();
    converse(&mut tls);
    let log = log_of(&server, 3);
    assert!(log.ssl_request && !log.direct_tls && log.handshake_done);
}

#[test]
fn a_pre_17_server_does_not_understand_a_direct_client_hello() {
    let server = FakeTlsServer::start(TlsScript::new()).unwrap();
    let err = Client::new(server.tls())
        .handshake(connect(&server))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    let log = log_of(&server, 0);
    assert!(log.direct_tls && !log.ssl_request && !log.handshake_done);
}

#[test]
fn ssl_request_answers_n_e_and_plaintext_after_s() {
    let error = backend::error_response("FATAL", "08P01", "unsupported frontend protocol");
    let injected = backend::handshake_ok();
    let (e, inj) = (error.clone(), injected.clone());
    let server = FakeTlsServer::start_with(fresh_files(), move |n| match n {
        0 => TlsScript::new().reply(SslReply::No(vec![
            Step::Send(backend::handshake_ok()),
            Step::ReadMessage,
        ])),
        1 => TlsScript::new().reply(SslReply::Error(e.clone())),
        _ => TlsScript::new().reply(SslReply::PlaintextAfterS(inj.clone())),
    })
    .unwrap();

    let mut plain = connect(&server);
    plain.write_all(&frontend::ssl_request()).unwrap();
    assert_eq!(read_n(&mut plain, 1), b"N");
    plain
        .write_all(&frontend::startup(&[("user", "u")]))
        .unwrap();
    let ok = backend::handshake_ok();
    assert_eq!(read_n(&mut plain, ok.len()), ok);
    plain.write_all(&frontend::terminate()).unwrap();
    let log = log_of(&server, 0);
    assert!(log.ssl_request && !log.handshake_done);
    assert!(log.script.startup.is_some() && log.script.script_completed);
    assert_eq!(log.script.received, vec![frontend::terminate()]);

    let mut old = connect(&server);
    old.write_all(&frontend::ssl_request()).unwrap();
    let mut got = Vec::new();
    old.read_to_end(&mut got).unwrap();
    assert_eq!(got, error);

    // The injected bytes arrive with the `S`; a careful client hangs up without reading on.
    for send_hello in [false, true] {
        let mut mitm = connect(&server);
        mitm.write_all(&frontend::ssl_request()).unwrap();
        let mut first = vec![0u8; 1 + injected.len()];
        mitm.read_exact(&mut first).unwrap();
        assert_eq!(first[0], b'S');
        assert_eq!(&first[1..], &injected[..]);
        if send_hello {
            mitm.write_all(&[0x16, 0x03, 0x01]).unwrap();
        }
        drop(mitm);
    }
    assert_eq!(log_of(&server, 2).bytes_after_reply, 0);
    assert_eq!(log_of(&server, 3).bytes_after_reply, 3);
}

#[test]
fn failures_after_the_handshake() {
    let server = FakeTlsServer::start_with(fresh_files(), |n| {
        let after = match n % 4 {
            0 => AfterHandshake::FatalAlert,
            1 => AfterHandshake::TruncatedRecord,
            2 => AfterHandshake::Garbage(64),
            _ => AfterHandshake::CloseNotify,
        };
        let version = if n < 4 {
            TlsVersion::Tls13
        } else {
            TlsVersion::Tls12
        };
        TlsScript::new().only(version).after(after)
    })
    .unwrap();
    let client = Client::new(server.tls());
    // What follows the handshake may arrive with its last flight, so the client may fail
    // while finishing the handshake or at its first read: either way, the same error.
    let first_read = || {
        client
            .over_ssl_request(&server)
            .and_then(|mut tls| tls.read(&mut [0u8; 64]))
    };
    for round in 0..2 {
        let err = first_read().unwrap_err();
        assert!(err.to_string().contains("BadRecordMac"), "{round}: {err}");
        let err = first_read().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{round}: {err}");
        let err = first_read().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{round}: {err}");
        assert!(
            err.to_string().contains("InvalidContentType"),
            "{round}: {err}"
        );
        assert_eq!(first_read().unwrap(), 0, "{round}: a clean close_notify");
    }
    for i in 0..8 {
        let log = log_of(&server, i);
        assert!(log.handshake_done, "{i}");
        let expected = if i < 4 {
            TlsVersion::Tls13
        } else {
            TlsVersion::Tls12
        };
        assert_eq!(log.tls_version, Some(expected), "{i}");
        assert_eq!(log.script.startup, None, "{i}");
    }
}

#[test]
fn client_certificates_are_checked_and_recorded() {
    let server = FakeTlsServer::start_with(fresh_files(), |n| match n {
        0 | 1 => TlsScript::new().client_cert(ClientCertPolicy::Required),
        _ => TlsScript::new().client_cert(ClientCertPolicy::Optional),
    })
    .unwrap();
    let files = server.tls().clone();
    let mut with_cert = Client::new(&files);
    with_cert.cert = Some((files.client_cert(), files.client_key()));
    let mut tls = with_cert.over_ssl_request(&server).unwrap();
    converse(&mut tls);
    let log = log_of(&server, 0);
    let expected = CertificateDer::from_pem_file(files.client_cert()).unwrap();
    assert_eq!(log.client_cert.as_deref(), Some(expected.as_ref()));

    // Required, none sent: TLS 1.3 clients learn of it at their first read.
    let without = Client::new(&files);
    let refused = without.over_ssl_request(&server).and_then(|mut tls| {
        tls.write_all(&frontend::startup(&[]))?;
        tls.read(&mut [0u8; 8])
    });
    let err = refused.unwrap_err();
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    let log = log_of(&server, 1);
    assert!(!log.handshake_done && log.client_cert.is_none());
    assert!(log.tls_error.is_some());

    // Optional, none sent: fine.
    let mut tls = without.over_ssl_request(&server).unwrap();
    converse(&mut tls);
    assert!(log_of(&server, 2).client_cert.is_none());
}

#[test]
fn bad_server_certificates_fail_verification() {
    let cases = [
        (ServerCert::Expired, "certificate expired"),
        (ServerCert::WrongHost, "not valid for name"),
        (ServerCert::OtherCa, "UnknownIssuer"),
    ];
    let server = FakeTlsServer::start_with(fresh_files(), move |n| {
        TlsScript::new().server_cert(cases[n % 3].0)
    })
    .unwrap();
    let client = Client::new(server.tls());
    for (i, (_, what)) in cases.iter().enumerate() {
        let err = client.over_ssl_request(&server).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains(what), "{i}: {err}");
        let log = log_of(&server, i);
        assert!(!log.handshake_done, "{i}");
    }
}

#[test]
fn drop_mid_handshake_does_not_hang() {
    let server = FakeTlsServer::start(TlsScript::new()).unwrap();
    let mut tcp = connect(&server);
    tcp.write_all(&frontend::ssl_request()).unwrap();
    assert_eq!(read_n(&mut tcp, 1), b"S");
    // The ClientHello never comes.
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    assert_eq!(
        tcp.read_to_end(&mut rest).unwrap(),
        0,
        "socket not closed by drop"
    );
}

/// Fresh certificates for `FakeTlsServer::start_with`.
fn fresh_files() -> TlsFiles {
    testkit::TlsSetup::new().generate().unwrap()
}
