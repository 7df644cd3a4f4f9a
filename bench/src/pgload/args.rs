//! Command-line settings of one `pgload` run.

use ioxide_pg::{PgOptions, RootCert, SslMode};
use std::path::PathBuf;

/// The client under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Our `PgPool` on `--reactors` reactor threads.
    IoxidePg,
    /// tokio-postgres: `--conns` clients, statements prepared once per client, the
    /// concurrent queries spread round-robin over the clients (pipelined on each).
    TokioPostgres,
    /// deadpool-postgres: a pool of `--conns`, one query per rented client, `prepare_cached`.
    Deadpool,
    /// sqlx `PgPool` of `--conns` (its own statement cache).
    Sqlx,
}

impl Driver {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoxidePg => "ioxide-pg",
            Driver::TokioPostgres => "tokio-postgres",
            Driver::Deadpool => "deadpool",
            Driver::Sqlx => "sqlx",
        }
    }

    fn parse(s: &str) -> Result<Driver, String> {
        Ok(match s {
            "ioxide-pg" => Driver::IoxidePg,
            "tokio-postgres" => Driver::TokioPostgres,
            "deadpool" => Driver::Deadpool,
            "sqlx" => Driver::Sqlx,
            _ => {
                return Err(format!(
                    "unknown driver {s} (ioxide-pg|tokio-postgres|deadpool|sqlx)"
                ))
            }
        })
    }
}

/// The statement every task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `SELECT 42`.
    Select42,
    /// `SELECT 42` as a prepared statement for every driver (ioxide-pg: `query_params` with
    /// no parameters instead of the simple protocol), to separate protocol cost from driver
    /// cost.
    Select42Prepared,
    /// `SELECT $1::int8 + 1`.
    Param,
    /// 100 rows of `generate_series`, read fully.
    Rows100,
}

impl Query {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Query::Select42 => "select42",
            Query::Select42Prepared => "select42-prepared",
            Query::Param => "param",
            Query::Rows100 => "rows100",
        }
    }

    /// The SQL text.
    pub fn sql(self) -> &'static str {
        match self {
            Query::Select42 | Query::Select42Prepared => super::SQL_SELECT42,
            Query::Param => super::SQL_PARAM,
            Query::Rows100 => super::SQL_ROWS100,
        }
    }

    fn parse(s: &str) -> Result<Query, String> {
        Ok(match s {
            "select42" => Query::Select42,
            "select42-prepared" => Query::Select42Prepared,
            "param" => Query::Param,
            "rows100" => Query::Rows100,
            _ => {
                return Err(format!(
                    "unknown query {s} (select42|select42-prepared|param|rows100)"
                ))
            }
        })
    }
}

/// The tokio scheduler the peers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `new_current_thread()`: everything on one thread.
    CurrentThread,
    /// `new_multi_thread().worker_threads(1)`.
    MultiThread1,
}

impl Flavor {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread1 => "multi_thread_1",
        }
    }
}

/// Every setting of one run.
#[derive(Debug, Clone)]
pub struct Args {
    pub driver: Driver,
    /// Total server connections.
    pub conns: usize,
    /// Queries in flight (closed-loop tasks).
    pub concurrency: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Warm-up seconds before the window.
    pub warmup: f64,
    pub query: Query,
    /// ioxide-pg: reactor threads; the connections are split evenly over them.
    pub reactors: usize,
    /// ioxide-pg: commands in flight per connection.
    pub pipeline_depth: usize,
    /// ioxide-pg: no pool — each reactor opens its `conns / reactors` `PgConnection`s and its
    /// tasks share them round-robin, pipelining without a depth limit (how the tokio-postgres
    /// variant uses its clients; the like-for-like comparison for one connection).
    pub no_pool: bool,
    /// Peers: the tokio scheduler.
    pub flavor: Flavor,
    /// sqlx: ping every connection on acquire (sqlx's default; off = its best).
    pub sqlx_test_before_acquire: bool,
    /// Peers in their PgBouncer-safe (transaction pooling) configuration: tokio-postgres and
    /// deadpool run `query_typed` (the unnamed statement, parameter types given, no
    /// `prepare`/`prepare_cached`), sqlx `statement_cache_capacity(0)`, `persistent(false)`
    /// queries and `extra_float_digits(None)`. ioxide-pg is
    /// unchanged (it detects the pooler itself; see `--statement-cache-capacity`).
    pub pgbouncer: bool,
    /// ioxide-pg: `PgOptions::statement_cache_capacity` (0 = unnamed statements only); the
    /// driver's default when absent.
    pub statement_cache_capacity: Option<usize>,
    /// Run exactly this many queries (no warm-up, no timed window), for instruction counts.
    pub fixed_queries: Option<u64>,
    /// Every driver over TLS (rustls on `ring`, `verify-full` against [`Args::tls_root_cert`]);
    /// without it every driver is forced to plaintext. See [`super::tls`].
    pub tls: bool,
    /// With `--tls`: the CA file (`--sslrootcert`, else `PGSSLROOTCERT`).
    pub tls_root_cert: Option<PathBuf>,
    /// `--unix DIR`: every driver connects to the Unix socket `DIR/.s.PGSQL.<port>` instead
    /// of the host of `--url`/the environment (same port, user, database).
    pub unix: Option<PathBuf>,
    /// ioxide-pg's options; the `sslmode` set from `--tls` (the peers are configured from
    /// these plus `tls` / `tls_root_cert`).
    pub options: PgOptions,
}

