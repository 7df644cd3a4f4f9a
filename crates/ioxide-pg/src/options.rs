//! [`PgOptions`]: how to reach the server and how the driver behaves.
//!
//! Built in code (`PgOptions::new().host("127.0.0.1").port(5432)`), from the libpq
//! environment ([`PgOptions::from_env`]), from a `postgres://` URL ([`PgOptions::from_url`])
//! or from a libpq `key=value` string ([`PgOptions::from_conninfo`]); [`str::parse`] picks
//! between the last two. Option names follow libpq, so users bring what they know.
//!
//! Beyond the basics, libpq's connection settings are supported with libpq's names, defaults
//! and meanings, in code, as URL query parameters and conninfo keys, and from the environment
//! where libpq has a variable:
//!
//! | key | builder | variable | meaning |
//! | --- | --- | --- | --- |
//! | `keepalives` | [`keepalives`](PgOptions::keepalives) | — | TCP keepalives on (`1`, default) or off (`0`) |
//! | `keepalives_idle` | [`keepalives_idle`](PgOptions::keepalives_idle) | — | seconds idle before the first probe (0/unset: OS default) |
//! | `keepalives_interval` | [`keepalives_interval`](PgOptions::keepalives_interval) | — | seconds between probes (0/unset: OS default) |
//! | `keepalives_count` | [`keepalives_count`](PgOptions::keepalives_count) | — | probes lost before the connection is dead (0/unset: OS default) |
//! | `tcp_user_timeout` | [`tcp_user_timeout`](PgOptions::tcp_user_timeout) | — | milliseconds sent data may stay unacknowledged (0/unset: OS default) |
//! | `options` | [`options`](PgOptions::options) | `PGOPTIONS` | command-line options for the server session (`-c search_path=app`) |
//! | `passfile` | [`passfile`](PgOptions::passfile) | `PGPASSFILE` | password file used when no password is given (default `~/.pgpass`) |
//! | `host` list | [`host`](PgOptions::host)`("a,b")`, [`hosts`](PgOptions::hosts) | `PGHOST` | several hosts (names, IPs, Unix directories), tried in turn |
//! | `port` list | [`port`](PgOptions::port), [`ports`](PgOptions::ports) | `PGPORT` | one port for all hosts, or one per host |
//! | `hostaddr` | [`hostaddrs`](PgOptions::hostaddrs) | `PGHOSTADDR` | numeric address per host, used instead of resolving its name |
//! | `target_session_attrs` | [`target_session_attrs`](PgOptions::target_session_attrs) | `PGTARGETSESSIONATTRS` | which server a connect accepts ([`TargetSessionAttrs`]) |
//! | `load_balance_hosts` | [`load_balance_hosts`](PgOptions::load_balance_hosts) | `PGLOADBALANCEHOSTS` | hosts in order, or shuffled per connect ([`LoadBalanceHosts`]) |
//!
//! The TCP settings are set on the socket before it connects, for the connection and its
//! CancelRequests; Unix sockets ignore them.
//!
//! Host names are resolved on the ring at every connect ([`PgConnection::connect`], the
//! pool's connects: `ioxide::dns`), so a name that moves is followed; or once, up front, by
//! [`PgOptions::resolve`] (one host) or [`PgOptions::resolve_hosts`] (a list), which block
//! and are meant to run before the reactors start (for pinned targets). A host list is walked
//! as libpq does: each host in turn, each within `connect_timeout`, until one accepts and fits
//! `target_session_attrs` (ARCHITECTURE.md, "How a connect walks the topology").
//!
//! [`PgConnection::connect`]: crate::PgConnection::connect

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::proto::auth::RequireAuth;
use crate::PgError;

mod hosts;
mod parse;
mod passfile;
mod socket;
mod tls;

pub(crate) use hosts::{shuffle, HostEntry};
pub use hosts::{LoadBalanceHosts, TargetSessionAttrs};
pub(crate) use tls::TlsOptions;
pub use tls::{ChannelBinding, RootCert, SslCertMode, SslMode, SslNegotiation, TlsVersion};

use parse::{
    fill_empty_host, parse_conninfo, percent_decode, quotable_key, seconds, AFTER_PASSWORD,
};

/// Where the server listens, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Host {
    /// A host name or an IP literal (IPv6 without brackets).
    Tcp(String),
    /// A directory holding the server's Unix socket (`/run/postgresql`).
    Unix(PathBuf),
}

/// Where to connect, after [`PgOptions::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// TCP addresses, to be tried in order.
    Tcp(Vec<SocketAddr>),
    /// The full Unix socket path, `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// Connection and driver options. See the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use ioxide_pg::PgOptions;
