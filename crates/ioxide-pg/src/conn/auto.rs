//! Parameterless text on a pool's shared path, prepared once per connection (issue 21): the
//! simple protocol makes PostgreSQL parse, analyse and plan the text on every call; a cached
//! statement costs it a Bind and an Execute. Measured in bench/FINDINGS.md.
//!
//! What the caller sees stays exactly what the simple protocol gives (`QueryResult`: the first
//! value as text, the tag, the statement count, the same errors):
//! - the first time a connection sees a text it runs it with the simple protocol and
//!   remembers it; the second time it prepares it (through the statement cache, so a
//!   `query_params` of the same text shares the statement) and binds it with every result
//!   column in **text** format, which is what a simple Query returns;
//! - a text the server will not prepare — several statements (`42601`), or any error — is
//!   run with the simple protocol (which reports the error as before) and stays there;
//! - a cached statement the server calls stale (`0A000`, `26000`) is evicted and the call
//!   runs with the simple protocol;
//! - only where autocommit is guaranteed: the pool's shared connections, on which a command
//!   that leaves a transaction open is refused and rolled back. A prepared statement inside a
//!   transaction block could fail with `0A000` after DDL in the same block where the simple
//!   protocol would not, so direct and rented connections keep the simple protocol.

use super::command::CmdFuture;
use super::prepared::StatementRef;
use super::{cache, PgConnection, QrSink};
use crate::proto::encode;
use crate::proto::query_result::QueryResult;
use crate::proto::reply::Reply;
use crate::PgError;

/// What to do with a text.
enum Route {
    Simple,
    Cached(cache::Statement),
    Prepare,
}

impl PgConnection {
    /// `query` on a pool's shared connection: see the module docs.
    pub(crate) async fn query_shared(&self, sql: &str) -> Result<QueryResult, PgError> {
        let route = {
            let mut st = self.conn.st.borrow_mut();
            if !st.cache.enabled() || sql.is_empty() {
                Route::Simple
            } else {
                match st.cache.get(sql) {
                    Some(stmt) if stmt.params.is_empty() => Route::Cached(stmt),
                    Some(_) => Route::Simple,
                    None => {
                        let cache = &mut st.cache;
                        if cache.simple_only.contains(sql) {
                            Route::Simple
                        } else {
                            match cache.seen_once.get_mut(sql) {
                                // Seen once: this run prepares it.
                                Some(preparing @ false) => {
                                    *preparing = true;
                                    Route::Prepare
                                }
                                // Another run is preparing it: one prepare per text.
                                Some(true) => Route::Simple,
                                None => {
                                    if cache.seen_once.len() >= cache::AUTO_TEXTS {
                                        cache.seen_once.clear();
                                    }
                                    cache.seen_once.insert(sql.into(), false);
                                    Route::Simple
                                }
                            }
                        }
                    }
                }
            }
        };
        // Prepared by this call (a `26000` on its Bind then means the server session changed
        // under us: a transaction-mode pooler).
        let fresh = matches!(route, Route::Prepare);
        let (stmt, mut close_after) = match route {
            Route::Simple => return self.query(sql).await,
            Route::Cached(stmt) => (stmt, None),
            Route::Prepare => {
                let prepared = self.prepare_auto(sql).await;
                self.conn.st.borrow_mut().cache.seen_once.remove(sql);
                match prepared {
                    Some(p) => p,
                    None => return self.query(sql).await,
                }
            }
        };
        let mut retried = false;
        loop {
            let (seq, from) = self.conn.enqueue(Reply::bind_execute(), |out| {
                encode::bind_text_execute_sync(&stmt.name, out)
            })?;
            if let Some(name) = close_after.take() {
                // Not cached (another first use won the race): closed behind its one run.
                self.close_statement_detached(&name);
            }
            let mut sink = QrSink(QueryResult::new());
            if let Ok(n) = u16::try_from(stmt.columns.len()) {
                if n > 0 {
                    sink.0.expect_columns(n);
                }
            }
            let (r, collateral) = CmdFuture::new(&self.conn, seq, from, &mut sink)
                .outcome()
                .await;
            match r {
                Ok(()) => return Ok(sink.0),
                Err(_) if collateral && !retried => retried = true,
                Err(e) if fresh && self.naming_refused(&e, true) => {
                    // Behind a transaction-mode pooler the statement we just prepared lives in
                    // another server session: the connection stops naming statements (the
                    // cache is off from now on, so this text stays simple) and the call runs
                    // with the simple protocol.
                    drop(e);
                    return self.query(sql).await;
                }
                Err(e) if super::stale_statement(&e) != super::Stale::No => {
                    // The server let the statement go (`DEALLOCATE`, a pooler) or its result
                    // type changed: forget it (if the cache still holds this one) and answer
                    // as the simple protocol does.
                    let name = {
                        let mut st = self.conn.st.borrow_mut();
                        match st.cache.get(sql) {
                            Some(cached) if cached.name == stmt.name => st.cache.remove(sql),
                            _ => None,
                        }
                    };
                    if let Some(name) = name {
                        self.close_statement_detached(&name);
                    }
                    return self.query(sql).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Prepares `sql` through the statement cache. `None` when the server will not (several
    /// statements, an error): the text stays on the simple protocol, which reports any error
    /// as it always did.
    async fn prepare_auto(
        &self,
        sql: &str,
    ) -> Option<(cache::Statement, Option<std::rc::Rc<str>>)> {
        match self.statement_with(StatementRef::text(sql)).await {
            Ok((stmt, close_after)) if stmt.params.is_empty() => Some((stmt, close_after)),
            Ok((_, close_after)) => {
                // It has parameters ($1 in the text): the simple protocol reports that.
                if let Some(name) = close_after {
                    self.close_statement_detached(&name);
                }
                let name = self.conn.st.borrow_mut().cache.remove(sql);
                if let Some(name) = name {
                    self.close_statement_detached(&name);
                }
                self.remember_simple(sql);
                None
            }
            Err(e) => {
                tracing::trace!(error = %e, "not preparing a parameterless text");
                self.remember_simple(sql);
                None
            }
        }
    }

    fn remember_simple(&self, sql: &str) {
        let mut st = self.conn.st.borrow_mut();
        let set = &mut st.cache.simple_only;
        if set.len() >= cache::AUTO_TEXTS {
            set.clear();
        }
        set.insert(sql.into());
    }
}
