//! Batches beyond one statement: [`Pipeline`], mixed parameterized statements that leave in
//! one send under one Sync ([`PgConnection::run_pipeline`]), and scripts whose every
//! statement reports its rows ([`PgConnection::batch_query`]).

use super::cache::Statement as Prepared;
use super::command::{self, CmdFuture, PrepareSink};
use super::prepared::{StatementRef, ToStatement};
use super::result::ResultSet;
use super::state::{Sink, SinkError};
use super::{stale_statement, PgConnection, Stale};
use crate::proto::encode;
use crate::proto::message::TxnStatus;
use crate::proto::reply::{Reply, ReplyEvent};
use crate::proto::row::Columns;
use crate::PgError;
use postgres_types::ToSql;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

/// A batch of parameterized statements, mixed as you like (`INSERT`, `UPDATE`, `SELECT`,
/// each with its own parameters), run by [`PgConnection::run_pipeline`] — on a connection, a
/// [`Transaction`](crate::Transaction) or a rented [`PooledConn`](crate::PooledConn) — or
/// by [`PgPool::run_pipeline`](crate::PgPool::run_pipeline), in one round trip once its
/// statements are cached: libpq's pipeline mode, JDBC's `addBatch`.
///
/// Add entries with [`execute`](Self::execute) (the rows it affects count, rows it returns
/// are dropped) and [`query`](Self::query) (its rows are kept). Each takes SQL text or a
/// [`Statement`](crate::Statement) and borrows its parameters for as long as the pipeline
/// lives; a pipeline can run more than once.
///
/// Running it prepares every distinct statement the connection has not cached (those
/// Parse + Describe go out together: one round trip), then sends every entry's Bind +
/// Execute in one send under **one Sync**. That makes the pipeline one implicit transaction
/// outside `BEGIN`: if an entry fails, none of the pipeline's work stays, and the error says
/// which entry (0-based) failed and how many ran before it. Inside a transaction a failure
/// aborts the transaction, as any failed statement does. (A `COMMIT` entry changes that; see
/// [`run_pipeline`](PgConnection::run_pipeline).)
///
/// ```no_run
/// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
/// use ioxide_pg::Pipeline;
/// let (id, name) = (7i64, "ann");
/// let mut p = Pipeline::new();
/// p.execute("INSERT INTO users (id, name) VALUES ($1, $2)", &[&id, &name])
///     .execute("UPDATE counters SET n = n + 1 WHERE name = 'users'", &[])
///     .query("SELECT name FROM users WHERE id = $1", &[&id]);
/// let results = conn.run_pipeline(&p).await?;
/// assert_eq!(results[0].command_tag(), "INSERT 0 1");
/// assert_eq!(results[1].rows_affected(), 1);
/// assert_eq!(results[2].row(0)?.get::<&str>("name")?, "ann");
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Pipeline<'a> {
    entries: Vec<Entry<'a>>,
    /// Every entry's parameters, one after the other (an entry holds its range).
    params: Vec<&'a (dyn ToSql + Sync)>,
}

#[derive(Debug)]
struct Entry<'a> {
    target: StatementRef<'a>,
    params: Range<usize>,
    keep_rows: bool,
}

