//! `pgconnect`: what it costs to open connections, ioxide-pg against tokio-postgres (over
//! `tokio-postgres-rustls` with `--tls`), one driver and one mode per run, one JSON line.
//!
//! * `--mode sequential`: `--n` connects one after another (each one: TCP connect, with
//!   `--tls` the SSLRequest and the TLS handshake, authentication, up to ReadyForQuery).
//!   Each connect is timed and its client CPU taken (getrusage of the process around it); the
//!   connections stay open until the end so the server's CPU (postmaster forks and the new
//!   backends, [`crate::pgload::server`]) can be read over the whole series, then are closed.
//!   One untimed connect comes first (it loads the CA, builds the TLS configuration, and
//!   checks that the session is encrypted exactly when `--tls` says).
//! * `--mode pool`: `--reps` times, the time until `--size` connections are open at once:
//!   ioxide-pg starts a `PgPool` of that size on one reactor and polls `stats().open` every
//!   0.5 ms; tokio-postgres spawns `--size` connects on a current-thread runtime and awaits
//!   them all. Client and server CPU over the same span. Between repetitions the connections
//!   are closed and the server gets 0.5 s to reap its backends. `--reactors R` spreads the
//!   pool over R reactor threads (`size / R` each; tokio-postgres then runs on a
//!   multi-thread runtime with R workers). Each reactor (and the tokio runtime) runs a ticker
//!   task that sleeps 1 ms in a loop; `stall_max_ms` is the longest it overslept during the
//!   warm-up: how long a query issued then would wait behind the logins (SCRAM's PBKDF2 runs
//!   on the reactor). Built with the `scram-cache` feature (issue 21 item 3), ioxide-pg empties
//!   its SCRAM key cache before each repetition (`--scram-cache cold`, the default: a
//!   process's first warm-up) or keeps it (`warm`: a re-warm after a restart), and reports the
//!   PBKDF2 runs per repetition.
//!
//! `--auth scram` logs in as `BENCH_SCRAM_USER` with `BENCH_SCRAM_PASSWORD` (the role
//! `BENCH_TLS=1 bench/cluster.sh` makes, with a `scram-sha-256` pg_hba line); before
//! measuring, one tokio-postgres connect with a wrong password must fail with 28P01 (so the
//! role really authenticates by password) and ioxide-pg is held to
//! `require_auth=scram-sha-256`. `--auth trust` uses the environment's user and holds
//! ioxide-pg to `require_auth=none`. With `--tls` and SCRAM both drivers are held to
//! `channel_binding=require` (SCRAM-SHA-256-PLUS, tls-server-end-point), so they do the same
//! work.

use crate::median;
use crate::pgload::peers::{tp_check, tp_config_tls, tp_connect};
use crate::pgload::tls::{root_cert, TlsCheck, CHECK_SQL};
use crate::pgload::{round, server, Driver};
use ioxide_pg::{
    AuthMethod, ChannelBinding, PgConnection, PgOptions, PgPool, RequireAuth, RootCert, SslMode,
    Target,
};
use serde_json::{json, Value};
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `n` connects one after another.
    Sequential,
    /// `size` connections at once, `reps` times.
    Pool,
}

/// How the role logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The environment's user, no password asked (`trust`).
    Trust,
    /// `BENCH_SCRAM_USER` / `BENCH_SCRAM_PASSWORD`, SCRAM-SHA-256.
    Scram,
}

impl Auth {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Scram => "scram",
        }
    }
}

/// The settings of one run.
#[derive(Debug, Clone)]
pub struct ConnectArgs {
    /// `IoxidePg` or `TokioPostgres`.
    pub driver: Driver,
    pub mode: Mode,
    pub auth: Auth,
    /// Over TLS (`verify-full` against the CA, rustls on ring).
    pub tls: bool,
    /// Sequential connects.
    pub n: usize,
    /// Connections opened at once in `pool` mode.
    pub size: usize,
    /// Repetitions in `pool` mode.
    pub reps: usize,
    /// Reactor threads (runtime workers for tokio-postgres) in `pool` mode.
    pub reactors: usize,
    /// `pool` mode with the `scram-cache` feature: empty the SCRAM key cache before each
    /// repetition.
    pub scram_cold: bool,
    /// ioxide-pg's options (TLS, auth and channel binding set from the flags).
    pub options: PgOptions,
    tls_root_cert: Option<PathBuf>,
}

