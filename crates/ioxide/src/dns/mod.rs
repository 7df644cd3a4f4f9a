//! Host names resolved on the ring: `/etc/hosts`, then A and AAAA queries over UDP to the
//! nameservers of `/etc/resolv.conf`, every socket operation and timer an io_uring op.
//!
//! * IP literals (`10.0.0.1`, `::1`, `[::1]`) are returned as they are, with no I/O.
//! * The hosts file is read on first use and re-read whenever its modification time or size
//!   changes (one `stat` per lookup of a name); a name it lists is answered from it alone.
//! * Otherwise each name to try (the `search` list and `ndots` applied as glibc does) is
//!   asked of each nameserver in turn, A and AAAA together on one connected UDP socket,
//!   for up to `options timeout:` each, the whole list `options attempts:` times. An answer
//!   counts only if its id, question (name, type, class) and sender match; its rcode decides
//!   what follows: NXDOMAIN ends that name, SERVFAIL/REFUSED and unparseable answers move to
//!   the next server. CNAME chains inside an answer are followed.
//! * A family left unanswered while the other has addresses is not retried: the addresses
//!   found are used (some networks drop AAAA questions).
//! * Answers are cached per [`Resolver`] (so per reactor thread for the default one) for the
//!   smallest TTL among the records used, capped by [`ResolverConfig::max_ttl`]; a TTL of 0
//!   is not cached. Failures are not cached.
//!
//! * A truncated UDP answer (the TC bit) is asked again over TCP (connect, send and receive
//!   as ring ops), within the same per-server timeout.
//!
//! * A thread's default resolver ([`resolver`], used by [`lookup`]) is made from
//!   `/etc/resolv.conf` on first use and made again, with an empty cache, when the file's
//!   modification time or size changes (one `stat` per call).
//!
//! Not supported: EDNS, DNSSEC, IPv6 zone ids, `rotate`, `nsswitch.conf` (the order is
//! always hosts file, then DNS), `LOCALDOMAIN`/`RES_OPTIONS`. The system files are read
//! with plain (non-ring) file reads; they are small and local.
//!
//! ```no_run
//! ioxide::block_on(async {
//!     let addrs = ioxide::dns::lookup("localhost", 5432).await.unwrap();
//!     println!("{addrs:?}");
//! });
//! ```
//!
//! Tests point a reactor thread at their own nameserver with [`set_resolver`]:
//!
//! ```no_run
//! use ioxide::dns::{Resolver, ResolverConfig};
//! let config = ResolverConfig::new()
//!     .nameserver("127.0.0.1:5353".parse().unwrap())
//!     .hosts_file(None);
//! ioxide::block_on(async move {
//!     ioxide::dns::set_resolver(Resolver::new(config));
//!     let addrs = ioxide::dns::lookup("db.test", 5432).await;
//!     println!("{addrs:?}");
//! });
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

mod conf;
mod query;

use query::{Failure, Family, Outcome, FAMILIES};

/// The system's resolver configuration file.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The system's hosts file.
pub const HOSTS: &str = "/etc/hosts";

/// The most names a resolver caches; past it, expired entries are dropped, then all.
const CACHE_CAPACITY: usize = 1024;

/// How a [`Resolver`] resolves: nameservers, search list, timeouts, hosts file, cache bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    nameservers: Vec<SocketAddr>,
    search: Vec<String>,
    ndots: usize,
    timeout: Duration,
    attempts: u32,
    hosts_file: Option<PathBuf>,
    max_ttl: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig::new()
    }
}

impl ResolverConfig {
    /// No nameserver, no search list, glibc's defaults otherwise (`ndots:1`, `timeout:5`,
    /// `attempts:2`), the system hosts file, a 5-minute cache cap.
    pub fn new() -> ResolverConfig {
        ResolverConfig {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
            hosts_file: Some(PathBuf::from(HOSTS)),
            max_ttl: Duration::from_secs(300),
        }
    }

