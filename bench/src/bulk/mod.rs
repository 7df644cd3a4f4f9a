//! `pgbulk`: the bulk paths of issue 19, ioxide-pg against tokio-postgres, one workload and
//! one driver per run, one JSON line (see bench/README.md, "pgbulk").
//!
//! Workloads (`--workload`; to add one: a [`Workload`] variant, its drivers in
//! [`Workload::drivers`], its setup and check in [`run`], and a function in each driver
//! module):
//!
//! * `reads`: `--queries` results of `--rows` rows (default 10 000) of five columns (int8,
//!   text, float8, timestamptz, bool) from a table, every column of every row read through a
//!   typed `get`, one query at a time on one connection (sqlx too: `fetch_all` + `try_get`).
//!   The timestamptz is read into [`Ts`] (a local `FromSql` for `TIMESTAMPTZ`, the raw
//!   microseconds; for sqlx a `Decode` of the same bytes) by every driver, so none pays a
//!   date library the others do not. Every result is checked against the sums of
//!   the generated rows.
//! * `insert`: `--rows` rows (default 100 000) of the same five columns into an empty table
//!   (truncated before the run, untimed): ioxide-pg `execute_many` (all rows in one batch, or
//!   `ioxide-pg chunks`: batches of `--chunk` rows, default 1 000, one after another), tokio-postgres one `execute` per row with `--depth` in flight on one
//!   client (pipelined), tokio-postgres `copy_in` with `BinaryCopyInWriter` (the reference
//!   for COPY). The table's row count and id sum are checked after.
//! * `notify-burst`: a sender connection (tokio-postgres, on its own thread, the same for both
//!   listeners) issues `--n` × `SELECT pg_notify('pgbulk', $1)` with `--depth` in flight; the
//!   payload is a sequence number and the send time (ns on this process's monotonic clock).
//!   The listener under test (ioxide-pg `PgListener::next`, tokio-postgres
//!   `Connection::poll_message`) receives them; notifications/s is received ÷ (last receive −
//!   first send). Lost = sent − distinct received (must be 0).
//! * `notify-paced`: the same with one send at a time at `--rate` per second: delivery latency
//!   (receive time − send time in the payload) p50/p99.
//! * `copy-in-binary`: `--rows` rows (default 1 000 000) of the five columns, made before the
//!   window, written through each driver's `BinaryCopyInWriter` into the emptied
//!   `pgbulk_insert` (truncated + `CHECKPOINT` before, untimed); psql: `\copy … FROM` a file
//!   holding the same binary COPY data. Checked after: the table's count and the sums of
//!   every column ([`check_copied`]) and the rows the driver reported.
//! * `copy-in-text`: the same rows as COPY text ([`text_row`]), rendered before the window,
//!   sent in [`TEXT_CHUNK`]-byte pieces (ioxide-pg `CopyIn::send`, tokio-postgres's `Sink`
//!   of `Bytes` slices, sqlx `PgCopyIn::send`; psql from a file).
//! * `copy-out-binary`: `COPY pgbulk_copy … TO STDOUT (FORMAT binary)` of a table holding
//!   `--rows` rows, every column of every row read typed (`BinaryCopyOutStream`), sums
//!   checked; psql writes the data to a file, checked after.
//! * `copy-out-text`: the same in text, the data taken as raw chunks; the check counts the
//!   newlines, the bytes and their sum ([`TextSums`]) against the rendered rows. Every COPY
//!   session first sets `TimeZone`, `DateStyle` and `extra_float_digits` ([`SESSION_SQL`])
//!   so the server's text is the rendered one.
//!
//! CPU: the process's getrusage user+sys over the measured window ÷ rows (or notifications);
//! for the notify workloads minus the sender thread's own CPU (`/proc/thread-self/schedstat`),
//! so the figure is the listener's. The server's CPU over the same window (its postmaster and
//! every child, [`crate::pgload::server`]) ÷ rows: with 2 cores shared, 2 × 10⁶ ÷ that is the
//! rows/s no client can pass. psql's CPU is its own (`/usr/bin/time`, 10 ms resolution).

mod compare;
pub mod ioxide_pg;
pub mod peer;
pub mod psql;

pub use compare::{compare, CompareArgs};

use crate::pgload::{round, server};
use crate::Histogram;
use ::ioxide_pg::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use ::ioxide_pg::PgOptions;
use bytes::BytesMut;
use serde_json::{json, Value};
use std::error::Error;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Typed reads of 10 000-row results.
    Reads,
    /// Bulk insert.
    Insert,
    /// LISTEN/NOTIFY throughput.
    NotifyBurst,
    /// LISTEN/NOTIFY latency at a fixed send rate.
    NotifyPaced,
    /// COPY FROM STDIN, binary, typed rows.
    CopyInBinary,
    /// COPY FROM STDIN, text, raw chunks.
    CopyInText,
    /// COPY TO STDOUT, binary, typed rows.
    CopyOutBinary,
    /// COPY TO STDOUT, text, raw chunks.
    CopyOutText,
}

