//! `BENCHMARKS.md` and the chart, regenerated from one results JSON of `bench-run`.
//!
//! The markdown holds: the targets with their measured ratios, the tables of medians, the
//! ratios of ioxide-pg against each peer, HTTP end to end, the pipeline-depth, protocol and reactor
//! sweeps, the TLS section from a `bench-run --plan tls` results file ([`tls_markdown`]), and
//! — verbatim — `bench/FINDINGS.md`, the hand-written analysis (profiles, syscall counts) that
//! a generator cannot produce.

use crate::suite::{CONN_LABEL, TLS_SUFFIX};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// The label of pipelined ioxide-pg in the suite.
fn pipelined(r: &Value) -> String {
    format!(
        "ioxide-pg d={}",
        r["settings"]["pipelined_depth"].as_u64().unwrap_or(256)
    )
}

/// The median row of `label` in `group` at a setting.
fn find<'a>(
    r: &'a Value,
    group: &str,
    query: &str,
    conns: u64,
    conc: u64,
    label: &str,
) -> Option<&'a Value> {
    r["medians"].as_array()?.iter().find(|m| {
        m["group"] == group
            && m["query"] == query
            && m["conns"].as_u64() == Some(conns)
            && m["concurrency"].as_u64() == Some(conc)
            && m["label"] == label
    })
}

