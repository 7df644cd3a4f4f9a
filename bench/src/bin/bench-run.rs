//! `bench-run`: runs the suite (`bench::suite::plan` through `pgload`, then HTTP end to end
//! through `wrk`) interleaved over rounds and writes one results JSON with the medians.
//! `bench/run.sh` calls it with a database in the environment, then `bench-report`.
//!
//! `bench-run --out FILE [--rounds N] [--seconds S] [--groups a,b] [--http-seconds S]
//!            [--http-conns C] [--http-pool P] [--http-reactors R] [--playground PATH]
//!            [--no-http] [--plan main|tls]`
//!
//! HTTP defaults (issue 21 item 5): 64 wrk connections, `REACTORS=2` on both servers (axum: 2
//! tokio workers), 4 PostgreSQL connections per reactor/worker on both.
//!
//! `--plan tls` (`bench/tls.sh`, a TLS server in the environment) runs `suite::tls_plan`
//! (every driver plaintext and over TLS) and, in each round after it, `suite::connect_plan`
//! through `pgconnect`; no HTTP.

use bench::http::{self, Server};
use bench::median;
use bench::suite::{self, Case};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The pipelined playground's `PG_PIPELINE_DEPTH` (the depth recommended as the default).
const PLAYGROUND_DEPTH: usize = 8;

