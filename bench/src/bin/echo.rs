//! Loopback TCP request/response echo: ioxide's reactor against a tokio current-thread runtime.
//!
//! `echo --runtime ioxide|tokio [--conns N] [--msg-bytes B] [--seconds S] [--warmup W]` runs one
//! measurement in this process: one single-threaded runtime hosts the echo server (one task per
//! connection) and N closed-loop clients. After W seconds of warm-up it measures S seconds and
//! prints one JSON line.
//!
//! `echo [--compare] [--rounds R] [...]` (the default) runs itself as a child per runtime,
//! interleaved (ioxide, tokio) × R, and prints the medians and the ioxide/tokio ratios.

use bench::{median, Histogram};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The target from the issue: ioxide CPU per round trip at most this fraction of tokio's.
const CPU_TARGET: f64 = 0.7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    Ioxide,
    Tokio,
}

impl Rt {
    fn name(self) -> &'static str {
        match self {
            Rt::Ioxide => "ioxide",
            Rt::Tokio => "tokio",
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    conns: usize,
    msg_bytes: usize,
    seconds: f64,
    warmup: f64,
    rounds: usize,
}

#[derive(Debug)]
enum Mode {
    One(Rt),
    Compare,
}

const USAGE: &str = "usage: echo [--compare | --runtime ioxide|tokio] [--conns N] [--msg-bytes B] \
                     [--seconds S] [--warmup W] [--rounds R]";

fn parse_args() -> Result<(Mode, Settings), String> {
    let mut mode = Mode::Compare;
    let mut s = Settings {
        conns: 16,
        msg_bytes: 64,
        seconds: 3.0,
        warmup: 1.0,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{name}: not a valid number: {v}"))
        }
        match a.as_str() {
            "--compare" => mode = Mode::Compare,
            "--runtime" => {
                mode = match value("--runtime")?.as_str() {
                    "ioxide" => Mode::One(Rt::Ioxide),
                    "tokio" => Mode::One(Rt::Tokio),
                    other => return Err(format!("unknown runtime {other} (ioxide or tokio)")),
                }
            }
            "--conns" => s.conns = num("--conns", value("--conns")?)?,
            "--msg-bytes" => s.msg_bytes = num("--msg-bytes", value("--msg-bytes")?)?,
            "--seconds" => s.seconds = num("--seconds", value("--seconds")?)?,
            "--warmup" => s.warmup = num("--warmup", value("--warmup")?)?,
            "--rounds" => s.rounds = num("--rounds", value("--rounds")?)?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if s.conns == 0 || s.msg_bytes == 0 || s.rounds == 0 {
        return Err("--conns, --msg-bytes and --rounds must be at least 1".into());
    }
    if !(s.seconds > 0.0 && s.warmup >= 0.0) {
        return Err("--seconds must be > 0 and --warmup >= 0".into());
    }
    Ok((mode, s))
}

fn main() -> ExitCode {
    let (mode, settings) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let r = match mode {
        Mode::One(rt) => run_one(rt, &settings).map(|v| println!("{v}")),
        Mode::Compare => compare(&settings),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One measurement
// ---------------------------------------------------------------------------------------------

/// State shared by the control task and the clients of one run. Atomics (not `Cell`) so the
/// same code serves tokio, whose `spawn` wants `Send` futures; on one thread they are
/// uncontended and cost the same for both runtimes.
#[derive(Debug, Default)]
struct Ctl {
    /// Clients stop after their current round trip once this is set.
    stop: AtomicBool,
    /// Clients record latencies only inside the measurement window.
    measuring: AtomicBool,
    /// Completed round trips, all clients, since the start.
    round_trips: AtomicU64,
}

impl Ctl {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn done(&self, hist: &mut Histogram, started: Instant) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        if self.measuring.load(Ordering::Relaxed) {
            hist.record(started.elapsed());
        }
    }
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    cpu: Duration,
    /// (user, system) clock ticks from /proc/self/stat: coarse (10 ms), only for the split.
    ticks: Option<(u64, u64)>,
    round_trips: u64,
    ring: Option<ioxide::RingStats>,
}

/// utime and stime of this process in clock ticks, from /proc/self/stat.
fn proc_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; the fields after it start at the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut f = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

impl Snapshot {
    fn take(ctl: &Ctl, ring: Option<ioxide::RingStats>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu: ioxide::process_cpu_time(),
            ticks: proc_ticks(),
            round_trips: ctl.round_trips.load(Ordering::Relaxed),
            ring,
        }
    }
}

/// What a run hands back to be reported.
struct Outcome {
    start: Snapshot,
    end: Snapshot,
    hist: Histogram,
    defer_taskrun: Option<bool>,
}

fn run_one(rt: Rt, s: &Settings) -> io::Result<Value> {
    let out = match rt {
        Rt::Ioxide => ioxide_run(s)?,
        Rt::Tokio => tokio_run(s)?,
    };
    Ok(report(rt, s, &out))
}

fn report(rt: Rt, s: &Settings, o: &Outcome) -> Value {
    let wall = o.end.at.duration_since(o.start.at).as_secs_f64();
    let rtts = o.end.round_trips - o.start.round_trips;
    let cpu = o.end.cpu.saturating_sub(o.start.cpu).as_secs_f64();
    let per = |x: f64| if rtts == 0 { f64::NAN } else { x / rtts as f64 };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut v = json!({
        "runtime": rt.name(),
        "conns": s.conns,
        "msg_bytes": s.msg_bytes,
        "seconds": wall,
        "round_trips": rtts,
        "rtt_per_sec": rtts as f64 / wall,
        "cpu_us_per_rtt": per(cpu * 1e6),
        "p50_us": us(o.hist.quantile(0.50)),
        "p99_us": us(o.hist.quantile(0.99)),
        "cpu_util": cpu / wall,
    });
    if let (Some((u0, s0)), Some((u1, s1)), Some(m)) =
        (o.start.ticks, o.end.ticks, v.as_object_mut())
    {
        let (user, sys) = (u1.saturating_sub(u0), s1.saturating_sub(s0));
        if user + sys > 0 {
            m.insert("sys_share".into(), json!(sys as f64 / (user + sys) as f64));
        }
    }
    if let (Some(a), Some(b), Some(m)) = (o.start.ring, o.end.ring, v.as_object_mut()) {
        m.insert(
            "enters_per_rtt".into(),
            json!(per((b.enters - a.enters) as f64)),
        );
        m.insert("sqes_per_rtt".into(), json!(per((b.sqes - a.sqes) as f64)));
        m.insert("cqes_per_rtt".into(), json!(per((b.cqes - a.cqes) as f64)));
        m.insert("defer_taskrun".into(), json!(o.defer_taskrun));
    }
    v
}

fn secs(x: f64) -> Duration {
    Duration::from_secs_f64(x)
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "echo server closed the connection",
    )
}

// --- ioxide -----------------------------------------------------------------------------------

mod on_ioxide {
    use super::{eof, Ctl};
    use bench::Histogram;
    use ioxide::net::Stream;
    use std::io;
    use std::sync::Arc;
    use std::time::Instant;

