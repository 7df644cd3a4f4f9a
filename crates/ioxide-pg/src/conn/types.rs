//! Types `postgres-types` does not know — enums, composites, domains, ranges and arrays of
//! them — looked up in `pg_type` when a Describe reports their OIDs, so that the real [`Type`]
//! (name, schema, [`Kind`]) reaches `ToSql::accepts`/`FromSql::accepts`, and with it
//! `#[derive(ToSql, FromSql)]`.
//!
//! Only the prepare paths come here (a cache miss), and only when the description holds an
//! OID outside the built-in table. One catalog query fetches every unknown OID of the
//! statement at once, then one more per level of nesting (the element, base, subtype and
//! field types it names), the built-in ones skipped. The result is kept per connection in
//! the statement cache (`StatementCache::types`) and emptied with it. One lookup runs at a
//! time per connection ([`LookupTurn`]), so statements prepared at once by tasks sharing a
//! connection look each type up once. A named statement whose lookup failed is closed, not
//! cached (`PgConnection::statement_with`).

use super::command::{PrepareSink, SetSink};
use super::result::ResultSet;
use super::state::Conn;
use super::{cache, CmdFuture, PgConnection};
use crate::proto::encode;
use crate::proto::reply::{Reply, Steps};
use crate::proto::row::Columns;
use crate::PgError;
use postgres_types::{Field, Kind, Type};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

/// Everything about a batch of types in one round trip: the `pg_type` row, its schema, a
/// range's subtype (a multirange's, from PostgreSQL 14: `{multirange}` is filled in), an
/// enum's labels in order and a composite's live fields in order. Every column and the
/// parameter are built-in types, so running it needs no lookup.
const TYPE_QUERY: &str = "\
SELECT t.oid, t.typname::text, t.typtype, t.typelem, t.typbasetype, n.nspname::text, \
       COALESCE(r.rngsubtype, {multirange}), \
       ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e \
             WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), \
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum), \
       ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum) \
FROM pg_catalog.pg_type t \
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid \
WHERE t.oid = ANY($1)";

/// A multirange's subtype (`pg_range.rngmultitypid` is new in PostgreSQL 14).
const MULTIRANGE_SUBTYPE: &str =
    "(SELECT m.rngsubtype FROM pg_catalog.pg_range m WHERE m.rngmultitypid = t.oid)";

/// [`TYPE_QUERY`] for a server of major version `major` (`None`: unknown, no multiranges).
fn type_query(major: Option<u32>) -> String {
    let multirange = match major {
        Some(m) if m >= 14 => MULTIRANGE_SUBTYPE,
        _ => "NULL::pg_catalog.oid",
    };
    TYPE_QUERY.replace("{multirange}", multirange)
}

