//! Test certificates made at run time (never committed): a CA, server certificates good and
//! bad, a client certificate, and its key encrypted with a password, all as PEM files.
//!
//! ```no_run
//! let files = pg_throwaway::tls::TlsSetup::new().generate()?;
//! println!("trust {} and connect to localhost", files.ca_cert().display());
//! # Ok::<(), pg_throwaway::Error>(())
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, ErrorKind, Result};

/// The host name the [`ServerCert::WrongHost`] certificate is made for unless
/// [`TlsSetup::wrong_host_name`] says otherwise.
pub const DEFAULT_WRONG_HOST_NAME: &str = "db.example.invalid";
/// The password of the encrypted client key unless [`TlsSetup::key_password`] says otherwise.
pub const DEFAULT_KEY_PASSWORD: &str = "ioxide-key-secret";
/// The client certificate's CN when a standalone [`TlsSetup::generate`] is not told a role.
pub const DEFAULT_CLIENT_USER: &str = "ioxide";
/// The names (SANs) of every server certificate but [`ServerCert::WrongHost`].
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// PBKDF2-SHA256 rounds of the encrypted client key (OpenSSL's default).
const PBKDF2_ROUNDS: u32 = 2048;

/// The key type of every certificate made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256, signed with SHA-256 (made in-process, fast).
    #[default]
    EcdsaP256,
    /// RSA 2048, signed with PKCS#1 v1.5 SHA-256. The keys come from the `openssl` CLI
    /// (`ring` cannot generate RSA keys), about 0.1 s each.
    Rsa2048,
}

/// Which server certificate (and key) a server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ServerCert {
    /// Signed by the CA, names `localhost`, `127.0.0.1`, `::1`, valid for ten years.
    #[default]
    Valid,
    /// As `Valid`, but it expired yesterday (valid from 30 days ago until 1 day ago).
    Expired,
    /// Signed by the CA, valid, but named only for [`TlsSetup::wrong_host_name`]
    /// (default `db.example.invalid`).
    WrongHost,
    /// Names as `Valid`, but signed by an unrelated CA ([`TlsFiles::other_ca_cert`]).
    OtherCa,
}

impl ServerCert {
    /// Every variant, in declaration order.
    pub const ALL: [ServerCert; 4] = [
        ServerCert::Valid,
        ServerCert::Expired,
        ServerCert::WrongHost,
        ServerCert::OtherCa,
    ];

    fn stem(self) -> &'static str {
        match self {
            ServerCert::Valid => "server",
            ServerCert::Expired => "server-expired",
            ServerCert::WrongHost => "server-wrong-host",
            ServerCert::OtherCa => "server-other-ca",
        }
    }
}

/// What certificates to make, and (for a cluster) which server certificate to present.
///
/// Default: ECDSA P-256 keys, client CN = the cluster's role (or `ioxide` standalone),
/// wrong-host name `db.example.invalid`, key password `ioxide-key-secret`, the
/// [`ServerCert::Valid`] certificate presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetup {
    key_algorithm: KeyAlgorithm,
    client_user: Option<String>,
    wrong_host_name: String,
    key_password: String,
    server_cert: ServerCert,
}

impl Default for TlsSetup {
    fn default() -> Self {
        Self {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            client_user: None,
            wrong_host_name: DEFAULT_WRONG_HOST_NAME.to_owned(),
            key_password: DEFAULT_KEY_PASSWORD.to_owned(),
            server_cert: ServerCert::Valid,
        }
    }
}