    /// The system's configuration: [`RESOLV_CONF`] (a missing file means a nameserver on
    /// 127.0.0.1, as glibc has it) and [`HOSTS`]. A plain file read.
    pub fn system() -> ResolverConfig {
        let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        ResolverConfig::from_resolv_conf(&text)
    }

    /// Parses the text of a resolv.conf: `nameserver` (at most 3, port 53), `search` or
    /// `domain`, `options ndots: timeout: attempts:`; the hosts file is [`HOSTS`].
    pub fn from_resolv_conf(text: &str) -> ResolverConfig {
        conf::parse_resolv_conf(text)
    }

    /// Adds a nameserver (any port: tests run one on loopback).
    pub fn nameserver(mut self, addr: SocketAddr) -> ResolverConfig {
        self.nameservers.push(addr);
        self
    }

    /// Replaces the nameservers.
    pub fn nameservers(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> ResolverConfig {
        self.nameservers = addrs.into_iter().collect();
        self
    }

    /// The search domains tried for a name with fewer than `ndots` dots (and after it fails
    /// as is, for the others). Not used for a name ending in `.`.
    pub fn search(mut self, domains: impl IntoIterator<Item = impl AsRef<str>>) -> ResolverConfig {
        self.search = domains
            .into_iter()
            .map(|d| conf::normalize(d.as_ref()))
            .filter(|d| !d.is_empty())
            .collect();
        self
    }

    /// How many dots make a name tried as is before the search list (`options ndots:`).
    pub fn ndots(mut self, n: usize) -> ResolverConfig {
        self.ndots = n;
        self
    }

    /// How long to wait for one nameserver's answer (`options timeout:`); at least 1 ms.
    pub fn timeout(mut self, t: Duration) -> ResolverConfig {
        self.timeout = t.max(Duration::from_millis(1));
        self
    }

    /// How many times the list of nameservers is tried (`options attempts:`); at least 1.
    pub fn attempts(mut self, n: u32) -> ResolverConfig {
        self.attempts = n.max(1);
        self
    }

    /// The hosts file consulted before DNS, or `None` for none.
    pub fn hosts_file(mut self, path: Option<&Path>) -> ResolverConfig {
        self.hosts_file = path.map(Path::to_owned);
        self
    }

    /// The longest an answer is cached, whatever its TTL says (0: no caching).
    pub fn max_ttl(mut self, t: Duration) -> ResolverConfig {
        self.max_ttl = t;
        self
    }

    /// The nameservers, in the order they are asked.
    pub fn get_nameservers(&self) -> &[SocketAddr] {
        &self.nameservers
    }

    /// The search domains (lower case, without trailing dots).
    pub fn get_search(&self) -> &[String] {
        &self.search
    }

    /// `ndots`.
    pub fn get_ndots(&self) -> usize {
        self.ndots
    }

    /// The per-server timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// How many rounds over the nameservers.
    pub fn get_attempts(&self) -> u32 {
        self.attempts
    }

    /// The hosts file, if any.
    pub fn get_hosts_file(&self) -> Option<&Path> {
        self.hosts_file.as_deref()
    }

    /// The cache bound.
    pub fn get_max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The longest a lookup of one name can wait on the network: every attempt on every
    /// server timing out, for each search candidate.
    pub fn worst_case(&self) -> Duration {
        let tries = self.attempts as usize * self.nameservers.len() * (self.search.len() + 1);
        self.timeout
            .saturating_mul(u32::try_from(tries).unwrap_or(u32::MAX))
    }
}

/// A resolver with its own configuration, hosts-file copy and answer cache. Cheap to clone
/// (clones share the cache); not `Send`: one per reactor thread. See the [module docs](self).
#[derive(Clone)]
pub struct Resolver {
    inner: Rc<Inner>,
}

struct Inner {
    config: ResolverConfig,
    hosts: RefCell<Option<conf::HostsFile>>,
    cache: RefCell<HashMap<String, CacheEntry>>,
}

struct CacheEntry {
    addrs: Vec<IpAddr>,
    expires: Instant,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.inner.config)
            .field("cached", &self.inner.cache.borrow().len())
            .finish()
    }
}

