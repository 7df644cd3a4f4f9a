//! Frontend messages: thin wrappers over `postgres_protocol::message::frontend` that append
//! to a send buffer.
//!
//! Every wrapper either appends one whole message or, on failure, leaves `out` exactly as it
//! was — the crate's encoders may have written a partial message before failing, and a send
//! buffer shared by pipelined commands must never carry half a message.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use postgres_types::{ToSql, Type};

use super::row::Format;
use crate::PgError;

/// Runs `f` on `out`, truncating `out` back to its length before the call if `f` fails.
fn atomically<E>(
    out: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    err: impl FnOnce(E) -> PgError,
) -> Result<(), PgError> {
    let before = out.len();
    f(out).map_err(|e| {
        out.truncate(before);
        err(e)
    })
}

fn nul_error(what: &'static str) -> impl FnOnce(std::io::Error) -> PgError {
    move |e| PgError::conversion(format!("cannot encode {what}: {e}"))
}

/// Which kind of server object a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement (`S`).
    Statement,
    /// A portal (`P`).
    Portal,
}

impl Target {
    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
}

/// StartupMessage (protocol 3.0) with the given `(name, value)` parameters.
pub fn startup<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    out: &mut BytesMut,
) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::startup_message(params, out),
        nul_error("startup parameters"),
    )
}

/// PasswordMessage carrying a cleartext or MD5-hashed password.
pub fn password(password: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::password_message(password, out),
        |_| {
            // never echo the password
            PgError::auth("the password contains a NUL byte, which the protocol cannot carry")
        },
    )
}

/// SASLInitialResponse.
pub fn sasl_initial_response(
    mechanism: &str,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::sasl_initial_response(mechanism, data, out),
        nul_error("SASLInitialResponse"),
    )
}

/// SASLResponse.
pub fn sasl_response(data: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::sasl_response(data, out),
        nul_error("SASLResponse"),
    )
}

/// Query (simple protocol). The reply is read by [`super::reply::Reply::simple`].
pub fn query(sql: &str, out: &mut BytesMut) -> Result<(), PgError> {
    atomically(out, |out| frontend::query(sql, out), nul_error("query"))
}

/// Parse: prepares `sql` as statement `name` (`""` is the unnamed statement), with
/// `param_types` OIDs (0 or omitted lets the server infer a parameter's type).
pub fn parse(
    name: &str,
    sql: &str,
    param_types: &[u32],
    out: &mut BytesMut,
) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::parse(name, sql, param_types.iter().copied(), out),
        nul_error("Parse"),
    )
}

/// Bind: binds `params` to `statement` as portal `portal` (`""`: the unnamed portal),
/// asking for every result column in binary.
///
/// `param_types` are the statement's parameter types (from its ParameterDescription). Each
/// parameter is encoded with `ToSql::to_sql_checked` in the format it asks for; a count
/// mismatch, a type the value cannot be written as, or an encoding failure is a conversion
/// error naming the parameter, and leaves `out` untouched.
pub fn bind(
    portal: &str,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
    param_types: &[Type],
    out: &mut BytesMut,
) -> Result<(), PgError> {
    if params.len() != param_types.len() {
        return Err(PgError::conversion(format!(
            "statement expects {} parameters but {} were given",
            param_types.len(),
            params.len()
        )));
    }
    let formats = params
        .iter()
        .zip(param_types)
        .map(|(p, ty)| match p.encode_format(ty) {
            postgres_types::Format::Text => Format::Text.code(),
            postgres_types::Format::Binary => Format::Binary.code(),
        });
    let mut failed_at = 0usize;
    let values = params.iter().zip(param_types).enumerate();
    let serializer = |(i, (p, ty)): (usize, (&&(dyn ToSql + Sync), &Type)), buf: &mut BytesMut| {
        failed_at = i;
        match p.to_sql_checked(ty, buf)? {
            postgres_types::IsNull::Yes => Ok(postgres_protocol::IsNull::Yes),
            postgres_types::IsNull::No => Ok(postgres_protocol::IsNull::No),
        }
    };
    let before = out.len();
    let result = frontend::bind(
        portal,
        statement,
        formats,
        values,
        serializer,
        Some(Format::Binary.code()),
        out,
    );
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            out.truncate(before);
            Err(match e {
                frontend::BindError::Conversion(e) => {
                    let ty = param_types.get(failed_at).map_or("?", Type::name);
                    PgError::conversion_with(
                        format!(
                            "parameter ${} (type {ty}) could not be encoded",
                            failed_at + 1
                        ),
                        e,
                    )
                }
                frontend::BindError::Serialization(e) => nul_error("Bind")(e),
            })
        }
    }
}

