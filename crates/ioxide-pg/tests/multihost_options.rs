//! Host lists in every form: code, URL, key=value, environment; target_session_attrs and
//! load_balance_hosts; mismatched counts.
#![allow(clippy::unwrap_used)]

mod common;

use common::env;
use ioxide_pg::{Host, LoadBalanceHosts, PgOptions, Target, TargetSessionAttrs};
use std::net::IpAddr;

fn tcp(h: &str) -> Host {
    Host::Tcp(h.to_owned())
}

#[test]
fn host_lists_in_code() {
    let o = PgOptions::new().host("a, b ,[::1]").port(6000);
    assert_eq!(o.get_hosts(), &[tcp("a"), tcp("b"), tcp("::1")]);
    assert_eq!(o.get_ports(), &[6000]);
    assert_eq!(o.get_host(), &tcp("a"));
    assert!(o.validate().is_ok());
    let o = PgOptions::new()
        .hosts(["127.0.0.1", "/run/postgresql"])
        .ports([5432, 5433])
        .target_session_attrs(TargetSessionAttrs::PreferStandby)
        .load_balance_hosts(LoadBalanceHosts::Random);
    assert_eq!(
        o.get_hosts(),
        &[tcp("127.0.0.1"), Host::Unix("/run/postgresql".into())]
    );
    assert_eq!(o.get_ports(), &[5432, 5433]);
    assert_eq!(
        o.get_target_session_attrs(),
        TargetSessionAttrs::PreferStandby
    );
    assert_eq!(o.get_load_balance_hosts(), LoadBalanceHosts::Random);
    assert_eq!(
        o.resolve_hosts().unwrap(),
        vec![
            Target::Tcp(vec!["127.0.0.1:5432".parse().unwrap()]),
            Target::Unix("/run/postgresql/.s.PGSQL.5433".into())
        ]
    );
    let e = o.resolve().unwrap_err();
    assert_eq!(e.config_field(), Some("host"));
    assert!(e.to_string().contains("resolve_hosts"), "{e}");
}

