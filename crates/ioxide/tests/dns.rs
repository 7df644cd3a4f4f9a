//! The resolver against a loopback nameserver (testkit's `FakeDns`): hosts file, A and
//! AAAA, TTL-bounded cache, search list, NXDOMAIN, SERVFAIL, timeouts, garbage, wrong ids,
//! truncation (asked again over TCP), and a dead first nameserver. All traffic stays on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ioxide::dns::{ErrorKind, Resolver, ResolverConfig};
use testkit::{DnsMode, FakeDns};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(dns: &FakeDns) -> ResolverConfig {
    ResolverConfig::new()
        .nameserver(dns.addr())
        .hosts_file(None)
        .timeout(Duration::from_millis(300))
        .attempts(2)
}

#[test]
fn literals_need_no_nameserver() {
    ioxide::block_on(async {
        let r = Resolver::new(ResolverConfig::new().hosts_file(None));
        for (host, want) in [
            ("127.0.0.1", "127.0.0.1:5432"),
            ("::1", "[::1]:5432"),
            ("[::1]", "[::1]:5432"),
        ] {
            let got = r.lookup(host, 5432).await.unwrap();
            assert_eq!(got, [want.parse::<SocketAddr>().unwrap()], "{host}");
        }
        let e = r.lookup("db.test", 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoNameservers);
        let e = r.lookup("bad..name", 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidName);
    });
}

#[test]
fn hosts_file_first_and_reread_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.7 db.test db # the database\n").unwrap();
    let dns = FakeDns::start().unwrap();
    dns.set("db.test", &[ip("127.0.0.9")], 60);
    dns.set("other.test", &[ip("127.0.0.8")], 60);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns).hosts_file(Some(&hosts)));
        assert_eq!(r.lookup_ip("DB.test.").await.unwrap(), [ip("127.0.0.7")]);
        assert_eq!(r.lookup_ip("db").await.unwrap(), [ip("127.0.0.7")]);
        assert_eq!(dns.queries(), 0, "the hosts file answered");
        assert_eq!(r.lookup_ip("other.test").await.unwrap(), [ip("127.0.0.8")]);
        std::fs::write(&hosts, "::1 db.test\n127.0.0.17 db.test\n").unwrap();
        assert_eq!(
            r.lookup_ip("db.test").await.unwrap(),
            [ip("127.0.0.17"), ip("::1")]
        );
    });
}

#[test]
fn a_and_aaaa_together_ipv4_first() {
    let dns = FakeDns::start().unwrap();
    dns.set(
        "both.test",
        &[ip("::1"), ip("127.0.0.2"), ip("127.0.0.3")],
        60,
    );
    dns.set("six.test", &[ip("::1")], 60);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns));
        let got = r.lookup("both.test", 6432).await.unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.2:6432", "127.0.0.3:6432", "[::1]:6432"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            dns.queries_for("both.test"),
            2,
            "one A and one AAAA question"
        );
        assert_eq!(r.lookup_ip("six.test").await.unwrap(), [ip("::1")]);
    });
}

#[test]
fn cache_is_bounded_by_the_ttl() {
    let dns = FakeDns::start().unwrap();
    dns.set("moving.test", &[ip("127.0.0.2")], 1);
    dns.set("nocache.test", &[ip("127.0.0.4")], 0);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns));
        assert_eq!(r.lookup_ip("moving.test").await.unwrap(), [ip("127.0.0.2")]);
        dns.set("moving.test", &[ip("127.0.0.3")], 1);
        let asked = dns.queries();
        assert_eq!(r.lookup_ip("moving.test").await.unwrap(), [ip("127.0.0.2")]);
        assert_eq!(dns.queries(), asked, "served from the cache within the TTL");
        ioxide::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(r.lookup_ip("moving.test").await.unwrap(), [ip("127.0.0.3")]);
        assert_eq!(dns.queries(), asked + 2, "asked again after the TTL");
        // TTL 0: never cached.
        for _ in 0..3 {
            assert_eq!(
                r.lookup_ip("nocache.test").await.unwrap(),
                [ip("127.0.0.4")]
            );
        }
        assert_eq!(dns.queries_for("nocache.test"), 6);
    });
}

#[test]
fn search_list_and_ndots() {
    let dns = FakeDns::start().unwrap();
    dns.set("db.corp.test", &[ip("127.0.0.5")], 60);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns).search(["lab.test", "corp.test"]));
        assert_eq!(r.lookup_ip("db").await.unwrap(), [ip("127.0.0.5")]);
        // A and AAAA go out together; the first NXDOMAIN ends the name, with no retry.
        assert_eq!(dns.queries_for("db.lab.test"), 2, "one exchange");
        assert_eq!(dns.queries_for("db"), 0, "found before the bare name");
        let e = r.lookup_ip("db.").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(
            dns.queries_for("db.lab.test"),
            2,
            "an absolute name is not searched"
        );
        assert_eq!(dns.queries_for("db"), 2);
    });
}

#[test]
fn nxdomain_names_host_and_nameserver() {
    let dns = FakeDns::start().unwrap();
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns));
        let e = r.lookup("missing.test", 5432).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.nameserver(), Some(dns.addr()));
        let msg = e.to_string();
        assert!(msg.contains("\"missing.test\""), "{msg}");
        assert!(msg.contains(&dns.addr().to_string()), "{msg}");
        assert!(msg.contains("NXDOMAIN"), "{msg}");
        assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::NotFound);
    });
}

#[test]
fn silent_nameserver_times_out_after_every_attempt() {
    let dns = FakeDns::start().unwrap();
    dns.set("db.test", &[ip("127.0.0.2")], 60);
    dns.set_mode(DnsMode::Silent);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns));
        let began = Instant::now();
        let e = r.lookup("db.test", 5432).await.unwrap_err();
        let took = began.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(took >= Duration::from_millis(550), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(dns.queries(), 4, "A and AAAA, two attempts");
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(
            msg.contains("no answer") && msg.contains(&dns.addr().to_string()),
            "{msg}"
        );
    });
}