impl<'a> Pipeline<'a> {
    /// An empty pipeline.
    pub fn new() -> Pipeline<'a> {
        Pipeline::default()
    }

    /// An empty pipeline with room for `entries` entries.
    pub fn with_capacity(entries: usize) -> Pipeline<'a> {
        Pipeline {
            entries: Vec::with_capacity(entries),
            params: Vec::new(),
        }
    }

    /// Adds a statement whose rows affected count (its result holds its command tag and no
    /// rows; rows it returns are read and dropped).
    pub fn execute<S: ToStatement + ?Sized>(
        &mut self,
        statement: &'a S,
        params: &[&'a (dyn ToSql + Sync)],
    ) -> &mut Pipeline<'a> {
        self.push(statement.statement_ref(), params, false)
    }

    /// Adds a statement whose rows are kept: its result is a [`ResultSet`] as
    /// [`PgConnection::query_params`] returns.
    pub fn query<S: ToStatement + ?Sized>(
        &mut self,
        statement: &'a S,
        params: &[&'a (dyn ToSql + Sync)],
    ) -> &mut Pipeline<'a> {
        self.push(statement.statement_ref(), params, true)
    }

    fn push(
        &mut self,
        target: StatementRef<'a>,
        params: &[&'a (dyn ToSql + Sync)],
        keep_rows: bool,
    ) -> &mut Pipeline<'a> {
        let start = self.params.len();
        self.params.extend_from_slice(params);
        self.entries.push(Entry {
            target,
            params: start..self.params.len(),
            keep_rows,
        });
        self
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry (the pipeline keeps its memory).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.params.clear();
    }

    fn params_of(&self, e: &Entry<'a>) -> &[&'a (dyn ToSql + Sync)] {
        self.params.get(e.params.clone()).unwrap_or_default()
    }
}

/// The distinct statements of a pipeline, and which one each entry runs.
struct Plan<'a> {
    targets: Vec<StatementRef<'a>>,
    /// The first entry that runs each target (errors name it).
    first_use: Vec<usize>,
    /// Per entry, its target's index.
    slot: Vec<usize>,
}

