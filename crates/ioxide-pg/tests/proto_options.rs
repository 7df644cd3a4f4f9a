//! `PgOptions`: builders, env, URL, conninfo, validation, resolution, redaction.
#![allow(clippy::unwrap_used)]

mod common;

use common::{env, err};
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ioxide_pg::{
    AuthMethod, ChannelBinding, Host, PgError, PgOptions, SslMode, SslNegotiation, Target,
};

#[test]
fn defaults_are_documented_values() {
    let o = PgOptions::from_env_with(env(&[("USER", "os_user")])).expect("defaults");
    assert_eq!(o.get_host(), &Host::Tcp("localhost".into()));
    assert_eq!(o.get_port(), 5432);
    assert_eq!(o.get_user(), "os_user");
    assert_eq!(o.get_database(), "os_user");
    assert_eq!(o.get_password(), None);
    assert_eq!(o.get_connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(o.get_command_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(o.get_max_message_bytes(), 64 << 20);
    assert_eq!(o.get_statement_cache_capacity(), 256);
    assert_eq!(o.get_pool_size(), 8);
    assert_eq!(o.get_pipeline_depth(), 8);
    assert_eq!(o.get_acquire_timeout(), Duration::from_secs(5));
    assert_eq!(o.get_reply_batch_window(), Duration::from_micros(150));
    assert_eq!(o.get_reply_gather_limit(), Duration::from_millis(1));
    assert!(o.get_require_auth().allows(AuthMethod::None));
    let o = PgOptions::from_env_with(env(&[])).expect("defaults");
    assert_eq!(o.get_user(), "postgres");
}

#[test]
fn libpq_environment_is_read() {
    let o = PgOptions::from_env_with(env(&[
        ("PGHOST", "db.internal"),
        ("PGPORT", "6432"),
        ("PGUSER", "app"),
        ("USER", "ignored"),
        ("PGPASSWORD", "s3cret"),
        ("PGDATABASE", "appdb"),
        ("PGAPPNAME", "svc"),
        ("PGCONNECT_TIMEOUT", "3"),
        ("PGREQUIREAUTH", "scram-sha-256"),
    ]))
    .expect("valid env");
    assert_eq!(o.get_host(), &Host::Tcp("db.internal".into()));
    assert_eq!(o.get_port(), 6432);
    assert_eq!(o.get_user(), "app");
    assert_eq!(o.get_password(), Some("s3cret"));
    assert_eq!(o.get_database(), "appdb");
    assert_eq!(o.get_application_name(), Some("svc"));
    assert_eq!(o.get_connect_timeout(), Some(Duration::from_secs(3)));
    assert!(!o.get_require_auth().allows(AuthMethod::Md5));
}

#[test]
fn database_url_wins_over_pg_variables() {
    let o = PgOptions::from_env_with(env(&[
        ("DATABASE_URL", "postgres://u:p@h:1234/d"),
        ("PGHOST", "other"),
        ("PGPORT", "9999"),
        ("PGPASSWORD", "other"),
    ]))
    .expect("valid");
    assert_eq!(o.get_host(), &Host::Tcp("h".into()));
    assert_eq!(
        (o.get_port(), o.get_user(), o.get_database()),
        (1234, "u", "d")
    );
    assert_eq!(o.get_password(), Some("p"));
}

#[test]
fn bad_env_value_names_the_variable() {
    let e = err(PgOptions::from_env_with(env(&[("PGPORT", "abc")])));
    assert_eq!(e, "invalid PGPORT \"abc\": invalid digit found in string");
    let e = err(PgOptions::from_env_with(env(&[(
        "PGCONNECT_TIMEOUT",
        "-1",
    )])));
    assert!(e.starts_with("invalid PGCONNECT_TIMEOUT \"-1\""), "{e}");
}

#[test]
fn url_with_everything() {
    let o = PgOptions::from_url(
        "postgresql://us%40er:p%40ss%20word@db.example:5433/my%2Fdb?application_name=web&connect_timeout=2.5&command_timeout=0&pool_size=3&statement_cache_capacity=0",
    )
    .expect("valid url");
    assert_eq!(o.get_user(), "us@er");
    assert_eq!(o.get_password(), Some("p@ss word"));
    assert_eq!(o.get_host(), &Host::Tcp("db.example".into()));
    assert_eq!(o.get_port(), 5433);
    assert_eq!(o.get_database(), "my/db");
    assert_eq!(o.get_application_name(), Some("web"));
    assert_eq!(o.get_connect_timeout(), Some(Duration::from_millis(2500)));
    assert_eq!(o.get_command_timeout(), None, "0 = off");
    assert_eq!(
        (o.get_pool_size(), o.get_statement_cache_capacity()),
        (3, 0)
    );
}

#[test]
fn url_ipv6_and_unix_socket_hosts() {
    let o = PgOptions::from_url("postgres://u@[::1]:5433/d").expect("ipv6");
    assert_eq!(o.get_host(), &Host::Tcp("::1".into()));
    let target = o.resolve().expect("literal resolves without DNS");
    assert_eq!(
        target,
        Target::Tcp(vec![SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 5433)])
    );

    let o = PgOptions::from_url("postgres://u@/d?host=/run/postgresql").expect("unix");
    assert_eq!(o.get_host(), &Host::Unix("/run/postgresql".into()));
    assert_eq!(
        o.resolve().expect("unix"),
        Target::Unix(PathBuf::from("/run/postgresql/.s.PGSQL.5432"))
    );
    let o = PgOptions::from_url("postgres://%2Ftmp%2Fpg:6000/d").expect("encoded unix host");
    assert_eq!(
        o.resolve().expect("unix"),
        Target::Unix("/tmp/pg/.s.PGSQL.6000".into())
    );
}

#[test]
fn url_errors_name_the_field_and_never_echo_the_password() {
    let e = err(PgOptions::from_url("mysql://u:hunter2@h/d"));
    assert!(e.contains("scheme") && !e.contains("hunter2"), "{e}");
    let e = err(PgOptions::from_url("postgres://u:hunter2@h:99999/d"));
    assert!(
        e.starts_with("invalid url") && !e.contains("hunter2"),
        "{e}"
    );
    let e = err(PgOptions::from_url("postgres://h/d?frobnicate=1"));
    assert_eq!(
        e,
        "invalid option \"frobnicate\": unknown connection option"
    );
    let e = err(PgOptions::from_url("postgres://h/d?sslmode=required"));
    assert!(e.contains("sslmode") && e.contains("verify-full"), "{e}");
    // Host lists are accepted (tests/multihost_options.rs has every form).
    let o = PgOptions::from_url("postgres://h1,h2/d").expect("a host list");
    assert_eq!(o.get_hosts().len(), 2);
}

#[test]
fn conninfo_with_quotes_and_escapes() {
    let o = PgOptions::from_conninfo(
        r"host=10.0.0.1 port = 5434 user=bob password='a b\'c\\d' dbname=x application_name=it\ works",
    )
    .expect("valid conninfo");
    assert_eq!(o.get_host(), &Host::Tcp("10.0.0.1".into()));
    assert_eq!(o.get_port(), 5434);
    assert_eq!(o.get_user(), "bob");
    assert_eq!(o.get_password(), Some(r"a b'c\d"));
    assert_eq!(o.get_database(), "x");
    assert_eq!(o.get_application_name(), Some("it works"));
    assert!(PgOptions::from_conninfo("").is_ok(), "empty = defaults");
    assert!(PgOptions::from_conninfo("password=''").is_ok_and(|o| o.get_password() == Some("")));
}

#[test]
fn conninfo_errors() {
    assert_eq!(
        err(PgOptions::from_conninfo("port=abc")),
        "invalid port \"abc\": invalid digit found in string"
    );
    assert!(err(PgOptions::from_conninfo("host")).contains("missing \"=\""));
    assert!(err(PgOptions::from_conninfo("password='open")).contains("unterminated"));
    assert!(err(PgOptions::from_conninfo("port=0")).starts_with("invalid port"));
    assert!(err(PgOptions::from_conninfo("pool_size=0")).starts_with("invalid pool_size"));
    assert!(err(PgOptions::from_conninfo("max_message_bytes=10"))
        .starts_with("invalid max_message_bytes"));
    assert!(
        err(PgOptions::from_conninfo("require_auth=kerberos")).starts_with("invalid require_auth")
    );
}

#[test]
fn from_str_picks_url_or_conninfo() {
    let a: PgOptions = "postgres://u@h:1/d".parse().expect("url");
    let b: PgOptions = "user=u host=h port=1 dbname=d".parse().expect("conninfo");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn debug_never_prints_the_password() {
    let o = PgOptions::new().user("u").password("hunter2");
    let d = format!("{o:?}");
    assert!(
        d.contains("password: Some(<redacted>)") && !d.contains("hunter2"),
        "{d}"
    );
    let d = format!("{:?}", PgOptions::new());
    assert!(d.contains("password: None"), "{d}");
}

#[test]
fn builder_host_forms_and_resolution() {
    let o = PgOptions::new().host("[::1]").port(1);
    assert_eq!(o.get_host(), &Host::Tcp("::1".into()));
    let o = PgOptions::new().host("127.0.0.1").port(5432);
    assert_eq!(
        o.resolve().ok(),
        Some(Target::Tcp(vec!["127.0.0.1:5432".parse().expect("addr")]))
    );
    let o = PgOptions::new().host("localhost");
    assert!(matches!(o.resolve(), Ok(Target::Tcp(a)) if !a.is_empty()));
    let e = PgOptions::new().host("").resolve().err();
    assert_eq!(e.as_ref().and_then(PgError::config_field), Some("host"));
    let o = PgOptions::new().connect_timeout(Duration::ZERO);
    assert_eq!(o.get_connect_timeout(), None);
}

#[test]
fn reply_gather_limit_from_url_and_conninfo_and_bounded() {
    let o =
        PgOptions::from_url("postgres://u@127.0.0.1/db?reply_gather_limit_us=2500").expect("valid");
    assert_eq!(o.get_reply_gather_limit(), Duration::from_micros(2500));
    let o: PgOptions = "host=127.0.0.1 user=u reply_gather_limit_us=0"
        .parse()
        .expect("valid");
    assert_eq!(o.get_reply_gather_limit(), Duration::ZERO);
    let e = err(PgOptions::from_url(
        "postgres://u@127.0.0.1/db?reply_gather_limit_us=-1",
    ));
    assert!(e.contains("reply_gather_limit_us"), "{e}");
    let e = PgOptions::new()
        .reply_gather_limit(Duration::from_millis(101))
        .validate()
        .expect_err("over 100 ms")
        .to_string();
    assert!(
        e.contains("reply_gather_limit") && e.contains("at most 100ms"),
        "{e}"
    );
    PgOptions::new()
        .reply_gather_limit(Duration::from_millis(100))
        .validate()
        .expect("100 ms is allowed");
}

#[test]
fn reply_batch_window_from_url_and_conninfo_and_bounded() {
    let o =
        PgOptions::from_url("postgres://u@127.0.0.1/db?reply_batch_window_us=250").expect("valid");
    assert_eq!(o.get_reply_batch_window(), Duration::from_micros(250));
    let o: PgOptions = "host=127.0.0.1 user=u reply_batch_window_us=0"
        .parse()
        .expect("valid");
    assert_eq!(o.get_reply_batch_window(), Duration::ZERO);
    let e = err(PgOptions::from_url(
        "postgres://u@127.0.0.1/db?reply_batch_window_us=fast",
    ));
    assert!(e.contains("reply_batch_window_us"), "{e}");
    let e = PgOptions::new()
        .reply_batch_window(Duration::from_millis(11))
        .validate()
        .expect_err("over 10 ms")
        .to_string();
    assert!(
        e.contains("reply_batch_window") && e.contains("at most 10ms"),
        "{e}"
    );
    let dbg = format!("{:?}", PgOptions::new());
    assert!(dbg.contains("reply_batch_window"), "{dbg}");
}

/// The error of `r`, which must fail, as its `Display` and its `Debug`.
fn both_forms(r: Result<PgOptions, PgError>, what: &str) -> (String, String) {
    match r {
        Ok(_) => panic!("{what}: must be refused"),
        Err(e) => (e.to_string(), format!("{e:?}")),
    }
}

#[test]
fn errors_never_quote_any_part_of_a_password() {
    // Each case: the text form, and the secret piece that must appear in no error.
    let conninfo = [
        ("password=my hunter2", "hunter2"),
        ("user=u password=my hunter2 dbname=d", "hunter2"),
        ("password='hunter2", "hunter2"),
        ("user=u password='my hunter2", "hunter2"),
        (r"password=hunter2\", "hunter2"),
        ("password=my hunter2=x", "hunter2"),
        ("password=my port=hunter2", "hunter2"),
        ("password=a b'hunter2 c", "hunter2"),
        ("password=ok hunter2=1 port=5432", "hunter2"),
        ("password='my' hunter2", "hunter2"),
        ("host=h postgres:/u:hunter2@h/d", "hunter2"),
        ("host=h pg://u:hunter2@h/d?x=1", "hunter2"),
    ];
    for (text, secret) in conninfo {
        for r in [PgOptions::from_conninfo(text), text.parse()] {
            let (shown, debug) = both_forms(r, text);
            assert!(!shown.contains(secret), "{text:?}: {shown}");
            assert!(!debug.contains(secret), "{text:?}: {debug}");
        }
    }
    let urls = [
        ("postgres://u:12?hunter2@h/d", "hunter2"),
        ("postgres://u:hunter2%zz@h/d", "hunter2"),
        ("postgres://u:hunter2%ff@h/d", "hunter2"),
        ("postgres://u:hun/ter2@h/d", "ter2"),
        ("postgres://u:hunter2@h:99999/d", "hunter2"),
        ("postgres://h/d?password=my&hunter2", "hunter2"),
        ("postgres://h/d?password=my&port=hunter2", "hunter2"),
        ("postgres://h/d?password=my&hunter2=x", "hunter2"),
        ("mysql://u:hunter2@h/d", "hunter2"),
        ("postgresql+psycopg://u:hunter2@h/d?ssl=1", "hunter2"),
        ("POSTGRES://u:hunter2@h:99999/d", "hunter2"),
        (" postgres://u:hunter2@h/d?frobnicate", "hunter2"),
    ];
    for (text, secret) in urls {
        for r in [
            PgOptions::from_url(text),
            text.parse(),
            PgOptions::from_env_with(env(&[("DATABASE_URL", text)])),
        ] {
            let (shown, debug) = both_forms(r, text);
            assert!(!shown.contains(secret), "{text:?}: {shown}");
            assert!(!debug.contains(secret), "{text:?}: {debug}");
        }
    }
    let (shown, debug) = both_forms(
        PgOptions::from_env_with(env(&[("PGPASSWORD", "hunter2"), ("PGPORT", "x")])),
        "PGPORT",
    );
    assert!(shown.starts_with("invalid PGPORT \"x\""), "{shown}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[test]
fn errors_before_a_password_still_name_the_culprit() {
    // Redaction is for what follows a password; a typo elsewhere is still quoted.
    let e = err(PgOptions::from_conninfo("prot=5432 password=pw"));
    assert_eq!(e, "invalid option \"prot\": unknown connection option");
    let e = err(PgOptions::from_conninfo("host password=pw"));
    assert!(e.contains("missing \"=\"") && e.contains("\"host\""), "{e}");
    let e = err(PgOptions::from_conninfo("password=pw prot=5432"));
    assert!(
        e.starts_with("invalid option: unknown connection option (not shown:"),
        "{e}"
    );
}

#[test]
fn tls_settings_from_url_conninfo_and_environment() {
    let o = PgOptions::from_url(
        "postgres://u@h/d?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem\
         &sslsni=0&channel_binding=require&ssl_min_protocol_version=TLSv1.3&sslcompression=0\
         &gssencmode=disable&sslcertmode=allow",
    )
    .unwrap();
    assert_eq!(o.get_ssl_mode(), SslMode::VerifyFull);
    let shown = format!("{o:?}");
    assert!(
        shown.contains("/ca.pem") && shown.contains("Require"),
        "{shown}"
    );

    let o: PgOptions = "host=h sslmode=require sslnegotiation=direct sslpassword=hunter2"
        .parse()
        .unwrap();
    assert_eq!(o.get_ssl_mode(), SslMode::Require);
    assert!(
        !format!("{o:?}").contains("hunter2"),
        "sslpassword is never shown"
    );

    // PGSSLMODE is read (it used to be ignored: a plaintext connection where the user asked
    // for encryption).
    let o = PgOptions::from_env_with(env(&[
        ("PGSSLMODE", "require"),
        ("PGSSLROOTCERT", "/etc/ca.pem"),
        ("PGSSLNEGOTIATION", "postgres"),
        ("PGCHANNELBINDING", "prefer"),
    ]))
    .unwrap();
    assert_eq!(o.get_ssl_mode(), SslMode::Require);
    let e = err(PgOptions::from_env_with(env(&[("PGSSLMODE", "requre")])));
    assert!(e.contains("PGSSLMODE"), "the error names the variable: {e}");

    // sslrootcert=system implies verify-full, and refuses a weaker mode (libpq 16+).
    let o = PgOptions::from_conninfo("host=h sslrootcert=system").unwrap();
    assert_eq!(o.get_ssl_mode(), SslMode::VerifyFull);
    let e = err(PgOptions::from_conninfo(
        "host=h sslrootcert=system sslmode=require",
    ));
    assert!(e.contains("verify-full"), "{e}");
}

#[test]
fn tls_settings_libpq_refuses_are_errors() {
    for (conninfo, needle) in [
        (
            "sslmode=prefer sslnegotiation=direct",
            "sslnegotiation=direct",
        ),
        ("sslnegotiation=sideways", "postgres or direct"),
        (
            "sslmode=disable channel_binding=require",
            "channel binding needs TLS",
        ),
        ("channel_binding=maybe", "disable, prefer or require"),
        ("sslcompression=1", "compression"),
        ("gssencmode=require", "GSSAPI"),
        ("sslcertmode=require", "not supported"),
        ("ssl_min_protocol_version=TLSv1.1", "not supported"),
        ("ssl_max_protocol_version=SSLv3", "TLSv1.2 or TLSv1.3"),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "above ssl_max_protocol_version",
        ),
        ("sslsni=yes", "0 or 1"),
        ("sslcrl_dir=/x", "unknown connection option"),
    ] {
        let e = err(PgOptions::from_conninfo(&format!("host=h {conninfo}")));
        assert!(e.contains(needle), "{conninfo}: {e}");
    }
    // Builders agree with the keys.
    let o = PgOptions::new()
        .ssl_mode(SslMode::Require)
        .ssl_negotiation(SslNegotiation::Direct)
        .channel_binding(ChannelBinding::Require);
    o.validate().unwrap();
    let e = PgOptions::new()
        .ssl_mode(SslMode::Allow)
        .ssl_negotiation(SslNegotiation::Direct)
        .validate()
        .unwrap_err();
    assert_eq!(e.config_field(), Some("sslmode"));
}
