//! SCRAM-SHA-256 end to end against a server side computed here (RFC 5802 / RFC 7677), and
//! the ways a server can fail to prove itself.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::BytesMut;
use ioxide_pg::proto::frame::Frames;
use ioxide_pg::proto::startup::{Startup, StartupStatus};
use ioxide_pg::{PgError, PgOptions};
use sha2::{Digest, Sha256};

// The SCRAM primitives (HMAC, Hi) shared with the hostile SCRAM fake server.
#[allow(dead_code)]
#[path = "hostile/scram.rs"]
mod scram;
use scram::{hi, hmac};

const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"NaCl-and-pepper!";
const ITERATIONS: u32 = 4096;

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], data].concat()
}

/// The one frontend message in `out` (a PasswordMessage-family `p`), as its body.
fn take_p(out: &mut BytesMut) -> Vec<u8> {
    assert_eq!(out.first(), Some(&b'p'));
    let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
    assert_eq!(out.len(), len + 1, "exactly one message");
    let body = out[5..].to_vec();
    out.clear();
    body
}

/// What the fake server does at the last step.
enum Finale {
    Honest,
    WrongSignature,
    ServerError,
    SkipFinal,
}

fn exchange(finale: Finale) -> Result<StartupStatus, PgError> {
    let opts = PgOptions::new().user("user").password(PASSWORD);
    let mut client = Startup::new(&opts);
    let mut out = BytesMut::new();
    client.start(&mut out)?;
    out.clear();

    client.handle(b'R', &auth(10, b"SCRAM-SHA-256\0\0"), &mut out)?;
    // SASLInitialResponse: mechanism, i32 length, client-first-message
    let body = take_p(&mut out);
    let mech_end = body.iter().position(|&b| b == 0).expect("mechanism");
    assert_eq!(&body[..mech_end], b"SCRAM-SHA-256");
    let client_first = std::str::from_utf8(&body[mech_end + 5..])
        .expect("utf8")
        .to_owned();
    let client_first_bare = client_first
        .strip_prefix("n,,")
        .expect("no channel binding: n,,");
    let client_nonce = client_first_bare.strip_prefix("n=,r=").expect("nonce");

    let server_nonce = format!("{client_nonce}3rfcNHYJY1ZVvWVs7j");
    let server_first = format!(
        "r={server_nonce},s={},i={ITERATIONS}",
        STANDARD.encode(SALT)
    );
    client.handle(b'R', &auth(11, server_first.as_bytes()), &mut out)?;

    let client_final = String::from_utf8(take_p(&mut out)).expect("utf8");
    let (without_proof, proof) = client_final.rsplit_once(",p=").expect("proof");
    assert_eq!(without_proof, format!("c=biws,r={server_nonce}"));

    let salted = hi(PASSWORD.as_bytes(), SALT, ITERATIONS);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac(&stored_key, auth_message.as_bytes());
    let expected_proof: Vec<u8> = client_key
        .iter()
        .zip(client_signature)
        .map(|(k, s)| k ^ s)
        .collect();
    assert_eq!(
        STANDARD.decode(proof).expect("base64"),
        expected_proof,
        "client proof"
    );

    let server_key = hmac(&salted, b"Server Key");
    let mut server_signature = hmac(&server_key, auth_message.as_bytes());
    match finale {
        Finale::Honest => {}
        Finale::WrongSignature => server_signature[0] ^= 1,
        Finale::ServerError => {
            client.handle(b'R', &auth(12, b"e=invalid-proof"), &mut out)?;
        }
        Finale::SkipFinal => {
            client.handle(b'R', &auth(0, b""), &mut out)?;
        }
    }
    let server_final = format!("v={}", STANDARD.encode(server_signature));
    client.handle(b'R', &auth(12, server_final.as_bytes()), &mut out)?;
    assert!(out.is_empty());
    client.handle(b'R', &auth(0, b""), &mut out)?;
    client.handle(b'K', &[0, 0, 0, 1, 0, 0, 0, 2], &mut out)?;
    client.handle(b'Z', b"I", &mut out)
}

#[test]
fn scram_exchange_succeeds_against_an_honest_server() {
    let status = exchange(Finale::Honest).expect("authenticated");
    assert!(matches!(status, StartupStatus::Ready(info) if info.backend_key().is_some()));
}

#[test]
fn wrong_server_signature_is_an_auth_error() {
    let e = exchange(Finale::WrongSignature).expect_err("must refuse an impostor");
    assert!(e.is_auth(), "{e}");
    assert!(e.to_string().contains("SCRAM server signature"), "{e}");
}

#[test]
fn server_reported_scram_error_is_an_auth_error() {
    let e = exchange(Finale::ServerError).expect_err("server said no");
    assert!(
        e.is_auth() && e.to_string().contains("invalid-proof"),
        "{e}"
    );
}

#[test]
fn authentication_ok_without_sasl_final_is_refused() {
    // A server that skips SASLFinal never proves it knows the password.
    let e = exchange(Finale::SkipFinal).expect_err("must not accept");
    assert!(e.is_protocol(), "{e}");
    assert!(e.to_string().contains("waiting for SASLFinal"), "{e}");
}

#[test]
fn bad_server_first_messages_are_auth_errors() {
    for server_first in [
        &b"r=not-our-nonce,s=c2FsdA==,i=4096"[..],
        b"garbage",
        b"r=,s=,i=999999999",
        b"\xff\xfe",
    ] {
        let opts = PgOptions::new().user("user").password(PASSWORD);
        let mut client = Startup::new(&opts);
        let mut out = BytesMut::new();
        client.start(&mut out).expect("start");
        client
            .handle(b'R', &auth(10, b"SCRAM-SHA-256\0\0"), &mut out)
            .expect("sasl");
        let e = client.handle(b'R', &auth(11, server_first), &mut out).err();
        assert!(e.as_ref().is_some_and(PgError::is_auth), "{e:?}");
    }
}

#[test]
fn md5_known_answer() {
    // The hash PostgreSQL expects: "md5" + md5(md5(password + user) + salt).
    let hash = postgres_protocol_md5("md5_user", "password", [0x2a, 0x3d, 0x8f, 0xe0]);
    assert_eq!(hash, "md562af4dd09bbb41884907a838a3233294");
}

/// Runs the MD5 path through `Startup` and reads the hash it sends.
fn postgres_protocol_md5(user: &str, password: &str, salt: [u8; 4]) -> String {
    let opts = PgOptions::new().user(user).password(password);
    let mut client = Startup::new(&opts);
    let mut out = BytesMut::new();
    client.start(&mut out).expect("start");
    out.clear();
    client.handle(b'R', &auth(5, &salt), &mut out).expect("md5");
    let frames: Vec<_> = Frames::new(&out, 1 << 20)
        .collect::<Result<_, _>>()
        .expect("framed");
    assert_eq!(frames.len(), 1);
    let body = frames[0].1;
    String::from_utf8(body[..body.len() - 1].to_vec()).expect("ascii")
}
