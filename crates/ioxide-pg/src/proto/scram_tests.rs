#![allow(clippy::unwrap_used)]

use super::*;

const RFC_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn cached(password: &[u8], salt: &[u8], iterations: u32) -> bool {
    cache()
        .iter()
        .any(|e| e.matches(password, salt, iterations))
}

fn rfc_client() -> ScramClient {
    ScramClient::with_nonce(b"pencil", ChannelBinding::Unsupported, "user", RFC_NONCE)
}

#[test]
fn rfc7677_test_vector() {
    for _ in 0..2 {
        // The second round takes the keys from the cache: the same messages.
        let mut c = rfc_client();
        assert_eq!(c.message(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        c.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(c.message()).unwrap(), RFC_CLIENT_FINAL);
        c.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        assert!(cached(b"pencil", &salt, 4096));
    }
}

#[test]
fn a_wrong_server_signature_or_a_server_error_is_refused() {
    let mut c = rfc_client();
    c.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    let e = c
        .server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=")
        .unwrap_err();
    assert!(
        e.is_auth() && e.to_string().contains("SCRAM server signature"),
        "{e}"
    );
    let e = c.server_final(b"e=invalid-proof").unwrap_err();
    assert!(e.to_string().contains("invalid-proof"), "{e}");
    let e = c.server_final(b"x=1").unwrap_err();
    assert!(e.to_string().contains("v="), "{e}");
}

#[test]
fn the_server_nonce_must_extend_ours() {
    for first in [
        "r=someone-elses-nonce,s=c2FsdA==,i=4096",
        "r=rOprNGfwEbeRWgbNEkqO,s=c2FsdA==,i=4096",
        "r=rOprNGfwEbeRWgbNEkq,s=c2FsdA==,i=4096",
    ] {
        let e = rfc_client().server_first(first.as_bytes()).unwrap_err();
        assert!(
            e.is_auth() && e.to_string().contains("nonce"),
            "{first}: {e}"
        );
    }
    for first in [
        "garbage",
        "s=c2FsdA==,r=rOprNGfwEbeRWgbNEkqOx,i=4096",
        "r=rOprNGfwEbeRWgbNEkqOx,s=@@,i=4096",
        "r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=0",
        "r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=-1",
    ] {
        let e = rfc_client().server_first(first.as_bytes()).unwrap_err();
        assert!(
            e.is_auth() && e.to_string().contains("server-first"),
            "{first}: {e}"
        );
    }
}

#[test]
fn random_nonces_and_gs2_headers() {
    let a = ScramClient::new(b"p", ChannelBinding::Unsupported);
    let b = ScramClient::new(b"p", ChannelBinding::Unrequested);
    let a = std::str::from_utf8(a.message()).unwrap().to_owned();
    let b = std::str::from_utf8(b.message()).unwrap().to_owned();
    let na = a.strip_prefix("n,,n=,r=").unwrap();
    let nb = b.strip_prefix("y,,n=,r=").unwrap();
    assert_eq!(na.len(), 24);
    assert!(!na.contains(','));
    assert_ne!(na, nb);

    let hash = vec![7u8; 32];
    let mut c = ScramClient::with_nonce(
        b"p",
        ChannelBinding::TlsServerEndPoint(hash.clone()),
        "",
        "abc",
    );
    assert_eq!(c.message(), b"p=tls-server-end-point,,n=,r=abc");
    c.server_first(b"r=abcdef,s=c2FsdC1jYg==,i=1").unwrap();
    let fin = std::str::from_utf8(c.message()).unwrap();
    let cb = fin
        .strip_prefix("c=")
        .and_then(|f| f.split(',').next())
        .unwrap();
    let mut expected = b"p=tls-server-end-point,,".to_vec();
    expected.extend_from_slice(&hash);
    assert_eq!(STANDARD.decode(cb).unwrap(), expected);
    assert!(fin.contains(",r=abcdef,p="), "{fin}");
}

#[test]
fn the_cache_supplies_the_keys_and_forget_removes_them() {
    let (pw, salt) = (b"cache-test-password", b"cache-test-salt!");
    let first = format!("r=abcxyz,s={},i=2", STANDARD.encode(salt));
    let mut c = ScramClient::with_nonce(pw, ChannelBinding::Unsupported, "", "abc");
    c.server_first(first.as_bytes()).unwrap();
    let honest = c.message().to_vec();
    assert!(cached(pw, salt, 2));

    // Spoil the cached keys: the next exchange must use them, so its proof changes.
    for e in cache().iter_mut() {
        if e.matches(pw, salt, 2) {
            e.keys.client_key = [1; 32];
        }
    }
    let mut d = ScramClient::with_nonce(pw, ChannelBinding::Unsupported, "", "abc");
    d.server_first(first.as_bytes()).unwrap();
    assert_ne!(d.message(), &honest[..], "the cached keys were not used");

    // A failed login forgets the entry; the next exchange derives the right keys again.
    d.forget_keys();
    assert!(!cached(pw, salt, 2));
    let mut e = ScramClient::with_nonce(pw, ChannelBinding::Unsupported, "", "abc");
    e.server_first(first.as_bytes()).unwrap();
    assert_eq!(e.message(), &honest[..]);
    e.forget_keys();
}

#[test]
fn the_cache_is_bounded_and_evicts_the_oldest() {
    let pw = b"eviction-test";
    for i in 0..=CACHE_ENTRIES {
        let salt = format!("evict-{i}");
        derive_keys(pw, salt.as_bytes(), 1);
    }
    assert!(cache_len() <= CACHE_ENTRIES);
    assert!(!cached(pw, b"evict-0", 1), "the oldest entry stays");
    assert!(cached(pw, format!("evict-{CACHE_ENTRIES}").as_bytes(), 1));
}

#[test]
fn cache_entries_are_wiped() {
    fn zeroize_on_drop<T: ZeroizeOnDrop>() {}
    zeroize_on_drop::<CacheEntry>();
    zeroize_on_drop::<Keys>();

    let mut e = CacheEntry::for_test(b"secret", b"salt", 3);
    assert!(!e.is_wiped());
    assert_ne!(e.keys.client_key, [0; 32]);
    // What Drop runs (ZeroizeOnDrop's derive calls zeroize()).
    e.zeroize();
    assert!(e.is_wiped());
}

#[test]
fn saslprep_or_the_raw_bytes() {
    // U+00AD (soft hyphen) maps to nothing; U+00A0 (no-break space) to a space.
    assert_eq!(&saslprep("I\u{00AD}X".as_bytes())[..], b"IX");
    assert_eq!(&saslprep("a\u{00A0}b".as_bytes())[..], b"a b");
    // Prohibited (a control character) and not UTF-8: used as given.
    assert_eq!(&saslprep(b"a\x07b")[..], b"a\x07b");
    assert_eq!(&saslprep(b"\xff\xfe")[..], b"\xff\xfe");
}