    /// Echo server side of one connection: recv into the buffer, send it back, reuse it.
    pub(super) async fn serve(s: Stream, cap: usize) {
        if std::env::var_os("ECHO_PLAIN_RECV").is_some() {
            return serve_plain(s, cap).await;
        }
        // One multishot receive stays armed; each chunk is copied out and its buffer returned
        // before the echo goes back.
        let mut rx = s.recv_stream();
        let mut buf = Vec::with_capacity(cap);
        loop {
            match rx.next().await {
                Ok(Some(chunk)) => {
                    buf.clear();
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) | Err(_) => break,
            }
            let (r, b) = s.send_all(buf).await;
            buf = b;
            if r.is_err() {
                break;
            }
        }
        drop(rx);
        let _ = s.close().await;
    }

    async fn serve_plain(s: Stream, cap: usize) {
        let mut buf = Vec::with_capacity(cap);
        loop {
            buf.clear();
            let (r, b) = s.recv(buf).await;
            buf = b;
            match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let (r, b) = s.send_all(buf).await;
            buf = b;
            if r.is_err() {
                break;
            }
        }
        let _ = s.close().await;
    }

    /// Closed-loop client: send `msg` bytes, read `msg` bytes back, count, repeat.
    pub(super) async fn client(s: Stream, ctl: Arc<Ctl>, msg: usize) -> io::Result<Histogram> {
        if std::env::var_os("ECHO_PLAIN_RECV").is_some() {
            return client_plain(s, ctl, msg).await;
        }
        let mut hist = Histogram::new();
        let mut out = vec![0xa5u8; msg];
        let mut rx = s.recv_stream();
        while !ctl.stopped() {
            let started = Instant::now();
            let (r, b) = s.send_all(out).await;
            out = b;
            r?;
            let mut got = 0;
            while got < msg {
                match rx.next().await? {
                    Some(chunk) => got += chunk.len(),
                    None => return Err(eof()),
                }
            }
            ctl.done(&mut hist, started);
        }
        drop(rx);
        let _ = s.close().await;
        Ok(hist)
    }

