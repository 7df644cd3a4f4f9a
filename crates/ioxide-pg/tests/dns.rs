//! Host names resolved on the ring (`ioxide::dns`) at every connect, against testkit's
//! loopback nameserver: a connection by name, a name that moves from one throwaway cluster
//! to another (new connections, the pool's included, follow within the TTL), and a
//! nameserver that never answers or answers garbage (a clear error within connect_timeout).
//! All traffic stays on 127.0.0.0/8: the two "hosts" are proxies on 127.0.0.2 and 127.0.0.3.
#![allow(clippy::unwrap_used)]

mod common;

use common::opts_for;
use ioxide::dns::{Resolver, ResolverConfig};
use ioxide::Reactor;
use ioxide_pg::{PgConnection, PgPool};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use testkit::{Cluster, DnsMode, FakeDns, FlakyProxy};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// This reactor thread's resolver asks only `dns`, with the system's default timeouts
/// (5 s, 2 attempts): connect_timeout must bound a lookup, not the resolver's own limits.
fn use_nameserver(dns: &FakeDns) {
    ioxide::dns::set_resolver(Resolver::new(
        ResolverConfig::new()
            .nameserver(dns.addr())
            .hosts_file(None),
    ));
}

async fn server_port(conn: &PgConnection) -> u16 {
    let r = conn.query("SHOW port").await.unwrap();
    r.value().unwrap().parse().unwrap()
}

