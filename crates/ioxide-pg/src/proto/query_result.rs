//! [`QueryResult`]: the answer to a simple query, accumulated from reply events.
//!
//! Rule for multi-statement strings (`SELECT 1; UPDATE t SET …`):
//! - [`command_tag`](QueryResult::command_tag) and [`rows`](QueryResult::rows) describe the
//!   **last** statement that completed;
//! - [`value`](QueryResult::value) is the first column of the first row of the **first**
//!   result set that returned any rows.
//!
//! A server error aborts the rest of the string (PostgreSQL runs it as one implicit
//! transaction) and the whole query fails with that error; `QueryResult` never holds errors.

use super::cursor::Cursor;
use super::message::CommandTag;
use super::reply::ReplyEvent;
use super::row::walk_data_row;
use crate::PgError;
use compact_str::CompactString;

/// The result of a simple query: first value, row count and command tag.
///
/// ```
/// use ioxide_pg::proto::reply::ReplyEvent;
/// use ioxide_pg::QueryResult;
/// let mut r = QueryResult::new();
/// // RowDescription of one column, then a DataRow holding the text "42"
/// r.accept(&ReplyEvent::RowDescription(b"\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"))?;
/// r.accept(&ReplyEvent::DataRow(b"\0\x01\0\0\0\x0242"))?;
/// r.accept(&ReplyEvent::CommandComplete("SELECT 1".into()))?;
/// assert_eq!((r.value(), r.rows(), r.command_tag()), (Some("42"), 1, "SELECT 1"));
/// # Ok::<(), ioxide_pg::PgError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Inline up to 24 bytes: a typical value or tag costs no allocation.
    value: Option<CompactString>,
    /// A row has been seen in some result set: `value` is final.
    have_value: bool,
    /// Column count of the current result set, to validate its DataRows.
    columns: Option<u16>,
    tag: TagBuf,
    statements: usize,
    empty_query: bool,
}

/// The row count a command tag reports: the last number for `SELECT n`, `INSERT oid n`,
/// `UPDATE n`, `DELETE n`, `MERGE n`, `FETCH n`, `MOVE n`, `COPY n`; 0 for other tags.
pub fn rows_from_tag(tag: &str) -> u64 {
    rows_from_tag_bytes(tag.as_bytes())
}

fn rows_from_tag_bytes(tag: &[u8]) -> u64 {
    let mut words = tag.split(|&b| b == b' ');
    match words.next() {
        Some(
            b"SELECT" | b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"FETCH" | b"MOVE" | b"COPY",
        ) => words.next_back().and_then(parse_count).unwrap_or(0),
        _ => 0,
    }
}

