//! Raw PostgreSQL v3 protocol messages as bytes, for scripting a [`crate::FakeServer`] and
//! for talking to it from a hand-rolled client. Deliberately independent of the driver's own
//! codec, so a codec bug cannot hide in both sides of a test.

/// Backend (server → client) messages.
pub mod backend {
    /// A message with `tag` and `body`: `tag`, then an i32 length covering itself and the body.
    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(tag);
        out.extend_from_slice(&len_i32(body.len() + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// `R` AuthenticationOk.
    pub fn authentication_ok() -> Vec<u8> {
        message(b'R', &0i32.to_be_bytes())
    }

    /// `R` AuthenticationCleartextPassword.
    pub fn authentication_cleartext_password() -> Vec<u8> {
        message(b'R', &3i32.to_be_bytes())
    }

    /// `R` AuthenticationMD5Password with the 4-byte salt.
    pub fn authentication_md5_password(salt: [u8; 4]) -> Vec<u8> {
        let mut body = 5i32.to_be_bytes().to_vec();
        body.extend_from_slice(&salt);
        message(b'R', &body)
    }

    /// `R` AuthenticationSASL listing `mechanisms` (e.g. `["SCRAM-SHA-256"]`).
    pub fn authentication_sasl(mechanisms: &[&str]) -> Vec<u8> {
        let mut body = 10i32.to_be_bytes().to_vec();
        for m in mechanisms {
            push_cstr(&mut body, m);
        }
        body.push(0);
        message(b'R', &body)
    }

    /// `S` ParameterStatus.
    pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        let mut body = Vec::new();
        push_cstr(&mut body, name);
        push_cstr(&mut body, value);
        message(b'S', &body)
    }

    /// `K` BackendKeyData.
    pub fn backend_key_data(process_id: i32, secret_key: i32) -> Vec<u8> {
        let mut body = process_id.to_be_bytes().to_vec();
        body.extend_from_slice(&secret_key.to_be_bytes());
        message(b'K', &body)
    }

    /// `Z` ReadyForQuery; `status` is `b'I'` (idle), `b'T'` (in transaction) or `b'E'`.
    pub fn ready_for_query(status: u8) -> Vec<u8> {
        message(b'Z', &[status])
    }

    /// `T` RowDescription of text columns (type oid 25, text format).
    pub fn row_description(columns: &[&str]) -> Vec<u8> {
        let mut body = i16_count(columns.len()).to_be_bytes().to_vec();
        for name in columns {
            push_cstr(&mut body, name);
            body.extend_from_slice(&0i32.to_be_bytes()); // table oid
            body.extend_from_slice(&0i16.to_be_bytes()); // column attnum
            body.extend_from_slice(&25i32.to_be_bytes()); // type oid: text
            body.extend_from_slice(&(-1i16).to_be_bytes()); // type size: varlena
            body.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
            body.extend_from_slice(&0i16.to_be_bytes()); // format: text
        }
        message(b'T', &body)
    }

    /// `D` DataRow; `None` is SQL NULL.
    pub fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut body = i16_count(values.len()).to_be_bytes().to_vec();
        for value in values {
            match value {
                Some(v) => {
                    body.extend_from_slice(&len_i32(v.len()).to_be_bytes());
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        message(b'D', &body)
    }

    /// `C` CommandComplete with `tag` (e.g. `"SELECT 1"`).
    pub fn command_complete(tag: &str) -> Vec<u8> {
        let mut body = Vec::new();
        push_cstr(&mut body, tag);
        message(b'C', &body)
    }

    /// `E` ErrorResponse with severity (`S` and `V`), SQLSTATE `code` and `message`.
    pub fn error_response(severity: &str, code: &str, message_text: &str) -> Vec<u8> {
        message(b'E', &notice_fields(severity, code, message_text))
    }

    /// `N` NoticeResponse, fields as in [`error_response`].
    pub fn notice_response(severity: &str, code: &str, message_text: &str) -> Vec<u8> {
        message(b'N', &notice_fields(severity, code, message_text))
    }

    /// `I` EmptyQueryResponse.
    pub fn empty_query_response() -> Vec<u8> {
        message(b'I', &[])
    }

    /// `1` ParseComplete.
    pub fn parse_complete() -> Vec<u8> {
        message(b'1', &[])
    }

    /// `2` BindComplete.
    pub fn bind_complete() -> Vec<u8> {
        message(b'2', &[])
    }

    /// `3` CloseComplete.
    pub fn close_complete() -> Vec<u8> {
        message(b'3', &[])
    }

    /// `n` NoData.
    pub fn no_data() -> Vec<u8> {
        message(b'n', &[])
    }

    /// `t` ParameterDescription with the parameter type oids.
    pub fn parameter_description(type_oids: &[u32]) -> Vec<u8> {
        let mut body = i16_count(type_oids.len()).to_be_bytes().to_vec();
        for oid in type_oids {
            body.extend_from_slice(&oid.to_be_bytes());
        }
        message(b't', &body)
    }

    /// A whole successful startup answer: AuthenticationOk, the usual ParameterStatus
    /// messages (`server_version` 15.0, UTF8 encodings, `DateStyle`, `integer_datetimes`,
    /// `standard_conforming_strings`), BackendKeyData(4242, 1234567) and ReadyForQuery `I`.
    pub fn handshake_ok() -> Vec<u8> {
        let mut out = authentication_ok();
        for (name, value) in [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            out.extend(parameter_status(name, value));
        }
        out.extend(backend_key_data(4242, 1_234_567));
        out.extend(ready_for_query(b'I'));
        out
    }

    /// The answer to a simple query returning one text row: RowDescription, DataRow,
    /// CommandComplete `SELECT 1`, ReadyForQuery `I`.
    pub fn simple_query_result(column: &str, value: &str) -> Vec<u8> {
        let mut out = row_description(&[column]);
        out.extend(data_row(&[Some(value)]));
        out.extend(command_complete("SELECT 1"));
        out.extend(ready_for_query(b'I'));
        out
    }

    fn notice_fields(severity: &str, code: &str, message_text: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message_text),
        ] {
            body.push(field);
            push_cstr(&mut body, value);
        }
        body.push(0);
        body
    }

    pub(crate) fn push_cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// Lengths in test messages are small; saturate rather than wrap if a test goes wild.
    pub(crate) fn len_i32(len: usize) -> i32 {
        i32::try_from(len).unwrap_or(i32::MAX)
    }

    fn i16_count(n: usize) -> i16 {
        i16::try_from(n).unwrap_or(i16::MAX)
    }
}

/// Frontend (client → server) messages, and parsing what a client sent.
pub mod frontend {
    use super::backend::{len_i32, message, push_cstr};

