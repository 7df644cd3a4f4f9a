//! Result columns and zero-allocation row views.
//!
//! [`Columns`] is parsed once from a RowDescription and is meant to be cached per prepared
//! statement (behind an `Arc`, so that owned rows can cross threads). A [`Row`] borrows one DataRow body plus the `Columns`; reading
//! a field walks no allocation: the field offsets of the first [`INLINE_FIELDS`] columns are
//! recorded on the stack when the row is validated, later ones are found by a short scan.

use std::fmt;
use std::sync::Arc;

use postgres_types::{FromSql, Type};

use super::cursor::Cursor;
use crate::PgError;

/// Fields whose offsets a [`Row`] records up front; later fields are found by scanning.
pub const INLINE_FIELDS: usize = 16;

/// The wire format of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text (code 0): what the simple query protocol always returns.
    Text,
    /// Binary (code 1): what our extended queries ask for, decoded by `FromSql`.
    Binary,
}

impl Format {
    /// The protocol's format code.
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }
}

/// One result column, from a RowDescription.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    name: String,
    table_oid: u32,
    column_id: i16,
    type_: Type,
    type_size: i16,
    type_modifier: i32,
    format: Format,
}

impl Column {
    /// The column name (`?column?` for unnamed expressions).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// OID of the table the column comes from, or 0.
    pub fn table_oid(&self) -> u32 {
        self.table_oid
    }

    /// Attribute number of the column in that table, or 0.
    pub fn column_id(&self) -> i16 {
        self.column_id
    }

    /// The column type. Types `postgres-types` does not know (enums, composites, domains,
    /// ranges and arrays of them) are looked up in `pg_type` by the connection that
    /// prepared the statement; where no lookup happens (the simple protocol's text rows),
    /// they keep a placeholder named `oid<N>` with the right OID (kind `Simple`).
    pub fn type_(&self) -> &Type {
        &self.type_
    }

    /// The OID of the column type (`pg_type.oid`), known or not to `postgres-types`.
    pub fn type_oid(&self) -> u32 {
        self.type_.oid()
    }

    /// `pg_type.typlen` (negative for variable width).
    pub fn type_size(&self) -> i16 {
        self.type_size
    }

    /// `pg_attribute.atttypmod`.
    pub fn type_modifier(&self) -> i32 {
        self.type_modifier
    }

    /// The format values of this column arrive in.
    pub fn format(&self) -> Format {
        self.format
    }
}

/// A type for an OID, with a placeholder for types `postgres-types` does not know.
pub fn type_for_oid(oid: u32) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| {
        Type::new(
            format!("oid{oid}"),
            oid,
            postgres_types::Kind::Simple,
            "pg_catalog".into(),
        )
    })
}

/// Whether `t` is [`type_for_oid`]'s placeholder for an OID `postgres-types` does not know.
pub(crate) fn is_placeholder(t: &Type) -> bool {
    Type::from_oid(t.oid()).is_none()
        && matches!(t.kind(), postgres_types::Kind::Simple)
        && t.schema() == "pg_catalog"
        && t.name().strip_prefix("oid").and_then(|n| n.parse().ok()) == Some(t.oid())
}

/// The columns of a result, parsed from a RowDescription body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Columns {
    columns: Vec<Column>,
    /// Some column has a placeholder type (an OID `postgres-types` does not know) that the
    /// connection has not replaced with the type it looked up in `pg_type` yet.
    unresolved: bool,
}

impl Columns {
    /// The empty description, shared per thread: a placeholder until the statement is known
    /// without allocating one per query.
    pub(crate) fn none() -> Arc<Columns> {
        thread_local!(static NONE: Arc<Columns> = Arc::default());
        NONE.with(Arc::clone)
    }