/// let opts = PgOptions::new()
///     .host("127.0.0.1")
///     .port(5432)
///     .user("app")
///     .password("secret")
///     .database("appdb")
///     .command_timeout(Duration::from_secs(5))
///     .pool_size(4);
/// assert_eq!(opts.get_database(), "appdb");
/// assert!(!format!("{opts:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct PgOptions {
    /// The host list (at least one; see `hosts`).
    hosts: Vec<Host>,
    /// One port for every host, or one per host.
    ports: Vec<u16>,
    /// Whether `host` was given (else `hostaddr` alone names the hosts).
    host_set: bool,
    /// libpq's `hostaddr`: empty, or one per host.
    hostaddrs: Vec<IpAddr>,
    target_session_attrs: TargetSessionAttrs,
    load_balance_hosts: LoadBalanceHosts,
    user: String,
    password: Option<String>,
    database: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<Duration>,
    command_timeout: Option<Duration>,
    max_message_bytes: usize,
    statement_cache_capacity: usize,
    require_auth: RequireAuth,
    pool_size: usize,
    pipeline_depth: usize,
    acquire_timeout: Duration,
    reply_batch_window: Duration,
    reply_gather_limit: Duration,
    tls: TlsOptions,
    /// The TLS client configuration built from `tls`, made on first use and shared by every
    /// connection of these options (and their clones); replaced when a TLS setting changes.
    tls_config: crate::tls::ConfigCache,
    /// Keepalives and the user timeout (see `socket`).
    tcp: ioxide::net::TcpOptions,
    /// libpq's `options`: the StartupMessage's `options` parameter; never empty.
    options: Option<String>,
    /// libpq's `passfile` (see `passfile`).
    passfile: Option<PathBuf>,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    min_connections: usize,
}

/// Default for [`PgOptions::reply_batch_window`].
pub(crate) const DEFAULT_REPLY_BATCH_WINDOW: Duration = Duration::from_micros(150);

/// Default for [`PgOptions::reply_gather_limit`].
pub(crate) const DEFAULT_REPLY_GATHER_LIMIT: Duration = Duration::from_millis(1);

/// The largest [`PgOptions::reply_gather_limit`] [`PgOptions::validate`] accepts.
pub(crate) const MAX_REPLY_GATHER_LIMIT: Duration = Duration::from_millis(100);

/// Default for [`PgOptions::max_lifetime`].
pub(crate) const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The smallest `max_message_bytes` [`PgOptions::validate`] accepts.
pub(crate) const MIN_MESSAGE_BYTES: usize = 1024;

/// Leaves the quoted text out of a config error when it may be part of a password.
fn redact_if(e: PgError, after_password: bool) -> PgError {
    if after_password {
        e.redacted(AFTER_PASSWORD)
    } else {
        e
    }
}

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions::new()
    }
}

impl PgOptions {
    /// Defaults: host `localhost`, port 5432, user `$PGUSER`, else `$USER`, else `postgres`;
    /// no password; database = user; connect_timeout 10 s; command_timeout 30 s;
    /// max_message_bytes 64 MiB; statement_cache_capacity 256; every auth method allowed;
    /// pool_size 8; pipeline_depth 8; acquire_timeout 5 s; max_lifetime 30 min; no
    /// idle_timeout; min_connections 0; TCP keepalives on with the OS's timers; passfile
    /// `$PGPASSFILE`, else `$HOME/.pgpass`; sslmode `prefer`.
    pub fn new() -> PgOptions {
        PgOptions::with_user_from(&|k| std::env::var(k).ok())
    }

    fn with_user_from(lookup: &dyn Fn(&str) -> Option<String>) -> PgOptions {
        let user = lookup("PGUSER")
            .filter(|u| !u.is_empty())
            .or_else(|| lookup("USER").filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "postgres".to_owned());
        PgOptions {
            hosts: vec![Host::Tcp("localhost".to_owned())],
            ports: vec![5432],
            host_set: false,
            hostaddrs: Vec::new(),
            target_session_attrs: TargetSessionAttrs::Any,
            load_balance_hosts: LoadBalanceHosts::Disable,
            user,
            password: None,
            database: None,
            application_name: None,
            connect_timeout: Some(Duration::from_secs(10)),
            command_timeout: Some(Duration::from_secs(30)),
            max_message_bytes: 64 * 1024 * 1024,
            statement_cache_capacity: 256,
            require_auth: RequireAuth::any(),
            pool_size: 8,
            pipeline_depth: 8,
            acquire_timeout: Duration::from_secs(5),
            reply_batch_window: DEFAULT_REPLY_BATCH_WINDOW,
            reply_gather_limit: DEFAULT_REPLY_GATHER_LIMIT,
            tls: TlsOptions::default(),
            tls_config: Default::default(),
            tcp: socket::DEFAULT,
            options: None,
            passfile: passfile::default_path(lookup),
            max_lifetime: Some(DEFAULT_MAX_LIFETIME),
            idle_timeout: None,
            min_connections: 0,
        }
    }

    /// From the process environment; see [`PgOptions::from_env_with`].
    pub fn from_env() -> Result<PgOptions, PgError> {
        PgOptions::from_env_with(|k| std::env::var(k).ok())
    }

