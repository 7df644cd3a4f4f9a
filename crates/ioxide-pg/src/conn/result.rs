//! Owned results of extended-protocol queries: every row of a result set in one buffer.

use super::owned::{OwnedRow, Shared};
use crate::proto::query_result::TagBuf;
use crate::proto::reply::ReplyEvent;
use crate::proto::row::{Columns, Row};
use crate::PgError;
use postgres_types::FromSql;
use smallvec::SmallVec;
use std::ops::Range;
use std::sync::Arc;

/// DataRow bytes a [`ResultSet`] holds inline. A single row of a few numbers fits (the row of
/// `SELECT $1::int8 + 1` is 14 bytes); allocating the buffer cost that query ~300 of its
/// ~5 100 instructions (malloc, growth, free; callgrind).
const INLINE_ROW_BYTES: usize = 48;

/// The rows of one extended-protocol query, stored contiguously (one growing buffer for all
/// DataRow bodies, not an allocation per row; rows that fit in 48 bytes are held inline,
/// without any allocation), with the statement's column description.
///
/// ```no_run
/// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
/// let rs = conn.query_params("SELECT $1::int8 + 1 AS n", &[&41i64]).await?;
/// assert_eq!(rs.len(), 1);
/// let n: i64 = rs.row(0)?.get("n")?;
/// assert_eq!(n, 42);
/// assert_eq!(rs.scalar::<i64>()?, 42);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ResultSet {
    columns: Arc<Columns>,
    data: SmallVec<[u8; INLINE_ROW_BYTES]>,
    /// The first row's range inline (most results have one row, or none), the rest after.
    first: Option<Range<u32>>,
    rest: Vec<Range<u32>>,
    tag: TagBuf,
}

impl ResultSet {
    pub(crate) fn new(columns: Arc<Columns>) -> ResultSet {
        ResultSet {
            columns,
            data: SmallVec::new(),
            first: None,
            rest: Vec::new(),
            tag: TagBuf::default(),
        }
    }

    pub(crate) fn accept(&mut self, ev: &ReplyEvent<'_>) -> Result<(), PgError> {
        match ev {
            ReplyEvent::DataRow(body) => {
                // Validate now so that reading later cannot fail on framing.
                Row::new(body, &self.columns)?;
                let start = u32::try_from(self.data.len())
                    .map_err(|_| PgError::conversion("result set larger than 4 GiB"))?;
                self.data.extend_from_slice(body);
                let end = u32::try_from(self.data.len())
                    .map_err(|_| PgError::conversion("result set larger than 4 GiB"))?;
                if self.first.is_none() {
                    self.first = Some(start..end);
                } else {
                    self.rest.push(start..end);
                }
            }
            ReplyEvent::CommandComplete(tag) => self.tag.set(*tag),
            // Only an unnamed statement's reply describes its rows (it is parsed afresh).
            ReplyEvent::RowDescription(body) => {
                self.columns = super::command::redescribed(&self.columns, body)?;
            }
            ReplyEvent::NoData => self.columns = Columns::none(),
            _ => {}
        }
        Ok(())
    }

    /// The column description, shared.
    pub(crate) fn columns_arc(&self) -> Arc<Columns> {
        self.columns.clone()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn range(&self, i: usize) -> Option<&Range<u32>> {
        match i {
            0 => self.first.as_ref(),
            _ => self.rest.get(i - 1),
        }
    }

    /// Replaces the column description (the same columns, their types looked up).
    pub(crate) fn set_columns(&mut self, columns: Arc<Columns>) {
        self.columns = columns;
    }

    /// The column description.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// Row `i`, or a conversion error naming the index when out of range.
    pub fn row(&self, i: usize) -> Result<Row<'_>, PgError> {
        let r = self.range(i).ok_or_else(|| {
            PgError::conversion(format!(
                "row {i} out of range: the result has {} rows",
                self.len()
            ))
        })?;
        Row::new(&self.data[r.start as usize..r.end as usize], &self.columns)
    }

    /// Every row, in order.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.first.iter().chain(&self.rest).filter_map(|r| {
            Row::new(&self.data[r.start as usize..r.end as usize], &self.columns).ok()
        })
    }

    /// The first column of the first row, typed. An error when there is no row.
    pub fn scalar<'a, T: FromSql<'a>>(&'a self) -> Result<T, PgError> {
        self.row(0)?.get(0)
    }

    /// The rows as [`OwnedRow`]s, which outlive the result set and move between tasks. No
    /// copy per row: the rows share this result's buffer (moved, not copied, unless it was
    /// small enough to be held inline) and its column description behind one `Arc`. Iterating a `ResultSet` by
    /// value does the same.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// async fn names(conn: &ioxide_pg::PgConnection) -> Result<Vec<ioxide_pg::OwnedRow>, ioxide_pg::PgError> {
    ///     Ok(conn.query_params("SELECT relname FROM pg_class", &[]).await?.into_rows())
    /// }
    /// for row in names(conn).await? {
    ///     let _name: &str = row.get(0)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_rows(self) -> Vec<OwnedRow> {
        let ResultSet {
            columns,
            data,
            first,
            rest,
            ..
        } = self;
        let shared = Arc::new(Shared {
            data: data.into_vec(),
            columns,
        });
        let mut rows = Vec::with_capacity(usize::from(first.is_some()) + rest.len());
        // Every row was validated when it arrived, so `OwnedRow::new` cannot fail here.
        rows.extend(
            first
                .iter()
                .chain(&rest)
                .filter_map(|r| OwnedRow::new(&shared, r.start, r.end).ok()),
        );
        rows
    }

    /// Exactly one row, else a [row-count error](PgError::is_row_count) from `op`.
    pub(crate) fn into_one(self, op: &'static str) -> Result<OwnedRow, PgError> {
        match self.len() {
            1 => self.into_first(op, "exactly one row"),
            n => Err(PgError::wrong_row_count(op, "exactly one row", n as u64)),
        }
    }

    /// No row or one, else a [row-count error](PgError::is_row_count) from `op`.
    pub(crate) fn into_opt(self, op: &'static str) -> Result<Option<OwnedRow>, PgError> {
        match self.len() {
            0 => Ok(None),
            1 => self.into_first(op, "at most one row").map(Some),
            n => Err(PgError::wrong_row_count(op, "at most one row", n as u64)),
        }
    }

    fn into_first(self, op: &'static str, expected: &'static str) -> Result<OwnedRow, PgError> {
        self.into_rows()
            .pop()
            .ok_or_else(|| PgError::wrong_row_count(op, expected, 0))
    }

    /// The command tag (`SELECT 1`, `INSERT 0 3`, …).
    pub fn command_tag(&self) -> &str {
        self.tag.as_str()
    }

    /// Rows affected or returned, as the command tag reports.
    pub fn rows_affected(&self) -> u64 {
        self.tag.rows()
    }
}

impl IntoIterator for ResultSet {
    type Item = OwnedRow;
    type IntoIter = std::vec::IntoIter<OwnedRow>;

    /// The rows as [`OwnedRow`]s; see [`ResultSet::into_rows`].
    fn into_iter(self) -> Self::IntoIter {
        self.into_rows().into_iter()
    }
}