    /// Parses a RowDescription (`T`) body.
    ///
    /// Internal (`proto`): no stability promise; for the fuzzers and tests.
    #[doc(hidden)]
    pub fn parse(body: &[u8]) -> Result<Columns, PgError> {
        let mut c = Cursor::new(body, "RowDescription");
        let n = c.u16()? as usize;
        // Each column takes at least 19 bytes: never trust `n` for an allocation size.
        let mut columns = Vec::with_capacity(n.min(c.remaining() / 19));
        let mut unresolved = false;
        for _ in 0..n {
            let name = c.cstr()?.to_owned();
            let table_oid = c.u32()?;
            let column_id = c.i16()?;
            let oid = c.u32()?;
            let type_size = c.i16()?;
            let type_modifier = c.i32()?;
            let format = match c.i16()? {
                0 => Format::Text,
                1 => Format::Binary,
                f => {
                    return Err(PgError::protocol(format!(
                        "RowDescription column {name:?} has unknown format code {f}"
                    )))
                }
            };
            let type_ = type_for_oid(oid);
            unresolved |= Type::from_oid(oid).is_none();
            columns.push(Column {
                name,
                table_oid,
                column_id,
                type_,
                type_size,
                type_modifier,
                format,
            });
        }
        c.finish()?;
        Ok(Columns {
            columns,
            unresolved,
        })
    }

    /// Whether a RowDescription body describes exactly these columns (names, table and
    /// column ids, type OIDs, sizes and modifiers; the format codes are not compared: a
    /// statement's Describe reports text and Bind chooses). No allocation: an unnamed
    /// statement parsed again per query (behind a transaction-mode pooler) gets the same
    /// description every time, and comparing it costs far less than parsing it. `false`
    /// for anything malformed (the parse then reports it).
    pub(crate) fn same_description(&self, body: &[u8]) -> bool {
        let mut c = Cursor::new(body, "RowDescription");
        let same = (|| -> Result<bool, PgError> {
            if usize::from(c.u16()?) != self.columns.len() {
                return Ok(false);
            }
            for col in &self.columns {
                let same = c.cstr_bytes()? == col.name.as_bytes()
                    && c.u32()? == col.table_oid
                    && c.i16()? == col.column_id
                    && c.u32()? == col.type_.oid()
                    && c.i16()? == col.type_size
                    && c.i32()? == col.type_modifier;
                if !same || !matches!(c.i16()?, 0 | 1) {
                    return Ok(false);
                }
            }
            c.finish()?;
            Ok(true)
        })();
        same.unwrap_or(false)
    }

    /// Whether some column still has a placeholder type (see [`Column::type_`]).
    pub(crate) fn unresolved(&self) -> bool {
        self.unresolved
    }

    /// The OIDs of the columns that still have a placeholder type.
    pub(crate) fn placeholder_oids(&self) -> impl Iterator<Item = u32> + '_ {
        self.columns
            .iter()
            .filter(|c| is_placeholder(&c.type_))
            .map(Column::type_oid)
    }

    /// Replaces each placeholder column type for which `find` has the real one; clears
    /// [`Columns::unresolved`] when none is left.
    pub(crate) fn resolve_with(&mut self, mut find: impl FnMut(u32) -> Option<Type>) {
        if !self.unresolved {
            return;
        }
        let mut left = false;
        for col in &mut self.columns {
            if is_placeholder(&col.type_) {
                match find(col.type_.oid()) {
                    Some(t) => col.type_ = t,
                    None => left = true,
                }
            }
        }
        self.unresolved = left;
    }

    /// Takes the looked-up types of `described` (the same statement, described before) for
    /// this freshly parsed description's placeholders, column by column where the OIDs agree.
    pub(crate) fn resolve_like(&mut self, described: &Columns) {
        if !self.unresolved || described.len() != self.len() {
            return;
        }
        let mut left = false;
        for (col, d) in self.columns.iter_mut().zip(&described.columns) {
            if is_placeholder(&col.type_) {
                if d.type_.oid() == col.type_.oid() && !is_placeholder(&d.type_) {
                    col.type_ = d.type_.clone();
                } else {
                    left = true;
                }
            }
        }
        self.unresolved = left;
    }

    /// Sets every column's format. A Describe of a statement reports format 0 (text) because
    /// formats are chosen at Bind; a connection that binds with binary result formats calls
    /// this on the cached description.
    pub fn set_format(&mut self, format: Format) {
        for col in &mut self.columns {
            col.format = format;
        }
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// No columns (a statement that returns no rows).
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The column at `idx`.
    pub fn get(&self, idx: usize) -> Option<&Column> {
        self.columns.get(idx)
    }

    /// The columns in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Column> {
        self.columns.iter()
    }

    /// The column names, in order.
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let rs = conn.query_params("SELECT 1::int8 AS a, 'x'::text AS b", &[]).await?;
    /// assert_eq!(rs.columns().names().collect::<Vec<_>>(), ["a", "b"]);
    /// # Ok(()) }
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.columns.iter().map(Column::name)
    }

    /// The index of the first column named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

