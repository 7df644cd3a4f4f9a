//! A fake PostgreSQL server that speaks TLS (rustls, `ring` provider) and misbehaves on
//! demand: the failures a real server will not produce.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pg_throwaway::tls::{ServerCert, TlsFiles, TlsSetup};
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::messages::backend;
use super::messages::frontend::{GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};
use super::{
    is_retry, play, read_exact, set_linger_zero, wait_readable, write_all, xorshift, ConnectionLog,
    Halt, Shared, Step, Transport, MAX_MESSAGE, POLL,
};

/// The ALPN protocol name of PostgreSQL 17 (`sslnegotiation=direct` requires it).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// How a connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negotiation {
    /// As every server: expects the 8-byte SSLRequest (GSSENCRequests are answered `N`
    /// until it comes) and answers with the [`SslReply`]. A ClientHello sent first is not
    /// understood (as by PostgreSQL < 17): recorded ([`TlsConnectionLog::direct_tls`]),
    /// then the socket is closed; so is it after a startup packet sent first.
    SslRequest(SslReply),
    /// As PostgreSQL 17 with `sslnegotiation=direct`: the ClientHello comes first. The
    /// handshake then follows [`TlsScript::alpn`]; with [`Alpn::Select`], a client that
    /// offered no `postgresql` ALPN is disconnected right after the handshake, as
    /// PostgreSQL 17 does. An SSLRequest is still answered `S` and TLS.
    Direct,
}

/// The answer to an SSLRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SslReply {
    /// `N` (no TLS); then the plaintext [`Step`]s as [`crate::FakeServer`] plays them
    /// (after reading the startup packet).
    No(Vec<Step>),
    /// These bytes, then close. Use an ErrorResponse (it starts with `E`), as a server too
    /// old to know SSLRequest sends: `backend::error_response("FATAL", "08P01", "...")`.
    Error(Vec<u8>),
    /// `S` and these bytes in the same write (a man in the middle injecting plaintext
    /// into the handshake, CVE-2021-23222); then the server reads until the client closes,
    /// counting what it sends ([`TlsConnectionLog::bytes_after_reply`]).
    PlaintextAfterS(Vec<u8>),
    /// `S`, then the TLS handshake.
    Tls,
}

/// What the server does with the client's ALPN offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpn {
    /// Selects `postgresql` when offered (PostgreSQL 17).
    #[default]
    Select,
    /// Selects nothing, whatever was offered (PostgreSQL < 17).
    SelectNothing,
    /// Aborts the handshake with a `no_application_protocol` alert if the client offered
    /// any ALPN (it supports only a protocol nobody offers).
    Refuse,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Whether the server asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertPolicy {
    /// No CertificateRequest.
    #[default]
    NotRequested,
    /// Asks for one signed by the test CA; a client without one may proceed, one with a
    /// bad one is refused.
    Optional,
    /// Asks for one signed by the test CA and aborts the handshake without it.
    Required,
}

/// What the server does once the TLS handshake is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterHandshake {
    /// Reads the startup packet over TLS, then plays the [`Step`]s over TLS
    /// ([`Step::Close`] sends `close_notify` then FIN). The default script lets a driver
    /// connect and run one simple query: [`TlsScript::connect_and_query`].
    Script(Vec<Step>),
    /// Sends a fatal, encrypted `bad_record_mac` alert (as if the client's record failed
    /// to decrypt), then closes.
    FatalAlert,
    /// Sends the first half of a genuine TLS record (the handshake answer), then closes
    /// (FIN, no `close_notify`).
    TruncatedRecord,
    /// Writes this many pseudo-random bytes straight onto the TCP stream, then waits for
    /// the client to close.
    Garbage(usize),
    /// Sends `close_notify` and closes at once, before reading the startup packet.
    CloseNotify,
}

/// Everything a [`FakeTlsServer`] does on one connection.
///
/// Default: SSLRequest answered `S`, TLS 1.2 or 1.3, ALPN `postgresql` selected when
/// offered, no client certificate asked, the [`ServerCert::Valid`] certificate, then
/// [`TlsScript::connect_and_query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsScript {
    negotiation: Negotiation,
    versions: Vec<TlsVersion>,
    alpn: Alpn,
    client_cert: ClientCertPolicy,
    server_cert: ServerCert,
    after: AfterHandshake,
}