impl TlsSetup {
    /// The defaults (same as `TlsSetup::default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The key type of every certificate (default [`KeyAlgorithm::EcdsaP256`]).
    pub fn key_algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.key_algorithm = algorithm;
        self
    }

    /// The client certificate's CN, i.e. the role `cert` authentication logs in as
    /// (default: the cluster's role; `ioxide` for [`TlsSetup::generate`]).
    pub fn client_user(mut self, user: impl Into<String>) -> Self {
        self.client_user = Some(user.into());
        self
    }

    /// The only name (a DNS name or an IP address) in the [`ServerCert::WrongHost`]
    /// certificate (default `db.example.invalid`).
    pub fn wrong_host_name(mut self, name: impl Into<String>) -> Self {
        self.wrong_host_name = name.into();
        self
    }

    /// The password of [`TlsFiles::client_key_encrypted`] (default `ioxide-key-secret`).
    pub fn key_password(mut self, password: impl Into<String>) -> Self {
        self.key_password = password.into();
        self
    }

    /// Which server certificate a cluster presents at start (default [`ServerCert::Valid`];
    /// change it later with `Cluster::set_server_cert`). Ignored by [`TlsSetup::generate`].
    pub fn server_cert(mut self, cert: ServerCert) -> Self {
        self.server_cert = cert;
        self
    }

    /// The server certificate a cluster presents at start.
    pub fn presented(&self) -> ServerCert {
        self.server_cert
    }

    /// Makes every certificate in a fresh temp directory, deleted when the last clone of
    /// the returned [`TlsFiles`] is dropped.
    ///
    /// # Errors
    /// [`ErrorKind::Certificate`] if a certificate cannot be made (e.g. a bad
    /// `wrong_host_name`, or no `openssl` CLI for RSA keys); [`ErrorKind::Io`] if a file
    /// cannot be written.
    pub fn generate(&self) -> Result<TlsFiles> {
        let dir = tempfile::Builder::new()
            .prefix("pg-throwaway-tls-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir for test certificates", e))?;
        let mut files = self.generate_in(dir.path())?;
        files.guard = Some(Arc::new(dir));
        Ok(files)
    }

    /// Makes every certificate into `dir` (created if missing; files are overwritten).
    /// Keys are written with mode 0600, certificates 0644.
    ///
    /// # Errors
    /// As [`TlsSetup::generate`].
    pub fn generate_in(&self, dir: &Path) -> Result<TlsFiles> {
        let user = self.client_user.as_deref().unwrap_or(DEFAULT_CLIENT_USER);
        self.make(dir, user)
    }

    pub(crate) fn client_user_or<'a>(&'a self, role: &'a str) -> &'a str {
        self.client_user.as_deref().unwrap_or(role)
    }

    pub(crate) fn make(&self, dir: &Path, client_user: &str) -> Result<TlsFiles> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let files = TlsFiles::layout(dir, self, client_user);
        let alg = self.key_algorithm;
        let now = unix_now();
        let valid = (now - DAY, now + 3650 * DAY);
        let expired = (now - 30 * DAY, now - DAY);

        let (ca, ca_key_pem) = make_ca("pg-throwaway test CA", alg)?;
        write_pem(&files.ca_cert, &ca.cert_pem, false)?;
        write_pem(&files.ca_key, &ca_key_pem, true)?;
        let (other_ca, _) = make_ca("pg-throwaway unrelated CA", alg)?;
        write_pem(&files.other_ca_cert, &other_ca.cert_pem, false)?;

        let names: Vec<String> = SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect();
        for which in ServerCert::ALL {
            let (issuer, names, validity) = match which {
                ServerCert::Valid => (&ca, names.clone(), valid),
                ServerCert::Expired => (&ca, names.clone(), expired),
                ServerCert::WrongHost => (&ca, vec![self.wrong_host_name.clone()], valid),
                ServerCert::OtherCa => (&other_ca, names.clone(), valid),
            };
            let cn = names.first().cloned().unwrap_or_default();
            let leaf = make_leaf(issuer, names, &cn, Role::Server, validity, alg)
                .map_err(|e| e.with_detail(format!("(server certificate {which:?})")))?;
            let (cert, key) = files.server_files(which);
            write_pem(cert, &leaf.cert_pem, false)?;
            write_pem(key, &leaf.key.serialize_pem(), true)?;
        }

        let client = make_leaf(&ca, Vec::new(), client_user, Role::Client, valid, alg)?;
        write_pem(&files.client_cert, &client.cert_pem, false)?;
        write_pem(&files.client_key, &client.key.serialize_pem(), true)?;
        let encrypted = encrypt_key(client.key.serialized_der(), &self.key_password)?;
        write_pem(&files.client_key_encrypted, &encrypted, true)?;

        let stranger = make_leaf(&other_ca, Vec::new(), client_user, Role::Client, valid, alg)?;
        write_pem(&files.other_client_cert, &stranger.cert_pem, false)?;
        write_pem(&files.other_client_key, &stranger.key.serialize_pem(), true)?;
        Ok(files)
    }
}