impl<'c> IntoIterator for &'c Columns {
    type Item = &'c Column;
    type IntoIter = std::slice::Iter<'c, Column>;

    fn into_iter(self) -> Self::IntoIter {
        self.columns.iter()
    }
}

/// Parses a ParameterDescription (`t`) body into the parameter types.
pub fn parameter_types(body: &[u8]) -> Result<Vec<Type>, PgError> {
    let mut c = Cursor::new(body, "ParameterDescription");
    let n = c.u16()? as usize;
    let mut types = Vec::with_capacity(n.min(c.remaining() / 4));
    for _ in 0..n {
        types.push(type_for_oid(c.u32()?));
    }
    c.finish()?;
    Ok(types)
}

mod sealed {
    pub trait Sealed {}
}

/// A column index: a position (`usize`) or a name (`&str`, `String`).
pub trait RowIndex: sealed::Sealed {
    /// The position of this column in `columns`, if there is one.
    fn index(&self, columns: &Columns) -> Option<usize>;

    /// How to name this index in an error message: `index 3` or `named "n"`.
    fn describe(&self) -> String;
}

impl sealed::Sealed for usize {}
impl RowIndex for usize {
    fn index(&self, columns: &Columns) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }

    fn describe(&self) -> String {
        format!("index {self}")
    }
}

impl sealed::Sealed for str {}
impl RowIndex for str {
    fn index(&self, columns: &Columns) -> Option<usize> {
        columns.index_of(self)
    }

    fn describe(&self) -> String {
        format!("named {self:?}")
    }
}

impl sealed::Sealed for String {}
impl RowIndex for String {
    fn index(&self, columns: &Columns) -> Option<usize> {
        columns.index_of(self)
    }

    fn describe(&self) -> String {
        self.as_str().describe()
    }
}

impl<T: RowIndex + ?Sized> sealed::Sealed for &T {}
impl<T: RowIndex + ?Sized> RowIndex for &T {
    fn index(&self, columns: &Columns) -> Option<usize> {
        T::index(self, columns)
    }

    fn describe(&self) -> String {
        T::describe(self)
    }
}

/// One row of a result, borrowing the DataRow body and the result's [`Columns`].
#[derive(Clone)]
pub struct Row<'a> {
    body: &'a [u8],
    columns: &'a Columns,
    /// Offset of each of the first `INLINE_FIELDS` fields' length prefix in `body`.
    starts: [u32; INLINE_FIELDS],
}

impl fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for i in 0..self.len() {
            l.entry(&self.raw(i).map(|v| v.map(String::from_utf8_lossy)));
        }
        l.finish()
    }
}