impl Resolver {
    /// A resolver with `config` and an empty cache.
    pub fn new(config: ResolverConfig) -> Resolver {
        let hosts = config.hosts_file.as_deref().map(conf::HostsFile::new);
        Resolver {
            inner: Rc::new(Inner {
                config,
                hosts: RefCell::new(hosts),
                cache: RefCell::new(HashMap::new()),
            }),
        }
    }

    /// A resolver with the system's configuration ([`ResolverConfig::system`]).
    pub fn system() -> Resolver {
        Resolver::new(ResolverConfig::system())
    }

    /// Its configuration.
    pub fn config(&self) -> &ResolverConfig {
        &self.inner.config
    }

    /// Forgets every cached answer.
    pub fn clear_cache(&self) {
        self.inner.cache.borrow_mut().clear();
    }

    /// The addresses of `host` with `port`: IPv4 first, then IPv6, each in the order
    /// received. See the [module docs](self) for where they come from.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, LookupError> {
        let ips = self.lookup_ip(host).await?;
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// The addresses of `host` (never empty on success).
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let host = host.trim();
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let err = |kind, detail: String| LookupError {
            host: host.to_owned(),
            kind,
            nameserver: None,
            detail,
        };
        if host.is_empty() || host.len() > 254 || simple_dns::Name::new(host).is_err() {
            return Err(err(ErrorKind::InvalidName, "not a valid host name".into()));
        }
        let name = conf::normalize(host);
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(err(ErrorKind::InvalidName, "not a valid host name".into()));
        }
        if let Some(ips) = self.in_hosts_file(&name) {
            return Ok(ips);
        }
        if self.inner.config.nameservers.is_empty() {
            return Err(err(
                ErrorKind::NoNameservers,
                "no nameserver is configured (resolv.conf)".into(),
            ));
        }
        let mut not_found: Option<LookupError> = None;
        for candidate in self.candidates(host, &name) {
            match self.lookup_name(host, &candidate).await {
                Ok(ips) => return Ok(ips),
                Err(e) if e.kind == ErrorKind::NotFound => {
                    not_found = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(not_found.unwrap_or_else(|| err(ErrorKind::NotFound, "no name to try".into())))
    }

    /// The hosts file's addresses for `name`, IPv4 first (as from DNS), else in file order.
    fn in_hosts_file(&self, name: &str) -> Option<Vec<IpAddr>> {
        let mut ips = self.inner.hosts.borrow_mut().as_mut()?.get(name)?;
        ips.sort_by_key(IpAddr::is_ipv6);
        Some(ips)
    }

    /// The names to ask for, as glibc orders them.
    fn candidates(&self, host: &str, name: &str) -> Vec<String> {
        let c = &self.inner.config;
        if host.ends_with('.') || c.search.is_empty() {
            return vec![name.to_owned()];
        }
        let searched = c.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= c.ndots {
            std::iter::once(name.to_owned()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_owned())).collect()
        }
    }

    /// One fully qualified name: from the cache, or from the nameservers.
    async fn lookup_name(&self, host: &str, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let now = Instant::now();
        if let Some(e) = self.inner.cache.borrow().get(name) {
            if e.expires > now {
                return Ok(e.addrs.clone());
            }
        }
        let c = &self.inner.config;
        let mut done: Vec<Option<Outcome>> = vec![None; FAMILIES.len()];
        let mut last: Option<(SocketAddr, Failure)> = None;
        'rounds: for _ in 0..c.attempts {
            for &server in &c.nameservers {
                let ask: Vec<Family> = FAMILIES
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| d.is_none())
                    .map(|(f, _)| *f)
                    .collect();
                let outcomes = query::exchange(server, name, &ask, c.timeout).await;
                for (family, outcome) in ask.iter().zip(outcomes) {
                    let i = FAMILIES.iter().position(|f| f == family).unwrap_or(0);
                    match outcome {
                        Outcome::Failed(f) => last = Some((server, f)),
                        Outcome::NxDomain => {
                            return Err(LookupError {
                                host: host.to_owned(),
                                kind: ErrorKind::NotFound,
                                nameserver: Some(server),
                                detail: format!("{name} does not exist (NXDOMAIN)"),
                            });
                        }
                        o => done[i] = Some(o),
                    }
                }
                // Done when every family is answered, or when one has addresses: a family
                // a server leaves unanswered (some drop AAAA) does not hold the connect
                // for every remaining timeout.
                let any_addrs = done
                    .iter()
                    .flatten()
                    .any(|o| matches!(o, Outcome::Addrs(..)));
                if any_addrs || done.iter().all(Option::is_some) {
                    break 'rounds;
                }
            }
        }
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        for o in done.iter().flatten() {
            if let Outcome::Addrs(a, t) = o {
                addrs.extend_from_slice(a);
                ttl = ttl.min(*t);
            }
        }
        if !addrs.is_empty() {
            self.store(name, &addrs, ttl);
            return Ok(addrs);
        }
        if done.iter().all(Option::is_some) {
            return Err(LookupError {
                host: host.to_owned(),
                kind: ErrorKind::NotFound,
                nameserver: last.map(|(s, _)| s).or(c.nameservers.first().copied()),
                detail: format!("{name} has no A or AAAA record"),
            });
        }
        let (server, failure) = match last {
            Some(l) => l,
            None => (
                c.nameservers[0],
                Failure::Timeout {
                    after: c.timeout,
                    ignored: 0,
                },
            ),
        };
        let tries = format!(
            "{} nameserver(s), {} attempt(s) of {:?} each",
            c.nameservers.len(),
            c.attempts,
            c.timeout
        );
        let (kind, detail) = match failure {
            Failure::Timeout { after, ignored } => (
                ErrorKind::Timeout,
                format!(
                    "no answer for {name} within {after:?}{} ({tries})",
                    if ignored > 0 {
                        format!(" ({ignored} datagram(s) with a wrong id ignored)")
                    } else {
                        String::new()
                    }
                ),
            ),
            Failure::Rcode(rcode) => (
                ErrorKind::ServerFailure,
                format!("the nameserver answered {rcode} for {name} ({tries})"),
            ),
            Failure::Garbage(what) => (
                ErrorKind::Garbage,
                format!("the nameserver sent {what} for {name} ({tries})"),
            ),
            Failure::Truncated(why) => (
                ErrorKind::Truncated,
                format!("the answer for {name} was truncated, and asking over TCP failed: {why} ({tries})"),
            ),
            Failure::Io(kind, e) => (
                ErrorKind::Io(kind),
                format!("asking about {name} failed: {e} ({tries})"),
            ),
        };
        Err(LookupError {
            host: host.to_owned(),
            kind,
            nameserver: Some(server),
            detail,
        })
    }

    fn store(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let keep = Duration::from_secs(u64::from(ttl)).min(self.inner.config.max_ttl);
        if keep.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.inner.cache.borrow_mut();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            name.to_owned(),
            CacheEntry {
                addrs: addrs.to_vec(),
                expires: now + keep,
            },
        );
    }
}