impl Default for TlsScript {
    fn default() -> Self {
        Self {
            negotiation: Negotiation::SslRequest(SslReply::Tls),
            versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
            alpn: Alpn::Select,
            client_cert: ClientCertPolicy::NotRequested,
            server_cert: ServerCert::Valid,
            after: AfterHandshake::Script(Self::connect_and_query()),
        }
    }
}

impl TlsScript {
    /// The defaults (same as `TlsScript::default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// How the connection starts (default `Negotiation::SslRequest(SslReply::Tls)`).
    pub fn negotiation(mut self, negotiation: Negotiation) -> Self {
        self.negotiation = negotiation;
        self
    }

    /// Shorthand for `negotiation(Negotiation::SslRequest(reply))`.
    pub fn reply(self, reply: SslReply) -> Self {
        self.negotiation(Negotiation::SslRequest(reply))
    }

    /// Shorthand for `negotiation(Negotiation::Direct)`.
    pub fn direct(self) -> Self {
        self.negotiation(Negotiation::Direct)
    }

    /// Allows only this TLS version (default: 1.2 and 1.3).
    pub fn only(mut self, version: TlsVersion) -> Self {
        self.versions = vec![version];
        self
    }

    /// What to do with the client's ALPN offer (default [`Alpn::Select`]).
    pub fn alpn(mut self, alpn: Alpn) -> Self {
        self.alpn = alpn;
        self
    }

    /// Whether to ask for a client certificate (default [`ClientCertPolicy::NotRequested`]).
    pub fn client_cert(mut self, policy: ClientCertPolicy) -> Self {
        self.client_cert = policy;
        self
    }

    /// Which certificate to present (default [`ServerCert::Valid`]).
    pub fn server_cert(mut self, cert: ServerCert) -> Self {
        self.server_cert = cert;
        self
    }

    /// What to do after the handshake (default: [`TlsScript::connect_and_query`]).
    pub fn after(mut self, after: AfterHandshake) -> Self {
        self.after = after;
        self
    }

    /// Shorthand for `after(AfterHandshake::Script(steps))`.
    pub fn script(self, steps: Vec<Step>) -> Self {
        self.after(AfterHandshake::Script(steps))
    }

    /// A healthy server: [`backend::handshake_ok`], then one simple query answered with
    /// one row (column `?column?`, value `1`), then it reads one more message (the
    /// Terminate) and closes with `close_notify`.
    pub fn connect_and_query() -> Vec<Step> {
        vec![
            Step::Send(backend::handshake_ok()),
            Step::ReadMessage,
            Step::Send(backend::simple_query_result("?column?", "1")),
            Step::ReadMessage,
            Step::Close,
        ]
    }
}

/// What a [`FakeTlsServer`] saw on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConnectionLog {
    /// Whether an SSLRequest arrived.
    pub ssl_request: bool,
    /// Whether the first bytes were a TLS ClientHello (direct TLS, no SSLRequest).
    pub direct_tls: bool,
    /// The SNI host name the client offered.
    pub sni: Option<String>,
    /// The ALPN protocols the client offered, in order (empty: none, or no extension).
    pub alpn_offered: Vec<Vec<u8>>,
    /// The ALPN protocol the handshake agreed on.
    pub alpn_selected: Option<Vec<u8>>,
    /// The TLS version agreed on, once the handshake completed.
    pub tls_version: Option<TlsVersion>,
    /// Whether the TLS handshake completed.
    pub handshake_done: bool,
    /// The client's certificate (DER, leaf first), if it presented one that verified.
    pub client_cert: Option<Vec<u8>>,
    /// Why the handshake failed (rustls' error), if it did.
    pub tls_error: Option<String>,
    /// Bytes the client sent after [`SslReply::PlaintextAfterS`] (or garbage) until it
    /// closed: 0 means it hung up without trying the handshake.
    pub bytes_after_reply: usize,
    /// The PostgreSQL part (startup packet, messages read, how the script ended), over
    /// TLS or, after [`SslReply::No`], in plaintext.
    pub script: ConnectionLog,
}