    /// From environment variables read through `lookup` (tests pass a map).
    ///
    /// Precedence: if `DATABASE_URL` is set and non-empty it wins outright — the options come
    /// from that URL alone (plus the user default below) and the `PG*` variables are ignored.
    /// Otherwise `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`,
    /// `PGCONNECT_TIMEOUT`, `PGREQUIREAUTH`, `PGOPTIONS`, the host-list variables
    /// (`PGHOSTADDR`, `PGTARGETSESSIONATTRS`, `PGLOADBALANCEHOSTS`; `PGHOST` and `PGPORT`
    /// may be lists) and the TLS variables (`PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLSNI`, `PGSSLNEGOTIATION`,
    /// `PGCHANNELBINDING`, `PGSSLMINPROTOCOLVERSION`, `PGSSLMAXPROTOCOLVERSION`, `PGSSLCRL`,
    /// `PGSSLCRLDIR`, `PGSSLCERTMODE`, `PGSSLCOMPRESSION`, `PGGSSENCMODE`) override the
    /// defaults. The user defaults to `PGUSER`, then `USER`, then `postgres`; the password
    /// file to `PGPASSFILE`, then `$HOME/.pgpass` (with `DATABASE_URL` too). Errors name the
    /// variable.
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<PgOptions, PgError> {
        let base = PgOptions::with_user_from(&lookup);
        if let Some(url) = lookup("DATABASE_URL").filter(|u| !u.trim().is_empty()) {
            return base.apply_url(url.trim());
        }
        const VARS: [(&str, &str); 8] = [
            ("PGHOST", "host"),
            ("PGPORT", "port"),
            ("PGUSER", "user"),
            ("PGPASSWORD", "password"),
            ("PGDATABASE", "dbname"),
            ("PGAPPNAME", "application_name"),
            ("PGCONNECT_TIMEOUT", "connect_timeout"),
            ("PGREQUIREAUTH", "require_auth"),
        ];
        let mut opts = base;
        for (var, key) in VARS.into_iter().chain(hosts::ENV_VARS).chain(tls::ENV_VARS) {
            if let Some(value) = lookup(var).filter(|v| !v.is_empty()) {
                opts = opts.apply(key, &value, var)?;
            }
        }
        if let Some(value) = lookup("PGOPTIONS").filter(|v| !v.is_empty()) {
            opts = opts.apply("options", &value, "PGOPTIONS")?;
        }
        opts.validate()?;
        Ok(opts)
    }

    /// From a URL: `postgres://user:pass@host:port/db?application_name=x&connect_timeout=5`.
    ///
    /// The scheme is `postgres` or `postgresql`; user, password and database are
    /// percent-decoded; an IPv6 host is written `[::1]`; a Unix socket directory is given as
    /// `?host=/run/postgresql` or percent-encoded in the host (`%2Frun%2Fpostgresql`). Query
    /// parameters take the libpq `key=value` names ([`PgOptions::set`]).
    ///
    /// Several hosts are written as libpq does, `postgres://a:5432,b:5433,[::1]/db` (a host
    /// without a port gets 5432 unless the query sets `port`), or `?host=a,b&port=5432,5433`.
    pub fn from_url(url: &str) -> Result<PgOptions, PgError> {
        PgOptions::new().apply_url(url)
    }