/// A file's modification time and size, to tell when it changed.
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// This thread's resolver, and the resolv.conf it was made from (`None`: set explicitly).
type Current = (Resolver, Option<(PathBuf, Stamp)>);

thread_local! {
    static DEFAULT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// This thread's resolver: the one given to [`set_resolver`], or one made from the system's
/// configuration ([`ResolverConfig::system`]), made again (with an empty cache) when
/// [`RESOLV_CONF`] changes (one `stat` per call).
pub fn resolver() -> Resolver {
    current_from(Path::new(RESOLV_CONF))
}

fn current_from(conf: &Path) -> Resolver {
    DEFAULT.with(|d| {
        let mut d = d.borrow_mut();
        let now = stamp(conf);
        match &*d {
            Some((r, None)) => return r.clone(),
            Some((r, Some((path, was)))) if path == conf && *was == now => return r.clone(),
            _ => {}
        }
        let text = std::fs::read_to_string(conf).unwrap_or_default();
        let r = Resolver::new(ResolverConfig::from_resolv_conf(&text));
        *d = Some((r.clone(), Some((conf.to_owned(), now))));
        r
    })
}

/// Makes `resolver` this thread's resolver (for [`lookup`] and everything built on it, such
/// as a database driver's connects on this reactor), in place of the system's, whatever
/// resolv.conf says later. Tests use it to name their nameserver.
pub fn set_resolver(resolver: Resolver) {
    DEFAULT.with(|d| *d.borrow_mut() = Some((resolver, None)));
}

/// Resolves `host` with this thread's [`resolver`]: the addresses with `port`, IPv4 first.
pub async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, LookupError> {
    resolver().lookup(host, port).await
}

/// Why a lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The host is not a valid name.
    InvalidName,
    /// The configuration names no nameserver.
    NoNameservers,
    /// NXDOMAIN, or no A/AAAA record for any name tried.
    NotFound,
    /// No nameserver answered in time.
    Timeout,
    /// A nameserver answered SERVFAIL, REFUSED or another error rcode.
    ServerFailure,
    /// A nameserver answered something that is not a DNS answer to our question.
    Garbage,
    /// The UDP answer was truncated and asking again over TCP failed.
    Truncated,
    /// The socket failed (`ConnectionRefused`: nothing listens on the nameserver's port).
    Io(io::ErrorKind),
}

