//! The per-connection statement cache: SQL text → server-side prepared statement, bounded,
//! least recently used evicted.

use crate::proto::row::Columns;
use postgres_types::Type;
use std::rc::Rc;
use std::sync::Arc;

/// A statement prepared on the server, shared: the cache and every query running it hold
/// one reference (one count to bump per query, not one per field).
pub(crate) type Statement = Rc<Prepared>;

/// What the server told us about a prepared statement.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) name: Rc<str>,
    pub(crate) params: Rc<[Type]>,
    /// Result columns, formats set to binary (what Bind asks for).
    pub(crate) columns: Arc<Columns>,
}

#[derive(Debug)]
struct Entry {
    stmt: Statement,
    last_used: u64,
}

#[derive(Debug)]
pub(crate) struct StatementCache {
    capacity: usize,
    /// foldhash, not SipHash: hashing the SQL text was 213 instructions of a 5 860-instruction
    /// parameterized query (callgrind). Keys are the application's SQL, bounded in number.
    map: foldhash::HashMap<Box<str>, Entry>,
    clock: u64,
    /// `ioxide_<64 random bits>_`: names unique across connections and processes, so a
    /// statement of ours can never be mistaken for another client's where server sessions
    /// are shared (a transaction-mode pooler): a wrong session answers `26000`, never runs
    /// someone else's statement.
    prefix: Box<str>,
    next_name: u64,
    /// False once a transaction-mode pooler was seen (`stop_naming`): the entries are then
    /// descriptions of the unnamed statement (empty name), which each use parses again.
    naming: bool,
    /// Types `postgres-types` does not know, as looked up in `pg_type` (`conn/types.rs`),
    /// by OID. Emptied with the statements: when the session is gone, and when the server
    /// says a cached statement is stale (a type may have been dropped and created again).
    pub(crate) types: foldhash::HashMap<u32, Type>,
    /// Round trips to `pg_type` so far (the tests count them).
    pub(crate) type_lookups: u64,
    /// A type lookup is in flight: the next one waits for it (it may bring what the next
    /// one needs — statements of the same types prepared at once on a shared connection).
    pub(crate) lookup_busy: bool,
    pub(crate) lookup_waiters: Vec<std::task::Waker>,
    /// Parameterless texts a pool's shared path ran once with the simple protocol (`false`)
    /// or is preparing now (`true`) (`conn/auto.rs`): the second run prepares them, and runs
    /// meanwhile stay simple. Bounded: emptied when full.
    pub(crate) seen_once: foldhash::HashMap<Box<str>, bool>,
    /// Texts the server would not prepare (several statements, an error): they stay on the
    /// simple protocol. Bounded likewise.
    pub(crate) simple_only: foldhash::HashSet<Box<str>>,
}

/// How many texts `seen_once` and `simple_only` remember before they start over.
pub(crate) const AUTO_TEXTS: usize = 1024;

impl StatementCache {
    pub(crate) fn new(capacity: usize) -> StatementCache {
        StatementCache {
            capacity,
            map: foldhash::HashMap::default(),
            clock: 0,
            prefix: format!("ioxide_{:x}_", unique_tag()).into_boxed_str(),
            next_name: 0,
            naming: true,
            types: foldhash::HashMap::default(),
            type_lookups: 0,
            lookup_busy: false,
            lookup_waiters: Vec::new(),
            seen_once: foldhash::HashMap::default(),
            simple_only: foldhash::HashSet::default(),
        }
    }

    /// Whether statements get server-side names and are cached as such: false with
    /// `statement_cache_capacity` 0, and once a transaction-mode pooler was seen
    /// (`stop_naming`; the entries are then descriptions of the unnamed statement).
    pub(crate) fn enabled(&self) -> bool {
        self.naming && self.capacity > 0
    }

    /// Stops naming statements for good (a transaction-mode pooler was detected: the
    /// statements of this session may live on another server connection). Forgets every
    /// cached statement without closing it (a Close would reach whichever server connection
    /// the pooler picks); from now on the cache keeps descriptions of the unnamed statement,
    /// so a query stays one round trip. Returns whether naming was on until now.
    pub(crate) fn stop_naming(&mut self) -> bool {
        let was = self.enabled();
        self.naming = false;
        self.map.clear();
        was
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// A fresh statement name, unique on this connection.
    pub(crate) fn new_name(&mut self) -> Rc<str> {
        self.next_name += 1;
        Rc::from(format!("{}{}", self.prefix, self.next_name))
    }

    pub(crate) fn get(&mut self, sql: &str) -> Option<Statement> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(sql).map(|e| {
            e.last_used = clock;
            e.stmt.clone()
        })
    }

