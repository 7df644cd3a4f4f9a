//! The benchmark suite `bench/run.sh` runs: a plan of cases (one setting, several variants
//! compared side by side), executed as `pgload` children interleaved — every round runs every
//! case's variants back to back, so drift on this shared machine hits all alike — and the
//! medians over rounds kept.

use crate::median;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::Command;

/// One pgload invocation of a case.
#[derive(Debug, Clone)]
pub struct Variant {
    /// How tables and charts name it: `ioxide-pg d=256`, `tokio-postgres`, ….
    pub label: String,
    /// Extra pgload arguments beyond the case's settings.
    pub args: Vec<String>,
}

/// One setting compared across variants.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case is for: `matrix`, `one_conn`, `rows100`, `depth`, `protocol`, `reactors`.
    pub group: &'static str,
    pub query: &'static str,
    pub conns: usize,
    pub concurrency: usize,
    pub variants: Vec<Variant>,
}

/// The pipeline depth of "pipelined ioxide-pg": deep enough that every in-flight query of
/// every setting goes straight to a connection (as with tokio-postgres, whose pipelining is
/// unbounded).
pub const PIPELINED_DEPTH: usize = 256;

/// The label of one bare `PgConnection` shared by the tasks (no pool): the like-for-like
/// counterpart of one tokio-postgres client.
pub const CONN_LABEL: &str = "ioxide-pg conn";

