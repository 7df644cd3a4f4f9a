//! A bounds-checked reader over one message body. Every read that would run past the end
//! is a protocol error naming the message, never a panic.

use crate::PgError;

/// Reads big-endian integers and NUL-terminated strings from a message body.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The message being read, for error messages (`"DataRow"`).
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, pos: 0, what }
    }

    fn truncated(&self, wanted: usize) -> PgError {
        PgError::protocol(format!(
            "{} message truncated: needed {wanted} more bytes at offset {} of {}",
            self.what,
            self.pos,
            self.buf.len()
        ))
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.truncated(n)),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PgError> {
        let s = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, PgError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, PgError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, PgError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, PgError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, PgError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated byte string, without its terminator.
    pub(crate) fn cstr_bytes(&mut self) -> Result<&'a [u8], PgError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match rest.iter().position(|&b| b == 0) {
            Some(nul) => {
                self.pos += nul + 1;
                Ok(&rest[..nul])
            }
            None => Err(PgError::protocol(format!(
                "{} message truncated: unterminated string at offset {}",
                self.what, self.pos
            ))),
        }
    }

    /// A NUL-terminated UTF-8 string (we always ask for `client_encoding=UTF8`).
    pub(crate) fn cstr(&mut self) -> Result<&'a str, PgError> {
        let at = self.pos;
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|e| {
            PgError::protocol(format!(
                "{} message has a string at offset {at} that is not UTF-8: {e}",
                self.what
            ))
        })
    }

    /// Everything not yet read.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }

    /// Fails if bytes are left over: a body longer than its content is malformed.
    pub(crate) fn finish(&self) -> Result<(), PgError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(PgError::protocol(format!(
                "{} message has {n} unexpected trailing bytes",
                self.what
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_reports_truncation() {
        let mut c = Cursor::new(b"\x00\x01\x00\x00\x00\x02ab\0x", "Test");
        assert_eq!(c.i16().ok(), Some(1));
        assert_eq!(c.i32().ok(), Some(2));
        assert_eq!(c.cstr().ok(), Some("ab"));
        assert!(c.finish().is_err());
        let err = c.i32().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("Test message truncated"), "{err}");
        assert!(c.cstr().is_err());
        assert_eq!(c.rest(), b"x");
        assert!(c.finish().is_ok());
    }
}
