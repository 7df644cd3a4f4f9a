//! Host lists, libpq's way: `host`, `hostaddr` and `port` lists, `target_session_attrs`
//! and `load_balance_hosts`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::{Host, PgOptions};
use crate::PgError;

/// The libpq environment variables of host lists, with the keys they set.
pub(super) const ENV_VARS: [(&str, &str); 3] = [
    ("PGHOSTADDR", "hostaddr"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
];

/// Which server a connect accepts (libpq's `target_session_attrs`, variable
/// `PGTARGETSESSIONATTRS`). Checked after authentication on each host of the list in turn;
/// a host that does not fit is closed and the next one tried.
///
/// The check reads the `in_hot_standby` and `default_transaction_read_only` parameters the
/// server reports at startup (PostgreSQL 14+), and asks `SELECT pg_is_in_recovery()` /
/// `SHOW transaction_read_only` of an older server, as libpq 14+ does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server (the default): no check.
    #[default]
    Any,
    /// A session that accepts writes: not a standby, `default_transaction_read_only` off.
    ReadWrite,
    /// A read-only session: a standby, or `default_transaction_read_only` on.
    ReadOnly,
    /// A server that is not in recovery (not a standby).
    Primary,
    /// A server in recovery (a hot standby).
    Standby,
    /// A standby if any host is one; otherwise any host (a second pass over the list).
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The libpq spelling (`read-write`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = PgError;

    fn from_str(s: &str) -> Result<Self, PgError> {
        Ok(match s.trim() {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => {
                return Err(PgError::config(
                    "target_session_attrs",
                    Some(s),
                    "must be any, read-write, read-only, primary, standby or prefer-standby",
                ))
            }
        })
    }
}

/// The order hosts are tried in (libpq's `load_balance_hosts`, variable
/// `PGLOADBALANCEHOSTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LoadBalanceHosts {
    /// In the order given (the default).
    #[default]
    Disable,
    /// In a random order, drawn anew for every connect (every pooled connect too), so
    /// connections spread over the hosts. (libpq also shuffles each host's addresses; a
    /// resolved name here keeps its addresses in the resolver's order.)
    Random,
}

impl FromStr for LoadBalanceHosts {
    type Err = PgError;

    fn from_str(s: &str) -> Result<Self, PgError> {
        match s.trim() {
            "disable" => Ok(LoadBalanceHosts::Disable),
            "random" => Ok(LoadBalanceHosts::Random),
            _ => Err(PgError::config(
                "load_balance_hosts",
                Some(s),
                "must be disable or random",
            )),
        }
    }
}

/// One host of the list, with its port and `hostaddr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEntry {
    pub(crate) host: Host,
    pub(crate) port: u16,
    pub(crate) hostaddr: Option<IpAddr>,
}

impl HostEntry {
    /// `host:port` (`[v6]:port`, `/dir:port`), for errors and logs.
    pub(crate) fn label(&self) -> String {
        let name = match (&self.host, self.hostaddr) {
            (Host::Tcp(h), Some(a)) if h.as_str() != a.to_string() => format!("{h} ({a})"),
            (Host::Tcp(h), _) if h.contains(':') => format!("[{h}]"),
            (Host::Tcp(h), _) => h.clone(),
            (Host::Unix(d), _) => d.display().to_string(),
        };
        format!("{name}:{}", self.port)
    }
}

/// One element of a host list: an IPv6 literal loses its brackets; a path is a Unix
/// socket directory. (An empty element stays empty: validation refuses it.)
pub(super) fn parse_host(h: &str) -> Host {
    let h = h.trim();
    if h.starts_with('/') {
        return Host::Unix(PathBuf::from(h));
    }
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    Host::Tcp(h.to_owned())
}

/// A comma-separated port list; an empty element of a list is 5432. Errors quote no
/// element (the value may follow a password in a conninfo string).
pub(super) fn parse_ports(value: &str) -> Result<Vec<u16>, String> {
    if !value.contains(',') {
        return value
            .trim()
            .parse::<u16>()
            .map(|p| vec![p])
            .map_err(|e| e.to_string());
    }
    value
        .split(',')
        .enumerate()
        .map(|(i, p)| {
            let p = p.trim();
            if p.is_empty() {
                Ok(5432)
            } else {
                p.parse::<u16>()
                    .map_err(|e| format!("port {} of the list: {e}", i + 1))
            }
        })
        .collect()
}

/// A comma-separated `hostaddr` list of IP literals.
pub(super) fn parse_hostaddrs(value: &str) -> Result<Vec<IpAddr>, String> {
    value
        .split(',')
        .enumerate()
        .map(|(i, a)| {
            a.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("address {} of the list is not a numeric IP address", i + 1))
        })
        .collect()
}

