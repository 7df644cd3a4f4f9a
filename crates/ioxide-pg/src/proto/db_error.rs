//! [`DbError`]: every field of an ErrorResponse or NoticeResponse.
//!
//! The body is a list of `(field type byte, NUL-terminated string)` pairs ending with a zero
//! byte. Unknown field types are skipped, as the protocol asks. Text is decoded lossily: a
//! server error is worth reporting even if a byte in it is not UTF-8 (during startup, before
//! `client_encoding` applies, it can be in the server's encoding).

use std::borrow::Cow;
use std::fmt;

use super::cursor::Cursor;
use crate::{PgError, SqlState};

/// How bad a server message is (the non-localized `V` field, or `S` when `V` is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Severity {
    /// `PANIC`: the server is restarting.
    Panic,
    /// `FATAL`: the session ends; the server closes the connection after this message.
    Fatal,
    /// `ERROR`: the command failed; the session continues.
    Error,
    /// `WARNING` (notices only).
    Warning,
    /// `NOTICE` (notices only).
    Notice,
    /// `DEBUG` (notices only).
    Debug,
    /// `INFO` (notices only).
    Info,
    /// `LOG` (notices only).
    Log,
    /// A severity this driver does not know.
    Other,
}

impl Severity {
    fn parse(s: &str) -> Severity {
        match s {
            "PANIC" => Severity::Panic,
            "FATAL" => Severity::Fatal,
            "ERROR" => Severity::Error,
            "WARNING" => Severity::Warning,
            "NOTICE" => Severity::Notice,
            "DEBUG" => Severity::Debug,
            "INFO" => Severity::Info,
            "LOG" => Severity::Log,
            _ => Severity::Other,
        }
    }
}

/// Where in a query an error was detected (`P`, or `p` + `q`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorPosition {
    /// A 1-based character offset into the query the client sent.
    Original(u32),
    /// A 1-based character offset into an internally generated query (e.g. inside a PL/pgSQL
    /// function), with that query's text.
    Internal {
        /// The character offset.
        position: u32,
        /// The internal query.
        query: String,
    },
}

/// A server-reported error or notice, with every field PostgreSQL sends.
///
/// Display gives `ERROR 42P01: relation "x" does not exist`, followed by `DETAIL:` and
/// `HINT:` lines when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    severity: String,
    severity_nonlocalized: Option<String>,
    code: SqlState,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    position: Option<ErrorPosition>,
    where_: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    column: Option<String>,
    datatype: Option<String>,
    constraint: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    routine: Option<String>,
}

fn text(bytes: &[u8]) -> String {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(s) => s.to_owned(),
        Cow::Owned(s) => s,
    }
}

fn number(field: char, bytes: &[u8]) -> Result<u32, PgError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            PgError::protocol(format!(
                "error field '{field}' is not a number: {:?}",
                String::from_utf8_lossy(bytes)
            ))
        })
}

impl DbError {
    /// Parses an ErrorResponse (`E`) or NoticeResponse (`N`) body.
    ///
    /// Fails (protocol error) when the body is malformed or lacks the severity, SQLSTATE or
    /// message that every PostgreSQL since 9.x sends.
    ///
    /// Internal (`proto`): no stability promise; for the fuzzers and tests.
    #[doc(hidden)]
    pub fn parse(body: &[u8]) -> Result<DbError, PgError> {
        Self::parse_message(body, "ErrorResponse")
    }

    /// Parses a NoticeResponse body (errors name the NoticeResponse).
    ///
    /// Internal (`proto`): no stability promise; for the fuzzers and tests.
    #[doc(hidden)]
    pub fn parse_notice(body: &[u8]) -> Result<DbError, PgError> {
        Self::parse_message(body, "NoticeResponse")
    }