/// The usage line.
pub const USAGE: &str = "\
usage: pgload --driver ioxide-pg|tokio-postgres|deadpool|sqlx [--conns N] [--concurrency C]
              [--seconds S] [--warmup W] [--query select42|select42-prepared|param|rows100]
              [--reactors R] [--pipeline-depth D] [--no-pool]          (ioxide-pg)
              [--statement-cache-capacity N]                           (ioxide-pg)
              [--runtime current_thread|multi_thread_1] [--pgbouncer]  (peers)
              [--sqlx-test-before-acquire]                             (sqlx)
              [--fixed-queries N] [--url postgres://...] [--tls [--sslrootcert CA.pem]]
              [--unix DIR]
Without --url the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) or
DATABASE_URL is used. --pgbouncer: the peers' transaction-pooling-safe configuration
(tokio-postgres/deadpool query_typed; sqlx statement_cache_capacity(0), persistent(false),
no extra_float_digits).
--tls: every driver over TLS (rustls, ring), verify-full against the CA in --sslrootcert or
PGSSLROOTCERT; without it every driver is forced to plaintext.
--unix DIR: every driver over the Unix socket DIR/.s.PGSQL.<port> (the port, user and database
from --url or the environment). Prints one JSON line.";

impl Args {
    /// Parses the command line (without the program name).
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut driver = None;
        let mut a = Args {
            driver: Driver::IoxidePg,
            conns: 2,
            concurrency: 64,
            seconds: 5.0,
            warmup: 1.0,
            query: Query::Select42,
            reactors: 1,
            // The driver's default (8), as a user who does not set it gets.
            pipeline_depth: ioxide_pg::PgOptions::new().get_pipeline_depth(),
            no_pool: false,
            flavor: Flavor::CurrentThread,
            sqlx_test_before_acquire: false,
            pgbouncer: false,
            statement_cache_capacity: None,
            fixed_queries: None,
            tls: false,
            tls_root_cert: None,
            unix: None,
            options: PgOptions::new(),
        };
        let mut url = None;
        let mut root_cert = None;
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--driver" => driver = Some(Driver::parse(&value()?)?),
                "--conns" => a.conns = num(&flag, &value()?)?,
                "--concurrency" => a.concurrency = num(&flag, &value()?)?,
                "--seconds" => a.seconds = num(&flag, &value()?)?,
                "--warmup" => a.warmup = num(&flag, &value()?)?,
                "--query" => a.query = Query::parse(&value()?)?,
                "--reactors" => a.reactors = num(&flag, &value()?)?,
                "--pipeline-depth" => a.pipeline_depth = num(&flag, &value()?)?,
                "--no-pool" => a.no_pool = true,
                "--runtime" => {
                    a.flavor = match value()?.as_str() {
                        "current_thread" => Flavor::CurrentThread,
                        "multi_thread_1" => Flavor::MultiThread1,
                        other => return Err(format!("unknown runtime {other}")),
                    }
                }
                "--sqlx-test-before-acquire" => a.sqlx_test_before_acquire = true,
                "--pgbouncer" => a.pgbouncer = true,
                "--statement-cache-capacity" => {
                    a.statement_cache_capacity = Some(num(&flag, &value()?)?)
                }
                "--fixed-queries" => a.fixed_queries = Some(num(&flag, &value()?)?),
                "--url" => url = Some(value()?),
                "--tls" => a.tls = true,
                "--sslrootcert" => root_cert = Some(PathBuf::from(value()?)),
                "--unix" => a.unix = Some(PathBuf::from(value()?)),
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        a.driver = driver.ok_or_else(|| format!("--driver is required\n{USAGE}"))?;
        a.options = match url {
            Some(u) => PgOptions::from_url(&u),
            None => PgOptions::from_env(),
        }
        .map_err(|e| format!("connection options: {e}"))?;
        if let Some(dir) = &a.unix {
            if !dir.is_absolute() {
                return Err(format!(
                    "--unix {}: needs an absolute directory",
                    dir.display()
                ));
            }
            if a.tls {
                return Err("--unix and --tls: Unix sockets never use TLS".into());
            }
            a.options = a.options.host(dir.to_string_lossy());
        }
        a.options = if a.tls {
            let ca = super::tls::root_cert(root_cert)?;
            a.tls_root_cert = Some(ca.clone());
            a.options
                .ssl_mode(SslMode::VerifyFull)
                .ssl_root_cert(RootCert::File(ca))
        } else {
            a.options.ssl_mode(SslMode::Disable)
        };
        if a.conns == 0 || a.concurrency == 0 || a.reactors == 0 || a.pipeline_depth == 0 {
            return Err("--conns, --concurrency, --reactors, --pipeline-depth must be >= 1".into());
        }
        if a.driver == Driver::IoxidePg && a.conns % a.reactors != 0 {
            return Err(format!(
                "--conns {} must be a multiple of --reactors {} (pool_size = conns / reactors)",
                a.conns, a.reactors
            ));
        }
        if a.no_pool && a.driver != Driver::IoxidePg {
            return Err("--no-pool is for --driver ioxide-pg".into());
        }
        if a.statement_cache_capacity.is_some() && a.driver != Driver::IoxidePg {
            return Err("--statement-cache-capacity is for --driver ioxide-pg".into());
        }
        if !(a.seconds > 0.0 && a.warmup >= 0.0) {
            return Err("--seconds must be > 0 and --warmup >= 0".into());
        }
        Ok(a)
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: not a valid number: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn parses_a_full_command_line() {
        let a = parse(
            "--driver ioxide-pg --conns 8 --concurrency 256 --seconds 2 --query param \
             --reactors 2 --pipeline-depth 16 --url postgres://u@127.0.0.1:5433/db",
        )
        .expect("valid");
        assert_eq!(
            (a.driver, a.conns, a.concurrency, a.reactors),
            (Driver::IoxidePg, 8, 256, 2)
        );
        assert_eq!(
            (a.query, a.pipeline_depth, a.seconds),
            (Query::Param, 16, 2.0)
        );
        assert_eq!(a.options.get_port(), 5433);
        assert_eq!(a.fixed_queries, None);
        assert!(!a.no_pool);
        assert!(!a.tls);
        assert_eq!(
            a.options.get_ssl_mode(),
            SslMode::Disable,
            "plaintext unless --tls"
        );
        let a =
            parse("--driver sqlx --tls --sslrootcert /tmp/ca.pem --url postgres://u@127.0.0.1/db")
                .expect("valid");
        assert!(a.tls);
        assert_eq!(a.tls_root_cert, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(a.options.get_ssl_mode(), SslMode::VerifyFull);
        let a = parse("--driver ioxide-pg --conns 1 --no-pool --url postgres://u@127.0.0.1/db")
            .expect("valid");
        assert!(a.no_pool);
        assert_eq!(a.statement_cache_capacity, None);
        assert!(!a.pgbouncer);
        let a = parse(
            "--driver ioxide-pg --statement-cache-capacity 0 --url postgres://u@127.0.0.1/db",
        )
        .expect("valid");
        assert_eq!(a.statement_cache_capacity, Some(0));
        let a =
            parse("--driver deadpool --pgbouncer --query param --url postgres://u@127.0.0.1/db")
                .expect("valid");
        assert!(a.pgbouncer);
        let a =
            parse("--driver tokio-postgres --unix /tmp/pg --url postgres://u@127.0.0.1:5433/db")
                .expect("valid");
        assert_eq!(
            a.options.get_host(),
            &ioxide_pg::Host::Unix("/tmp/pg".into())
        );
        assert_eq!(a.options.get_port(), 5433, "the port names the socket file");
    }

    #[test]
    fn rejects_bad_settings() {
        let url = "--url postgres://u@127.0.0.1/db";
        assert!(
            parse(&format!("--conns 2 {url}")).is_err(),
            "driver is required"
        );
        assert!(parse(&format!("--driver mysql {url}")).is_err());
        assert!(parse(&format!("--driver ioxide-pg --conns 3 --reactors 2 {url}")).is_err());
        assert!(parse(&format!("--driver sqlx --concurrency 0 {url}")).is_err());
        assert!(parse(&format!("--driver sqlx --query select43 {url}")).is_err());
        assert!(parse(&format!("--driver tokio-postgres --no-pool {url}")).is_err());
        assert!(parse(&format!("--driver sqlx --statement-cache-capacity 0 {url}")).is_err());
        assert!(parse(&format!("--driver sqlx --unix tmp/pg {url}")).is_err());
        assert!(parse(&format!("--driver sqlx --unix /tmp/pg --tls {url}")).is_err());
    }
}