    fn apply_url(mut self, s: &str) -> Result<PgOptions, PgError> {
        // `postgres://user@/db?host=/dir` (no host, as libpq allows) does not parse as a URL:
        // parse it with a placeholder host and ignore that host.
        // A host list (`a:1,b:2`) is not a URL authority: take it out, parse it here.
        let list = hosts::take_url_host_list(s)?;
        let s = list.as_ref().map_or(s, |(u, _)| u.as_str());
        if let Some((_, list)) = &list {
            let hl = hosts::split_url_hosts(list)?;
            self.hosts = hl.iter().map(|(h, _)| hosts::parse_host(h)).collect();
            self.host_set = true;
            self.ports = hl.iter().map(|(_, p)| p.unwrap_or(5432)).collect();
        }
        let (s, has_host) = fill_empty_host(s);
        // Never echo the URL: it may hold a password.
        let url = url::Url::parse(&s).map_err(|e| PgError::config("url", None, e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(PgError::config(
                "url",
                None,
                format!(
                    "scheme {:?} is not postgres:// or postgresql://",
                    url.scheme()
                ),
            ));
        }
        match url.host().filter(|_| has_host && list.is_none()) {
            Some(url::Host::Domain(d)) if !d.is_empty() => {
                self = self.apply("host", &percent_decode(d, "host")?, "host")?;
            }
            Some(url::Host::Ipv4(ip)) => self = self.host(ip.to_string()),
            Some(url::Host::Ipv6(ip)) => self = self.host(ip.to_string()),
            _ => {}
        }
        if let Some(port) = url.port() {
            self = self.port(port);
        }
        if !url.username().is_empty() {
            self.user = percent_decode(url.username(), "user")?;
        }
        if let Some(password) = url.password() {
            self.password = Some(percent_decode(password, "password")?);
        }
        let db = percent_decode(url.path().trim_start_matches('/'), "dbname")?;
        if !db.is_empty() {
            self.database = Some(db);
        }
        // An unencoded `?` in the user-info password (`postgres://u:12?ab@h`) or `&` in a
        // `password=` query value leaves pieces of it in the query: quote none of the query
        // then.
        let mut after_password = s[s.find("://").map_or(0, |i| i + 3)..]
            .split_once(['/', '?', '#'])
            .is_some_and(|(_, rest)| rest.contains('@'));
        for (key, value) in url.query_pairs() {
            self = self
                .apply(&key, &value, &key)
                .map_err(|e| redact_if(e, after_password))?;
            after_password |= key == "password";
        }
        self.validate()?;
        Ok(self)
    }

    /// From a libpq connection string: `host=localhost port=5432 user=app password='a b'`.
    ///
    /// Values may be single-quoted; inside a value `\'` and `\\` stand for `'` and `\`.
    /// Keys are those of [`PgOptions::set`].
    pub fn from_conninfo(s: &str) -> Result<PgOptions, PgError> {
        let mut opts = PgOptions::new();
        let mut after_password = false;
        for (key, value) in parse_conninfo(s)? {
            opts = opts
                .apply(&key, &value, &key)
                .map_err(|e| redact_if(e, after_password))?;
            after_password |= key == "password";
        }
        opts.validate()?;
        Ok(opts)
    }

    /// Sets one option by its libpq name (`host`, `hostaddr`, `port`, `user`, `password`,
    /// `dbname`, `application_name`, `fallback_application_name`, `connect_timeout` (seconds;
    /// 0 = none), `require_auth`,
    /// `client_encoding` (`UTF8` only), `keepalives`, `keepalives_idle`, `keepalives_interval`,
    /// `keepalives_count`, `tcp_user_timeout`, `options`, `passfile`, the TLS settings
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslpassword`, `sslsni`, `sslnegotiation`,
    /// `channel_binding`, `ssl_min_protocol_version`, `ssl_max_protocol_version`, `sslcrl`,
    /// `sslcrldir`, `sslcertmode`, `sslcompression` (0 only) and `gssencmode`
    /// (`disable`/`prefer`: no GSSAPI) — see [`PgOptions::ssl_mode`] and the
    /// [module docs](self)) or by one of ours (`command_timeout` (seconds; 0 =
    /// none), `acquire_timeout` (seconds), `max_message_bytes`, `statement_cache_capacity`,
    /// `pool_size`, `pipeline_depth`, `reply_batch_window_us`, `reply_gather_limit_us`,
    /// `max_lifetime` (seconds; 0 = none), `idle_timeout` (seconds; 0 = none),
    /// `min_connections`). Seconds may be fractional (`max_lifetime=0.5`). An unknown key or
    /// bad value is an error naming it.
    pub fn set(self, key: &str, value: &str) -> Result<PgOptions, PgError> {
        self.apply(key, value, key)
    }

    fn apply(mut self, key: &str, value: &str, label: &str) -> Result<PgOptions, PgError> {
        let bad = |msg: &dyn fmt::Display| PgError::config(label, Some(value), msg.to_string());
        match key {
            _ if self.apply_hosts(key, value, label)? => {}
            "user" => self.user = value.to_owned(),
            "password" => self.password = Some(value.to_owned()),
            "dbname" | "database" => self.database = Some(value.to_owned()),
            "application_name" => self.application_name = Some(value.to_owned()),
            "fallback_application_name" => {
                self.application_name
                    .get_or_insert_with(|| value.to_owned());
            }
            "connect_timeout" => {
                self.connect_timeout = non_zero(seconds(value).map_err(|e| bad(&e))?)
            }
            "command_timeout" => {
                self.command_timeout = non_zero(seconds(value).map_err(|e| bad(&e))?)
            }
            "acquire_timeout" => self.acquire_timeout = seconds(value).map_err(|e| bad(&e))?,
            "max_message_bytes" => self.max_message_bytes = value.parse().map_err(|e| bad(&e))?,
            "statement_cache_capacity" => {
                self.statement_cache_capacity = value.parse().map_err(|e| bad(&e))?
            }
            "pool_size" => self.pool_size = value.parse().map_err(|e| bad(&e))?,
            "max_lifetime" => self.max_lifetime = non_zero(seconds(value).map_err(|e| bad(&e))?),
            "idle_timeout" => self.idle_timeout = non_zero(seconds(value).map_err(|e| bad(&e))?),
            "min_connections" => self.min_connections = value.parse().map_err(|e| bad(&e))?,
            "pipeline_depth" => self.pipeline_depth = value.parse().map_err(|e| bad(&e))?,
            "reply_batch_window_us" => {
                self.reply_batch_window = Duration::from_micros(value.parse().map_err(|e| bad(&e))?)
            }
            "reply_gather_limit_us" => {
                self.reply_gather_limit = Duration::from_micros(value.parse().map_err(|e| bad(&e))?)
            }
            "require_auth" => {
                self.require_auth = value
                    .parse()
                    .map_err(|e: PgError| PgError::config(label, Some(value), e.to_string()))?
            }
            k if socket::KEYS.contains(&k) => {
                self.tcp = socket::apply(self.tcp, k, value).map_err(|e| bad(&e))?
            }
            "options" => self = self.options(value),
            "passfile" if value.is_empty() => {}
            "passfile" => self = self.passfile(value),
            "client_encoding" => {
                if !value.eq_ignore_ascii_case("utf8") && !value.eq_ignore_ascii_case("utf-8") {
                    return Err(bad(&"only UTF8 is supported"));
                }
            }
            _ if self.tls.apply(key, value, label)? => {
                self.tls_config = Default::default();
            }
            _ => {
                return Err(PgError::config(
                    "option",
                    quotable_key(key).then_some(key),
                    "unknown connection option",
                ))
            }
        }
        Ok(self)
    }

    /// Checks the options are usable: non-empty hosts, non-zero ports, as many ports (or
    /// one) and `hostaddr`s (or none) as hosts, a non-empty user, `max_message_bytes` of at least 1024, a `pool_size`
    /// and `pipeline_depth` of at least 1, a `min_connections` of at most `pool_size`, a
    /// `reply_batch_window` of at most 10 ms and a `reply_gather_limit` of at most 100 ms,
    /// TCP keepalive timers and user timeout within the kernel's ranges, and the TLS settings
    /// libpq accepts together. Errors name the field.
    pub fn validate(&self) -> Result<(), PgError> {
        self.validate_connection()?;
        if self.pool_size == 0 {
            return Err(PgError::config(
                "pool_size",
                Some("0"),
                "must be at least 1",
            ));
        }
        if self.pipeline_depth == 0 {
            return Err(PgError::config(
                "pipeline_depth",
                Some("0"),
                "must be at least 1",
            ));
        }
        if self.min_connections > self.pool_size {
            return Err(PgError::config(
                "min_connections",
                Some(&self.min_connections.to_string()),
                format!("must not exceed pool_size ({})", self.pool_size),
            ));
        }
        Ok(())
    }

    /// The checks of [`validate`](Self::validate) that concern one connection (not the
    /// pool's fields): what `PgConnection::connect_to` enforces.
    pub(crate) fn validate_connection(&self) -> Result<(), PgError> {
        self.validate_hosts()?;
        if self.user.is_empty() {
            return Err(PgError::config("user", None, "empty"));
        }
        self.tls.validate()?;
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            let v = self.max_message_bytes.to_string();
            return Err(PgError::config(
                "max_message_bytes",
                Some(&v),
                format!("must be at least {MIN_MESSAGE_BYTES}"),
            ));
        }
        socket::validate(&self.tcp)?;
        for (field, value, max) in [
            (
                "reply_batch_window",
                self.reply_batch_window,
                ioxide::MAX_BATCH_WINDOW,
            ),
            (
                "reply_gather_limit",
                self.reply_gather_limit,
                MAX_REPLY_GATHER_LIMIT,
            ),
        ] {
            if value > max {
                return Err(PgError::config(
                    field,
                    Some(&format!("{value:?}")),
                    format!("must be at most {max:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Validates, then resolves the host: a Unix socket directory becomes
    /// `<dir>/.s.PGSQL.<port>`, an IP literal becomes its address, and a host name is looked
    /// up **with a blocking DNS query** — call this before the reactors start. A `hostaddr`
    /// is used as is. For a host list, use [`resolve_hosts`](Self::resolve_hosts): here a
    /// list is an error.
    pub fn resolve(&self) -> Result<Target, PgError> {
        self.validate()?;
        match self.host_entries().as_slice() {
            [one] => resolve_entry(one),
            more => Err(PgError::config(
                "host",
                None,
                format!(
                    "lists {} hosts: resolve them with PgOptions::resolve_hosts()",
                    more.len()
                ),
            )),
        }
    }

    /// Validates, then resolves every host of the list as [`resolve`](Self::resolve) does
    /// (blocking), one target per host, in the list's order, for
    /// [`PgConnection::connect_to_hosts`](crate::PgConnection::connect_to_hosts) and
    /// [`PgPoolBuilder::targets`](crate::PgPoolBuilder::targets). A host that does not
    /// resolve gets an empty target (a connect skips it, naming it); if none resolves, the
    /// first error is returned.
    pub fn resolve_hosts(&self) -> Result<Vec<Target>, PgError> {
        self.validate()?;
        let mut first_err = None;
        let mut out = Vec::new();
        for e in self.host_entries() {
            match resolve_entry(&e) {
                Ok(t) => out.push(t),
                Err(err) => {
                    first_err.get_or_insert(err);
                    out.push(Target::Tcp(Vec::new()));
                }
            }
        }
        match first_err {
            Some(e)
                if out
                    .iter()
                    .all(|t| matches!(t, Target::Tcp(a) if a.is_empty())) =>
            {
                Err(e)
            }
            _ => Ok(out),
        }
    }

    /// The host: a name or IP literal (`[::1]` brackets are stripped), or, if it starts with
    /// `/`, a Unix socket directory. Commas make a host list (`"db1,db2,/run/postgresql"`),
    /// as [`hosts`](PgOptions::hosts).
    pub fn host(self, host: impl AsRef<str>) -> PgOptions {
        self.hosts(host.as_ref().split(','))
    }

    /// The server port (also names the Unix socket file), for every host. Default 5432.
    pub fn port(mut self, port: u16) -> PgOptions {
        self.ports = vec![port];
        self
    }

    /// The user to log in as.
    pub fn user(mut self, user: impl Into<String>) -> PgOptions {
        self.user = user.into();
        self
    }

    /// The password, for cleartext, MD5 or SCRAM authentication.
    pub fn password(mut self, password: impl Into<String>) -> PgOptions {
        self.password = Some(password.into());
        self
    }

    /// The database. Default: the user name.
    pub fn database(mut self, database: impl Into<String>) -> PgOptions {
        self.database = Some(database.into());
        self
    }

    /// `application_name`, shown in `pg_stat_activity`.
    pub fn application_name(mut self, name: impl Into<String>) -> PgOptions {
        self.application_name = Some(name.into());
        self
    }

    /// Bound on opening a connection (connect, startup, authentication). Zero: none.
    pub fn connect_timeout(mut self, timeout: Duration) -> PgOptions {
        self.connect_timeout = non_zero(timeout);
        self
    }

    /// Bound on one command's reply; past it the command is cancelled. Zero: none.
    pub fn command_timeout(mut self, timeout: Duration) -> PgOptions {
        self.command_timeout = non_zero(timeout);
        self
    }

    /// The largest backend message accepted, header included; the receive buffer never grows
    /// beyond it. Default 64 MiB.
    pub fn max_message_bytes(mut self, max: usize) -> PgOptions {
        self.max_message_bytes = max;
        self
    }

    /// Prepared statements cached per connection (least recently used evicted and closed on
    /// the server). 0 disables caching: every parameterized query then uses the unnamed
    /// statement (two round trips with parameters, one without). Default 256.
    ///
    /// 0 is the explicit setting for a transaction-mode pooler (PgBouncer
    /// `pool_mode=transaction`, the name pgx and sqlx users know). With the default a
    /// connection detects such a pooler by its first refused statement and switches to
    /// unnamed statements by itself, without failing the query (and warns once).
    pub fn statement_cache_capacity(mut self, capacity: usize) -> PgOptions {
        self.statement_cache_capacity = capacity;
        self
    }

    /// Authentication methods to accept (libpq's `require_auth`).
    pub fn require_auth(mut self, methods: RequireAuth) -> PgOptions {
        self.require_auth = methods;
        self
    }

    /// Connections per reactor in a pool. Default 8.
    pub fn pool_size(mut self, size: usize) -> PgOptions {
        self.pool_size = size;
        self
    }

    /// Commands in flight per connection (pipelining). Default 8, chosen from the benchmark
    /// (BENCHMARKS.md, the depth sweep: pool of 8, 64 in flight): depth 1 gave 64 k q/s at
    /// 8.5 µs CPU/query, 2 → 86 k, 4 → 96 k, 8 → 126 k at 3.2 µs with the best p99, 16 and 64
    /// no better. Routing picks the least-loaded connection first, so a slow query holds up
    /// others only once every connection is busy, and then at most depth − 1 of them. Use 1
    /// for long queries that must never share a connection; `rent()` is always exclusive.
    pub fn pipeline_depth(mut self, depth: usize) -> PgOptions {
        self.pipeline_depth = depth;
        self
    }

    /// Reply batching: with many commands in flight on one connection (16 or more), wake
    /// up once for a batch of their replies instead of once per reply, so one wake-up, one
    /// receive and one send serve the batch. Zero turns batching off; at most 10 ms. Key
    /// `reply_batch_window_us`.
    ///
    /// Over TCP the receive is held until about half the replies in flight have arrived (in
    /// bytes, from the measured size of a reply: [`ioxide::net::Stream::recv_gather`]), for
    /// at most [`reply_gather_limit`](PgOptions::reply_gather_limit). Over a Unix socket
    /// (where the kernel cannot hold a receive for a byte count), when the gather limit is
    /// zero, and when more than four connections on one reactor batch at once (a hold
    /// gathers one socket's replies; the window gathers every socket's in one wake-up), the
    /// reactor waits instead for a third of the time the oldest command in flight has
    /// waited, capped by this window ([`ioxide::batch_wait`]); with
    /// `min_wait_usec` (6.12+) a reply that takes longer wakes it at once. A lone command in
    /// flight (a depth-1 pool, a sequential caller) is never held. Measured on one
    /// connection × 64 pipelined queries (bench/FINDINGS.md): client CPU per query 7.6–8.0 µs
    /// without batching, 2.2–3.1 µs with the time window, 1.6–2.3 µs gathering over TCP.
    /// Fewer than 16 in flight do not batch: the server would run out of queued work.
    /// Default 150 µs.
    pub fn reply_batch_window(mut self, window: Duration) -> PgOptions {
        self.reply_batch_window = window;
        self
    }

    /// The longest a TCP receive is held back gathering a batch of replies (see
    /// [`reply_batch_window`](PgOptions::reply_batch_window)): the bound on what batching adds
    /// to a reply's latency when the replies behind it are slow to come (a long query in the
    /// middle of a pipeline). In a steady pipeline the batch is complete long before. Zero:
    /// TCP batches by the time window as Unix sockets do. Default 1 ms; at most 100 ms. Key
    /// `reply_gather_limit_us`.
    pub fn reply_gather_limit(mut self, limit: Duration) -> PgOptions {
        self.reply_gather_limit = limit;
        self
    }

    /// libpq's `options`: command-line options for the server session, sent at startup
    /// (`-c search_path=app,public -c statement_timeout=5s`; a space inside a value is written
    /// `\ `). The server checks them: a bad one fails the connect with its error naming it.
    /// Empty: none. Key `options`; variable `PGOPTIONS`.
    pub fn options(mut self, options: impl Into<String>) -> PgOptions {
        self.options = Some(options.into()).filter(|o| !o.is_empty());
        self
    }

    /// How long renting a pooled connection may wait. Default 5 s.
    pub fn acquire_timeout(mut self, timeout: Duration) -> PgOptions {
        self.acquire_timeout = timeout;
        self
    }

    fn with_tls(mut self, f: impl FnOnce(&mut TlsOptions)) -> PgOptions {
        f(&mut self.tls);
        self.tls_config = Default::default();
        self
    }

    /// libpq's `sslmode` (key `sslmode`, variable `PGSSLMODE`): whether TLS is used and
    /// what of the server's certificate is checked; see [`SslMode`]. Default `prefer`
    /// (`verify-full` with `sslrootcert=system`).
    ///
    /// TLS runs on the ring like everything else (rustls, in memory): the SSLRequest, the
    /// handshake and every record are io_uring operations of the reactor that owns the
    /// connection. Unix-socket connections never use TLS.
    pub fn ssl_mode(self, mode: SslMode) -> PgOptions {
        self.with_tls(|t| t.mode = Some(mode))
    }

    /// Trusted roots for the server certificate (key `sslrootcert`, `PGSSLROOTCERT`): a PEM
    /// file, or [`RootCert::System`] for the platform's store. By default
    /// `~/.postgresql/root.crt` is used when it exists, which makes `prefer` and `require`
    /// check the chain (as `verify-ca`), as libpq does. `verify-ca` and `verify-full`
    /// without any root certificate fail to connect, naming the missing file.
    pub fn ssl_root_cert(self, root: RootCert) -> PgOptions {
        self.with_tls(|t| t.root_cert = root)
    }

    /// A client certificate and its private key, PEM files (keys `sslcert` / `sslkey`,
    /// `PGSSLCERT` / `PGSSLKEY`; default `~/.postgresql/postgresql.crt` and `.key` when they
    /// exist), sent when the server asks (`cert` authentication, `clientcert=verify-*`). The
    /// key may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC); it must not be readable by group or
    /// others (as libpq). An encrypted PKCS#8 key (`BEGIN ENCRYPTED PRIVATE KEY`) needs
    /// [`ssl_password`](PgOptions::ssl_password); without it the connect fails saying so.
    pub fn ssl_client_cert(self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> PgOptions {
        let (cert, key) = (cert.into(), key.into());
        self.with_tls(|t| {
            t.cert = Some(cert);
            t.key = Some(key);
        })
    }

    /// The password of an encrypted client key (key `sslpassword`). Never logged.
    pub fn ssl_password(self, password: impl Into<String>) -> PgOptions {
        let password = password.into();
        self.with_tls(|t| t.password = Some(password))
    }

    /// Whether the host name is sent as TLS SNI (key `sslsni`, `PGSSLSNI`; default on; never
    /// for an IP address).
    pub fn ssl_sni(self, on: bool) -> PgOptions {
        self.with_tls(|t| t.sni = Some(on))
    }

    /// How TLS starts (key `sslnegotiation`, `PGSSLNEGOTIATION`): an SSLRequest first
    /// (default), or `direct`: the TLS handshake at once with ALPN `postgresql`
    /// (PostgreSQL 17+), which needs `sslmode=require` or stronger.
    pub fn ssl_negotiation(self, negotiation: SslNegotiation) -> PgOptions {
        self.with_tls(|t| t.negotiation = negotiation)
    }

    /// SCRAM channel binding (key `channel_binding`, `PGCHANNELBINDING`): see
    /// [`ChannelBinding`]. Default `prefer`.
    pub fn channel_binding(self, binding: ChannelBinding) -> PgOptions {
        self.with_tls(|t| t.channel_binding = binding)
    }

    /// The lowest and highest TLS versions (keys `ssl_min_protocol_version` /
    /// `ssl_max_protocol_version`, values `TLSv1.2` / `TLSv1.3`). Default: 1.2 to 1.3.
    pub fn ssl_protocol_versions(self, min: TlsVersion, max: TlsVersion) -> PgOptions {
        self.with_tls(|t| {
            t.min_version = Some(min);
            t.max_version = Some(max);
        })
    }

    /// The `sslmode` in force.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.tls.effective_mode()
    }

    /// The TLS settings (crate-internal).
    pub(crate) fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// The rustls client configuration for these options, built once.
    pub(crate) fn tls_client_config(
        &self,
    ) -> Result<std::sync::Arc<rustls::ClientConfig>, PgError> {
        self.tls_config.get_or_build(&self.tls)
    }

    /// The server command-line options sent at startup, if any.
    pub fn get_options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    /// The longest a pooled connection serves before the pool replaces it (an ioxide-pg
    /// extension, key `max_lifetime` in seconds; libpq has no such key). Zero: forever.
    /// Default 30 min, as sqlx and bb8: a long-lived backend only grows (catalog and plan
    /// caches, prepared statements), and settings changed on the server (`ALTER ROLE … SET`,
    /// a reloaded `pg_hba.conf`) reach pooled sessions only through new connections; the cost
    /// is one connect per connection per half hour.
    ///
    /// Each connection's lifetime is drawn in [0.9, 1.0] × this value, so connections opened
    /// together (the warm-up) are not replaced together. Past it, the pool first opens the
    /// replacement (through the [`after_connect`](crate::PgPoolBuilder::after_connect) hook
    /// like any new connection), then stops routing to the old connection and closes it once
    /// nothing is in flight on it: a retirement never takes capacity away, and nothing in
    /// flight fails because of it. One connection per pool is replaced at a time, so the
    /// server sees at most `pool_size` + 1 connections per reactor for a moment. A rented
    /// connection is never retired under its renter: it is replaced after it comes back. While
    /// connects fail, an expired connection keeps serving (the replacement is retried with
    /// the usual backoff).
    pub fn max_lifetime(mut self, lifetime: Duration) -> PgOptions {
        self.max_lifetime = non_zero(lifetime);
        self
    }

    /// Closes a pooled connection that has been idle (nothing in flight, not rented) this long,
    /// as long as more than [`min_connections`](PgOptions::min_connections) are open (an
    /// ioxide-pg extension, key `idle_timeout` in seconds). Zero: never. Default: never.
    /// Idleness is judged by the pool's maintenance task, which looks at least every 250 ms,
    /// not on the query path: a connection closes between `idle_timeout` and `idle_timeout`
    /// + 250 ms after its last command.
    ///
    /// The pool still opens `pool_size` connections at start. Closed idle connections are
    /// reopened on demand, up to `pool_size`, as sqlx and bb8 do: a request that finds no
    /// idle connection (it has to wait, or shares a connection that is already busy) opens
    /// one more. The pool routes to its first idle connection, so under light load the rest
    /// stay idle and close: the pool shrinks to what the load uses. Off by default because
    /// the pool is sized and warmed up front so that no request pays for a connect (a SCRAM
    /// login costs a PBKDF2); set it when idle clients hold server connections another
    /// application needs.
    pub fn idle_timeout(mut self, timeout: Duration) -> PgOptions {
        self.idle_timeout = non_zero(timeout);
        self
    }

    /// The fewest connections per reactor [`idle_timeout`](PgOptions::idle_timeout) leaves
    /// open (key `min_connections`); at most `pool_size`. Default 0: a quiet pool closes all
    /// of them, and the next request waits for a connect.
    pub fn min_connections(mut self, min: usize) -> PgOptions {
        self.min_connections = min;
        self
    }

    /// The host (the first of a list).
    pub fn get_host(&self) -> &Host {
        static LOCALHOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
        self.hosts
            .first()
            .unwrap_or_else(|| LOCALHOST.get_or_init(|| Host::Tcp("localhost".to_owned())))
    }

    /// The port (the first host's).
    pub fn get_port(&self) -> u16 {
        self.ports.first().copied().unwrap_or(5432)
    }

    /// The user.
    pub fn get_user(&self) -> &str {
        &self.user
    }

    /// The password, if any.
    pub fn get_password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database (the user name if none was set).
    pub fn get_database(&self) -> &str {
        self.database.as_deref().unwrap_or(&self.user)
    }

    /// The application name, if any.
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The connect timeout; `None`: none.
    pub fn get_connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// The command timeout; `None`: none.
    pub fn get_command_timeout(&self) -> Option<Duration> {
        self.command_timeout
    }

    /// The message size limit.
    pub fn get_max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The statement cache capacity.
    pub fn get_statement_cache_capacity(&self) -> usize {
        self.statement_cache_capacity
    }

    /// The accepted authentication methods.
    pub fn get_require_auth(&self) -> RequireAuth {
        self.require_auth
    }

    /// The pool size per reactor.
    pub fn get_pool_size(&self) -> usize {
        self.pool_size
    }

    /// The pipeline depth.
    pub fn get_pipeline_depth(&self) -> usize {
        self.pipeline_depth
    }

    /// The acquire timeout.
    pub fn get_acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// The reply batching window (zero: off).
    pub fn get_reply_batch_window(&self) -> Duration {
        self.reply_batch_window
    }

    /// The longest a TCP receive is held gathering replies (zero: gathering off).
    pub fn get_reply_gather_limit(&self) -> Duration {
        self.reply_gather_limit
    }

    /// The longest a pooled connection serves; `None`: forever.
    pub fn get_max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// How long a pooled connection may stay idle before it is closed; `None`: forever.
    pub fn get_idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The fewest connections `idle_timeout` leaves open per reactor.
    pub fn get_min_connections(&self) -> usize {
        self.min_connections
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .field("hostaddrs", &self.hostaddrs)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("load_balance_hosts", &self.load_balance_hosts)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("database", &self.get_database())
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .field("require_auth", &self.require_auth)
            .field("pool_size", &self.pool_size)
            .field("pipeline_depth", &self.pipeline_depth)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("reply_batch_window", &self.reply_batch_window)
            .field("reply_gather_limit", &self.reply_gather_limit)
            .field("tls", &self.tls)
            .field("tcp", &self.tcp)
            .field("options", &self.options)
            .field("passfile", &self.passfile)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("min_connections", &self.min_connections)
            .finish()
    }
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for PgOptions {
    type Err = PgError;

    /// A URL (`postgres://` or `postgresql://`; another `scheme://` is refused as one), else a
    /// libpq `key=value` string.
    fn from_str(s: &str) -> Result<PgOptions, PgError> {
        let s = s.trim();
        // Any `scheme://` before the first `=` is a URL (`POSTGRES://`, `postgresql+psycopg://`
        // included): parsed as one, an error names its scheme, never its password.
        let first_token = s.split(['=', ' ', '\t', '\n']).next().unwrap_or_default();
        if first_token.contains("://") {
            PgOptions::from_url(s)
        } else {
            PgOptions::from_conninfo(s)
        }
    }
}

/// Resolves one host of the list (blocking for a name); see [`PgOptions::resolve`].
fn resolve_entry(e: &HostEntry) -> Result<Target, PgError> {
    if let Some(ip) = e.hostaddr {
        return Ok(Target::Tcp(vec![SocketAddr::new(ip, e.port)]));
    }
    match &e.host {
        Host::Unix(dir) => Ok(Target::Unix(dir.join(format!(".s.PGSQL.{}", e.port)))),
        Host::Tcp(h) => {
            if let Ok(ip) = h.parse::<IpAddr>() {
                return Ok(Target::Tcp(vec![SocketAddr::new(ip, e.port)]));
            }
            let addrs: Vec<SocketAddr> = (h.as_str(), e.port)
                .to_socket_addrs()
                .map_err(|err| PgError::io(format!("resolving host {h:?}"), err))?
                .collect();
            if addrs.is_empty() {
                return Err(PgError::config("host", Some(h), "resolves to no address"));
            }
            Ok(Target::Tcp(addrs))
        }
    }
}
