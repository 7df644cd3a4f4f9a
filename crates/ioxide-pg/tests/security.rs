//! Security checks (issue 8, item 5).
//!
//! * SCRAM: the server's final signature is verified — an impostor that completes the
//!   exchange without knowing the password is refused by
//!   `conn_hostile.rs::scram_server_with_a_wrong_final_signature_is_refused` (and a
//!   server-first with a foreign nonce by `scram_server_first_with_a_foreign_nonce_is_an_auth_error`;
//!   absurd iteration counts by `hostile_more.rs`). Here: a real SCRAM login succeeds, and
//!   `require_auth=scram-sha-256` refuses MD5, cleartext and trust servers without sending
//!   anything derived from the password.
//! * The password never appears in `tracing` output (captured by a test subscriber), in any
//!   error's `Display`, `Debug` or source chain, or in the `Debug` of `PgOptions`, `PgPool`,
//!   `PgConnection`, `PooledConn`.
//! * Parameters are never interpolated into SQL: injection strings come back as data and no
//!   table is dropped.
//! * `max_message_bytes` holds memory against a server announcing 60 MiB messages over and
//!   over: the bytes this thread holds allocated and the process RSS stay bounded.
#![allow(clippy::unwrap_used)]

mod common;

use common::opts_for;
use ioxide::Reactor;
use ioxide_pg::{PgConnection, PgError, PgOptions, PgPool, RequireAuth};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{backend, Auth, Cluster, FakeServer, Step};

/// The role's password on every cluster here: distinctive, so a leak cannot hide.
const SECRET: &str = "S3cr3t-pa55-ioxide-q7Zx";
/// A wrong password that is just as distinctive.
const WRONG: &str = "Wr0ng-pa55-ioxide-k9Vb";

fn cluster(auth: Auth) -> Cluster {
    Cluster::builder()
        .auth(auth)
        .password(SECRET)
        .start()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Per-thread allocation accounting (for the memory bound)
// ---------------------------------------------------------------------------------------

/// The system allocator, counting the bytes the current thread holds and their peak.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    COUNT.with(Cell::get)
}

fn note(delta: isize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = HELD.try_with(|h| {
        let now = h.get() + delta;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

#[allow(unsafe_code)] // a counting allocator cannot be written without it
                      // SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
                      // bookkeeping touches only const-initialised thread-locals (no allocation, no reentry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
            count_one();
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
            count_one();
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
            count_one();
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resets this thread's peak to what it holds now; returns that.
fn reset_peak() -> isize {
    let held = HELD.with(Cell::get);
    PEAK.with(|p| p.set(held));
    held
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

// ---------------------------------------------------------------------------------------
// Capturing tracing output
// ---------------------------------------------------------------------------------------

/// A `tracing` subscriber that renders every span and event, at every level, into text.
#[derive(Clone, Default)]
struct Capture {
    text: Arc<Mutex<String>>,
    next_id: Arc<Mutex<u64>>,
}

struct Render<'a>(&'a mut String);

impl tracing::field::Visit for Render<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut t = self.text.lock().unwrap();
        let _ = write!(t, "span {}:", span.metadata().name());
        span.record(&mut Render(&mut t));
        t.push('\n');
        let mut id = self.next_id.lock().unwrap();
        *id += 1;
        tracing::span::Id::from_u64(*id)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut t = self.text.lock().unwrap();
        values.record(&mut Render(&mut t));
        t.push('\n');
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut t = self.text.lock().unwrap();
        let m = event.metadata();
        let _ = write!(t, "{} {}:", m.level(), m.target());
        event.record(&mut Render(&mut t));
        t.push('\n');
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

/// Every rendering of an error a user or a log could see.
fn renderings(e: &PgError) -> String {
    let mut s = format!("{e}\n{e:?}\n{e:#?}\n");
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = writeln!(s, "{inner}\n{inner:?}");
        source = inner.source();
    }
    s
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET, WRONG] {
        assert!(
            !text.contains(secret),
            "{what} contains a password ({secret}):\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// SCRAM and require_auth
// ---------------------------------------------------------------------------------------

fn scram_only() -> RequireAuth {
    "scram-sha-256".parse().unwrap()
}

#[test]
fn scram_login_with_the_right_password_succeeds_even_when_scram_is_required() {
    let c = cluster(Auth::ScramSha256);
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts_for(&c).require_auth(scram_only()))
            .await
            .unwrap();
        assert_eq!(
            conn.query("SELECT current_user").await.unwrap().value(),
            Some(c.user())
        );
        // The server really did SCRAM: the stored verifier is a SCRAM one.
        let e = PgConnection::connect(&opts_for(&c).password(WRONG).require_auth(scram_only()))
            .await
            .unwrap_err();
        assert_eq!(e.sql_state(), Some("28P01"), "{e}");
    });
    let verifier = c
        .psql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
            c.user()
        ))
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
}

