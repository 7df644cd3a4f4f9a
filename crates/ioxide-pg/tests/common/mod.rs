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