#[derive(Default)]
struct TlsShared {
    base: Shared,
    tls: Mutex<Vec<TlsConnectionLog>>,
    /// Per connection: whether its thread is done.
    ended: Mutex<Vec<bool>>,
}

impl TlsShared {
    fn note(&self, index: usize, f: impl FnOnce(&mut TlsConnectionLog)) {
        let mut logs = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(log) = logs.get_mut(index) {
            f(log);
        }
    }
}

type TlsScriptFn = dyn Fn(usize) -> TlsScript + Send + Sync;

/// The parsed certificates of a [`TlsFiles`] set, loaded once per server.
struct Keys {
    servers: Vec<(
        ServerCert,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    )>,
    roots: Arc<RootCertStore>,
}

impl Keys {
    fn load(files: &TlsFiles) -> io::Result<Self> {
        let bad = |what: &std::path::Path, e: rustls::pki_types::pem::Error| {
            io::Error::other(format!("loading {}: {e}", what.display()))
        };
        let mut servers = Vec::new();
        for which in ServerCert::ALL {
            let cert = CertificateDer::from_pem_file(files.server_cert(which))
                .map_err(|e| bad(files.server_cert(which), e))?;
            let key = PrivateKeyDer::from_pem_file(files.server_key(which))
                .map_err(|e| bad(files.server_key(which), e))?;
            servers.push((which, vec![cert], key));
        }
        let mut roots = RootCertStore::empty();
        let ca =
            CertificateDer::from_pem_file(files.ca_cert()).map_err(|e| bad(files.ca_cert(), e))?;
        roots
            .add(ca)
            .map_err(|e| io::Error::other(format!("the test CA: {e}")))?;
        Ok(Self {
            servers,
            roots: Arc::new(roots),
        })
    }

    fn config(&self, script: &TlsScript) -> Result<Arc<ServerConfig>, rustls::Error> {
        // The project's provider is `ring`; rustls 0.23.48 deprecated its constructor only
        // because ring has no post-quantum key exchange, which no test here needs.
        #[allow(deprecated)]
        let provider = Arc::new(provider::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = script
            .versions
            .iter()
            .map(|v| match v {
                TlsVersion::Tls12 => &rustls::version::TLS12,
                TlsVersion::Tls13 => &rustls::version::TLS13,
            })
            .collect();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)?;
        let builder = match script.client_cert {
            ClientCertPolicy::NotRequested => builder.with_no_client_auth(),
            policy => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(&self.roots),
                    Arc::clone(&provider),
                );
                let verifier = if policy == ClientCertPolicy::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| rustls::Error::General(e.to_string()))?,
                )
            }
        };
        let (chain, key) = self
            .servers
            .iter()
            .find(|(w, _, _)| *w == script.server_cert)
            .map(|(_, c, k)| (c.clone(), k.clone_key()))
            .ok_or_else(|| rustls::Error::General("no such server certificate".into()))?;
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = match script.alpn {
            Alpn::Select => vec![ALPN_POSTGRESQL.to_vec()],
            Alpn::SelectNothing => Vec::new(),
            Alpn::Refuse => vec![b"not-postgresql".to_vec()],
        };
        Ok(Arc::new(config))
    }
}

/// A loopback fake PostgreSQL server that negotiates TLS with each client as its
/// [`TlsScript`] says, and records what it saw ([`TlsConnectionLog`]).
///
/// Like [`crate::FakeServer`]: one thread per connection, and dropping the server stops
/// every thread and closes every socket promptly. Certificates come from
/// `pg_throwaway::tls` (the test CA is [`FakeTlsServer::tls`]`.ca_cert()`).
///
/// ```no_run
/// use testkit::{FakeTlsServer, TlsScript, TlsVersion};
///
/// let server = FakeTlsServer::start(TlsScript::new().only(TlsVersion::Tls12))?;
/// let ca = server.tls().ca_cert(); // the driver's sslrootcert
/// // … connect with sslmode=verify-full to 127.0.0.1:server.port(), run SELECT 1 …
/// let log = &server.connections()[0];
/// assert!(log.ssl_request && log.handshake_done);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FakeTlsServer {
    addr: SocketAddr,
    files: TlsFiles,
    shared: Arc<TlsShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeTlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTlsServer")
            .field("addr", &self.addr)
            .field("accepted", &self.accepted())
            .finish()
    }
}