/// The PEM files [`TlsSetup`] made, by path. Keys are unencrypted PKCS#8
/// (`-----BEGIN PRIVATE KEY-----`) except [`TlsFiles::client_key_encrypted`].
///
/// Cloning is cheap; a standalone set's directory is deleted when the last clone drops (a
/// cluster's set lives and dies with the cluster).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    dir: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    other_ca_cert: PathBuf,
    servers: Vec<(ServerCert, PathBuf, PathBuf)>,
    client_cert: PathBuf,
    client_key: PathBuf,
    client_key_encrypted: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
    client_user: String,
    wrong_host_name: String,
    key_password: String,
    key_algorithm: KeyAlgorithm,
    guard: Option<Arc<tempfile::TempDir>>,
}

impl TlsFiles {
    fn layout(dir: &Path, setup: &TlsSetup, client_user: &str) -> Self {
        let p = |name: &str| dir.join(name);
        Self {
            dir: dir.to_owned(),
            ca_cert: p("ca.crt"),
            ca_key: p("ca.key"),
            other_ca_cert: p("other-ca.crt"),
            servers: ServerCert::ALL
                .iter()
                .map(|&w| {
                    (
                        w,
                        p(&format!("{}.crt", w.stem())),
                        p(&format!("{}.key", w.stem())),
                    )
                })
                .collect(),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            client_key_encrypted: p("client-encrypted.key"),
            other_client_cert: p("client-other-ca.crt"),
            other_client_key: p("client-other-ca.key"),
            client_user: client_user.to_owned(),
            wrong_host_name: setup.wrong_host_name.clone(),
            key_password: setup.key_password.clone(),
            key_algorithm: setup.key_algorithm,
            guard: None,
        }
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (`ca.crt`): what a client trusts (`sslrootcert`), and the
    /// server's `ssl_ca_file` for client certificates.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The CA's private key (`ca.key`), should a test want to sign more.
    pub fn ca_key(&self) -> &Path {
        &self.ca_key
    }

    /// An unrelated CA (`other-ca.crt`) that signed [`ServerCert::OtherCa`] and
    /// [`TlsFiles::other_client_cert`]; trusting it instead of [`TlsFiles::ca_cert`] makes
    /// the normal server certificate fail verification.
    pub fn other_ca_cert(&self) -> &Path {
        &self.other_ca_cert
    }

    /// The certificate of `which` server certificate (`server*.crt`).
    pub fn server_cert(&self, which: ServerCert) -> &Path {
        self.server_files(which).0
    }

    /// The private key of `which` server certificate (`server*.key`).
    pub fn server_key(&self, which: ServerCert) -> &Path {
        self.server_files(which).1
    }

    fn server_files(&self, which: ServerCert) -> (&Path, &Path) {
        let i = ServerCert::ALL
            .iter()
            .position(|&w| w == which)
            .unwrap_or(0);
        let (_, cert, key) = &self.servers[i];
        (cert, key)
    }

    /// The client certificate (`client.crt`, CN = [`TlsFiles::client_user`]), signed by
    /// the CA: what `cert` authentication accepts.
    pub fn client_cert(&self) -> &Path {
        &self.client_cert
    }

    /// The client certificate's key, unencrypted PKCS#8 (`client.key`, mode 0600).
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The same client key as encrypted PKCS#8 (`client-encrypted.key`,
    /// `-----BEGIN ENCRYPTED PRIVATE KEY-----`, PBES2: PBKDF2-HMAC-SHA256 2048 rounds +
    /// AES-256-CBC), password [`TlsFiles::key_password`]. libpq opens it with
    /// `sslpassword`; in Rust, `pkcs8` (features `encryption`, `pem`) decrypts it.
    pub fn client_key_encrypted(&self) -> &Path {
        &self.client_key_encrypted
    }

    /// The password of [`TlsFiles::client_key_encrypted`].
    pub fn key_password(&self) -> &str {
        &self.key_password
    }

    /// A client certificate with the same CN signed by the unrelated CA
    /// (`client-other-ca.crt`): a server trusting only the CA refuses it.
    pub fn other_client_cert(&self) -> &Path {
        &self.other_client_cert
    }

    /// The key of [`TlsFiles::other_client_cert`] (`client-other-ca.key`).
    pub fn other_client_key(&self) -> &Path {
        &self.other_client_key
    }

    /// The client certificate's CN (the role `cert` authentication logs in as).
    pub fn client_user(&self) -> &str {
        &self.client_user
    }

    /// The only name in the [`ServerCert::WrongHost`] certificate.
    pub fn wrong_host_name(&self) -> &str {
        &self.wrong_host_name
    }

    /// The key type of every certificate.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// The files a server reads: the CA and every server certificate and key.
    pub(crate) fn server_side_files(&self) -> Vec<&Path> {
        let mut all: Vec<&Path> = vec![&self.ca_cert];
        for (_, cert, key) in &self.servers {
            all.push(cert);
            all.push(key);
        }
        all
    }
}

const DAY: Duration = Duration::from_secs(86_400);

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Sets the validity period, as times since the Unix epoch.
fn set_validity(params: &mut CertificateParams, from: Duration, until: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + from;
    params.not_after = epoch + until;
}

fn cert_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Certificate, format!("{what}: {e}"))
}

