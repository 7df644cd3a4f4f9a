//! `pgbulk --compare`: every driver of every workload as a child process (`pgbulk --workload W
//! --driver D`), interleaved — each round runs a workload's drivers back to back, in
//! alternating order between rounds — then the medians over rounds, the ratios of ioxide-pg
//! to tokio-postgres (of the medians, and per round), a markdown table on stdout and, with
//! `--out`, a results JSON holding the medians and every raw run.

use super::{admin, Workload, TOKIO};
use crate::median;
use crate::pgload::round;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::Command;

/// The settings of a comparison.
#[derive(Debug, Clone)]
pub struct CompareArgs {
    pub rounds: usize,
    pub workloads: Vec<Workload>,
    pub out: Option<PathBuf>,
    /// Passed to every child as given (`--rows`, `--url`, `--seconds`, ...).
    pub child_args: Vec<String>,
}

impl CompareArgs {
    /// Parses `--compare [--rounds N] [--workloads a,b] [--out FILE]` and keeps the rest for
    /// the children.
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<CompareArgs, String> {
        let mut c = CompareArgs {
            rounds: 3,
            workloads: Workload::ALL.to_vec(),
            out: None,
            child_args: Vec::new(),
        };
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--compare" => {}
                "--rounds" => {
                    let v = value()?;
                    c.rounds = v.parse().map_err(|_| format!("not a valid number: {v}"))?;
                }
                "--workloads" => {
                    c.workloads = value()?
                        .split(',')
                        .map(|w| Workload::parse(w).ok_or_else(|| format!("unknown workload {w}")))
                        .collect::<Result<_, _>>()?;
                }
                "--out" => c.out = Some(value()?.into()),
                "--workload" | "--driver" => {
                    return Err(format!("{a} is chosen by --compare (use --workloads)"))
                }
                _ => c.child_args.push(a),
            }
        }
        if c.rounds == 0 || c.workloads.is_empty() {
            return Err("--rounds and --workloads must not be empty".into());
        }
        Ok(c)
    }
}

/// Runs one child; its JSON line, or `{"failed": why}`.
fn child(c: &CompareArgs, w: Workload, driver: &str) -> Value {
    let base = json!({"workload": w.name(), "driver": driver});
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return with(base, "failed", json!(format!("current_exe: {e}"))),
    };
    let out = Command::new(exe)
        .args(["--workload", w.name(), "--driver", driver])
        .args(&c.child_args)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            match stdout.lines().last().map(serde_json::from_str::<Value>) {
                Some(Ok(v)) => v,
                _ => with(base, "failed", json!(format!("no JSON line: {stdout}"))),
            }
        }
        Ok(o) => with(
            base,
            "failed",
            json!(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        ),
        Err(e) => with(base, "failed", json!(format!("spawning: {e}"))),
    }
}

fn with(mut v: Value, k: &str, x: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.insert(k.into(), x);
    }
    v
}

/// The numeric fields whose medians are kept.
const FIELDS: [&str; 10] = [
    "per_sec",
    "client_cpu_us_per_item",
    "server_cpu_us_per_item",
    "server_bound_per_sec",
    "seconds",
    "p50_us",
    "p99_us",
    "max_us",
    "sender_cpu_us_per_item",
    "items",
];

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The medians of one workload × driver over its runs.
fn medians(w: Workload, driver: &str, runs: &[&Value]) -> Value {
    let mut m = Map::new();
    m.insert("workload".into(), json!(w.name()));
    m.insert("driver".into(), json!(driver));
    m.insert("unit".into(), json!(w.unit()));
    let ok: Vec<&Value> = runs
        .iter()
        .copied()
        .filter(|r| r.get("failed").is_none())
        .collect();
    for k in FIELDS {
        let xs: Vec<f64> = ok.iter().map(|r| f(r, k)).collect();
        let x = median(&xs);
        if x.is_finite() {
            m.insert(k.into(), json!(round(x, 3)));
        }
    }
    for k in ["lost", "duplicates", "gaps", "reordered"] {
        if ok.iter().any(|r| r.get(k).is_some()) {
            let total: f64 = ok.iter().map(|r| f(r, k)).filter(|x| x.is_finite()).sum();
            m.insert(format!("{k}_total"), json!(total));
        }
    }
    if let Some(how) = ok.first().and_then(|r| r.get("how")) {
        m.insert("how".into(), how.clone());
    }
    m.insert("rounds".into(), json!(ok.len()));
    m.insert("failed_runs".into(), json!(runs.len() - ok.len()));
    Value::Object(m)
}