#[test]
fn host_lists_in_urls() {
    let o = PgOptions::from_url("postgres://u:pw@a:5432,b:5433,[::1]/db").unwrap();
    assert_eq!(o.get_hosts(), &[tcp("a"), tcp("b"), tcp("::1")]);
    assert_eq!(o.get_ports(), &[5432, 5433, 5432]);
    assert_eq!(o.get_user(), "u");
    assert_eq!(o.get_password(), Some("pw"));
    assert_eq!(o.get_database(), "db");
    let o: PgOptions =
        "postgresql://u@%2Ftmp:5433,127.0.0.1:5434/db?target_session_attrs=read-write"
            .parse()
            .unwrap();
    assert_eq!(
        o.get_hosts(),
        &[Host::Unix("/tmp".into()), tcp("127.0.0.1")]
    );
    assert_eq!(o.get_ports(), &[5433, 5434]);
    assert_eq!(o.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
    let o = PgOptions::from_url(
        "postgres:///db?host=a,b&port=1,2&load_balance_hosts=random&target_session_attrs=standby",
    )
    .unwrap();
    assert_eq!(o.get_hosts(), &[tcp("a"), tcp("b")]);
    assert_eq!(o.get_ports(), &[1, 2]);
    assert_eq!(o.get_load_balance_hosts(), LoadBalanceHosts::Random);
    assert_eq!(o.get_target_session_attrs(), TargetSessionAttrs::Standby);
    // A single-host URL is as before.
    let o = PgOptions::from_url("postgres://u@[::1]:7000/db").unwrap();
    assert_eq!(
        (o.get_hosts(), o.get_ports()),
        (&[tcp("::1")][..], &[7000][..])
    );
    let e = PgOptions::from_url("postgres://u@a:1,b:x/db").unwrap_err();
    assert_eq!(e.config_field(), Some("port"));
    let e = PgOptions::from_url("postgres:///db?host=a,b,c&port=1,2").unwrap_err();
    assert_eq!(e.config_field(), Some("port"));
    let msg = e.to_string();
    assert!(msg.contains("2 ports") && msg.contains("3 hosts"), "{msg}");
}

#[test]
fn host_lists_in_conninfo() {
    let o = PgOptions::from_conninfo(
        "host=a,/var/run/pg,10.0.0.1 port=5432 target_session_attrs=primary",
    )
    .unwrap();
    assert_eq!(
        o.get_hosts(),
        &[tcp("a"), Host::Unix("/var/run/pg".into()), tcp("10.0.0.1")]
    );
    assert_eq!(o.get_ports(), &[5432], "one port for every host");
    assert_eq!(o.get_target_session_attrs(), TargetSessionAttrs::Primary);
    let e = PgOptions::from_conninfo("host=a,b port=1,2,3").unwrap_err();
    assert_eq!(e.config_field(), Some("port"));
    let o = PgOptions::from_conninfo("host=db1,db2 hostaddr=10.0.0.1,10.0.0.2 port=1,2").unwrap();
    let want: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
    assert_eq!(o.get_hostaddrs(), &want[..]);
    assert_eq!(o.get_hosts(), &[tcp("db1"), tcp("db2")]);
    // hostaddr is connected to without resolving the name.
    assert_eq!(
        o.resolve_hosts().unwrap(),
        vec![
            Target::Tcp(vec!["10.0.0.1:1".parse().unwrap()]),
            Target::Tcp(vec!["10.0.0.2:2".parse().unwrap()])
        ]
    );
    // hostaddr alone names the hosts.
    let o = PgOptions::from_conninfo("hostaddr=127.0.0.1,::1 port=5").unwrap();
    assert_eq!(o.get_hosts(), &[tcp("127.0.0.1"), tcp("::1")]);
    let e = PgOptions::from_conninfo("host=a,b hostaddr=10.0.0.1").unwrap_err();
    assert_eq!(e.config_field(), Some("hostaddr"));
    let e = PgOptions::from_conninfo("hostaddr=db.example").unwrap_err();
    assert_eq!(e.config_field(), Some("hostaddr"));
    for (k, v) in [
        ("target_session_attrs", "writable"),
        ("load_balance_hosts", "roundrobin"),
    ] {
        let e = PgOptions::new().set(k, v).unwrap_err();
        assert_eq!(e.config_field(), Some(k));
        assert!(e.to_string().contains(v), "{e}");
    }
    for (s, want) in [
        ("any", TargetSessionAttrs::Any),
        ("read-write", TargetSessionAttrs::ReadWrite),
        ("read-only", TargetSessionAttrs::ReadOnly),
        ("primary", TargetSessionAttrs::Primary),
        ("standby", TargetSessionAttrs::Standby),
        ("prefer-standby", TargetSessionAttrs::PreferStandby),
    ] {
        let o = PgOptions::new().set("target_session_attrs", s).unwrap();
        assert_eq!(o.get_target_session_attrs(), want);
        assert_eq!(want.to_string(), s);
    }
}

#[test]
fn host_lists_from_the_environment() {
    let o = PgOptions::from_env_with(env(&[
        ("PGHOST", "a,b"),
        ("PGPORT", "5432,5433"),
        ("PGHOSTADDR", "127.0.0.1,127.0.0.2"),
        ("PGTARGETSESSIONATTRS", "read-only"),
        ("PGLOADBALANCEHOSTS", "random"),
    ]))
    .unwrap();
    assert_eq!(o.get_hosts(), &[tcp("a"), tcp("b")]);
    assert_eq!(o.get_ports(), &[5432, 5433]);
    assert_eq!(o.get_hostaddrs().len(), 2);
    assert_eq!(o.get_target_session_attrs(), TargetSessionAttrs::ReadOnly);
    assert_eq!(o.get_load_balance_hosts(), LoadBalanceHosts::Random);
    let e = PgOptions::from_env_with(env(&[("PGTARGETSESSIONATTRS", "x")])).unwrap_err();
    assert_eq!(e.config_field(), Some("PGTARGETSESSIONATTRS"));
    let e = PgOptions::from_env_with(env(&[("PGHOST", "a,b,c"), ("PGPORT", "1,2")])).unwrap_err();
    assert_eq!(e.config_field(), Some("port"));
}