impl FakeTlsServer {
    /// Serves `script` to every connection, with freshly made certificates
    /// (`TlsSetup::new().generate()`).
    ///
    /// # Errors
    /// If the certificates cannot be made or the listener cannot be created.
    pub fn start(script: TlsScript) -> io::Result<Self> {
        let files = TlsSetup::new()
            .generate()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Self::start_with(files, move |_| script.clone())
    }

    /// Serves `script_for(n)` to the n-th connection (0-based) with the certificates in
    /// `files` (e.g. a cluster's [`crate::Cluster::tls`], cloned, to share its CA).
    ///
    /// # Errors
    /// If a certificate file cannot be read or the listener cannot be created.
    pub fn start_with(
        files: TlsFiles,
        script_for: impl Fn(usize) -> TlsScript + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let keys = Arc::new(Keys::load(&files)?);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(TlsShared::default());
        let script_for: Arc<TlsScriptFn> = Arc::new(script_for);
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("fake-tls-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared, &script_for, &keys))?
        };
        Ok(Self {
            addr,
            files,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The certificates the server uses (and trusts for client certificates).
    pub fn tls(&self) -> &TlsFiles {
        &self.files
    }

    /// The listening address (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.base.accepted.load(Ordering::SeqCst)
    }

    /// A snapshot of what each connection (in accept order) did.
    pub fn connections(&self) -> Vec<TlsConnectionLog> {
        let mut logs = self
            .shared
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let scripts = self
            .shared
            .base
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (log, script) in logs.iter_mut().zip(scripts) {
            log.script = script;
        }
        logs
    }

    /// Waits until at least `n` connections were accepted; false on timeout.
    pub fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.accepted() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Waits until connection `index` is over (its thread finished its work, whatever
    /// the outcome), so its log is final; false on timeout.
    pub fn wait_for_end(&self, index: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self
                .shared
                .ended
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(index)
                .copied()
                .unwrap_or(false);
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for FakeTlsServer {
    fn drop(&mut self) {
        self.shared.base.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<TlsShared>,
    script_for: &Arc<TlsScriptFn>,
    keys: &Arc<Keys>,
) {
    let mut workers = Vec::new();
    while !shared.base.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                let index = {
                    let mut logs = shared
                        .base
                        .logs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    logs.push(ConnectionLog::default());
                    shared
                        .tls
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(TlsConnectionLog::default());
                    shared
                        .ended
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(false);
                    logs.len() - 1
                };
                shared.base.accepted.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(shared);
                let keys = Arc::clone(keys);
                let script = script_for(index);
                workers.push(std::thread::spawn(move || {
                    let _ = serve(stream, index, &script, &keys, &shared);
                    if let Some(done) = shared
                        .ended
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_mut(index)
                    {
                        *done = true;
                    }
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(listener, POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

fn serve(
    mut tcp: TcpStream,
    index: usize,
    script: &TlsScript,
    keys: &Keys,
    shared: &TlsShared,
) -> Result<(), Halt> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(POLL))?;
    tcp.set_write_timeout(Some(POLL))?;
    let _ = tcp.set_nodelay(true);
    let result = negotiate(&mut tcp, index, script, keys, shared);
    if let Err(Halt::ClientClosed) = result {
        shared.base.update(index, |log| log.client_closed = true);
    }
    result
}

/// The first TLS record byte of a handshake (ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

fn negotiate(
    tcp: &mut TcpStream,
    index: usize,
    script: &TlsScript,
    keys: &Keys,
    shared: &TlsShared,
) -> Result<(), Halt> {
    let base = &shared.base;
    loop {
        if peek_byte(tcp, base)? == TLS_HANDSHAKE {
            shared.note(index, |log| log.direct_tls = true);
            return match script.negotiation {
                Negotiation::Direct => tls_session(tcp, index, script, keys, shared, true),
                Negotiation::SslRequest(_) => {
                    tcp.close();
                    Ok(())
                }
            };
        }
        let mut len = [0u8; 4];
        read_exact(tcp, &mut len, base)?;
        let total = usize::try_from(i32::from_be_bytes(len)).map_err(|_| Halt::Io)?;
        if !(8..=MAX_MESSAGE).contains(&total) {
            return Err(Halt::Io);
        }
        let mut packet = len.to_vec();
        packet.resize(total, 0);
        read_exact(tcp, &mut packet[4..], base)?;
        let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if code == GSSENC_REQUEST_CODE {
            write_all(tcp, b"N", base)?;
            continue;
        }
        if code != SSL_REQUEST_CODE {
            // A startup packet without asking for TLS first.
            base.update(index, |log| log.startup = Some(packet));
            tcp.close();
            return Ok(());
        }
        shared.note(index, |log| log.ssl_request = true);
        let reply = match &script.negotiation {
            Negotiation::SslRequest(reply) => reply.clone(),
            Negotiation::Direct => SslReply::Tls,
        };
        return match reply {
            SslReply::No(steps) => {
                write_all(tcp, b"N", base)?;
                play(tcp, index, &steps, base)
            }
            SslReply::Error(bytes) => {
                write_all(tcp, &bytes, base)?;
                tcp.close();
                Ok(())
            }
            SslReply::PlaintextAfterS(bytes) => {
                let mut out = b"S".to_vec();
                out.extend_from_slice(&bytes);
                write_all(tcp, &out, base)?;
                drain_until_closed(tcp, index, shared)
            }
            SslReply::Tls => {
                write_all(tcp, b"S", base)?;
                tls_session(tcp, index, script, keys, shared, false)
            }
        };
    }
}

/// The next byte the client sends, left unread.
fn peek_byte(tcp: &mut TcpStream, shared: &Shared) -> Result<u8, Halt> {
    let mut byte = [0u8; 1];
    loop {
        if shared.stopping() {
            return Err(Halt::Stopping);
        }
        match tcp.peek(&mut byte) {
            Ok(0) => return Err(Halt::ClientClosed),
            Ok(_) => return Ok(byte[0]),
            Err(e) if is_retry(&e) => {}
            Err(_) => return Err(Halt::ClientClosed),
        }
    }
}

/// Reads and counts whatever the client sends until it closes (or the server stops).
fn drain_until_closed(tcp: &mut TcpStream, index: usize, shared: &TlsShared) -> Result<(), Halt> {
    let mut buf = [0u8; 4096];
    loop {
        if shared.base.stopping() {
            return Err(Halt::Stopping);
        }
        match tcp.read(&mut buf) {
            Ok(0) => return Err(Halt::ClientClosed),
            Ok(n) => shared.note(index, |log| log.bytes_after_reply += n),
            Err(e) if is_retry(&e) => {}
            Err(_) => return Err(Halt::ClientClosed),
        }
    }
}

/// TLS over an accepted TCP stream, for [`play`].
struct TlsStream<'a> {
    conn: ServerConnection,
    tcp: &'a mut TcpStream,
}

impl Read for TlsStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        rustls::Stream::new(&mut self.conn, &mut *self.tcp).read(buf)
    }
}

impl Write for TlsStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        rustls::Stream::new(&mut self.conn, &mut *self.tcp).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        rustls::Stream::new(&mut self.conn, &mut *self.tcp).flush()
    }
}

impl Transport for TlsStream<'_> {
    fn close(&mut self) {
        self.conn.send_close_notify();
        for _ in 0..100 {
            match self.conn.write_tls(&mut *self.tcp) {
                Ok(_) if !self.conn.wants_write() => break,
                Ok(_) => {}
                Err(e) if is_retry(&e) => {}
                Err(_) => break,
            }
        }
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    fn reset(&mut self) {
        set_linger_zero(self.tcp);
    }
}

fn tls_session(
    tcp: &mut TcpStream,
    index: usize,
    script: &TlsScript,
    keys: &Keys,
    shared: &TlsShared,
    direct: bool,
) -> Result<(), Halt> {
    let base = &shared.base;
    let fail =
        |e: &dyn std::fmt::Display| shared.note(index, |log| log.tls_error = Some(e.to_string()));

    // Read the ClientHello first, to record what the client offered.
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        if base.stopping() {
            return Err(Halt::Stopping);
        }
        match acceptor.read_tls(tcp) {
            Ok(0) => return Err(Halt::ClientClosed),
            Ok(_) => {}
            Err(e) if is_retry(&e) => continue,
            Err(_) => return Err(Halt::ClientClosed),
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => break accepted,
            Err((e, mut alert)) => {
                fail(&e);
                let _ = alert.write_all(tcp);
                tcp.close();
                return Ok(());
            }
        }
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let offered: Vec<Vec<u8>> = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let offered_postgresql = offered.iter().any(|p| p == ALPN_POSTGRESQL);
    shared.note(index, |log| {
        log.sni = sni;
        log.alpn_offered = offered;
    });
    let config = match keys.config(script) {
        Ok(config) => config,
        Err(e) => {
            fail(&e);
            tcp.close();
            return Ok(());
        }
    };
    let mut conn = match accepted.into_connection(config) {
        Ok(conn) => conn,
        Err((e, mut alert)) => {
            fail(&e);
            let _ = alert.write_all(tcp);
            tcp.close();
            return Ok(());
        }
    };
    while conn.is_handshaking() {
        if base.stopping() {
            return Err(Halt::Stopping);
        }
        match conn.complete_io(tcp) {
            Ok(_) => {}
            Err(e) if is_retry(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(Halt::ClientClosed),
            Err(e) => {
                fail(&e);
                tcp.close();
                return Ok(());
            }
        }
    }
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => Some(TlsVersion::Tls12),
        Some(rustls::ProtocolVersion::TLSv1_3) => Some(TlsVersion::Tls13),
        _ => None,
    };
    let client_cert = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec());
    let selected = conn.alpn_protocol().map(<[u8]>::to_vec);
    shared.note(index, |log| {
        log.handshake_done = true;
        log.tls_version = version;
        log.client_cert = client_cert;
        log.alpn_selected = selected;
    });
    let mut stream = TlsStream { conn, tcp };
    if direct && script.alpn == Alpn::Select && !offered_postgresql {
        // PostgreSQL 17 drops a direct TLS connection that did not negotiate ALPN.
        stream.tcp.close();
        return Ok(());
    }
    match &script.after {
        AfterHandshake::Script(steps) => play(&mut stream, index, steps, base),
        AfterHandshake::CloseNotify => {
            stream.close();
            Ok(())
        }
        AfterHandshake::FatalAlert => {
            // A forged application-data record: rustls fails to decrypt it and queues an
            // encrypted fatal bad_record_mac alert, which goes out before the close.
            let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
            forged.extend_from_slice(&[0x5a; 0x20]);
            let _ = stream.conn.read_tls(&mut &forged[..]);
            let _ = stream.conn.process_new_packets();
            flush_tls(&mut stream, base);
            stream.tcp.close();
            Ok(())
        }
        AfterHandshake::TruncatedRecord => {
            flush_tls(&mut stream, base);
            let _ = stream.conn.writer().write_all(&backend::handshake_ok());
            let mut record = Vec::new();
            while stream.conn.wants_write() {
                if stream.conn.write_tls(&mut record).is_err() {
                    break;
                }
            }
            write_all(stream.tcp, &record[..record.len() / 2], base)?;
            stream.tcp.close();
            Ok(())
        }
        AfterHandshake::Garbage(n) => {
            flush_tls(&mut stream, base);
            let mut rng = 0x9E37_79B9_u32 ^ u32::try_from(index % 65_536).unwrap_or(0);
            let garbage: Vec<u8> = (0..*n).map(|_| xorshift(&mut rng)).collect();
            write_all(stream.tcp, &garbage, base)?;
            drain_until_closed(stream.tcp, index, shared)
        }
    }
}

/// Writes out whatever TLS records rustls holds (session tickets, an alert).
fn flush_tls(stream: &mut TlsStream<'_>, shared: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream.conn.wants_write() && !shared.stopping() && Instant::now() < deadline {
        match stream.conn.write_tls(&mut *stream.tcp) {
            Ok(_) => {}
            Err(e) if is_retry(&e) => {}
            Err(_) => return,
        }
    }
}
