//! TLS for `pgload --tls` and `pgconnect --tls`: every driver on rustls with the `ring`
//! provider, trusting the CA in `PGSSLROOTCERT` (or `--sslrootcert`) and checking the server
//! certificate fully (chain and host name, libpq's `verify-full`), so the drivers do the same
//! work per handshake and per record:
//!
//! * ioxide-pg: `ssl_mode(VerifyFull)` and `ssl_root_cert(RootCert::File(ca))`;
//! * tokio-postgres and deadpool-postgres: `tokio-postgres-rustls` with the [`client_config`]
//!   built here, `sslmode=require` (rustls's WebPKI verifier checks chain and name);
//! * sqlx: its `tls-rustls-ring-webpki` feature, `PgSslMode::VerifyFull` with
//!   `ssl_root_cert(ca)` (it adds the CA to the webpki roots).
//!
//! Without `--tls` every driver is forced to plaintext (ioxide-pg `sslmode=disable`,
//! tokio-postgres `NoTls`, sqlx `PgSslMode::Disable`), whatever `PGSSLMODE` says, so a TLS
//! cluster serves both halves of a plaintext/TLS comparison. Either way each driver asks the
//! server once at start ([`CHECK_SQL`]) whether its connection is encrypted and the run
//! aborts if the answer is not what was asked for.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The variable naming the CA file (libpq's).
pub const ROOT_CERT_VAR: &str = "PGSSLROOTCERT";

/// One text column: `ssl version cipher` of this session, e.g.
/// `true TLSv1.3 TLS_AES_256_GCM_SHA384` or `false - -`.
pub const CHECK_SQL: &str = "SELECT ssl::text || ' ' || coalesce(version, '-') || ' ' || \
     coalesce(cipher, '-') FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// What the server says about one session's encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCheck {
    /// Whether the session is encrypted.
    pub ssl: bool,
    /// `TLSv1.3`, … (`-` without TLS).
    pub version: String,
    /// The cipher suite (`-` without TLS).
    pub cipher: String,
}

impl TlsCheck {
    /// Parses the answer to [`CHECK_SQL`].
    pub fn parse(s: &str) -> Result<TlsCheck, String> {
        let mut it = s.split_whitespace();
        let ssl = match it.next() {
            Some("true") => true,
            Some("false") => false,
            _ => return Err(format!("unexpected pg_stat_ssl answer: {s:?}")),
        };
        let version = it.next().unwrap_or("-").to_string();
        let cipher = it.next().unwrap_or("-").to_string();
        Ok(TlsCheck {
            ssl,
            version,
            cipher,
        })
    }

    /// Fails unless the session's encryption is what `--tls` asked for.
    pub fn expect(&self, tls: bool) -> Result<(), String> {
        match (tls, self.ssl) {
            (true, false) => Err(
                "--tls was given but the server reports this session unencrypted \
                 (pg_stat_ssl.ssl = false); a Unix-socket PGHOST never uses TLS"
                    .into(),
            ),
            (false, true) => Err(format!(
                "plaintext was asked for (no --tls) but the session is encrypted ({} {})",
                self.version, self.cipher
            )),
            _ => Ok(()),
        }
    }
}

/// The CA file: `flag` when given, else `PGSSLROOTCERT`.
pub fn root_cert(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    flag.or_else(|| {
        std::env::var_os(ROOT_CERT_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .ok_or_else(|| {
        format!(
            "--tls needs the CA of the server's certificate: {ROOT_CERT_VAR} or --sslrootcert \
             (BENCH_TLS=1 bench/cluster.sh sets {ROOT_CERT_VAR})"
        )
    })
}

/// The rustls configuration of the tokio-postgres family: the `ring` provider, TLS 1.2 and
/// 1.3, the CA in `ca` as the only root, no client certificate.
#[allow(deprecated)] // ring's default provider: deprecated for lacking post-quantum kx only.
pub fn client_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{ROOT_CERT_VAR} {}: cannot read: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{ROOT_CERT_VAR} {}: bad PEM: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{ROOT_CERT_VAR} {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{ROOT_CERT_VAR} {}: holds no certificate",
            ca.display()
        ));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("rustls: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_the_answer() {
        let on = TlsCheck::parse("true TLSv1.3 TLS_AES_256_GCM_SHA384").expect("valid");
        assert!(on.ssl);
        assert_eq!(
            (on.version.as_str(), on.cipher.as_str()),
            ("TLSv1.3", "TLS_AES_256_GCM_SHA384")
        );
        assert!(on.expect(true).is_ok());
        assert!(on.expect(false).is_err());
        let off = TlsCheck::parse("false - -").expect("valid");
        assert!(!off.ssl);
        assert!(off.expect(false).is_ok());
        assert!(off.expect(true).is_err());
        assert!(TlsCheck::parse("").is_err());
        assert!(TlsCheck::parse("t TLSv1.3 x").is_err());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let e = client_config(Path::new("/nonexistent/ca.crt")).expect_err("no file");
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
    }
}
