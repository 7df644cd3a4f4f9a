//! libpq's password file (`passfile`, `PGPASSFILE`, default `~/.pgpass`), consulted at
//! connect time when no password was given.
//!
//! Each line is `hostname:port:database:username:password`; a field that is exactly `*`
//! matches anything; `\:` and `\\` stand for `:` and `\`; a line starting with `#` is a
//! comment; the first matching line wins. The host is matched as given in the options (a name
//! or IP literal, not the resolved address); a Unix-socket connection matches `localhost` when
//! its directory is a default one (`/tmp`, `/var/run/postgresql`, `/run/postgresql`) and its
//! directory path otherwise, as libpq does. A file that is not a plain file or that group or
//! others may access in any way is ignored with a warning, as libpq does; a missing or
//! unreadable one is ignored quietly. The password never appears in a log or an error.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Host, PgOptions};

/// The socket directories a libpq build defaults to (upstream, Debian/Ubuntu, and the latter's
/// target): a connection through one of them is `localhost` to the password file.
const DEFAULT_SOCKET_DIRS: [&str; 3] = ["/tmp", "/var/run/postgresql", "/run/postgresql"];

/// The password file's default location: `$PGPASSFILE`, else `$HOME/.pgpass`.
pub(super) fn default_path(lookup: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |k| lookup(k).filter(|v| !v.is_empty());
    non_empty("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|h| Path::new(&h).join(".pgpass")))
}

impl PgOptions {
    /// libpq's `passfile`: the password file read when no password is given (see below).
    /// Default `$PGPASSFILE`, else `~/.pgpass` (`$HOME/.pgpass`; none when `HOME` is unset).
    /// Key `passfile` (an empty value leaves it unchanged); variable `PGPASSFILE`.
    ///
    /// The file is read on every connect that has no password (or an empty one), never per
    /// query: a plain read of a small local file on the connecting thread, as libpq does. Its lines are `hostname:port:database:username:password`; a field that is
    /// exactly `*` matches anything, `\:` and `\\` escape, `#` starts a comment line and the
    /// first match wins. `localhost` also matches a Unix-socket connection through a default
    /// socket directory (`/tmp`, `/var/run/postgresql`, `/run/postgresql`); another directory
    /// matches its path. A file group or others can access is ignored with a warning (make it
    /// `chmod 0600`), as libpq does; a missing file is no error. When the server refuses a
    /// password from the file, the error says it came from the file.
    pub fn passfile(mut self, path: impl Into<PathBuf>) -> PgOptions {
        self.passfile = Some(path.into());
        self
    }

    /// The password file to consult when no password is given, if any.
    pub fn get_passfile(&self) -> Option<&Path> {
        self.passfile.as_deref()
    }

    /// The password the password file holds for these options' host, port, database and
    /// user, when no (non-empty) password was given. Reads the file: call once per connect.
    pub(crate) fn password_from_file(&self) -> Option<String> {
        if self.password.as_deref().is_some_and(|p| !p.is_empty()) {
            return None;
        }
        let path = self.passfile.as_deref()?;
        let host: &[u8] = match self.get_host() {
            Host::Tcp(h) if h.is_empty() => b"localhost",
            Host::Tcp(h) => h.as_bytes(),
            Host::Unix(dir) if DEFAULT_SOCKET_DIRS.iter().any(|d| dir == Path::new(d)) => {
                b"localhost"
            }
            Host::Unix(dir) => dir.as_os_str().as_bytes(),
        };
        let port = self.get_port().to_string();
        let fields = [
            host,
            port.as_bytes(),
            self.get_database().as_bytes(),
            self.user.as_bytes(),
        ];
        let contents = read_checked(path)?;
        let password = find(&contents, fields)?;
        match String::from_utf8(password) {
            Ok(p) => {
                tracing::debug!(passfile = %path.display(), "using the password from the password file");
                Some(p)
            }
            Err(_) => {
                tracing::warn!(
                    passfile = %path.display(),
                    "the matching line of the password file has a password that is not UTF-8; ignored"
                );
                None
            }
        }
    }
}

/// The file's bytes, unless it is missing, unreadable, not a plain file or accessible to
/// group or others (the last two warn, as libpq does).
fn read_checked(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            passfile = %path.display(),
            "password file \"{}\" is not a plain file; ignored",
            path.display()
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            passfile = %path.display(),
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) \
             or less; ignored",
            path.display()
        );
        return None;
    }
    std::fs::read(path).ok()
}