/// The usage line.
pub const USAGE: &str = "\
usage: pgconnect --driver ioxide-pg|tokio-postgres [--mode sequential|pool] [--auth trust|scram]
                 [--tls [--sslrootcert CA.pem]] [--n 200] [--size 64] [--reps 5] [--url postgres://...]
                 [--reactors 1] [--scram-cache cold|warm]
Without --url the libpq environment is used; --auth scram logs in as BENCH_SCRAM_USER with
BENCH_SCRAM_PASSWORD. Prints one JSON line.";

/// The variable naming the SCRAM role.
pub const SCRAM_USER_VAR: &str = "BENCH_SCRAM_USER";
/// The variable holding the SCRAM role's password.
pub const SCRAM_PASSWORD_VAR: &str = "BENCH_SCRAM_PASSWORD";

impl ConnectArgs {
    /// Parses the command line (without the program name).
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<ConnectArgs, String> {
        let (mut driver, mut mode, mut auth, mut tls) =
            (None, Mode::Sequential, Auth::Trust, false);
        let (mut n, mut size, mut reps) = (200usize, 64usize, 5usize);
        let (mut url, mut ca) = (None, None);
        let (mut reactors, mut scram_cold) = (1usize, true);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let num = |v: String| {
                v.parse::<usize>()
                    .map_err(|_| format!("not a valid number: {v}"))
            };
            match flag.as_str() {
                "--driver" => {
                    driver = Some(match value()?.as_str() {
                        "ioxide-pg" => Driver::IoxidePg,
                        "tokio-postgres" => Driver::TokioPostgres,
                        other => return Err(format!("unknown driver {other}\n{USAGE}")),
                    })
                }
                "--mode" => {
                    mode = match value()?.as_str() {
                        "sequential" => Mode::Sequential,
                        "pool" => Mode::Pool,
                        other => return Err(format!("unknown mode {other}\n{USAGE}")),
                    }
                }
                "--auth" => {
                    auth = match value()?.as_str() {
                        "trust" => Auth::Trust,
                        "scram" => Auth::Scram,
                        other => return Err(format!("unknown auth {other}\n{USAGE}")),
                    }
                }
                "--tls" => tls = true,
                "--sslrootcert" => ca = Some(PathBuf::from(value()?)),
                "--n" => n = num(value()?)?,
                "--size" => size = num(value()?)?,
                "--reps" => reps = num(value()?)?,
                "--url" => url = Some(value()?),
                "--reactors" => reactors = num(value()?)?,
                "--scram-cache" => {
                    scram_cold = match value()?.as_str() {
                        "cold" => true,
                        "warm" => false,
                        other => return Err(format!("unknown --scram-cache {other}\n{USAGE}")),
                    }
                }
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        let driver = driver.ok_or_else(|| format!("--driver is required\n{USAGE}"))?;
        if n == 0 || size == 0 || reps == 0 || reactors == 0 {
            return Err("--n, --size, --reps and --reactors must be >= 1".into());
        }
        if size % reactors != 0 {
            return Err(format!(
                "--size {size} must be a multiple of --reactors {reactors}"
            ));
        }
        let mut options = match url {
            Some(u) => PgOptions::from_url(&u),
            None => PgOptions::from_env(),
        }
        .map_err(|e| format!("connection options: {e}"))?;
        options = match auth {
            Auth::Scram => {
                let var = |k: &str| {
                    std::env::var(k).map_err(|_| {
                        format!("--auth scram needs {k} (BENCH_TLS=1 bench/cluster.sh sets it)")
                    })
                };
                options
                    .user(var(SCRAM_USER_VAR)?)
                    .password(var(SCRAM_PASSWORD_VAR)?)
                    .require_auth(RequireAuth::only(&[AuthMethod::ScramSha256]))
            }
            Auth::Trust => options.require_auth(RequireAuth::only(&[AuthMethod::None])),
        };
        let mut tls_root_cert = None;
        options = if tls {
            let ca = root_cert(ca)?;
            tls_root_cert = Some(ca.clone());
            let o = options
                .ssl_mode(SslMode::VerifyFull)
                .ssl_root_cert(RootCert::File(ca));
            if auth == Auth::Scram {
                o.channel_binding(ChannelBinding::Require)
            } else {
                o
            }
        } else {
            options.ssl_mode(SslMode::Disable)
        };
        Ok(ConnectArgs {
            driver,
            mode,
            auth,
            tls,
            n,
            size,
            reps,
            reactors,
            scram_cold,
            options,
            tls_root_cert,
        })
    }

    fn tp_config(&self) -> tokio_postgres::Config {
        let mut c = tp_config_tls(&self.options, self.tls);
        if self.tls && self.auth == Auth::Scram {
            c.channel_binding(tokio_postgres::config::ChannelBinding::Require);
        }
        c
    }

    fn tp_tls(&self) -> Result<Option<MakeRustlsConnect>, String> {
        match &self.tls_root_cert {
            Some(ca) if self.tls => Ok(Some(MakeRustlsConnect::new(
                crate::pgload::tls::client_config(ca)?,
            ))),
            _ => Ok(None),
        }
    }
}

/// Runs one measurement and returns its JSON line.
pub fn run(a: &ConnectArgs) -> Result<Value, String> {
    server::init(&a.options);
    if a.auth == Auth::Scram {
        wrong_password_fails(a)?;
    }
    let m = match a.driver {
        Driver::IoxidePg => run_ioxide(a)?,
        Driver::TokioPostgres => run_tokio(a)?,
        other => {
            return Err(format!(
                "pgconnect measures ioxide-pg and tokio-postgres, not {}",
                other.name()
            ))
        }
    };
    Ok(m.report(a))
}

/// The raw figures of one run.
#[derive(Debug, Default)]
struct Measured {
    /// Per connect (sequential) or per repetition (pool).
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
    /// Server CPU over the whole series (sequential) or per repetition (pool).
    server: Vec<Duration>,
    /// Pool mode: the longest oversleep of the 1 ms ticker per repetition (max over reactors).
    stall: Vec<Duration>,
    /// Pool mode, ioxide-pg with the `scram-cache` feature: PBKDF2 runs per repetition.
    pbkdf2: Vec<u64>,
    check: Option<TlsCheck>,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The `q`-quantile of `xs` (nearest rank).
fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

impl Measured {
    fn report(&self, a: &ConnectArgs) -> Value {
        let wall: Vec<f64> = self.wall.iter().map(|d| us(*d)).collect();
        let cpu: Vec<f64> = self.cpu.iter().map(|d| us(*d)).collect();
        let server: Vec<f64> = self.server.iter().map(|d| us(*d)).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let mut v = json!({
            "tool": "pgconnect",
            "driver": a.driver.name(),
            "mode": match a.mode { Mode::Sequential => "sequential", Mode::Pool => "pool" },
            "tls": a.tls,
            "auth": a.auth.name(),
        });
        let m = v.as_object_mut().expect("an object");
        match a.mode {
            Mode::Sequential => {
                let n = wall.len();
                m.insert("n".into(), json!(n));
                m.insert("connect_p50_us".into(), json!(round(median(&wall), 1)));
                m.insert(
                    "connect_p99_us".into(),
                    json!(round(quantile(&wall, 0.99), 1)),
                );
                m.insert("connect_mean_us".into(), json!(round(mean(&wall), 1)));
                m.insert("cpu_p50_us".into(), json!(round(median(&cpu), 1)));
                m.insert("cpu_p99_us".into(), json!(round(quantile(&cpu, 0.99), 1)));
                m.insert("cpu_mean_us".into(), json!(round(mean(&cpu), 1)));
                if let Some(s) = server.first() {
                    m.insert(
                        "server_cpu_us_per_conn".into(),
                        json!(round(s / n.max(1) as f64, 1)),
                    );
                }
            }
            Mode::Pool => {
                let ms = |v: &[f64]| v.iter().map(|x| round(x / 1e3, 2)).collect::<Vec<_>>();
                m.insert("size".into(), json!(a.size));
                m.insert("reps".into(), json!(wall.len()));
                m.insert("warm_ms".into(), json!(round(median(&wall) / 1e3, 2)));
                m.insert("cpu_ms".into(), json!(round(median(&cpu) / 1e3, 2)));
                if !server.is_empty() {
                    m.insert(
                        "server_cpu_ms".into(),
                        json!(round(median(&server) / 1e3, 2)),
                    );
                }
                m.insert("warm_ms_each".into(), json!(ms(&wall)));
                m.insert("cpu_ms_each".into(), json!(ms(&cpu)));
                m.insert("reactors".into(), json!(a.reactors));
                let stall: Vec<f64> = self.stall.iter().map(|d| us(*d)).collect();
                if !stall.is_empty() {
                    m.insert("stall_max_ms".into(), json!(round(median(&stall) / 1e3, 2)));
                    m.insert("stall_max_ms_each".into(), json!(ms(&stall)));
                }
                if !self.pbkdf2.is_empty() {
                    m.insert(
                        "scram_cache".into(),
                        json!(if a.scram_cold { "cold" } else { "warm" }),
                    );
                    m.insert("pbkdf2_each".into(), json!(self.pbkdf2));
                }
            }
        }
        if let Some(c) = &self.check {
            m.insert("tls_version".into(), json!(c.version));
            m.insert("tls_cipher".into(), json!(c.cipher));
        }
        v
    }
}

/// Takes the server's answer to the TLS check and holds it to `--tls`.
fn checked(a: &ConnectArgs, answer: &str) -> Result<TlsCheck, String> {
    let c = TlsCheck::parse(answer)?;
    c.expect(a.tls)?;
    Ok(c)
}

fn cpu_now() -> Duration {
    ioxide::process_cpu_time()
}

/// A tokio runtime on this thread (all connects and their tasks on it).
fn tokio_rt() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))
}

