//! HTTP end to end: the playground and the axum + deadpool peer, each a child process, driven
//! by `wrk` with the same connections and duration; server CPU from `/proc/<pid>/stat`, and
//! PostgreSQL's CPU over the same run (its postmaster and backends, as pgload reads it) when
//! the server named by the libpq variables runs on this machine.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server under test.
#[derive(Debug)]
pub struct Server {
    pub label: String,
    pub port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `bin` with `PORT`, `REACTORS`, `PG_POOL_SIZE` and `env` (the libpq variables
    /// are inherited) and waits until `GET /` answers `42`.
    pub fn start(
        label: &str,
        bin: &Path,
        port: u16,
        reactors: usize,
        pool: usize,
        env: &[(&str, String)],
    ) -> Result<Server, String> {
        let child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PORT", port.to_string())
            .env("REACTORS", reactors.to_string())
            .env("PG_POOL_SIZE", pool.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut s = Server {
            label: label.into(),
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!("{label} exited during startup: {st}"));
            }
            if matches!(get(port, "/"), Ok((200, ref b)) if b == "42") {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(format!("{label} did not answer GET / with 42 within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// utime + stime of the server process, in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let rest = stat.get(stat.rfind(')')? + 1..)?;
        let mut f = rest.split_whitespace().skip(11);
        Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
    }
}

/// One HTTP/1.1 GET on a fresh connection: (status, body).
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((status, body))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `wrk -t1 -c<conns> -d<seconds>s --latency` against `path`, with the server's CPU over the
/// run. The answer is checked once before (`expect`).
pub fn wrk(server: &Server, path: &str, expect: &str, conns: usize, seconds: u64) -> Value {
    match get(server.port, path) {
        Ok((200, b)) if b == expect => {}
        other => return json!({"failed": format!("GET {path}: {other:?}, expected 200 {expect}")}),
    }
    let url = format!("http://127.0.0.1:{}{path}", server.port);
    if let Ok(o) = ioxide_pg::PgOptions::from_env() {
        // Finds the local server once per process; later calls are free.
        crate::pgload::server::init(&o);
    }
    let pg0 = crate::pgload::server::cpu();
    let t0 = server.cpu_ticks();
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{seconds}s"),
            "--latency",
            &url,
        ])
        .output();
    let t1 = server.cpu_ticks();
    let pg1 = crate::pgload::server::cpu();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => return json!({"failed": String::from_utf8_lossy(&o.stderr).to_string()}),
        Err(e) => return json!({"failed": format!("running wrk: {e}")}),
    };
    let rps = field(&out, "Requests/sec:").unwrap_or(f64::NAN);
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let non2xx = field(&out, "Non-2xx or 3xx responses:").unwrap_or(0.0);
    let socket_errors = out
        .lines()
        .find(|l| l.contains("Socket errors"))
        .map(|l| {
            l.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    let cpu_us = match (t0, t1) {
        (Some(a), Some(b)) => (b - a) as f64 / clk_tck() * 1e6,
        _ => f64::NAN,
    };
    let pg_us = match (pg0, pg1) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() * 1e6,
        _ => f64::NAN,
    };
    let r = crate::pgload::round;
    json!({
        "server": server.label,
        "path": path,
        "conns": conns,
        "seconds": seconds,
        "rps": r(rps, 0),
        "requests": requests,
        "server_cpu_us_per_request": r(cpu_us / requests, 3),
        "pg_cpu_us_per_request": r(pg_us / requests, 3),
        "p50_us": latency(&out, "50%").map(|x| r(x, 1)),
        "p99_us": latency(&out, "99%").map(|x| r(x, 1)),
        "errors": non2xx + socket_errors,
    })
}

fn field(out: &str, name: &str) -> Option<f64> {
    let l = out.lines().find(|l| l.trim_start().starts_with(name))?;
    l.trim_start()[name.len()..].trim().parse().ok()
}

/// A `--latency` percentile line (`50%    3.20ms`), in µs.
fn latency(out: &str, pct: &str) -> Option<f64> {
    let l = out.lines().find(|l| l.trim_start().starts_with(pct))?;
    let v = l.split_whitespace().nth(1)?;
    let (num, scale) = if let Some(x) = v.strip_suffix("us") {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix("ms") {
        (x, 1e3)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1e6)
    } else {
        (v, 1.0)
    };
    Some(num.parse::<f64>().ok()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:18080/
  1 threads and 64 connections
  Latency Distribution
     50%    3.20ms
     75%    3.55ms
     90%    4.95ms
     99%  812.00us
  55573 requests in 3.01s, 6.25MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  18463.40
Transfer/sec:      2.08MB
";

    #[test]
    fn parses_wrk_output() {
        assert_eq!(field(WRK, "Requests/sec:"), Some(18463.40));
        assert_eq!(field(WRK, "Non-2xx or 3xx responses:"), Some(7.0));
        assert_eq!(latency(WRK, "50%"), Some(3200.0));
        assert_eq!(latency(WRK, "99%"), Some(812.0));
        assert_eq!(latency(WRK, "42%"), None);
    }
}
