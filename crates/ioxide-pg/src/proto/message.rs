//! Decoding one framed backend message into a typed view that borrows its body.
//!
//! `postgres-protocol`'s `Message::parse` needs a `BytesMut` and freezes a `Bytes` per
//! message; our bodies live in a ring-owned receive buffer, so we decode by hand from a
//! `&[u8]` (no allocation, no refcount) and reuse the crate's tag constants. Variable-length
//! bodies (DataRow, RowDescription, ErrorResponse, …) are handed on as slices and validated by
//! whoever reads them ([`crate::Row`], [`crate::Columns`], [`crate::DbError`]).

use postgres_protocol::message::backend as tags;

use super::cursor::Cursor;
use super::db_error::DbError;
use crate::PgError;

/// NegotiateProtocolVersion (not among `postgres-protocol`'s constants).
pub const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';
/// CopyBothResponse (not among `postgres-protocol`'s constants).
pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// A readable name for a backend message tag, for error messages: `DataRow ('D')`.
pub fn tag_name(tag: u8) -> String {
    let name = match tag {
        tags::PARSE_COMPLETE_TAG => "ParseComplete",
        tags::BIND_COMPLETE_TAG => "BindComplete",
        tags::CLOSE_COMPLETE_TAG => "CloseComplete",
        tags::NOTIFICATION_RESPONSE_TAG => "NotificationResponse",
        tags::COPY_DONE_TAG => "CopyDone",
        tags::COMMAND_COMPLETE_TAG => "CommandComplete",
        tags::COPY_DATA_TAG => "CopyData",
        tags::DATA_ROW_TAG => "DataRow",
        tags::ERROR_RESPONSE_TAG => "ErrorResponse",
        tags::COPY_IN_RESPONSE_TAG => "CopyInResponse",
        tags::COPY_OUT_RESPONSE_TAG => "CopyOutResponse",
        COPY_BOTH_RESPONSE_TAG => "CopyBothResponse",
        tags::EMPTY_QUERY_RESPONSE_TAG => "EmptyQueryResponse",
        tags::BACKEND_KEY_DATA_TAG => "BackendKeyData",
        tags::NO_DATA_TAG => "NoData",
        tags::NOTICE_RESPONSE_TAG => "NoticeResponse",
        tags::AUTHENTICATION_TAG => "Authentication",
        tags::PORTAL_SUSPENDED_TAG => "PortalSuspended",
        tags::PARAMETER_STATUS_TAG => "ParameterStatus",
        tags::PARAMETER_DESCRIPTION_TAG => "ParameterDescription",
        tags::ROW_DESCRIPTION_TAG => "RowDescription",
        tags::READY_FOR_QUERY_TAG => "ReadyForQuery",
        NEGOTIATE_PROTOCOL_VERSION_TAG => "NegotiateProtocolVersion",
        _ => "unknown message",
    };
    if tag.is_ascii_graphic() {
        format!("{name} ('{}')", tag as char)
    } else {
        format!("{name} (0x{tag:02x})")
    }
}

/// The transaction state reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxnStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: inside a transaction block.
    InTransaction,
    /// `E`: inside a failed transaction block; commands are refused until it ends.
    Failed,
}

impl TxnStatus {
    /// Parses the status byte.
    pub fn from_byte(b: u8) -> Option<TxnStatus> {
        match b {
            b'I' => Some(TxnStatus::Idle),
            b'T' => Some(TxnStatus::InTransaction),
            b'E' => Some(TxnStatus::Failed),
            _ => None,
        }
    }

    /// The status byte as sent.
    pub fn as_byte(self) -> u8 {
        match self {
            TxnStatus::Idle => b'I',
            TxnStatus::InTransaction => b'T',
            TxnStatus::Failed => b'E',
        }
    }
}

