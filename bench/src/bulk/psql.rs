//! psql's `\copy` as the COPY workloads' reference: psql (`$PSQL`, else the newest
//! `/usr/lib/postgresql/*/bin/psql`) under `/usr/bin/time`, which gives its CPU (user + sys,
//! 10 ms resolution). Copy-in reads a file of the rendered rows written before the window;
//! copy-out writes one, checked after. The window includes psql's start and connection
//! (a few ms against the ~1 s of a 1 000 000-row COPY). psql's backend starts and ends
//! inside the window: the server CPU adds what the postmaster's exited children used
//! ([`server::exited_cpu`], read once that backend has been reaped).

use super::{binary_data, copy_sql, text_data, BulkArgs, Measured, Start, TextSums, SESSION_SQL};
use crate::pgload::server;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The psql binary: `$PSQL`, else the newest under /usr/lib/postgresql.
fn psql() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PSQL") {
        return Ok(p.into());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no psql (set PSQL): /usr/lib/postgresql: {e}"))?
        .filter_map(|d| Some(d.ok()?.path().join("bin/psql")))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
    });
    found
        .pop()
        .ok_or_else(|| "no psql under /usr/lib/postgresql (set PSQL)".into())
}

/// Removes the data file when the run ends, whichever way.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs one measurement.
pub fn run(a: &BulkArgs) -> Result<Measured, String> {
    let (from, binary) = a
        .workload
        .copy()
        .ok_or("psql runs only the COPY workloads")?;
    let psql = psql()?;
    let file = TempFile(std::env::temp_dir().join(format!(
        "pgbulk-{}-{}.copy",
        std::process::id(),
        a.workload.name()
    )));
    let times = TempFile(file.0.with_extension("time"));
    if from {
        let data = if binary {
            binary_data(a.rows)
        } else {
            text_data(a.rows)
        };
        std::fs::write(&file.0, data).map_err(|e| format!("{}: {e}", file.0.display()))?;
    }
    let sql = copy_sql(a.workload).ok_or("not a COPY workload")?;
    // `COPY t (...) FROM STDIN (...)` → `\copy t (...) FROM 'file' (...)`.
    let path = file.0.display().to_string().replace('\'', "''");
    let meta = sql
        .replacen("COPY", "\\copy", 1)
        .replacen("STDIN", &format!("'{path}'"), 1)
        .replacen("STDOUT", &format!("'{path}'"), 1);
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%U %S")
        .arg("-o")
        .arg(&times.0)
        .arg(&psql)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", SESSION_SQL])
        .args(["-c", "SELECT 'backend ' || pg_backend_pid()", "-c", &meta]);
    if let Some(url) = &a.url {
        cmd.args(["-d", url]);
    }
    let exited0 = server::exited_cpu();
    let start = Start::now();
    let out = cmd
        .output()
        .map_err(|e| format!("running /usr/bin/time {}: {e}", psql.display()))?;
    let mut m = start.stop(0);
    if !out.status.success() {
        return Err(format!(
            "psql failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let copied: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("COPY ")?.trim().parse().ok())
        .ok_or_else(|| format!("psql printed no COPY tag: {stdout:?}"))?;
    m.items = copied;
    m.cpu = cpu_of(&times.0)?;
    // The backend's CPU: once it is reaped, in the postmaster's exited children's.
    let backend: Option<u32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("backend ")?.trim().parse().ok());
    if let Some(pid) = backend {
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (live0, live1) = (start.server, server::cpu());
        m.server = live0
            .zip(live1)
            .zip(exited0.zip(server::exited_cpu()))
            .map(|((l0, l1), (e0, e1))| l1.saturating_sub(l0) + e1.saturating_sub(e0));
    }
    m.commands = 1;
    if !from {
        check_file(&file.0, a.rows, binary)?;
        super::check_rows(Some(copied), a.rows)?;
    }
    Ok(m)
}

/// psql's user + sys CPU as `/usr/bin/time -f "%U %S"` wrote it.
fn cpu_of(path: &Path) -> Result<Duration, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secs: f64 = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .map(|x| {
            x.parse::<f64>()
                .map_err(|_| format!("/usr/bin/time said {text:?}"))
        })
        .sum::<Result<f64, String>>()?;
    Ok(Duration::from_secs_f64(secs.max(0.0)))
}

/// The file psql wrote holds the rows (bytes, their sum, newlines; order-independent).
fn check_file(path: &Path, rows: usize, binary: bool) -> Result<(), String> {
    let got = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let want = if binary {
        binary_data(rows)
    } else {
        text_data(rows)
    };
    TextSums::of(&got).check(&TextSums::of(&want))
}

#[cfg(test)]
mod tests {
    use super::super::{binary_data, text_data, Workload};

    #[test]
    fn the_rendered_data_has_the_servers_shape() {
        let t = String::from_utf8(text_data(3)).expect("utf-8");
        assert_eq!(
            t,
            "1\tname-00000001\t0.5\t2000-01-01 00:00:01+00\tf\n\
             2\tname-00000002\t1\t2000-01-01 00:00:02+00\tf\n\
             3\tname-00000003\t1.5\t2000-01-01 00:00:03+00\tt\n"
        );
        let day = String::from_utf8(text_data(86_401)).expect("utf-8");
        assert!(day.ends_with("86401\tname-00086401\t43200.5\t2000-01-02 00:00:01+00\tf\n"));
        let b = binary_data(1);
        assert_eq!(b.len(), 11 + 8 + 2 + 5 * 4 + 8 + 13 + 8 + 8 + 1 + 2);
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&b[b.len() - 2..], &[0xff, 0xff]);
        assert_eq!(
            super::super::copy_sql(Workload::CopyOutText).as_deref(),
            Some("COPY pgbulk_copy (id, name, score, at, flag) TO STDOUT")
        );
        assert_eq!(super::super::copy_sql(Workload::Reads), None);
    }
}