/// The major version in a `server_version` ParameterStatus ("15.18 (Debian …)", "9.6.24").
fn major_version(server_version: &str) -> Option<u32> {
    let digits: String = server_version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Levels of nesting followed (an array of a composite whose field is a domain over a range
/// is four); PostgreSQL allows no cycle, this only bounds a confused catalog.
const MAX_DEPTH: usize = 32;

/// One `pg_type` row of [`TYPE_QUERY`].
#[derive(Debug)]
struct Raw {
    name: String,
    schema: String,
    typtype: u8,
    elem: u32,
    base: u32,
    range_subtype: Option<u32>,
    labels: Vec<String>,
    field_names: Vec<String>,
    field_types: Vec<u32>,
}

impl Raw {
    /// The OIDs this type is built from.
    fn depends_on(&self) -> impl Iterator<Item = u32> + '_ {
        [self.elem, self.base, self.range_subtype.unwrap_or(0)]
            .into_iter()
            .chain(self.field_types.iter().copied())
            .filter(|&o| o != 0)
    }
}

/// Of `oids`, the ones to fetch (sorted, once each): not built in, not fetched already, not
/// cached. The cached ones are copied into `known`.
fn needed(
    oids: impl Iterator<Item = u32>,
    cached: &foldhash::HashMap<u32, Type>,
    rows: &foldhash::HashMap<u32, Raw>,
    known: &mut foldhash::HashMap<u32, Type>,
) -> Vec<u32> {
    let mut want = Vec::new();
    for oid in oids {
        if oid == 0 || Type::from_oid(oid).is_some() || rows.contains_key(&oid) {
            continue;
        }
        match cached.get(&oid) {
            Some(t) => {
                known.insert(oid, t.clone());
            }
            None => want.push(oid),
        }
    }
    want.sort_unstable();
    want.dedup();
    want
}

fn lookup_error(oid: u32, why: impl std::fmt::Display) -> PgError {
    PgError::conversion(format!(
        "the type with OID {oid} that the statement uses could not be looked up in pg_type: {why}"
    ))
}

/// Builds the [`Type`] of `oid` from the fetched rows, its dependencies first, adding each
/// to `cache` (the types known so far).
fn build(
    oid: u32,
    rows: &foldhash::HashMap<u32, Raw>,
    cache: &mut foldhash::HashMap<u32, Type>,
    depth: usize,
) -> Result<Type, PgError> {
    if let Some(t) = Type::from_oid(oid).or_else(|| cache.get(&oid).cloned()) {
        return Ok(t);
    }
    if depth > MAX_DEPTH {
        return Err(lookup_error(
            oid,
            format_args!("nested more than {MAX_DEPTH} levels deep"),
        ));
    }
    let raw = rows
        .get(&oid)
        .ok_or_else(|| lookup_error(oid, "pg_type has no such type (dropped?)"))?;
    let sub = |o: u32, cache: &mut foldhash::HashMap<u32, Type>| build(o, rows, cache, depth + 1);
    // As tokio-postgres classifies them, so that derived impls see the same kinds.
    let kind = match raw.typtype {
        b'e' => Kind::Enum(raw.labels.clone()),
        b'p' => Kind::Pseudo,
        _ if raw.base != 0 => Kind::Domain(sub(raw.base, cache)?),
        _ if raw.elem != 0 => Kind::Array(sub(raw.elem, cache)?),
        b'c' => {
            if raw.field_names.len() != raw.field_types.len() {
                return Err(lookup_error(oid, "its fields' names and types disagree"));
            }
            let mut fields = Vec::with_capacity(raw.field_names.len());
            for (name, &t) in raw.field_names.iter().zip(&raw.field_types) {
                fields.push(Field::new(name.clone(), sub(t, cache)?));
            }
            Kind::Composite(fields)
        }
        b'm' => match raw.range_subtype {
            Some(s) => Kind::Multirange(sub(s, cache)?),
            None => Kind::Simple,
        },
        _ => match raw.range_subtype {
            Some(s) => Kind::Range(sub(s, cache)?),
            None => Kind::Simple,
        },
    };
    let t = Type::new(raw.name.clone(), oid, kind, raw.schema.clone());
    cache.insert(oid, t.clone());
    Ok(t)
}

/// This connection's turn to look types up; the next waiter's on drop.
struct LookupTurn<'c>(&'c Conn);

