//! Runs the real playground binary as a child process and talks HTTP to it over std sockets.
//!
//! Every wait is bounded; a `Playground` that is dropped while running is killed by its pid
//! (SIGKILL; a throwaway cluster it started is then removed by pg-throwaway's watchdog).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the playground may take to print its startup line (a throwaway cluster's initdb
/// included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Read timeout of every test socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Variables the child must not inherit from the test's environment.
const SCRUB: &[&str] = &[
    "DATABASE_URL",
    "PORT",
    "HOST",
    "REACTORS",
    "HTTP_IDLE_TIMEOUT_MS",
    "SHUTDOWN_GRACE_MS",
    "RUST_LOG",
];

/// The libpq variables pointing at `cluster`.
pub fn pg_env(cluster: &testkit::Cluster) -> Vec<(String, String)> {
    vec![
        ("PGHOST".into(), cluster.host().into()),
        ("PGPORT".into(), cluster.port().to_string()),
        ("PGUSER".into(), cluster.user().into()),
        ("PGPASSWORD".into(), cluster.password().into()),
        ("PGDATABASE".into(), cluster.database().into()),
    ]
}

/// The shared test cluster's variables plus `extra`.
pub fn shared_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = pg_env(testkit::shared_cluster());
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// A port nothing listens on (bound, read, released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Output collected by a reader thread.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running playground.
pub struct Playground {
    child: Child,
    /// The HTTP port it serves on.
    pub port: u16,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

impl Playground {
    /// Starts the binary with `env` (PORT=0 and REACTORS=2 unless given; no inherited PG*
    /// variables) and waits for its startup line.
    pub fn start(env: &[(String, String)]) -> Playground {
        let mut p = Playground::spawn(env);
        let line = p
            .wait_line(" reactors on ", START_TIMEOUT)
            .unwrap_or_else(|| {
                let status = p.child.try_wait().ok().flatten();
                panic!(
                    "no startup line (exit {status:?}); stdout:\n{}\nstderr:\n{}",
                    p.stdout_text(),
                    p.stderr_text()
                )
            });
        let after = line.split(" reactors on ").nth(1).unwrap();
        let addr = after.split(',').next().unwrap();
        p.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        p
    }

    /// Starts the binary without waiting for anything.
    pub fn spawn(env: &[(String, String)]) -> Playground {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_playground"));
        for (k, _) in std::env::vars_os() {
            if k.to_str()
                .is_some_and(|k| k.starts_with("PG") || SCRUB.contains(&k))
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("PORT", "0")
            .env("REACTORS", "2")
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        Playground {
            child,
            port: 0,
            stdout,
            stderr,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.stdout.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self.stdout.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Everything printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        self.stdout.lines.lock().unwrap().join("\n")
    }

    /// Everything printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lines.lock().unwrap().join("\n")
    }

    /// Sends `signal` (`TERM`, `INT`) to the child, by pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal])
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} {} failed", self.pid());
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads see EOF.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` on a fresh connection (`Connection: close`).
    pub fn get(&self, path: &str) -> HttpResponse {
        let mut s = self.connect();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let mut responses = parse_responses(&raw);
        assert_eq!(
            responses.len(),
            1,
            "GET {path}: {:?}",
            String::from_utf8_lossy(&raw)
        );
        responses.remove(0)
    }

    /// A connected socket with the test timeouts.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr(), IO_TIMEOUT).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(from: impl Read + Send + 'static, into: Arc<Lines>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            into.lines.lock().unwrap().push(line);
            into.changed.notify_all();
        }
    });
}

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Splits `raw` into the complete responses it holds (by Content-Length).
pub fn parse_responses(raw: &[u8]) -> Vec<HttpResponse> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let len: usize = headers["content-length"].parse().unwrap();
        let body_start = end + 4;
        if rest.len() < body_start + len {
            break;
        }
        let body = String::from_utf8_lossy(&rest[body_start..body_start + len]).into_owned();
        out.push(HttpResponse {
            status,
            headers,
            body,
        });
        rest = &rest[body_start + len..];
    }
    out
}

/// Reads from `s` until `n` complete responses arrived (or EOF / timeout).
pub fn read_responses(s: &mut TcpStream, n: usize) -> (Vec<HttpResponse>, Vec<u8>) {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let got = parse_responses(&raw);
        if got.len() >= n {
            return (got, raw);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (parse_responses(&raw), raw),
            Ok(k) => raw.extend_from_slice(&chunk[..k]),
        }
    }
}

/// Whether the peer closed `s` (EOF) within `timeout`, discarding anything it sends.
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}
