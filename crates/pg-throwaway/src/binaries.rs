//! Finding the PostgreSQL server binaries.
//!
//! Order: `$PG_BIN`, then `pg_config --bindir`, then `initdb` on `$PATH`, then
//! `/usr/lib/postgresql/*/bin` (newest major version first). A directory counts only if it
//! holds both `initdb` and `postgres`: Debian's `/usr/bin/pg_config` may belong to the client
//! package and point at a directory without the server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::{Error, ErrorKind, Result};

/// Paths of the PostgreSQL programs the kit runs.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) bin_dir: PathBuf,
    pub(crate) initdb: PathBuf,
    pub(crate) postgres: PathBuf,
    pub(crate) psql: PathBuf,
}

/// The binaries, looked up once per process.
pub(crate) fn binaries() -> Result<&'static Binaries> {
    static FOUND: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
    match FOUND.get_or_init(find) {
        Ok(b) => Ok(b),
        Err(msg) => Err(Error::new(ErrorKind::MissingBinaries, msg.clone())),
    }
}

/// Returns the directory holding `initdb` and `postgres` that the kit will use.
///
/// # Errors
/// [`ErrorKind::MissingBinaries`] with install instructions when none is found.
pub fn server_bin_dir() -> Result<&'static Path> {
    binaries().map(|b| b.bin_dir.as_path())
}

fn is_server_dir(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

fn find() -> std::result::Result<Binaries, String> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if is_server_dir(&dir) {
            return Ok(from_dir(dir));
        }
        // An explicit setting that is wrong is an error, not a hint to look elsewhere.
        return Err(format!(
            "PG_BIN={} does not contain both `initdb` and `postgres`; point PG_BIN at the \
             PostgreSQL server bin directory (e.g. /usr/lib/postgresql/15/bin) or unset it",
            dir.display()
        ));
    }
    tried.push("$PG_BIN (unset)".to_owned());

    match pg_config_bindir() {
        Some(dir) if is_server_dir(&dir) => return Ok(from_dir(dir)),
        Some(dir) => tried.push(format!("pg_config --bindir ({}: no server)", dir.display())),
        None => tried.push("pg_config --bindir (not runnable)".to_owned()),
    }

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if is_server_dir(&dir) {
                return Ok(from_dir(dir));
            }
        }
    }
    tried.push("$PATH".to_owned());

    for dir in debian_bin_dirs() {
        if is_server_dir(&dir) {
            return Ok(from_dir(dir));
        }
    }
    tried.push("/usr/lib/postgresql/*/bin".to_owned());

    Err(format!(
        "PostgreSQL server binaries (initdb, postgres) not found; tried {}. Install the \
         server (Debian/Ubuntu: `apt-get install postgresql`) or set PG_BIN to the directory \
         holding initdb and postgres",
        tried.join(", ")
    ))
}

fn from_dir(bin_dir: PathBuf) -> Binaries {
    let local_psql = bin_dir.join("psql");
    // Debian ships psql in the client package; the server dir usually has it too, but fall
    // back to whatever `psql` is on PATH.
    let psql = if local_psql.is_file() {
        local_psql
    } else {
        PathBuf::from("psql")
    };
    Binaries {
        initdb: bin_dir.join("initdb"),
        postgres: bin_dir.join("postgres"),
        psql,
        bin_dir,
    }
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// `/usr/lib/postgresql/<version>/bin`, newest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key: Vec<u32> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((key, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_dirs_sort_newest_first() {
        let dirs = debian_bin_dirs();
        let versions: Vec<u32> = dirs
            .iter()
            .filter_map(|d| {
                d.parent()?
                    .file_name()?
                    .to_str()?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let mut sorted = versions.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(versions, sorted);
    }
}