/// The big-endian i32 at `at`, if the body holds four bytes there.
#[inline]
fn be_i32(body: &[u8], at: usize) -> Option<i32> {
    let bytes = body.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

/// `T::accepts` refused column `i`'s type.
#[cold]
fn not_accepted(col: &Column, i: usize, rust: &str) -> PgError {
    let why = if col.format() == Format::Binary && is_placeholder(col.type_()) {
        " (a type postgres-types does not know, not looked up in pg_type: rows read before \
         the statement was described, as a parameterless query_rows with \
         statement_cache_capacity 0; use query_params there)"
    } else {
        ""
    };
    PgError::conversion(format!(
        "column {:?} (index {i}) has type {}, which cannot be read as {rust}{why}",
        col.name(),
        col.type_().name()
    ))
}

#[cold]
fn bad_row(msg: impl fmt::Display) -> PgError {
    PgError::protocol(format!("malformed DataRow: {msg}"))
}

/// Walks a DataRow (`D`) body: the field count must be `expected`, every field must lie
/// inside the body and nothing may follow the last. Calls `field(i, offset, value)` for each
/// field, `offset` being where its length prefix starts and `value` `None` for NULL. Bodies of
/// 4 GiB or more are refused (offsets are kept as `u32`).
///
/// Every DataRow received passes through here, so it is plain slice arithmetic with errors
/// built only on failure (through a bounds-checked `Cursor` it cost ~160 instructions for a
/// one-column row; this ~60, callgrind).
#[inline]
pub(crate) fn walk_data_row<'a>(
    body: &'a [u8],
    expected: usize,
    mut field: impl FnMut(usize, usize, Option<&'a [u8]>),
) -> Result<(), PgError> {
    let n = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(bad_row("the body is too short for a field count")),
    };
    if n != expected {
        return Err(bad_row(format_args!(
            "{n} fields but the row description has {expected} columns"
        )));
    }
    if u32::try_from(body.len()).is_err() {
        return Err(bad_row("body longer than 4 GiB"));
    }
    let mut pos = 2usize;
    for i in 0..n {
        let at = pos;
        let len = be_i32(body, pos)
            .ok_or_else(|| bad_row(format_args!("field {i}'s length is truncated")))?;
        pos += 4;
        if len >= 0 {
            let end = pos
                .checked_add(len as usize)
                .filter(|&end| end <= body.len())
                .ok_or_else(|| bad_row(format_args!("field {i} of {len} bytes is truncated")))?;
            field(i, at, body.get(pos..end));
            pos = end;
        } else if len == -1 {
            field(i, at, None);
        } else {
            return Err(bad_row(format_args!("field {i} has negative length {len}")));
        }
    }
    if pos != body.len() {
        return Err(bad_row("trailing bytes after the last field"));
    }
    Ok(())
}