/// With `--auth scram`: a wrong password must be refused (28P01), so the role's logins
/// really go through SCRAM rather than a trust line.
fn wrong_password_fails(a: &ConnectArgs) -> Result<(), String> {
    let tls = a.tp_tls()?;
    let mut cfg = a.tp_config();
    cfg.password("not-the-password");
    tokio_rt()?.block_on(async {
        match tp_connect(&cfg, tls.as_ref()).await {
            Ok(_) => Err(format!(
                "--auth scram: a wrong password was accepted for {}: its pg_hba line is not \
                 scram-sha-256",
                a.options.get_user()
            )),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) => {
                Ok(())
            }
            Err(e) => Err(format!(
                "--auth scram: the wrong-password probe failed otherwise: {e}"
            )),
        }
    })
}

fn run_ioxide(a: &ConnectArgs) -> Result<Measured, String> {
    let target = a.options.resolve().map_err(|e| e.to_string())?;
    let rt = ioxide::Runtime::with_config(ioxide::RingConfig::default(), 0)
        .map_err(|e| format!("starting a reactor: {e}"))?;
    rt.block_on(async {
        let connect = |t: Target| PgConnection::connect_to(&a.options, t);
        // Untimed: builds the TLS configuration, checks the session.
        let first = connect(target.clone())
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let r = first
            .query(CHECK_SQL)
            .await
            .map_err(|e| format!("the TLS check: {e}"))?;
        let mut m = Measured {
            check: Some(checked(a, r.value().unwrap_or(""))?),
            ..Measured::default()
        };
        first.close().await;
        match a.mode {
            Mode::Sequential => {
                let mut held = Vec::with_capacity(a.n);
                let s0 = server::cpu();
                for _ in 0..a.n {
                    let (c0, t0) = (cpu_now(), Instant::now());
                    let c = connect(target.clone())
                        .await
                        .map_err(|e| format!("connecting: {e}"))?;
                    m.wall.push(t0.elapsed());
                    m.cpu.push(cpu_now().saturating_sub(c0));
                    held.push(c);
                }
                if let (Some(s0), Some(s1)) = (s0, server::cpu()) {
                    m.server.push(s1.saturating_sub(s0));
                }
                for c in held {
                    c.close().await;
                }
            }
            Mode::Pool => {}
        }
        Ok(m)
    })
    .and_then(|mut m| {
        if a.mode == Mode::Pool {
            ioxide_pools(a, &target, &mut m)?;
        }
        Ok(m)
    })
}

