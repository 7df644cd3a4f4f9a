//! Rows that outlive their result set ([`OwnedRow`]) and rows read into tuples ([`FromRow`]).

use crate::proto::row::{Columns, Row, RowIndex, INLINE_FIELDS};
use crate::PgError;
use postgres_types::FromSql;
use std::fmt;
use std::sync::Arc;

/// One row that owns its data: return it from a function, keep it after its
/// [`ResultSet`](crate::ResultSet) is gone, move it to another task or thread.
///
/// Cheap: the rows of one result set share that result's buffer and column description
/// behind one `Arc` (one count per row, no copy per row). It is `Send + Sync`, so it crosses
/// tasks and reactors alike. Reading a field costs what it costs on a borrowed [`Row`]: the
/// field offsets were recorded when the row was made.
///
/// Made by [`PgConnection::query_one`](crate::PgConnection::query_one),
/// [`query_opt`](crate::PgConnection::query_opt), [`ResultSet::into_rows`](crate::ResultSet::into_rows)
/// and iterating a `ResultSet` by value.
///
/// ```no_run
/// use ioxide_pg::{OwnedRow, PgConnection, PgError};
///
/// async fn user(conn: &PgConnection, id: i64) -> Result<OwnedRow, PgError> {
///     conn.query_one("SELECT $1::int8 AS id, 'ann'::text AS name", &[&id]).await
/// }
///
/// # async fn f(conn: &PgConnection) -> Result<(), PgError> {
/// let row = user(conn, 7).await?;
/// let name: &str = row.get("name")?;
/// assert_eq!((row.get::<i64>("id")?, name), (7, "ann"));
/// let handle = ioxide::spawn(async move { row.get::<String>(1).ok() });
/// assert_eq!(handle.await.as_deref(), Some("ann"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OwnedRow {
    shared: Arc<Shared>,
    /// This row's DataRow body in `shared.data`.
    start: u32,
    end: u32,
    starts: [u32; INLINE_FIELDS],
}

/// What the rows of one result set share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) data: Vec<u8>,
    pub(crate) columns: Arc<Columns>,
}

impl OwnedRow {
    /// Validates the DataRow body at `start..end` of `shared.data` against its columns.
    pub(crate) fn new(shared: &Arc<Shared>, start: u32, end: u32) -> Result<OwnedRow, PgError> {
        let body = shared
            .data
            .get(start as usize..end as usize)
            .ok_or_else(|| PgError::protocol("row outside its result buffer"))?;
        let starts = Row::new(body, &shared.columns)?.field_starts();
        Ok(OwnedRow {
            shared: shared.clone(),
            start,
            end,
            starts,
        })
    }

    #[inline]
    fn body(&self) -> &[u8] {
        // `new` checked the range.
        self.shared
            .data
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// This row as a borrowed [`Row`] (free: no walk, no copy), for APIs that take one.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT 1::int8", &[]).await?;
    /// let borrowed: ioxide_pg::Row<'_> = row.as_row();
    /// assert_eq!(borrowed.get::<i64>(0)?, 1);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn as_row(&self) -> Row<'_> {
        Row::validated(self.body(), &self.shared.columns, self.starts)
    }

