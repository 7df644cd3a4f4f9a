//! Framing: where the next backend message starts and ends in a receive buffer.
//!
//! A backend message is `tag: u8`, `len: i32` (counting itself, not the tag), then `len - 4`
//! body bytes. The length is checked from the 5-byte header alone, before the body arrives,
//! so a receive buffer never has to grow past `max_message_bytes` to discover that a message
//! is too large. Nothing here allocates.

use std::ops::Range;

use crate::PgError;

/// Bytes in a message header: the tag and the 4-byte length.
pub const HEADER_LEN: usize = 5;

/// One complete backend message found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte (`b'D'` for DataRow, …).
    pub tag: u8,
    /// Total bytes of the message in the buffer, header included: consume this many.
    pub len: usize,
}

impl Frame {
    /// Where the body lies in the buffer the frame was found in.
    pub fn body_range(&self) -> Range<usize> {
        HEADER_LEN..self.len
    }

    /// The body, from the buffer this frame was found in. Empty if `buf` is not that buffer
    /// (or is shorter than the frame).
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.body_range()).unwrap_or_default()
    }
}

/// What the header at the start of `buf` announces: `Ok(None)` if fewer than 5 bytes are
/// there, else the total message length, validated against `max` (the total, header
/// included, may not exceed `max`).
#[inline]
fn announced_len(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, PgError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || len > i32::MAX as u32 {
        return Err(bad_length(tag, len, max));
    }
    // len <= i32::MAX, so this cannot overflow even on 32-bit targets.
    let total = len as usize + 1;
    if total > max {
        return Err(bad_length(tag, len, max));
    }
    Ok(Some((tag, total)))
}

/// The error for a header [`announced_len`] refuses (kept out of the hot path).
#[cold]
#[inline(never)]
fn bad_length(tag: u8, len: u32, max: usize) -> PgError {
    let name = super::message::tag_name(tag);
    if len < 4 {
        PgError::protocol(format!(
            "message {name} announces length {len}, below the minimum of 4"
        ))
    } else if len > i32::MAX as u32 {
        PgError::protocol(format!(
            "message {name} announces length {len}, which overflows a signed 32-bit length"
        ))
    } else {
        PgError::message_too_large(len as usize + 1, max)
    }
}

/// Finds the next complete message at the start of `buf`.
///
/// `Ok(None)`: more bytes are needed ([`bytes_needed`] says how many at least). An error is
/// final: the stream is corrupt and the connection must be discarded.
///
/// ```
/// use ioxide_pg::proto::frame::next_frame;
/// let buf = b"Z\0\0\0\x05Irest";
/// let frame = next_frame(buf, 1024).unwrap().unwrap();
/// assert_eq!((frame.tag, frame.len, frame.body(buf)), (b'Z', 6, &b"I"[..]));
/// assert!(next_frame(&buf[..3], 1024).unwrap().is_none());
/// ```
#[inline]
pub fn next_frame(buf: &[u8], max: usize) -> Result<Option<Frame>, PgError> {
    match announced_len(buf, max)? {
        Some((tag, len)) if buf.len() >= len => Ok(Some(Frame { tag, len })),
        _ => Ok(None),
    }
}

/// How many more bytes `buf` needs before [`next_frame`] can return a message: `0` when a
/// complete message is already there. Before the header is complete this is only the
/// header's remainder; after it, the exact remainder of the message.
pub fn bytes_needed(buf: &[u8], max: usize) -> Result<usize, PgError> {
    match announced_len(buf, max)? {
        None => Ok(HEADER_LEN - buf.len()),
        Some((_, len)) => Ok(len.saturating_sub(buf.len())),
    }
}

/// Iterates over the complete messages at the start of a buffer, stopping at the first
/// incomplete one. [`Frames::consumed`] then says how many bytes the yielded messages used.
#[derive(Debug)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Iterates over `buf` with message limit `max`.
    pub fn new(buf: &'a [u8], max: usize) -> Frames<'a> {
        Frames {
            buf,
            pos: 0,
            max,
            failed: false,
        }
    }

    /// Bytes taken by the messages yielded so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    /// `(tag, body)` of each complete message, or the framing error (after which iteration
    /// ends).
    type Item = Result<(u8, &'a [u8]), PgError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        match next_frame(rest, self.max) {
            Ok(Some(frame)) => {
                self.pos += frame.len;
                Some(Ok((frame.tag, frame.body(rest))))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_header_then_body() {
        let msg = b"C\0\0\0\x0dSELECT 1\0";
        for cut in 0..msg.len() {
            assert_eq!(next_frame(&msg[..cut], 100).ok(), Some(None), "cut {cut}");
            let need = bytes_needed(&msg[..cut], 100).unwrap_or(0);
            assert!(
                need > 0 && cut + need <= msg.len(),
                "cut {cut}: need {need}"
            );
        }
        let f = next_frame(msg, 100).ok().flatten();
        assert_eq!(f, Some(Frame { tag: b'C', len: 14 }));
        assert_eq!(f.map(|f| f.body(msg)), Some(&b"SELECT 1\0"[..]));
        assert_eq!(bytes_needed(msg, 100).ok(), Some(0));
    }

    #[test]
    fn short_length_is_rejected() {
        let e = next_frame(b"Z\0\0\0\x03", 100).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("protocol error: message ReadyForQuery ('Z') announces length 3, below the minimum of 4")
        );
    }

    #[test]
    fn overflowing_length_is_rejected() {
        let e = next_frame(b"D\x80\0\0\0", usize::MAX).err();
        assert!(e.is_some_and(|e| e.is_protocol() && e.to_string().contains("overflows")));
    }

    #[test]
    fn oversize_is_detected_from_the_header_alone() {
        // 5 header bytes announcing a 1 MiB message: rejected before any body arrives.
        let e = next_frame(b"D\0\x10\0\0", 64 * 1024).err();
        assert!(e.is_some_and(|e| e.to_string().contains("1048577 bytes")));
        // Exactly at the limit is fine.
        assert_eq!(bytes_needed(b"D\0\0\0\x09", 10).ok(), Some(5));
        assert!(bytes_needed(b"D\0\0\0\x0a", 10).is_err());
    }

    #[test]
    fn frames_iterates_and_counts() {
        let buf = b"1\0\0\0\x042\0\0\0\x04Z\0\0\0\x05IZ\0";
        let mut it = Frames::new(buf, 100);
        let tags: Vec<u8> = it.by_ref().filter_map(Result::ok).map(|(t, _)| t).collect();
        assert_eq!(tags, b"12Z");
        assert_eq!(it.consumed(), 16);
    }
}
