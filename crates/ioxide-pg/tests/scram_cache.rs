//! The SCRAM key cache against a real cluster: PBKDF2 once per (password, salt, iterations),
//! a changed password (the server's new salt), a wrong password (28P01, nothing kept).
//!
//! One test function: the PBKDF2 counter is process-wide, so nothing else may connect while
//! it counts.
#![allow(clippy::unwrap_used)]

mod common;

use common::opts_for;
use ioxide_pg::proto::scram::{cache_len, pbkdf2_count};
use ioxide_pg::{PgConnection, PgOptions, SslMode};
use testkit::{Auth, Cluster};

async fn connect(o: &PgOptions) -> Result<String, ioxide_pg::PgError> {
    let conn = PgConnection::connect(o).await?;
    let user = conn.query("SELECT current_user").await?;
    Ok(user.value().unwrap_or_default().to_owned())
}

async fn refused(o: &PgOptions) {
    let e = connect(o).await.unwrap_err();
    assert_eq!(e.sql_state(), Some("28P01"), "{e}");
}

#[test]
fn pbkdf2_once_per_password_salt_and_iterations() {
    let c = Cluster::builder().auth(Auth::ScramSha256).start().unwrap();
    c.psql(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_a LOGIN PASSWORD 'first password';
         CREATE ROLE scram_b LOGIN PASSWORD 'right password';",
    )
    .unwrap();
    // sslmode=disable: one attempt per connect (`prefer` tries again in plaintext after a
    // server error, so a wrong password would count two).
    let plain = || opts_for(&c).ssl_mode(SslMode::Disable);
    let a = |pw: &str| plain().user("scram_a").password(pw);
    let b = |pw: &str| plain().user("scram_b").password(pw);

    ioxide::block_on(async {
        // (a) 8 logins one after another and 24 at once on this reactor: one PBKDF2.
        let before = pbkdf2_count();
        for _ in 0..8 {
            assert_eq!(connect(&a("first password")).await.unwrap(), "scram_a");
        }
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let o = a("first password");
                ioxide::spawn(async move { connect(&o).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await, "scram_a");
        }
        assert_eq!(pbkdf2_count() - before, 1, "32 logins, one derivation");

        // (b) A changed password: the role gets a new salt, so the new password derives
        // once, and the old one no longer logs in (its cached keys are for the old salt).
        c.psql("ALTER ROLE scram_a PASSWORD 'second password'")
            .unwrap();
        let before = pbkdf2_count();
        assert_eq!(connect(&a("second password")).await.unwrap(), "scram_a");
        assert_eq!(connect(&a("second password")).await.unwrap(), "scram_a");
        assert_eq!(pbkdf2_count() - before, 1, "the new salt derives once");
        refused(&a("first password")).await;

        // (c) A wrong password: refused with 28P01 every time, and its keys are not kept
        // (each attempt derives again, the cache does not grow); the right one still works
        // and is then cached.
        let len = cache_len();
        let before = pbkdf2_count();
        refused(&b("wrong password")).await;
        refused(&b("wrong password")).await;
        assert_eq!(
            pbkdf2_count() - before,
            2,
            "a wrong password is never cached"
        );
        assert_eq!(cache_len(), len, "no entry left for the wrong password");
        let before = pbkdf2_count();
        assert_eq!(connect(&b("right password")).await.unwrap(), "scram_b");
        assert_eq!(connect(&b("right password")).await.unwrap(), "scram_b");
        assert_eq!(pbkdf2_count() - before, 1);
        assert_eq!(cache_len(), len + 1);

        // The test role (made by the cluster) logs in as ever.
        assert_eq!(connect(&opts_for(&c)).await.unwrap(), c.user());
    });
}