fn v(label: &str, args: &[&str]) -> Variant {
    Variant {
        label: label.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

fn ioxide(depth: usize) -> Variant {
    let d = depth.to_string();
    v(
        &format!("ioxide-pg d={depth}"),
        &["--driver", "ioxide-pg", "--pipeline-depth", &d],
    )
}

fn peers() -> Vec<Variant> {
    vec![
        v("tokio-postgres", &["--driver", "tokio-postgres"]),
        v("deadpool", &["--driver", "deadpool"]),
        v("sqlx", &["--driver", "sqlx"]),
    ]
}

/// The full plan.
pub fn plan() -> Vec<Case> {
    let mut cases = Vec::new();
    for query in ["select42", "param"] {
        for conns in [2, 8] {
            for concurrency in [1, 16, 64, 256] {
                if concurrency == 1 && conns != 2 {
                    continue; // with one query in flight the connection count does not matter
                }
                let mut variants = vec![ioxide(PIPELINED_DEPTH)];
                if concurrency > conns {
                    variants.push(ioxide(1)); // with concurrency <= conns depth does not matter
                }
                variants.extend(peers());
                cases.push(Case {
                    group: "matrix",
                    query,
                    conns,
                    concurrency,
                    variants,
                });
            }
        }
        cases.push(Case {
            group: "one_conn",
            query,
            conns: 1,
            concurrency: 64,
            variants: vec![
                v(CONN_LABEL, &["--driver", "ioxide-pg", "--no-pool"]),
                ioxide(PIPELINED_DEPTH),
                v("tokio-postgres", &["--driver", "tokio-postgres"]),
            ],
        });
    }
    let mut variants = vec![ioxide(PIPELINED_DEPTH), ioxide(1)];
    variants.extend(peers());
    cases.push(Case {
        group: "rows100",
        query: "rows100",
        conns: 2,
        concurrency: 64,
        variants,
    });
    cases.push(Case {
        group: "depth",
        query: "select42",
        conns: 8,
        concurrency: 64,
        variants: [1, 2, 4, 8, 16, 64].into_iter().map(ioxide).collect(),
    });
    // The same `SELECT 42` prepared for every driver: separates the simple protocol's server
    // cost (parse + plan per query) from the driver's own cost.
    let mut variants = vec![ioxide(PIPELINED_DEPTH), ioxide(1)];
    variants.extend(peers().into_iter().take(2));
    cases.push(Case {
        group: "protocol",
        query: "select42-prepared",
        conns: 2,
        concurrency: 64,
        variants,
    });
    let d = PIPELINED_DEPTH.to_string();
    cases.push(Case {
        group: "reactors",
        query: "select42",
        conns: 8,
        concurrency: 64,
        variants: [1, 2]
            .into_iter()
            .map(|r| {
                let rs = r.to_string();
                v(
                    &format!("ioxide-pg d={PIPELINED_DEPTH} R={r}"),
                    &[
                        "--driver",
                        "ioxide-pg",
                        "--pipeline-depth",
                        &d,
                        "--reactors",
                        &rs,
                    ],
                )
            })
            .collect(),
    });
    cases
}

/// The suffix of a TLS variant's label (`tokio-postgres TLS`).
pub const TLS_SUFFIX: &str = " TLS";

/// The TLS plan (`bench-run --plan tls`, `bench/tls.sh`; needs a TLS server, e.g.
/// `BENCH_TLS=1 bench/cluster.sh`): `select42` and `param`, 64 in flight, at 1, 2 and 8
/// connections, every driver plaintext and over TLS (`--tls`) back to back: pipelined
/// ioxide-pg and tokio-postgres at every count, deadpool and sqlx at 2 and 8 (pools of one
/// are not how they are used).
pub fn tls_plan() -> Vec<Case> {
    let mut cases = Vec::new();
    for query in ["select42", "param"] {
        for conns in [1, 2, 8] {
            let mut drivers = vec![
                ioxide(PIPELINED_DEPTH),
                v("tokio-postgres", &["--driver", "tokio-postgres"]),
            ];
            if conns > 1 {
                drivers.extend(peers().into_iter().skip(1));
            }
            let variants = drivers
                .into_iter()
                .flat_map(|d| {
                    let mut tls = d.clone();
                    tls.label.push_str(TLS_SUFFIX);
                    tls.args.push("--tls".into());
                    [d, tls]
                })
                .collect();
            cases.push(Case {
                group: "tls",
                query,
                conns,
                concurrency: 64,
                variants,
            });
        }
    }
    cases
}

/// Sequential connects per `pgconnect --mode sequential` run.
pub const CONNECT_N: usize = 200;
/// Connections opened at once per `pgconnect --mode pool` repetition.
pub const WARM_SIZE: usize = 64;
/// Repetitions per `pgconnect --mode pool` run.
pub const WARM_REPS: usize = 5;

/// One `pgconnect` invocation.
#[derive(Debug, Clone)]
pub struct ConnectVariant {
    /// `sequential` or `pool`.
    pub mode: &'static str,
    /// `TLS + SCRAM`, `TLS, trust`, `SCRAM` (plaintext).
    pub setup: &'static str,
    /// `ioxide-pg` or `tokio-postgres`.
    pub driver: &'static str,
    pub args: Vec<String>,
}

/// The connect plan of the TLS run: sequential connects (TLS + SCRAM, TLS with trust, and
/// plaintext SCRAM for reference) and the warm-up of 64 connections (TLS + SCRAM and
/// plaintext SCRAM), ioxide-pg and tokio-postgres back to back.
pub fn connect_plan() -> Vec<ConnectVariant> {
    let setups: [(&str, &[&str]); 3] = [
        ("TLS + SCRAM", &["--tls", "--auth", "scram"]),
        ("TLS, trust", &["--tls", "--auth", "trust"]),
        ("SCRAM", &["--auth", "scram"]),
    ];
    let mut out = Vec::new();
    for mode in ["sequential", "pool"] {
        for (setup, flags) in setups {
            if mode == "pool" && setup == "TLS, trust" {
                continue;
            }
            for driver in ["ioxide-pg", "tokio-postgres"] {
                let mut args: Vec<String> = ["--driver", driver, "--mode", mode]
                    .iter()
                    .chain(flags)
                    .map(|s| s.to_string())
                    .collect();
                args.extend([
                    "--n".to_string(),
                    CONNECT_N.to_string(),
                    "--size".into(),
                    WARM_SIZE.to_string(),
                    "--reps".into(),
                    WARM_REPS.to_string(),
                ]);
                out.push(ConnectVariant {
                    mode,
                    setup,
                    driver,
                    args,
                });
            }
        }
    }
    out
}

/// Runs one pgconnect child and parses its JSON line (an error object if it failed).
pub fn run_pgconnect(pgconnect: &Path, var: &ConnectVariant) -> Value {
    let mut cmd = Command::new(pgconnect);
    cmd.args(&var.args);
    json_line(cmd)
}

/// Medians over rounds of every number a connect variant's runs report.
pub fn connect_medians(var: &ConnectVariant, runs: &[Value]) -> Value {
    let mut m = Map::new();
    m.insert("mode".into(), json!(var.mode));
    m.insert("setup".into(), json!(var.setup));
    m.insert("driver".into(), json!(var.driver));
    let ok: Vec<&Value> = runs.iter().filter(|r| r.get("failed").is_none()).collect();
    if let Some(first) = ok.first().and_then(|r| r.as_object()) {
        for (k, x) in first {
            if x.is_number() {
                let xs: Vec<f64> = ok.iter().filter_map(|r| r.get(k)?.as_f64()).collect();
                m.insert(k.clone(), json!(crate::pgload::round(median(&xs), 2)));
            } else if !x.is_array() && !m.contains_key(k) {
                m.insert(k.clone(), x.clone());
            }
        }
    }
    m.insert("failed_runs".into(), json!(runs.len() - ok.len()));
    m.insert("rounds".into(), json!(runs.len()));
    Value::Object(m)
}

/// Runs one pgload child and parses its JSON line (an error object if it failed).
pub fn run_pgload(pgload: &Path, case: &Case, var: &Variant, seconds: f64) -> Value {
    let mut cmd = Command::new(pgload);
    cmd.args(["--query", case.query])
        .args(["--conns", &case.conns.to_string()])
        .args(["--concurrency", &case.concurrency.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(&var.args);
    json_line(cmd)
}

/// Runs a child that prints one JSON line.
fn json_line(mut cmd: Command) -> Value {
    match cmd.output() {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            serde_json::from_str(out.trim()).unwrap_or_else(|e| json!({"failed": e.to_string()}))
        }
        Ok(o) => json!({"failed": String::from_utf8_lossy(&o.stderr).trim().to_string()}),
        Err(e) => json!({"failed": e.to_string()}),
    }
}

/// The metrics kept as medians.
pub const METRICS: [&str; 10] = [
    "qps",
    "client_cpu_us_per_query",
    "server_cpu_us_per_query",
    "p50_us",
    "p99_us",
    "errors",
    "rss_kib",
    "enters_per_query",
    "sqes_per_query",
    "cqes_per_query",
];

/// Medians over rounds of one case's variant: `runs` are its JSON lines.
pub fn medians(case: &Case, var: &Variant, runs: &[Value]) -> Value {
    let mut m = Map::new();
    m.insert("group".into(), json!(case.group));
    m.insert("query".into(), json!(case.query));
    m.insert("conns".into(), json!(case.conns));
    m.insert("concurrency".into(), json!(case.concurrency));
    m.insert("label".into(), json!(var.label));
    if let Some(first) = runs.iter().find(|r| r.get("failed").is_none()) {
        for k in [
            "driver",
            "pipeline_depth",
            "reactors",
            "runtime",
            "tls",
            "tls_version",
            "tls_cipher",
        ] {
            if let Some(x) = first.get(k) {
                m.insert(k.into(), x.clone());
            }
        }
    }
    for k in METRICS {
        let xs: Vec<f64> = runs.iter().filter_map(|r| r.get(k)?.as_f64()).collect();
        if !xs.is_empty() {
            m.insert(k.into(), json!(crate::pgload::round(median(&xs), 3)));
        }
    }
    // Errors are summed, not medianed: one failed query anywhere must show.
    let errors: u64 = runs
        .iter()
        .map(|r| {
            r.get("errors").and_then(Value::as_u64).unwrap_or(0)
                + r.get("wrong_answers").and_then(Value::as_u64).unwrap_or(0)
        })
        .sum();
    m.insert("errors".into(), json!(errors));
    let failed = runs.iter().filter(|r| r.get("failed").is_some()).count();
    m.insert("failed_runs".into(), json!(failed));
    m.insert("rounds".into(), json!(runs.len()));
    Value::Object(m)
}

/// `uname -r`, the CPU model, the CPU count.
pub fn machine() -> Value {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({"kernel": kernel, "cpu": cpu, "nproc": nproc})
}

/// The commit under test (`git describe --always --dirty`).
pub fn commit() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_every_group_once_per_setting() {
        let plan = plan();
        let mut seen = std::collections::HashSet::new();
        for c in &plan {
            assert!(
                seen.insert((c.group, c.query, c.conns, c.concurrency)),
                "{c:?}"
            );
            assert!(!c.variants.is_empty());
        }
        for g in [
            "matrix", "one_conn", "rows100", "depth", "protocol", "reactors",
        ] {
            assert!(plan.iter().any(|c| c.group == g), "{g}");
        }
        assert!(
            plan.iter().all(|c| c.group != "tls"),
            "TLS needs its own server"
        );
        // Depth 1 only where it differs from the pipelined run.
        for c in plan.iter().filter(|c| c.group == "matrix") {
            let has_d1 = c.variants.iter().any(|v| v.label == "ioxide-pg d=1");
            assert_eq!(has_d1, c.concurrency > c.conns, "{c:?}");
        }
    }

    #[test]
    fn tls_plan_pairs_every_variant_with_its_tls_twin() {
        let plan = tls_plan();
        assert_eq!(plan.len(), 6);
        for c in &plan {
            assert_eq!((c.group, c.concurrency), ("tls", 64));
            assert_eq!(c.variants.len() % 2, 0);
            for pair in c.variants.chunks(2) {
                assert_eq!(format!("{}{TLS_SUFFIX}", pair[0].label), pair[1].label);
                assert!(!pair[0].args.iter().any(|a| a == "--tls"));
                assert_eq!(pair[1].args.last().map(String::as_str), Some("--tls"));
            }
            assert_eq!(c.variants.len(), if c.conns == 1 { 4 } else { 8 });
        }
        let connect = connect_plan();
        assert_eq!(connect.len(), 10);
        assert!(connect.iter().all(|v| v.args.iter().any(|a| a == "--mode")));
    }
}