/// An authentication request (`R`), by its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// 0: authentication succeeded.
    Ok,
    /// 2: Kerberos V5 (unsupported).
    KerberosV5,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send the MD5-hashed password with this salt.
    Md5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// 6: SCM credentials (unsupported).
    ScmCredential,
    /// 7: GSSAPI (unsupported).
    Gss,
    /// 8: GSSAPI continuation (unsupported).
    GssContinue,
    /// 9: SSPI (unsupported).
    Sspi,
    /// 10: SASL; the body lists mechanism names, each NUL-terminated, then an empty one.
    Sasl {
        /// The raw mechanism list.
        mechanisms: &'a [u8],
    },
    /// 11: SASL challenge data.
    SaslContinue(&'a [u8]),
    /// 12: SASL outcome data.
    SaslFinal(&'a [u8]),
}

/// A decoded backend message borrowing its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// `R`
    Authentication(AuthRequest<'a>),
    /// `K`: the key for CancelRequest. `secret` is the 4-byte key of protocol 3.0.
    BackendKeyData {
        /// Backend process id.
        process_id: i32,
        /// Secret key.
        secret_key: i32,
    },
    /// `2`
    BindComplete,
    /// `3`
    CloseComplete,
    /// `C`: the command tag.
    CommandComplete(CommandTag<'a>),
    /// `d`: a chunk of COPY data (COPY TO STDOUT), raw.
    CopyData(&'a [u8]),
    /// `c`
    CopyDone,
    /// `G`: the server waits for COPY data; raw body, read with [`CopyFormat::parse`].
    CopyInResponse(&'a [u8]),
    /// `H`: COPY data follows; raw body, read with [`CopyFormat::parse`].
    CopyOutResponse(&'a [u8]),
    /// `W` (streaming replication only; never accepted in a reply).
    CopyBothResponse,
    /// `D`: raw body, read through [`crate::Row`].
    DataRow(&'a [u8]),
    /// `I`
    EmptyQueryResponse,
    /// `E`: raw body, parsed by [`DbError::parse`].
    ErrorResponse(&'a [u8]),
    /// `n`
    NoData,
    /// `N`: raw body, parsed by [`DbError::parse`].
    NoticeResponse(&'a [u8]),
    /// `A`
    NotificationResponse {
        /// The notifying backend's process id.
        process_id: i32,
        /// The channel.
        channel: &'a str,
        /// The payload.
        payload: &'a str,
    },
    /// `t`: raw body, read through [`super::row::parameter_types`].
    ParameterDescription(&'a [u8]),
    /// `S`
    ParameterStatus {
        /// Parameter name.
        name: &'a str,
        /// New value.
        value: &'a str,
    },
    /// `1`
    ParseComplete,
    /// `s`
    PortalSuspended,
    /// `Z`
    ReadyForQuery(TxnStatus),
    /// `T`: raw body, parsed by [`crate::Columns::parse`].
    RowDescription(&'a [u8]),
    /// `v`: the server speaks an older minor version or ignored some `_pq_` options.
    NegotiateProtocolVersion {
        /// The newest minor protocol version the server supports.
        newest_minor: i32,
        /// How many protocol options it did not recognise.
        unrecognized: i32,
    },
}

/// What a CopyInResponse or CopyOutResponse announces: the overall format and each column's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    /// `BINARY` COPY (otherwise text or CSV: every column is text).
    pub binary: bool,
    /// Each column's format code: 0 text, 1 binary.
    pub column_formats: Vec<i16>,
}

impl CopyFormat {
    /// Reads the body of a CopyInResponse or CopyOutResponse.
    pub fn parse(body: &[u8]) -> Result<CopyFormat, PgError> {
        let mut c = Cursor::new(body, "CopyInResponse/CopyOutResponse");
        let overall = c.u8()?;
        if overall > 1 {
            return Err(PgError::protocol(format!(
                "COPY response announces format {overall} (expected 0 text or 1 binary)"
            )));
        }
        let n = c.i16()?;
        let n = usize::try_from(n)
            .map_err(|_| PgError::protocol(format!("COPY response announces {n} columns")))?;
        let mut column_formats = Vec::with_capacity(n.min(1600));
        for _ in 0..n {
            let f = c.i16()?;
            if !(0..=1).contains(&f) {
                return Err(PgError::protocol(format!(
                    "COPY response announces column format {f} (expected 0 or 1)"
                )));
            }
            column_formats.push(f);
        }
        c.finish()?;
        Ok(CopyFormat {
            binary: overall == 1,
            column_formats,
        })
    }
}

/// A command tag (`SELECT 1`, `INSERT 0 3`, `CREATE TABLE`) as it arrived, without its NUL.
///
/// Checked when decoded (one terminating NUL, valid UTF-8), but kept as bytes: every query
/// receives one, few callers read it, and turning bytes into a `&str` safely means running
/// the UTF-8 validator — ~110 instructions for `SELECT 1` (callgrind), a few percent of a
/// whole pipelined query. Decoding checks the usual all-ASCII tag with a plain byte loop and
/// falls back to the full validator only for anything else.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandTag<'a>(&'a [u8]);

impl<'a> CommandTag<'a> {
    /// Decodes a CommandComplete body.
    pub fn decode(body: &'a [u8]) -> Result<CommandTag<'a>, PgError> {
        match body.split_last() {
            // The common case: ASCII, one NUL, at the end.
            Some((0, tag)) if tag.iter().all(|&b| (1..0x80).contains(&b)) => Ok(CommandTag(tag)),
            _ => {
                let mut c = Cursor::new(body, "CommandComplete");
                let tag = c.cstr()?;
                c.finish()?;
                Ok(CommandTag(tag.as_bytes()))
            }
        }
    }

    /// The tag's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The tag as text.
    pub fn as_str(&self) -> &'a str {
        // Checked at decode (or built from a `&str`), so this cannot fail.
        std::str::from_utf8(self.0).unwrap_or_default()
    }
}

impl<'a> From<&'a str> for CommandTag<'a> {
    fn from(tag: &'a str) -> CommandTag<'a> {
        CommandTag(tag.as_bytes())
    }
}

impl std::fmt::Debug for CommandTag<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for CommandTag<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn empty(body: &[u8], what: &'static str) -> Result<(), PgError> {
    Cursor::new(body, what).finish()
}

impl<'a> BackendMessage<'a> {
    /// Decodes the message with type `tag` and body `body` (as framed by
    /// [`super::frame::next_frame`]). Fixed-layout bodies are checked exactly; unknown tags
    /// and malformed bodies are protocol errors.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<BackendMessage<'a>, PgError> {
        let msg = match tag {
            tags::AUTHENTICATION_TAG => BackendMessage::Authentication(decode_auth(body)?),
            tags::BACKEND_KEY_DATA_TAG => {
                let mut c = Cursor::new(body, "BackendKeyData");
                let process_id = c.i32()?;
                let secret_key = c.i32()?;
                c.finish()?;
                BackendMessage::BackendKeyData {
                    process_id,
                    secret_key,
                }
            }
            tags::BIND_COMPLETE_TAG => {
                empty(body, "BindComplete")?;
                BackendMessage::BindComplete
            }
            tags::CLOSE_COMPLETE_TAG => {
                empty(body, "CloseComplete")?;
                BackendMessage::CloseComplete
            }
            tags::COMMAND_COMPLETE_TAG => {
                BackendMessage::CommandComplete(CommandTag::decode(body)?)
            }
            tags::COPY_DATA_TAG => BackendMessage::CopyData(body),
            tags::COPY_DONE_TAG => {
                empty(body, "CopyDone")?;
                BackendMessage::CopyDone
            }
            tags::COPY_IN_RESPONSE_TAG => BackendMessage::CopyInResponse(body),
            tags::COPY_OUT_RESPONSE_TAG => BackendMessage::CopyOutResponse(body),
            COPY_BOTH_RESPONSE_TAG => BackendMessage::CopyBothResponse,
            tags::DATA_ROW_TAG => BackendMessage::DataRow(body),
            tags::EMPTY_QUERY_RESPONSE_TAG => {
                empty(body, "EmptyQueryResponse")?;
                BackendMessage::EmptyQueryResponse
            }
            tags::ERROR_RESPONSE_TAG => BackendMessage::ErrorResponse(body),
            tags::NO_DATA_TAG => {
                empty(body, "NoData")?;
                BackendMessage::NoData
            }
            tags::NOTICE_RESPONSE_TAG => BackendMessage::NoticeResponse(body),
            tags::NOTIFICATION_RESPONSE_TAG => {
                let mut c = Cursor::new(body, "NotificationResponse");
                let process_id = c.i32()?;
                let channel = c.cstr()?;
                let payload = c.cstr()?;
                c.finish()?;
                BackendMessage::NotificationResponse {
                    process_id,
                    channel,
                    payload,
                }
            }
            tags::PARAMETER_DESCRIPTION_TAG => BackendMessage::ParameterDescription(body),
            tags::PARAMETER_STATUS_TAG => {
                let mut c = Cursor::new(body, "ParameterStatus");
                let name = c.cstr()?;
                let value = c.cstr()?;
                c.finish()?;
                BackendMessage::ParameterStatus { name, value }
            }
            tags::PARSE_COMPLETE_TAG => {
                empty(body, "ParseComplete")?;
                BackendMessage::ParseComplete
            }
            tags::PORTAL_SUSPENDED_TAG => {
                empty(body, "PortalSuspended")?;
                BackendMessage::PortalSuspended
            }
            tags::READY_FOR_QUERY_TAG => {
                let mut c = Cursor::new(body, "ReadyForQuery");
                let b = c.u8()?;
                c.finish()?;
                let status = TxnStatus::from_byte(b).ok_or_else(|| {
                    PgError::protocol(format!(
                        "ReadyForQuery carries an unknown transaction status 0x{b:02x}"
                    ))
                })?;
                BackendMessage::ReadyForQuery(status)
            }
            tags::ROW_DESCRIPTION_TAG => BackendMessage::RowDescription(body),
            NEGOTIATE_PROTOCOL_VERSION_TAG => {
                let mut c = Cursor::new(body, "NegotiateProtocolVersion");
                let newest_minor = c.i32()?;
                let unrecognized = c.i32()?;
                for _ in 0..unrecognized.max(0) {
                    c.cstr_bytes()?;
                }
                c.finish()?;
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized,
                }
            }
            _ => {
                return Err(PgError::protocol(format!(
                    "unknown backend message type {}",
                    tag_name(tag)
                )))
            }
        };
        Ok(msg)
    }
}

fn decode_auth(body: &[u8]) -> Result<AuthRequest<'_>, PgError> {
    let mut c = Cursor::new(body, "Authentication");
    let code = c.i32()?;
    let req = match code {
        0 => AuthRequest::Ok,
        2 => AuthRequest::KerberosV5,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let s = c.bytes(4)?;
            AuthRequest::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        6 => AuthRequest::ScmCredential,
        7 => AuthRequest::Gss,
        8 => {
            c.rest();
            AuthRequest::GssContinue
        }
        9 => AuthRequest::Sspi,
        10 => AuthRequest::Sasl {
            mechanisms: c.rest(),
        },
        11 => AuthRequest::SaslContinue(c.rest()),
        12 => AuthRequest::SaslFinal(c.rest()),
        _ => {
            return Err(PgError::protocol(format!(
                "unknown authentication request code {code}"
            )))
        }
    };
    c.finish()?;
    Ok(req)
}

/// A message the server may send at any time, outside any command's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsyncMessage<'a> {
    /// NoticeResponse: a warning or notice (log it; it does not end a command).
    Notice(Box<DbError>),
    /// NotificationResponse: a `NOTIFY` on a channel this session `LISTEN`s to.
    Notification {
        /// The notifying backend's process id.
        process_id: i32,
        /// The channel.
        channel: &'a str,
        /// The payload.
        payload: &'a str,
    },
    /// ParameterStatus: a run-time parameter changed (`SET TimeZone …`, …).
    ParameterStatus {
        /// Parameter name.
        name: &'a str,
        /// New value.
        value: &'a str,
    },
}

/// Whether `tag` is one of the asynchronous message types (NoticeResponse,
/// NotificationResponse, ParameterStatus).
pub fn is_async(tag: u8) -> bool {
    matches!(
        tag,
        tags::NOTICE_RESPONSE_TAG | tags::NOTIFICATION_RESPONSE_TAG | tags::PARAMETER_STATUS_TAG
    )
}

/// Classifies a message before it goes to a reply machine: `Ok(Some(_))` for an asynchronous
/// message (handle it and do not forward it), `Ok(None)` for anything else. A malformed
/// asynchronous message is a protocol error.
pub fn classify_async(tag: u8, body: &[u8]) -> Result<Option<AsyncMessage<'_>>, PgError> {
    if !is_async(tag) {
        return Ok(None);
    }
    Ok(Some(match BackendMessage::decode(tag, body)? {
        BackendMessage::NoticeResponse(body) => {
            AsyncMessage::Notice(Box::new(DbError::parse_notice(body)?))
        }
        BackendMessage::NotificationResponse {
            process_id,
            channel,
            payload,
        } => AsyncMessage::Notification {
            process_id,
            channel,
            payload,
        },
        BackendMessage::ParameterStatus { name, value } => {
            AsyncMessage::ParameterStatus { name, value }
        }
        _ => return Ok(None),
    }))
}

/// Logs a notice through `tracing`, at a level matching its severity.
pub fn log_notice(notice: &DbError) {
    use super::db_error::Severity;
    match notice.parsed_severity() {
        Severity::Warning => tracing::warn!(code = notice.code(), "server notice: {notice}"),
        Severity::Debug | Severity::Log => {
            tracing::debug!(code = notice.code(), "server notice: {notice}")
        }
        _ => tracing::info!(code = notice.code(), "server notice: {notice}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fixed_layouts_strictly() {
        assert_eq!(
            BackendMessage::decode(b'1', b"").ok(),
            Some(BackendMessage::ParseComplete)
        );
        assert!(BackendMessage::decode(b'1', b"x").is_err());
        assert_eq!(
            BackendMessage::decode(b'Z', b"T").ok(),
            Some(BackendMessage::ReadyForQuery(TxnStatus::InTransaction))
        );
        assert!(BackendMessage::decode(b'Z', b"Q").is_err());
        assert!(BackendMessage::decode(b'Z', b"").is_err());
        assert_eq!(
            BackendMessage::decode(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]).ok(),
            Some(BackendMessage::BackendKeyData {
                process_id: 7,
                secret_key: 9
            })
        );
        assert!(BackendMessage::decode(b'K', &[0; 7]).is_err());
        assert_eq!(
            BackendMessage::decode(b'C', b"SELECT 1\0").ok(),
            Some(BackendMessage::CommandComplete("SELECT 1".into()))
        );
        assert_eq!(
            BackendMessage::decode(b'C', "SELECT 1 — é\0".as_bytes())
                .ok()
                .map(|m| match m {
                    BackendMessage::CommandComplete(t) => t.as_str(),
                    _ => "",
                }),
            Some("SELECT 1 — é")
        );
        for bad in [&b"SELECT 1"[..], b"SELECT\x001\0", b"SELECT \xff\0", b""] {
            assert!(BackendMessage::decode(b'C', bad).is_err(), "{bad:?}");
        }
        let e = BackendMessage::decode(b'!', b"")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("protocol error: unknown backend message type unknown message ('!')")
        );
    }

    #[test]
    fn decodes_auth_requests() {
        let md5 = [0, 0, 0, 5, 1, 2, 3, 4];
        assert_eq!(
            BackendMessage::decode(b'R', &md5).ok(),
            Some(BackendMessage::Authentication(AuthRequest::Md5Password {
                salt: [1, 2, 3, 4]
            }))
        );
        assert!(BackendMessage::decode(b'R', &md5[..6]).is_err());
        assert!(BackendMessage::decode(b'R', &[0, 0, 0, 42]).is_err());
        assert!(
            BackendMessage::decode(b'R', &[0, 0, 0, 0, 0]).is_err(),
            "trailing bytes"
        );
    }

    #[test]
    fn classifies_async_messages() {
        let ps = BackendMessage::decode(b'S', b"TimeZone\0UTC\0");
        assert!(matches!(
            ps,
            Ok(BackendMessage::ParameterStatus {
                name: "TimeZone",
                ..
            })
        ));
        let n = classify_async(b'A', b"\0\0\0\x01chan\0hi\0").ok().flatten();
        assert_eq!(
            n,
            Some(AsyncMessage::Notification {
                process_id: 1,
                channel: "chan",
                payload: "hi"
            })
        );
        assert_eq!(classify_async(b'D', b"garbage").ok(), Some(None));
        assert!(classify_async(b'S', b"unterminated").is_err());
        let notice = classify_async(b'N', b"SNOTICE\0C00000\0Mhello\0\0")
            .ok()
            .flatten();
        assert!(matches!(notice, Some(AsyncMessage::Notice(n)) if n.message() == "hello"));
    }
}