/// The password of the first line of `contents` whose first four fields match `fields`
/// (host, port, database, user), de-escaped.
fn find(contents: &[u8], fields: [&[u8]; 4]) -> Option<Vec<u8>> {
    contents.split(|&b| b == b'\n').find_map(|line| {
        if line.first() == Some(&b'#') {
            return None;
        }
        let end = line
            .iter()
            .rposition(|&b| b != b'\r' && b != b'\n')
            .map_or(0, |i| i + 1);
        let mut rest = line.get(..end).filter(|l| !l.is_empty())?;
        for field in fields {
            rest = match_field(rest, field)?;
        }
        Some(unescape_password(rest))
    })
}

/// libpq's `pwdfMatchesString`: if `line` starts with a field matching `token` (exactly `*`,
/// or equal once `\` escapes are read), the rest of the line after its `:`.
fn match_field<'a>(line: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if let Some(rest) = line.strip_prefix(b"*:") {
        return Some(rest);
    }
    let (mut i, mut t) = (0, 0);
    while i < line.len() {
        let mut escaped = false;
        if line[i] == b'\\' {
            i += 1;
            escaped = true;
        }
        let c = *line.get(i)?;
        if c == b':' && !escaped && t == token.len() {
            return line.get(i + 1..);
        }
        if token.get(t) != Some(&c) {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

/// The password field: up to an unescaped `:` or the end, `\x` read as `x` (a trailing `\`
/// kept).
fn unescape_password(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b':' => break,
            b'\\' => out.push(bytes.next().copied().unwrap_or(b'\\')),
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(contents: &str, fields: [&str; 4]) -> Option<String> {
        let fields = fields.map(str::as_bytes);
        find(contents.as_bytes(), fields).map(|p| String::from_utf8(p).unwrap_or_default())
    }

    #[test]
    fn first_matching_line_wins_with_wildcards_escapes_and_comments() {
        let file = "# a comment:*:*:*:nope\n\
                    otherhost:5432:*:*:wrong\n\
                    *:5433:*:*:port-5433\n\
                    db.example:*:app\\:db:*:p\\:a\\\\ss:ignored\r\n\
                    *:*:*:*:fallback\n";
        let q = |h, p, d, u| pw(file, [h, p, d, u]);
        assert_eq!(q("otherhost", "5432", "x", "u").as_deref(), Some("wrong"));
        assert_eq!(q("h", "5433", "x", "u").as_deref(), Some("port-5433"));
        assert_eq!(
            q("db.example", "5432", "app:db", "u").as_deref(),
            Some("p:a\\ss")
        );
        assert_eq!(
            q("db.example", "5432", "app", "u").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            pw("#*:*:*:*:x\n\n", ["h", "1", "d", "u"]),
            None,
            "comment only"
        );
        assert_eq!(
            pw("h:1:d:u:last", ["h", "1", "d", "u"]).as_deref(),
            Some("last")
        );
    }

    #[test]
    fn fields_match_whole_values_only() {
        let f = ["host", "5432", "db", "user"];
        assert_eq!(pw("hos:5432:db:user:x", f), None, "a prefix is no match");
        assert_eq!(pw("hostx:5432:db:user:x", f), None);
        assert_eq!(
            pw("*x:5432:db:user:x", f),
            None,
            "`*` only as the whole field"
        );
        assert_eq!(pw("host:5432:db:user", f), None, "no password field");
        assert_eq!(pw("host:5432:db:user:", f).as_deref(), Some(""));
        assert_eq!(pw("h\\ost:5432:db:user:x", f).as_deref(), Some("x"));
        assert_eq!(
            pw("host:5432:db:user:trailing\\", f).as_deref(),
            Some("trailing\\")
        );
        assert_eq!(pw("host:5432:db:user\\", f), None, "dangling escape");
    }
}