impl<'a> Plan<'a> {
    fn new(p: &Pipeline<'a>) -> Plan<'a> {
        let mut index: foldhash::HashMap<&'a str, usize> = foldhash::HashMap::default();
        let mut plan = Plan {
            targets: Vec::new(),
            first_use: Vec::new(),
            slot: Vec::with_capacity(p.entries.len()),
        };
        for (i, e) in p.entries.iter().enumerate() {
            let next = plan.targets.len();
            let s = *index.entry(e.target.key).or_insert(next);
            if s == next {
                plan.targets.push(e.target);
                plan.first_use.push(i);
            }
            plan.slot.push(s);
        }
        plan
    }
}

impl PgConnection {
    /// Runs a [`Pipeline`]: every entry's Bind + Execute in one send under one Sync (after
    /// preparing, in one round trip, the statements this connection has not cached), and
    /// returns one [`ResultSet`] per entry, in order — with the command tag and rows
    /// affected, and for [`query`](Pipeline::query) entries the rows (read them in place or
    /// take them as [`OwnedRow`](crate::OwnedRow)s with
    /// [`into_rows`](ResultSet::into_rows)). An empty pipeline returns no results and sends
    /// nothing.
    ///
    /// All or nothing outside a transaction: the pipeline is one implicit transaction, so if
    /// entry `i` fails, none of the pipeline's work stays, and the error (SQLSTATE kept) says
    /// "pipeline entry `i` failed (`i` ran before it)". Inside a transaction the failure
    /// aborts it (`25P02` for what follows until `ROLLBACK`). Transaction control in the
    /// pipeline itself changes that, as in libpq's pipeline mode: a `COMMIT` entry commits
    /// what ran before it, which then stays whatever fails later (the error says so), and a
    /// `BEGIN` entry opens a block that a failure leaves aborted. A statement that does not
    /// prepare (a syntax error) or a value that cannot be encoded fails before any entry is
    /// sent, naming its entry; the connection stays usable. A cached statement the server
    /// dropped or invalidated (`DEALLOCATE ALL`, `ALTER TABLE`) is prepared again and the
    /// pipeline run again, once, when nothing of it stayed (outside a transaction).
    ///
    /// Every entry is encoded into the send buffer first, and every result is held until the
    /// end: memory grows with the pipeline (split very large ones).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let mut p = ioxide_pg::Pipeline::new();
    /// p.execute("CREATE TEMP TABLE t (v int8)", &[]);
    /// for v in [&1i64, &2, &3] {
    ///     p.execute("INSERT INTO t VALUES ($1)", &[v]);
    /// }
    /// p.query("SELECT sum(v)::int8 FROM t", &[]);
    /// let r = conn.run_pipeline(&p).await?;
    /// assert_eq!(r.len(), 5);
    /// assert_eq!(r[4].scalar::<i64>()?, 6);
    /// # Ok(()) }
    /// ```
    pub async fn run_pipeline(&self, pipeline: &Pipeline<'_>) -> Result<Vec<ResultSet>, PgError> {
        let entries = &pipeline.entries;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let Ok(n) = u32::try_from(entries.len()) else {
            return Err(PgError::misuse(format!(
                "run_pipeline: {} entries is more than one pipeline can carry (2^32 - 1)",
                entries.len()
            ))
            .never_sent());
        };
        let plan = Plan::new(pipeline);
        let mut attempt = 0;
        let mut collateral_retried = false;
        loop {
            let (stmts, to_close) = match self.prepare_plan(&plan).await {
                Ok(prepared) => prepared,
                Err(e) => {
                    if attempt < 2 && self.naming_refused(&e, true) {
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
            };
            // Without named statements (caching off, or a transaction-mode pooler seen), each
            // entry parses its statement as the unnamed one right before its Bind.
            let unnamed = stmts.iter().any(|s| s.name.is_empty());
            let reply = if unnamed {
                Reply::parse_bind_execute_many(n)
            } else {
                Reply::bind_execute_many(n)
            };
            let enqueued = self.conn.enqueue(reply, |out| {
                for (i, e) in entries.iter().enumerate() {
                    let stmt = slot_stmt(&stmts, &plan, i)?;
                    let name: &str = if unnamed {
                        let oids: Vec<u32> =
                            stmt.params.iter().map(postgres_types::Type::oid).collect();
                        encode::parse("", e.target.sql, &oids, out)?;
                        ""
                    } else {
                        &stmt.name
                    };
                    encode::bind("", name, pipeline.params_of(e), &stmt.params, out).map_err(
                        |err| {
                            err.with_cause(format!(
                                "pipeline entry {i}; no entry of the pipeline was sent"
                            ))
                        },
                    )?;
                    encode::execute("", 0, out)?;
                }
                encode::sync(out);
                Ok(())
            });
            // Statements the cache let go while this pipeline was prepared are closed behind
            // it: its Binds still name them.
            for name in &to_close {
                self.close_statement_detached(name);
            }
            let (seq, from) = enqueued?;
            let mut sink = PipelineSink::new(pipeline, &plan, &stmts);
            let (r, collateral) = CmdFuture::new(&self.conn, seq, from, &mut sink)
                .outcome()
                .await;
            let e = match r {
                Ok(()) => return Ok(sink.sets),
                Err(e) => e,
            };
            if collateral && !collateral_retried {
                // Our automatic cancel of another command hit this one, in autocommit,
                // before any entry completed: the server rolled it back. Run it again, once.
                collateral_retried = true;
                continue;
            }
            // A COMMIT entry ended the implicit transaction: what ran up to it stays, so the
            // pipeline must not run again.
            let committed = sink.last_commit();
            let stale = stale_statement(&e);
            if stale != Stale::No {
                // Which of the pipeline's statements are stale is not said (a DEALLOCATE ALL
                // drops them all): prepare every one again, in one round trip.
                for t in &plan.targets {
                    let name = self.conn.st.borrow_mut().cache.remove(t.key);
                    if let Some(name) = name {
                        self.close_statement_detached(&name);
                    }
                }
                // A second refusal, after every statement was prepared again: a pooler.
                if attempt == 1 && committed.is_none() && self.naming_refused(&e, true) {
                    attempt += 1;
                    continue;
                }
                if stale == Stale::Retry && attempt == 0 && committed.is_none() {
                    attempt += 1;
                    continue;
                }
            }
            if !e.is_server() {
                return Err(e);
            }
            let failed = sink.done;
            let what = match (committed, e.transaction_status()) {
                (Some(j), _) => format!(
                    "entry {j} committed what ran up to it, which stays; the rest was rolled back"
                ),
                (None, Some(TxnStatus::Idle)) => {
                    "the pipeline ran as one implicit transaction, so none of its work stays"
                        .to_owned()
                }
                (None, _) => "the transaction it ran in is aborted".to_owned(),
            };
            return Err(e.with_cause(format!(
                "pipeline entry {failed} failed ({failed} ran before it); {what}"
            )));
        }
    }

    /// The prepared statement of every target of `plan`: from the cache, or prepared now —
    /// every missing one's Parse + Describe + Sync enqueued before the first is awaited, so
    /// they share one round trip. Also returns the names to close once the pipeline is
    /// enqueued (evicted from the cache meanwhile, or not cached at all).
    async fn prepare_plan(
        &self,
        plan: &Plan<'_>,
    ) -> Result<(Vec<Prepared>, Vec<Rc<str>>), PgError> {
        let (mut stmts, caching): (Vec<Option<Prepared>>, bool) = {
            let mut st = self.conn.st.borrow_mut();
            let stmts = plan.targets.iter().map(|t| st.cache.get(t.key)).collect();
            (stmts, st.cache.enabled())
        };
        // Should the caller give up (or an enqueue fail) before every preparation was
        // awaited, the guard abandons the rest (the watcher drains their replies), closes
        // their statements and those the cache let go meanwhile.
        let mut guard = Preparing {
            conn: self,
            pending: Vec::new(),
            awaited: 0,
            to_close: Vec::new(),
        };
        let mut pending: Vec<(usize, Rc<str>, u64, u64)> = Vec::new();
        for (s, t) in plan.targets.iter().enumerate() {
            if stmts.get(s).is_some_and(Option::is_some) {
                continue;
            }
            // Without caching, the unnamed statement describes it (the pipeline parses it
            // again in front of each Bind).
            let name = if caching {
                self.conn.st.borrow_mut().cache.new_name()
            } else {
                Rc::from("")
            };
            let oids: Vec<u32> = t.types.iter().map(postgres_types::Type::oid).collect();
            let r = self.conn.enqueue(Reply::prepare(), |out| {
                encode::parse(&name, t.sql, &oids, out)?;
                encode::describe(encode::Target::Statement, &name, out)?;
                encode::sync(out);
                Ok(())
            });
            match r {
                Ok((seq, from)) => {
                    guard.pending.push((seq, name.clone()));
                    pending.push((s, name, seq, from));
                }
                Err(e) => {
                    let i = plan.first_use.get(s).copied().unwrap_or(0);
                    return Err(e.with_cause(format!("pipeline entry {i}")));
                }
            }
        }
        // Every preparation is awaited before any type lookup: a lookup's catalog query is
        // queued behind the preparations still in flight, which only their awaited futures
        // drive (they are not abandoned, so the watcher does not).
        let mut described = Vec::with_capacity(pending.len());
        for (s, name, seq, from) in pending {
            let mut sink = PrepareSink::default();
            let outcome = CmdFuture::new(&self.conn, seq, from, &mut sink).await;
            guard.awaited += 1;
            described.push((s, name, outcome.map(|()| sink)));
        }
        let mut first_err = None;
        for (s, name, sink) in described {
            let outcome = match sink {
                Err(e) => Err(e),
                Ok(sink) => match sink.unknown_oids() {
                    oids if oids.is_empty() => sink.into_statement(name),
                    // Custom types: looked up (and cached) as `statement_with` does; a
                    // statement whose types cannot be looked up is closed, not cached.
                    oids => {
                        let r = Box::pin(self.described(sink, oids, name.clone())).await;
                        if r.is_err() {
                            guard.to_close.push(name);
                        }
                        r
                    }
                },
            };
            match outcome {
                Ok(stmt) => {
                    // Named, or (naming off) a description of the unnamed statement.
                    let key = plan.targets.get(s).map_or("", |t| t.key);
                    let extra = self.conn.st.borrow_mut().cache.insert(key, stmt.clone());
                    guard.to_close.extend(extra);
                    if let Some(slot) = stmts.get_mut(s) {
                        *slot = Some(stmt);
                    }
                }
                Err(e) if first_err.is_none() => {
                    let i = plan.first_use.get(s).copied().unwrap_or(0);
                    first_err = Some(e.with_cause(format!(
                        "pipeline entry {i} could not be prepared; no entry of the pipeline \
                         was sent"
                    )));
                }
                Err(_) => {}
            }
        }
        if let Some(e) = first_err {
            // Dropping the guard closes the statements the cache let go.
            return Err(e);
        }
        let to_close = std::mem::take(&mut guard.to_close);
        drop(guard);
        let stmts: Vec<Prepared> = stmts.into_iter().flatten().collect();
        if stmts.len() != plan.targets.len() {
            return Err(PgError::protocol(
                "a pipeline statement was neither cached nor prepared",
            ));
        }
        Ok((stmts, to_close))
    }

    /// Runs a script of `;`-separated statements (simple protocol, one round trip) and
    /// returns one [`ResultSet`] per statement, in order, each with its command tag, rows
    /// affected and, for statements that return rows, the rows **in text format** (the
    /// simple protocol's): read them with [`Row::get_text`](crate::Row::get_text). An
    /// empty script returns no results. Failure is as for
    /// [`batch_execute`](Self::batch_execute): one implicit transaction outside `BEGIN`, and
    /// the error names the failing statement (0-based).
    ///
    /// ```no_run
    /// # async fn f(conn: &ioxide_pg::PgConnection) -> Result<(), ioxide_pg::PgError> {
    /// let r = conn
    ///     .batch_query("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2); SELECT v FROM t")
    ///     .await?;
    /// assert_eq!(r[1].command_tag(), "INSERT 0 2");
    /// assert_eq!(r[2].len(), 2);
    /// assert_eq!(r[2].row(1)?.get_text("v")?, Some("2"));
    /// # Ok(()) }
    /// ```
    pub async fn batch_query(&self, sql: &str) -> Result<Vec<ResultSet>, PgError> {
        let (seq, from) = self
            .conn
            .enqueue(Reply::simple(), |out| encode::query(sql, out))?;
        let mut sink = ScriptSink::default();
        let (r, _) = CmdFuture::new(&self.conn, seq, from, &mut sink)
            .outcome()
            .await;
        match r {
            Ok(()) => Ok(sink.sets),
            Err(e) if e.is_server() => {
                let done = sink.sets.len();
                Err(e.with_cause(format!(
                    "statement {done} of the batch failed ({done} completed before it; \
                     without an explicit transaction none of the batch's work stays)"
                )))
            }
            Err(e) => Err(e),
        }
    }
}

/// See `prepare_plan`: on drop, abandons the preparations not awaited to the end yet and
/// closes their statements (a Close queued behind its Parse; closing a statement whose Parse
/// failed is no error), and closes the statements in `to_close` (empty once handed on to
/// the pipeline).
struct Preparing<'c> {
    conn: &'c PgConnection,
    /// Each preparation's command and statement name.
    pending: Vec<(u64, Rc<str>)>,
    awaited: usize,
    to_close: Vec<Rc<str>>,
}

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        for (seq, name) in self.pending.iter().skip(self.awaited) {
            command::abandon(&self.conn.conn, *seq);
            self.conn.close_statement_detached(name);
        }
        for name in &self.to_close {
            self.conn.close_statement_detached(name);
        }
    }
}