impl Workload {
    /// Every workload, in the order `--compare` runs them.
    pub const ALL: [Workload; 8] = [
        Workload::Reads,
        Workload::Insert,
        Workload::NotifyBurst,
        Workload::NotifyPaced,
        Workload::CopyInBinary,
        Workload::CopyInText,
        Workload::CopyOutBinary,
        Workload::CopyOutText,
    ];

    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Reads => "reads",
            Workload::Insert => "insert",
            Workload::NotifyBurst => "notify-burst",
            Workload::NotifyPaced => "notify-paced",
            Workload::CopyInBinary => "copy-in-binary",
            Workload::CopyInText => "copy-in-text",
            Workload::CopyOutBinary => "copy-out-binary",
            Workload::CopyOutText => "copy-out-text",
        }
    }

    /// The workload called `s`.
    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// The drivers (variants) this workload compares, ioxide-pg's first.
    pub fn drivers(self) -> &'static [&'static str] {
        match self {
            Workload::Reads => &[IOXIDE, IOXIDE_OWNED, TOKIO, SQLX],
            Workload::Insert => &[IOXIDE, IOXIDE_CHUNKS, TOKIO, TOKIO_COPY],
            Workload::NotifyBurst | Workload::NotifyPaced => &[IOXIDE, TOKIO],
            Workload::CopyInBinary | Workload::CopyOutBinary => &[IOXIDE, TOKIO, PSQL],
            Workload::CopyInText | Workload::CopyOutText => &[IOXIDE, TOKIO, SQLX, PSQL],
        }
    }

    /// A COPY workload: (from STDIN?, binary?).
    pub fn copy(self) -> Option<(bool, bool)> {
        match self {
            Workload::CopyInBinary => Some((true, true)),
            Workload::CopyInText => Some((true, false)),
            Workload::CopyOutBinary => Some((false, true)),
            Workload::CopyOutText => Some((false, false)),
            _ => None,
        }
    }

    /// The unit the per-item figures are counted in.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::NotifyBurst | Workload::NotifyPaced => "notification",
            _ => "row",
        }
    }
}

/// ioxide-pg: `query_rows` (reads), `execute_many` (insert), `PgListener` (notify).
pub const IOXIDE: &str = "ioxide-pg";
/// ioxide-pg reads through `query_params` and owned rows (`ResultSet::into_rows`).
pub const IOXIDE_OWNED: &str = "ioxide-pg owned";
/// ioxide-pg `execute_many` in batches of `--chunk` rows (default [`DEFAULT_CHUNK`]), one
/// after another (insert only).
pub const IOXIDE_CHUNKS: &str = "ioxide-pg chunks";
/// The batch size of [`IOXIDE_CHUNKS`] when `--chunk` is not given.
pub const DEFAULT_CHUNK: usize = 1_000;
/// tokio-postgres: `query` (reads), pipelined `execute`s (insert), `poll_message` (notify).
pub const TOKIO: &str = "tokio-postgres";
/// sqlx: one `PgConnection`, `query(...).fetch_all` + `try_get` (reads only).
pub const SQLX: &str = "sqlx";
/// tokio-postgres `copy_in` + `BinaryCopyInWriter` (insert only).
pub const TOKIO_COPY: &str = "tokio-postgres copy";
/// psql's `\copy` from or to a file (the COPY workloads' reference).
pub const PSQL: &str = "psql";

/// The settings of one run.
#[derive(Debug, Clone)]
pub struct BulkArgs {
    pub workload: Workload,
    pub driver: &'static str,
    /// Rows per result (reads) or rows inserted.
    pub rows: usize,
    /// Results read (reads).
    pub queries: usize,
    /// Rows per `execute_many` batch (0: all in one).
    pub chunk: usize,
    /// Commands in flight: tokio-postgres pipelined executes, the notify-burst sender.
    pub depth: usize,
    /// Notifications sent.
    pub n: usize,
    /// Sends per second (notify-paced).
    pub rate: f64,
    /// Bound on the measured part (reads stop issuing queries past it; notify stops sending).
    pub seconds: f64,
    pub options: PgOptions,
    /// `--url` as given (for psql; without it psql reads the libpq environment too).
    pub url: Option<String>,
}

