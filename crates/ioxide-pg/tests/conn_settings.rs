//! libpq's connection settings: TCP keepalives and user timeout, server `options`, and the
//! password file — from code, URL, conninfo and environment, and against real clusters.
#![allow(clippy::unwrap_used)]

mod common;

use common::{env, err, opts, opts_for, Capture};
use ioxide::net::TcpOptions;
use ioxide::Reactor;
use ioxide_pg::{PgConnection, PgOptions, PgPool};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{Auth, Cluster};

// ---------------------------------------------------------------------------------------
// Options: every form, defaults, errors
// ---------------------------------------------------------------------------------------

#[test]
fn defaults_are_keepalives_on_with_os_timers_no_options_and_home_pgpass() {
    let o = PgOptions::from_env_with(env(&[("HOME", "/home/app")])).unwrap();
    assert!(o.get_keepalives());
    assert_eq!(
        (o.get_keepalives_idle(), o.get_keepalives_interval()),
        (None, None)
    );
    assert_eq!(
        (o.get_keepalives_count(), o.get_tcp_user_timeout()),
        (None, None)
    );
    assert_eq!(o.get_tcp_options(), TcpOptions::new().with_keepalive(true));
    assert_eq!(o.get_options(), None);
    assert_eq!(o.get_passfile(), Some(Path::new("/home/app/.pgpass")));
    let o = PgOptions::from_env_with(env(&[])).unwrap();
    assert_eq!(
        o.get_passfile(),
        None,
        "no HOME, no PGPASSFILE: no password file"
    );
}