/// Like [`find`], looking in the matrix and then in the one-connection cases.
fn find_any<'a>(
    r: &'a Value,
    query: &str,
    conns: u64,
    conc: u64,
    label: &str,
) -> Option<&'a Value> {
    find(r, "matrix", query, conns, conc, label)
        .or_else(|| find(r, "one_conn", query, conns, conc, label))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "—".into()
    } else if x >= 1000.0 {
        let s = format!("{:.0}", x);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

/// One target line: `what | target | measured | verdict`.
struct Target {
    what: String,
    target: String,
    measured: String,
    ok: Option<bool>,
}

/// ioxide-pg's server-bound ceilings in `io`'s run, over `peer`'s measured q/s: the
/// machine's CPUs (which the server shares with the client here) divided by the server's CPU
/// per query that ioxide-pg's run induced — the q/s it could not pass even using no CPU
/// itself — and divided by that plus its own client CPU per query — what the cores allow it
/// as it is. Empty without a server figure.
fn ceiling(r: &Value, io: &Value, peer: &Value) -> String {
    let cpus = r["machine"]["nproc"]
        .as_f64()
        .filter(|n| *n > 0.0)
        .unwrap_or(f64::NAN);
    let server = f(io, "server_cpu_us_per_query");
    let free = cpus * 1e6 / server / f(peer, "qps");
    let own = cpus * 1e6 / (server + f(io, "client_cpu_us_per_query")) / f(peer, "qps");
    if free.is_finite() && own.is_finite() {
        format!("; server-bound ceiling {free:.2}× ({own:.2}× at its own CPU)")
    } else {
        String::new()
    }
}

/// The q/s ioxide-pg's run could reach at its own CPU: the least of the machine's cores over
/// client + server CPU per query (both share them), the backends over the server's CPU
/// (each backend is one process: `conns` of them use at most `min(conns, cores)` cores) and
/// the reactor threads over the client's CPU. `None` without the figures.
fn own_ceiling_qps(r: &Value, io: &Value) -> Option<f64> {
    let cpus = r["machine"]["nproc"].as_f64().filter(|n| *n > 0.0)?;
    let server = f(io, "server_cpu_us_per_query");
    let client = f(io, "client_cpu_us_per_query");
    let conns = io["conns"].as_f64().unwrap_or(cpus);
    let reactors = io["reactors"].as_f64().unwrap_or(1.0);
    let q = (cpus * 1e6 / (server + client))
        .min(conns.min(cpus) * 1e6 / server)
        .min(reactors.min(cpus) * 1e6 / client);
    q.is_finite().then_some(q)
}

/// The issue-21 row beside a comparison: ioxide-pg's q/s as a fraction of
/// [`own_ceiling_qps`] (target ≥ 0.95), with the server's CPU per query of both drivers, so
/// a reader sees which rows the server caps.
fn ceiling_fraction_row(r: &Value, io: &Value, peer: &Value) -> Option<Target> {
    let ceiling = own_ceiling_qps(r, io)?;
    let frac = f(io, "qps") / ceiling;
    Some(Target {
        what: "↳ the row above: ioxide-pg's q/s ÷ the server-bound ceiling at its CPU".into(),
        target: "≥ 0.95".into(),
        measured: format!(
            "{frac:.2} ({} of {} q/s; server CPU {} µs/q, peer's {} µs/q)",
            num(f(io, "qps")),
            num(ceiling),
            num(f(io, "server_cpu_us_per_query")),
            num(f(peer, "server_cpu_us_per_query")),
        ),
        ok: Some(frac >= 0.95),
    })
}

fn targets(r: &Value) -> Vec<Target> {
    let mut t = Vec::new();
    let p = pipelined(r);
    for query in ["select42", "param"] {
        // tokio-postgres at its best connection count (by q/s) at concurrency 64.
        let best = [1u64, 2, 8]
            .into_iter()
            .filter_map(|c| find_any(r, query, c, 64, "tokio-postgres").map(|m| (c, m)))
            .max_by(|a, b| f(a.1, "qps").total_cmp(&f(b.1, "qps")));
        if let Some((c, tp)) = best {
            if let Some(io) = find_any(r, query, c, 64, &p) {
                let q = ratio(f(io, "qps"), f(tp, "qps"));
                let cpu = ratio(
                    f(io, "client_cpu_us_per_query"),
                    f(tp, "client_cpu_us_per_query"),
                );
                let p99 = ratio(f(io, "p99_us"), f(tp, "p99_us"));
                t.push(Target {
                    what: format!("pipelined ioxide-pg vs tokio-postgres at its best ({c} conns), `{query}`, 64 in flight"),
                    target: "≥ 1.5× q/s; ≤ 0.33× CPU/query; p99 ≤ 1×".into(),
                    measured: format!(
                        "{q:.2}× q/s; {cpu:.2}× CPU; p99 {p99:.2}×{}",
                        ceiling(r, io, tp)
                    ),
                    ok: Some(q >= 1.5 && cpu <= 1.0 / 3.0 && p99 <= 1.0),
                });
                t.extend(ceiling_fraction_row(r, io, tp));
                // Issue 21: what the driver makes the server do.
                let server = ratio(
                    f(io, "server_cpu_us_per_query"),
                    f(tp, "server_cpu_us_per_query"),
                );
                t.push(Target {
                    what: format!("server CPU per query: pipelined ioxide-pg vs tokio-postgres ({c} conns), `{query}`, 64 in flight"),
                    target: "≤ 1×".into(),
                    measured: format!(
                        "{server:.2}× ({} µs against {} µs)",
                        num(f(io, "server_cpu_us_per_query")),
                        num(f(tp, "server_cpu_us_per_query"))
                    ),
                    ok: Some(server <= 1.0),
                });
            }
        }
        for conns in [2u64, 8] {
            if let (Some(io), Some(dp)) = (
                find(r, "matrix", query, conns, 64, "ioxide-pg d=1"),
                find(r, "matrix", query, conns, 64, "deadpool"),
            ) {
                let q = ratio(f(io, "qps"), f(dp, "qps"));
                let cpu = ratio(
                    f(io, "client_cpu_us_per_query"),
                    f(dp, "client_cpu_us_per_query"),
                );
                t.push(Target {
                    what: format!(
                        "depth-1 ioxide-pg vs deadpool, pool of {conns}, `{query}`, 64 in flight"
                    ),
                    target: "≥ 1.5× q/s; ≤ 0.33× CPU/query".into(),
                    measured: format!("{q:.2}× q/s; {cpu:.2}× CPU{}", ceiling(r, io, dp)),
                    ok: Some(q >= 1.5 && cpu <= 1.0 / 3.0),
                });
                t.extend(ceiling_fraction_row(r, io, dp));
            }
        }
        // The connection issue's target: one `PgConnection` against one tokio-postgres
        // client; the same through a pool of one is reported beside it.
        for (ours, how) in [
            (CONN_LABEL, "`PgConnection`"),
            (p.as_str(), "`PgPool` of 1"),
        ] {
            if let (Some(io), Some(tp)) = (
                find(r, "one_conn", query, 1, 64, ours),
                find(r, "one_conn", query, 1, 64, "tokio-postgres"),
            ) {
                let q = ratio(f(io, "qps"), f(tp, "qps"));
                let cpu = ratio(
                    f(io, "client_cpu_us_per_query"),
                    f(tp, "client_cpu_us_per_query"),
                );
                t.push(Target {
                    what: format!("one connection, pipelined, ioxide-pg {how} vs tokio-postgres, `{query}`, 64 in flight"),
                    target: "≤ 0.33× CPU/query".into(),
                    measured: format!("{cpu:.2}× CPU ({q:.2}× q/s)"),
                    ok: Some(cpu <= 1.0 / 3.0),
                });
                t.extend(ceiling_fraction_row(r, io, tp));
            }
        }
    }
    for path in ["/", "/add/41"] {
        let h = |s: &str| {
            r["http"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["server"] == s && m["path"] == path))
        };
        let Some(ax) = h("axum+deadpool") else {
            continue;
        };
        let playgrounds: Vec<&Value> = r["http"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| {
                        m["path"] == path
                            && m["server"]
                                .as_str()
                                .is_some_and(|s| s.starts_with("playground"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for pg in playgrounds {
            let q = ratio(f(pg, "rps"), f(ax, "rps"));
            let cpu = ratio(
                f(pg, "server_cpu_us_per_request"),
                f(ax, "server_cpu_us_per_request"),
            );
            let pg_cpu = ratio(
                f(pg, "pg_cpu_us_per_request"),
                f(ax, "pg_cpu_us_per_request"),
            );
            // Issue 21 item 5: the playground as a new user gets it (the driver's default
            // depth) on both paths; depth 1 is reported beside it.
            let label = pg["server"].as_str().unwrap_or("");
            let targeted = !label.ends_with("d=1");
            t.push(Target {
                what: format!("HTTP `{path}`: {label} vs axum + deadpool"),
                target: if targeted {
                    "≥ 1.5× req/s at ≤ 0.5× server CPU/request".into()
                } else {
                    "(no target; reported)".into()
                },
                measured: format!(
                    "{q:.2}× req/s; {cpu:.2}× server CPU/request; PostgreSQL {pg_cpu:.2}× CPU/request"
                ),
                ok: targeted.then_some(q >= 1.5 && cpu <= 0.5),
            });
        }
    }
    if r["http"].as_array().is_none_or(|a| a.is_empty()) {
        t.push(Target {
            what: "HTTP `/`: playground vs axum + deadpool".into(),
            target: "≥ 1.5× req/s at ≤ 0.5× server CPU/request".into(),
            measured: format!(
                "not measured: {}",
                r["http_note"].as_str().unwrap_or("HTTP part not run")
            ),
            ok: None,
        });
    }
    t
}

fn table_header(s: &mut String, cols: &[&str]) {
    let _ = writeln!(s, "| {} |", cols.join(" | "));
    let _ = writeln!(
        s,
        "|{}",
        cols.iter()
            .enumerate()
            .map(|(i, _)| if i < 3 { " --- |" } else { " ---: |" })
            .collect::<String>()
    );
}

/// The whole markdown. `findings` is appended verbatim; `chart` is the SVG's path relative
/// to the repository root.
pub fn markdown(r: &Value, findings: &str, charts: &[String], tls: &str) -> String {
    let mut s = String::new();
    let st = &r["settings"];
    let m = &r["machine"];
    let p = pipelined(r);
    let _ = writeln!(
        s,
        "# Benchmarks: ioxide-pg side by side with the Rust peers\n"
    );
    let _ = writeln!(
        s,
        "_Generated by `bench/run.sh` (`bench-report`) from `{}`; the analysis at the end is \
         `bench/FINDINGS.md`. Do not edit by hand._\n",
        r["source"].as_str().unwrap_or("bench/results/*.json")
    );
    let _ = writeln!(
        s,
        "Run {} at commit `{}` on {} ({} CPUs, Linux {}), PostgreSQL {} on the same host \
         (loopback TCP). Every setting: {} rounds, interleaved (each round runs every variant of \
         a setting back to back, alternating the order), {} s measured after a {} s warm-up; the \
         tables show the **median** over rounds. Client CPU is getrusage user+sys of the load \
         generator process over the window ÷ queries; the server's CPU is not in it (it has its \
         own column: the CPU of PostgreSQL's processes over the same window ÷ queries). The machine \
         is shared and noisy: compare **ratios within this run**, never absolute figures across \
         runs.\n",
        r["date"].as_str().unwrap_or("?"),
        r["commit"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["nproc"],
        m["kernel"].as_str().unwrap_or("?"),
        r["postgres"].as_str().unwrap_or("?"),
        st["rounds"],
        st["seconds"],
        st["warmup"],
    );
    let _ = writeln!(
        s,
        "Drivers: **{p}** = `PgPool` pipelined (every in-flight query goes straight to a \
         connection, like tokio-postgres), **ioxide-pg d=1** = one command per connection at a \
         time (the classic pool), **{CONN_LABEL}** = one `PgConnection` shared by the tasks, no \
         pool (one-connection cases only), all on 1 reactor thread, `pool.query(\"SELECT 42\")` (the simple \
         protocol on its first run on a connection, then prepared once and run as a prepared \
         statement: `conn/auto.rs`) / `pool.query_params` / `pool.query_rows`; **tokio-postgres** = N clients, \
         statements prepared once per client, concurrent queries spread over the clients \
         (pipelined), on a current-thread runtime (faster here than multi-thread with one \
         worker: ~1.7× q/s at 2 conns); **deadpool** = deadpool-postgres, `RecyclingMethod::Fast`, \
         rent per query, `prepare_cached`; **sqlx** = `PgPool` (its statement cache, \
         `test_before_acquire(false)`: the default `true` pings on every acquire and costs ~30 %). \
         The peers run on a tokio current-thread runtime. Queries: `select42` = `SELECT 42`, \
         `param` = `SELECT $1::int8 + 1`, `rows100` = 100 rows of `generate_series`, read fully. \
         Every answer is checked.\n"
    );

    let _ = writeln!(s, "## Targets\n");
    table_header(
        &mut s,
        &["comparison", "target", "measured (median ratio)", "verdict"],
    );
    for t in targets(r) {
        let v = match t.ok {
            Some(ok) => verdict(ok),
            None => "—",
        };
        let _ = writeln!(s, "| {} | {} | {} | {} |", t.what, t.target, t.measured, v);
    }
    let _ = writeln!(s);
    if targets(r).iter().any(|t| t.measured.contains("ceiling")) {
        let _ = writeln!(
            s,
            "**Server-bound ceiling**: PostgreSQL runs on the same {} CPUs as the load \
             generator. With S µs of server CPU per query in ioxide-pg's run (PostgreSQL's \
             processes' CPU over the window ÷ queries; it depends on the client: the simple \
             protocol of `select42` costs the server more than a prepared statement) and C µs \
             of its own client CPU, ioxide-pg cannot pass {} × 10⁶ ÷ S queries/s even if it \
             used no CPU at all, and {} × 10⁶ ÷ (S + C) as it is; the ceilings are those bounds \
             over the peer's measured q/s. Where they are below the 1.5× target, ioxide-pg \
             cannot meet it on this machine without lowering the server's cost per query.\n",
            r["machine"]["nproc"], r["machine"]["nproc"], r["machine"]["nproc"]
        );
        let _ = writeln!(
            s,
            "**↳ rows** (q/s ÷ the server-bound ceiling at its CPU, target ≥ 0.95): the least \
             of {n} × 10⁶ ÷ (S + C) (client and server share the cores), min(conns, {n}) × 10⁶ ÷ S \
             (a backend is one process: one connection's queries use at most one core) and \
             reactors × 10⁶ ÷ C (one reactor thread is one core), from ioxide-pg's own S and C \
             in that run. Near 1, the server (or the machine) caps the row and only a cheaper \
             server path raises it; well below 1, the client leaves the server idle (round \
             trips, batching).\n",
            n = r["machine"]["nproc"]
        );
    }

    for c in charts {
        let _ = writeln!(s, "![queries/s and CPU per query by concurrency]({c})\n");
    }

    for query in ["select42", "param"] {
        let _ = writeln!(s, "## `{query}`: medians\n");
        medians_table(&mut s, &rows(r, &["matrix", "one_conn"], query));
        let _ = writeln!(s);
        ratio_table(&mut s, r, query);
    }

    let _ = writeln!(s, "## `rows100` (2 conns, 64 in flight)\n");
    medians_table(&mut s, &rows(r, &["rows100"], "rows100"));
    let _ = writeln!(s);

    let _ = writeln!(
        s,
        "## Pipeline depth, protocol, reactors\n\n`depth`: `select42`, 8 conns × 64 in flight, \
         ioxide-pg at several `pipeline_depth`s. `protocol`: `SELECT 42` prepared for every \
         driver (ioxide-pg through `query_params`), 2 conns × 64 — the same statement the peers \
         run in `select42`. `reactors`: 8 conns × 64 on 1 or 2 reactor threads.\n"
    );
    table_header(
        &mut s,
        &[
            "group",
            "query",
            "conns × in flight",
            "driver",
            "q/s",
            "CPU µs/query",
            "server CPU µs/query",
            "p50 µs",
            "p99 µs",
            "enters/query",
        ],
    );
    for (group, query) in [
        ("depth", "select42"),
        ("protocol", "select42-prepared"),
        ("reactors", "select42"),
    ] {
        for row in rows(r, &[group], query) {
            let _ = writeln!(
                s,
                "| {} | {} | {}×{} | {} | {} | {} | {} | {} | {} | {} |",
                group,
                query,
                row["conns"],
                row["concurrency"],
                row["label"].as_str().unwrap_or(""),
                num(f(row, "qps")),
                num(f(row, "client_cpu_us_per_query")),
                num(f(row, "server_cpu_us_per_query")),
                num(f(row, "p50_us")),
                num(f(row, "p99_us")),
                num(f(row, "enters_per_query")),
            );
        }
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## HTTP end to end\n");
    match r["http"].as_array().filter(|a| !a.is_empty()) {
        Some(h) => {
            let _ = writeln!(
                s,
                "`wrk -t1 -c{} -d{}s` per route and server, all servers up at once, `REACTORS={}` \
                 (axum: that many tokio workers), {} PostgreSQL connections per reactor/worker on \
                 both (axum: one deadpool pool of {} × {}); the playground with one command per \
                 connection (`PG_PIPELINE_DEPTH=1`) and pipelined (`d=8`, the driver's default: \
                 what a new user gets); server CPU from /proc/<pid>/stat (utime+stime) over the wrk \
                 run ÷ requests; PostgreSQL CPU = its postmaster and backends over the same run ÷ \
                 requests.\n",
                st["http_conns"],
                st["http_seconds"],
                st["http_reactors"].as_u64().unwrap_or(1),
                st["http_pool_size"],
                st["http_pool_size"],
                st["http_reactors"].as_u64().unwrap_or(1)
            );
            table_header(
                &mut s,
                &[
                    "route",
                    "server",
                    "-",
                    "req/s",
                    "server CPU µs/request",
                    "PostgreSQL CPU µs/request",
                    "p50 µs",
                    "p99 µs",
                    "errors",
                ],
            );
            for row in h {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | | {} | {} | {} | {} | {} | {} |",
                    row["path"].as_str().unwrap_or(""),
                    row["server"].as_str().unwrap_or(""),
                    num(f(row, "rps")),
                    num(f(row, "server_cpu_us_per_request")),
                    num(f(row, "pg_cpu_us_per_request")),
                    num(f(row, "p50_us")),
                    num(f(row, "p99_us")),
                    row["errors"]
                );
            }
        }
        None => {
            let _ = writeln!(
                s,
                "Not measured in this run: {}.",
                r["http_note"].as_str().unwrap_or("HTTP part not run")
            );
        }
    }
    let _ = writeln!(s);
    s.push_str(tls);
    s.push_str(findings);
    s
}

/// One line per driver and setting: conns, in flight, driver, q/s, CPU, p50, p99, errors.
fn medians_table(s: &mut String, rows: &[&Value]) {
    table_header(
        s,
        &[
            "conns",
            "in flight",
            "driver",
            "q/s",
            "CPU µs/query",
            "server CPU µs/query",
            "p50 µs",
            "p99 µs",
            "errors",
        ],
    );
    for row in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row["conns"],
            row["concurrency"],
            row["label"].as_str().unwrap_or(""),
            num(f(row, "qps")),
            num(f(row, "client_cpu_us_per_query")),
            num(f(row, "server_cpu_us_per_query")),
            num(f(row, "p50_us")),
            num(f(row, "p99_us")),
            row["errors"]
        );
    }
}

fn rows<'a>(r: &'a Value, groups: &[&str], query: &str) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = r["medians"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| groups.iter().any(|g| m["group"] == *g) && m["query"] == query)
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|m| (m["conns"].as_u64(), m["concurrency"].as_u64()));
    v
}