/// A certificate (PEM) with its key pair and, for a CA, the means to sign.
struct Made {
    cert_pem: String,
    key: KeyPair,
    params: CertificateParams,
}

#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

fn make_ca(cn: &str, alg: KeyAlgorithm) -> Result<(Made, String)> {
    let key = new_key(alg)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = unix_now();
    set_validity(&mut params, now - DAY, now + 3650 * DAY);
    let cert = params
        .self_signed(&key)
        .map_err(|e| cert_error(&format!("signing the CA {cn:?}"), e))?;
    let key_pem = key.serialize_pem();
    Ok((
        Made {
            cert_pem: cert.pem(),
            key,
            params,
        },
        key_pem,
    ))
}

fn make_leaf(
    ca: &Made,
    names: Vec<String>,
    cn: &str,
    role: Role,
    (from, until): (Duration, Duration),
    alg: KeyAlgorithm,
) -> Result<Made> {
    let key = new_key(alg)?;
    let mut params = CertificateParams::new(names.clone())
        .map_err(|e| cert_error(&format!("certificate names {names:?}"), e))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if alg == KeyAlgorithm::Rsa2048 {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    set_validity(&mut params, from, until);
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| cert_error(&format!("signing the certificate for {cn:?}"), e))?;
    Ok(Made {
        cert_pem: cert.pem(),
        key,
        params,
    })
}

fn new_key(alg: KeyAlgorithm) -> Result<KeyPair> {
    match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| cert_error("generating an ECDSA P-256 key", e)),
        KeyAlgorithm::Rsa2048 => {
            let out = Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .map_err(|e| {
                    cert_error(
                        "running `openssl genpkey` for KeyAlgorithm::Rsa2048 (is the openssl CLI installed?)",
                        e,
                    )
                })?;
            if !out.status.success() {
                return Err(cert_error(
                    "`openssl genpkey` for KeyAlgorithm::Rsa2048",
                    format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
                ));
            }
            let pem = String::from_utf8_lossy(&out.stdout);
            KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| cert_error("loading the RSA key from `openssl genpkey`", e))
        }
    }
}

/// PKCS#8 DER → `ENCRYPTED PRIVATE KEY` PEM (PBES2, PBKDF2-SHA256, AES-256-CBC).
fn encrypt_key(pkcs8_der: &[u8], password: &str) -> Result<String> {
    use pkcs8::pkcs5::pbes2;
    let info = pkcs8::PrivateKeyInfo::try_from(pkcs8_der)
        .map_err(|e| cert_error("parsing the client key as PKCS#8", e))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    for chunk in salt.chunks_mut(8).chain(iv.chunks_mut(8)) {
        chunk.copy_from_slice(&crate::cluster::random_u64().to_le_bytes());
    }
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, &iv)
        .map_err(|e| cert_error("PBES2 parameters for the encrypted client key", e))?;
    let doc = info
        .encrypt_with_params(params, password)
        .map_err(|e| cert_error("encrypting the client key", e))?;
    let pem = doc
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .map_err(|e| cert_error("writing the encrypted client key as PEM", e))?;
    Ok(pem.to_string())
}

/// Writes `text` to `path` (replacing it) with mode 0600 for keys, 0644 otherwise.
fn write_pem(path: &Path, text: &str, secret: bool) -> Result<()> {
    let mode = if secret { 0o600 } else { 0o644 };
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    // The umask may have narrowed the mode; say it exactly.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
}