    /// Number of fields.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// assert_eq!(conn.query_one("SELECT 1, 2", &[]).await?.len(), 2);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn len(&self) -> usize {
        self.shared.columns.len()
    }

    /// No fields (`SELECT` with an empty target list).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// assert!(conn.query_one("SELECT", &[]).await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.shared.columns.is_empty()
    }

    /// The columns of this row: names, type OIDs and [`Type`](postgres_types::Type)s.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// use ioxide_pg::types::Type;
    /// let row = conn.query_one("SELECT 1::int8 AS n", &[]).await?;
    /// let col = row.columns().iter().next().unwrap();
    /// assert_eq!((col.name(), col.type_(), col.type_oid()), ("n", &Type::INT8, 20));
    /// # Ok(()) }
    /// ```
    pub fn columns(&self) -> &Columns {
        &self.shared.columns
    }

    /// The raw bytes of field `idx`: `Some(None)` for NULL, `None` if out of range.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT 1::int4, NULL::int4", &[]).await?;
    /// assert_eq!(row.raw(0), Some(Some(&[0u8, 0, 0, 1][..])));
    /// assert_eq!(row.raw(1), Some(None));
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn raw(&self, idx: usize) -> Option<Option<&[u8]>> {
        self.as_row().raw(idx)
    }

    /// Whether field `idx` (a position or a name) is NULL. Errors on a bad index or name.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT NULL::text AS t", &[]).await?;
    /// assert!(row.is_null("t")?);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn is_null(&self, idx: impl RowIndex) -> Result<bool, PgError> {
        self.as_row().is_null(idx)
    }

    /// Decodes field `idx` (a position or a column name) as `T`; see [`Row::get`] for the
    /// errors. `T` may borrow from the row (`&str`, `&[u8]`).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT 2.5::float8 AS x, NULL::int8 AS n", &[]).await?;
    /// assert_eq!(row.get::<f64>("x")?, 2.5);
    /// assert_eq!(row.get::<Option<i64>>(1)?, None);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn get<'r, T: FromSql<'r>>(&'r self, idx: impl RowIndex) -> Result<T, PgError> {
        self.as_row().get(idx)
    }

    /// Same as [`OwnedRow::get`] (which already returns a `Result`); named for tokio-postgres
    /// users.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT 'x'::text AS t", &[]).await?;
    /// assert!(row.try_get::<i64>("t").unwrap_err().is_conversion());
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn try_get<'r, T: FromSql<'r>>(&'r self, idx: impl RowIndex) -> Result<T, PgError> {
        self.get(idx)
    }

    /// The text of field `idx` in a text-format row; see [`Row::get_text`]. Rows from the
    /// extended protocol (everything that makes an `OwnedRow` today) are binary: use `get`.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT 'x'::text", &[]).await?;
    /// assert!(row.get_text(0).is_err()); // binary format
    /// # Ok(()) }
    /// ```
    pub fn get_text(&self, idx: impl RowIndex) -> Result<Option<&str>, PgError> {
        self.as_row().get_text(idx)
    }

    /// Reads the whole row into `T`, usually a tuple of [`FromSql`] types (see [`FromRow`]).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let row = conn.query_one("SELECT 1::int8, 'a'::text, NULL::float8", &[]).await?;
    /// let (n, s, x): (i64, String, Option<f64>) = row.get_tuple()?;
    /// assert_eq!((n, s.as_str(), x), (1, "a", None));
    /// # Ok(()) }
    /// ```
    pub fn get_tuple<'r, T: FromRow<'r>>(&'r self) -> Result<T, PgError> {
        T::from_row(&self.as_row())
    }
}

impl fmt::Debug for OwnedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.as_row(), f)
    }
}

impl<'a> Row<'a> {
    /// Reads the whole row into `T`, usually a tuple of [`FromSql`] types (see [`FromRow`]).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let mut pairs = Vec::new();
    /// conn.query_rows("SELECT n, n * 2 FROM generate_series(1, 3) n", &[], |row| {
    ///     pairs.push(row.get_tuple::<(i32, i32)>()?);
    ///     Ok(())
    /// })
    /// .await?;
    /// assert_eq!(pairs, [(1, 2), (2, 4), (3, 6)]);
    /// # Ok(()) }
    /// ```
    pub fn get_tuple<T: FromRow<'a>>(&self) -> Result<T, PgError> {
        T::from_row(self)
    }
}

/// A value read from a whole row: implemented for tuples of 1 to 12 [`FromSql`] types, read
/// column by column in order. The row must have exactly as many columns as the tuple has
/// elements; otherwise the read fails with a conversion error giving both counts. You may
/// implement it for your own structs.
///
/// ```no_run
/// use ioxide_pg::{FromRow, PgError, Row};
///
/// struct User {
///     id: i64,
///     name: String,
/// }
///
/// impl FromRow<'_> for User {
///     fn from_row(row: &Row<'_>) -> Result<User, PgError> {
///         Ok(User { id: row.get("id")?, name: row.get("name")? })
///     }
/// }
///
/// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), PgError> {
/// let u: User = conn.query_one("SELECT 1::int8 AS id, 'ann' AS name", &[]).await?.get_tuple()?;
/// assert_eq!((u.id, u.name.as_str()), (1, "ann"));
/// # Ok(()) }
/// ```
pub trait FromRow<'a>: Sized {
    /// Reads `row`.
    fn from_row(row: &Row<'a>) -> Result<Self, PgError>;
}

#[cold]
fn arity_error(row: &Row<'_>, want: usize) -> PgError {
    let names: Vec<&str> = row.columns().names().collect();
    PgError::conversion(format!(
        "cannot read a row of {} columns ({}) into a tuple of {want} elements",
        row.len(),
        names.join(", ")
    ))
}

macro_rules! tuple_from_row {
    ($n:literal; $($t:ident $i:tt),+) => {
        impl<'a, $($t: FromSql<'a>),+> FromRow<'a> for ($($t,)+) {
            fn from_row(row: &Row<'a>) -> Result<Self, PgError> {
                if row.len() != $n {
                    return Err(arity_error(row, $n));
                }
                Ok(($(row.get::<$t>($i)?,)+))
            }
        }
    };
}

tuple_from_row!(1; A 0);
tuple_from_row!(2; A 0, B 1);
tuple_from_row!(3; A 0, B 1, C 2);
tuple_from_row!(4; A 0, B 1, C 2, D 3);
tuple_from_row!(5; A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(6; A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(7; A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(8; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_from_row!(9; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_from_row!(10; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_from_row!(11; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_from_row!(12; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);
