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
use crate::PgError;
use compact_str::CompactString;
use smallvec::SmallVec;

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

/// An owned command tag, stored as the bytes [`CommandTag`] checked at decode (inline up to
/// 16 bytes: `INSERT 0 1000000` fits), turned into text only when someone asks.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct TagBuf(SmallVec<[u8; 16]>);

impl TagBuf {
    /// Replaces the stored tag.
    pub(crate) fn set(&mut self, tag: CommandTag<'_>) {
        self.0.clear();
        self.0.extend_from_slice(tag.as_bytes());
    }

    /// The tag as text (`""` before any command completed).
    pub(crate) fn as_str(&self) -> &str {
        // Only ever filled from a CommandTag, which is valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The row count the tag reports; see [`rows_from_tag`].
    pub(crate) fn rows(&self) -> u64 {
        rows_from_tag_bytes(&self.0)
    }
}

impl std::fmt::Debug for TagBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl QueryResult {
    /// An empty result, to be filled by [`accept`](QueryResult::accept).
    pub fn new() -> QueryResult {
        QueryResult::default()
    }

    /// Takes one event of a simple query's reply. `ServerError`, `Done` and acknowledgements
    /// are ignored here — the connection turns a server error into the query's `Err`.
    /// A DataRow that does not fit its RowDescription is a protocol error.
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
        let mut c = Cursor::new(body, "DataRow");
        let n = c.u16()?;
        if Some(n) != self.columns {
            return Err(PgError::protocol(format!(
                "malformed DataRow: {n} fields but the row description has {} columns",
                self.columns.map_or(0, usize::from)
            )));
        }
        // Every row is checked whole, not only the one whose value we keep.
        let mut first: Option<Option<&[u8]>> = None;
        for i in 0..n {
            let len = c.i32()?;
            let field = if len >= 0 {
                Some(c.bytes(len as usize)?)
            } else if len == -1 {
                None
            } else {
                return Err(PgError::protocol(format!(
                    "malformed DataRow: field {i} has negative length {len}"
                )));
            };
            if i == 0 {
                first = Some(field);
            }
        }
        c.finish().map_err(|_| {
            PgError::protocol("malformed DataRow: trailing bytes after the last field")
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
    fn empty_query_is_flagged() -> Result<(), PgError> {
        let mut r = QueryResult::new();
        r.accept(&ReplyEvent::EmptyQuery)?;
        assert!(r.is_empty_query());
        assert_eq!((r.value(), r.rows(), r.command_tag()), (None, 0, ""));
        Ok(())
    }
}
