//! The SCRAM-SHA-256 client (RFC 5802, RFC 7677) in PostgreSQL's variant, and the
//! process-wide cache of the keys it derives.
//!
//! PostgreSQL's variant: the client-first message carries an empty user name (`n=`; the
//! server takes the role from the StartupMessage), and the GS2 header is `n,,` (the client
//! cannot bind), `y,,` (it could, but the server offered no SCRAM-SHA-256-PLUS) or
//! `p=tls-server-end-point,,` (SCRAM-SHA-256-PLUS over TLS). The password goes through
//! SASLprep; like PostgreSQL, the raw bytes are used where SASLprep fails.
//!
//! # The key cache
//!
//! The salted password — PBKDF2-HMAC-SHA-256 of the password with the role's salt and
//! iteration count, 4096 rounds by default, ~1 ms — depends only on those three, which the
//! server repeats at every login. The client and server keys derived from it are kept per
//! (password, salt, iterations) in a process-wide cache behind a mutex ([`CACHE_ENTRIES`]
//! entries, the oldest evicted first), so a pool's warm-up and every reconnect pay PBKDF2
//! once per role and reactor at most (two reactors that miss at the same time both compute;
//! neither holds the lock while it does). Entries live in memory only and are wiped
//! (zeroized) when evicted, removed or dropped.
//!
//! - A changed password (`ALTER ROLE … PASSWORD`) gives the role a new salt: the next login
//!   misses and computes a new entry. The old one lingers until it is evicted (at most
//!   [`CACHE_ENTRIES`] − 1 newer entries later) or the process exits; it is never used,
//!   since the server no longer sends its salt.
//! - A wrong password cannot log in from the cache (the server checks the proof); the entry
//!   made for it is removed when the login fails after the proof was sent, so a wrong
//!   password is not kept in memory.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::PgError;

/// The SASL name of SCRAM-SHA-256.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL name of SCRAM-SHA-256-PLUS (with channel binding).
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Most entries the key cache keeps (one per password, salt and iteration count: a process
/// talks to a few roles); the oldest goes first.
pub const CACHE_ENTRIES: usize = 64;

/// Random bytes in a client nonce (24 base64 characters, which never contain a comma).
const NONCE_BYTES: usize = 18;

/// The channel binding of a SCRAM exchange, i.e. its GS2 header.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// `n,,`: the client cannot bind (no TLS, or binding disabled).
    Unsupported,
    /// `y,,`: the client could bind, but the server offered no SCRAM-SHA-256-PLUS.
    Unrequested,
    /// `p=tls-server-end-point,,` with the hash of the server certificate.
    TlsServerEndPoint(Vec<u8>),
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.gs2_header())
    }
}

impl ChannelBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            ChannelBinding::Unsupported => "n,,",
            ChannelBinding::Unrequested => "y,,",
            ChannelBinding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            ChannelBinding::TlsServerEndPoint(hash) => hash,
            _ => &[],
        }
    }
}

enum State {
    /// The client-first message is out; waiting for the server-first.
    First,
    /// The client-final message is out; waiting for the server-final.
    Final {
        server_key: Zeroizing<[u8; 32]>,
        auth_message: String,
        salt: Vec<u8>,
        iterations: u32,
    },
    Done,
}

/// One SCRAM-SHA-256 client exchange: [`message`](Self::message) is the client-first
/// message (SASLInitialResponse), [`server_first`](Self::server_first) takes the
/// SASLContinue data and makes the client-final message (SASLResponse),
/// [`server_final`](Self::server_final) verifies the server's signature (SASLFinal).
pub struct ScramClient {
    /// The SASLprepped password, wiped on drop.
    password: Zeroizing<Vec<u8>>,
    binding: ChannelBinding,
    /// `n=<user>,r=<nonce>`.
    client_first_bare: String,
    /// Where the nonce starts in `client_first_bare`.
    nonce_start: usize,
    message: String,
    state: State,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// An exchange for `password` with a fresh random nonce.
    pub fn new(password: &[u8], binding: ChannelBinding) -> ScramClient {
        let mut bytes = Zeroizing::new([0u8; NONCE_BYTES]);
        rand::fill(&mut bytes[..]);
        let nonce = STANDARD.encode(&bytes[..]);
        ScramClient::with_nonce(password, binding, "", &nonce)
    }