/// A URL authority's host part that lists several hosts (`a:5432,[::1]:5433,%2Ftmp`):
/// the hosts (percent-decoded) and ports (`None`: the element has none).
pub(super) fn split_url_hosts(list: &str) -> Result<Vec<(String, Option<u16>)>, PgError> {
    list.split(',')
        .map(|el| {
            let (host, port) = if let Some(rest) = el.strip_prefix('[') {
                let (h, after) = rest.split_once(']').ok_or_else(|| {
                    PgError::config("host", None, "unterminated [ in an IPv6 host of the URL")
                })?;
                (h, after.strip_prefix(':'))
            } else {
                match el.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (el, None),
                }
            };
            let host = super::parse::percent_decode(host, "host")?;
            let port = match port.filter(|p| !p.is_empty()) {
                Some(p) => Some(p.parse::<u16>().map_err(|e| {
                    PgError::config("port", Some(p), format!("bad port in the URL: {e}"))
                })?),
                None => None,
            };
            Ok((host, port))
        })
        .collect()
}

/// If the URL's authority lists several hosts, returns the URL with that list replaced by
/// one placeholder host, and the list.
pub(super) fn take_url_host_list(url: &str) -> Result<Option<(String, &str)>, PgError> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Ok(None);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hosts = &authority[host_start..];
    if !hosts.contains(',') {
        return Ok(None);
    }
    let at = scheme_end + host_start;
    let end = scheme_end + authority_end;
    Ok(Some((
        format!("{}multihost{}", &url[..at], &url[end..]),
        hosts,
    )))
}

/// A small random generator for `load_balance_hosts=random` (seeded from the standard
/// library's per-process random hash keys and a counter).
pub(crate) fn shuffle<T>(items: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let mut x = STATE.with(|s| {
        let mut v = s.get();
        if v == 0 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(
                std::time::UNIX_EPOCH
                    .elapsed()
                    .map_or(1, |d| d.as_nanos() as u64),
            );
            v = h.finish() | 1;
        }
        v
    });
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
    STATE.with(|s| s.set(x));
}

