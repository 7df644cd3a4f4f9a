//! The startup and authentication state machine.
//!
//! ```text
//! start() ─► StartupMessage
//! Auth ──R Ok──────────────────────────────────────────────► Params
//!      ──R Cleartext/MD5 ─► PasswordMessage ─► AwaitOk ─R Ok─► Params
//!      ──R SASL ─► SASLInitialResponse ─► Scram ─R SASLContinue─► SASLResponse ─►
//!        ScramFinal ─R SASLFinal (server signature verified)─► AwaitOk ─R Ok─► Params
//! Params ──S ParameterStatus / K BackendKeyData── Params ──Z─► Ready(ServerInfo)
//! ```
//!
//! Every phase also accepts NoticeResponse (logged) and ErrorResponse (a server error, e.g.
//! `28P01` for a wrong password; the server closes the connection after it). Anything else is
//! a protocol error naming the message and the phase. `require_auth` is enforced when the
//! server names its method, and when it lets the client in without asking for any.
//!
//! SCRAM's key derivation (PBKDF2, 4096 rounds by default, ~1 ms) runs inside
//! [`Startup::handle`] on the calling thread, once per (password, salt, iterations) in the
//! process: [`super::scram`] caches the derived keys.

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;

use super::auth::{AuthMethod, RequireAuth};
use super::cursor::Cursor;
use super::db_error::DbError;
use super::encode;
use super::message::{log_notice, tag_name, AuthRequest, BackendMessage};
use super::scram::{ChannelBinding, ScramClient, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use crate::{PgError, PgOptions};

/// The key a CancelRequest for this session must carry (BackendKeyData).
///
/// Opaque but for the backend's process id: protocol 3.2 (PostgreSQL 18) makes the secret
/// key variable-length, so it is not a public field.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub(crate) process_id: i32,
    pub(crate) secret_key: i32,
}

impl BackendKey {
    /// The backend's process id (`pg_backend_pid()` on that session).
    pub fn process_id(&self) -> i32 {
        self.process_id
    }

    /// The 16-byte CancelRequest packet for this session, to send on a fresh connection.
    pub fn cancel_request(&self) -> [u8; 16] {
        encode::cancel_request(self.process_id, self.secret_key)
    }
}

impl fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKey")
            .field("process_id", &self.process_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// What the server told us during startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    parameters: Params,
    backend_key: Option<BackendKey>,
}

/// The reported run-time parameters, packed: every name and its value back to back in one
/// string, found through an index sorted by name. Two allocations per connection instead of
/// two per parameter plus tree nodes — ~16 parameters cost ~2 KiB of an idle connection's
/// ~9 before (bench/FINDINGS.md, "Issue 21, items 2 and 4").
#[derive(Clone, Default)]
struct Params {
    text: String,
    /// `[name start, name end = value start, value end]` into `text`, sorted by name. `u32`:
    /// the limits (`MAX_PARAMETERS` of at most `MAX_PARAMETER_NAME_BYTES` +
    /// `MAX_PARAMETER_VALUE_BYTES`, compacted past twice the live bytes) keep `text` under
    /// 40 MiB; 12 bytes per parameter instead of 24.
    spans: Vec<[u32; 3]>,
    /// Bytes of `text` the spans still point at (an updated value leaves its old bytes).
    live: usize,
}

impl Params {
    fn name(&self, sp: &[u32; 3]) -> &str {
        self.text.get(sp[0] as usize..sp[1] as usize).unwrap_or("")
    }

