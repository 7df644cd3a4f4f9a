//! The playground's knobs: every one a literal here, with its unit and effect, overridable
//! from the environment. A bad value is an error naming the variable (the binary exits 2).
//!
//! The database itself comes from the libpq variables (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, …) or `DATABASE_URL`, read by `PgOptions::from_env` in
//! `database.rs`; with neither `PGHOST` nor `DATABASE_URL` set, a throwaway cluster is started.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// `HOST`: the address the HTTP listeners bind. 0.0.0.0 = every IPv4 interface.
const HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// `PORT`: the TCP port of the HTTP server. 0 = any free port (the startup line says which).
const PORT: u16 = 8080;
/// `REACTORS`: reactor threads, each with its own ring, listener and pool. 0 here means
/// "one per CPU core" (the default); the variable itself must be at least 1.
const REACTORS: usize = 0;
/// `PG_POOL_SIZE`: PostgreSQL connections per reactor; the server sees this × `REACTORS`.
const PG_POOL_SIZE: usize = 8;
/// `PG_COMMAND_TIMEOUT_MS`: milliseconds a query may run before it is cancelled and answered
/// with 503 (so `/hang` answers after 5 s). 0 = no limit.
const PG_COMMAND_TIMEOUT_MS: u64 = 5_000;
/// `PG_ACQUIRE_TIMEOUT_MS`: milliseconds a request may wait for a pooled connection; an
/// unreachable database is answered with 503 within about this long.
const PG_ACQUIRE_TIMEOUT_MS: u64 = 2_000;
/// `HTTP_IDLE_TIMEOUT_MS`: milliseconds a keep-alive connection may sit without sending a
/// (complete) request, or a response may wait for the client to read it, before it is closed.
const HTTP_IDLE_TIMEOUT_MS: u64 = 30_000;
/// `SHUTDOWN_GRACE_MS`: milliseconds in-flight requests get to finish after SIGINT/SIGTERM
/// before their connections are dropped.
const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// `PG_THROWAWAY_TCP`: 1 = the pools reach a self-started throwaway cluster over loopback TCP
/// instead of its Unix socket (which costs the server less per query; see `database.rs`).
const PG_THROWAWAY_TCP: bool = false;

/// Settings read once at startup; shared read-only by every reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port (0: any).
    pub port: u16,
    /// Reactor threads.
    pub reactors: usize,
    /// Connections per reactor.
    pub pool_size: usize,
    /// Commands in flight per connection; `None` keeps the driver's default.
    pub pipeline_depth: Option<usize>,
    /// Per-command limit; zero means none.
    pub command_timeout: Duration,
    /// How long a request may wait for a connection.
    pub acquire_timeout: Duration,
    /// Idle keep-alive / slow client limit.
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// A self-started throwaway cluster is reached over TCP, not its Unix socket.
    pub throwaway_tcp: bool,
}

/// A bad environment value: names the variable, echoes the value, says what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What it held (lossily decoded).
    pub value: String,
    /// What it should hold.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.var, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// From the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var_os(k).map(|v| v.to_str().map(str::to_owned).ok_or(v)))
    }

    /// From variables read through `lookup`: `None` when unset, `Some(Err(raw))` when the
    /// value is not UTF-8. Empty values count as unset.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<Result<String, std::ffi::OsString>>,
    ) -> Result<Config, ConfigError> {
        let env = Env(&lookup);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let reactors = env.number("REACTORS", 1, 1024, "a number of threads from 1 to 1024")?;
        Ok(Config {
            host: env
                .parse("HOST", "an IP address such as 0.0.0.0 or 127.0.0.1")?
                .unwrap_or(HOST),
            port: env
                .parse("PORT", "a TCP port from 0 to 65535")?
                .unwrap_or(PORT),
            reactors: reactors.unwrap_or(if REACTORS == 0 { cores } else { REACTORS }),
            pool_size: env
                .number(
                    "PG_POOL_SIZE",
                    1,
                    10_000,
                    "a number of connections from 1 to 10000",
                )?
                .unwrap_or(PG_POOL_SIZE),
            pipeline_depth: env.number(
                "PG_PIPELINE_DEPTH",
                1,
                1024,
                "a number of commands from 1 to 1024",
            )?,
            command_timeout: env.millis("PG_COMMAND_TIMEOUT_MS", 0, PG_COMMAND_TIMEOUT_MS)?,
            acquire_timeout: env.millis("PG_ACQUIRE_TIMEOUT_MS", 1, PG_ACQUIRE_TIMEOUT_MS)?,
            idle_timeout: env.millis("HTTP_IDLE_TIMEOUT_MS", 1, HTTP_IDLE_TIMEOUT_MS)?,
            shutdown_grace: env.millis("SHUTDOWN_GRACE_MS", 0, SHUTDOWN_GRACE_MS)?,
            throwaway_tcp: env
                .number("PG_THROWAWAY_TCP", 0, 1, "0 (Unix socket) or 1 (TCP)")?
                .map_or(PG_THROWAWAY_TCP, |n| n == 1),
        })
    }
}