#[test]
fn settings_from_url_conninfo_environment_and_code_agree() {
    let want = |o: &PgOptions| {
        assert!(!o.get_keepalives(), "{o:?}");
        assert_eq!(o.get_keepalives_idle(), Some(Duration::from_secs(30)));
        assert_eq!(o.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(o.get_keepalives_count(), Some(3));
        assert_eq!(o.get_tcp_user_timeout(), Some(Duration::from_millis(2500)));
        assert_eq!(
            o.get_options(),
            Some("-c search_path=app,public -c statement_timeout=5s")
        );
        assert_eq!(o.get_passfile(), Some(Path::new("/etc/app/pgpass")));
    };
    let url = PgOptions::from_url(
        "postgres://u@h/d?keepalives=0&keepalives_idle=30&keepalives_interval=5\
         &keepalives_count=3&tcp_user_timeout=2500\
         &options=-c%20search_path%3Dapp%2Cpublic%20-c%20statement_timeout%3D5s\
         &passfile=%2Fetc%2Fapp%2Fpgpass",
    )
    .unwrap();
    want(&url);
    let conninfo = PgOptions::from_conninfo(
        "host=h keepalives=0 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 \
         tcp_user_timeout=2500 options='-c search_path=app,public -c statement_timeout=5s' \
         passfile=/etc/app/pgpass",
    )
    .unwrap();
    want(&conninfo);
    let code = PgOptions::new()
        .keepalives(false)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_count(3)
        .tcp_user_timeout(Duration::from_millis(2500))
        .options("-c search_path=app,public -c statement_timeout=5s")
        .passfile("/etc/app/pgpass");
    want(&code);
    let set = PgOptions::new()
        .set("keepalives", "0")
        .and_then(|o| o.set("keepalives_idle", "30"))
        .and_then(|o| o.set("keepalives_interval", "5"))
        .and_then(|o| o.set("keepalives_count", "3"))
        .and_then(|o| o.set("tcp_user_timeout", "2500"))
        .and_then(|o| {
            o.set(
                "options",
                "-c search_path=app,public -c statement_timeout=5s",
            )
        })
        .and_then(|o| o.set("passfile", "/etc/app/pgpass"))
        .unwrap();
    want(&set);
    // libpq has variables for these two only (none for the TCP settings).
    let e = PgOptions::from_env_with(env(&[
        ("HOME", "/home/app"),
        ("PGOPTIONS", "-c search_path=app"),
        ("PGPASSFILE", "/etc/app/pgpass"),
    ]))
    .unwrap();
    assert_eq!(e.get_options(), Some("-c search_path=app"));
    assert_eq!(e.get_passfile(), Some(Path::new("/etc/app/pgpass")));
    assert!(e.get_keepalives());
    // Zero is the OS default; an empty `options` sends none; an empty `passfile` keeps it.
    let z = PgOptions::from_conninfo(
        "keepalives_idle=0 keepalives_interval=0 keepalives_count=0 tcp_user_timeout=0 \
         options='' passfile=''",
    )
    .unwrap();
    assert_eq!(z.get_tcp_options(), TcpOptions::new().with_keepalive(true));
    assert_eq!(z.get_options(), None);
    assert_eq!(z.get_passfile(), PgOptions::new().get_passfile());
    let d = format!("{:?}", code);
    assert!(
        d.contains("statement_timeout=5s") && d.contains("/etc/app/pgpass"),
        "{d}"
    );
}

#[test]
fn bad_tcp_values_name_the_option() {
    for (k, v) in [
        ("keepalives", "yes"),
        ("keepalives_idle", "-1"),
        ("keepalives_idle", "1.5"),
        ("keepalives_interval", "x"),
        ("keepalives_count", "-3"),
        ("tcp_user_timeout", "-1"),
    ] {
        let e = err(PgOptions::from_conninfo(&format!("{k}={v}")));
        assert!(
            e.starts_with(&format!("invalid {k} \"{v}\"")),
            "{k}={v}: {e}"
        );
    }
    // Beyond what the kernel takes: refused when the options are built, not at connect.
    for (s, field) in [
        ("keepalives_idle=32768", "keepalives_idle"),
        ("keepalives_interval=40000", "keepalives_interval"),
        ("keepalives_count=128", "keepalives_count"),
        ("tcp_user_timeout=2147483648", "tcp_user_timeout"),
    ] {
        let e = PgOptions::from_conninfo(s).unwrap_err();
        assert_eq!(e.config_field(), Some(field), "{s}: {e}");
        assert!(e.to_string().contains("at most"), "{s}: {e}");
    }
    let e = PgOptions::new()
        .keepalives_count(200)
        .validate()
        .unwrap_err();
    assert_eq!(e.config_field(), Some("keepalives_count"));
    assert!(PgOptions::from_conninfo("keepalives_idle=32767 keepalives_count=127").is_ok());
}

// ---------------------------------------------------------------------------------------
// Keepalives and the user timeout on real sockets
// ---------------------------------------------------------------------------------------

#[test]
fn a_connection_socket_carries_the_keepalive_settings_set_before_connect() {
    let o = opts()
        .keepalives_idle(Duration::from_secs(41))
        .keepalives_interval(Duration::from_secs(7))
        .keepalives_count(4)
        .tcp_user_timeout(Duration::from_millis(15_500));
    ioxide::block_on(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        let got = conn.tcp_socket_options().unwrap();
        assert!(got.keepalive, "{got:?}");
        assert_eq!(got.keepalive_idle, Some(Duration::from_secs(41)));
        assert_eq!(got.keepalive_interval, Some(Duration::from_secs(7)));
        assert_eq!(got.keepalive_count, Some(4));
        assert_eq!(got.user_timeout, Some(Duration::from_millis(15_500)));
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));

        // The defaults: keepalives on, the kernel's timers, no user timeout.
        let conn = PgConnection::connect(&opts()).await.unwrap();
        let got = conn.tcp_socket_options().unwrap();
        assert!(got.keepalive && got.user_timeout.is_none(), "{got:?}");

        // keepalives=0: off, the timers not applied.
        let off = opts().set("keepalives", "0").unwrap();
        let off = off.set("keepalives_idle", "41").unwrap();
        let conn = PgConnection::connect(&off).await.unwrap();
        let got = conn.tcp_socket_options().unwrap();
        assert!(!got.keepalive, "{got:?}");
        assert_ne!(got.keepalive_idle, Some(Duration::from_secs(41)));
    });
}

#[test]
fn pooled_connections_carry_the_settings_and_unix_sockets_ignore_them() {
    let c = testkit::shared_cluster();
    let o = opts_for(c)
        .pool_size(2)
        .keepalives_idle(Duration::from_secs(23))
        .tcp_user_timeout(Duration::from_secs(9));
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), o.clone()).unwrap();
        for _ in 0..2 {
            let a = pool.rent().await.unwrap();
            let b = pool.rent().await.unwrap();
            for conn in [&*a, &*b] {
                let got = conn.tcp_socket_options().unwrap();
                assert!(got.keepalive, "{got:?}");
                assert_eq!(got.keepalive_idle, Some(Duration::from_secs(23)));
                assert_eq!(got.user_timeout, Some(Duration::from_secs(9)));
            }
        }
        // Over a Unix socket the same options connect and serve; there is no TCP to tune.
        let unix = o.host(c.socket_dir().to_str().unwrap());
        let conn = PgConnection::connect(&unix).await.unwrap();
        let r = conn
            .query("SELECT inet_client_addr() IS NULL")
            .await
            .unwrap();
        assert_eq!(r.value(), Some("t"), "expected a Unix-socket session");
        assert!(conn.tcp_socket_options().is_err());
    });
}