/// A decimal count without sign, as the server writes it; `None` on anything else.
fn parse_count(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let d = d.checked_sub(b'0').filter(|&d| d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// An owned command tag, stored as the bytes [`CommandTag`] checked at decode and turned
/// into text only when someone asks. Tags up to [`TAG_INLINE`] bytes (every `SELECT n`,
/// `INSERT 0 n`, `UPDATE n` below 10^12) are held inline; longer ones (`CREATE MATERIALIZED
/// VIEW`, …) on the heap. A plain array beats `SmallVec::extend_from_slice` here (two
/// `memcpy` calls and a shift for what is usually eight bytes).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum TagBuf {
    Inline { len: u8, bytes: [u8; TAG_INLINE] },
    Heap(Box<[u8]>),
}

/// The longest command tag a [`TagBuf`] holds without allocating.
const TAG_INLINE: usize = 22;

impl Default for TagBuf {
    fn default() -> TagBuf {
        TagBuf::Inline {
            len: 0,
            bytes: [0; TAG_INLINE],
        }
    }
}

impl TagBuf {
    /// Replaces the stored tag.
    pub(crate) fn set(&mut self, tag: CommandTag<'_>) {
        let tag = tag.as_bytes();
        *self = match u8::try_from(tag.len()) {
            Ok(len) if tag.len() <= TAG_INLINE => {
                let mut bytes = [0; TAG_INLINE];
                bytes[..tag.len()].copy_from_slice(tag);
                TagBuf::Inline { len, bytes }
            }
            _ => TagBuf::Heap(tag.into()),
        };
    }

    fn bytes(&self) -> &[u8] {
        match self {
            TagBuf::Inline { len, bytes } => &bytes[..usize::from(*len).min(TAG_INLINE)],
            TagBuf::Heap(b) => b,
        }
    }

    /// The tag as text (`""` before any command completed).
    pub(crate) fn as_str(&self) -> &str {
        // Only ever filled from a CommandTag, which is valid UTF-8.
        std::str::from_utf8(self.bytes()).unwrap_or_default()
    }

    /// The row count the tag reports; see [`rows_from_tag`].
    pub(crate) fn rows(&self) -> u64 {
        rows_from_tag_bytes(self.bytes())
    }
}

impl std::fmt::Debug for TagBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl QueryResult {
    /// An empty result, to be filled by [`accept`](QueryResult::accept).
    ///
    /// Internal (`proto`): no stability promise; for the fuzzers and tests.
    #[doc(hidden)]
    pub fn new() -> QueryResult {
        QueryResult::default()
    }

    /// Takes one event of a simple query's reply. `ServerError`, `Done` and acknowledgements
    /// are ignored here — the connection turns a server error into the query's `Err`.
    /// A DataRow that does not fit its RowDescription is a protocol error.
    ///
    /// Internal (`proto`): no stability promise; for the fuzzers and tests.
    #[doc(hidden)]
    pub fn accept(&mut self, event: &ReplyEvent<'_>) -> Result<(), PgError> {
        match event {
            ReplyEvent::RowDescription(body) => {
                self.columns = Some(Cursor::new(body, "RowDescription").u16()?);
            }
            ReplyEvent::DataRow(body) => self.data_row(body)?,
            ReplyEvent::CommandComplete(tag) => {
                self.tag.set(*tag);
                self.statements += 1;
                self.columns = None;
            }
            ReplyEvent::EmptyQuery => self.empty_query = true,
            _ => {}
        }
        Ok(())
    }

    fn data_row(&mut self, body: &[u8]) -> Result<(), PgError> {
        let Some(columns) = self.columns else {
            return Err(PgError::protocol(
                "malformed DataRow: no RowDescription came before it",
            ));
        };
        // Every row is checked whole, not only the one whose value we keep.
        let mut first: Option<Option<&[u8]>> = None;
        walk_data_row(body, usize::from(columns), |i, _, value| {
            if i == 0 {
                first = Some(value);
            }
        })?;
        if self.have_value {
            return Ok(());
        }
        self.have_value = true;
        if let Some(Some(bytes)) = first {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| PgError::protocol(format!("DataRow text value is not UTF-8: {e}")))?;
            self.value = Some(CompactString::from(text));
        }
        Ok(())
    }

    /// The rows that follow have `n` columns: for an extended-protocol reply, whose
    /// RowDescription came with the statement's Describe, not in the reply.
    pub(crate) fn expect_columns(&mut self, n: u16) {
        self.columns = Some(n);
    }

    /// The first column of the first row of the first result set that had rows, as text.
    /// `None` for NULL or when no statement returned rows.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The row count the last statement's command tag reports (`SELECT 3` → 3, `INSERT 0 5`
    /// → 5; 0 for tags without a count such as `CREATE TABLE`).
    pub fn rows(&self) -> u64 {
        self.tag.rows()
    }

    /// The command tag of the last statement that completed (`""` if none did).
    pub fn command_tag(&self) -> &str {
        self.tag.as_str()
    }

    /// Whether the last statement was a `SET` or a `LISTEN` (session state a pool's shared
    /// connection should not carry): a length check, then a few bytes compared.
    #[inline]
    pub(crate) fn changed_session(&self) -> bool {
        matches!(self.tag.bytes(), b"SET" | b"LISTEN")
    }

    /// Whether a row (DataRow) arrived.
    pub(crate) fn saw_rows(&self) -> bool {
        self.have_value
    }

    /// How many statements completed (CommandComplete messages seen).
    pub fn statements(&self) -> usize {
        self.statements
    }

    /// The query string was empty (or only comments).
    pub fn is_empty_query(&self) -> bool {
        self.empty_query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(t: &str) -> CommandTag<'_> {
        t.into()
    }

    fn row_desc(n: u16) -> Vec<u8> {
        let mut b = n.to_be_bytes().to_vec();
        for _ in 0..n {
            b.extend_from_slice(b"c\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0");
        }
        b
    }

    fn data_row(fields: &[Option<&str>]) -> Vec<u8> {
        let mut b = (fields.len() as u16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn rows_from_tags() {
        assert_eq!(rows_from_tag("SELECT 3"), 3);
        assert_eq!(rows_from_tag("INSERT 0 5"), 5);
        assert_eq!(rows_from_tag("UPDATE 0"), 0);
        assert_eq!(rows_from_tag("CREATE TABLE"), 0);
        assert_eq!(rows_from_tag(""), 0);
        assert_eq!(rows_from_tag("SELECT"), 0);
        assert_eq!(rows_from_tag("SELECT -1"), 0);
        assert_eq!(rows_from_tag("SELECT 99999999999999999999999"), 0);
        assert_eq!(rows_from_tag("COPY 18446744073709551615"), u64::MAX);
    }

    #[test]
    fn multi_statement_reports_first_value_and_last_tag() -> Result<(), PgError> {
        let mut r = QueryResult::new();
        let (d1, d2) = (row_desc(1), row_desc(2));
        let rows = [data_row(&[Some("a")]), data_row(&[Some("x"), None])];
        r.accept(&ReplyEvent::CommandComplete(tag("SET")))?;
        r.accept(&ReplyEvent::RowDescription(&d1))?;
        r.accept(&ReplyEvent::CommandComplete(tag("SELECT 0")))?;
        r.accept(&ReplyEvent::RowDescription(&d2))?;
        r.accept(&ReplyEvent::DataRow(&rows[1]))?;
        r.accept(&ReplyEvent::CommandComplete(tag("SELECT 1")))?;
        r.accept(&ReplyEvent::RowDescription(&d1))?;
        r.accept(&ReplyEvent::DataRow(&rows[0]))?;
        r.accept(&ReplyEvent::CommandComplete(tag("SELECT 1")))?;
        r.accept(&ReplyEvent::CommandComplete(tag("UPDATE 7")))?;
        assert_eq!(r.value(), Some("x"));
        assert_eq!(r.command_tag(), "UPDATE 7");
        assert_eq!(r.rows(), 7);
        assert_eq!(r.statements(), 5);
        Ok(())
    }

    #[test]
    fn null_first_value_is_none_and_stays_none() -> Result<(), PgError> {
        let mut r = QueryResult::new();
        let d = row_desc(1);
        r.accept(&ReplyEvent::RowDescription(&d))?;
        r.accept(&ReplyEvent::DataRow(&data_row(&[None])))?;
        r.accept(&ReplyEvent::DataRow(&data_row(&[Some("later")])))?;
        r.accept(&ReplyEvent::CommandComplete(tag("SELECT 2")))?;
        assert_eq!((r.value(), r.rows()), (None, 2));
        Ok(())
    }

    #[test]
    fn mismatched_or_truncated_rows_are_protocol_errors() {
        let mut r = QueryResult::new();
        assert!(
            r.accept(&ReplyEvent::DataRow(&data_row(&[Some("x")])))
                .is_err(),
            "no desc"
        );
        let d = row_desc(1);
        let mut r = QueryResult::new();
        assert!(r.accept(&ReplyEvent::RowDescription(&d)).is_ok());
        assert!(r
            .accept(&ReplyEvent::DataRow(&data_row(&[None, None])))
            .is_err());
        let mut truncated = data_row(&[Some("abc")]);
        truncated.pop();
        assert!(r.accept(&ReplyEvent::DataRow(&truncated)).is_err());
    }

    #[test]
    fn long_and_short_tags_read_back() -> Result<(), PgError> {
        for t in [
            "",
            "SET",
            "INSERT 0 1000000000000",
            "INSERT 0 10000000000000",
            "CREATE TEXT SEARCH CONFIGURATION",
        ] {
            let mut r = QueryResult::new();
            r.accept(&ReplyEvent::CommandComplete(tag(t)))?;
            assert_eq!(r.command_tag(), t);
        }
        let mut r = QueryResult::new();
        r.accept(&ReplyEvent::CommandComplete(tag("COPY 123456789012345678")))?;
        assert_eq!(r.rows(), 123_456_789_012_345_678);
        r.accept(&ReplyEvent::CommandComplete(tag("SELECT 2")))?;
        assert_eq!((r.command_tag(), r.rows()), ("SELECT 2", 2));
        Ok(())
    }

    #[test]
    fn empty_query_is_flagged() -> Result<(), PgError> {
        let mut r = QueryResult::new();
        r.accept(&ReplyEvent::EmptyQuery)?;
        assert!(r.is_empty_query());
        assert_eq!((r.value(), r.rows(), r.command_tag()), (None, 0, ""));
        Ok(())
    }
}
