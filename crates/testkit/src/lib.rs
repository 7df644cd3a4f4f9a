//! Test support: throwaway PostgreSQL clusters and scripted fake servers.
//!
//! * [`Cluster`] — a real PostgreSQL server in a temp directory, on a free loopback port and
//!   a private Unix socket, with a test role using the [`Auth`] method you pick. It can be
//!   stopped, restarted, crashed, frozen and thawed, and its backends terminated, so driver
//!   tests can pin the failure contract against the real thing. It is cleaned up on drop,
//!   and by a watchdog process if the test process dies first.
//! * [`shared_cluster`] — one trust-auth cluster per test binary, for tests that only query.
//! * [`FakeServer`] — a loopback listener that plays a [`Step`] script to each client, with
//!   byte builders for [`backend`] and [`frontend`] messages, for protocol-abuse tests.
//! * [`FakeTlsServer`] — the same over TLS (rustls): answers SSLRequest or a direct
//!   ClientHello as a [`TlsScript`] says, misbehaves where a real server will not (`N`,
//!   plaintext after `S`, fatal alerts, truncated records, garbage, ALPN refusal), and
//!   records what the client offered (SNI, ALPN, client certificate).
//! * [`tls`] — test certificates made at run time (CA, good and bad server certificates,
//!   client certificate, encrypted client key); [`ClusterBuilder::tls`] starts a real
//!   server with them.
//! * [`FlakyProxy`] — a loopback TCP proxy in front of a server whose port can go down
//!   (refused, every relayed connection cut) and come back on the same port: a flapping
//!   server.
//! * [`FakeDns`] — a DNS server on loopback UDP whose answers (name → addresses, TTL) can be
//!   changed mid-run, and which can be told to stay silent or answer garbage ([`DnsMode`]).
//!
//! The clusters live in the `pg-throwaway` crate (so non-test binaries such as the playground
//! can use them); this crate re-exports that API unchanged and adds the per-binary
//! [`shared_cluster`] and the fake servers.
//!
//! Server binaries are found via `$PG_BIN`, `pg_config --bindir`, `$PATH`, or
//! `/usr/lib/postgresql/*/bin`. When the tests run as root, the server runs as the
//! `postgres` OS user.
//!
//! ```no_run
//! let cluster = testkit::shared_cluster();
//! assert_eq!(cluster.psql("SELECT 1").unwrap(), "1");
//! println!("connect to {}", cluster.url());
//! ```

#![warn(missing_docs)]

mod dns;
mod fake;
mod proxy;

use std::sync::OnceLock;

pub use dns::{DnsMode, FakeDns};
pub use fake::messages::{backend, frontend};
pub use fake::tls::{
    AfterHandshake, Alpn, ClientCertPolicy, FakeTlsServer, Negotiation, SslReply, TlsConnectionLog,
    TlsScript, TlsVersion, ALPN_POSTGRESQL,
};
pub use fake::{ConnectionLog, FakeServer, Step};
pub use pg_throwaway::tls::{self, KeyAlgorithm, ServerCert, TlsFiles, TlsSetup};
pub use pg_throwaway::{
    process_alive, server_bin_dir, Auth, Cluster, ClusterBuilder, Error, ErrorKind, PgBouncer,
    PgBouncerBuilder, Result, DEFAULT_DIR_PREFIX, SUPERUSER,
};
pub use proxy::FlakyProxy;

/// One trust-auth cluster with the default role and database, started on first use and
/// shared by every test in this test binary.
///
/// It is never dropped (it lives in a `static`); the watchdog stops it and deletes its
/// directory when the test process exits. Tests that stop, crash, freeze or reconfigure a
/// server must build their own [`Cluster`] instead.
///
/// # Panics
/// If the cluster cannot be started (e.g. PostgreSQL is not installed); the message says
/// why. Every test using it fails with the same message.
pub fn shared_cluster() -> &'static Cluster {
    static SHARED: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| Cluster::new().map_err(|e| e.to_string())) {
        Ok(cluster) => cluster,
        Err(message) => panic!("testkit::shared_cluster could not start: {message}"),
    }
}