    fn parse_message(body: &[u8], what: &'static str) -> Result<DbError, PgError> {
        let mut c = Cursor::new(body, what);
        let mut severity = None;
        let mut code = None;
        let mut message = None;
        let mut e = DbError {
            severity: String::new(),
            severity_nonlocalized: None,
            code: SqlState::SUCCESSFUL_COMPLETION,
            message: String::new(),
            detail: None,
            hint: None,
            position: None,
            where_: None,
            schema: None,
            table: None,
            column: None,
            datatype: None,
            constraint: None,
            file: None,
            line: None,
            routine: None,
        };
        let mut internal_position = None;
        let mut internal_query = None;
        loop {
            let ty = c.u8()?;
            if ty == 0 {
                break;
            }
            let value = c.cstr_bytes()?;
            match ty {
                b'S' => severity = Some(text(value)),
                b'V' => e.severity_nonlocalized = Some(text(value)),
                b'C' => code = Some(text(value)),
                b'M' => message = Some(text(value)),
                b'D' => e.detail = Some(text(value)),
                b'H' => e.hint = Some(text(value)),
                b'P' => e.position = Some(ErrorPosition::Original(number('P', value)?)),
                b'p' => internal_position = Some(number('p', value)?),
                b'q' => internal_query = Some(text(value)),
                b'W' => e.where_ = Some(text(value)),
                b's' => e.schema = Some(text(value)),
                b't' => e.table = Some(text(value)),
                b'c' => e.column = Some(text(value)),
                b'd' => e.datatype = Some(text(value)),
                b'n' => e.constraint = Some(text(value)),
                b'F' => e.file = Some(text(value)),
                b'L' => e.line = Some(number('L', value)?),
                b'R' => e.routine = Some(text(value)),
                _ => {} // the protocol says to ignore unknown fields
            }
        }
        c.finish()?;
        if let Some(position) = internal_position {
            let query = internal_query.unwrap_or_default();
            e.position = Some(ErrorPosition::Internal { position, query });
        }
        let missing = |f: &str| PgError::protocol(format!("{what} lacks the {f} field"));
        e.severity = severity.ok_or_else(|| missing("severity (S)"))?;
        e.code = SqlState::from_code(&code.ok_or_else(|| missing("SQLSTATE (C)"))?);
        e.message = message.ok_or_else(|| missing("message (M)"))?;
        Ok(e)
    }

    /// The severity as sent, possibly localized (`S`): `ERROR`, `FATAL`, `NOTICE`, …
    pub fn severity(&self) -> &str {
        &self.severity
    }

    /// The severity, never localized (`V`; PostgreSQL 9.6+).
    pub fn severity_nonlocalized(&self) -> Option<&str> {
        self.severity_nonlocalized.as_deref()
    }

    /// The severity, parsed (from `V` when present, else `S`).
    pub fn parsed_severity(&self) -> Severity {
        Severity::parse(
            self.severity_nonlocalized
                .as_deref()
                .unwrap_or(&self.severity),
        )
    }

    /// `FATAL` or `PANIC`: the server ends the session after sending this.
    pub fn is_fatal(&self) -> bool {
        matches!(self.parsed_severity(), Severity::Fatal | Severity::Panic)
    }

    /// The SQLSTATE code (`C`), e.g. `42P01`.
    pub fn code(&self) -> &str {
        self.code.code()
    }

    /// The SQLSTATE as a [`SqlState`], to compare with its named constants:
    /// `db.state() == &SqlState::UNIQUE_VIOLATION`.
    pub fn state(&self) -> &SqlState {
        &self.code
    }

    /// The primary message (`M`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Optional secondary detail (`D`).
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// Optional suggestion (`H`).
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Where in the query the error was detected (`P`, or `p` with `q`).
    pub fn position(&self) -> Option<&ErrorPosition> {
        self.position.as_ref()
    }

    /// The call stack context (`W`).
    pub fn where_(&self) -> Option<&str> {
        self.where_.as_deref()
    }

    /// The schema of the object involved (`s`).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The table involved (`t`).
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// The column involved (`c`).
    pub fn column(&self) -> Option<&str> {
        self.column.as_deref()
    }

