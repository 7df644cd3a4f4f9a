//! `bench-report RESULTS.json [--md BENCHMARKS.md] [--findings bench/FINDINGS.md]
//! [--tls TLS-RESULTS.json]`: regenerates `BENCHMARKS.md` and the charts (`<results
//! stem>-<query>.svg` beside the results) from a `bench-run` results file, with a TLS section
//! from a `bench-run --plan tls` file when given. Paths in the markdown are relative to the
//! markdown's directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut it = std::env::args().skip(1);
    let mut results: Option<PathBuf> = None;
    let mut md = PathBuf::from("BENCHMARKS.md");
    let mut findings = PathBuf::from("bench/FINDINGS.md");
    let mut tls: Option<PathBuf> = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--md" => md = it.next().ok_or("--md needs a path")?.into(),
            "--findings" => findings = it.next().ok_or("--findings needs a path")?.into(),
            "--tls" => tls = Some(it.next().ok_or("--tls needs a path")?.into()),
            _ => results = Some(a.into()),
        }
    }
    let results = results
        .ok_or("usage: bench-report RESULTS.json [--md PATH] [--findings PATH] [--tls PATH]")?;
    let text =
        std::fs::read_to_string(&results).map_err(|e| format!("{}: {e}", results.display()))?;
    let mut r: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let base = md
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let rel = |p: &Path| -> String {
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let (a, b) = (abs(p), abs(base));
        a.strip_prefix(&b)
            .map(|x| x.display().to_string())
            .unwrap_or_else(|_| a.display().to_string())
    };
    r["source"] = serde_json::json!(rel(&results));
    let stem = results
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("results")
        .to_string();
    let dir = results.parent().unwrap_or(Path::new("."));
    let mut charts = Vec::new();
    for q in ["select42", "param"] {
        let svg = dir.join(format!("{stem}-{q}.svg"));
        bench::report::chart(&r, q, &svg)?;
        charts.push(rel(&svg));
    }
    let findings = std::fs::read_to_string(&findings).unwrap_or_default();
    let tls = match tls {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut t: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            t["source"] = serde_json::json!(rel(&p));
            bench::report::tls_markdown(&t)
        }
        None => String::new(),
    };
    let out = bench::report::markdown(&r, &findings, &charts, &tls);
    std::fs::write(&md, out).map_err(|e| format!("{}: {e}", md.display()))?;
    eprintln!(
        "bench-report: wrote {} and {}",
        md.display(),
        charts.join(", ")
    );
    Ok(())
}