// ---------------------------------------------------------------------------------------
// `options`: server command-line options at startup
// ---------------------------------------------------------------------------------------

#[test]
fn options_set_the_session_settings_of_pooled_connections() {
    let o = opts()
        .pool_size(2)
        .options(r"-c search_path=app,public -c statement_timeout=5s -c myapp.greeting=hi\ there");
    ioxide::block_on(async {
        let pool = PgPool::start(&Reactor::current(), o).unwrap();
        let r = pool.query("SHOW search_path").await.unwrap();
        assert_eq!(r.value(), Some("app,public"));
        let r = pool.query("SHOW statement_timeout").await.unwrap();
        assert_eq!(r.value(), Some("5s"));
        for _ in 0..2 {
            let a = pool.rent().await.unwrap();
            let b = pool.rent().await.unwrap();
            for conn in [&*a, &*b] {
                let r = conn.query("SHOW statement_timeout").await.unwrap();
                assert_eq!(r.value(), Some("5s"));
            }
        }
        // The server splits `options` at spaces; an escaped one stays in its value.
        let r = pool.query("SHOW myapp.greeting").await.unwrap();
        assert_eq!(r.value(), Some("hi there"));
    });
}

#[test]
fn options_from_the_environment_reach_the_server() {
    let c = testkit::shared_cluster();
    let port = c.port().to_string();
    let o = PgOptions::from_env_with(env(&[
        ("PGHOST", c.host()),
        ("PGPORT", &port),
        ("PGUSER", c.user()),
        ("PGPASSWORD", c.password()),
        ("PGDATABASE", c.database()),
        ("PGOPTIONS", "-c work_mem=7MB"),
    ]))
    .unwrap();
    ioxide::block_on(async {
        let conn = PgConnection::connect(&o).await.unwrap();
        let r = conn.query("SHOW work_mem").await.unwrap();
        assert_eq!(r.value(), Some("7MB"));
    });
}

#[test]
fn a_bad_option_fails_the_connect_with_the_servers_error_naming_it() {
    ioxide::block_on(async {
        let e = PgConnection::connect(&opts().options("-c no_such_setting_here=1"))
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("42704"), "{e}");
        assert!(e.to_string().contains("no_such_setting_here"), "{e}");
        let e = PgConnection::connect(&opts().options("-c statement_timeout=soon"))
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("22023"), "{e}");
        assert!(e.to_string().contains("statement_timeout"), "{e}");
    });
}

// ---------------------------------------------------------------------------------------
// The password file
// ---------------------------------------------------------------------------------------

/// Runs `f` on a reactor, returning what it logged.
fn logged<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    let capture = Capture::start(tracing::Level::TRACE);
    let out = ioxide::block_on(f);
    let text = capture.text();
    (out, text)
}

/// A pgpass field for `s`: `:` and `\` escaped.
fn field(s: &str) -> String {
    s.replace('\\', r"\\").replace(':', r"\:")
}