    /// The data type involved (`d`).
    pub fn datatype(&self) -> Option<&str> {
        self.datatype.as_deref()
    }

    /// The constraint involved (`n`).
    pub fn constraint(&self) -> Option<&str> {
        self.constraint.as_deref()
    }

    /// The server source file that reported the error (`F`).
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The line in [`file`](DbError::file) (`L`).
    pub fn line(&self) -> Option<u32> {
        self.line
    }

    /// The server routine that reported the error (`R`).
    pub fn routine(&self) -> Option<&str> {
        self.routine.as_deref()
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, v) in fields {
            b.push(*t);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parses_every_field() {
        let b = body(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "23505"),
            (b'M', "duplicate key"),
            (b'D', "Key (id)=(1) already exists."),
            (b'H', "try another"),
            (b'p', "7"),
            (b'q', "SELECT 1"),
            (b'W', "PL/pgSQL function f()"),
            (b's', "public"),
            (b't', "t"),
            (b'c', "id"),
            (b'd', "int4"),
            (b'n', "t_pkey"),
            (b'F', "nbtinsert.c"),
            (b'L', "666"),
            (b'R', "_bt_check_unique"),
            (b'Z', "an unknown field is skipped"),
        ]);
        let e = DbError::parse(&b).expect("valid");
        assert_eq!(e.code(), "23505");
        assert_eq!(e.severity_nonlocalized(), Some("ERROR"));
        assert_eq!(e.parsed_severity(), Severity::Error);
        assert!(!e.is_fatal());
        assert_eq!(
            e.position(),
            Some(&ErrorPosition::Internal {
                position: 7,
                query: "SELECT 1".into()
            })
        );
        assert_eq!(e.where_(), Some("PL/pgSQL function f()"));
        assert_eq!(e.schema(), Some("public"));
        assert_eq!(e.table(), Some("t"));
        assert_eq!(e.column(), Some("id"));
        assert_eq!(e.datatype(), Some("int4"));
        assert_eq!(e.constraint(), Some("t_pkey"));
        assert_eq!(e.file(), Some("nbtinsert.c"));
        assert_eq!(e.line(), Some(666));
        assert_eq!(e.routine(), Some("_bt_check_unique"));
        assert_eq!(
            e.to_string(),
            "ERROR 23505: duplicate key\nDETAIL: Key (id)=(1) already exists.\nHINT: try another"
        );
    }

    #[test]
    fn display_without_detail_is_one_line() {
        let b = body(&[
            (b'S', "ERROR"),
            (b'C', "42P01"),
            (b'M', "relation \"x\" does not exist"),
            (b'P', "15"),
        ]);
        let e = DbError::parse(&b).expect("valid");
        assert_eq!(e.to_string(), "ERROR 42P01: relation \"x\" does not exist");
        assert_eq!(e.position(), Some(&ErrorPosition::Original(15)));
        let pg = PgError::server(e);
        assert_eq!(pg.sql_state(), Some("42P01"));
        assert!(pg.is_server() && !pg.is_transport());
    }

    #[test]
    fn malformed_bodies_are_protocol_errors() {
        assert!(DbError::parse(b"").is_err(), "no terminator");
        assert!(DbError::parse(b"Sabc").is_err(), "unterminated value");
        assert!(
            DbError::parse(&body(&[(b'S', "ERROR"), (b'M', "m")])).is_err(),
            "no code"
        );
        let bad_line = body(&[(b'S', "E"), (b'C', "1"), (b'M', "m"), (b'L', "x")]);
        assert!(DbError::parse(&bad_line).is_err());
        let mut trailing = body(&[(b'S', "E"), (b'C', "1"), (b'M', "m")]);
        trailing.push(1);
        assert!(DbError::parse(&trailing).is_err());
    }

    #[test]
    fn fatal_is_detected_from_nonlocalized_severity() {
        let b = body(&[
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "57P01"),
            (b'M', "bye"),
        ]);
        assert!(DbError::parse(&b).is_ok_and(|e| e.is_fatal()));
    }
}