/// The prepared statement entry `i` runs.
fn slot_stmt<'s>(
    stmts: &'s [Prepared],
    plan: &Plan<'_>,
    i: usize,
) -> Result<&'s Prepared, PgError> {
    plan.slot
        .get(i)
        .and_then(|&s| stmts.get(s))
        .ok_or_else(|| PgError::protocol("a pipeline entry lost its statement"))
}

/// Takes a pipeline's reply: each CommandComplete (or EmptyQueryResponse) ends the current
/// entry; rows go to the entry's result set when it keeps them.
struct PipelineSink {
    sets: Vec<ResultSet>,
    keep_rows: Vec<bool>,
    /// Entries completed; the reply's next events belong to entry `done`.
    done: usize,
    saw_row: bool,
}

impl PipelineSink {
    fn new(p: &Pipeline<'_>, plan: &Plan<'_>, stmts: &[Prepared]) -> PipelineSink {
        let mut sets = Vec::with_capacity(p.entries.len());
        let mut keep_rows = Vec::with_capacity(p.entries.len());
        for (i, e) in p.entries.iter().enumerate() {
            let columns = match slot_stmt(stmts, plan, i) {
                Ok(stmt) if e.keep_rows => stmt.columns.clone(),
                _ => Columns::none(),
            };
            sets.push(ResultSet::new(columns));
            keep_rows.push(e.keep_rows);
        }
        PipelineSink {
            sets,
            keep_rows,
            done: 0,
            saw_row: false,
        }
    }

