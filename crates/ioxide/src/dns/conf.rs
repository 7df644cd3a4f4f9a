//! The system files: `/etc/resolv.conf` (nameservers, `search`, `options`) and `/etc/hosts`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::ResolverConfig;

/// The most nameservers a resolv.conf contributes (glibc's `MAXNS`).
const MAX_NAMESERVERS: usize = 3;

/// Parses the text of a resolv.conf the way glibc reads it: `nameserver` lines (at most
/// three, port 53), the last of `search`/`domain`, and `options ndots: timeout: attempts:`
/// (capped as glibc caps them). Unknown lines and options are ignored.
pub(super) fn parse_resolv_conf(text: &str) -> ResolverConfig {
    let mut c = ResolverConfig::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(ip) = words.next().and_then(parse_ip) else {
                    continue;
                };
                if c.nameservers.len() < MAX_NAMESERVERS {
                    c.nameservers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") => c.search = words.map(normalize).collect(),
            Some("domain") => c.search = words.next().map(normalize).into_iter().collect(),
            Some("options") => {
                for opt in words {
                    let Some((key, value)) = opt.split_once(':') else {
                        continue;
                    };
                    let Ok(n) = value.parse::<u32>() else {
                        continue;
                    };
                    match key {
                        "ndots" => c.ndots = n.min(15) as usize,
                        "timeout" => c.timeout = Duration::from_secs(u64::from(n.clamp(1, 30))),
                        "attempts" => c.attempts = n.clamp(1, 5),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if c.nameservers.is_empty() {
        // glibc's default when the file names none: a resolver on this host.
        c.nameservers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
    }
    c.search.retain(|d| !d.is_empty());
    c
}

/// An IP literal, without an IPv6 zone (`fe80::1%eth0` is not supported: skipped).
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// Lower case, without the trailing dot.
pub(super) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Parses a hosts file: `address name [aliases…]` per line, `#` comments; a name maps to
/// every address given for it, in file order.
pub(super) fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(parse_ip) else {
            continue;
        };
        for name in words {
            let ips = map.entry(normalize(name)).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    map
}

/// A hosts file, re-read when its modification time or size changes (one `stat` per lookup).
#[derive(Debug)]
pub(super) struct HostsFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    map: HashMap<String, Vec<IpAddr>>,
}

impl HostsFile {
    pub(super) fn new(path: &Path) -> HostsFile {
        HostsFile {
            path: path.to_owned(),
            stamp: None,
            map: HashMap::new(),
        }
    }

    /// The addresses the file gives `name` (normalised), re-reading it if it changed. A
    /// missing or unreadable file has no entries.
    pub(super) fn get(&mut self, name: &str) -> Option<Vec<IpAddr>> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp != self.stamp || stamp.is_none() {
            self.map = match std::fs::read_to_string(&self.path) {
                Ok(text) => parse_hosts(&text),
                Err(_) => HashMap::new(),
            };
            self.stamp = stamp;
        }
        self.map.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_glibc_reads_it() {
        let c = parse_resolv_conf(
            "# comment\nnameserver 10.0.0.1\nnameserver ::1 ; trailing\nnameserver bogus\n\
             nameserver 10.0.0.2\nnameserver 10.0.0.3\ndomain old.example\n\
             search Corp.Example. lab.example\noptions ndots:2 timeout:3 attempts:9 rotate\n",
        );
        let ns: Vec<String> = c.nameservers.iter().map(|a| a.to_string()).collect();
        assert_eq!(ns, ["10.0.0.1:53", "[::1]:53", "10.0.0.2:53"]);
        assert_eq!(c.search, ["corp.example", "lab.example"]);
        assert_eq!(c.ndots, 2);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.attempts, 5);
    }

    #[test]
    fn empty_resolv_conf_means_localhost() {
        let c = parse_resolv_conf("");
        assert_eq!(c.nameservers, [SocketAddr::from(([127, 0, 0, 1], 53))]);
        assert_eq!((c.ndots, c.attempts), (1, 2));
        assert_eq!(c.timeout, Duration::from_secs(5));
    }

    #[test]
    fn hosts_lines_with_aliases_and_comments() {
        let m = parse_hosts(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost # v6\n# 10.0.0.9 gone\n\
             10.1.2.3 DB.example db\nnot-an-ip name\n",
        );
        assert_eq!(
            m["localhost"],
            [
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            ]
        );
        assert_eq!(m["db.example"], [IpAddr::from([10, 1, 2, 3])]);
        assert_eq!(m["db"], m["db.example"]);
        assert!(!m.contains_key("gone") && !m.contains_key("name"));
    }
}