#[test]
fn require_auth_scram_refuses_md5_cleartext_and_trust_clusters() {
    for auth in [Auth::Md5, Auth::Password, Auth::Trust] {
        let c = cluster(auth);
        ioxide::block_on(async {
            let started = Instant::now();
            let e = PgConnection::connect(&opts_for(&c).require_auth(scram_only()))
                .await
                .unwrap_err();
            assert!(e.is_auth(), "{auth:?}: {e}");
            let asked = match auth {
                Auth::Md5 => "asked for md5 authentication",
                Auth::Password => "asked for password authentication",
                _ => "did not ask for authentication",
            };
            assert!(
                e.to_string().contains(asked) && e.to_string().contains("require_auth"),
                "{auth:?}: {e}"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
            assert_no_secret("the refusal", &renderings(&e));
        });
        // Without the requirement the same cluster lets us in.
        ioxide::block_on(async {
            PgConnection::connect(&opts_for(&c)).await.unwrap();
        });
    }
}

#[test]
fn require_auth_scram_sends_nothing_derived_from_the_password_to_an_md5_or_cleartext_server() {
    for request in [
        backend::authentication_md5_password([1, 2, 3, 4]),
        backend::authentication_cleartext_password(),
    ] {
        let fake = FakeServer::start(vec![Step::Send(request), Step::ReadMessage]).unwrap();
        let o = PgOptions::new()
            .host("127.0.0.1")
            .port(fake.port())
            .user("u")
            .password(SECRET)
            .require_auth(scram_only());
        let e = ioxide::block_on(PgConnection::connect(&o)).unwrap_err();
        assert!(e.is_auth(), "{e}");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !fake.connections()[0].client_closed && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let log = &fake.connections()[0];
        assert!(log.received.is_empty(), "sent {:?}", log.received);
        assert!(log.client_closed, "the client hangs up");
    }
}

// ---------------------------------------------------------------------------------------
// Passwords never in logs, errors or Debug
// ---------------------------------------------------------------------------------------

#[test]
fn passwords_never_appear_in_logs_errors_or_debug_output() {
    let capture = Capture::default();
    let scram = cluster(Auth::ScramSha256);
    let md5 = cluster(Auth::Md5);
    let cleartext = cluster(Auth::Password);
    let mut seen = String::new();

    tracing::subscriber::with_default(capture.clone(), || {
        ioxide::block_on(async {
            // Wrong passwords, every method, straight and through a pool.
            for c in [&scram, &md5, &cleartext] {
                let o = opts_for(c).password(WRONG);
                let e = PgConnection::connect(&o).await.unwrap_err();
                assert_eq!(e.sql_state(), Some("28P01"), "{e}");
                seen += &renderings(&e);
                seen += &format!("{o:?}\n{o:#?}\n");
                let pool = PgPool::start(
                    &Reactor::current(),
                    o.pool_size(1).acquire_timeout(Duration::from_millis(500)),
                )
                .unwrap();
                let e = pool.query("SELECT 1").await.unwrap_err();
                seen += &renderings(&e);
                seen += &format!("{pool:?}\n");
                pool.close().await;
            }
            // The right password: connection, pool, rented connection, their failures.
            let o = opts_for(&scram);
            let conn = PgConnection::connect(&o).await.unwrap();
            seen += &format!("{conn:?}\n{conn:#?}\n");
            let e = conn.query("SELECT * FROM no_such_table").await.unwrap_err();
            seen += &renderings(&e);
            let pool = PgPool::start(&Reactor::current(), o.clone().pool_size(2)).unwrap();
            let rented = pool.rent().await.unwrap();
            seen += &format!("{pool:?}\n{rented:?}\n");
            drop(rented);
            let e = pool.query("SELECT 1/0").await.unwrap_err();
            seen += &renderings(&e);
            pool.close().await;
            // Unreachable: nothing listens on this port.
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let o = PgOptions::new()
                .host("127.0.0.1")
                .port(port)
                .user("u")
                .password(SECRET);
            let e = PgConnection::connect(&o).await.unwrap_err();
            seen += &renderings(&e);
            let pool = PgPool::start(
                &Reactor::current(),
                o.pool_size(1).acquire_timeout(Duration::from_millis(300)),
            )
            .unwrap();
            let e = pool.query("SELECT 1").await.unwrap_err();
            seen += &renderings(&e);
            seen += &format!("{pool:?}\n");
            // Protocol failure: a server that answers the password with garbage, and one
            // that breaks a live connection.
            let fake = FakeServer::start(vec![
                Step::Send(backend::authentication_cleartext_password()),
                Step::ReadMessage,
                Step::SendGarbage(64),
                Step::StallForever,
            ])
            .unwrap();
            let o = PgOptions::new()
                .host("127.0.0.1")
                .port(fake.port())
                .user("u")
                .password(SECRET);
            let e = PgConnection::connect(&o).await.unwrap_err();
            assert!(e.is_protocol(), "{e}");
            seen += &renderings(&e);
            let fake2 = FakeServer::start(vec![
                Step::Send(backend::handshake_ok()),
                Step::ReadMessage,
                Step::Send(backend::data_row(&[Some(SECRET)])),
                Step::StallForever,
            ])
            .unwrap();
            let o = o.port(fake2.port()).command_timeout(Duration::from_secs(2));
            let conn = PgConnection::connect(&o).await.unwrap();
            let e = conn.query("SELECT 1").await.unwrap_err();
            seen += &renderings(&e);
            seen += &format!("{conn:?}\n");
            // Options parsed from a URL and from a conninfo string, and their errors.
            for text in [
                format!("postgres://u:{SECRET}@127.0.0.1:5432/db"),
                format!("postgres://u:{SECRET}@127.0.0.1:notaport/db"),
                format!("postgres://u:{SECRET}@127.0.0.1/db?connect_timeout=soon"),
                format!("postgresql://u:{SECRET}@[::1/db"),
            ] {
                match PgOptions::from_url(&text) {
                    Ok(o) => seen += &format!("{o:?}\n"),
                    Err(e) => seen += &renderings(&e),
                }
            }
            for text in [
                format!("host=127.0.0.1 user=u password={SECRET}"),
                format!("host=127.0.0.1 password={SECRET} port=notaport"),
                format!("host=127.0.0.1 password='{SECRET} sslmode=bogus"),
            ] {
                match PgOptions::from_conninfo(&text) {
                    Ok(o) => seen += &format!("{o:?}\n"),
                    Err(e) => seen += &renderings(&e),
                }
            }
        });
    });

    let logs = capture.text();
    // The capture works: the failures above were logged.
    assert!(
        logs.contains("pool connect failed") && logs.contains("connection broken"),
        "the subscriber saw nothing useful:\n{logs}"
    );
    assert_no_secret("tracing output", &logs);
    assert_no_secret("errors and Debug output", &seen);
}

// ---------------------------------------------------------------------------------------
// Parameters are data, never SQL
// ---------------------------------------------------------------------------------------

const INJECTIONS: [&str; 8] = [
    "'); DROP TABLE victims; --",
    "x'; DROP TABLE victims; SELECT '",
    "1; DROP TABLE victims",
    "' OR '1'='1",
    "$1",
    "\\'; DROP TABLE victims; --",
    "$$; DROP TABLE victims; $$",
    "E'\\x27; DROP TABLE victims; --",
];

#[test]
fn parameters_are_never_interpolated_into_sql() {
    let c = Cluster::new().unwrap();
    c.psql("CREATE TABLE victims (name text); INSERT INTO victims VALUES ('alive')")
        .unwrap();
    ioxide::block_on(async {
        let conn = PgConnection::connect(&opts_for(&c)).await.unwrap();
        let pool = PgPool::start(&Reactor::current(), opts_for(&c).pool_size(2)).unwrap();
        for s in INJECTIONS {
            // As the playground's /upper/ route does.
            let up: String = conn
                .query_params("SELECT upper($1)", &[&s])
                .await
                .unwrap()
                .scalar()
                .unwrap();
            assert_eq!(up, s.to_uppercase());
            let same: String = pool
                .query_params("SELECT $1::text", &[&s])
                .await
                .unwrap()
                .scalar()
                .unwrap();
            assert_eq!(same, s);
            assert_eq!(
                pool.execute("INSERT INTO victims (name) VALUES ($1)", &[&s])
                    .await
                    .unwrap(),
                1
            );
            let n: i64 = conn
                .query_params("SELECT count(*) FROM victims WHERE name = $1", &[&s])
                .await
                .unwrap()
                .scalar()
                .unwrap();
            assert_eq!(n, 1, "{s}");
            // Streamed rows see the same bytes.
            let mut got = Vec::new();
            conn.query_rows("SELECT $1::text AS v", &[&s], |row| {
                got.push(row.get::<String>("v")?);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(got, [s]);
        }
        pool.close().await;
    });
    assert_eq!(
        c.psql("SELECT count(*) FROM victims").unwrap(),
        (INJECTIONS.len() + 1).to_string()
    );
    assert_eq!(
        c.psql("SELECT name FROM victims ORDER BY ctid LIMIT 1")
            .unwrap(),
        "alive"
    );
}

// ---------------------------------------------------------------------------------------
// max_message_bytes holds memory
// ---------------------------------------------------------------------------------------

#[test]
fn max_message_bytes_holds_memory_against_a_server_announcing_60_mib_messages() {
    const ROUNDS: usize = 30;
    const LIMIT: usize = 1 << 20;
    // Every connection: a valid handshake, then — in reply to the first query — a
    // RowDescription and a DataRow announcing 60 MiB, of which 256 KiB really follow before
    // the fake hangs up (the fake's threads then exit, so they do not blur the RSS figure).
    let mut giant = vec![b'D'];
    giant.extend_from_slice(&(60u32 << 20).to_be_bytes());
    giant.extend(std::iter::repeat_n(0x41, 256 << 10));
    let fake = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send([backend::row_description(&["a"]), giant].concat()),
        Step::Close,
    ])
    .unwrap();
    let o = PgOptions::new()
        .host("127.0.0.1")
        .port(fake.port())
        .user("u")
        .password(SECRET)
        .max_message_bytes(LIMIT)
        .command_timeout(Duration::from_secs(3));

    let rss_before = rss_bytes();
    let held_before = reset_peak();
    ioxide::block_on(async {
        // Straight connections…
        for _ in 0..ROUNDS {
            let conn = PgConnection::connect(&o).await.unwrap();
            let e = conn.query("SELECT a").await.unwrap_err();
            assert!(e.is_protocol(), "{e}");
            assert!(
                e.to_string()
                    .contains("exceeds max_message_bytes (1048576 bytes)"),
                "{e}"
            );
            assert!(conn.is_broken());
        }
        // …and a pool that keeps replacing the connection the hostile reply broke.
        let pool = PgPool::start(&Reactor::current(), o.clone().pool_size(1)).unwrap();
        for _ in 0..ROUNDS {
            let e = pool.query("SELECT a").await.unwrap_err();
            assert!(
                e.to_string().contains("exceeds max_message_bytes") || e.is_closed(),
                "{e}"
            );
        }
        assert!(pool.stats().broken_total >= ROUNDS as u64 - 1);
        pool.close().await;
    });
    let peak = PEAK.with(Cell::get) - held_before;
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    println!(
        "{} hostile 60 MiB announcements, max_message_bytes 1 MiB: peak held by this thread \
         {} KiB above the start, RSS growth {} KiB",
        2 * ROUNDS,
        peak / 1024,
        rss_growth / 1024
    );
    // Nothing close to one announced message was ever held, let alone one per round.
    assert!(
        peak < 4 * LIMIT as isize,
        "peak allocation {peak} bytes over a 1 MiB limit"
    );
    assert!(
        rss_growth < 32 << 20,
        "RSS grew by {rss_growth} bytes (other tests run in parallel, hence the slack)"
    );
    assert!(fake.accepted() >= 2 * ROUNDS - 1);
}

// ---------------------------------------------------------------------------------------
// Streaming allocates nothing per row; notices reach tracing
// ---------------------------------------------------------------------------------------

#[test]
fn streaming_100k_rows_allocates_nothing_per_row() {
    let c = testkit::shared_cluster();
    ioxide::block_on(async {
        let conn = PgConnection::connect(&common::opts_for(c)).await.unwrap();
        let sql = "SELECT n::int8, repeat('x', 100) AS pad FROM generate_series(1, 100000) n";
        // Warm the statement cache and the receive buffer, then count one whole stream.
        conn.query_rows(sql, &[], |_| Ok(())).await.unwrap();
        let (allocs_before, held_before) = (allocations(), reset_peak());
        let mut sum = 0i64;
        let n = conn
            .query_rows(sql, &[], |row| {
                sum += row.get::<i64>(0)?;
                assert_eq!(row.get::<&str>("pad")?.len(), 100);
                Ok(())
            })
            .await
            .unwrap();
        let allocs = allocations() - allocs_before;
        let peak = PEAK.with(Cell::get) - held_before;
        assert_eq!((n, sum), (100_000, 5_000_050_000));
        // Rows are borrowed from the receive buffer: the allocations are per receive and per
        // loop turn, not per row (measured: 5 for the whole 11 MB stream).
        assert!(
            allocs < 100,
            "{allocs} allocations while streaming 100 000 rows"
        );
        // And the thread never holds more than a receive buffer's worth on top.
        assert!(
            peak < 4 << 20,
            "peak {peak} bytes above the start while streaming"
        );
    });
}

#[test]
fn server_notices_go_to_tracing() {
    let capture = Capture::default();
    let c = testkit::shared_cluster();
    tracing::subscriber::with_default(capture.clone(), || {
        ioxide::block_on(async {
            let conn = PgConnection::connect(&common::opts_for(c)).await.unwrap();
            conn.query("DO $$ BEGIN RAISE NOTICE 'ioxide-notice-%', 41 + 1; END $$")
                .await
                .unwrap();
            conn.query("DO $$ BEGIN RAISE WARNING 'ioxide-warning-7'; END $$")
                .await
                .unwrap();
            // A notice in the middle of a parameterized query's reply too.
            let rs = conn
                .query_params(
                    "SELECT $1::int4 FROM (SELECT set_config('client_min_messages', 'notice', true)) s",
                    &[&5i32],
                )
                .await
                .unwrap();
            assert_eq!(rs.scalar::<i32>().unwrap(), 5);
        });
    });
    let logs = capture.text();
    let notice = logs
        .lines()
        .find(|l| l.contains("ioxide-notice-42"))
        .unwrap_or_else(|| panic!("no notice in the tracing output:\n{logs}"));
    assert!(notice.starts_with("INFO"), "{notice}");
    let warning = logs
        .lines()
        .find(|l| l.contains("ioxide-warning-7"))
        .unwrap_or_else(|| panic!("no warning in the tracing output:\n{logs}"));
    assert!(warning.starts_with("WARN"), "{warning}");
    assert!(
        warning.contains("01000"),
        "the SQLSTATE is logged: {warning}"
    );
}
