//! Shared helpers for the driver's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use ioxide_pg::PgOptions;
use testkit::Cluster;

/// Options for a cluster's test user over TCP.
pub fn opts_for(c: &Cluster) -> PgOptions {
    PgOptions::new()
        .host(c.host())
        .port(c.port())
        .user(c.user())
        .password(c.password())
        .database(c.database())
        .application_name("ioxide-pg-tests")
}

/// Options for the shared cluster.
pub fn opts() -> PgOptions {
    opts_for(testkit::shared_cluster())
}

/// Local ports of client-side ESTABLISHED TCP sockets to `port` on loopback.
pub fn established_to(port: u16) -> Vec<u16> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.split(':').nth(1))
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && f.get(3) == Some(&"01")
        })
        .filter_map(|l| {
            let local = l.split_whitespace().nth(1)?;
            u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
        })
        .collect()
}