#[test]
fn connect_by_name() {
    let cluster = testkit::shared_cluster();
    let dns = FakeDns::start().unwrap();
    dns.set("db.test", &[ip("127.0.0.1")], 60);
    ioxide::block_on(async {
        use_nameserver(&dns);
        let opts = opts_for(cluster).host("db.test");
        let conn = PgConnection::connect(&opts).await.unwrap();
        assert_eq!(conn.query("SELECT 42").await.unwrap().value(), Some("42"));
        assert_eq!(dns.queries_for("db.test"), 2, "one A and one AAAA question");
        // The second connect is served from the cache (TTL 60 s).
        let again = PgConnection::connect(&opts).await.unwrap();
        assert_eq!(server_port(&again).await, cluster.port());
        assert_eq!(dns.queries_for("db.test"), 2);

        let e = PgConnection::connect(&opts.clone().host("missing.test"))
            .await
            .unwrap_err();
        assert!(e.is_transport(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("\"missing.test\"") && msg.contains("NXDOMAIN"),
            "{msg}"
        );
        assert!(msg.contains(&dns.addr().to_string()), "{msg}");
    });
}

#[test]
fn silent_or_garbage_nameserver_fails_within_connect_timeout() {
    let cluster = testkit::shared_cluster();
    let dns = FakeDns::start().unwrap();
    dns.set("db.test", &[ip("127.0.0.1")], 60);
    ioxide::block_on(async {
        use_nameserver(&dns);
        let limit = Duration::from_millis(800);
        let opts = opts_for(cluster).host("db.test").connect_timeout(limit);

        dns.set_mode(DnsMode::Silent);
        let began = Instant::now();
        let e = PgConnection::connect(&opts).await.unwrap_err();
        let took = began.elapsed();
        assert!(e.is_timeout(), "{e}");
        assert!(
            took >= limit && took < limit + Duration::from_secs(1),
            "{took:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("\"db.test\"") && msg.contains("connect_timeout"),
            "{msg}"
        );
        assert!(msg.contains(&dns.addr().to_string()), "{msg}");

        dns.set_mode(DnsMode::Garbage);
        let began = Instant::now();
        let e = PgConnection::connect(&opts).await.unwrap_err();
        assert!(began.elapsed() < limit, "{:?}", began.elapsed());
        assert!(e.is_transport(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("\"db.test\"") && msg.contains("unparseable"),
            "{msg}"
        );

        // The pool's connects go through the same lookup: its error says why.
        let pool = PgPool::start(
            &Reactor::current(),
            opts.clone()
                .pool_size(1)
                .acquire_timeout(Duration::from_millis(1500)),
        )
        .unwrap();
        let e = pool.query("SELECT 1").await.unwrap_err();
        assert!(e.to_string().contains("db.test"), "{e}");

        dns.set_mode(DnsMode::Answer);
        let conn = PgConnection::connect(&opts).await.unwrap();
        assert_eq!(server_port(&conn).await, cluster.port());
    });
}

#[test]
fn a_name_that_moves_is_followed_within_its_ttl() {
    let a = Cluster::new().unwrap();
    let b = Cluster::new().unwrap();
    let loopback = |c: &Cluster| SocketAddr::from(([127, 0, 0, 1], c.port()));
    let mut proxy_a = FlakyProxy::start_on("127.0.0.2:0".parse().unwrap(), loopback(&a)).unwrap();
    let port = proxy_a.port();
    let _proxy_b =
        FlakyProxy::start_on(SocketAddr::from(([127, 0, 0, 3], port)), loopback(&b)).unwrap();
    let dns = FakeDns::start().unwrap();
    let ttl = 1;
    dns.set("db.test", &[ip("127.0.0.2")], ttl);
    ioxide::block_on(async {
        use_nameserver(&dns);
        let opts = opts_for(&a)
            .host("db.test")
            .port(port)
            .connect_timeout(Duration::from_secs(2));
        let pool = PgPool::start(&Reactor::current(), opts.clone().pool_size(2)).unwrap();
        let r = pool.query("SHOW port").await.unwrap();
        assert_eq!(r.value(), Some(a.port().to_string().as_str()));

        dns.set("db.test", &[ip("127.0.0.3")], ttl);
        let moved = Instant::now();
        // A new connection follows once the cached answer's TTL has run out.
        let conn = loop {
            let conn = PgConnection::connect(&opts).await.unwrap();
            if server_port(&conn).await == b.port() {
                break conn;
            }
            assert!(moved.elapsed() < Duration::from_secs(u64::from(ttl) + 1));
            ioxide::time::sleep(Duration::from_millis(50)).await;
        };
        let followed = moved.elapsed();
        assert!(
            followed <= Duration::from_millis(u64::from(ttl) * 1000 + 500),
            "{followed:?}"
        );
        eprintln!("a new connection followed the move after {followed:?} (TTL {ttl} s)");
        drop(conn);

        // The pool's replacements follow too: the old host goes away, and every connection
        // the pool makes after that is on the new one.
        proxy_a.down();
        let cut = Instant::now();
        let mut ports = Vec::new();
        while ports.len() < 20 {
            match pool.query("SHOW port").await {
                Ok(r) => ports.push(r.value().unwrap().parse::<u16>().unwrap()),
                Err(e) => assert!(cut.elapsed() < Duration::from_secs(10), "{e}"),
            }
        }
        assert!(
            ports.iter().all(|&p| p == b.port()),
            "{ports:?} (b is {})",
            b.port()
        );
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "{:?}",
            cut.elapsed()
        );
        eprintln!(
            "the pool served 20 queries from the new host {:?} after the old one went down",
            cut.elapsed()
        );
        assert!(
            dns.queries_for("db.test") >= 4,
            "looked up again: {}",
            dns.queries()
        );
    });
}

#[test]
fn ipv6_literals_and_aaaa_only_names() {
    let cluster = Cluster::builder()
        .setting("listen_addresses", "127.0.0.1,::1")
        .start()
        .unwrap();
    let dns = FakeDns::start().unwrap();
    dns.set("v6.test", &[ip("::1")], 60);
    ioxide::block_on(async {
        use_nameserver(&dns);
        for host in ["::1", "[::1]", "v6.test"] {
            let opts = opts_for(&cluster).host(host);
            let conn = PgConnection::connect(&opts).await.unwrap();
            let r = conn.query("SELECT inet_server_addr()").await.unwrap();
            assert_eq!(r.value(), Some("::1"), "{host}");
        }
        assert_eq!(dns.queries_for("v6.test"), 2);
    });
}