impl<'c> LookupTurn<'c> {
    async fn take(conn: &'c Conn) -> LookupTurn<'c> {
        std::future::poll_fn(|cx| {
            let mut st = conn.st.borrow_mut();
            if st.cache.lookup_busy {
                st.cache.lookup_waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                st.cache.lookup_busy = true;
                Poll::Ready(())
            }
        })
        .await;
        LookupTurn(conn)
    }
}

impl Drop for LookupTurn<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut st = self.0.st.borrow_mut();
            st.cache.lookup_busy = false;
            std::mem::take(&mut st.cache.lookup_waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl PgConnection {
    /// Builds the statement a Describe reported, after looking up `oids`, the types it names
    /// that `postgres-types` does not know (`PrepareSink::unknown_oids`; callers box this
    /// future, so that only a statement with such types pays for its state).
    pub(crate) async fn described(
        &self,
        mut prep: PrepareSink,
        oids: Vec<u32>,
        name: Rc<str>,
    ) -> Result<cache::Statement, PgError> {
        let found = self.lookup_types(&oids).await?;
        prep.resolve_with(|oid| found.get(&oid).cloned());
        prep.into_statement(name)
    }

    /// Replaces the placeholder column types of a result whose rows the server described in
    /// the reply (the unnamed statement, without a Describe of its own beforehand).
    pub(crate) async fn resolve_result(&self, rs: &mut ResultSet) -> Result<(), PgError> {
        let oids: Vec<u32> = rs.columns().placeholder_oids().collect();
        let found = self.lookup_types(&oids).await?;
        let mut columns: Columns = rs.columns().clone();
        columns.resolve_with(|oid| found.get(&oid).cloned());
        rs.set_columns(Arc::new(columns));
        Ok(())
    }

    /// The types of `oids`, from this connection's cache or looked up in `pg_type` (and
    /// cached), dependencies included.
    async fn lookup_types(&self, oids: &[u32]) -> Result<foldhash::HashMap<u32, Type>, PgError> {
        let mut rows: foldhash::HashMap<u32, Raw> = foldhash::HashMap::default();
        // The cached types this lookup relies on, copied: another command may empty the
        // cache while the catalog query is in flight.
        let mut known: foldhash::HashMap<u32, Type> = foldhash::HashMap::default();
        let mut want: Vec<u32> = {
            let st = self.conn.st.borrow();
            needed(oids.iter().copied(), &st.cache.types, &rows, &mut known)
        };
        // One lookup at a time per connection: the one in flight may bring what this one
        // needs (the same statement prepared by several tasks at once on a shared pipelined
        // connection). Only lookups wait here, and a lookup waits for nothing but its own
        // catalog query, so this cannot deadlock.
        let _busy = if want.is_empty() {
            None
        } else {
            let busy = LookupTurn::take(&self.conn).await;
            let st = self.conn.st.borrow();
            want = needed(oids.iter().copied(), &st.cache.types, &rows, &mut known);
            Some(busy)
        };
        let mut round = 0;
        while let Some(&first) = want.first() {
            round += 1;
            if round > MAX_DEPTH {
                return Err(lookup_error(
                    first,
                    format_args!("nested more than {MAX_DEPTH} levels deep"),
                ));
            }
            let rs = self.query_pg_type(&want).await.map_err(|e| {
                let list: Vec<String> = want.iter().map(u32::to_string).collect();
                e.with_cause(format!(
                    "looking up the type(s) with OID {} in pg_type (types postgres-types \
                     does not know are looked up when a statement is prepared)",
                    list.join(", ")
                ))
            })?;
            for row in rs.iter() {
                let oid: u32 = row.get(0)?;
                let typtype: i8 = row.get(2)?;
                let raw = Raw {
                    name: row.get(1)?,
                    schema: row.get(5)?,
                    typtype: typtype as u8,
                    elem: row.get(3)?,
                    base: row.get(4)?,
                    range_subtype: row.get(6)?,
                    labels: row.get(7)?,
                    field_names: row.get(8)?,
                    field_types: row.get(9)?,
                };
                rows.insert(oid, raw);
            }
            if let Some(&gone) = want.iter().find(|o| !rows.contains_key(o)) {
                return Err(lookup_error(gone, "pg_type has no such type (dropped?)"));
            }
            let deps: Vec<u32> = want
                .iter()
                .filter_map(|o| rows.get(o))
                .flat_map(Raw::depends_on)
                .collect();
            let st = self.conn.st.borrow();
            want = needed(deps.into_iter(), &st.cache.types, &rows, &mut known);
        }
        let mut found = foldhash::HashMap::default();
        for &oid in oids {
            found.insert(oid, build(oid, &rows, &mut known, 0)?);
        }
        let mut st = self.conn.st.borrow_mut();
        st.cache.types.extend(known);
        Ok(found)
    }

    /// Runs [`TYPE_QUERY`] for `oids` on the unnamed statement (Parse, Describe, Bind,
    /// Execute, Sync: one round trip, outside the statement cache).
    async fn query_pg_type(&self, oids: &[u32]) -> Result<ResultSet, PgError> {
        let sql = {
            let mut st = self.conn.st.borrow_mut();
            st.cache.type_lookups += 1;
            type_query(st.info.parameter("server_version").and_then(major_version))
        };
        let steps = Steps {
            parse: true,
            describe: true,
            bind: true,
            execute: true,
            ..Default::default()
        };
        let (seq, from) = self.conn.enqueue(Reply::extended(steps), |out| {
            encode::parse("", &sql, &[Type::OID_ARRAY.oid()], out)?;
            encode::describe(encode::Target::Statement, "", out)?;
            encode::bind_execute_sync("", &[&oids], &[Type::OID_ARRAY], out)
        })?;
        let mut sink = SetSink(ResultSet::new(Columns::none()));
        CmdFuture::new(&self.conn, seq, from, &mut sink).await?;
        Ok(sink.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, typtype: u8) -> Raw {
        Raw {
            name: name.into(),
            schema: "public".into(),
            typtype,
            elem: 0,
            base: 0,
            range_subtype: None,
            labels: Vec::new(),
            field_names: Vec::new(),
            field_types: Vec::new(),
        }
    }

    #[test]
    fn builds_nested_kinds_from_catalog_rows() -> Result<(), PgError> {
        let mut rows = foldhash::HashMap::default();
        let mut mood = raw("mood", b'e');
        mood.labels = vec!["sad".into(), "ok".into()];
        rows.insert(100, mood);
        let mut pair = raw("pair", b'c');
        pair.field_names = vec!["m".into(), "n".into()];
        pair.field_types = vec![100, 23];
        rows.insert(101, pair);
        let mut arr = raw("_pair", b'b');
        arr.elem = 101;
        rows.insert(102, arr);
        let mut dom = raw("pos", b'd');
        dom.base = 23;
        rows.insert(103, dom);
        let mut rng = raw("moodrange", b'r');
        rng.range_subtype = Some(100);
        rows.insert(104, rng);
        let mut cache = foldhash::HashMap::default();

        let t = build(102, &rows, &mut cache, 0)?;
        let Kind::Array(pair) = t.kind() else {
            panic!("{t:?}")
        };
        let Kind::Composite(fields) = pair.kind() else {
            panic!("{pair:?}")
        };
        assert_eq!(fields[0].type_().name(), "mood");
        assert_eq!(
            fields[0].type_().kind(),
            &Kind::Enum(vec!["sad".into(), "ok".into()])
        );
        assert_eq!(fields[1].type_(), &Type::INT4);
        assert_eq!(cache.len(), 3, "_pair, pair and mood are cached");
        let d = build(103, &rows, &mut cache, 0)?;
        assert_eq!(
            (d.kind(), d.schema()),
            (&Kind::Domain(Type::INT4), "public")
        );
        let r = build(104, &rows, &mut cache, 0)?;
        assert_eq!(r.kind(), &Kind::Range(cache[&100].clone()));
        let mut multi = raw("moodmultirange", b'm');
        multi.range_subtype = Some(100);
        rows.insert(105, multi);
        let m = build(105, &rows, &mut cache, 0)?;
        assert_eq!(m.kind(), &Kind::Multirange(cache[&100].clone()));
        Ok(())
    }

    #[test]
    fn the_query_asks_for_multiranges_from_postgresql_14() {
        assert_eq!(major_version("15.18 (Debian 15.18-1.pgdg120+1)"), Some(15));
        assert_eq!(major_version("9.6.24"), Some(9));
        assert_eq!(major_version("devel"), None);
        assert!(type_query(Some(14)).contains("rngmultitypid"));
        assert!(!type_query(Some(13)).contains("rngmultitypid"));
        assert!(!type_query(None).contains('{'));
    }

    #[test]
    fn a_confused_catalog_is_an_error_not_a_hang() {
        // A composite that contains itself (PostgreSQL forbids it; a hostile server need not).
        let mut rows = foldhash::HashMap::default();
        let mut selfish = raw("selfish", b'c');
        selfish.field_names = vec!["me".into()];
        selfish.field_types = vec![200];
        rows.insert(200, selfish);
        let mut cache = foldhash::HashMap::default();
        let e = build(200, &rows, &mut cache, 0).expect_err("refused");
        assert!(e.to_string().contains("levels deep"), "{e}");
        // A field type the catalog did not return, and names and types that disagree.
        let mut missing = raw("missing", b'c');
        missing.field_names = vec!["x".into()];
        missing.field_types = vec![999];
        rows.insert(201, missing);
        let e = build(201, &rows, &mut cache, 0).expect_err("refused");
        assert!(e.to_string().contains("OID 999"), "{e}");
        let mut odd = raw("odd", b'c');
        odd.field_names = vec!["x".into(), "y".into()];
        odd.field_types = vec![23];
        rows.insert(202, odd);
        let e = build(202, &rows, &mut cache, 0).expect_err("refused");
        assert!(e.to_string().contains("disagree"), "{e}");
    }
}