impl PgOptions {
    /// Several hosts, tried in order (or shuffled, see
    /// [`load_balance_hosts`](PgOptions::load_balance_hosts)) until one accepts the
    /// connection and fits [`target_session_attrs`](PgOptions::target_session_attrs), as
    /// libpq's `host=a,b,c`. Each is a name, an IP literal (`[::1]` brackets are stripped)
    /// or a Unix socket directory; [`port`](PgOptions::port) applies to all of them, or
    /// [`ports`](PgOptions::ports) gives one per host. [`host`](PgOptions::host) with
    /// commas does the same.
    pub fn hosts<I, S>(mut self, hosts: I) -> PgOptions
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<Host> = hosts.into_iter().map(|h| parse_host(h.as_ref())).collect();
        if !list.is_empty() {
            self.hosts = list;
        }
        self.host_set = true;
        self
    }

    /// One port per host of the list (a single port applies to every host), as libpq's
    /// `port=5432,5433`. Validation refuses a count that matches neither.
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> PgOptions {
        let list: Vec<u16> = ports.into_iter().collect();
        if !list.is_empty() {
            self.ports = list;
        }
        self
    }

    /// libpq's `hostaddr` (variable `PGHOSTADDR`): the numeric address of each host,
    /// connected to instead of resolving its name (the name still serves TLS verification
    /// and the password file). Without `host`, the addresses are the hosts. One per host.
    pub fn hostaddrs(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> PgOptions {
        self.hostaddrs = addrs.into_iter().collect();
        if !self.host_set && !self.hostaddrs.is_empty() {
            self.hosts = self
                .hostaddrs
                .iter()
                .map(|a| Host::Tcp(a.to_string()))
                .collect();
        }
        self
    }

    /// libpq's `target_session_attrs` (key `target_session_attrs`, variable
    /// `PGTARGETSESSIONATTRS`): which server a connect accepts; see [`TargetSessionAttrs`].
    /// Pools apply it to every connect, so after a failover new connections land on the
    /// server that now fits. Default `any`.
    pub fn target_session_attrs(mut self, attrs: TargetSessionAttrs) -> PgOptions {
        self.target_session_attrs = attrs;
        self
    }

    /// libpq's `load_balance_hosts` (key `load_balance_hosts`, variable
    /// `PGLOADBALANCEHOSTS`): try the hosts in order or shuffled per connect; see
    /// [`LoadBalanceHosts`]. Default `disable`.
    pub fn load_balance_hosts(mut self, mode: LoadBalanceHosts) -> PgOptions {
        self.load_balance_hosts = mode;
        self
    }

    /// Every host of the list (at least one).
    pub fn get_hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The port list: one port for every host, or one per host.
    pub fn get_ports(&self) -> &[u16] {
        &self.ports
    }

    /// The `hostaddr` list (empty: none).
    pub fn get_hostaddrs(&self) -> &[IpAddr] {
        &self.hostaddrs
    }

    /// The `target_session_attrs` in force.
    pub fn get_target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// The `load_balance_hosts` in force.
    pub fn get_load_balance_hosts(&self) -> LoadBalanceHosts {
        self.load_balance_hosts
    }

    /// Applies the host-list keys; `Ok(false)`: not one of them.
    pub(super) fn apply_hosts(
        &mut self,
        key: &str,
        value: &str,
        label: &str,
    ) -> Result<bool, PgError> {
        let bad = |msg: String| PgError::config(label, Some(value), msg);
        match key {
            "host" => {
                self.hosts = value.split(',').map(parse_host).collect();
                self.host_set = true;
            }
            "hostaddr" if value.trim().is_empty() => self.hostaddrs.clear(),
            "hostaddr" => {
                self.hostaddrs = parse_hostaddrs(value).map_err(bad)?;
                if !self.host_set {
                    self.hosts = self
                        .hostaddrs
                        .iter()
                        .map(|a| Host::Tcp(a.to_string()))
                        .collect();
                }
            }
            "port" => self.ports = parse_ports(value).map_err(bad)?,
            "target_session_attrs" => {
                self.target_session_attrs = value.parse().map_err(|_| {
                    bad("must be any, read-write, read-only, primary, standby or \
                         prefer-standby"
                        .to_owned())
                })?
            }
            "load_balance_hosts" => {
                self.load_balance_hosts = value
                    .parse()
                    .map_err(|_| bad("must be disable or random".to_owned()))?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The host list as entries, each with its port and `hostaddr`. Call after
    /// [`validate_hosts`](Self::validate_hosts).
    pub(crate) fn host_entries(&self) -> Vec<HostEntry> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, host)| HostEntry {
                host: host.clone(),
                port: *self.ports.get(i).or(self.ports.first()).unwrap_or(&5432),
                hostaddr: self.hostaddrs.get(i).copied(),
            })
            .collect()
    }

    /// These options for one host of the list: what one attempt connects with (its name
    /// for TLS and the password file, its port).
    pub(crate) fn for_entry(&self, e: &HostEntry) -> PgOptions {
        let mut one = self.clone();
        one.hosts = vec![e.host.clone()];
        one.ports = vec![e.port];
        one.hostaddrs = e.hostaddr.into_iter().collect();
        one
    }

    /// The host-list checks of `validate`: non-empty hosts, non-zero ports, and counts
    /// that match.
    pub(super) fn validate_hosts(&self) -> Result<(), PgError> {
        for h in &self.hosts {
            if let Host::Tcp(h) = h {
                if h.is_empty() {
                    return Err(PgError::config("host", None, "empty"));
                }
            }
        }
        if self.ports.contains(&0) {
            return Err(PgError::config("port", Some("0"), "must be 1..=65535"));
        }
        let n = self.hosts.len();
        if self.ports.len() != 1 && self.ports.len() != n {
            return Err(PgError::config(
                "port",
                None,
                format!(
                    "port lists {} ports but host lists {n} hosts: give one port for all \
                     hosts or one per host",
                    self.ports.len()
                ),
            ));
        }
        if !self.hostaddrs.is_empty() && self.hostaddrs.len() != n {
            return Err(PgError::config(
                "hostaddr",
                None,
                format!(
                    "hostaddr lists {} addresses but host lists {n} hosts: give one per host",
                    self.hostaddrs.len()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_host_lists_split() {
        let taken = take_url_host_list("postgres://u:p@a:1,[::1]:2,%2Ftmp/db?x=1").ok();
        assert_eq!(
            taken,
            Some(Some((
                "postgres://u:p@multihost/db?x=1".to_owned(),
                "a:1,[::1]:2,%2Ftmp"
            )))
        );
        assert_eq!(
            split_url_hosts("a:1,[::1]:2,%2Ftmp").ok(),
            Some(vec![
                ("a".to_owned(), Some(1)),
                ("::1".to_owned(), Some(2)),
                ("/tmp".to_owned(), None)
            ])
        );
        assert_eq!(take_url_host_list("postgres://a:1/db").ok(), Some(None));
        assert!(split_url_hosts("a:x,b").is_err());
        assert!(split_url_hosts("[::1,b").is_err());
    }

    #[test]
    fn shuffle_permutes() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut v = [0, 1, 2];
            shuffle(&mut v);
            let mut s = v;
            s.sort();
            assert_eq!(s, [0, 1, 2]);
            seen.insert(v);
        }
        assert_eq!(seen.len(), 6, "every order of 3 appears in 200 draws");
    }
}
