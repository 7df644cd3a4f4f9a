//! The routes of the playground contract (DESIGN.md) and how driver errors become statuses.
//!
//! Parameters always travel as bind parameters (`$1`), never spliced into SQL text.

use crate::app::App;
use crate::http::{Request, Response};
use ioxide_pg::{PgError, TimeoutKind};
use percent_encoding::percent_decode_str;
use std::borrow::Cow;
use std::fmt::Write as _;

/// Largest N `/rows/N` streams (the body is built in memory: about 20 bytes per row).
const MAX_ROWS: i64 = 100_000;

/// Answers one request. Never fails: every error becomes a response.
pub async fn handle(app: &App, req: &Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "only GET and HEAD").with_header("Allow", "GET, HEAD");
    }
    let path = req.path.as_str();
    let result = match path {
        "/" => scalar_text(app, "SELECT 42").await,
        "/sleep" => scalar_text(app, "SELECT 42 FROM pg_sleep(0.1)").await,
        "/hang" => scalar_text(app, "SELECT pg_sleep(10)").await,
        "/err" => scalar_text(app, "SELECT * FROM this_table_does_not_exist").await,
        "/stats" => return app.stats_json(),
        _ => {
            if let Some(n) = path.strip_prefix("/add/") {
                add(app, n).await
            } else if let Some(t) = path.strip_prefix("/upper/") {
                upper(app, t).await
            } else if let Some(n) = path.strip_prefix("/rows/") {
                rows(app, n).await
            } else {
                return Response::text(
                    404,
                    "no such route; try / /sleep /hang /err /add/41 /upper/hello /rows/5 /stats",
                );
            }
        }
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            let r = error_response(&e);
            tracing::debug!(path, status = r.status, error = %e, "query failed");
            r
        }
    }
}

/// A simple-protocol query whose answer is the first column of the first row, as text.
async fn scalar_text(app: &App, sql: &str) -> Result<Response, PgError> {
    let r = app.pool.query(sql).await?;
    Ok(Response::text(200, r.value().unwrap_or_default()))
}

async fn add(app: &App, raw: &str) -> Result<Response, PgError> {
    let Some(n) = decode(raw).and_then(|s| s.parse::<i64>().ok()) else {
        return Ok(Response::text(400, "N must be a whole number (64-bit)"));
    };
    let r = app.pool.query_params("SELECT $1::int8 + 1", &[&n]).await?;
    Ok(Response::text(200, r.scalar::<i64>()?.to_string()))
}

async fn upper(app: &App, raw: &str) -> Result<Response, PgError> {
    let Some(t) = decode(raw) else {
        return Ok(Response::text(400, "T must be percent-encoded UTF-8"));
    };
    let r = app
        .pool
        .query_params("SELECT upper($1)", &[&t.as_ref()])
        .await?;
    Ok(Response::text(200, r.scalar::<&str>()?))
}

async fn rows(app: &App, raw: &str) -> Result<Response, PgError> {
    let n = match decode(raw).and_then(|s| s.parse::<i64>().ok()) {
        Some(n) if (0..=MAX_ROWS).contains(&n) => n,
        _ => {
            return Ok(Response::text(
                400,
                format!("N must be from 0 to {MAX_ROWS}"),
            ))
        }
    };
    // Each row is handed over borrowed from the driver's receive buffer as it arrives; only
    // its text lands in the body.
    let mut listed = String::with_capacity(usize::try_from(n).unwrap_or(0) * 16);
    let count = app
        .pool
        .query_rows(
            "SELECT n, n*n AS square FROM generate_series(1, $1::int8) n",
            &[&n],
            |row| {
                let (v, square): (i64, i64) = (row.get(0)?, row.get(1)?);
                // Writing to a String cannot fail.
                let _ = write!(listed, " {v}^2={square}");
                Ok(())
            },
        )
        .await?;
    Ok(Response::text(200, format!("rows={count}:{listed}")))
}