/// Bind (see [`bind`]) to the unnamed portal, then Execute it for all rows, then Sync: the
/// whole of a cached statement's query. Execute and Sync are appended as one constant (a test
/// checks it against the crate's encoders): through `frontend::execute` and `frontend::sync`
/// they cost ~40 instructions of every parameterized query (callgrind). A hand-written Bind
/// was tried too and measured no faster than the crate's (3 478 vs 3 437 instructions per
/// `SELECT $1::int8 + 1`), so Bind stays the crate's.
pub fn bind_execute_sync(
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
    param_types: &[Type],
    out: &mut BytesMut,
) -> Result<(), PgError> {
    bind("", statement, params, param_types, out)?;
    out.extend_from_slice(EXECUTE_ALL_SYNC);
    Ok(())
}

/// Execute of the unnamed portal with no row limit (`E`, length 9, `""`, 0), then Sync.
const EXECUTE_ALL_SYNC: &[u8] = b"E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";

/// Bind of parameterless statement `statement` to the unnamed portal with every result
/// column in text format (no format codes), Execute for all rows, Sync: a cached statement
/// run the way a simple Query reports its rows (`conn/auto.rs`).
pub fn bind_text_execute_sync(statement: &str, out: &mut BytesMut) -> Result<(), PgError> {
    use bytes::BufMut;
    if statement.contains('\0') {
        return Err(PgError::conversion(
            "cannot encode Bind: NUL in a statement name",
        ));
    }
    // Length, portal "" (1 byte), the name and its NUL, three zero counts (parameter
    // formats, parameters, result formats).
    let len = 4 + 1 + statement.len() + 1 + 6;
    let Ok(len32) = i32::try_from(len) else {
        return Err(PgError::conversion(
            "cannot encode Bind: statement name too long",
        ));
    };
    out.reserve(1 + len + EXECUTE_ALL_SYNC.len());
    out.put_u8(b'B');
    out.put_i32(len32);
    out.put_u8(0);
    out.put_slice(statement.as_bytes());
    out.put_u8(0);
    out.put_i16(0);
    out.put_i16(0);
    out.put_i16(0);
    out.extend_from_slice(EXECUTE_ALL_SYNC);
    Ok(())
}

/// Describe a statement or portal. For a statement the server answers ParameterDescription
/// then RowDescription or NoData.
pub fn describe(target: Target, name: &str, out: &mut BytesMut) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::describe(target.byte(), name, out),
        nul_error("Describe"),
    )
}

/// Execute portal `portal`, returning at most `max_rows` rows (0: all).
pub fn execute(portal: &str, max_rows: i32, out: &mut BytesMut) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::execute(portal, max_rows, out),
        nul_error("Execute"),
    )
}

/// Close a statement or portal (the server answers CloseComplete, even if it did not exist).
pub fn close(target: Target, name: &str, out: &mut BytesMut) -> Result<(), PgError> {
    atomically(
        out,
        |out| frontend::close(target.byte(), name, out),
        nul_error("Close"),
    )
}

/// Sync: ends an extended-protocol command; the server answers ReadyForQuery.
pub fn sync(out: &mut BytesMut) {
    frontend::sync(out);
}

/// Flush: asks the server to send what it has without ending the command.
pub fn flush(out: &mut BytesMut) {
    frontend::flush(out);
}

/// The largest COPY data payload one CopyData message carries here: bigger chunks are split
/// (the server accepts up to 1 GB per message, but one message is one allocation on its side).
pub const COPY_DATA_MAX: usize = 1 << 20;

/// CopyData: `data` as one or more messages of at most [`COPY_DATA_MAX`] bytes.
pub fn copy_data(data: &[u8], out: &mut BytesMut) {
    use bytes::BufMut;
    for piece in data.chunks(COPY_DATA_MAX) {
        out.reserve(5 + piece.len());
        out.put_u8(b'd');
        // At most COPY_DATA_MAX + 4: fits an i32.
        out.put_i32((piece.len() + 4) as i32);
        out.put_slice(piece);
    }
}

/// CopyDone: the end of the COPY data; the server answers CommandComplete.
pub fn copy_done(out: &mut BytesMut) {
    frontend::copy_done(out);
}

/// CopyFail: abort the COPY with `message` (a NUL in it is replaced); the server answers an
/// error (`57014`) that carries the message.
pub fn copy_fail(message: &str, out: &mut BytesMut) {
    let clean = message.replace('\0', " ");
    let before = out.len();
    if frontend::copy_fail(&clean, out).is_err() {
        out.truncate(before);
        let _ = frontend::copy_fail("COPY aborted by the client", out);
    }
}

/// Terminate: the polite goodbye before closing the socket.
pub fn terminate(out: &mut BytesMut) {
    frontend::terminate(out);
}