#[test]
fn garbage_servfail_and_wrong_id_are_named() {
    let dns = FakeDns::start().unwrap();
    dns.set("db.test", &[ip("127.0.0.2")], 60);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns));
        for (mode, kind, words, max) in [
            (DnsMode::Garbage, ErrorKind::Garbage, "unparseable", 300),
            (DnsMode::ServFail, ErrorKind::ServerFailure, "SERVFAIL", 300),
            (
                DnsMode::WrongId,
                ErrorKind::Timeout,
                "wrong id ignored",
                2000,
            ),
        ] {
            dns.set_mode(mode);
            let began = Instant::now();
            let e = r.lookup("db.test", 5432).await.unwrap_err();
            let took = began.elapsed();
            assert_eq!(e.kind(), kind, "{mode:?}: {e}");
            assert!(e.to_string().contains(words), "{mode:?}: {e}");
            assert!(e.to_string().contains("\"db.test\""), "{mode:?}: {e}");
            assert!(took < Duration::from_millis(max), "{mode:?} took {took:?}");
        }
        dns.set_mode(DnsMode::Answer);
        assert_eq!(r.lookup_ip("db.test").await.unwrap(), [ip("127.0.0.2")]);
    });
}

#[test]
fn an_unanswered_aaaa_does_not_hold_the_a_answer_for_every_attempt() {
    let dns = FakeDns::start().unwrap();
    dns.set("db.test", &[ip("127.0.0.2"), ip("::1")], 60);
    dns.set_mode(DnsMode::SilentAaaa);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns).attempts(3));
        let began = Instant::now();
        assert_eq!(r.lookup_ip("db.test").await.unwrap(), [ip("127.0.0.2")]);
        let took = began.elapsed();
        // One server timeout (300 ms) for the AAAA, not three.
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_millis(800), "{took:?}");
        assert_eq!(dns.queries(), 2);
    });
}

#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    let dns = FakeDns::start().unwrap();
    dns.set("big.test", &[ip("127.0.0.2"), ip("::1")], 60);
    dns.set_mode(DnsMode::Truncated);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns).max_ttl(Duration::ZERO));
        let got = r.lookup_ip("big.test").await.unwrap();
        assert_eq!(got, [ip("127.0.0.2"), ip("::1")]);
        assert_eq!((dns.queries(), dns.tcp_queries()), (2, 2), "UDP, then TCP");

        dns.set_tcp(false);
        let began = Instant::now();
        let e = r.lookup_ip("big.test").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Truncated, "{e}");
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(msg.contains("truncated") && msg.contains("TCP"), "{msg}");
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
    });
}

#[test]
fn next_nameserver_after_a_dead_or_silent_one() {
    let silent = FakeDns::start().unwrap();
    silent.set_mode(DnsMode::Silent);
    let good = FakeDns::start().unwrap();
    good.set("db.test", &[ip("127.0.0.2")], 60);
    // A port nothing listens on: the connected socket gets ECONNREFUSED.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    ioxide::block_on(async {
        let r = Resolver::new(
            ResolverConfig::new()
                .nameservers([dead_addr, silent.addr(), good.addr()])
                .hosts_file(None)
                .timeout(Duration::from_millis(200)),
        );
        let began = Instant::now();
        assert_eq!(r.lookup_ip("db.test").await.unwrap(), [ip("127.0.0.2")]);
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(silent.queries(), 2);

        let only_dead = Resolver::new(
            ResolverConfig::new()
                .nameserver(dead_addr)
                .hosts_file(None)
                .timeout(Duration::from_millis(200)),
        );
        let e = only_dead.lookup_ip("db.test").await.unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Io(std::io::ErrorKind::ConnectionRefused),
            "{e}"
        );
    });
}

#[test]
fn default_resolver_is_per_thread_and_settable() {
    let dns = FakeDns::start().unwrap();
    dns.set("db.test", &[ip("127.0.0.2")], 60);
    let cfg = config(&dns);
    ioxide::block_on(async move {
        ioxide::dns::set_resolver(Resolver::new(cfg));
        let got = ioxide::dns::lookup("db.test", 1).await.unwrap();
        assert_eq!(got, ["127.0.0.2:1".parse::<SocketAddr>().unwrap()]);
    });
}

#[test]
fn a_cached_answer_costs_no_io() {
    let dns = FakeDns::start().unwrap();
    dns.set("cached.test", &[ip("127.0.0.2")], 60);
    dns.set("uncached.test", &[ip("127.0.0.3")], 0);
    ioxide::block_on(async {
        let r = Resolver::new(config(&dns));
        r.lookup_ip("cached.test").await.unwrap();
        let n = 200;
        let began = Instant::now();
        for _ in 0..n {
            assert_eq!(r.lookup_ip("cached.test").await.unwrap(), [ip("127.0.0.2")]);
        }
        let cached = began.elapsed() / n;
        let began = Instant::now();
        for _ in 0..n {
            assert_eq!(
                r.lookup_ip("uncached.test").await.unwrap(),
                [ip("127.0.0.3")]
            );
        }
        let uncached = began.elapsed() / n;
        eprintln!("per lookup: cached {cached:?}, asked (A+AAAA over loopback UDP) {uncached:?}");
        assert_eq!(dns.queries_for("cached.test"), 2);
        assert_eq!(dns.queries_for("uncached.test"), 2 * n as usize);
        assert!(
            cached * 5 < uncached,
            "cached {cached:?}, uncached {uncached:?}"
        );
    });
}