/// Percent-decodes a path segment (borrowed when it has no escapes); `None` unless the
/// result is UTF-8.
fn decode(raw: &str) -> Option<Cow<'_, str>> {
    percent_decode_str(raw).decode_utf8().ok()
}

/// How a driver error is answered:
///
/// | error | status | body |
/// | --- | --- | --- |
/// | command timeout | 503 | `command timed out after 5s` |
/// | no usable connection (refused, reset, acquire/connect timeout, auth, closed) | 503 | `database unavailable: …` |
/// | server error, class 08/53/57 (connection, resources, shutdown) | 503 | the SQLSTATE |
/// | server error, class 22 (a value the client sent is out of range) | 400 | the SQLSTATE |
/// | any other server error | 500 | the SQLSTATE (`42P01`) |
/// | anything else | 500 | one line |
///
/// Server errors carry the server's message in an `X-Pg-Message` header.
pub fn error_response(e: &PgError) -> Response {
    if let Some(code) = e.sql_state() {
        let status = match code.get(..2) {
            Some("22") => 400,
            Some("08" | "53" | "57") => 503,
            _ => 500,
        };
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        return Response::text(status, code).with_header("X-Pg-Message", &message);
    }
    let line = one_line(&e.to_string());
    if e.timeout_kind() == Some(TimeoutKind::Command) {
        Response::text(503, line)
    } else if e.is_timeout() || e.is_transport() || e.is_closed() || e.is_auth() {
        Response::text(503, format!("database unavailable: {line}"))
    } else {
        Response::text(500, line)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioxide_pg::{PgConnection, PgOptions};
    use std::time::Duration;
    use testkit::{backend, FakeServer, Step};

    /// A real driver error (only the driver makes them) from a fake server playing
    /// `script`: connect with `timeout`, then run one query.
    fn driver_error(script: Vec<Step>, timeout: Duration) -> PgError {
        let fake = FakeServer::start(script).expect("fake server");
        driver_error_at(fake.port(), timeout)
    }

    fn driver_error_at(port: u16, timeout: Duration) -> PgError {
        let opts = PgOptions::new()
            .host("127.0.0.1")
            .port(port)
            .user("u")
            .connect_timeout(timeout)
            .command_timeout(timeout);
        ioxide::block_on(async {
            let conn = PgConnection::connect(&opts).await?;
            conn.query("SELECT 1").await.map(|_| ())
        })
        .expect_err("the fake fails every request")
    }

    #[test]
    fn timeouts_and_outages_are_503() {
        let e = driver_error(
            vec![
                Step::Send(backend::handshake_ok()),
                Step::ReadMessage,
                Step::StallForever,
            ],
            Duration::from_millis(100),
        );
        assert_eq!(e.timeout_kind(), Some(TimeoutKind::Command), "{e}");
        let r = error_response(&e);
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).contains("timed out"));
        // A port nobody listens on: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let e = driver_error_at(port, Duration::from_secs(2));
        assert!(e.is_transport(), "{e}");
        let r = error_response(&e);
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).starts_with("database unavailable: "));
        let e = driver_error(vec![Step::StallForever], Duration::from_millis(100));
        assert_eq!(e.timeout_kind(), Some(TimeoutKind::Connect), "{e}");
        let r = error_response(&e);
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).starts_with("database unavailable: "));
    }

    #[test]
    fn other_errors_are_one_line_500s() {
        let r = error_response(&PgError::conversion("odd\nvalue"));
        assert_eq!(r.status, 500);
        assert!(!r.body.contains(&b'\n'));
    }

    #[test]
    fn segments_decode_to_utf8_or_nothing() {
        assert_eq!(decode("h%C3%A9llo%20w").as_deref(), Some("héllo w"));
        assert_eq!(decode("x%27)%3B").as_deref(), Some("x');"));
        assert_eq!(decode("%FF"), None);
    }
}
