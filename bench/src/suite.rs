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

/// Runs one pgload child and parses its JSON line (an error object if it failed).
pub fn run_pgload(pgload: &Path, case: &Case, var: &Variant, seconds: f64) -> Value {
    let mut cmd = Command::new(pgload);
    cmd.args(["--query", case.query])
        .args(["--conns", &case.conns.to_string()])
        .args(["--concurrency", &case.concurrency.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(&var.args);
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
        for k in ["driver", "pipeline_depth", "reactors", "runtime"] {
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
        // Depth 1 only where it differs from the pipelined run.
        for c in plan.iter().filter(|c| c.group == "matrix") {
            let has_d1 = c.variants.iter().any(|v| v.label == "ioxide-pg d=1");
            assert_eq!(has_d1, c.concurrency > c.conns, "{c:?}");
        }
    }
}