fn ratio_table(s: &mut String, r: &Value, query: &str) {
    let p = pipelined(r);
    let _ = writeln!(
        s,
        "Ratios (median ioxide-pg ÷ median peer, same setting): q/s (higher is better) and CPU \
         per query (lower is better); `{p}` against every peer, `d=1` against deadpool, and \
         `{CONN_LABEL}` (one bare connection) against tokio-postgres's one client.\n"
    );
    table_header(
        s,
        &[
            "conns",
            "in flight",
            "ours",
            "vs tokio-postgres q/s",
            "CPU",
            "vs deadpool q/s",
            "CPU",
            "vs sqlx q/s",
            "CPU",
        ],
    );
    let mut settings: Vec<(u64, u64)> = rows(r, &["matrix", "one_conn"], query)
        .iter()
        .filter_map(|m| Some((m["conns"].as_u64()?, m["concurrency"].as_u64()?)))
        .collect();
    settings.dedup();
    for (conns, conc) in settings {
        for ours in [CONN_LABEL, p.as_str(), "ioxide-pg d=1"] {
            let Some(io) = find_any(r, query, conns, conc, ours) else {
                continue;
            };
            let mut line = format!("| {conns} | {conc} | {ours} |");
            for peer in ["tokio-postgres", "deadpool", "sqlx"] {
                match find_any(r, query, conns, conc, peer) {
                    Some(pm) => {
                        let _ = write!(
                            line,
                            " {:.2}× | {:.2}× |",
                            f(io, "qps") / f(pm, "qps"),
                            f(io, "client_cpu_us_per_query") / f(pm, "client_cpu_us_per_query")
                        );
                    }
                    None => line.push_str(" — | — |"),
                }
            }
            let _ = writeln!(s, "{line}");
        }
    }
    let _ = writeln!(s);
}