    fn value(&self, sp: &[u32; 3]) -> &str {
        self.text.get(sp[1] as usize..sp[2] as usize).unwrap_or("")
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.spans.binary_search_by(|sp| self.name(sp).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&str> {
        let i = self.find(name).ok()?;
        self.spans.get(i).map(|sp| self.value(sp))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans.iter().map(|sp| (self.name(sp), self.value(sp)))
    }

    fn append(&mut self, name: &str, value: &str) -> [u32; 3] {
        let start = self.text.len();
        self.text.push_str(name);
        self.text.push_str(value);
        self.live += name.len() + value.len();
        [
            offset(start),
            offset(start + name.len()),
            offset(self.text.len()),
        ]
    }

    /// Sets the value of the parameter at index `i` (from `find`'s `Ok`) or inserts one at
    /// `i` (from its `Err`).
    fn set(&mut self, found: Result<usize, usize>, name: &str, value: &str) {
        match found {
            Ok(i) => {
                let Some(old) = self.spans.get(i).copied() else {
                    return;
                };
                self.live -= (old[2] - old[0]) as usize;
                let sp = self.append(name, value);
                self.spans[i] = sp;
                if self.text.len() > 2 * self.live + 1024 {
                    self.compact();
                }
            }
            Err(i) => {
                let sp = self.append(name, value);
                self.spans.insert(i, sp);
            }
        }
    }

    /// Drops the bytes of replaced values.
    fn compact(&mut self) {
        let mut text = String::with_capacity(self.live);
        for sp in &mut self.spans {
            let start = text.len();
            text.push_str(self.text.get(sp[0] as usize..sp[2] as usize).unwrap_or(""));
            *sp = [
                offset(start),
                offset(start) + (sp[1] - sp[0]),
                offset(text.len()),
            ];
        }
        self.text = text;
    }

    fn shrink(&mut self) {
        self.text.shrink_to_fit();
        self.spans.shrink_to_fit();
    }
}

/// An offset into `Params::text`, which the parameter limits keep far below `u32::MAX`.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Params {}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl ServerInfo {
    /// A run-time parameter the server reported (`server_version`, `client_encoding`,
    /// `TimeZone`, `integer_datetimes`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name)
    }

    /// All reported parameters.
    pub fn parameters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parameters.iter()
    }

    /// Records a ParameterStatus (the connection calls this for ones arriving later).
    ///
    /// The server decides what it reports, so the map is bounded: at most
    /// [`MAX_PARAMETERS`] distinct names, names of at most [`MAX_PARAMETER_NAME_BYTES`] and
    /// values of at most [`MAX_PARAMETER_VALUE_BYTES`]. Past a limit this is a protocol
    /// error naming it (the map is left unchanged), and the connection must be broken.
    pub fn set_parameter(&mut self, name: &str, value: &str) -> Result<(), PgError> {
        if name.len() > MAX_PARAMETER_NAME_BYTES {
            return Err(PgError::protocol(format!(
                "ParameterStatus name {:?}… is {} bytes, above the limit of \
                 {MAX_PARAMETER_NAME_BYTES} bytes",
                prefix(name, 32),
                name.len()
            )));
        }
        if value.len() > MAX_PARAMETER_VALUE_BYTES {
            return Err(PgError::protocol(format!(
                "ParameterStatus value of {name:?} is {} bytes, above the limit of \
                 {MAX_PARAMETER_VALUE_BYTES} bytes",
                value.len()
            )));
        }
        let found = self.parameters.find(name);
        if found.is_ok() {
            self.parameters.set(found, name, value);
            return Ok(());
        }
        if self.parameters.spans.len() >= MAX_PARAMETERS {
            return Err(PgError::protocol(format!(
                "ParameterStatus for {name:?} would exceed the limit of {MAX_PARAMETERS} \
                 distinct run-time parameters"
            )));
        }
        self.parameters.set(found, name, value);
        Ok(())
    }

    /// `server_version`, e.g. `16.2 (Debian 16.2-1)`.
    pub fn server_version(&self) -> Option<&str> {
        self.parameter("server_version")
    }

    /// The key for cancelling this session's queries; `None` if the server sent none (some
    /// poolers don't).
    pub fn backend_key(&self) -> Option<BackendKey> {
        self.backend_key
    }
}

/// Most distinct run-time parameter names a [`ServerInfo`] keeps. PostgreSQL reports about
/// fifteen (the `GUC_REPORT` ones: `server_version`, `TimeZone`, `search_path`, …; an
/// extension may add a few); more than this is a hostile server growing our memory.
pub const MAX_PARAMETERS: usize = 256;