/// Tells its task to stop when dropped.
struct Ticker {
    max: Rc<Cell<Duration>>,
    stop: Rc<Cell<bool>>,
}

impl Ticker {
    /// A task on this reactor sleeping 1 ms in a loop, recording its longest oversleep.
    fn start() -> Ticker {
        let (max, stop) = (
            Rc::new(Cell::new(Duration::ZERO)),
            Rc::new(Cell::new(false)),
        );
        let (m, st) = (max.clone(), stop.clone());
        let _detached = ioxide::spawn(async move {
            while !st.get() {
                let t = Instant::now();
                ioxide::time::sleep(TICK).await;
                m.set(m.get().max(t.elapsed().saturating_sub(TICK)));
            }
        });
        Ticker { max, stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.set(true);
    }
}

const TICK: Duration = Duration::from_millis(1);

#[cfg(feature = "scram-cache")]
fn scram_cache_reset(cold: bool) -> Option<u64> {
    if cold {
        ioxide_pg::proto::scram::clear_cache();
    }
    Some(ioxide_pg::proto::scram::pbkdf2_count())
}

#[cfg(not(feature = "scram-cache"))]
fn scram_cache_reset(_cold: bool) -> Option<u64> {
    None
}

#[cfg(feature = "scram-cache")]
fn pbkdf2_count() -> u64 {
    ioxide_pg::proto::scram::pbkdf2_count()
}

#[cfg(not(feature = "scram-cache"))]
fn pbkdf2_count() -> u64 {
    0
}

/// Pool mode for ioxide-pg: `--reactors` threads, each with its reactor, a ticker and a
/// `PgPool` of `size / reactors`, started together `--reps` times.
fn ioxide_pools(a: &ConnectArgs, target: &Target, m: &mut Measured) -> Result<(), String> {
    let r = a.reactors;
    let per = a.size / r;
    // Every rep: start (all), filled (all, with each reactor's stall), closed (all).
    let start = Arc::new(Barrier::new(r + 1));
    let filled = Arc::new(Barrier::new(r + 1));
    let closed = Arc::new(Barrier::new(r + 1));
    let (tx, rx) = std::sync::mpsc::channel::<Result<Duration, String>>();
    let mut threads = Vec::with_capacity(r);
    for index in 0..r {
        let (start, filled, closed, tx) =
            (start.clone(), filled.clone(), closed.clone(), tx.clone());
        let opts = a.options.clone().pool_size(per);
        let (target, reps) = (target.clone(), a.reps);
        threads.push(std::thread::spawn(move || {
            let rt = match ioxide::Runtime::with_config(ioxide::RingConfig::default(), index) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("starting a reactor: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let reactor = ioxide::Reactor::current();
                for _ in 0..reps {
                    start.wait();
                    let ticker = Ticker::start();
                    let t0 = Instant::now();
                    let pool = PgPool::start_with_target(&reactor, opts.clone(), target.clone());
                    let res = match pool {
                        Err(e) => Err(format!("starting the pool: {e}")),
                        Ok(pool) => {
                            let mut res = Ok(());
                            loop {
                                let st = pool.stats();
                                if st.open >= per {
                                    break;
                                }
                                if st.connect_failures_total > 0
                                    || t0.elapsed() > Duration::from_secs(60)
                                {
                                    res = Err(format!("the pool did not fill: {st:?}"));
                                    break;
                                }
                                ioxide::time::sleep(Duration::from_micros(500)).await;
                            }
                            let stall = ticker.max.get();
                            drop(ticker);
                            let _ = tx.send(res.map(|()| stall));
                            filled.wait();
                            pool.close().await;
                            Ok(())
                        }
                    };
                    if let Err(e) = res {
                        let _ = tx.send(Err(e));
                        filled.wait();
                    }
                    ioxide::time::sleep(Duration::from_millis(500)).await;
                    closed.wait();
                }
            });
        }));
    }
    drop(tx);
    let mut failure = None;
    for _ in 0..a.reps {
        let p0 = scram_cache_reset(a.scram_cold);
        start.wait();
        let (s0, c0, t0) = (server::cpu(), cpu_now(), Instant::now());
        let mut stall = Duration::ZERO;
        for _ in 0..r {
            match rx.recv() {
                Ok(Ok(d)) => stall = stall.max(d),
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some("a reactor thread ended early".into()),
            }
        }
        m.wall.push(t0.elapsed());
        m.cpu.push(cpu_now().saturating_sub(c0));
        if let (Some(s0), Some(s1)) = (s0, server::cpu()) {
            m.server.push(s1.saturating_sub(s0));
        }
        m.stall.push(stall);
        if let Some(p0) = p0 {
            m.pbkdf2.push(pbkdf2_count() - p0);
        }
        filled.wait();
        closed.wait();
    }
    for t in threads {
        let _ = t.join();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn run_tokio(a: &ConnectArgs) -> Result<Measured, String> {
    let tls = a.tp_tls()?;
    let cfg = Arc::new(a.tp_config());
    let err = |e: tokio_postgres::Error| format!("connecting: {e}");
    let rt = if a.mode == Mode::Pool && a.reactors > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.reactors)
            .enable_all()
            .build()
            .map_err(|e| format!("building the tokio runtime: {e}"))?
    } else {
        tokio_rt()?
    };
    rt.block_on(async {
        let first = tp_connect(&cfg, tls.as_ref()).await.map_err(err)?;
        let mut m = Measured {
            check: Some(checked(a, &tp_check(&first).await?)?),
            ..Measured::default()
        };
        drop(first);
        match a.mode {
            Mode::Sequential => {
                let mut held = Vec::with_capacity(a.n);
                let s0 = server::cpu();
                for _ in 0..a.n {
                    let (c0, t0) = (cpu_now(), Instant::now());
                    let c = tp_connect(&cfg, tls.as_ref()).await.map_err(err)?;
                    m.wall.push(t0.elapsed());
                    m.cpu.push(cpu_now().saturating_sub(c0));
                    held.push(c);
                }
                if let (Some(s0), Some(s1)) = (s0, server::cpu()) {
                    m.server.push(s1.saturating_sub(s0));
                }
                drop(held);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Mode::Pool => {
                for _ in 0..a.reps {
                    let (s0, c0, t0) = (server::cpu(), cpu_now(), Instant::now());
                    // The ticker: the longest oversleep of a 1 ms sleep, in µs.
                    let stall = Arc::new(AtomicU64::new(0));
                    let stop = Arc::new(AtomicBool::new(false));
                    let ticker = {
                        let (stall, stop) = (stall.clone(), stop.clone());
                        tokio::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                let t = Instant::now();
                                tokio::time::sleep(TICK).await;
                                let over = t.elapsed().saturating_sub(TICK).as_micros();
                                stall.fetch_max(over as u64, Ordering::Relaxed);
                            }
                        })
                    };
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..a.size {
                        let (cfg, tls) = (cfg.clone(), tls.clone());
                        set.spawn(async move { tp_connect(&cfg, tls.as_ref()).await });
                    }
                    let mut clients = Vec::with_capacity(a.size);
                    while let Some(r) = set.join_next().await {
                        clients.push(
                            r.map_err(|e| format!("a connect task failed: {e}"))?
                                .map_err(err)?,
                        );
                    }
                    m.wall.push(t0.elapsed());
                    m.cpu.push(cpu_now().saturating_sub(c0));
                    if let (Some(s0), Some(s1)) = (s0, server::cpu()) {
                        m.server.push(s1.saturating_sub(s0));
                    }
                    stop.store(true, Ordering::Relaxed);
                    let _ = ticker.await;
                    m.stall
                        .push(Duration::from_micros(stall.load(Ordering::Relaxed)));
                    drop(clients);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Ok(m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ConnectArgs, String> {
        ConnectArgs::parse(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn parses_settings() {
        let a = parse(
            "--driver tokio-postgres --mode pool --size 8 --reps 2 --url postgres://u@127.0.0.1/db",
        )
        .expect("valid");
        assert_eq!(
            (a.driver, a.mode, a.auth, a.tls),
            (Driver::TokioPostgres, Mode::Pool, Auth::Trust, false)
        );
        assert_eq!((a.n, a.size, a.reps), (200, 8, 2));
        assert_eq!(a.options.get_ssl_mode(), SslMode::Disable);
        let a = parse(
            "--driver ioxide-pg --tls --sslrootcert /tmp/ca.pem --url postgres://u@127.0.0.1/db",
        )
        .expect("valid");
        assert_eq!(a.options.get_ssl_mode(), SslMode::VerifyFull);
        assert!(parse("--driver sqlx --url postgres://u@127.0.0.1/db").is_err());
        assert!(parse("--driver ioxide-pg --n 0 --url postgres://u@127.0.0.1/db").is_err());
        let a = parse(
            "--driver ioxide-pg --mode pool --size 512 --reactors 2 --scram-cache warm \
             --url postgres://u@127.0.0.1/db",
        )
        .expect("valid");
        assert_eq!((a.size, a.reactors, a.scram_cold), (512, 2, false));
        assert!(
            parse("--driver ioxide-pg --size 63 --reactors 2 --url postgres://u@h/db").is_err()
        );
        assert!(parse("--driver ioxide-pg --scram-cache hot --url postgres://u@h/db").is_err());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let xs: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.99), 198.0);
        assert_eq!(quantile(&xs, 0.5), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
