//! The TLS settings of [`PgOptions`](super::PgOptions), with libpq's names, values and
//! defaults: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslpassword`, `sslsni`,
//! `sslnegotiation`, `channel_binding`, `ssl_min_protocol_version`,
//! `ssl_max_protocol_version`, `sslcrl`, `sslcrldir`, `sslcertmode`, `sslcompression` and
//! `gssencmode`, and their environment variables.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::PgError;

/// libpq's `sslmode`: whether TLS is used and what is checked.
///
/// | mode | TLS | server certificate |
/// |---|---|---|
/// | `disable` | never | — |
/// | `allow` | only if a plaintext attempt is refused | checked as `verify-ca` when a root certificate file exists |
/// | `prefer` (default) | if the server accepts; plaintext otherwise | as `allow` |
/// | `require` | always | not checked, unless a root certificate file exists: then as `verify-ca` |
/// | `verify-ca` | always | signed by a trusted CA |
/// | `verify-full` | always | signed by a trusted CA and issued for the host |
///
/// Over a Unix socket TLS is never used, whatever the mode (as libpq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS if the server refuses the plaintext attempt.
    Allow,
    /// TLS if the server accepts it, plaintext otherwise. The default.
    #[default]
    Prefer,
    /// TLS or nothing.
    Require,
    /// TLS, and the server certificate must chain to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The name libpq uses.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SslMode {
    type Err = PgError;

    fn from_str(s: &str) -> Result<SslMode, PgError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(PgError::config(
                    "sslmode",
                    Some(s),
                    "must be disable, allow, prefer, require, verify-ca or verify-full",
                ))
            }
        })
    }
}

/// libpq's `sslnegotiation`: how TLS starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslNegotiation {
    /// An SSLRequest first; TLS after the server's `S`. Every server version. The default.
    #[default]
    Postgres,
    /// The TLS handshake at once, with ALPN `postgresql` (PostgreSQL 17+): one round trip
    /// less. Needs `sslmode=require` or stronger.
    Direct,
}

impl FromStr for SslNegotiation {
    type Err = PgError;

    fn from_str(s: &str) -> Result<SslNegotiation, PgError> {
        match s {
            "postgres" => Ok(SslNegotiation::Postgres),
            "direct" => Ok(SslNegotiation::Direct),
            _ => Err(PgError::config(
                "sslnegotiation",
                Some(s),
                "must be postgres or direct",
            )),
        }
    }
}

/// libpq's `channel_binding`: whether SCRAM binds the login to the TLS channel
/// (SCRAM-SHA-256-PLUS with `tls-server-end-point`), so that a man in the middle holding a
/// certificate the client accepted still cannot log in as the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when TLS is up and the server offers SCRAM-SHA-256-PLUS. The default.
    #[default]
    Prefer,
    /// Refuse any login that is not SCRAM-SHA-256-PLUS over TLS.
    Require,
}

impl FromStr for ChannelBinding {
    type Err = PgError;

    fn from_str(s: &str) -> Result<ChannelBinding, PgError> {
        match s {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            _ => Err(PgError::config(
                "channel_binding",
                Some(s),
                "must be disable, prefer or require",
            )),
        }
    }
}

/// libpq's `sslcertmode`: whether a client certificate is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslCertMode {
    /// Never send one, even if configured.
    Disable,
    /// Send one if configured and the server asks. The default.
    #[default]
    Allow,
}

impl FromStr for SslCertMode {
    type Err = PgError;

    fn from_str(s: &str) -> Result<SslCertMode, PgError> {
        match s {
            "disable" => Ok(SslCertMode::Disable),
            "allow" => Ok(SslCertMode::Allow),
            "require" => Err(PgError::config(
                "sslcertmode",
                Some(s),
                "require is not supported (rustls does not say whether the server asked for \
                 a certificate): use allow, and cert authentication on the server",
            )),
            _ => Err(PgError::config(
                "sslcertmode",
                Some(s),
                "must be disable, allow or require",
            )),
        }
    }
}