/// Longest run-time parameter name (bytes). PostgreSQL's are identifiers, an extension's are
/// `prefix.name`: far below this.
pub const MAX_PARAMETER_NAME_BYTES: usize = 1024;

/// Longest run-time parameter value (bytes). The longest values PostgreSQL reports are
/// `search_path` and `application_name`/role names (at most 63 bytes each); 64 KiB leaves a
/// long `search_path` room while bounding the map at 256 × (1 KiB + 64 KiB) ≈ 16 MiB in the
/// worst case.
pub const MAX_PARAMETER_VALUE_BYTES: usize = 64 * 1024;

/// The first `max` characters of `s`, for quoting hostile text in an error.
fn prefix(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// What [`Startup::handle`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupStatus {
    /// Keep reading (and send `out` if it grew).
    Continue,
    /// ReadyForQuery: the session is open.
    Ready(ServerInfo),
}

enum Phase {
    NotStarted,
    Auth,
    Scram(Box<ScramClient>),
    ScramFinal(Box<ScramClient>),
    AwaitOk,
    Params,
    Ready,
    Failed,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::NotStarted => "before the startup message",
            Phase::Auth => "waiting for an authentication request",
            Phase::Scram(_) => "waiting for SASLContinue",
            Phase::ScramFinal(_) => "waiting for SASLFinal",
            Phase::AwaitOk => "waiting for AuthenticationOk",
            Phase::Params => "waiting for ParameterStatus, BackendKeyData or ReadyForQuery",
            Phase::Ready => "after startup completed",
            Phase::Failed => "after startup failed",
        }
    }
}

/// Drives the startup handshake and authentication. See the [module docs](self).
pub struct Startup {
    user: String,
    password: Option<String>,
    database: String,
    application_name: Option<String>,
    options: Option<String>,
    require_auth: RequireAuth,
    channel_binding: crate::options::ChannelBinding,
    /// Over TLS: the server's certificate (DER; empty if it sent none), hashed for
    /// `tls-server-end-point` only if SCRAM-SHA-256-PLUS is chosen.
    tls: Option<Vec<u8>>,
    phase: Phase,
    info: ServerInfo,
}

impl fmt::Debug for Startup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Startup")
            .field("user", &self.user)
            .field("database", &self.database)
            .field("phase", &self.phase.name())
            .finish_non_exhaustive()
    }
}

impl Startup {
    /// A handshake for the user, password, database, application name, server `options` and
    /// `require_auth` of `opts`.
    pub fn new(opts: &PgOptions) -> Startup {
        Startup {
            user: opts.get_user().to_owned(),
            password: opts.get_password().map(str::to_owned),
            database: opts.get_database().to_owned(),
            application_name: opts.get_application_name().map(str::to_owned),
            options: opts.get_options().map(str::to_owned),
            require_auth: opts.get_require_auth(),
            channel_binding: opts.tls().channel_binding,
            tls: None,
            phase: Phase::NotStarted,
            info: ServerInfo::default(),
        }
    }

    /// The session runs over TLS with the server certificate `cert` (DER), whose
    /// `tls-server-end-point` hash SCRAM-SHA-256-PLUS binds the login to. The hash is made
    /// only when the server asks for SCRAM (parsing and hashing the certificate at every
    /// connect cost ~14 µs where trust or cert authentication needs none of it).
    pub fn with_tls(mut self, cert: Vec<u8>) -> Startup {
        self.tls = Some(cert);
        self
    }

    /// Refuses a login that skipped channel binding when `channel_binding=require`.
    fn check_binding_not_required(&self, how: &str) -> Result<(), PgError> {
        if self.channel_binding == crate::options::ChannelBinding::Require {
            return Err(PgError::auth(format!(
                "channel_binding=require, but the server authenticated the client {how}, \
                 without channel binding"
            )));
        }
        Ok(())
    }