/// Draws queries/s and CPU µs per query by concurrency, per connection count, for `query`.
pub fn chart(r: &Value, query: &str, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let labels: Vec<String> = {
        let mut l: Vec<String> = rows(r, &["matrix"], query)
            .iter()
            .filter_map(|m| m["label"].as_str().map(str::to_string))
            .collect();
        l.sort();
        l.dedup();
        l
    };
    let root = SVGBackend::new(path, (1200, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(
            &format!(
                "{query}: queries/s and client CPU µs/query by concurrency (median of rounds)"
            ),
            ("sans-serif", 22),
        )
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((2, 2));
    let palette = [RED, BLUE, GREEN, MAGENTA, BLACK, CYAN];
    for (pi, panel) in panels.iter().enumerate() {
        let conns = if pi < 2 { 2u64 } else { 8 };
        let metric = if pi % 2 == 0 {
            "qps"
        } else {
            "client_cpu_us_per_query"
        };
        let series: Vec<(String, Vec<(f64, f64)>)> = labels
            .iter()
            .map(|l| {
                let pts = rows(r, &["matrix"], query)
                    .iter()
                    .filter(|m| m["conns"].as_u64() == Some(conns) && m["label"] == l.as_str())
                    .filter_map(|m| {
                        Some(((m["concurrency"].as_f64()?).log2(), m[metric].as_f64()?))
                    })
                    .collect();
                (l.clone(), pts)
            })
            .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
            .collect();
        let ymax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.1))
            .fold(0.0f64, f64::max)
            * 1.1;
        let title = format!(
            "{} conns — {}",
            conns,
            if metric == "qps" {
                "queries/s"
            } else {
                "client CPU µs per query"
            }
        );
        let mut ch = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.3f64..8.3f64, 0f64..ymax.max(1.0))
            .map_err(|e| e.to_string())?;
        ch.configure_mesh()
            .x_desc("queries in flight")
            .x_labels(9)
            .x_label_formatter(&|x| format!("{}", 2f64.powf(x.round()) as u64))
            .y_label_formatter(&|y| {
                if metric == "qps" {
                    format!("{:.0}k", y / 1000.0)
                } else {
                    format!("{y:.0}")
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = palette[i % palette.len()];
            ch.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            ch.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(if metric == "qps" {
                SeriesLabelPosition::UpperLeft
            } else {
                SeriesLabelPosition::UpperRight
            })
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// The labels of one driver in the TLS plan: plaintext and TLS.
fn tls_pair(label: &str) -> (String, String) {
    (label.to_string(), format!("{label}{TLS_SUFFIX}"))
}

/// Per-round ratios `a ÷ b` of `metric` in the TLS plan (the two runs of one round ran back
/// to back).
fn round_ratios(r: &Value, query: &str, conns: u64, a: &str, b: &str, metric: &str) -> Vec<f64> {
    let runs = r["runs"].as_array().map(Vec::as_slice).unwrap_or_default();
    let get = |label: &str, round: u64| {
        runs.iter()
            .find(|x| {
                x["label"] == label
                    && x["round"].as_u64() == Some(round)
                    && x["result"]["query"] == query
                    && x["result"]["conns"].as_u64() == Some(conns)
            })
            .and_then(|x| x["result"][metric].as_f64())
    };
    let rounds = r["settings"]["rounds"].as_u64().unwrap_or(0);
    (1..=rounds)
        .filter_map(|k| Some(get(a, k)? / get(b, k)?))
        .collect()
}

fn list(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pipelined ioxide-pg label, the drivers of the TLS plan in table order.
fn tls_drivers(r: &Value) -> Vec<String> {
    vec![
        pipelined(r),
        "tokio-postgres".into(),
        "deadpool".into(),
        "sqlx".into(),
    ]
}

/// The connect row of `driver` for `mode` and `setup`.
fn connect_row<'a>(r: &'a Value, mode: &str, setup: &str, driver: &str) -> Option<&'a Value> {
    r["connect_medians"]
        .as_array()?
        .iter()
        .find(|m| m["mode"] == mode && m["setup"] == setup && m["driver"] == driver)
}

/// The "TLS" section of BENCHMARKS.md from a `bench-run --plan tls` results file: targets,
/// plaintext against TLS per driver, ioxide-pg against the peers over TLS, connect and
/// handshake cost, pool warm-up.
pub fn tls_markdown(r: &Value) -> String {
    let mut s = String::new();
    let st = &r["settings"];
    let m = &r["machine"];
    let p = pipelined(r);
    let (p_plain, p_tls) = tls_pair(&p);
    let t_tls = tls_pair("tokio-postgres").1;
    let tls_of = |mm: &Value| {
        format!(
            "{} {}",
            mm["tls_version"].as_str().unwrap_or("?"),
            mm["tls_cipher"].as_str().unwrap_or("?")
        )
    };
    let negotiated: Vec<String> = {
        let mut v: Vec<String> = r["medians"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["tls"] == true).map(tls_of).collect())
            .unwrap_or_default();
        v.sort();
        v.dedup();
        v
    };
    let _ = writeln!(s, "## TLS\n");
    let _ = writeln!(
        s,
        "_From `{}` (`bench/tls.sh`), run {} at commit `{}` on {} ({} CPUs, Linux {}), PostgreSQL \
         {} on the same host. Every setting: {} rounds, interleaved (each driver's plaintext and \
         TLS runs back to back, the order alternating between rounds), {} s measured after a {} s \
         warm-up, 64 queries in flight; medians over rounds, ratios within this run only._\n",
        r["source"].as_str().unwrap_or("bench/results/*-tls-*.json"),
        r["date"].as_str().unwrap_or("?"),
        r["commit"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["nproc"],
        m["kernel"].as_str().unwrap_or("?"),
        r["postgres"].as_str().unwrap_or("?"),
        st["rounds"],
        st["seconds"],
        st["warmup"],
    );
    let _ = writeln!(
        s,
        "Every driver runs rustls 0.23 with the `ring` provider and checks the server's \
         certificate fully (chain to the run's CA and host name `127.0.0.1`, libpq's \
         `verify-full`): ioxide-pg through its options (`sslmode=verify-full`, `sslrootcert`), \
         tokio-postgres and deadpool-postgres through `tokio-postgres-rustls` 0.14 with a ring \
         `ClientConfig`, sqlx through its `tls-rustls-ring-webpki` feature (`PgSslMode::VerifyFull`, \
         `ssl_root_cert`). Server certificate: {}, made at run time by `BENCH_TLS=1 \
         bench/cluster.sh`. Negotiated (`pg_stat_ssl`, checked by every run at start — a run \
         whose session is not encrypted as asked aborts): {}. Drivers as in the tables above \
         ({p} = `PgPool` pipelined; tokio-postgres N clients, pipelined; deadpool and sqlx \
         pools of N). Client CPU = the load generator's getrusage ÷ queries; server CPU = \
         PostgreSQL's processes ÷ queries.\n",
        st["tls_server_key"].as_str().unwrap_or("?"),
        if negotiated.is_empty() {
            "?".to_string()
        } else {
            negotiated.join("; ")
        },
    );

    // Targets.
    let _ = writeln!(s, "### TLS targets\n");
    table_header(
        &mut s,
        &[
            "comparison",
            "target",
            "measured (median ratio; per round)",
            "verdict",
        ],
    );
    for query in ["select42", "param"] {
        let best = [1u64, 2, 8]
            .into_iter()
            .filter_map(|c| find(r, "tls", query, c, 64, &t_tls).map(|x| (c, x)))
            .max_by(|a, b| f(a.1, "qps").total_cmp(&f(b.1, "qps")));
        if let Some((c, tp)) = best {
            if let Some(io) = find(r, "tls", query, c, 64, &p_tls) {
                let cpu = ratio(
                    f(io, "client_cpu_us_per_query"),
                    f(tp, "client_cpu_us_per_query"),
                );
                let rounds = round_ratios(r, query, c, &p_tls, &t_tls, "client_cpu_us_per_query");
                let _ = writeln!(
                    s,
                    "| ioxide-pg over TLS vs tokio-postgres over rustls at its best ({c} conns), \
                     `{query}` | ≤ 0.5× client CPU/query | {cpu:.2}× CPU ({}; {:.2}× q/s, p99 \
                     {:.2}×) | {} |",
                    list(&rounds),
                    ratio(f(io, "qps"), f(tp, "qps")),
                    ratio(f(io, "p99_us"), f(tp, "p99_us")),
                    verdict(cpu <= 0.5)
                );
            }
        }
        for c in [1u64, 2, 8] {
            if let (Some(tls), Some(plain)) = (
                find(r, "tls", query, c, 64, &p_tls),
                find(r, "tls", query, c, 64, &p_plain),
            ) {
                let cpu = ratio(
                    f(tls, "client_cpu_us_per_query"),
                    f(plain, "client_cpu_us_per_query"),
                );
                let rounds = round_ratios(r, query, c, &p_tls, &p_plain, "client_cpu_us_per_query");
                let _ = writeln!(
                    s,
                    "| ioxide-pg TLS vs plaintext, {c} conn{}, `{query}` | ≤ 1.3× client \
                     CPU/query | {cpu:.2}× CPU ({}; {:.2}× q/s) | {} |",
                    if c == 1 { "" } else { "s" },
                    list(&rounds),
                    ratio(f(tls, "qps"), f(plain, "qps")),
                    verdict(cpu <= 1.3)
                );
            }
        }
    }
    let _ = writeln!(s);

    // Plaintext against TLS, per driver.
    let _ = writeln!(
        s,
        "### Plaintext and TLS, per driver (medians)\n\nEach row: one driver at one connection \
         count, its plaintext and TLS runs; `×` = TLS ÷ plaintext.\n"
    );
    table_header(
        &mut s,
        &[
            "query",
            "conns",
            "driver",
            "q/s plain",
            "q/s TLS",
            "×",
            "CPU µs/q plain",
            "CPU µs/q TLS",
            "×",
            "p99 µs plain",
            "p99 µs TLS",
            "server CPU µs/q plain",
            "server CPU µs/q TLS",
            "errors",
        ],
    );
    for query in ["select42", "param"] {
        for c in [1u64, 2, 8] {
            for d in tls_drivers(r) {
                let (a, b) = tls_pair(&d);
                let (Some(x), Some(y)) = (
                    find(r, "tls", query, c, 64, &a),
                    find(r, "tls", query, c, 64, &b),
                ) else {
                    continue;
                };
                let errors = x["errors"].as_u64().unwrap_or(0)
                    + y["errors"].as_u64().unwrap_or(0)
                    + x["failed_runs"].as_u64().unwrap_or(0)
                    + y["failed_runs"].as_u64().unwrap_or(0);
                let _ = writeln!(
                    s,
                    "| `{query}` | {c} | {d} | {} | {} | {:.2} | {} | {} | {:.2} | {} | {} | {} | {} | {errors} |",
                    num(f(x, "qps")),
                    num(f(y, "qps")),
                    ratio(f(y, "qps"), f(x, "qps")),
                    num(f(x, "client_cpu_us_per_query")),
                    num(f(y, "client_cpu_us_per_query")),
                    ratio(
                        f(y, "client_cpu_us_per_query"),
                        f(x, "client_cpu_us_per_query")
                    ),
                    num(f(x, "p99_us")),
                    num(f(y, "p99_us")),
                    num(f(x, "server_cpu_us_per_query")),
                    num(f(y, "server_cpu_us_per_query")),
                );
            }
        }
    }
    let _ = writeln!(s);

    // ioxide-pg against the peers, both over TLS.
    let _ = writeln!(
        s,
        "### ioxide-pg against the peers, all over TLS\n\nMedian {p} TLS ÷ median peer TLS at \
         the same connection count: q/s (higher is better) and client CPU per query (lower is \
         better).\n"
    );
    table_header(
        &mut s,
        &[
            "query",
            "conns",
            "-",
            "vs tokio-postgres q/s",
            "CPU",
            "vs deadpool q/s",
            "CPU",
            "vs sqlx q/s",
            "CPU",
        ],
    );
    for query in ["select42", "param"] {
        for c in [1u64, 2, 8] {
            let Some(io) = find(r, "tls", query, c, 64, &p_tls) else {
                continue;
            };
            let mut line = format!("| `{query}` | {c} | |");
            for peer in ["tokio-postgres", "deadpool", "sqlx"] {
                match find(r, "tls", query, c, 64, &tls_pair(peer).1) {
                    Some(pm) => {
                        let _ = write!(
                            line,
                            " {:.2}× | {:.2}× |",
                            ratio(f(io, "qps"), f(pm, "qps")),
                            ratio(
                                f(io, "client_cpu_us_per_query"),
                                f(pm, "client_cpu_us_per_query")
                            )
                        );
                    }
                    None => line.push_str(" — | — |"),
                }
            }
            let _ = writeln!(s, "{line}");
        }
    }
    let _ = writeln!(s);

    // Connect and handshake.
    let n = st["connect_n"].as_u64().unwrap_or(0);
    let _ = writeln!(
        s,
        "### Connect and handshake\n\n`pgconnect --mode sequential`: {n} connects one after \
         another per run (TCP, SSLRequest and TLS handshake, authentication, up to \
         ReadyForQuery), each timed and its client CPU taken (getrusage around it); the \
         connections stay open until the series ends so the server's CPU (postmaster forks \
         and backends) covers them all. **TLS + SCRAM**: role `bench_scram`, SCRAM-SHA-256 with \
         `channel_binding=require` for both drivers (SCRAM-SHA-256-PLUS, \
         tls-server-end-point); **TLS, trust**: the superuser on a trust line (the TLS \
         handshake alone); **SCRAM**: plaintext, for reference. ioxide-pg on one reactor \
         (`PgConnection::connect_to`, address resolved once), tokio-postgres on a \
         current-thread runtime (`Config::connect`, `tokio-postgres-rustls`). Medians over \
         rounds of each run's median, p99 and mean.\n"
    );
    table_header(
        &mut s,
        &[
            "setup",
            "driver",
            "connect p50 µs",
            "connect p99 µs",
            "client CPU µs/conn p50",
            "p99",
            "mean",
            "server CPU µs/conn",
            "ioxide-pg ÷ tokio-postgres CPU p50",
            "time p50",
        ],
    );
    for setup in ["TLS + SCRAM", "TLS, trust", "SCRAM"] {
        let io = connect_row(r, "sequential", setup, "ioxide-pg");
        let tp = connect_row(r, "sequential", setup, "tokio-postgres");
        for (d, row) in [("ioxide-pg", io), ("tokio-postgres", tp)] {
            let Some(x) = row else { continue };
            let ratios = match (d, io, tp) {
                ("ioxide-pg", Some(a), Some(b)) => format!(
                    "{:.2}× | {:.2}×",
                    ratio(f(a, "cpu_p50_us"), f(b, "cpu_p50_us")),
                    ratio(f(a, "connect_p50_us"), f(b, "connect_p50_us"))
                ),
                _ => "| ".into(),
            };
            let _ = writeln!(
                s,
                "| {setup} | {d} | {} | {} | {} | {} | {} | {} | {ratios} |",
                num(f(x, "connect_p50_us")),
                num(f(x, "connect_p99_us")),
                num(f(x, "cpu_p50_us")),
                num(f(x, "cpu_p99_us")),
                num(f(x, "cpu_mean_us")),
                num(f(x, "server_cpu_us_per_conn")),
            );
        }
    }
    let _ = writeln!(s);

    // Pool warm-up.
    let size = st["warm_size"].as_u64().unwrap_or(0);
    let _ = writeln!(
        s,
        "### Warming up {size} connections\n\n`pgconnect --mode pool`: the time until {size} \
         connections are open at once, {} repetitions per run (median), the connections closed \
         and 0.5 s given to the server between repetitions. ioxide-pg: `PgPool::start_with_target` \
         with `pool_size` {size} on one reactor (it starts every missing connect at once), \
         `stats().open` polled every 0.5 ms; tokio-postgres: {size} `Config::connect` tasks \
         spawned at once on a current-thread runtime, all awaited. Client and server CPU over \
         the same span.\n",
        st["warm_reps"]
    );
    table_header(
        &mut s,
        &[
            "setup",
            "driver",
            "all open after ms",
            "client CPU ms",
            "server CPU ms",
            "ioxide-pg ÷ tokio-postgres time",
            "client CPU",
        ],
    );
    for setup in ["TLS + SCRAM", "SCRAM"] {
        let io = connect_row(r, "pool", setup, "ioxide-pg");
        let tp = connect_row(r, "pool", setup, "tokio-postgres");
        for (d, row) in [("ioxide-pg", io), ("tokio-postgres", tp)] {
            let Some(x) = row else { continue };
            let ratios = match (d, io, tp) {
                ("ioxide-pg", Some(a), Some(b)) => format!(
                    "{:.2}× | {:.2}×",
                    ratio(f(a, "warm_ms"), f(b, "warm_ms")),
                    ratio(f(a, "cpu_ms"), f(b, "cpu_ms"))
                ),
                _ => "| ".into(),
            };
            let _ = writeln!(
                s,
                "| {setup} | {d} | {} | {} | {} | {ratios} |",
                num(f(x, "warm_ms")),
                num(f(x, "cpu_ms")),
                num(f(x, "server_cpu_ms")),
            );
        }
    }
    let _ = writeln!(s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn med(query: &str, conns: u64, label: &str, qps: f64, cpu: f64, tls: bool) -> Value {
        json!({"group": "tls", "query": query, "conns": conns, "concurrency": 64,
               "label": label, "qps": qps, "client_cpu_us_per_query": cpu, "p99_us": 900.0,
               "server_cpu_us_per_query": 6.0, "errors": 0, "failed_runs": 0, "tls": tls,
               "tls_version": if tls { "TLSv1.3" } else { "-" },
               "tls_cipher": if tls { "TLS_AES_256_GCM_SHA384" } else { "-" }})
    }

    fn run(query: &str, conns: u64, label: &str, round: u64, cpu: f64) -> Value {
        json!({"group": "tls", "label": label, "round": round,
               "result": {"query": query, "conns": conns, "client_cpu_us_per_query": cpu}})
    }

    #[test]
    fn tls_section_checks_both_targets() {
        let mut medians = Vec::new();
        let mut runs = Vec::new();
        for conns in [1u64, 2, 8] {
            // tokio-postgres is best at 2 conns; ioxide-pg TLS 0.4× its CPU there, and 1.2×
            // its own plaintext CPU except at 8 conns (1.5×).
            let tp_qps = if conns == 2 { 150_000.0 } else { 100_000.0 };
            let io_tls = if conns == 8 { 1.5 } else { 1.2 };
            medians.push(med(
                "select42",
                conns,
                "ioxide-pg d=256",
                200_000.0,
                1.0,
                false,
            ));
            medians.push(med(
                "select42",
                conns,
                "ioxide-pg d=256 TLS",
                180_000.0,
                io_tls,
                true,
            ));
            medians.push(med("select42", conns, "tokio-postgres", tp_qps, 2.5, false));
            medians.push(med(
                "select42",
                conns,
                "tokio-postgres TLS",
                tp_qps,
                3.0,
                true,
            ));
            for round in 1..=3 {
                runs.push(run("select42", conns, "ioxide-pg d=256", round, 1.0));
                runs.push(run("select42", conns, "ioxide-pg d=256 TLS", round, io_tls));
                runs.push(run("select42", conns, "tokio-postgres TLS", round, 3.0));
            }
        }
        let r = json!({"settings": {"rounds": 3, "seconds": 2.0, "warmup": 1.0,
                       "pipelined_depth": 256, "connect_n": 200, "warm_size": 64, "warm_reps": 5,
                       "tls_server_key": "RSA 2048"},
                       "machine": {"nproc": 2}, "medians": medians, "runs": runs,
                       "connect_medians": [
                         {"mode": "sequential", "setup": "TLS + SCRAM", "driver": "ioxide-pg",
                          "connect_p50_us": 4000.0, "cpu_p50_us": 1300.0},
                         {"mode": "sequential", "setup": "TLS + SCRAM", "driver": "tokio-postgres",
                          "connect_p50_us": 5000.0, "cpu_p50_us": 1000.0},
                         {"mode": "pool", "setup": "SCRAM", "driver": "ioxide-pg",
                          "warm_ms": 50.0, "cpu_ms": 60.0},
                         {"mode": "pool", "setup": "SCRAM", "driver": "tokio-postgres",
                          "warm_ms": 100.0, "cpu_ms": 60.0}]});
        let md = tls_markdown(&r);
        let line = |needle: &str| {
            md.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle:?} in\n{md}"))
                .to_string()
        };
        let best = line("at its best (2 conns), `select42`");
        assert!(best.contains("0.40× CPU (0.40, 0.40, 0.40;"), "{best}");
        assert!(best.ends_with("**met** |"), "{best}");
        assert!(line("plaintext, 1 conn, `select42`").ends_with("**met** |"));
        let eight = line("plaintext, 8 conns, `select42`");
        assert!(eight.contains("1.50× CPU"), "{eight}");
        assert!(eight.ends_with("**missed** |"), "{eight}");
        assert!(md.contains("TLSv1.3 TLS_AES_256_GCM_SHA384"));
        // Connect: ioxide-pg 1.3× tokio-postgres's CPU, 0.8× its time; warm-up 0.5× the time.
        assert!(line("| TLS + SCRAM | ioxide-pg |").ends_with("| 1.30× | 0.80× |"));
        assert!(line("| SCRAM | ioxide-pg | 50.0").contains("| 0.50× | 1.00× |"));
        assert!(!md.contains("NaN"), "{md}");
    }
}