    /// An exchange with a given user name and nonce: for test vectors only (PostgreSQL's
    /// user name is empty, and the nonce must be random).
    #[doc(hidden)]
    pub fn with_nonce(
        password: &[u8],
        binding: ChannelBinding,
        user: &str,
        nonce: &str,
    ) -> ScramClient {
        let client_first_bare = format!("n={user},r={nonce}");
        let nonce_start = client_first_bare.len() - nonce.len();
        let message = format!("{}{client_first_bare}", binding.gs2_header());
        ScramClient {
            password: saslprep(password),
            binding,
            nonce_start,
            client_first_bare,
            message,
            state: State::First,
        }
    }

    /// The message to send next: the client-first message, then the client-final one.
    pub fn message(&self) -> &[u8] {
        self.message.as_bytes()
    }

    fn nonce(&self) -> &str {
        &self.client_first_bare[self.nonce_start..]
    }

    /// Takes the server-first message (`r=…,s=…,i=…`), derives the keys (from the cache,
    /// or with PBKDF2 on a miss) and makes the client-final message, then available from
    /// [`message`](Self::message). The caller checks the iteration count first.
    pub fn server_first(&mut self, data: &[u8]) -> Result<(), PgError> {
        if !matches!(self.state, State::First) {
            return Err(PgError::protocol("SCRAM server-first message out of order"));
        }
        let bad = |why: &str| PgError::auth(format!("invalid SCRAM server-first message: {why}"));
        let text = std::str::from_utf8(data).map_err(|_| bad("not UTF-8"))?;
        let mut attrs = text.split(',');
        let (Some(r), Some(s), Some(i)) = (
            attrs.next().and_then(|a| a.strip_prefix("r=")),
            attrs.next().and_then(|a| a.strip_prefix("s=")),
            attrs.next().and_then(|a| a.strip_prefix("i=")),
        ) else {
            return Err(bad("expected r=<nonce>,s=<salt>,i=<iterations>"));
        };
        let ours = self.nonce();
        if r.len() <= ours.len()
            || !r.starts_with(ours)
            || !r.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(bad("the server nonce does not extend the client nonce"));
        }
        let salt = STANDARD
            .decode(s)
            .map_err(|_| bad("the salt is not base64"))?;
        let iterations: u32 = i
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("the iteration count is not a positive number"))?;

        let keys = derive_keys(&self.password, &salt, iterations);

        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        cbind.extend_from_slice(self.binding.data());
        let mut client_final = format!("c={},r={r}", STANDARD.encode(&cbind));
        let auth_message = format!("{},{text},{client_final}", self.client_first_bare);

        let stored_key = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(keys.client_key)));
        let signature = Zeroizing::new(hmac(&stored_key[..], auth_message.as_bytes()));
        let mut proof = Zeroizing::new(keys.client_key);
        for (p, s) in proof.iter_mut().zip(signature.iter()) {
            *p ^= s;
        }
        let _ = write!(client_final, ",p={}", STANDARD.encode(&proof[..]));
        self.message = client_final;
        self.state = State::Final {
            server_key: Zeroizing::new(keys.server_key),
            auth_message,
            salt,
            iterations,
        };
        Ok(())
    }

    /// Takes the server-final message and checks the server's signature (`v=…`); `e=…` is
    /// the server's refusal.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), PgError> {
        let State::Final {
            server_key,
            auth_message,
            ..
        } = &self.state
        else {
            return Err(PgError::protocol("SCRAM server-final message out of order"));
        };
        let failed = |why: String| {
            PgError::auth(format!(
                "the server failed to prove it knows the password (SCRAM server signature): \
                 {why}"
            ))
        };
        let text = std::str::from_utf8(data).map_err(|_| failed("not UTF-8".into()))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(failed(format!(
                "the server reported error {:?}",
                e.chars().take(64).collect::<String>()
            )));
        }
        let v = text
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("v="))
            .ok_or_else(|| failed("no verifier (v=) in the server-final message".into()))?;
        let v = STANDARD
            .decode(v)
            .map_err(|_| failed("the verifier is not base64".into()))?;
        let mut mac = new_hmac(&server_key[..]);
        mac.update(auth_message.as_bytes());
        mac.verify_slice(&v)
            .map_err(|_| failed("the signature does not match".into()))?;
        self.state = State::Done;
        Ok(())
    }

    /// Removes this exchange's keys from the cache: its login failed after the proof was
    /// sent (most likely a wrong password, which must not stay in memory).
    pub fn forget_keys(&self) {
        if let State::Final {
            salt, iterations, ..
        } = &self.state
        {
            let mut cache = cache();
            cache.retain(|e| !e.matches(&self.password, salt, *iterations));
        }
    }
}