fn write_passfile(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A SCRAM cluster whose password needs the file format's escapes.
fn scram_cluster() -> Cluster {
    Cluster::builder()
        .auth(Auth::ScramSha256)
        .password(r"pa:ss\wo#rd")
        .start()
        .unwrap()
}

/// Options for `c` without a password, reading `passfile`.
fn no_password(c: &Cluster, passfile: &Path) -> PgOptions {
    PgOptions::new()
        .host(c.host())
        .port(c.port())
        .user(c.user())
        .database(c.database())
        .passfile(passfile)
        .connect_timeout(Duration::from_secs(5))
}

#[test]
fn a_passfile_logs_in_to_a_scram_cluster_over_tcp_and_unix_sockets() {
    let c = scram_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (port, db, user) = (c.port(), c.database(), c.user());
    let pw = field(c.password());
    let socket_dir = field(c.socket_dir().to_str().unwrap());
    // Non-matching lines first (another port, another user, a comment that would match),
    // then the TCP line with wildcards, then the Unix-socket line.
    let contents = format!(
        "# {host}:{port}:*:*:commented-out\n\
         127.0.0.1:{other}:*:*:wrong-port\n\
         *:{port}:{db}:someone_else:wrong-user\n\
         \n\
         127.0.0.1:*:{db}:{user}:{pw}\n\
         {socket_dir}:{port}:*:*:{pw}\r\n\
         *:*:*:*:catch-all\n",
        host = c.host(),
        other = port.wrapping_add(1),
    );
    let passfile = write_passfile(dir.path(), "pgpass", &contents, 0o600);
    let ((), logs) = logged(async {
        let tcp = no_password(&c, &passfile);
        let conn = PgConnection::connect(&tcp).await.unwrap();
        let r = conn.query("SELECT current_user").await.unwrap();
        assert_eq!(r.value(), Some(user));
        let unix = tcp.clone().host(c.socket_dir().to_str().unwrap());
        let conn = PgConnection::connect(&unix).await.unwrap();
        let r = conn
            .query("SELECT inet_client_addr() IS NULL")
            .await
            .unwrap();
        assert_eq!(r.value(), Some("t"), "expected a Unix-socket session");
        // Through PGPASSFILE and a pool too.
        let port = port.to_string();
        let from_env = PgOptions::from_env_with(env(&[
            ("PGHOST", c.host()),
            ("PGPORT", &port),
            ("PGUSER", user),
            ("PGDATABASE", db),
            ("PGPASSFILE", passfile.to_str().unwrap()),
        ]))
        .unwrap()
        .pool_size(2);
        let pool = PgPool::start(&Reactor::current(), from_env).unwrap();
        assert_eq!(pool.query("SELECT 7").await.unwrap().value(), Some("7"));
        // The line chosen is the first that matches: the catch-all's password is wrong.
        let e = PgConnection::connect(&tcp.clone().database("postgres"))
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("28P01"), "{e}");
        let shown = format!("{e} {e:?}");
        assert!(
            shown.contains("password retrieved from file") && shown.contains("pgpass"),
            "{shown}"
        );
        assert!(!shown.contains("catch-all"), "{shown}");
    });
    assert!(!logs.contains("WARN"), "{logs}");
    assert!(
        !logs.contains(c.password()) && !logs.contains(&pw),
        "{logs}"
    );
}

#[test]
fn a_given_password_wins_over_the_passfile_and_a_missing_passfile_is_fine() {
    let c = scram_cluster();
    let dir = tempfile::tempdir().unwrap();
    let passfile = write_passfile(dir.path(), "pgpass", "*:*:*:*:wrong\n", 0o600);
    ioxide::block_on(async {
        let given = no_password(&c, &passfile).password(c.password());
        let conn = PgConnection::connect(&given).await.unwrap();
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));
        // An empty password counts as none given (libpq): the file's (wrong) one is used.
        let empty = no_password(&c, &passfile).password("");
        let e = PgConnection::connect(&empty).await.unwrap_err();
        assert_eq!(e.sql_state(), Some("28P01"), "{e}");
        // No file: no password, the usual error; a trust cluster does not mind at all.
        let missing = dir.path().join("absent");
        let e = PgConnection::connect(&no_password(&c, &missing))
            .await
            .unwrap_err();
        assert!(e.is_auth() && e.to_string().contains("no password"), "{e}");
        let trust = testkit::shared_cluster();
        let conn = PgConnection::connect(&no_password(trust, &missing))
            .await
            .unwrap();
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));
    });
}

#[test]
fn a_passfile_others_can_read_is_ignored_with_libpqs_warning() {
    let c = scram_cluster();
    let dir = tempfile::tempdir().unwrap();
    let contents = format!("*:*:*:*:{}\n", field(c.password()));
    for mode in [0o644, 0o640, 0o602] {
        let path = write_passfile(dir.path(), &format!("pgpass-{mode:o}"), &contents, mode);
        let (e, logs) = logged(PgConnection::connect(&no_password(&c, &path)));
        let e = e.unwrap_err();
        assert!(
            e.is_auth() && e.to_string().contains("no password"),
            "{mode:o}: {e}"
        );
        assert!(
            logs.contains("WARN")
                && logs.contains("has group or world access")
                && logs.contains(&format!("pgpass-{mode:o}")),
            "{mode:o}: {logs}"
        );
        assert!(!logs.contains(c.password()), "{logs}");
    }
    // The same file made private is used.
    let path = write_passfile(dir.path(), "pgpass-600", &contents, 0o600);
    ioxide::block_on(async {
        let conn = PgConnection::connect(&no_password(&c, &path))
            .await
            .unwrap();
        assert_eq!(conn.query("SELECT 1").await.unwrap().value(), Some("1"));
    });
    // A directory is not a password file.
    let (e, logs) = logged(PgConnection::connect(&no_password(&c, dir.path())));
    assert!(e.unwrap_err().is_auth());
    assert!(logs.contains("is not a plain file"), "{logs}");
}
