//! Prepared statements as API: [`PgConnection::prepare`], [`PgConnection::prepare_typed`],
//! and [`ToStatement`], which lets every query method take SQL text or a [`Statement`].
//!
//! A [`Statement`] is a description (the SQL, the parameter types asked for, and what the
//! server said: parameter and result column types), not a server handle: each connection
//! prepares it on first use and keeps it in its statement cache (keyed by the text and the
//! asked-for types), so a statement prepared on one pooled connection runs on whichever
//! connection the pool picks, and survives a reconnect or a `DEALLOCATE ALL`.
//!
//! Through a transaction-mode pooler (PgBouncer `pool_mode=transaction`) nothing named
//! survives from one command to the next, so a connection that sees the symptom (or runs
//! with `statement_cache_capacity=0`) describes statements with the unnamed statement and
//! parses them again at each use: a [`Statement`] keeps working, it only saves nothing.

use std::fmt;
use std::rc::Rc;

use postgres_types::Type;

use super::PgConnection;
use crate::proto::row::Columns;
use crate::PgError;

/// A prepared statement: SQL with its parameter and column types. Cheap to clone.
///
/// A description, not a server handle: each connection prepares it on first use and keeps
/// it in its statement cache (keyed by the text and the asked-for types), so a statement
/// prepared on one pooled connection runs on whichever connection the pool picks, and
/// survives a reconnect or a `DEALLOCATE ALL`.
///
/// ```no_run
/// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
/// use ioxide_pg::types::Type;
/// let stmt = conn.prepare_typed("SELECT $1 + 1", &[Type::INT8]).await?;
/// assert_eq!(stmt.params(), &[Type::INT8]);
/// let rs = conn.query_params(&stmt, &[&41i64]).await?;
/// assert_eq!(rs.scalar::<i64>()?, 42);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Statement {
    inner: Rc<Inner>,
}

struct Inner {
    sql: Box<str>,
    /// The statement cache's key: the text, plus the asked-for types when there are any
    /// (a NUL cannot occur in SQL the server accepts, so keys never collide).
    key: Box<str>,
    asked: Box<[Type]>,
    params: Rc<[Type]>,
    columns: std::sync::Arc<Columns>,
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement")
            .field("sql", &self.inner.sql)
            .field("params", &self.inner.params)
            .field("columns", &self.inner.columns.len())
            .finish()
    }
}

impl Statement {
    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.inner.sql
    }

    /// The parameter types, as the server resolved them.
    pub fn params(&self) -> &[Type] {
        &self.inner.params
    }

    /// The result columns (names, types); empty for a statement that returns no rows.
    pub fn columns(&self) -> &Columns {
        &self.inner.columns
    }
}

/// What the query methods take: SQL text (`&str`, `String`) or a [`Statement`]. Sealed.
pub trait ToStatement: sealed::Sealed {
    #[doc(hidden)]
    fn statement_ref(&self) -> StatementRef<'_>;
}

/// How a query method finds or prepares a statement (crate-internal).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct StatementRef<'a> {
    pub(crate) key: &'a str,
    pub(crate) sql: &'a str,
    pub(crate) types: &'a [Type],
}

impl<'a> StatementRef<'a> {
    pub(crate) fn text(sql: &'a str) -> StatementRef<'a> {
        StatementRef {
            key: sql,
            sql,
            types: &[],
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for str {}
    impl Sealed for String {}
    impl Sealed for super::Statement {}
}

impl ToStatement for str {
    fn statement_ref(&self) -> StatementRef<'_> {
        StatementRef::text(self)
    }
}

impl ToStatement for String {
    fn statement_ref(&self) -> StatementRef<'_> {
        StatementRef::text(self)
    }
}

impl ToStatement for Statement {
    fn statement_ref(&self) -> StatementRef<'_> {
        StatementRef {
            key: &self.inner.key,
            sql: &self.inner.sql,
            types: &self.inner.asked,
        }
    }
}

/// The cache key of `sql` prepared with `types`.
fn key_for(sql: &str, types: &[Type]) -> String {
    if types.is_empty() {
        return sql.to_owned();
    }
    let oids: Vec<String> = types.iter().map(|t| t.oid().to_string()).collect();
    format!("{sql}\0{}", oids.join(","))
}

impl PgConnection {
    /// Prepares `sql` (Parse + Describe, one round trip unless this connection has it
    /// cached) and returns its description. Use it with [`query_params`](Self::query_params),
    /// [`execute`](Self::execute), [`query_rows`](Self::query_rows) and
    /// [`execute_many`](Self::execute_many), on this or any other connection.
    ///
    /// Behind a transaction-mode pooler (PgBouncer `pool_mode=transaction`) a
    /// server-side prepared statement does not outlive the command that made it, so the
    /// description is all this gives: each use parses the statement again (see the module
    /// docs). SQL-level `PREPARE`/`EXECUTE` do not work through such a pooler at all.
    pub async fn prepare(&self, sql: &str) -> Result<Statement, PgError> {
        self.prepare_typed(sql, &[]).await
    }

    /// As [`prepare`](Self::prepare), with the types of the first `types.len()` parameters
    /// given instead of inferred (`Type::UNKNOWN`, OID 0, leaves one to the server).
    pub async fn prepare_typed(&self, sql: &str, types: &[Type]) -> Result<Statement, PgError> {
        let key = key_for(sql, types);
        let s = StatementRef {
            key: &key,
            sql,
            types,
        };
        let naming = self.conn.st.borrow().cache.enabled();
        let stmt = if naming {
            match self.statement_with(s).await {
                Ok((stmt, close_after)) => {
                    if let Some(name) = close_after {
                        self.close_statement_detached(&name);
                    }
                    stmt
                }
                Err(e) if self.naming_refused(&e, true) => {
                    let stmt = self.describe_as_unnamed(sql, types).await?;
                    self.keep_description(&key, &stmt);
                    stmt
                }
                Err(e) => return Err(e),
            }
        } else {
            // Nothing named is left on the server: a transaction-mode pooler may hand the
            // session to someone else right after. Each use parses the statement again.
            let stmt = self.describe_as_unnamed(sql, types).await?;
            self.keep_description(&key, &stmt);
            stmt
        };
        Ok(Statement {
            inner: Rc::new(Inner {
                sql: sql.into(),
                key: key.into_boxed_str(),
                asked: types.into(),
                params: stmt.params.clone(),
                columns: stmt.columns.clone(),
            }),
        })
    }
}
