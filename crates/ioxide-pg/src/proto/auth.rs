//! Authentication methods and the `require_auth` policy (libpq's option of the same name).

use std::fmt;

use crate::PgError;

/// An authentication method a server may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// The server asked for nothing (`trust`, or `peer` over a Unix socket). libpq: `none`.
    None,
    /// Cleartext password. libpq: `password`.
    Password,
    /// MD5-hashed password. libpq: `md5`.
    Md5,
    /// SCRAM-SHA-256 (SASL). libpq: `scram-sha-256`.
    ScramSha256,
    /// GSSAPI / Kerberos (not supported by this driver). libpq: `gss`.
    Gss,
    /// SSPI (not supported by this driver). libpq: `sspi`.
    Sspi,
}

const ALL: [AuthMethod; 6] = [
    AuthMethod::None,
    AuthMethod::Password,
    AuthMethod::Md5,
    AuthMethod::ScramSha256,
    AuthMethod::Gss,
    AuthMethod::Sspi,
];

impl AuthMethod {
    /// libpq's name for the method.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
        }
    }

    fn from_name(s: &str) -> Option<AuthMethod> {
        ALL.into_iter().find(|m| m.name() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of authentication methods the client accepts from the server (libpq's
/// `require_auth`). Default: all of them.
///
/// `"scram-sha-256"` accepts only SCRAM: a server that asks for a cleartext or MD5 password,
/// or lets the client in without authenticating, is refused. `"!password,!md5"` accepts all
/// but those two. Positive and negated entries cannot be mixed.
///
/// ```
/// use ioxide_pg::{AuthMethod, RequireAuth};
/// let only_scram: RequireAuth = "scram-sha-256".parse().unwrap();
/// assert!(only_scram.allows(AuthMethod::ScramSha256));
/// assert!(!only_scram.allows(AuthMethod::None));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequireAuth {
    bits: u8,
}

impl Default for RequireAuth {
    fn default() -> RequireAuth {
        RequireAuth::any()
    }
}

impl RequireAuth {
    /// Every method (no restriction).
    pub fn any() -> RequireAuth {
        RequireAuth {
            bits: ALL.iter().fold(0, |b, m| b | m.bit()),
        }
    }

    /// Exactly the given methods.
    pub fn only(methods: &[AuthMethod]) -> RequireAuth {
        RequireAuth {
            bits: methods.iter().fold(0, |b, m| b | m.bit()),
        }
    }

    /// Whether `method` is accepted.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.bits & method.bit() != 0
    }

    /// Fails with an auth error if `method` is not accepted.
    pub(crate) fn check(&self, method: AuthMethod) -> Result<(), PgError> {
        if self.allows(method) {
            return Ok(());
        }
        let what = match method {
            AuthMethod::None => "the server did not ask for authentication".to_owned(),
            m => format!("the server asked for {m} authentication"),
        };
        Err(PgError::auth(format!(
            "{what}, which require_auth ({self}) does not allow"
        )))
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for m in ALL.into_iter().filter(|m| self.allows(*m)) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(m.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequireAuth({self})")
    }
}

impl std::str::FromStr for RequireAuth {
    type Err = PgError;

    /// Parses a comma-separated list of libpq method names, all plain or all negated (`!`).
    fn from_str(s: &str) -> Result<RequireAuth, PgError> {
        let bad = |msg: String| PgError::config("require_auth", Some(s), msg);
        let mut set = 0u8;
        let mut negated = None;
        for item in s.split(',').map(str::trim) {
            let (neg, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            if *negated.get_or_insert(neg) != neg {
                return Err(bad("negated and plain methods cannot be mixed".into()));
            }
            let m = AuthMethod::from_name(name).ok_or_else(|| {
                bad(format!(
                    "unknown method {name:?} (expected password, md5, scram-sha-256, gss, sspi or none)"
                ))
            })?;
            set |= m.bit();
        }
        let bits = if negated == Some(true) {
            RequireAuth::any().bits & !set
        } else {
            set
        };
        if bits == 0 {
            return Err(bad("no method would be allowed".into()));
        }
        Ok(RequireAuth { bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_negations() {
        let r: RequireAuth = "scram-sha-256, md5".parse().expect("valid");
        assert_eq!(r.to_string(), "md5,scram-sha-256");
        let r: RequireAuth = "!password,!none".parse().expect("valid");
        assert_eq!(r.to_string(), "md5,scram-sha-256,gss,sspi");
        assert_eq!(
            RequireAuth::default().to_string(),
            "none,password,md5,scram-sha-256,gss,sspi"
        );
    }

    #[test]
    fn rejects_bad_lists_naming_the_field() {
        for s in [
            "scram",
            "md5,!password",
            "",
            "!none,!password,!md5,!scram-sha-256,!gss,!sspi",
        ] {
            let e = s.parse::<RequireAuth>().err();
            assert_eq!(
                e.as_ref().and_then(PgError::config_field),
                Some("require_auth"),
                "{s}"
            );
        }
    }

    #[test]
    fn check_explains_refusal() {
        let r = RequireAuth::only(&[AuthMethod::ScramSha256]);
        let e = r.check(AuthMethod::None).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("authentication failed: the server did not ask for authentication, which require_auth (scram-sha-256) does not allow")
        );
        assert!(r.check(AuthMethod::ScramSha256).is_ok());
    }
}