    /// The protocol 3.0 version code in a StartupMessage.
    pub const PROTOCOL_3_0: i32 = 196_608;
    /// The request code of an SSLRequest.
    pub const SSL_REQUEST_CODE: i32 = 80_877_103;
    /// The request code of a GSSENCRequest.
    pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
    /// The request code of a CancelRequest.
    pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

    /// A StartupMessage (protocol 3.0) with `name`/`value` parameters.
    pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (name, value) in params {
            push_cstr(&mut body, name);
            push_cstr(&mut body, value);
        }
        body.push(0);
        untagged(&body)
    }

    /// An SSLRequest.
    pub fn ssl_request() -> Vec<u8> {
        untagged(&SSL_REQUEST_CODE.to_be_bytes())
    }

    /// A CancelRequest for the backend identified by BackendKeyData.
    pub fn cancel_request(process_id: i32, secret_key: i32) -> Vec<u8> {
        let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        body.extend_from_slice(&process_id.to_be_bytes());
        body.extend_from_slice(&secret_key.to_be_bytes());
        untagged(&body)
    }

    /// `Q` Query.
    pub fn query(sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        push_cstr(&mut body, sql);
        message(b'Q', &body)
    }

    /// `X` Terminate.
    pub fn terminate() -> Vec<u8> {
        message(b'X', &[])
    }

    fn untagged(body: &[u8]) -> Vec<u8> {
        let mut out = len_i32(body.len() + 4).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// A decoded untagged startup-phase packet.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StartupPacket {
        /// The protocol version or request code (e.g. [`PROTOCOL_3_0`]).
        pub code: i32,
        /// The name/value parameters of a StartupMessage (empty for requests).
        pub params: Vec<(String, String)>,
    }

    impl StartupPacket {
        /// The value of parameter `name` (e.g. `"user"`), if sent.
        pub fn param(&self, name: &str) -> Option<&str> {
            self.params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Decodes a whole startup-phase packet (length prefix included); `None` if malformed.
    pub fn parse_startup(packet: &[u8]) -> Option<StartupPacket> {
        let len = usize::try_from(i32::from_be_bytes(packet.get(0..4)?.try_into().ok()?)).ok()?;
        if len != packet.len() || len < 8 {
            return None;
        }
        let code = i32::from_be_bytes(packet.get(4..8)?.try_into().ok()?);
        let mut params = Vec::new();
        if code == PROTOCOL_3_0 {
            let mut fields = packet[8..].split(|&b| b == 0);
            loop {
                let name = fields.next()?;
                if name.is_empty() {
                    break;
                }
                let value = fields.next()?;
                params.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
        }
        Some(StartupPacket { code, params })
    }
}

#[cfg(test)]
mod tests {
    use super::{backend, frontend};

    #[test]
    fn ready_for_query_is_exact() {
        assert_eq!(backend::ready_for_query(b'I'), b"Z\0\0\0\x05I");
        assert_eq!(backend::authentication_ok(), b"R\0\0\0\x08\0\0\0\0");
    }

    #[test]
    fn data_row_encodes_null_as_minus_one() {
        assert_eq!(
            backend::data_row(&[None, Some("7")]),
            b"D\0\0\0\x0f\0\x02\xff\xff\xff\xff\0\0\0\x017"
        );
    }

    #[test]
    fn startup_round_trips() {
        let packet = frontend::startup(&[("user", "u"), ("database", "d")]);
        let parsed = frontend::parse_startup(&packet).expect("well-formed");
        assert_eq!(parsed.code, frontend::PROTOCOL_3_0);
        assert_eq!(parsed.param("user"), Some("u"));
        assert_eq!(parsed.param("database"), Some("d"));
        assert_eq!(frontend::parse_startup(&packet[..packet.len() - 1]), None);
    }
}