    /// The last completed entry that committed (a `COMMIT`, `END`, `COMMIT AND CHAIN` or
    /// `PREPARE TRANSACTION`), if any.
    fn last_commit(&self) -> Option<usize> {
        self.sets.get(..self.done)?.iter().rposition(|set| {
            let tag = set.command_tag();
            tag == "COMMIT" || tag == "PREPARE TRANSACTION"
        })
    }

    fn current(&mut self) -> Result<&mut ResultSet, PgError> {
        self.sets
            .get_mut(self.done)
            .ok_or_else(|| PgError::protocol("more results than the pipeline had entries"))
    }
}

impl Sink for PipelineSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        match ev {
            ReplyEvent::DataRow(_) => {
                self.saw_row = true;
                if self.keep_rows.get(self.done).copied().unwrap_or(false) {
                    self.current()?.accept(ev)?;
                }
            }
            ReplyEvent::CommandComplete(_) => {
                self.current()?.accept(ev)?;
                self.done += 1;
            }
            ReplyEvent::EmptyQuery => {
                self.current()?;
                self.done += 1;
            }
            _ => {}
        }
        Ok(())
    }

    fn took_effect(&self) -> bool {
        self.done > 0 || self.saw_row
    }
}

/// Takes a script's reply: one result set per statement, rows in text format.
#[derive(Default)]
struct ScriptSink {
    sets: Vec<ResultSet>,
    /// The statement whose rows are arriving (after its RowDescription).
    current: Option<ResultSet>,
}

impl Sink for ScriptSink {
    fn event(&mut self, ev: &ReplyEvent<'_>) -> Result<(), SinkError> {
        match ev {
            // The simple protocol's own description: formats as sent (text), not as Bind asks.
            ReplyEvent::RowDescription(body) => {
                self.current = Some(ResultSet::new(Arc::new(Columns::parse(body)?)));
            }
            ReplyEvent::DataRow(_) => match self.current.as_mut() {
                Some(set) => set.accept(ev)?,
                None => {
                    return Err(PgError::protocol(
                        "malformed DataRow: no RowDescription came before it",
                    )
                    .into())
                }
            },
            ReplyEvent::CommandComplete(_) => {
                let mut set = self
                    .current
                    .take()
                    .unwrap_or_else(|| ResultSet::new(Columns::none()));
                set.accept(ev)?;
                self.sets.push(set);
            }
            _ => {}
        }
        Ok(())
    }

    fn took_effect(&self) -> bool {
        !self.sets.is_empty() || self.current.is_some()
    }
}