struct Env<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<Result<String, std::ffi::OsString>>> Env<'_, F> {
    /// The value, trimmed; `None` when unset or empty.
    fn raw(
        &self,
        var: &'static str,
        expected: &'static str,
    ) -> Result<Option<String>, ConfigError> {
        match (self.0)(var) {
            None => Ok(None),
            Some(Err(raw)) => Err(ConfigError {
                var,
                value: raw.to_string_lossy().into_owned(),
                expected,
            }),
            Some(Ok(v)) if v.trim().is_empty() => Ok(None),
            Some(Ok(v)) => Ok(Some(v.trim().to_owned())),
        }
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(var, expected)? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ConfigError {
                var,
                value: v,
                expected,
            }),
        }
    }

    fn number(
        &self,
        var: &'static str,
        min: usize,
        max: usize,
        expected: &'static str,
    ) -> Result<Option<usize>, ConfigError> {
        match self.raw(var, expected)? {
            None => Ok(None),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ConfigError {
                    var,
                    value: v,
                    expected,
                }),
            },
        }
    }

    fn millis(&self, var: &'static str, min: u64, default: u64) -> Result<Duration, ConfigError> {
        let expected = if min == 0 {
            "whole milliseconds (0 = no limit), at most 86400000"
        } else {
            "whole milliseconds from 1 to 86400000"
        };
        let ms = match self.raw(var, expected)? {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=86_400_000).contains(&n) => n,
                _ => {
                    return Err(ConfigError {
                        var,
                        value: v,
                        expected,
                    })
                }
            },
        };
        Ok(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned().map(Ok))
    }

    #[test]
    fn defaults_are_the_literals() {
        let c = config(&[]).expect("no variables is valid");
        assert_eq!(c.port, 8080);
        assert_eq!(c.host, HOST);
        assert_eq!(c.pool_size, 8);
        assert_eq!(c.pipeline_depth, None);
        assert_eq!(c.command_timeout, Duration::from_secs(5));
        assert_eq!(c.acquire_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert!(c.reactors >= 1);
        assert!(
            !c.throwaway_tcp,
            "the throwaway cluster over its Unix socket"
        );
    }

    #[test]
    fn variables_override_and_empty_means_unset() {
        let c = config(&[
            ("PORT", "0"),
            ("REACTORS", "3"),
            ("PG_POOL_SIZE", " 2 "),
            ("PG_PIPELINE_DEPTH", "4"),
            ("PG_COMMAND_TIMEOUT_MS", "0"),
            ("HTTP_IDLE_TIMEOUT_MS", ""),
            ("HOST", "127.0.0.1"),
            ("PG_THROWAWAY_TCP", "1"),
        ])
        .expect("valid");
        assert!(c.throwaway_tcp);
        assert_eq!((c.port, c.reactors, c.pool_size), (0, 3, 2));
        assert_eq!(c.pipeline_depth, Some(4));
        assert_eq!(c.command_timeout, Duration::ZERO);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("PORT", "80a"),
            ("PORT", "70000"),
            ("REACTORS", "0"),
            ("PG_POOL_SIZE", "-1"),
            ("PG_PIPELINE_DEPTH", "0"),
            ("PG_COMMAND_TIMEOUT_MS", "1.5"),
            ("PG_ACQUIRE_TIMEOUT_MS", "0"),
            ("HTTP_IDLE_TIMEOUT_MS", "forever"),
            ("HOST", "localhost"),
            ("PG_THROWAWAY_TCP", "yes"),
        ] {
            let e = config(&[(var, value)]).expect_err(var);
            assert_eq!(e.var, var);
            let text = e.to_string();
            assert!(text.starts_with(&format!("invalid {var}=")), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn non_utf8_is_an_error_not_a_default() {
        let e =
            Config::from_lookup(|k| (k == "PORT").then(|| Err(std::ffi::OsString::from("8080"))))
                .expect_err("non-UTF-8 must fail");
        assert_eq!(e.var, "PORT");
    }
}
