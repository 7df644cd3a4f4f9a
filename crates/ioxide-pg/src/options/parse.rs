//! Text forms of options: libpq conninfo strings, URL pieces, durations.

use std::borrow::Cow;
use std::time::Duration;

use crate::PgError;

/// Decimal seconds (`10`, `2.5`), non-negative and finite.
pub(super) fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("not a valid duration: {e}"))
}

pub(super) fn percent_decode(s: &str, field: &str) -> Result<String, PgError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgError::config(field, None, "bad percent-encoding in the URL"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| PgError::config(field, None, "percent-decodes to invalid UTF-8"))
}

/// Returns `url` with a placeholder host if its authority has none, and whether it had one.
pub(super) fn fill_empty_host(url: &str) -> (Cow<'_, str>, bool) {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return (url.into(), true);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_and_port = &authority[host_start..];
    if !host_and_port.is_empty() && !host_and_port.starts_with(':') {
        return (url.into(), true);
    }
    let at = scheme_end + host_start;
    (
        format!("{}placeholder{}", &url[..at], &url[at..]).into(),
        false,
    )
}

/// Appended to an error whose text was left out because it follows a password: an
/// unquoted password with a space (`password=my secret`) leaves pieces of itself behind as
/// keys or values, which an error must not quote.
pub(super) const AFTER_PASSWORD: &str =
    " (not shown: it follows the password and may be part of it; quote a password that \
     holds spaces or quotes: password='…', and percent-encode one in a URL)";

/// Whether an unknown or malformed key may be quoted in an error: an option name is a short
/// identifier. Anything else (`postgresql+psycopg://u:pw@h/d?x`, `pw@h/d`) may be a URL or a
/// piece of one, password included.
pub(super) fn quotable_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits a libpq conninfo string into `(key, value)` pairs.
///
/// Errors quote no text after a `password` key: see [`AFTER_PASSWORD`].
pub(super) fn parse_conninfo(s: &str) -> Result<Vec<(String, String)>, PgError> {
    let bad = |msg: &str| PgError::config("conninfo", None, msg);
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            let e = PgError::config(
                "conninfo",
                quotable_key(&key).then_some(key.as_str()),
                "missing \"=\" after key",
            );
            let after_password = pairs.iter().any(|(k, _)| k == "password");
            return Err(if after_password {
                e.redacted(AFTER_PASSWORD)
            } else {
                e
            });
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => {
                        value.push(chars.next().ok_or_else(|| bad("dangling backslash"))?)
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad("unterminated quoted value")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| bad("dangling backslash"))?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_pairs() {
        let pairs = parse_conninfo(r"a=1  b = 'x y' c=\' d=''").ok();
        let expected = [("a", "1"), ("b", "x y"), ("c", "'"), ("d", "")];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs, Some(expected));
        assert!(parse_conninfo("a='x").is_err());
        assert!(parse_conninfo(r"a=x\").is_err());
        assert!(parse_conninfo("a").is_err());
    }

    #[test]
    fn empty_hosts_get_a_placeholder() {
        assert_eq!(
            fill_empty_host("postgres://u@/d"),
            ("postgres://u@placeholder/d".into(), false)
        );
        assert_eq!(
            fill_empty_host("postgres:///d"),
            ("postgres://placeholder/d".into(), false)
        );
        assert_eq!(
            fill_empty_host("postgres://:5433/d"),
            ("postgres://placeholder:5433/d".into(), false)
        );
        assert_eq!(
            fill_empty_host("postgres://h/d"),
            ("postgres://h/d".into(), true)
        );
    }

    #[test]
    fn percent_decoding_and_seconds() {
        assert_eq!(
            percent_decode("a%20b%2F", "f").ok().as_deref(),
            Some("a b/")
        );
        assert!(percent_decode("%zz", "f").is_err());
        assert!(percent_decode("%ff", "f").is_err(), "invalid UTF-8");
        assert_eq!(seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert!(seconds("-1").is_err() && seconds("x").is_err() && seconds("inf").is_err());
    }
}