/// CancelRequest: a standalone 16-byte packet sent on a *new* connection to ask the server
/// to cancel what backend `process_id` is running.
pub fn cancel_request(process_id: i32, secret_key: i32) -> [u8; 16] {
    let mut buf = BytesMut::with_capacity(16);
    frontend::cancel_request(process_id, secret_key, &mut buf);
    let mut out = [0u8; 16];
    if buf.len() == 16 {
        out.copy_from_slice(&buf);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_bind_matches_the_crates_encoder() {
        let mut ours = BytesMut::new();
        bind_text_execute_sync("ioxide_s7", &mut ours).expect("bind");
        let mut theirs = BytesMut::new();
        let none: [i16; 0] = [];
        let values: [Option<&[u8]>; 0] = [];
        frontend::bind(
            "",
            "ioxide_s7",
            none,
            values,
            |v: Option<&[u8]>, _buf: &mut BytesMut| -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                Ok(if v.is_some() { postgres_protocol::IsNull::No } else { postgres_protocol::IsNull::Yes })
            },
            none,
            &mut theirs,
        )
        .map_err(|_| "crate bind")
        .expect("crate bind");
        frontend::execute("", 0, &mut theirs).expect("execute");
        frontend::sync(&mut theirs);
        assert_eq!(ours, theirs);
        assert!(bind_text_execute_sync("a\0b", &mut ours).is_err());
    }

    #[test]
    fn cancel_request_is_16_bytes_with_the_magic_code() {
        let p = cancel_request(0x0102_0304, -1);
        assert_eq!(
            p,
            [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn query_with_nul_fails_and_leaves_buffer_untouched() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        let e = query("SELECT \0", &mut out).err();
        assert!(e.is_some_and(|e| e.is_conversion()));
        assert_eq!(&out[..], b"prefix");
        assert!(query("SELECT 1", &mut out).is_ok());
        assert_eq!(&out[6..], b"Q\0\0\0\x0dSELECT 1\0");
    }

    #[test]
    fn bind_encodes_binary_params_and_results() {
        let mut out = BytesMut::new();
        let n: i32 = 7;
        let s: Option<&str> = None;
        bind("", "s1", &[&n, &s], &[Type::INT4, Type::TEXT], &mut out).expect("bind");
        let expected: &[u8] = b"B\0\0\0\x20\0s1\0\0\x02\0\x01\0\x01\0\x02\0\0\0\x04\0\0\0\x07\xff\xff\xff\xff\0\x01\0\x01";
        assert_eq!(&out[..], expected);
    }

    #[test]
    fn bind_type_mismatch_is_a_conversion_error_naming_the_param() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let s = "text";
        let e = bind("", "", &[&1i32, &s], &[Type::INT4, Type::INT8], &mut out).err();
        let msg = e.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(e.is_some_and(|e| e.is_conversion()));
        assert!(msg.contains("parameter $2 (type int8)"), "{msg}");
        assert_eq!(&out[..], b"keep");
        let e = bind("", "", &[&1i32], &[], &mut out).err();
        assert!(e.is_some_and(|e| e.to_string().contains("expects 0 parameters but 1")));
    }

    /// The constant Execute + Sync tail must be exactly what the crate's encoders write.
    #[test]
    fn bind_execute_sync_is_bind_execute_and_sync() {
        let (n, big, t, none) = (7i32, -3i64, "héllo", None::<i32>);
        let bytes: &[u8] = b"\0\x01";
        type Case<'a> = (&'a str, Vec<&'a (dyn ToSql + Sync)>, Vec<Type>);
        let cases: Vec<Case<'_>> = vec![
            ("", vec![], vec![]),
            ("s12", vec![&n], vec![Type::INT4]),
            (
                "s1",
                vec![&n, &big, &t, &none, &bytes],
                vec![Type::INT4, Type::INT8, Type::TEXT, Type::INT4, Type::BYTEA],
            ),
        ];
        for (stmt, params, types) in cases {
            let mut all = BytesMut::from(&b"x"[..]);
            bind_execute_sync(stmt, &params, &types, &mut all).expect("bind_execute_sync");
            let mut parts = BytesMut::from(&b"x"[..]);
            bind("", stmt, &params, &types, &mut parts).expect("bind");
            execute("", 0, &mut parts).expect("execute");
            sync(&mut parts);
            assert_eq!(&all[..], &parts[..], "{stmt:?}");
        }
        // A failed Bind appends nothing, not even the tail.
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(bind_execute_sync("s\x001", &[], &[], &mut out).is_err());
        assert!(bind_execute_sync("s1", &[&n], &[Type::INT8], &mut out).is_err());
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn extended_messages_have_expected_bytes() {
        let mut out = BytesMut::new();
        parse("s", "SELECT $1", &[23], &mut out).expect("parse");
        describe(Target::Statement, "s", &mut out).expect("describe");
        execute("", 0, &mut out).expect("execute");
        close(Target::Statement, "s", &mut out).expect("close");
        sync(&mut out);
        terminate(&mut out);
        let expected: &[u8] = b"P\0\0\0\x16s\0SELECT $1\0\0\x01\0\0\0\x17\
D\0\0\0\x07Ss\0E\0\0\0\x09\0\0\0\0\0C\0\0\0\x07Ss\0S\0\0\0\x04X\0\0\0\x04";
        assert_eq!(&out[..], expected);
    }
}
