//! TLS: the rustls client configuration built from the options (roots and the verifier each
//! `sslmode` asks for, client certificate, versions, ALPN, SNI), the session a connection
//! drives in memory over its ring operations, and the channel-binding data of SCRAM-PLUS.
//!
//! rustls never touches the socket here: ciphertext arrives by a ring receive into a buffer
//! of ours and is fed to [`TlsSession::decrypt`], and [`TlsSession::encrypt`] appends the
//! records for a batch of frontend messages to a buffer that one ring send writes out. So
//! TLS adds no thread, no blocking call and no extra wake-up: it is two in-memory passes
//! over the bytes the plaintext path moves anyway.

use std::cell::RefCell;
use std::fmt;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

use crate::options::{RootCert, SslCertMode, SslMode, TlsOptions, TlsVersion};
use crate::PgError;

/// The ALPN protocol name PostgreSQL 17+ expects (and requires for direct TLS).
pub(crate) const ALPN: &[u8] = b"postgresql";

/// The crypto provider: `ring`, with P-256 first among the key exchange groups
/// (bench/FINDINGS.md, "TLS: rustls API and crypto provider").
///
/// Only the first group gets a key share in the ClientHello. PostgreSQL up to 17 offers
/// only P-256 by default (`ssl_ecdh_curve = prime256v1`), and ring's default order starts
/// with P-384: every connection then took a HelloRetryRequest — a round trip more and
/// 0.3–0.4 ms more client CPU per handshake. X25519 and P-384 stay accepted.
///
/// rustls marks ring's default provider deprecated because it has no post-quantum key
/// exchange; measured, ring and aws-lc-rs tie on handshakes with this order and differ by
/// a few per cent on records, while aws-lc-rs adds 20–35 s to a clean build.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::ring::{default_provider, kx_group};
            let mut p = default_provider();
            p.kx_groups = vec![kx_group::SECP256R1, kx_group::X25519, kx_group::SECP384R1];
            Arc::new(p)
        })
        .clone()
}

/// The client configuration of one `PgOptions` (and its clones), built on first use.
#[derive(Clone, Default)]
pub(crate) struct ConfigCache(Arc<OnceLock<Arc<ClientConfig>>>);

impl ConfigCache {
    pub(crate) fn get_or_build(&self, t: &TlsOptions) -> Result<Arc<ClientConfig>, PgError> {
        if let Some(c) = self.0.get() {
            return Ok(c.clone());
        }
        let built = Arc::new(build_config(t)?);
        Ok(self.0.get_or_init(|| built).clone())
    }
}

fn home_file(rel: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join(rel))
}

fn file_error(field: &str, path: &Path, what: impl fmt::Display) -> PgError {
    PgError::config(field, Some(&path.display().to_string()), what.to_string())
}

fn load_roots(path: &Path) -> Result<RootCertStore, PgError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error("sslrootcert", path, format!("cannot read: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| file_error("sslrootcert", path, format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| file_error("sslrootcert", path, format!("bad certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(file_error("sslrootcert", path, "holds no PEM certificate"));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, PgError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(PgError::config(
            "sslrootcert",
            Some("system"),
            format!("the platform's trusted roots could not be loaded: {why}"),
        ));
    }
    Ok(roots)
}

fn load_crls(t: &TlsOptions) -> Result<Vec<CertificateRevocationListDer<'static>>, PgError> {
    let mut files = Vec::new();
    if let Some(f) = &t.crl {
        files.push(("sslcrl", f.clone()));
    }
    if let Some(dir) = &t.crl_dir {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| file_error("sslcrldir", dir, format!("cannot read: {e}")))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                files.push(("sslcrldir", entry.path()));
            }
        }
    }
    let mut crls = Vec::new();
    for (field, path) in files {
        let iter = CertificateRevocationListDer::pem_file_iter(&path)
            .map_err(|e| file_error(field, &path, format!("cannot read: {e}")))?;
        for crl in iter {
            crls.push(crl.map_err(|e| file_error(field, &path, format!("bad PEM: {e}")))?);
        }
    }
    Ok(crls)
}