/// A TLS protocol version (`ssl_min_protocol_version`, `ssl_max_protocol_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    fn parse(field: &str, s: &str) -> Result<TlsVersion, PgError> {
        match s {
            "TLSv1.2" => Ok(TlsVersion::Tls12),
            "TLSv1.3" => Ok(TlsVersion::Tls13),
            "TLSv1" | "TLSv1.1" => Err(PgError::config(
                field,
                Some(s),
                "TLS 1.0 and 1.1 are not supported (insecure): use TLSv1.2 or TLSv1.3",
            )),
            _ => Err(PgError::config(
                field,
                Some(s),
                "must be TLSv1.2 or TLSv1.3",
            )),
        }
    }
}

/// Where trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RootCert {
    /// libpq's default: `~/.postgresql/root.crt` when it exists.
    #[default]
    Default,
    /// A PEM file of one or more certificates.
    File(PathBuf),
    /// The platform's trusted roots (`sslrootcert=system`): implies `verify-full` unless
    /// `sslmode` says otherwise, and refuses a weaker `sslmode`, as libpq 16+.
    System,
}

/// The TLS settings, grouped; see the module docs.
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    /// `None`: not set (`prefer`, or `verify-full` with `sslrootcert=system`).
    pub(crate) mode: Option<SslMode>,
    pub(crate) root_cert: RootCert,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) password: Option<String>,
    pub(crate) sni: Option<bool>,
    pub(crate) negotiation: SslNegotiation,
    pub(crate) channel_binding: ChannelBinding,
    pub(crate) min_version: Option<TlsVersion>,
    pub(crate) max_version: Option<TlsVersion>,
    pub(crate) crl: Option<PathBuf>,
    pub(crate) crl_dir: Option<PathBuf>,
    pub(crate) cert_mode: SslCertMode,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("sslmode", &self.effective_mode())
            .field("sslrootcert", &self.root_cert)
            .field("sslcert", &self.cert)
            .field("sslkey", &self.key)
            .field("sslpassword", &self.password.as_ref().map(|_| "<redacted>"))
            .field("sslsni", &self.sni())
            .field("sslnegotiation", &self.negotiation)
            .field("channel_binding", &self.channel_binding)
            .field("ssl_min_protocol_version", &self.min_version)
            .field("ssl_max_protocol_version", &self.max_version)
            .field("sslcrl", &self.crl)
            .field("sslcrldir", &self.crl_dir)
            .field("sslcertmode", &self.cert_mode)
            .finish()
    }
}

/// The libpq environment variables of the TLS settings, with the key each one sets.
pub(crate) const ENV_VARS: [(&str, &str); 14] = [
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLSNI", "sslsni"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGSSLMINPROTOCOLVERSION", "ssl_min_protocol_version"),
    ("PGSSLMAXPROTOCOLVERSION", "ssl_max_protocol_version"),
    ("PGSSLCRL", "sslcrl"),
    ("PGSSLCRLDIR", "sslcrldir"),
    ("PGSSLCERTMODE", "sslcertmode"),
    ("PGSSLCOMPRESSION", "sslcompression"),
    ("PGGSSENCMODE", "gssencmode"),
];

fn flag(field: &str, s: &str) -> Result<bool, PgError> {
    match s.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(PgError::config(field, Some(s), "must be 0 or 1")),
    }
}