/// SASLprep of a password, or its raw bytes where that fails (not UTF-8, or prohibited
/// characters), as PostgreSQL does.
fn saslprep(password: &[u8]) -> Zeroizing<Vec<u8>> {
    let prepped = std::str::from_utf8(password)
        .ok()
        .and_then(|p| stringprep::saslprep(p).ok());
    Zeroizing::new(match prepped {
        Some(p) => p.into_owned().into_bytes(),
        None => password.to_vec(),
    })
}

fn new_hmac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: the error is unreachable.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = new_hmac(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The derived keys of one (password, salt, iterations).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Keys {
    client_key: [u8; 32],
    server_key: [u8; 32],
}

/// One cache entry: the key (password, salt, iteration count) and its derived keys. Every
/// byte is wiped when the entry is dropped. The secrets live on the heap, so the cache's
/// queue moves only pointers (a move leaves no copy of a key behind).
#[doc(hidden)]
pub struct CacheEntry {
    password: Vec<u8>,
    salt: Vec<u8>,
    iterations: u32,
    keys: Box<Keys>,
}

impl Zeroize for CacheEntry {
    fn zeroize(&mut self) {
        self.password.zeroize();
        self.salt.zeroize();
        self.iterations.zeroize();
        self.keys.zeroize();
    }
}

impl Drop for CacheEntry {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for CacheEntry {}

impl fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheEntry")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl CacheEntry {
    fn matches(&self, password: &[u8], salt: &[u8], iterations: u32) -> bool {
        self.iterations == iterations && self.salt == salt && self.password == password
    }

    /// An entry as the cache makes it, for the wipe test.
    #[doc(hidden)]
    pub fn for_test(password: &[u8], salt: &[u8], iterations: u32) -> CacheEntry {
        CacheEntry {
            password: password.to_vec(),
            salt: salt.to_vec(),
            iterations,
            keys: Box::new(compute_keys(password, salt, iterations)),
        }
    }

    /// Whether every secret byte is zero or gone (after [`Zeroize::zeroize`]).
    #[doc(hidden)]
    pub fn is_wiped(&self) -> bool {
        self.password.is_empty()
            && self.salt.is_empty()
            && self.iterations == 0
            && self.keys.client_key == [0; 32]
            && self.keys.server_key == [0; 32]
    }
}

static CACHE: Mutex<VecDeque<CacheEntry>> = Mutex::new(VecDeque::new());
static PBKDF2_RUNS: AtomicU64 = AtomicU64::new(0);

fn cache() -> MutexGuard<'static, VecDeque<CacheEntry>> {
    // An entry is inserted or removed whole: a panic elsewhere cannot leave one half made.
    CACHE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many PBKDF2 derivations (cache misses) this process has run, for tests and benches.
#[doc(hidden)]
pub fn pbkdf2_count() -> u64 {
    PBKDF2_RUNS.load(Ordering::Relaxed)
}

/// How many entries the key cache holds, for tests and benches.
#[doc(hidden)]
pub fn cache_len() -> usize {
    cache().len()
}

/// Empties the key cache (wiping every entry), for tests and benches.
#[doc(hidden)]
pub fn clear_cache() {
    cache().clear();
}

fn compute_keys(password: &[u8], salt: &[u8], iterations: u32) -> Keys {
    PBKDF2_RUNS.fetch_add(1, Ordering::Relaxed);
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted[..]);
    Keys {
        client_key: hmac(&salted[..], b"Client Key"),
        server_key: hmac(&salted[..], b"Server Key"),
    }
}

/// The keys for (password, salt, iterations): from the cache, or computed (without holding
/// the lock) and inserted.
fn derive_keys(password: &[u8], salt: &[u8], iterations: u32) -> Keys {
    if let Some(e) = cache()
        .iter()
        .find(|e| e.matches(password, salt, iterations))
    {
        return Keys::clone(&e.keys);
    }
    let keys = compute_keys(password, salt, iterations);
    let mut cache = cache();
    if !cache.iter().any(|e| e.matches(password, salt, iterations)) {
        if cache.len() >= CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back(CacheEntry {
            password: password.to_vec(),
            salt: salt.to_vec(),
            iterations,
            keys: Box::new(keys.clone()),
        });
    }
    keys
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