struct Opts {
    out: PathBuf,
    rounds: usize,
    seconds: f64,
    groups: Option<Vec<String>>,
    http: bool,
    http_seconds: u64,
    http_conns: usize,
    /// Connections per reactor (playground) / per tokio worker (axum: a deadpool pool of
    /// `http_pool × http_reactors`).
    http_pool: usize,
    /// `REACTORS` for both servers (tokio worker threads for axum).
    http_reactors: usize,
    playground: Option<PathBuf>,
    /// `suite::tls_plan` + `suite::connect_plan` instead of `suite::plan` + HTTP.
    tls: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        out: PathBuf::from("bench/results/latest.json"),
        rounds: 3,
        seconds: 2.0,
        groups: None,
        http: true,
        http_seconds: 5,
        http_conns: 64,
        http_pool: 4,
        http_reactors: 2,
        playground: None,
        tls: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        fn num<T: std::str::FromStr>(s: String) -> Result<T, String> {
            s.parse().map_err(|_| format!("not a number: {s}"))
        }
        match a.as_str() {
            "--out" => o.out = val()?.into(),
            "--rounds" => o.rounds = num(val()?)?,
            "--seconds" => o.seconds = num(val()?)?,
            "--groups" => o.groups = Some(val()?.split(',').map(str::to_string).collect()),
            "--no-http" => o.http = false,
            "--http-seconds" => o.http_seconds = num(val()?)?,
            "--http-conns" => o.http_conns = num(val()?)?,
            "--http-pool" => o.http_pool = num(val()?)?,
            "--http-reactors" => o.http_reactors = num(val()?)?,
            "--playground" => o.playground = Some(val()?.into()),
            "--plan" => {
                o.tls = match val()?.as_str() {
                    "main" => false,
                    "tls" => true,
                    other => return Err(format!("unknown plan {other} (main|tls)")),
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-run: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = match std::env::current_exe() {
        Ok(p) => p.parent().map(PathBuf::from).unwrap_or_default(),
        Err(e) => {
            eprintln!("bench-run: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pgload = dir.join("pgload");
    let pgconnect = dir.join("pgconnect");
    let plan = if o.tls {
        suite::tls_plan()
    } else {
        suite::plan()
    };
    let connect = if o.tls {
        suite::connect_plan()
    } else {
        Vec::new()
    };
    let http_on = o.http && !o.tls;
    let cases: Vec<Case> = plan
        .into_iter()
        .filter(|c| {
            o.groups
                .as_ref()
                .is_none_or(|g| g.iter().any(|x| x == c.group))
        })
        .collect();
    let started = Instant::now();
    let mut runs: Vec<Vec<Vec<Value>>> = cases
        .iter()
        .map(|c| vec![Vec::new(); c.variants.len()])
        .collect();
    let mut connect_runs: Vec<Vec<Value>> = vec![Vec::new(); connect.len()];
    let mut http_runs: Vec<Value> = Vec::new();
    let mut http_note: Option<String> = None;
    for round in 0..o.rounds {
        for (ci, case) in cases.iter().enumerate() {
            // Alternate the order each round so no variant always runs first.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..case.variants.len()).collect()
            } else {
                (0..case.variants.len()).rev().collect()
            };
            for vi in order {
                let var = &case.variants[vi];
                let r = suite::run_pgload(&pgload, case, var, o.seconds);
                eprintln!(
                    "[{:>4.0}s] round {} {} {} conns={} conc={} {}: {}",
                    started.elapsed().as_secs_f64(),
                    round + 1,
                    case.group,
                    case.query,
                    case.conns,
                    case.concurrency,
                    var.label,
                    short(&r)
                );
                runs[ci][vi].push(r);
            }
        }
        let order: Vec<usize> = if round % 2 == 0 {
            (0..connect.len()).collect()
        } else {
            (0..connect.len()).rev().collect()
        };
        for vi in order {
            let var = &connect[vi];
            let r = suite::run_pgconnect(&pgconnect, var);
            eprintln!(
                "[{:>4.0}s] round {} connect {} {} {}: {}",
                started.elapsed().as_secs_f64(),
                round + 1,
                var.mode,
                var.setup,
                var.driver,
                r
            );
            connect_runs[vi].push(r);
        }
        if http_on {
            match http_round(&o, &dir) {
                Ok(mut v) => {
                    for r in &mut v {
                        r["round"] = json!(round + 1);
                        eprintln!("[{:>4.0}s] http {r}", started.elapsed().as_secs_f64());
                    }
                    http_runs.extend(v);
                }
                Err(e) => {
                    eprintln!("bench-run: HTTP skipped: {e}");
                    http_note = Some(e);
                }
            }
        }
    }
    let mut med = Vec::new();
    let mut raw = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        for (vi, var) in case.variants.iter().enumerate() {
            med.push(suite::medians(case, var, &runs[ci][vi]));
            for (round, r) in runs[ci][vi].iter().enumerate() {
                raw.push(json!({"group": case.group, "label": var.label, "round": round + 1, "result": r}));
            }
        }
    }
    let mut connect_med = Vec::new();
    let mut connect_raw = Vec::new();
    for (vi, var) in connect.iter().enumerate() {
        connect_med.push(suite::connect_medians(var, &connect_runs[vi]));
        for (round, r) in connect_runs[vi].iter().enumerate() {
            connect_raw.push(
                json!({"mode": var.mode, "setup": var.setup, "driver": var.driver,
                "round": round + 1, "result": r}),
            );
        }
    }
    let results = json!({
        "plan": if o.tls { "tls" } else { "main" },
        "date": date(),
        "commit": suite::commit(),
        "machine": suite::machine(),
        "postgres": postgres_version(),
        "settings": {
            "rounds": o.rounds,
            "seconds": o.seconds,
            "warmup": 1.0,
            "pipelined_depth": suite::PIPELINED_DEPTH,
            "http_seconds": o.http_seconds,
            "http_conns": o.http_conns,
            "http_pool_size": o.http_pool,
            "http_reactors": o.http_reactors,
            "http_playground_depths": [1, PLAYGROUND_DEPTH],
            "wall_seconds": started.elapsed().as_secs(),
            "connect_n": suite::CONNECT_N,
            "warm_size": suite::WARM_SIZE,
            "warm_reps": suite::WARM_REPS,
            "tls_server_key": std::env::var("BENCH_TLS_KEY_DESC").ok(),
        },
        "medians": med,
        "http": http_medians(&http_runs),
        "http_note": http_note,
        "runs": raw,
        "http_runs": http_runs,
        "connect_medians": connect_med,
        "connect_runs": connect_raw,
    });
    if let Some(p) = o.out.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    let text = serde_json::to_string_pretty(&results).unwrap_or_default();
    if let Err(e) = std::fs::write(&o.out, text + "\n") {
        eprintln!("bench-run: writing {}: {e}", o.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "bench-run: wrote {} in {:.0} s",
        o.out.display(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn short(r: &Value) -> String {
    if let Some(f) = r.get("failed") {
        return format!("FAILED {f}");
    }
    format!(
        "{} q/s, {} µs/q, p99 {} µs, errors {}",
        r["qps"], r["client_cpu_us_per_query"], r["p99_us"], r["errors"]
    )
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// One HTTP round: both servers up, each route driven on each server in turn.
fn http_round(o: &Opts, dir: &std::path::Path) -> Result<Vec<Value>, String> {
    let playground = o
        .playground
        .clone()
        .unwrap_or_else(|| dir.join("playground"));
    if !playground.exists() {
        return Err(format!("no playground binary at {}", playground.display()));
    }
    // The playground with one command per connection (depth 1) and pipelined (PLAYGROUND_DEPTH).
    let depth = |d: usize| [("PG_PIPELINE_DEPTH", d.to_string())];
    let servers = [
        Server::start(
            "playground d=1",
            &playground,
            free_port()?,
            o.http_reactors,
            o.http_pool,
            &depth(1),
        )?,
        Server::start(
            &format!("playground d={PLAYGROUND_DEPTH}"),
            &playground,
            free_port()?,
            o.http_reactors,
            o.http_pool,
            &depth(PLAYGROUND_DEPTH),
        )?,
        Server::start(
            "axum+deadpool",
            &dir.join("axum-pg"),
            free_port()?,
            o.http_reactors,
            o.http_pool,
            &[],
        )?,
    ];
    // Warm all (statement caches, wrk's connections).
    for s in &servers {
        let _ = http::wrk(s, "/", "42", o.http_conns, 1);
        let _ = http::wrk(s, "/add/41", "42", o.http_conns, 1);
    }
    let mut out = Vec::new();
    for path in ["/", "/add/41"] {
        for s in &servers {
            out.push(http::wrk(s, path, "42", o.http_conns, o.http_seconds));
        }
    }
    Ok(out)
}

fn http_medians(runs: &[Value]) -> Vec<Value> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in runs {
        let k = (
            r["server"].as_str().unwrap_or("").to_string(),
            r["path"].as_str().unwrap_or("").to_string(),
        );
        if !k.0.is_empty() && !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(server, path)| {
            let mine: Vec<&Value> = runs
                .iter()
                .filter(|r| r["server"] == server.as_str() && r["path"] == path.as_str())
                .collect();
            let m = |k: &str| {
                let xs: Vec<f64> = mine.iter().filter_map(|r| r[k].as_f64()).collect();
                bench::pgload::round(median(&xs), 3)
            };
            let errors: f64 = mine.iter().filter_map(|r| r["errors"].as_f64()).sum();
            json!({
                "server": server, "path": path, "rps": m("rps"),
                "server_cpu_us_per_request": m("server_cpu_us_per_request"),
                "pg_cpu_us_per_request": m("pg_cpu_us_per_request"),
                "p50_us": m("p50_us"), "p99_us": m("p99_us"), "errors": errors, "rounds": mine.len(),
            })
        })
        .collect()
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn postgres_version() -> Value {
    let out = std::process::Command::new("psql")
        .args(["-XAtc", "SHOW server_version"])
        .output();
    match out {
        Ok(o) if o.status.success() => json!(String::from_utf8_lossy(&o.stdout).trim()),
        _ => Value::Null,
    }
}
