//! A dynamic fake server for SCRAM-SHA-256 (RFC 5802 / RFC 7677): it answers the client's
//! real nonce with a valid server-first message, checks the client's proof, then sends a
//! SASLFinal whose server signature is wrong — followed at once by AuthenticationOk and a
//! whole successful handshake, as an impostor that does not know the password would.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use testkit::backend;

/// The password the fake's SCRAM verifier is derived from.
pub const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"hostile-salt-123";
const ITERATIONS: u32 = 4096;

/// What the fake saw.
#[derive(Debug)]
pub struct Outcome {
    /// The client's proof matched the password: the exchange itself was well-formed.
    pub client_proof_valid: bool,
    /// After the forged SASLFinal, the client closed the socket (instead of going on).
    pub client_hung_up: bool,
    /// Bytes the client sent after the forged SASLFinal (it should send none).
    pub bytes_after_final: usize,
}

/// HMAC-SHA-256.
pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's Hi().
pub fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &[0, 0, 0, 1]].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// `R` with an auth code and data.
fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    backend::message(b'R', &[&code.to_be_bytes()[..], data].concat())
}

/// Reads one `p` (PasswordMessage family) frontend message and returns its body.
fn read_p(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    if head[0] != b'p' {
        return Err(bad(format!(
            "expected a 'p' message, got tag {:#04x}",
            head[0]
        )));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=64 * 1024).contains(&len) {
        return Err(bad(format!("implausible length {len}")));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn accept(listener: &TcpListener, within: Duration) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts the impostor on a loopback port; the thread serves one connection and reports.
pub fn wrong_signature_server() -> io::Result<(u16, JoinHandle<io::Result<Outcome>>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let handle = std::thread::spawn(move || serve(&listener));
    Ok((port, handle))
}

fn serve(listener: &TcpListener) -> io::Result<Outcome> {
    let mut s = accept(listener, Duration::from_secs(4))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_nodelay(true)?;

    // StartupMessage (untagged), after an SSLRequest answered `N` (sslmode=prefer sends one).
    let mut startup;
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(8..=10_000).contains(&len) {
            return Err(bad(format!("startup packet length {len}")));
        }
        startup = vec![0u8; len - 4];
        s.read_exact(&mut startup)?;
        if startup == [0x04, 0xd2, 0x16, 0x2f] {
            s.write_all(b"N")?;
            continue;
        }
        break;
    }

    s.write_all(&backend::authentication_sasl(&["SCRAM-SHA-256"]))?;

    // SASLInitialResponse: mechanism\0, i32 length, client-first-message.
    let body = read_p(&mut s)?;
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("no mechanism"))?;
    if &body[..nul] != b"SCRAM-SHA-256" {
        return Err(bad("client did not pick SCRAM-SHA-256"));
    }
    let client_first = body
        .get(nul + 5..)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| bad("client-first-message"))?;
    let bare = client_first
        .strip_prefix("n,,")
        .ok_or_else(|| bad(format!("unexpected GS2 header in {client_first:?}")))?;
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .ok_or_else(|| bad("no client nonce"))?;

    // A valid server-first: the client's nonce extended, a salt, 4096 iterations.
    let server_nonce = format!("{client_nonce}Zm9yZ2VkLXNlcnZlcg");
    let server_first = format!(
        "r={server_nonce},s={},i={ITERATIONS}",
        STANDARD.encode(SALT)
    );
    s.write_all(&auth(11, server_first.as_bytes()))?;

    // client-final: c=biws,r=<nonce>,p=<proof>
    let client_final = String::from_utf8(read_p(&mut s)?).map_err(|_| bad("client-final utf8"))?;
    let (without_proof, proof) = client_final
        .rsplit_once(",p=")
        .ok_or_else(|| bad("no proof"))?;
    let salted = hi(PASSWORD.as_bytes(), SALT, ITERATIONS);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_signature = hmac(&stored_key, auth_message.as_bytes());
    let expected_proof: Vec<u8> = client_key
        .iter()
        .zip(client_signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let client_proof_valid = STANDARD.decode(proof).ok() == Some(expected_proof)
        && without_proof == format!("c=biws,r={server_nonce}");

    // The forged SASLFinal (one bit off the true signature), then "you're in".
    let server_key = hmac(&salted, b"Server Key");
    let mut signature = hmac(&server_key, auth_message.as_bytes());
    signature[0] ^= 0x01;
    let mut out = auth(12, format!("v={}", STANDARD.encode(signature)).as_bytes());
    out.extend(backend::handshake_ok());
    s.write_all(&out)?;

    // The client must stop here: read until it hangs up (or the read times out).
    let mut bytes_after_final = 0;
    let mut buf = [0u8; 256];
    let client_hung_up = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes_after_final += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    Ok(Outcome {
        client_proof_valid,
        client_hung_up,
        bytes_after_final,
    })
}