    async fn client_plain(s: Stream, ctl: Arc<Ctl>, msg: usize) -> io::Result<Histogram> {
        let mut hist = Histogram::new();
        let mut out = vec![0xa5u8; msg];
        let mut inb = Vec::with_capacity(msg);
        while !ctl.stopped() {
            let started = Instant::now();
            let (r, b) = s.send_all(out).await;
            out = b;
            r?;
            inb.clear();
            while inb.len() < msg {
                let (r, b) = s.recv(inb).await;
                inb = b;
                if r? == 0 {
                    return Err(eof());
                }
            }
            ctl.done(&mut hist, started);
        }
        let _ = s.close().await;
        Ok(hist)
    }
}

fn ioxide_run(s: &Settings) -> io::Result<Outcome> {
    use ioxide::net::{Stream, TcpListener};
    let rt = ioxide::Runtime::new().map_err(|e| io::Error::other(e.to_string()))?;
    let s = s.clone();
    rt.block_on(async move {
        let ctl = Arc::new(Ctl::default());
        let reactor = ioxide::Reactor::current();
        let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), false)?;
        let addr = listener.local_addr()?;
        let (conns, cap) = (s.conns, s.msg_bytes.max(4096));
        let acceptor = ioxide::spawn(async move {
            let mut servers = Vec::with_capacity(conns);
            for _ in 0..conns {
                let stream = listener.accept().await?;
                servers.push(ioxide::spawn(on_ioxide::serve(stream, cap)));
            }
            io::Result::Ok(servers)
        });
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            let stream = Stream::connect(addr).await?;
            clients.push(ioxide::spawn(on_ioxide::client(
                stream,
                ctl.clone(),
                s.msg_bytes,
            )));
        }
        let servers = acceptor.await?;

        ioxide::time::sleep(secs(s.warmup)).await;
        let start = Snapshot::take(&ctl, Some(reactor.ring_stats()));
        ctl.measuring.store(true, Ordering::Relaxed);
        ioxide::time::sleep(secs(s.seconds)).await;
        let end = Snapshot::take(&ctl, Some(reactor.ring_stats()));
        ctl.measuring.store(false, Ordering::Relaxed);
        ctl.stop.store(true, Ordering::Relaxed);

        let mut hist = Histogram::new();
        for c in clients {
            hist.merge(&c.await?);
        }
        for srv in servers {
            srv.await;
        }
        Ok(Outcome {
            start,
            end,
            hist,
            defer_taskrun: Some(reactor.defer_taskrun()),
        })
    })
}

// --- tokio ------------------------------------------------------------------------------------

mod on_tokio {
    use super::{eof, Ctl};
    use bench::Histogram;
    use std::io;
    use std::sync::Arc;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Echo server side of one connection: read into the buffer, write it back, reuse it.
    pub(super) async fn serve(mut s: TcpStream, cap: usize) {
        let mut buf = vec![0u8; cap];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }

    /// Closed-loop client: write `msg` bytes, read `msg` bytes back, count, repeat.
    pub(super) async fn client(
        mut s: TcpStream,
        ctl: Arc<Ctl>,
        msg: usize,
    ) -> io::Result<Histogram> {
        let mut hist = Histogram::new();
        let out = vec![0xa5u8; msg];
        let mut inb = vec![0u8; msg];
        while !ctl.stopped() {
            let started = Instant::now();
            s.write_all(&out).await?;
            let mut got = 0;
            while got < msg {
                let n = s.read(&mut inb[got..]).await?;
                if n == 0 {
                    return Err(eof());
                }
                got += n;
            }
            ctl.done(&mut hist, started);
        }
        Ok(hist)
    }
}

fn join<T>(r: Result<T, tokio::task::JoinError>) -> io::Result<T> {
    r.map_err(io::Error::other)
}

