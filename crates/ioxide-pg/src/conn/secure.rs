//! TLS on the ring: `sslmode`'s attempts, the SSLRequest (or direct TLS), the handshake,
//! and the byte pipe the startup conversation and the CancelRequest use.
//!
//! Every step is a ring operation of the reactor that opens the connection: the SSLRequest
//! is one send, the server's `S`/`N` one receive, each handshake flight one send and one
//! receive; rustls only transforms bytes in memory (see `crate::tls`).

use std::net::IpAddr;
use std::sync::Arc;

use ioxide::net::Stream;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::options::{SslMode, SslNegotiation};
use crate::tls::{server_name, TlsSession, ALPN};
use crate::{Host, PgError, PgOptions, Target};

/// The SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How one connection attempt treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Plaintext; no SSLRequest.
    Plain,
    /// TLS if the server accepts it; its `N` continues in plaintext on the same socket.
    Try,
    /// TLS or fail.
    Must,
}

/// What a connection needs to open another one the same way (its CancelRequest).
#[derive(Clone)]
pub(crate) struct TlsParams {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) name: ServerName<'static>,
    pub(crate) direct: bool,
}

/// The attempts `sslmode` makes, in order, each on a new socket: `(plan, may fall back)`.
/// `allow` tries plaintext first and TLS when the server refuses it; `prefer` tries TLS
/// first and plaintext when the TLS attempt fails (a handshake that fails, a server that
/// answers the SSLRequest with an error, or one that refuses the login over TLS) — what
/// libpq does. Unix sockets never use TLS.
pub(crate) fn plans(opts: &PgOptions, target: &Target) -> &'static [Plan] {
    if matches!(target, Target::Unix(_)) {
        return &[Plan::Plain];
    }
    match opts.get_ssl_mode() {
        SslMode::Disable => &[Plan::Plain],
        SslMode::Allow => &[Plan::Plain, Plan::Must],
        SslMode::Prefer => &[Plan::Try, Plan::Plain],
        _ => &[Plan::Must],
    }
}

/// The parameters of a TLS session for `opts` towards `target`.
pub(crate) fn params(opts: &PgOptions, fallback: Option<IpAddr>) -> Result<TlsParams, PgError> {
    let config = opts.tls_client_config()?;
    let host = match opts.get_host() {
        Host::Tcp(h) => h.as_str(),
        // Unix sockets never get here; keep a name rustls accepts.
        _ => "localhost",
    };
    Ok(TlsParams {
        config,
        name: server_name(host, fallback)?,
        direct: opts.tls().negotiation == SslNegotiation::Direct,
    })
}