    /// Appends the StartupMessage (protocol 3.0; user, database, application_name, options,
    /// `client_encoding=UTF8`) to `out`.
    pub fn start(&mut self, out: &mut BytesMut) -> Result<(), PgError> {
        if !matches!(self.phase, Phase::NotStarted) {
            return Err(PgError::protocol("startup message already sent"));
        }
        let mut params = vec![
            ("user", self.user.as_str()),
            ("database", self.database.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if let Some(app) = &self.application_name {
            params.push(("application_name", app));
        }
        if let Some(options) = &self.options {
            params.push(("options", options));
        }
        encode::startup(params, out)?;
        self.phase = Phase::Auth;
        Ok(())
    }

    /// Uses `password` (one from the password file) when the options gave none.
    pub(crate) fn set_password(&mut self, password: String) {
        self.password = Some(password);
    }

    /// Whether startup finished successfully.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    fn wrong_phase(&self, tag: u8) -> PgError {
        PgError::protocol(format!(
            "unexpected {} during startup, {}",
            tag_name(tag),
            self.phase.name()
        ))
    }

    fn password(&self, method: AuthMethod) -> Result<&str, PgError> {
        self.password.as_deref().ok_or_else(|| {
            PgError::auth(format!(
                "the server asked for {method} authentication but no password was configured"
            ))
        })
    }

    /// Feeds one backend message; responses (passwords, SASL messages) are appended to `out`.
    /// An error is final: the connection must be closed.
    pub fn handle(
        &mut self,
        tag: u8,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<StartupStatus, PgError> {
        let result = self.step(tag, body, out);
        if result.is_err() {
            if let Phase::ScramFinal(scram) = &self.phase {
                // The proof was sent and the login failed (a wrong password, `28P01`, or a
                // server that could not prove itself): keep no keys for that password.
                scram.forget_keys();
            }
            self.phase = Phase::Failed;
        }
        result
    }

    fn step(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<StartupStatus, PgError> {
        if matches!(self.phase, Phase::NotStarted | Phase::Ready | Phase::Failed) {
            return Err(self.wrong_phase(tag));
        }
        let msg = BackendMessage::decode(tag, body)?;
        match (&mut self.phase, msg) {
            (_, BackendMessage::ErrorResponse(body)) => Err(PgError::server(DbError::parse(body)?)),
            (_, BackendMessage::NoticeResponse(body)) => {
                log_notice(&DbError::parse(body)?);
                Ok(StartupStatus::Continue)
            }
            (
                Phase::Auth,
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized,
                },
            ) => {
                tracing::info!(
                    newest_minor,
                    unrecognized,
                    "server negotiated the protocol version down"
                );
                Ok(StartupStatus::Continue)
            }
            (Phase::Auth, BackendMessage::Authentication(req)) => {
                self.on_auth_request(tag, req, out)
            }
            (
                Phase::Scram(scram),
                BackendMessage::Authentication(AuthRequest::SaslContinue(data)),
            ) => {
                check_scram_iterations(data)?;
                scram.server_first(data)?;
                encode::sasl_response(scram.message(), out)?;
                let Phase::Scram(scram) = std::mem::replace(&mut self.phase, Phase::Failed) else {
                    return Err(self.wrong_phase(tag));
                };
                self.phase = Phase::ScramFinal(scram);
                Ok(StartupStatus::Continue)
            }
            (
                Phase::ScramFinal(scram),
                BackendMessage::Authentication(AuthRequest::SaslFinal(data)),
            ) => {
                scram.server_final(data)?;
                self.phase = Phase::AwaitOk;
                Ok(StartupStatus::Continue)
            }
            (Phase::AwaitOk, BackendMessage::Authentication(AuthRequest::Ok)) => {
                self.phase = Phase::Params;
                Ok(StartupStatus::Continue)
            }
            (Phase::Params, BackendMessage::ParameterStatus { name, value }) => {
                self.info.set_parameter(name, value)?;
                Ok(StartupStatus::Continue)
            }
            (
                Phase::Params,
                BackendMessage::BackendKeyData {
                    process_id,
                    secret_key,
                },
            ) => {
                self.info.backend_key = Some(BackendKey {
                    process_id,
                    secret_key,
                });
                Ok(StartupStatus::Continue)
            }
            (Phase::Params, BackendMessage::ReadyForQuery(_)) => {
                self.phase = Phase::Ready;
                self.info.parameters.shrink();
                Ok(StartupStatus::Ready(std::mem::take(&mut self.info)))
            }
            _ => Err(self.wrong_phase(tag)),
        }
    }

    fn on_auth_request(
        &mut self,
        tag: u8,
        req: AuthRequest<'_>,
        out: &mut BytesMut,
    ) -> Result<StartupStatus, PgError> {
        let unsupported = |name: &str| {
            PgError::auth(format!(
                "the server asked for {name} authentication, which ioxide-pg does not support"
            ))
        };
        match req {
            AuthRequest::Ok => {
                self.require_auth.check(AuthMethod::None)?;
                self.check_binding_not_required("with no password (trust or cert)")?;
                self.phase = Phase::Params;
            }
            AuthRequest::CleartextPassword => {
                self.require_auth.check(AuthMethod::Password)?;
                self.check_binding_not_required("by cleartext password")?;
                encode::password(self.password(AuthMethod::Password)?.as_bytes(), out)?;
                self.phase = Phase::AwaitOk;
            }
            AuthRequest::Md5Password { salt } => {
                self.require_auth.check(AuthMethod::Md5)?;
                self.check_binding_not_required("by MD5 password")?;
                let password = self.password(AuthMethod::Md5)?;
                let hash = md5_hash(self.user.as_bytes(), password.as_bytes(), salt);
                encode::password(hash.as_bytes(), out)?;
                self.phase = Phase::AwaitOk;
            }
            AuthRequest::Sasl { mechanisms } => {
                self.require_auth.check(AuthMethod::ScramSha256)?;
                let (scram, plus) = sasl_mechanisms(mechanisms)?;
                let password = self.password(AuthMethod::ScramSha256)?;
                let (mechanism, binding) = self.choose_sasl(scram, plus)?;
                let scram = ScramClient::new(password.as_bytes(), binding);
                encode::sasl_initial_response(mechanism, scram.message(), out)?;
                self.phase = Phase::Scram(Box::new(scram));
            }
            AuthRequest::KerberosV5 => return Err(unsupported("Kerberos V5")),
            AuthRequest::ScmCredential => return Err(unsupported("SCM credential")),
            AuthRequest::Gss | AuthRequest::GssContinue => {
                self.require_auth.check(AuthMethod::Gss)?;
                return Err(unsupported("GSSAPI"));
            }
            AuthRequest::Sspi => {
                self.require_auth.check(AuthMethod::Sspi)?;
                return Err(unsupported("SSPI"));
            }
            AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
                return Err(self.wrong_phase(tag))
            }
        }
        Ok(StartupStatus::Continue)
    }
}

impl Startup {
    /// The SASL mechanism and GS2 channel-binding flag, from what the server offers, whether
    /// TLS is up, and `channel_binding` (RFC 5802 §6: `p` binds; `y` says "I could bind but
    /// you offered no PLUS", which lets a server that did offer it detect a downgrade; `n`
    /// says the client cannot bind).
    fn choose_sasl(
        &self,
        scram: bool,
        plus: bool,
    ) -> Result<(&'static str, ChannelBinding), PgError> {
        use crate::options::ChannelBinding as Policy;
        let end_point = match &self.tls {
            Some(cert) => crate::tls::end_point_hash(cert),
            None => None,
        };
        let tls = self.tls.is_some();
        match self.channel_binding {
            Policy::Require => {
                if !tls {
                    return Err(PgError::auth(
                        "channel_binding=require, but the connection does not use TLS (a Unix \
                         socket, or sslmode let it fall back to plaintext)",
                    ));
                }
                if !plus {
                    return Err(PgError::auth(
                        "channel_binding=require, but the server does not offer \
                         SCRAM-SHA-256-PLUS",
                    ));
                }
                let Some(hash) = end_point else {
                    return Err(PgError::auth(
                        "channel_binding=require, but the server certificate's signature \
                         algorithm has no tls-server-end-point hash",
                    ));
                };
                Ok((SCRAM_SHA_256_PLUS, ChannelBinding::TlsServerEndPoint(hash)))
            }
            Policy::Prefer if tls && plus && end_point.is_some() => {
                let hash = end_point.unwrap_or_default();
                Ok((SCRAM_SHA_256_PLUS, ChannelBinding::TlsServerEndPoint(hash)))
            }
            policy => {
                if !scram {
                    return Err(if plus {
                        PgError::auth(format!(
                            "the server offers only SCRAM-SHA-256-PLUS, and channel binding is \
                             not possible here ({})",
                            if !tls {
                                "no TLS"
                            } else if policy == Policy::Disable {
                                "channel_binding=disable"
                            } else {
                                "no tls-server-end-point hash for the server certificate"
                            }
                        ))
                    } else {
                        PgError::auth(
                            "the server offers no SASL mechanism ioxide-pg supports \
                             (SCRAM-SHA-256 and SCRAM-SHA-256-PLUS)",
                        )
                    });
                }
                // `y` only when we could have bound (TLS, a hash, binding allowed) and the
                // server offered no PLUS.
                let could = tls && end_point.is_some() && policy != Policy::Disable;
                let binding = if could && !plus {
                    ChannelBinding::Unrequested
                } else {
                    ChannelBinding::Unsupported
                };
                Ok((SCRAM_SHA_256, binding))
            }
        }
    }
}

/// Which of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS an AuthenticationSASL body offers.
fn sasl_mechanisms(body: &[u8]) -> Result<(bool, bool), PgError> {
    let mut c = Cursor::new(body, "AuthenticationSASL");
    let (mut scram, mut plus) = (false, false);
    loop {
        match c.cstr_bytes()? {
            b"" => break,
            m if m == SCRAM_SHA_256.as_bytes() => scram = true,
            m if m == SCRAM_SHA_256_PLUS.as_bytes() => plus = true,
            _ => {}
        }
    }
    c.finish()?;
    Ok((scram, plus))
}

#[cfg(test)]
#[path = "startup_tests.rs"]
mod tests;

/// Most PBKDF2 iterations we run for a SCRAM login (postgres-protocol refuses more, too).
/// PostgreSQL uses 4096 (about 1 ms here); PostgreSQL 16 lets an administrator raise it.
/// PBKDF2 runs on the reactor thread, so a hostile server asking for billions would stall
/// every connection on it.
pub const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// Checks the iteration count of a SCRAM server-first message (`r=…,s=…,i=…`): RFC 5802
/// requires a positive count, and we refuse one above [`MAX_SCRAM_ITERATIONS`].
fn check_scram_iterations(server_first: &[u8]) -> Result<(), PgError> {
    let text = std::str::from_utf8(server_first)
        .map_err(|_| PgError::auth("invalid SCRAM server-first message: not UTF-8"))?;
    let i = text
        .split(',')
        .find_map(|attr| attr.strip_prefix("i="))
        .ok_or_else(|| PgError::auth("invalid SCRAM server-first message: no iteration count"))?;
    match i.parse::<u32>() {
        Ok(n) if n > 0 && n <= MAX_SCRAM_ITERATIONS => Ok(()),
        Ok(0) => Err(PgError::auth(
            "invalid SCRAM server-first message: iteration count must be positive",
        )),
        Ok(n) => Err(PgError::auth(format!(
            "invalid SCRAM server-first message: iteration count {n} exceeds the limit of \
             {MAX_SCRAM_ITERATIONS}"
        ))),
        Err(_) => Err(PgError::auth(format!(
            "invalid SCRAM server-first message: iteration count {i:?}"
        ))),
    }
}