/// Runs the comparison.
pub fn compare(c: &CompareArgs) -> Result<(), String> {
    let mut runs: Vec<(usize, Value)> = Vec::new();
    for round_no in 0..c.rounds {
        for &w in &c.workloads {
            let mut drivers = w.drivers().to_vec();
            if round_no % 2 == 1 {
                drivers.reverse();
            }
            for d in drivers {
                let v = child(c, w, d);
                eprintln!("round {}: {v}", round_no + 1);
                runs.push((round_no, v));
            }
        }
    }
    let mut meds = Vec::new();
    let mut table = String::from(
        "| workload | driver | per s | client CPU µs/item | server CPU µs/item | server-bound per s | p50 µs | p99 µs | lost | client CPU ÷ tokio-postgres (per round) | per s ÷ tokio-postgres (per round) |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for &w in &c.workloads {
        let of = |d: &str, round_no: Option<usize>| -> Vec<&Value> {
            runs.iter()
                .filter(|(r, v)| {
                    v["workload"] == w.name()
                        && v["driver"] == d
                        && round_no.is_none_or(|n| n == *r)
                })
                .map(|(_, v)| v)
                .collect()
        };
        let peer = medians(w, TOKIO, &of(TOKIO, None));
        for &d in w.drivers() {
            let mut m = medians(w, d, &of(d, None));
            let mut ratio_txt = (String::new(), String::new());
            if d != TOKIO {
                let per_round = |k: &str| -> Vec<f64> {
                    (0..c.rounds)
                        .filter_map(|r| {
                            let a = of(d, Some(r)).first().map(|v| f(v, k))?;
                            let b = of(TOKIO, Some(r)).first().map(|v| f(v, k))?;
                            (a.is_finite() && b.is_finite() && b > 0.0).then(|| round(a / b, 3))
                        })
                        .collect()
                };
                let cpu_r = round(
                    f(&m, "client_cpu_us_per_item") / f(&peer, "client_cpu_us_per_item"),
                    3,
                );
                let rate_r = round(f(&m, "per_sec") / f(&peer, "per_sec"), 3);
                let (cpu_each, rate_each) =
                    (per_round("client_cpu_us_per_item"), per_round("per_sec"));
                ratio_txt = (
                    format!("{cpu_r} ({})", list(&cpu_each)),
                    format!("{rate_r} ({})", list(&rate_each)),
                );
                if let Some(o) = m.as_object_mut() {
                    o.insert("client_cpu_vs_tokio".into(), json!(cpu_r));
                    o.insert("per_sec_vs_tokio".into(), json!(rate_r));
                    o.insert("client_cpu_vs_tokio_each".into(), json!(cpu_each));
                    o.insert("per_sec_vs_tokio_each".into(), json!(rate_each));
                }
            }
            let cell = |k: &str| {
                let x = f(&m, k);
                if x.is_finite() {
                    format!("{x}")
                } else {
                    "—".into()
                }
            };
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                w.name(),
                d,
                cell("per_sec"),
                cell("client_cpu_us_per_item"),
                cell("server_cpu_us_per_item"),
                cell("server_bound_per_sec"),
                cell("p50_us"),
                cell("p99_us"),
                cell("lost_total"),
                ratio_txt.0,
                ratio_txt.1,
            ));
            meds.push(m);
        }
    }
    println!("{table}");
    let failed = runs
        .iter()
        .filter(|(_, v)| v.get("failed").is_some())
        .count();
    if let Some(out) = &c.out {
        let opts = c
            .child_args
            .windows(2)
            .find(|p| p[0] == "--url")
            .map_or_else(::ioxide_pg::PgOptions::from_env, |p| {
                ::ioxide_pg::PgOptions::from_url(&p[1])
            });
        let postgres = opts
            .ok()
            .and_then(|o| admin(&o, &["SHOW server_version"]).ok().flatten());
        let doc = json!({
            "tool": "pgbulk --compare",
            "date": date(),
            "commit": crate::suite::commit(),
            "machine": crate::suite::machine(),
            "postgres": postgres,
            "settings": {"rounds": c.rounds, "child_args": c.child_args,
                         "workloads": c.workloads.iter().map(|w| w.name()).collect::<Vec<_>>()},
            "medians": meds,
            "runs": runs.iter().map(|(r, v)| with(v.clone(), "round", json!(r + 1))).collect::<Vec<_>>(),
            "failed_runs": failed,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(out, text + "\n").map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("pgbulk: wrote {}", out.display());
    }
    if failed > 0 {
        return Err(format!("{failed} run(s) failed (see above)"));
    }
    Ok(())
}

/// Now, UTC, ISO 8601 (`date -u`).
fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn list(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_keeps_the_childrens_flags() {
        let c = CompareArgs::parse(
            "--compare --rounds 5 --workloads reads,notify-paced --rows 100 --url postgres://x"
                .split_whitespace()
                .map(str::to_string),
        )
        .expect("valid");
        assert_eq!(c.rounds, 5);
        assert_eq!(c.workloads, vec![Workload::Reads, Workload::NotifyPaced]);
        assert_eq!(c.child_args, ["--rows", "100", "--url", "postgres://x"]);
        assert!(
            CompareArgs::parse(["--workloads".to_string(), "copy".into()].into_iter()).is_err()
        );
        assert!(CompareArgs::parse(["--driver".to_string(), "x".into()].into_iter()).is_err());
    }

    #[test]
    fn medians_skip_failed_runs_and_sum_losses() {
        let runs = [
            json!({"per_sec": 10.0, "client_cpu_us_per_item": 1.0, "lost": 0}),
            json!({"per_sec": 30.0, "client_cpu_us_per_item": 3.0, "lost": 2}),
            json!({"per_sec": 20.0, "client_cpu_us_per_item": 2.0, "lost": 1}),
            json!({"failed": "boom"}),
        ];
        let refs: Vec<&Value> = runs.iter().collect();
        let m = medians(Workload::NotifyBurst, "ioxide-pg", &refs);
        assert_eq!(f(&m, "per_sec"), 20.0);
        assert_eq!(f(&m, "client_cpu_us_per_item"), 2.0);
        assert_eq!(f(&m, "lost_total"), 3.0);
        assert_eq!((f(&m, "rounds"), f(&m, "failed_runs")), (3.0, 1.0));
    }
}