/// The usage line.
pub const USAGE: &str = "\
usage: pgbulk --workload reads|insert|notify-burst|notify-paced|copy-in-binary|copy-in-text|
                          copy-out-binary|copy-out-text --driver DRIVER
              [--rows N] [--queries Q] [--chunk N] [--depth D] [--n N] [--rate R]
              [--seconds S] [--url postgres://...]
       pgbulk --compare [--rounds 3] [--workloads reads,insert,...] [--out FILE] [run flags]
Drivers: reads: ioxide-pg | 'ioxide-pg owned' | tokio-postgres | sqlx; insert: ioxide-pg |
'ioxide-pg chunks' | tokio-postgres | 'tokio-postgres copy'; notify-*: ioxide-pg | tokio-postgres;
copy-*-binary: ioxide-pg | tokio-postgres | psql; copy-*-text: ioxide-pg | tokio-postgres | sqlx | psql.
Without --url the libpq environment is used. One JSON line per run.";

impl BulkArgs {
    /// Parses the run flags (without the program name).
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<BulkArgs, String> {
        let (mut workload, mut driver, mut url) = (None, None, None);
        let (mut rows, mut queries, mut chunk, mut depth, mut n, mut rate, mut seconds) =
            (None, 200, 0, None, None, 2000.0, None);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            fn num<T: std::str::FromStr>(v: String) -> Result<T, String> {
                v.parse().map_err(|_| format!("not a valid number: {v}"))
            }
            match flag.as_str() {
                "--workload" => {
                    let v = value()?;
                    workload = Some(
                        Workload::parse(&v)
                            .ok_or_else(|| format!("unknown workload {v}\n{USAGE}"))?,
                    );
                }
                "--driver" => driver = Some(value()?),
                "--rows" => rows = Some(num(value()?)?),
                "--queries" => queries = num(value()?)?,
                "--chunk" => chunk = num(value()?)?,
                "--depth" => depth = Some(num(value()?)?),
                "--n" => n = Some(num(value()?)?),
                "--rate" => rate = num(value()?)?,
                "--seconds" => seconds = Some(num(value()?)?),
                "--url" => url = Some(value()?),
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        let workload = workload.ok_or_else(|| format!("--workload is required\n{USAGE}"))?;
        let driver = driver.ok_or_else(|| format!("--driver is required\n{USAGE}"))?;
        let driver = workload
            .drivers()
            .iter()
            .copied()
            .find(|d| *d == driver)
            .ok_or_else(|| {
                format!(
                    "{} compares {:?}, not {driver}",
                    workload.name(),
                    workload.drivers()
                )
            })?;
        let notify = matches!(workload, Workload::NotifyBurst | Workload::NotifyPaced);
        let a = BulkArgs {
            workload,
            driver,
            rows: rows.unwrap_or(match workload {
                Workload::Insert => 100_000,
                w if w.copy().is_some() => 1_000_000,
                _ => 10_000,
            }),
            queries,
            chunk,
            depth: depth.unwrap_or(if notify { 64 } else { 1024 }),
            n: n.unwrap_or(if workload == Workload::NotifyPaced {
                4_000
            } else {
                100_000
            }),
            rate,
            seconds: seconds.unwrap_or(30.0),
            options: match &url {
                Some(u) => PgOptions::from_url(u),
                None => PgOptions::from_env(),
            }
            .map_err(|e| format!("connection options: {e}"))?
            .ssl_mode(::ioxide_pg::SslMode::Disable),
            url,
        };
        if a.rows == 0 || a.queries == 0 || a.depth == 0 || a.n == 0 {
            return Err("--rows, --queries, --depth and --n must be >= 1".into());
        }
        if !(a.rate > 0.0 && a.seconds > 0.0) {
            return Err("--rate and --seconds must be > 0".into());
        }
        Ok(a)
    }
}

impl BulkArgs {
    /// Rows per `execute_many` batch: `--chunk`, else all of them (`ioxide-pg`) or
    /// [`DEFAULT_CHUNK`] (`ioxide-pg chunks`).
    pub fn batch_rows(&self) -> usize {
        match (self.chunk, self.driver) {
            (0, IOXIDE_CHUNKS) => DEFAULT_CHUNK.min(self.rows),
            (0, _) => self.rows,
            (c, _) => c,
        }
    }
}

/// Runs one measurement and returns its JSON line.
pub fn run(a: &BulkArgs) -> Result<Value, String> {
    epoch();
    server::init(&a.options);
    match a.workload {
        Workload::Reads => fill(a, READ_TABLE)?,
        Workload::Insert | Workload::CopyInBinary | Workload::CopyInText => setup_insert(a)?,
        Workload::CopyOutBinary | Workload::CopyOutText => fill(a, COPY_OUT_TABLE)?,
        Workload::NotifyBurst | Workload::NotifyPaced => {}
    }
    let m = match a.driver {
        IOXIDE | IOXIDE_OWNED | IOXIDE_CHUNKS => ioxide_pg::run(a)?,
        PSQL => psql::run(a)?,
        _ => peer::run(a)?,
    };
    match a.workload {
        Workload::Insert => check_insert(a, m.items)?,
        Workload::CopyInBinary | Workload::CopyInText => check_copied(a, m.items)?,
        _ => {}
    }
    Ok(m.report(a))
}

// ---------------------------------------------------------------------------------------
// The rows

/// A `timestamptz` as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC. Both
/// drivers decode and encode it through this one `FromSql`/`ToSql` (postgres-types, which
/// both use), so the comparison carries no date library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ts(pub i64);

impl<'a> FromSql<'a> for Ts {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Ts, Box<dyn Error + Sync + Send>> {
        Ok(Ts(postgres_protocol::types::timestamp_from_sql(raw)?))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

impl ToSql for Ts {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        postgres_protocol::types::timestamp_to_sql(self.0, out);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// One generated row: id, name, score, at, flag.
pub type BulkRow = (i64, String, f64, Ts, bool);

/// Row `i` (1-based) of the generated data; the `reads` table holds the same values (made
/// by SQL in [`fill`]).
pub fn row(i: i64) -> BulkRow {
    (
        i,
        format!("name-{i:08}"),
        i as f64 * 0.5,
        Ts(i * 1_000_000),
        i % 3 == 0,
    )
}

/// Rows 1..=n.
#[inline(never)] // out of line: callgrind figures subtract it
pub fn rows(n: usize) -> Vec<BulkRow> {
    (1..=n as i64).map(row).collect()
}

/// Order-independent sums of what was read, compared with the generated rows'.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sums {
    pub rows: u64,
    pub ids: i64,
    pub name_bytes: u64,
    pub score: f64,
    pub at: i64,
    pub flags: u64,
}

impl Sums {
    /// Adds one row.
    #[inline]
    pub fn add(&mut self, id: i64, name: &str, score: f64, at: Ts, flag: bool) {
        self.rows += 1;
        self.ids = self.ids.wrapping_add(id);
        self.name_bytes += name.len() as u64;
        self.score += score;
        self.at = self.at.wrapping_add(at.0);
        self.flags += u64::from(flag);
    }

    /// The sums of rows 1..=n.
    #[inline(never)] // out of line: callgrind figures subtract it
    pub fn expected(n: usize) -> Sums {
        let mut s = Sums::default();
        for i in 1..=n as i64 {
            let (id, name, score, at, flag) = row(i);
            s.add(id, &name, score, at, flag);
        }
        s
    }

    /// An error naming the difference unless `self` is `want`.
    pub fn check(&self, want: &Sums) -> Result<(), String> {
        if self == want {
            Ok(())
        } else {
            Err(format!("wrong answer: read {self:?}, expected {want:?}"))
        }
    }
}

/// The `reads` table and query.
pub const READ_TABLE: &str = "pgbulk_read";
/// The query of `reads`.
pub const READ_SQL: &str = "SELECT id, name, score, at, flag FROM pgbulk_read";
/// The `insert` table.
pub const INSERT_TABLE: &str = "pgbulk_insert";
/// The statement of `insert`.
pub const INSERT_SQL: &str =
    "INSERT INTO pgbulk_insert (id, name, score, at, flag) VALUES ($1, $2, $3, $4, $5)";
/// tokio-postgres's COPY of `insert`.
pub const COPY_SQL: &str =
    "COPY pgbulk_insert (id, name, score, at, flag) FROM STDIN (FORMAT binary)";
/// The channel of the notify workloads.
pub const CHANNEL: &str = "pgbulk";
/// The sender's statement.
pub const NOTIFY_SQL: &str = "SELECT pg_notify('pgbulk', $1)";

const COLUMNS: &str =
    "(id int8, name text, score float8, at timestamptz, flag bool) WITH (autovacuum_enabled = off)";

/// Runs `sql` statements one by one (simple protocol) on a short tokio-postgres connection,
/// untimed; returns the first column of the last statement's first row.
pub fn admin(o: &PgOptions, sql: &[&str]) -> Result<Option<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    rt.block_on(async {
        let cfg = crate::pgload::peers::tp_config_tls(o, false);
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("setup connection: {e}"))?;
        let driver = tokio::spawn(conn);
        let mut last = None;
        for s in sql {
            let msgs = client
                .simple_query(s)
                .await
                .map_err(|e| format!("setup `{s}`: {e}"))?;
            last = msgs.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
        }
        drop(client);
        let _ = driver.await;
        Ok(last)
    })
}

/// Makes `table` (`pgbulk_read`, `pgbulk_copy`) hold exactly rows 1..=rows (kept between
/// runs when it already does).
fn fill(a: &BulkArgs, table: &str) -> Result<(), String> {
    let create = format!("CREATE TABLE IF NOT EXISTS {table} {COLUMNS}");
    let check = format!("SELECT count(*)::text || ' ' || coalesce(sum(id), 0)::text FROM {table}");
    let n = a.rows as i64;
    let want = format!("{n} {}", n * (n + 1) / 2);
    if admin(&a.options, &[&create, &check])?.as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    let fill = format!(
        "INSERT INTO {table} SELECT i, 'name-' || lpad(i::text, 8, '0'), i * 0.5, \
         timestamptz '2000-01-01 00:00:00+00' + i * interval '1 second', i % 3 = 0 \
         FROM generate_series(1, {n}) i"
    );
    admin(
        &a.options,
        &[
            &format!("TRUNCATE {table}"),
            &fill,
            &format!("VACUUM ANALYZE {table}"),
        ],
    )?;
    Ok(())
}

/// Makes `pgbulk_insert` exist and be empty.
fn setup_insert(a: &BulkArgs) -> Result<(), String> {
    admin(
        &a.options,
        &[
            &format!("CREATE TABLE IF NOT EXISTS {INSERT_TABLE} {COLUMNS}"),
            &format!("TRUNCATE {INSERT_TABLE}"),
            "CHECKPOINT",
        ],
    )?;
    Ok(())
}

/// After an insert run: the table holds rows 1..=rows, and the driver said so.
fn check_insert(a: &BulkArgs, reported: u64) -> Result<(), String> {
    let n = a.rows as i64;
    let want = format!("{n} {}", n * (n + 1) / 2);
    let got = admin(
        &a.options,
        &[&format!(
            "SELECT count(*)::text || ' ' || coalesce(sum(id), 0)::text FROM {INSERT_TABLE}"
        )],
    )?;
    if got.as_deref() != Some(want.as_str()) || reported != a.rows as u64 {
        return Err(format!(
            "wrong answer: the table holds (count, sum) {got:?}, expected {want}; the driver \
             reported {reported} rows"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// COPY

/// The table the copy-out workloads read (filled by SQL, kept between runs).
pub const COPY_OUT_TABLE: &str = "pgbulk_copy";
/// The column types of every COPY, in the COPY's column order.
pub const COPY_TYPES: [Type; 5] = [
    Type::INT8,
    Type::TEXT,
    Type::FLOAT8,
    Type::TIMESTAMPTZ,
    Type::BOOL,
];
/// The pieces text COPY data is sent in (every driver; psql reads its file itself).
pub const TEXT_CHUNK: usize = 64 * 1024;
/// Run (untimed) at the start of every COPY session: the server's text output is then
/// exactly [`text_row`]'s (timestamps in UTC, ISO, shortest exact floats).
pub const SESSION_SQL: &str =
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1";

/// The COPY statement of a COPY workload (`None` for the others).
pub fn copy_sql(w: Workload) -> Option<String> {
    let (from, binary) = w.copy()?;
    let (table, dir) = if from {
        (INSERT_TABLE, "FROM STDIN")
    } else {
        (COPY_OUT_TABLE, "TO STDOUT")
    };
    let fmt = if binary { " (FORMAT binary)" } else { "" };
    Some(format!(
        "COPY {table} (id, name, score, at, flag) {dir}{fmt}"
    ))
}

/// Appends row `i` in COPY text format, as the server prints it under [`SESSION_SQL`]:
/// `id \t name \t score \t 2000-01-01 hh:mm:ss+00 \t t|f \n`.
pub fn text_row(i: i64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let (id, name, score, at, flag) = row(i);
    let secs = at.0.div_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400) + 10_957);
    let t = secs.rem_euclid(86_400);
    // Writing to a Vec cannot fail.
    let _ = writeln!(
        out,
        "{id}\t{name}\t{score}\t{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}+00\t{}",
        t / 3600,
        t / 60 % 60,
        t % 60,
        if flag { 't' } else { 'f' }
    );
}

/// The date of `days` since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Rows 1..=n as COPY text.
#[inline(never)] // out of line: callgrind figures subtract it
pub fn text_data(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 48);
    for i in 1..=n as i64 {
        text_row(i, &mut out);
    }
    out
}

/// Rows 1..=n as binary COPY data (header, rows, trailer): what psql sends from its file
/// and what a binary COPY TO STDOUT of the table yields.
#[inline(never)] // out of line: callgrind figures subtract it
pub fn binary_data(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 52 + 21);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&[0; 8]);
    for i in 1..=n as i64 {
        let (id, name, score, at, flag) = row(i);
        out.extend_from_slice(&5i16.to_be_bytes());
        for field in [
            &id.to_be_bytes()[..],
            name.as_bytes(),
            &score.to_be_bytes(),
            &at.0.to_be_bytes(),
            &[u8::from(flag)],
        ] {
            out.extend_from_slice(&(field.len() as i32).to_be_bytes());
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// What raw COPY data held: newlines (text rows), bytes and their sum (order-independent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TextSums {
    pub newlines: u64,
    pub bytes: u64,
    pub sum: u64,
}

impl TextSums {
    /// Adds one chunk: two vectorisable passes over each 4 KiB of it (u32 sums cannot
    /// overflow there), the same for every driver.
    #[inline]
    pub fn add(&mut self, chunk: &[u8]) {
        for block in chunk.chunks(4096) {
            let nl: u32 = block.iter().map(|&b| u32::from(b == b'\n')).sum();
            let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
            self.newlines += u64::from(nl);
            self.sum = self.sum.wrapping_add(u64::from(sum));
        }
        self.bytes += chunk.len() as u64;
    }

    /// The sums of `data`.
    #[inline(never)] // out of line: callgrind figures subtract it
    pub fn of(data: &[u8]) -> TextSums {
        let mut t = TextSums::default();
        t.add(data);
        t
    }

    /// An error naming the difference unless `self` is `want`.
    pub fn check(&self, want: &TextSums) -> Result<(), String> {
        if self == want {
            Ok(())
        } else {
            Err(format!("wrong answer: read {self:?}, expected {want:?}"))
        }
    }
}

/// An error unless a COPY TO STDOUT reported `reported` rows of the `want`ed.
pub fn check_rows(reported: Option<u64>, want: usize) -> Result<(), String> {
    if reported == Some(want as u64) {
        Ok(())
    } else {
        Err(format!(
            "wrong answer: the COPY reported {reported:?} rows, expected {want}"
        ))
    }
}

/// After a copy-in run: the table holds rows 1..=rows — its count and the sums of every
/// column ([`Sums`]) — and the driver said so.
pub fn check_copied(a: &BulkArgs, reported: u64) -> Result<(), String> {
    let got = admin(
        &a.options,
        &[&format!(
            "SELECT concat_ws(' ', count(*), coalesce(sum(id), 0), \
             coalesce(sum(octet_length(name)), 0), coalesce(sum(score), 0)::numeric, \
             coalesce(sum((extract(epoch FROM at - timestamptz '2000-01-01 00:00:00+00') \
             * 1000000)::int8), 0), count(*) FILTER (WHERE flag)) FROM {INSERT_TABLE}"
        )],
    )?
    .unwrap_or_default();
    let v: Vec<&str> = got.split(' ').collect();
    let parsed = (|| {
        Some(Sums {
            rows: v.first()?.parse().ok()?,
            ids: v.get(1)?.parse().ok()?,
            name_bytes: v.get(2)?.parse().ok()?,
            score: v.get(3)?.parse().ok()?,
            at: v.get(4)?.parse().ok()?,
            flags: v.get(5)?.parse().ok()?,
        })
    })()
    .ok_or_else(|| format!("unexpected check result {got:?}"))?;
    parsed
        .check(&Sums::expected(a.rows))
        .map_err(|e| format!("{e} (in {INSERT_TABLE} after the COPY)"))?;
    if reported != a.rows as u64 {
        return Err(format!(
            "wrong answer: the driver reported {reported} rows, expected {}",
            a.rows
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measuring

/// This process's monotonic clock origin: notification payloads carry ns since it.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// ns since [`epoch`].
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The calling thread's CPU time so far (`/proc/thread-self/schedstat`, ns), if readable.
pub fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The clocks at the start of a measured window.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    wall: Instant,
    cpu: Duration,
    server: Option<Duration>,
}

impl Start {
    /// Reads every clock now.
    pub fn now() -> Start {
        Start {
            server: server::cpu(),
            cpu: ioxide::process_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// Wall time so far.
    pub fn elapsed(&self) -> Duration {
        self.wall.elapsed()
    }

    /// Closes the window over `items` rows or notifications.
    pub fn stop(&self, items: u64) -> Measured {
        let wall = self.wall.elapsed();
        let cpu = ioxide::process_cpu_time().saturating_sub(self.cpu);
        let server = self
            .server
            .zip(server::cpu())
            .map(|(a, b)| b.saturating_sub(a));
        Measured {
            items,
            wall,
            cpu,
            server,
            ..Measured::default()
        }
    }
}

/// What a COPY driver does, for the JSON.
fn copy_how(w: Workload, driver: &str) -> String {
    let what = match (w, driver) {
        (_, PSQL) => "psql \\copy, a file",
        (Workload::CopyInBinary, _) => "copy_in + BinaryCopyInWriter::write per row",
        (Workload::CopyInText, SQLX) => "copy_in_raw + PgCopyIn::send, 64 KiB pieces",
        (Workload::CopyInText, TOKIO) => "copy_in + Sink::send of Bytes, 64 KiB pieces",
        (Workload::CopyInText, _) => "copy_in + CopyIn::send, 64 KiB pieces",
        (Workload::CopyOutBinary, _) => "copy_out + BinaryCopyOutStream, typed get per column",
        (Workload::CopyOutText, SQLX) => "copy_out_raw, raw chunks",
        _ => "copy_out, raw chunks",
    };
    what.to_string()
}

/// The raw figures of one run.
#[derive(Debug, Default)]
pub struct Measured {
    /// Rows read or inserted, notifications received.
    pub items: u64,
    pub wall: Duration,
    /// Process CPU over the window (notify: minus the sender thread's, see `sender_cpu`).
    pub cpu: Duration,
    pub server: Option<Duration>,
    /// Queries (reads) or batches (insert).
    pub commands: u64,
    /// Notify: what the sender sent, its thread's CPU, what the listener saw.
    pub notify: Option<NotifyStats>,
}

/// The listener's tally.
#[derive(Debug, Default)]
pub struct NotifyStats {
    pub sent: u64,
    pub sender_cpu: Option<Duration>,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub gaps: u64,
    pub latency: Histogram,
    seen: Vec<bool>,
    last_seq: Option<u64>,
}

impl NotifyStats {
    /// Ready for `n` notifications.
    pub fn new(n: usize) -> NotifyStats {
        NotifyStats {
            seen: vec![false; n],
            ..NotifyStats::default()
        }
    }

    /// Takes one payload ("seq sent_ns"); an alien payload is an error.
    pub fn record(&mut self, payload: &str) -> Result<(), String> {
        let now = now_ns();
        let (seq, sent) = payload
            .split_once(' ')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .ok_or_else(|| format!("a notification with an unexpected payload: {payload:?}"))?;
        let slot = usize::try_from(seq)
            .ok()
            .and_then(|i| self.seen.get_mut(i))
            .ok_or_else(|| format!("a notification with sequence {seq} out of range"))?;
        if *slot {
            self.duplicates += 1;
            return Ok(());
        }
        *slot = true;
        self.received += 1;
        if self.last_seq.is_some_and(|l| seq < l) {
            self.reordered += 1;
        }
        self.last_seq = Some(seq);
        self.latency
            .record(Duration::from_nanos(now.saturating_sub(sent)));
        Ok(())
    }

    /// Every notification expected has arrived.
    pub fn complete(&self) -> bool {
        self.received as usize >= self.seen.len()
    }
}

/// The payload of notification `seq`, stamped now.
pub fn payload(seq: u64) -> String {
    format!("{seq} {}", now_ns())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Measured {
    /// The JSON line.
    pub fn report(&self, a: &BulkArgs) -> Value {
        let unit = a.workload.unit();
        let per = |d: Duration| round(us(d) / self.items.max(1) as f64, 3);
        let rate = self.items as f64 / self.wall.as_secs_f64().max(1e-9);
        let mut v = json!({
            "tool": "pgbulk",
            "workload": a.workload.name(),
            "driver": a.driver,
            "items": self.items,
            "unit": unit,
            "seconds": round(self.wall.as_secs_f64(), 3),
            "per_sec": round(rate, 0),
            "client_cpu_us_per_item": per(self.cpu),
        });
        let m = v.as_object_mut().expect("an object");
        if let Some(s) = self.server {
            m.insert("server_cpu_us_per_item".into(), json!(per(s)));
            let s_per = us(s) / self.items.max(1) as f64;
            if s_per > 0.0 {
                // Two cores shared by client and server: no client passes this.
                m.insert("server_bound_per_sec".into(), json!(round(2e6 / s_per, 0)));
            }
        }
        match a.workload {
            Workload::Reads => {
                m.insert("rows_per_result".into(), json!(a.rows));
                m.insert("queries".into(), json!(self.commands));
            }
            Workload::Insert => {
                m.insert("rows".into(), json!(a.rows));
                m.insert("batches".into(), json!(self.commands));
                let how = match a.driver {
                    IOXIDE | IOXIDE_CHUNKS => {
                        format!("execute_many, {} rows per batch", a.batch_rows())
                    }
                    TOKIO => format!("execute per row, {} in flight", a.depth),
                    _ => "copy_in, BinaryCopyInWriter".into(),
                };
                m.insert("how".into(), json!(how));
            }
            w if w.copy().is_some() => {
                m.insert("rows".into(), json!(a.rows));
                m.insert("how".into(), json!(copy_how(w, a.driver)));
            }
            _ => {
                if let Some(n) = &self.notify {
                    m.insert("sent".into(), json!(n.sent));
                    m.insert("received".into(), json!(n.received));
                    m.insert("lost".into(), json!(n.sent.saturating_sub(n.received)));
                    m.insert("duplicates".into(), json!(n.duplicates));
                    m.insert("reordered".into(), json!(n.reordered));
                    m.insert("gaps".into(), json!(n.gaps));
                    m.insert(
                        "p50_us".into(),
                        json!(round(us(n.latency.quantile(0.5)), 1)),
                    );
                    m.insert(
                        "p99_us".into(),
                        json!(round(us(n.latency.quantile(0.99)), 1)),
                    );
                    m.insert(
                        "max_us".into(),
                        json!(round(us(n.latency.quantile(1.0)), 1)),
                    );
                    if let Some(c) = n.sender_cpu {
                        m.insert("sender_cpu_us_per_item".into(), json!(per(c)));
                    }
                    if a.workload == Workload::NotifyPaced {
                        m.insert("rate".into(), json!(a.rate));
                    } else {
                        m.insert("depth".into(), json!(a.depth));
                    }
                }
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------------
// The sender of the notify workloads (the same for both listeners)

/// What the sender reports: notifications sent, its thread's CPU while sending.
pub type Sent = (u64, Option<Duration>);

/// Starts the sender on its own thread with a tokio-postgres connection; it sends once `go`
/// fires and returns (sent, its thread's CPU while sending).
pub fn spawn_sender(
    a: &BulkArgs,
    go: std::sync::mpsc::Receiver<()>,
) -> Result<std::thread::JoinHandle<Result<Sent, String>>, String> {
    let a = a.clone();
    std::thread::Builder::new()
        .name("sender".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("building the tokio runtime: {e}"))?;
            rt.block_on(peer::send(&a, go))
        })
        .map_err(|e| format!("spawning the sender: {e}"))
}

/// How long the listener waits for stragglers once the send bound has passed.
pub const GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BulkArgs, String> {
        BulkArgs::parse(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn parses_and_defaults_by_workload() {
        let a = parse("--workload insert --driver tokio-postgres --url postgres://u@127.0.0.1/d")
            .expect("valid");
        assert_eq!((a.rows, a.depth, a.chunk), (100_000, 1024, 0));
        assert_eq!(a.batch_rows(), 100_000);
        let mut c = a.clone();
        c.driver = IOXIDE_CHUNKS;
        assert_eq!(c.batch_rows(), DEFAULT_CHUNK);
        c.chunk = 250;
        assert_eq!(c.batch_rows(), 250);
        let a = parse("--workload reads --driver ioxide-pg --url postgres://u@127.0.0.1/d")
            .expect("valid");
        assert_eq!((a.rows, a.queries), (10_000, 200));
        assert!(parse("--workload insert --driver sqlx --url postgres://u@127.0.0.1/d").is_err());
        assert!(
            parse("--workload copy --driver ioxide-pg --url postgres://u@127.0.0.1/d").is_err()
        );
        assert!(parse(
            "--workload notify-burst --driver ioxide-pg --n 0 --url postgres://u@127.0.0.1/d"
        )
        .is_err());
        let a = parse("--workload copy-in-text --driver sqlx --url postgres://u@127.0.0.1/d")
            .expect("valid");
        assert_eq!(
            (a.rows, a.url.as_deref()),
            (1_000_000, Some("postgres://u@127.0.0.1/d"))
        );
        assert_eq!(a.workload.copy(), Some((true, false)));
        assert!(parse("--workload copy-out-binary --driver sqlx").is_err());
        assert!(parse("--workload copy-out-binary --driver psql --rows 5").is_ok());
    }

    #[test]
    fn text_sums_and_row_counts_catch_differences() {
        let data = text_data(10);
        let want = TextSums::of(&data);
        assert_eq!((want.newlines, want.bytes), (10, data.len() as u64));
        let mut got = TextSums::default();
        for piece in data.chunks(7) {
            got.add(piece);
        }
        assert!(got.check(&want).is_ok());
        let mut other = data.clone();
        other[0] = b'2';
        assert!(TextSums::of(&other).check(&want).is_err());
        assert!(check_rows(Some(10), 10).is_ok());
        assert!(check_rows(Some(9), 10).is_err());
        assert!(check_rows(None, 10).is_err());
    }

    #[test]
    fn sums_check_values_and_the_timestamp_round_trips() {
        let want = Sums::expected(3);
        assert_eq!((want.rows, want.ids, want.flags), (3, 6, 1));
        assert_eq!(want.name_bytes, 3 * 13);
        let mut got = Sums::default();
        for i in [3, 1, 2] {
            let (id, name, score, at, flag) = row(i);
            got.add(id, &name, score, at, flag);
        }
        assert!(got.check(&want).is_ok());
        got.add(4, "x", 0.0, Ts(0), false);
        assert!(got.check(&want).is_err());

        let mut buf = BytesMut::new();
        Ts(1_234_567)
            .to_sql(&Type::TIMESTAMPTZ, &mut buf)
            .expect("encodes");
        assert_eq!(
            Ts::from_sql(&Type::TIMESTAMPTZ, &buf).expect("decodes"),
            Ts(1_234_567)
        );
        assert!(<Ts as FromSql>::accepts(&Type::TIMESTAMPTZ));
        assert!(!<Ts as FromSql>::accepts(&Type::TIMESTAMP));
    }

    #[test]
    fn notify_stats_count_losses_duplicates_and_order() {
        let mut s = NotifyStats::new(3);
        s.record(&payload(0)).expect("ok");
        s.record(&payload(2)).expect("ok");
        s.record(&payload(1)).expect("ok");
        s.record(&payload(1)).expect("ok");
        assert_eq!((s.received, s.duplicates, s.reordered), (3, 1, 1));
        assert!(s.complete());
        assert!(s.record("7 1").is_err());
        assert!(s.record("junk").is_err());
        assert_eq!(s.latency.count(), 3);
    }
}