fn tokio_run(s: &Settings) -> io::Result<Outcome> {
    use tokio::net::{TcpListener, TcpStream};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = s.clone();
    rt.block_on(async move {
        let ctl = Arc::new(Ctl::default());
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (conns, cap) = (s.conns, s.msg_bytes.max(4096));
        let acceptor = tokio::spawn(async move {
            let mut servers = Vec::with_capacity(conns);
            for _ in 0..conns {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                servers.push(tokio::spawn(on_tokio::serve(stream, cap)));
            }
            io::Result::Ok(servers)
        });
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            clients.push(tokio::spawn(on_tokio::client(
                stream,
                ctl.clone(),
                s.msg_bytes,
            )));
        }
        let servers = join(acceptor.await)??;

        tokio::time::sleep(secs(s.warmup)).await;
        let start = Snapshot::take(&ctl, None);
        ctl.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(secs(s.seconds)).await;
        let end = Snapshot::take(&ctl, None);
        ctl.measuring.store(false, Ordering::Relaxed);
        ctl.stop.store(true, Ordering::Relaxed);

        let mut hist = Histogram::new();
        for c in clients {
            hist.merge(&join(c.await)??);
        }
        for srv in servers {
            join(srv.await)?;
        }
        Ok(Outcome {
            start,
            end,
            hist,
            defer_taskrun: None,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Compare mode
// ---------------------------------------------------------------------------------------------

fn child(rt: Rt, s: &Settings) -> io::Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["--runtime", rt.name()])
        .args(["--conns", &s.conns.to_string()])
        .args(["--msg-bytes", &s.msg_bytes.to_string()])
        .args(["--seconds", &s.seconds.to_string()])
        .args(["--warmup", &s.warmup.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} run failed: {}",
            rt.name(),
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| io::Error::other(format!("{} run printed no JSON line ({e})", rt.name())))
}

fn field(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn compare(s: &Settings) -> io::Result<()> {
    let order = [Rt::Ioxide, Rt::Tokio];
    let mut runs: Vec<(Rt, Value)> = Vec::new();
    eprintln!(
        "echo: {} conns, {} B messages, {} s per run after {} s warm-up, {} rounds (ioxide, tokio)",
        s.conns, s.msg_bytes, s.seconds, s.warmup, s.rounds
    );
    for round in 1..=s.rounds {
        for rt in order {
            let v = child(rt, s)?;
            eprintln!("round {round}: {v}");
            runs.push((rt, v));
        }
    }
    let med = |rt: Rt, k: &str| {
        let xs: Vec<f64> = runs
            .iter()
            .filter(|(r, _)| *r == rt)
            .map(|(_, v)| field(v, k))
            .collect();
        median(&xs)
    };
    // Per-round ratios (each pair ran back to back, so they share the machine's noise).
    let paired = |k: &str| {
        let a = runs
            .iter()
            .filter(|(r, _)| *r == Rt::Ioxide)
            .map(|(_, v)| field(v, k));
        let b = runs
            .iter()
            .filter(|(r, _)| *r == Rt::Tokio)
            .map(|(_, v)| field(v, k));
        a.zip(b).map(|(x, y)| x / y).collect::<Vec<f64>>()
    };

    let mut t = String::new();
    let _ = writeln!(
        t,
        "\necho: {} conns, {} B, {} s x {} rounds, median per runtime",
        s.conns, s.msg_bytes, s.seconds, s.rounds
    );
    let _ = writeln!(
        t,
        "{:<8} {:>12} {:>12} {:>9} {:>9} {:>9} {:>10}",
        "runtime", "rtt/s", "cpu us/rtt", "p50 us", "p99 us", "cpu util", "sys share"
    );
    for rt in order {
        let _ = writeln!(
            t,
            "{:<8} {:>12.0} {:>12.3} {:>9.1} {:>9.1} {:>9.2} {:>10.2}",
            rt.name(),
            med(rt, "rtt_per_sec"),
            med(rt, "cpu_us_per_rtt"),
            med(rt, "p50_us"),
            med(rt, "p99_us"),
            med(rt, "cpu_util"),
            med(rt, "sys_share"),
        );
    }
    let cpu_ratio = med(Rt::Ioxide, "cpu_us_per_rtt") / med(Rt::Tokio, "cpu_us_per_rtt");
    let tput_ratio = med(Rt::Ioxide, "rtt_per_sec") / med(Rt::Tokio, "rtt_per_sec");
    let fmt_list = |xs: Vec<f64>| {
        xs.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        t,
        "ioxide/tokio cpu us per round trip: {cpu_ratio:.3} (target <= {CPU_TARGET}: {}); \
         per round: {}",
        if cpu_ratio <= CPU_TARGET {
            "met"
        } else {
            "MISSED"
        },
        fmt_list(paired("cpu_us_per_rtt"))
    );
    let _ = writeln!(
        t,
        "ioxide/tokio round trips per second: {tput_ratio:.3}; per round: {}",
        fmt_list(paired("rtt_per_sec"))
    );
    let _ = writeln!(
        t,
        "ioxide ring per round trip: {:.3} enters, {:.3} sqes, {:.3} cqes",
        med(Rt::Ioxide, "enters_per_rtt"),
        med(Rt::Ioxide, "sqes_per_rtt"),
        med(Rt::Ioxide, "cqes_per_rtt"),
    );
    print!("{t}");
    Ok(())
}