impl TlsOptions {
    /// The mode in force: the one set, else `verify-full` with `sslrootcert=system`, else
    /// `prefer`.
    pub(crate) fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (Some(m), _) => m,
            (None, RootCert::System) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        }
    }

    /// Whether SNI is sent (default yes; never for an IP address).
    pub(crate) fn sni(&self) -> bool {
        self.sni.unwrap_or(true)
    }

    /// Applies `key` if it is a TLS setting: `Ok(false)` when it is not one.
    pub(crate) fn apply(&mut self, key: &str, value: &str, label: &str) -> Result<bool, PgError> {
        let relabel = |e: PgError| {
            if e.config_field() == Some(label) {
                e
            } else {
                PgError::config(label, Some(value), strip_field(&e))
            }
        };
        let path = || -> Result<Option<PathBuf>, PgError> {
            Ok((!value.is_empty()).then(|| PathBuf::from(value)))
        };
        match key {
            "sslmode" => self.mode = Some(value.parse().map_err(relabel)?),
            "sslrootcert" => {
                self.root_cert = match value {
                    "" => RootCert::Default,
                    "system" => RootCert::System,
                    _ => RootCert::File(PathBuf::from(value)),
                }
            }
            "sslcert" => self.cert = path()?,
            "sslkey" => self.key = path()?,
            "sslpassword" => self.password = (!value.is_empty()).then(|| value.to_owned()),
            "sslsni" => self.sni = Some(flag(label, value)?),
            "sslnegotiation" => self.negotiation = value.parse().map_err(relabel)?,
            "channel_binding" => self.channel_binding = value.parse().map_err(relabel)?,
            "ssl_min_protocol_version" => {
                self.min_version = (!value.is_empty())
                    .then(|| TlsVersion::parse(label, value))
                    .transpose()?
            }
            "ssl_max_protocol_version" => {
                self.max_version = (!value.is_empty())
                    .then(|| TlsVersion::parse(label, value))
                    .transpose()?
            }
            "sslcrl" => self.crl = path()?,
            "sslcrldir" => self.crl_dir = path()?,
            "sslcertmode" => self.cert_mode = value.parse().map_err(relabel)?,
            // libpq itself no longer compresses (OpenSSL dropped it): 0 is what everyone gets.
            "sslcompression" => {
                if flag(label, value)? {
                    return Err(PgError::config(
                        label,
                        Some(value),
                        "TLS compression is not supported (it is insecure and no current \
                         server or libpq does it): use 0",
                    ));
                }
            }
            // No GSSAPI here: `prefer` (libpq's default) then means plaintext or TLS, as in a
            // libpq built without GSSAPI; `require` cannot be honoured.
            "gssencmode" => match value {
                "disable" | "prefer" => {}
                "require" => {
                    return Err(PgError::config(
                        label,
                        Some(value),
                        "GSSAPI encryption is not supported by ioxide-pg",
                    ))
                }
                _ => {
                    return Err(PgError::config(
                        label,
                        Some(value),
                        "must be disable, prefer or require",
                    ))
                }
            },
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// libpq's consistency rules between the settings.
    pub(crate) fn validate(&self) -> Result<(), PgError> {
        let mode = self.effective_mode();
        if self.root_cert == RootCert::System && mode != SslMode::VerifyFull {
            return Err(PgError::config(
                "sslmode",
                Some(mode.name()),
                "a weaker sslmode may not be used with sslrootcert=system (use verify-full)",
            ));
        }
        if self.negotiation == SslNegotiation::Direct && !mode.requires_tls() {
            return Err(PgError::config(
                "sslmode",
                Some(mode.name()),
                "a weaker sslmode may not be used with sslnegotiation=direct (use require, \
                 verify-ca or verify-full)",
            ));
        }
        if self.channel_binding == ChannelBinding::Require && mode == SslMode::Disable {
            return Err(PgError::config(
                "channel_binding",
                Some("require"),
                "channel binding needs TLS, but sslmode=disable",
            ));
        }
        if let (Some(min), Some(max)) = (self.min_version, self.max_version) {
            if min > max {
                return Err(PgError::config(
                    "ssl_min_protocol_version",
                    None,
                    "is above ssl_max_protocol_version",
                ));
            }
        }
        Ok(())
    }
}

/// The message of a config error without its "invalid field value:" prefix.
fn strip_field(e: &PgError) -> String {
    let s = e.to_string();
    match s.split_once(": ") {
        Some((_, msg)) => msg.to_owned(),
        None => s,
    }
}