/// libpq's rule: a private key readable by group or others is refused (0640 is allowed for
/// a root-owned file, as system-managed keys are).
fn check_key_permissions(path: &Path) -> Result<(), PgError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| file_error("sslkey", path, format!("cannot read: {e}")))?;
    let mode = meta.mode() & 0o777;
    let ok = mode & 0o077 == 0 || (meta.uid() == 0 && mode & 0o037 == 0);
    if !ok {
        return Err(file_error(
            "sslkey",
            path,
            format!(
                "the private key file has group or world access (mode {mode:o}): it must be \
                 u=rw (0600) or less, or u=rw,g=r (0640) or less if owned by root"
            ),
        ));
    }
    Ok(())
}

fn load_key(path: &Path, password: Option<&str>) -> Result<PrivateKeyDer<'static>, PgError> {
    check_key_permissions(path)?;
    let pem =
        std::fs::read(path).map_err(|e| file_error("sslkey", path, format!("cannot read: {e}")))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(file_error(
            "sslkey",
            path,
            "is encrypted in the legacy OpenSSL format, which is not supported: convert it \
             with `openssl pkcs8 -topk8 -v2 aes-256-cbc` (then give sslpassword) or decrypt it",
        ));
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(password) = password else {
            return Err(file_error(
                "sslkey",
                path,
                "is encrypted: give its password as sslpassword",
            ));
        };
        let (_, der) = pkcs8::der::pem::decode_vec(&pem)
            .map_err(|e| file_error("sslkey", path, format!("bad PEM: {e}")))?;
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
            .map_err(|e| file_error("sslkey", path, format!("bad encrypted key: {e}")))?;
        let doc = info.decrypt(password.as_bytes()).map_err(|_| {
            file_error(
                "sslkey",
                path,
                "could not be decrypted: wrong sslpassword, or an unsupported cipher",
            )
        })?;
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            doc.as_bytes().to_vec(),
        )));
    }
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_error("sslkey", path, format!("holds no usable private key: {e}")))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error("sslcert", path, format!("cannot read: {e}")))?
        .collect();
    let certs = certs.map_err(|e| file_error("sslcert", path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("sslcert", path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The client certificate and key to offer, if any: the configured files, else libpq's
/// defaults `~/.postgresql/postgresql.crt` / `.key` when the certificate exists.
fn client_identity(
    t: &TlsOptions,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, PgError> {
    if t.cert_mode == SslCertMode::Disable {
        return Ok(None);
    }
    let cert = match &t.cert {
        Some(c) => c.clone(),
        None => match home_file("postgresql.crt").filter(|p| p.exists()) {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    let key = match &t.key {
        Some(k) => k.clone(),
        None => home_file("postgresql.key").ok_or_else(|| {
            PgError::config("sslkey", None, "sslcert is set but no key: give sslkey")
        })?,
    };
    Ok(Some((
        load_certs(&cert)?,
        load_key(&key, t.password.as_deref())?,
    )))
}

/// Builds the rustls configuration for the TLS settings.
fn build_config(t: &TlsOptions) -> Result<ClientConfig, PgError> {
    let provider = provider();
    let mode = t.effective_mode();
    let roots = match &t.root_cert {
        RootCert::System => Some(system_roots()?),
        RootCert::File(p) => Some(load_roots(p)?),
        RootCert::Default => match home_file("root.crt") {
            Some(p) if p.exists() => Some(load_roots(&p)?),
            p if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                let shown = p.map_or_else(
                    || "~/.postgresql/root.crt".to_owned(),
                    |p| p.display().to_string(),
                );
                return Err(PgError::config(
                    "sslrootcert",
                    None,
                    format!(
                        "sslmode={mode} needs trusted roots, and the root certificate file \
                         {shown} does not exist: give sslrootcert=<file>, use \
                         sslrootcert=system for the platform's roots, or use sslmode=require \
                         to skip verification"
                    ),
                ));
            }
            _ => None,
        },
    };
    let webpki = match roots {
        Some(roots) => {
            let crls = load_crls(t)?;
            let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                .build()
                .map_err(|e| PgError::config("sslrootcert", None, e.to_string()))?;
            Some(v)
        }
        None => None,
    };
    let verifier = Arc::new(Verifier {
        webpki,
        check_name: mode == SslMode::VerifyFull,
        algs: provider.signature_verification_algorithms,
    });
    let min = t.min_version.unwrap_or(TlsVersion::Tls12);
    let max = t.max_version.unwrap_or(TlsVersion::Tls13);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| PgError::config("ssl_min_protocol_version", None, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_identity(t)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| PgError::config("sslkey", None, format!("unusable client key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_sni = t.sni();
    Ok(config)
}

/// What `sslmode` checks of the server certificate: nothing (`require` without roots), the
/// chain (`verify-ca`, and weaker modes when a root file exists), or chain and name
/// (`verify-full`). The handshake signature is always verified: it proves the server holds
/// the certificate's key, which channel binding relies on.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The name is checked last, after the chain: for verify-ca a wrong name is fine.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The name the server certificate is checked against (and sent as SNI when it is a DNS
/// name): the host as configured, else the address connected to.
pub(crate) fn server_name(
    host: &str,
    fallback: Option<IpAddr>,
) -> Result<ServerName<'static>, PgError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    match ServerName::try_from(host.to_owned()) {
        Ok(n) => Ok(n),
        Err(_) => match fallback {
            Some(ip) => Ok(ServerName::IpAddress(ip.into())),
            None => Err(PgError::config(
                "host",
                Some(host),
                "is not a valid DNS name for TLS",
            )),
        },
    }
}

/// A TLS failure, with what the driver was doing, a plain-words reason for the common
/// certificate errors, and the rustls error as the source.
pub(crate) fn tls_error(context: &str, e: rustls::Error) -> PgError {
    use rustls::AlertDescription as A;
    let why = match &e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "the server certificate is not signed by a trusted root (sslrootcert)"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server certificate has expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server certificate is not valid yet"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server certificate is not issued for the host (sslmode=verify-full)"
            }
            CertificateError::Revoked => "the server certificate is revoked (sslcrl)",
            CertificateError::BadSignature => "the server certificate's signature is bad",
            _ => "the server certificate was refused",
        },
        rustls::Error::AlertReceived(a) => match a {
            A::CertificateRequired => "the server requires a client certificate (sslcert/sslkey)",
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::DecryptError => {
                "the server refused the TLS session (sent an alert: a refused client \
                 certificate or a handshake it could not verify)"
            }
            A::NoApplicationProtocol => {
                "the server refused the ALPN protocol postgresql (sslnegotiation=direct needs \
                 PostgreSQL 17+)"
            }
            A::ProtocolVersion => {
                "the server does not speak an allowed TLS version (ssl_min_protocol_version, \
                 ssl_max_protocol_version)"
            }
            A::HandshakeFailure => "the server found no TLS parameters in common",
            _ => "the server sent a TLS alert",
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server sent bytes that are not valid TLS"
        }
        rustls::Error::DecryptError => "a TLS record failed to decrypt (corrupt or forged)",
        rustls::Error::PeerIncompatible(_) => "the server's TLS is incompatible",
        rustls::Error::PeerMisbehaved(_) => "the server broke the TLS protocol",
        _ => "TLS failed",
    };
    PgError::tls(format!("{context}: {why}"), e)
}

/// The TLS session of one connection. Held in a `RefCell`, borrowed only for in-memory
/// work (never across an await), by the writer (encrypt) and the reader (decrypt).
pub(crate) struct TlsSession {
    conn: RefCell<ClientConnection>,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.conn.borrow();
        f.debug_struct("TlsSession")
            .field("version", &c.protocol_version())
            .field("suite", &c.negotiated_cipher_suite().map(|s| s.suite()))
            .finish()
    }
}

/// What a decryption produced besides plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decrypted {
    /// More may come.
    Open,
    /// The server sent close_notify: no more data.
    Closed,
}

impl TlsSession {
    /// A client session for `name` (checked and sent as SNI per the configuration).
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsSession, PgError> {
        let conn = ClientConnection::new(config, name).map_err(|e| tls_error("starting TLS", e))?;
        Ok(TlsSession {
            conn: RefCell::new(conn),
        })
    }

    /// Whether the handshake is still going on.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.borrow().is_handshaking()
    }

    /// Whether TLS data (handshake messages, alerts, a KeyUpdate answer) waits to be sent.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    /// Appends every pending TLS record to `out`.
    pub(crate) fn take_output(&self, out: &mut Vec<u8>) {
        let mut c = self.conn.borrow_mut();
        while c.wants_write() {
            // Writing into a Vec cannot fail.
            if c.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Encrypts `plain` and appends its records (after any pending TLS data) to `out`.
    pub(crate) fn encrypt(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), PgError> {
        let mut c = self.conn.borrow_mut();
        let mut rest = plain;
        while !rest.is_empty() {
            // The writer buffers at most its limit (64 KiB) of records: take them out after
            // each piece so a large batch goes through whole.
            let n = c
                .writer()
                .write(rest)
                .map_err(|e| PgError::io("encrypting for the server", e))?;
            while c.wants_write() {
                if c.write_tls(out).is_err() {
                    break;
                }
            }
            if n == 0 {
                return Err(PgError::io(
                    "encrypting for the server",
                    std::io::ErrorKind::WriteZero.into(),
                ));
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Feeds `cipher` (all of it) to the session and appends the plaintext it yields to
    /// `plain`. Plaintext grows by at most the ciphertext consumed, so memory stays bounded
    /// by the receive size.
    pub(crate) fn decrypt(
        &self,
        mut cipher: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<Decrypted, PgError> {
        let mut c = self.conn.borrow_mut();
        let mut state = Decrypted::Open;
        loop {
            if !cipher.is_empty() {
                let n = c
                    .read_tls(&mut cipher)
                    .map_err(|e| PgError::io("receiving TLS records", e))?;
                if n == 0 {
                    // Not expected (the plaintext is drained every round), but never spin.
                    return Err(PgError::protocol("the TLS session took no more bytes"));
                }
            }
            let io = c
                .process_new_packets()
                .map_err(|e| tls_error("reading from the server", e))?;
            let n = io.plaintext_bytes_to_read();
            if n > 0 {
                let at = plain.len();
                plain.resize(at + n, 0);
                c.reader()
                    .read_exact(&mut plain[at..])
                    .map_err(|e| PgError::io("decrypting", e))?;
            }
            if io.peer_has_closed() {
                state = Decrypted::Closed;
            }
            if cipher.is_empty() {
                return Ok(state);
            }
        }
    }

    /// The server's certificate (DER), or nothing if it sent none; its
    /// `tls-server-end-point` hash ([`end_point_hash`]) is what SCRAM-SHA-256-PLUS binds to.
    pub(crate) fn server_cert(&self) -> Vec<u8> {
        let c = self.conn.borrow();
        c.peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| cert.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// The ALPN protocol the server selected.
    pub(crate) fn alpn(&self) -> Option<Vec<u8>> {
        self.conn.borrow().alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Version and cipher suite, for logs.
    pub(crate) fn describe(&self) -> String {
        let c = self.conn.borrow();
        format!(
            "{:?} {:?}",
            c.protocol_version(),
            c.negotiated_cipher_suite().map(|s| s.suite())
        )
    }
}

/// RFC 5929's `tls-server-end-point` for a DER certificate: the certificate hashed with
/// its signature's hash (SHA-256 for MD5 and SHA-1), or `None` when its signature algorithm
/// has no such hash (RSASSA-PSS, Ed25519: the server cannot bind to those either).
pub(crate) fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let oid = cert.signature_algorithm.oid.to_string();
    let bits = match oid.as_str() {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1, ecdsa-with-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => 256,
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => 384,
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => 512,
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(der).to_vec(),
        384 => sha2::Sha384::digest(der).to_vec(),
        _ => sha2::Sha512::digest(der).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_end_point_hash_of_an_ecdsa_p256_certificate_is_its_sha256() {
        let files = testkit::TlsSetup::new().generate().unwrap();
        let der =
            CertificateDer::from_pem_file(files.server_cert(testkit::ServerCert::Valid)).unwrap();
        let hash = end_point_hash(der.as_ref()).unwrap();
        assert_eq!(hash, sha2::Sha256::digest(der.as_ref()).to_vec());
    }

    #[test]
    fn no_end_point_hash_for_bytes_that_are_not_a_certificate() {
        assert_eq!(end_point_hash(b"not a certificate"), None);
        assert_eq!(end_point_hash(&[]), None);
    }

    #[test]
    fn a_key_readable_by_others_is_refused_naming_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let files = testkit::TlsSetup::new().generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::copy(files.client_key(), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&key, None).unwrap_err();
        assert_eq!(e.config_field(), Some("sslkey"), "{e}");
        assert!(e.to_string().contains("group or world access"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        load_key(&key, None).unwrap();
    }
}