impl<'a> Row<'a> {
    /// Validates a DataRow (`D`) body against `columns`: the field count must match and every
    /// field must lie inside the body. After this, reading fields cannot fail on framing.
    /// Runs once per row received, and again (cheaply) for each [`crate::ResultSet::row`].
    ///
    /// Internal (`proto`): no stability promise; for the fuzzers and tests.
    #[doc(hidden)]
    pub fn new(body: &'a [u8], columns: &'a Columns) -> Result<Row<'a>, PgError> {
        let mut starts = [0u32; INLINE_FIELDS];
        walk_data_row(body, columns.len(), |i, at, _| {
            if let Some(s) = starts.get_mut(i) {
                *s = at as u32; // at < body.len() < 2^32, checked by the walk
            }
        })?;
        Ok(Row {
            body,
            columns,
            starts,
        })
    }

    /// Offsets recorded by [`Row::new`], for an owned row to keep.
    pub(crate) fn field_starts(&self) -> [u32; INLINE_FIELDS] {
        self.starts
    }

    /// A row over a body [`Row::new`] already validated against `columns`, with the offsets it
    /// recorded ([`Row::field_starts`]); no walk. Reads stay bounds-checked.
    #[inline]
    pub(crate) fn validated(
        body: &'a [u8],
        columns: &'a Columns,
        starts: [u32; INLINE_FIELDS],
    ) -> Row<'a> {
        Row {
            body,
            columns,
            starts,
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// No fields.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The columns of this row.
    pub fn columns(&self) -> &'a Columns {
        self.columns
    }

    /// The raw bytes of field `idx`: `Some(None)` for NULL, `None` if out of range.
    pub fn raw(&self, idx: usize) -> Option<Option<&'a [u8]>> {
        if idx >= self.len() {
            return None;
        }
        let (first, mut pos) = match self.starts.get(idx) {
            Some(&s) => (idx, s as usize),
            None => (INLINE_FIELDS - 1, self.starts[INLINE_FIELDS - 1] as usize),
        };
        // `new` validated the framing, so these lookups cannot miss; they stay checked
        // (`None`) rather than trusted.
        for _ in first..idx {
            let len = be_i32(self.body, pos)?;
            pos += 4 + usize::try_from(len).unwrap_or(0);
        }
        let len = be_i32(self.body, pos)?;
        match usize::try_from(len) {
            Ok(len) => self.body.get(pos + 4..pos + 4 + len).map(Some),
            Err(_) => Some(None),
        }
    }

    fn resolve(&self, idx: impl RowIndex) -> Result<(usize, &'a Column), PgError> {
        let i = idx.index(self.columns).ok_or_else(|| {
            let names: Vec<&str> = self.columns.iter().map(Column::name).collect();
            PgError::conversion(format!(
                "no column {} in a row of {} columns ({})",
                idx.describe(),
                self.len(),
                names.join(", ")
            ))
        })?;
        let col = self
            .columns
            .get(i)
            .ok_or_else(|| PgError::conversion("column vanished"))?;
        Ok((i, col))
    }

    /// Whether field `idx` is NULL. Errors on a bad index or name.
    pub fn is_null(&self, idx: impl RowIndex) -> Result<bool, PgError> {
        let (i, _) = self.resolve(idx)?;
        Ok(matches!(self.raw(i), Some(None)))
    }

    /// Decodes field `idx` (a position or a column name) as `T`.
    ///
    /// Fails with a conversion error naming the column and the types when `T` cannot read the
    /// column's type, when the value is NULL and `T` is not an `Option`, when the column is in
    /// text format (use [`Row::get_text`]), or when decoding fails.
    pub fn get<T: FromSql<'a>>(&self, idx: impl RowIndex) -> Result<T, PgError> {
        let (i, col) = self.resolve(idx)?;
        let rust = std::any::type_name::<T>();
        if !T::accepts(col.type_()) {
            return Err(not_accepted(col, i, rust));
        }
        if col.format() != Format::Binary {
            return Err(PgError::conversion(format!(
                "column {:?} (index {i}) is in text format; read it with get_text",
                col.name()
            )));
        }
        let raw = self
            .raw(i)
            .ok_or_else(|| PgError::conversion("field vanished"))?;
        T::from_sql_nullable(col.type_(), raw).map_err(|e| {
            PgError::conversion_with(
                format!(
                    "column {:?} (index {i}, type {}) could not be read as {rust}",
                    col.name(),
                    col.type_().name()
                ),
                e,
            )
        })
    }

    /// Same as [`Row::get`] (which already returns a `Result`); named for tokio-postgres users.
    pub fn try_get<T: FromSql<'a>>(&self, idx: impl RowIndex) -> Result<T, PgError> {
        self.get(idx)
    }

    /// The text of field `idx` in a text-format result (simple queries): `Ok(None)` for NULL.
    /// Errors on a bad index, a binary-format column, or a value that is not UTF-8.
    pub fn get_text(&self, idx: impl RowIndex) -> Result<Option<&'a str>, PgError> {
        let (i, col) = self.resolve(idx)?;
        if col.format() != Format::Text {
            return Err(PgError::conversion(format!(
                "column {:?} (index {i}) is in binary format; read it with get",
                col.name()
            )));
        }
        match self.raw(i) {
            Some(Some(bytes)) => std::str::from_utf8(bytes).map(Some).map_err(|e| {
                PgError::conversion_with(
                    format!("column {:?} (index {i}) is not UTF-8 text", col.name()),
                    Box::new(e),
                )
            }),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
#[path = "row_tests.rs"]
mod tests;
