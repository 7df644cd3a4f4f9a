//! Host names resolved on the ring, at every connect: the one place a [`PgOptions`] host
//! becomes a [`Target`] on a reactor.
//!
//! A Unix socket directory and an IP literal need no lookup. A host name is looked up with
//! the reactor thread's resolver ([`ioxide::dns::resolver`]: `/etc/hosts`, then A and AAAA
//! over UDP to the `/etc/resolv.conf` nameservers, as ring ops; answers cached for their
//! TTL), so a name that moves to another address is followed by the next connect once the
//! old answer's TTL has run out.

use std::io;
use std::net::IpAddr;

use crate::{PgError, TimeoutKind};

/// Looks `name` up on the current reactor, bounded by `limit` (the host's
/// `connect_timeout`). A lookup failure is a transport error (the pool retries it) that
/// names the host, the nameserver and the cause; a name that cannot be a host name is a
/// `host` config error.
pub(crate) async fn resolve_name(
    name: &str,
    port: u16,
    limit: Option<std::time::Duration>,
) -> Result<Vec<std::net::SocketAddr>, PgError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let resolver = ioxide::dns::resolver();
    let lookup = resolver.lookup(name, port);
    let found = match limit {
        Some(limit) => match ioxide::time::timeout(limit, lookup).await {
            Ok(r) => r,
            Err(_) => {
                let servers: Vec<String> = resolver
                    .config()
                    .get_nameservers()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                return Err(
                    PgError::timeout(TimeoutKind::Connect, limit).with_cause(format!(
                        "resolving host {name:?}: no answer from nameserver(s) {} within \
                         connect_timeout",
                        servers.join(", ")
                    )),
                );
            }
        },
        None => lookup.await,
    };
    match found {
        Ok(addrs) => Ok(addrs),
        Err(e) if e.kind() == ioxide::dns::ErrorKind::InvalidName => {
            Err(PgError::config("host", Some(name), e.to_string()))
        }
        Err(e) => Err(PgError::io("looking up option host", io::Error::from(e))),
    }
}