/// A failed lookup: the host, the nameserver last asked (if any) and the cause.
#[derive(Debug, Clone)]
pub struct LookupError {
    host: String,
    kind: ErrorKind,
    nameserver: Option<SocketAddr>,
    detail: String,
}

impl LookupError {
    /// The host name looked up.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The nameserver whose answer (or silence) decided the failure.
    pub fn nameserver(&self) -> Option<SocketAddr> {
        self.nameserver
    }
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resolving host {:?}: ", self.host)?;
        if let Some(ns) = self.nameserver {
            write!(f, "nameserver {ns}: ")?;
        }
        f.write_str(&self.detail)
    }
}

impl std::error::Error for LookupError {}

impl From<LookupError> for io::Error {
    fn from(e: LookupError) -> io::Error {
        let kind = match e.kind {
            ErrorKind::InvalidName => io::ErrorKind::InvalidInput,
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Garbage | ErrorKind::Truncated => io::ErrorKind::InvalidData,
            ErrorKind::Io(k) => k,
            ErrorKind::NoNameservers | ErrorKind::ServerFailure => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_resolver_is_made_again_when_resolv_conf_changes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let conf = dir.path().join("resolv.conf");
        let write = |text: &str| std::fs::write(&conf, text).unwrap_or_else(|e| panic!("{e}"));
        write("nameserver 10.0.0.1\n");
        let first = current_from(&conf);
        assert_eq!(
            first.config().get_nameservers()[0].to_string(),
            "10.0.0.1:53"
        );
        assert!(
            Rc::ptr_eq(&first.inner, &current_from(&conf).inner),
            "unchanged: kept"
        );
        write("nameserver 10.0.0.22\noptions timeout:1\n");
        let second = current_from(&conf);
        assert_eq!(
            second.config().get_nameservers()[0].to_string(),
            "10.0.0.22:53"
        );
        assert_eq!(second.config().get_timeout(), Duration::from_secs(1));
        // Set explicitly: kept whatever the file does.
        set_resolver(first.clone());
        write("nameserver 10.0.0.3\n");
        assert!(Rc::ptr_eq(&first.inner, &current_from(&conf).inner));
    }
}