    /// Inserts a statement. Returns the names of statements that must now be closed on the
    /// server: the evicted least recently used one, or `stmt` itself when caching is off or
    /// an entry for `sql` already exists (two first uses raced).
    /// The unnamed statement is never returned (there is nothing to close).
    pub(crate) fn insert(&mut self, sql: &str, stmt: Statement) -> Option<Rc<str>> {
        self.insert_entry(sql, stmt).filter(|name| !name.is_empty())
    }

    fn insert_entry(&mut self, sql: &str, stmt: Statement) -> Option<Rc<str>> {
        if self.capacity == 0 || self.map.contains_key(sql) {
            return Some(stmt.name.clone());
        }
        let mut evicted = None;
        if self.map.len() >= self.capacity {
            let lru = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = lru {
                evicted = self.map.remove(&k).map(|e| e.stmt.name.clone());
            }
        }
        self.clock += 1;
        self.map.insert(
            sql.into(),
            Entry {
                stmt,
                last_used: self.clock,
            },
        );
        evicted
    }

    /// Forgets `sql` (the server invalidated it) and the looked-up types (what made it stale
    /// may be a type dropped and created again); returns its name to close.
    pub(crate) fn remove(&mut self, sql: &str) -> Option<Rc<str>> {
        self.types.clear();
        self.map
            .remove(sql)
            .map(|e| e.stmt.name.clone())
            .filter(|name| !name.is_empty())
    }

    /// Forgets everything, looked-up types included (the connection's server session is gone).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.types.clear();
        self.seen_once.clear();
    }
}

/// 64 bits no other connection (of this process or, with overwhelming odds, another) gets:
/// std's randomly keyed hasher (seeded from the OS once per process) over a counter, the
/// pid and the time.
fn unique_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(c: &mut StatementCache) -> Statement {
        Rc::new(Prepared {
            name: c.new_name(),
            params: Rc::from(vec![]),
            columns: Arc::new(Columns::default()),
        })
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = StatementCache::new(2);
        let a = stmt(&mut c);
        let b = stmt(&mut c);
        let x = stmt(&mut c);
        let b_name = b.name.clone();
        assert_eq!(c.insert("a", a.clone()), None);
        assert_eq!(c.insert("b", b), None);
        assert!(c.get("a").is_some()); // b is now least recent
        assert_eq!(c.insert("x", x), Some(b_name));
        assert!(c.get("b").is_none());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn names_differ_between_connections() {
        let (mut c, mut d) = (StatementCache::new(1), StatementCache::new(1));
        let (x, y) = (c.new_name(), d.new_name());
        assert_ne!(x, y);
        assert!(x.starts_with("ioxide_") && x.ends_with("_1"), "{x}");
        assert!(x.len() < 63, "fits NAMEDATALEN: {x}");
    }

    #[test]
    fn stop_naming_forgets_and_reports_once() {
        let mut c = StatementCache::new(4);
        let a = stmt(&mut c);
        assert_eq!(c.insert("a", a), None);
        assert!(c.enabled());
        assert!(c.stop_naming());
        assert!(!c.enabled());
        assert_eq!(c.len(), 0);
        assert!(!c.stop_naming());
        // Descriptions of the unnamed statement are kept; nothing to close for them.
        let d = Rc::new(Prepared {
            name: Rc::from(""),
            params: Rc::from(vec![]),
            columns: Arc::new(Columns::default()),
        });
        assert_eq!(c.insert("d", d), None);
        assert!(c.get("d").is_some_and(|s| s.name.is_empty()));
        assert_eq!(c.remove("d"), None);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let mut c = StatementCache::new(0);
        let a = stmt(&mut c);
        let name = a.name.clone();
        assert_eq!(c.insert("a", a), Some(name));
        assert!(c.get("a").is_none());
    }
}