/// Starts TLS on a fresh socket: the SSLRequest and the server's answer (unless direct),
/// then the handshake. `Ok(None)`: the server answered `N` and the plan allows plaintext.
/// Returns the session and any plaintext that came with the end of the handshake.
///
/// `handshake_failed` is set when the handshake itself failed (an alert, a refused
/// certificate, the server hanging up): `prefer` then tries plaintext on a new socket, as
/// libpq. A reply to the SSLRequest that is neither `S` nor `N`, or plaintext injected
/// after `S`, ends the attempt for good (libpq 17: they are what a man in the middle
/// would do, and falling back would hand him a plaintext session).
pub(crate) async fn start(
    stream: &Stream,
    p: &TlsParams,
    plan: Plan,
    mode: SslMode,
    handshake_failed: &std::cell::Cell<bool>,
) -> Result<Option<(TlsSession, Vec<u8>)>, PgError> {
    if !p.direct {
        let (r, _) = stream.send_all(SSL_REQUEST.to_vec()).await;
        r.map_err(|e| PgError::io("sending the SSLRequest", e))?;
        // One byte is the whole answer; read more to catch bytes injected after it.
        let (r, answer) = stream.recv(Vec::with_capacity(64)).await;
        match r {
            Ok(0) => {
                return Err(PgError::io(
                    "the server closed the connection after the SSLRequest",
                    std::io::ErrorKind::UnexpectedEof.into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(PgError::io("receiving the answer to the SSLRequest", e)),
        }
        match answer.first() {
            Some(b'S') if answer.len() == 1 => {}
            Some(b'S') => {
                // CVE-2021-23222: bytes that arrive before the handshake are not protected
                // by it; a man in the middle can inject them.
                return Err(PgError::tls_refused(
                    "the server sent unencrypted bytes after accepting TLS (possible man in \
                     the middle); refusing the connection",
                ));
            }
            Some(b'N') if answer.len() == 1 => {
                if plan == Plan::Must {
                    return Err(PgError::tls_refused(format!(
                        "the server does not accept TLS, but sslmode={mode} requires it"
                    )));
                }
                return Ok(None);
            }
            Some(b'E') => {
                // A server too old to know the SSLRequest answers with an error.
                return Err(PgError::tls_refused(
                    "the server answered the SSLRequest with an error (it predates TLS \
                     negotiation, or is not PostgreSQL)",
                ));
            }
            _ => {
                return Err(PgError::protocol(format!(
                    "unexpected answer to the SSLRequest ({} bytes, first {:?})",
                    answer.len(),
                    answer.first().copied().map(char::from)
                )))
            }
        }
    }
    let session = TlsSession::new(p.config.clone(), p.name.clone())?;
    let early = handshake(stream, &session).await.inspect_err(|_| {
        handshake_failed.set(true);
    })?;
    if p.direct && session.alpn().as_deref() != Some(ALPN) {
        return Err(PgError::tls_refused(
            "the server did not select ALPN postgresql for direct TLS (sslnegotiation=direct \
             needs PostgreSQL 17+)",
        ));
    }
    tracing::debug!(tls = %session.describe(), "TLS established");
    Ok(Some((session, early)))
}

/// Runs the handshake to completion; returns plaintext that arrived with its end.
async fn handshake(stream: &Stream, s: &TlsSession) -> Result<Vec<u8>, PgError> {
    let mut out = Vec::with_capacity(2048);
    let mut inbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut plain = Vec::new();
    loop {
        s.take_output(&mut out);
        if !out.is_empty() {
            let (r, b) = stream.send_all(out).await;
            out = b;
            out.clear();
            r.map_err(|e| PgError::io("sending the TLS handshake", e))?;
        }
        if !s.is_handshaking() {
            return Ok(plain);
        }
        inbuf.clear();
        let (r, b) = stream.recv(inbuf).await;
        inbuf = b;
        match r {
            Ok(0) => {
                return Err(PgError::io(
                    "the server closed the connection during the TLS handshake",
                    std::io::ErrorKind::UnexpectedEof.into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(PgError::io("receiving the TLS handshake", e)),
        }
        if let Err(e) = s.decrypt(&inbuf, &mut plain) {
            // Tell the server why (rustls queued an alert), best effort.
            s.take_output(&mut out);
            if !out.is_empty() {
                let _ = stream.send_all(out).await;
            }
            return Err(e);
        }
    }
}

/// The byte pipe of the startup conversation: plaintext, or through the TLS session.
pub(crate) struct Pipe<'a> {
    pub(crate) stream: &'a Stream,
    pub(crate) tls: Option<&'a TlsSession>,
    cipher: Vec<u8>,
}

impl<'a> Pipe<'a> {
    pub(crate) fn new(stream: &'a Stream, tls: Option<&'a TlsSession>) -> Pipe<'a> {
        Pipe {
            stream,
            tls,
            cipher: Vec::new(),
        }
    }

    /// Sends all of `data` (encrypted when TLS is on).
    pub(crate) async fn send(&mut self, data: &[u8], what: &str) -> Result<(), PgError> {
        let buf = match self.tls {
            Some(s) => {
                let mut c = std::mem::take(&mut self.cipher);
                c.clear();
                s.encrypt(data, &mut c)?;
                c
            }
            None => data.to_vec(),
        };
        let (r, b) = self.stream.send_all(buf).await;
        self.cipher = b;
        r.map_err(|e| PgError::io(format!("sending {what}"), e))
    }

    /// Receives once and appends the plaintext to `buf`; `Ok(false)` at end of stream.
    pub(crate) async fn recv(&mut self, buf: &mut Vec<u8>, what: &str) -> Result<bool, PgError> {
        let Some(s) = self.tls else {
            let (r, b) = self.stream.recv(std::mem::take(buf)).await;
            *buf = b;
            return match r {
                Ok(n) => Ok(n > 0),
                Err(e) => Err(PgError::io(format!("receiving {what}"), e)),
            };
        };
        let mut c = std::mem::take(&mut self.cipher);
        c.clear();
        c.reserve(16 * 1024);
        let (r, b) = self.stream.recv(c).await;
        self.cipher = b;
        match r {
            Ok(0) => Ok(false),
            Ok(_) => {
                let closed = s.decrypt(&self.cipher, buf)? == crate::tls::Decrypted::Closed;
                Ok(!closed || !buf.is_empty())
            }
            Err(e) => Err(PgError::io(format!("receiving {what}"), e)),
        }
    }
}
