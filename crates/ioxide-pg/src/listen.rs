//! LISTEN/NOTIFY: the [`Notification`] a connection hands to its handler, and
//! [`PgListener`], a dedicated connection that re-listens after the connection is lost and
//! says so with a [`ListenEvent::Gap`].

use crate::pool::{backoff, seed, transient};
use crate::{PgConnection, PgError, PgOptions, Target, TargetSessionAttrs};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// How many notifications a [`PgListener`] holds between [`PgListener::next`] calls by
/// default. Past it the oldest is dropped and a [`ListenEvent::Gap`] takes its place, so a
/// consumer that lags costs bounded memory (each notification holds its channel and payload;
/// a payload is at most 8000 bytes).
pub const LISTEN_BUFFER_LIMIT: usize = 64 * 1024;

/// A `NOTIFY` received on a channel the session listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The channel, as the server names it (an identifier longer than 63 bytes is cut there).
    pub channel: String,
    /// The payload (empty when the `NOTIFY` gave none).
    pub payload: String,
    /// The process id of the backend that sent the `NOTIFY` (its `pg_backend_pid()`).
    pub process_id: i32,
}

/// What [`PgListener::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenEvent {
    /// A notification, in the order the server sent them.
    Notification(Notification),
    /// Notifications may have been missed here: the connection was lost (the listener has
    /// reconnected and listens again to every channel by the time this is returned), or the
    /// consumer lagged and the buffer dropped its oldest notifications.
    Gap,
}

/// The events between `next()` calls, filled by the connection's handler.
struct Buffer {
    events: VecDeque<ListenEvent>,
    limit: usize,
    /// Notifications were dropped before the front one: the next event is a `Gap`.
    gap_first: bool,
    /// The current connection broke (its generation matched `generation`).
    lost: bool,
    generation: u64,
    waker: Option<Waker>,
}

impl Buffer {
    fn new() -> Buffer {
        Buffer {
            events: VecDeque::new(),
            limit: LISTEN_BUFFER_LIMIT,
            gap_first: false,
            lost: false,
            generation: 0,
            waker: None,
        }
    }

    fn push(&mut self, ev: ListenEvent) {
        match ev {
            ListenEvent::Gap => {
                let after_gap = match self.events.back() {
                    Some(last) => *last == ListenEvent::Gap,
                    None => self.gap_first,
                };
                if !after_gap {
                    self.events.push_back(ListenEvent::Gap);
                }
            }
            ev => {
                while self.events.len() >= self.limit {
                    self.events.pop_front();
                    self.gap_first = true;
                }
                self.events.push_back(ev);
            }
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn pop(&mut self) -> Option<ListenEvent> {
        if self.gap_first {
            self.gap_first = false;
            if self.events.front() == Some(&ListenEvent::Gap) {
                self.events.pop_front();
            }
            return Some(ListenEvent::Gap);
        }
        self.events.pop_front()
    }

    fn is_ready(&self) -> bool {
        self.gap_first || !self.events.is_empty() || self.lost
    }
}

/// A connection of its own that listens to channels and yields their notifications, on the
/// reactor that made it (`!Send`).
///
/// When the connection is lost (a restart, a terminated backend, a network failure), the next
/// [`next`](Self::next) reconnects — capped, jittered exponential backoff, retrying for as
/// long as the failure is transient (the transport, the server starting or shutting down, too
/// many connections) — re-issues `LISTEN` for every channel, and yields exactly one
/// [`ListenEvent::Gap`] before any notification received after the reconnect. Notifications
/// received before the loss come first. Reconnecting happens inside `next`, `listen` and
/// `unlisten`: a listener nobody polls holds no connection open after a loss.
///
/// Notifications wait in a buffer between `next` calls, at most [`LISTEN_BUFFER_LIMIT`] of
/// them (see [`set_buffer_limit`](Self::set_buffer_limit)); past it the oldest are dropped and
/// a `Gap` is yielded in their place.
///
/// ```no_run
/// # async fn f(opts: &ioxide_pg::PgOptions) -> Result<(), ioxide_pg::PgError> {
/// use ioxide_pg::{ListenEvent, PgListener};
/// let mut l = PgListener::connect(opts).await?;
/// l.listen("jobs").await?;
/// loop {
///     match l.next().await? {
///         ListenEvent::Notification(n) => println!("{}: {}", n.channel, n.payload),
///         ListenEvent::Gap => println!("may have missed some: re-read the state"),
///         _ => {} // ListenEvent may grow
///     }
/// }
/// # }
/// ```
pub struct PgListener {
    opts: PgOptions,
    /// A fixed target ([`connect_to`](Self::connect_to)), or `None`: every (re)connect
    /// walks the options' host list and looks names up again.
    target: Option<Target>,
    conn: Option<PgConnection>,
    /// Every channel listened to, in the order first listened.
    channels: Vec<String>,
    buf: Rc<RefCell<Buffer>>,
    /// Failed reconnects in a row (the backoff's step).
    failures: u32,
    rng: u64,
}

impl std::fmt::Debug for PgListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgListener")
            .field("channels", &self.channels)
            .field("buffered", &self.buf.borrow().events.len())
            .field("backend_pid", &self.backend_pid())
            .finish()
    }
}

impl PgListener {
    /// Connects with `opts` as [`PgConnection::connect`] does — walking a host list, host
    /// names looked up on the ring — and so does every reconnect: after a failover the
    /// listener follows the list to the new primary, and a name that moved is followed.
    /// PostgreSQL refuses `LISTEN` on a standby (`cannot execute LISTEN during recovery`),
    /// so with a list of several hosts and `target_session_attrs=any` the listener walks it
    /// as `read-write`. The first connect is not retried: its error is returned.
    pub async fn connect(opts: &PgOptions) -> Result<PgListener, PgError> {
        let mut opts = opts.clone();
        if opts.get_hosts().len() > 1 && opts.get_target_session_attrs() == TargetSessionAttrs::Any
        {
            opts = opts.target_session_attrs(TargetSessionAttrs::ReadWrite);
        }
        Self::start(opts, None).await
    }

    /// Connects to an already resolved `target` (see [`PgConnection::connect_to`]); every
    /// reconnect goes there too.
    pub async fn connect_to(opts: &PgOptions, target: Target) -> Result<PgListener, PgError> {
        Self::start(opts.clone(), Some(target)).await
    }

    async fn start(opts: PgOptions, target: Option<Target>) -> Result<PgListener, PgError> {
        let mut l = PgListener {
            opts,
            target,
            conn: None,
            channels: Vec::new(),
            buf: Rc::new(RefCell::new(Buffer::new())),
            failures: 0,
            rng: seed(),
        };
        l.open().await?;
        Ok(l)
    }

    /// Listens to `channel` (quoted as an identifier: any characters but NUL, case kept),
    /// now and after every reconnect. Listening twice to a channel is harmless.
    pub async fn listen(&mut self, channel: &str) -> Result<(), PgError> {
        let sql = format!("LISTEN {}", quote_ident(channel)?);
        self.ensure_connected().await?;
        if let Some(conn) = &self.conn {
            conn.query(&sql).await?;
        }
        if !self.channels.iter().any(|c| c == channel) {
            self.channels.push(channel.to_owned());
        }
        Ok(())
    }

    /// Stops listening to `channel`. Notifications already buffered are still yielded.
    pub async fn unlisten(&mut self, channel: &str) -> Result<(), PgError> {
        let sql = format!("UNLISTEN {}", quote_ident(channel)?);
        self.channels.retain(|c| c != channel);
        self.ensure_connected().await?;
        match &self.conn {
            Some(conn) => conn.query(&sql).await.map(drop),
            None => Ok(()),
        }
    }

    /// Stops listening to every channel (`UNLISTEN *`).
    pub async fn unlisten_all(&mut self) -> Result<(), PgError> {
        self.channels.clear();
        self.ensure_connected().await?;
        match &self.conn {
            Some(conn) => conn.query("UNLISTEN *").await.map(drop),
            None => Ok(()),
        }
    }

    /// The channels listened to, in the order first listened.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The next event: a buffered one at once, else waits for one. After a lost connection
    /// it reconnects first (see the type's documentation); it fails only with an error that
    /// is not transient (authentication, configuration, a refused `LISTEN`), and may be called
    /// again after one. Cancel-safe: a `next` dropped while waiting or reconnecting (a
    /// timeout around it) loses no event, and the next call carries on.
    pub async fn next(&mut self) -> Result<ListenEvent, PgError> {
        loop {
            if let Some(ev) = self.buf.borrow_mut().pop() {
                return Ok(ev);
            }
            if self.needs_reconnect() {
                self.reconnect().await?;
                continue;
            }
            let buf = &self.buf;
            std::future::poll_fn(|cx| {
                let mut b = buf.borrow_mut();
                if b.is_ready() {
                    Poll::Ready(())
                } else {
                    b.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// How many notifications may wait between `next` calls (at least 1; default
    /// [`LISTEN_BUFFER_LIMIT`]). Lowering it below what is buffered drops nothing until the
    /// next notification arrives.
    pub fn set_buffer_limit(&mut self, limit: usize) {
        self.buf.borrow_mut().limit = limit.max(1);
    }

    /// Events waiting to be yielded.
    pub fn buffered(&self) -> usize {
        self.buf.borrow().events.len()
    }

    /// The server process of the current connection, if connected.
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.as_ref().and_then(PgConnection::backend_pid)
    }

    /// Closes the connection gracefully; the listener is gone.
    pub async fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    fn needs_reconnect(&self) -> bool {
        match &self.conn {
            None => true,
            Some(c) => c.is_broken() || self.buf.borrow().lost,
        }
    }

    async fn ensure_connected(&mut self) -> Result<(), PgError> {
        if self.needs_reconnect() {
            self.reconnect().await?;
        }
        Ok(())
    }

    /// Reconnects with backoff until connected and listening again; a `Gap` is buffered
    /// before anything the new connection receives.
    async fn reconnect(&mut self) -> Result<(), PgError> {
        self.conn = None;
        loop {
            let failures = self.failures;
            if failures > 0 {
                ioxide::time::sleep(backoff(failures, &mut self.rng)).await;
            }
            match self.open().await {
                Ok(()) => {
                    self.failures = 0;
                    return Ok(());
                }
                Err(e) if transient(&e) => {
                    tracing::debug!(error = %e, failures, "listener reconnect failed; retrying");
                    self.failures = failures.saturating_add(1);
                }
                Err(e) => {
                    self.failures = failures.saturating_add(1);
                    return Err(e);
                }
            }
        }
    }

    /// Opens a connection, hooks it to the buffer, and listens to every channel on it.
    async fn open(&mut self) -> Result<(), PgError> {
        let conn = match &self.target {
            Some(target) => PgConnection::connect_to(&self.opts, target.clone()).await?,
            None => PgConnection::connect(&self.opts).await?,
        };
        let generation = {
            let mut b = self.buf.borrow_mut();
            b.generation += 1;
            b.lost = false;
            b.generation
        };
        let buf = self.buf.clone();
        conn.on_notification(move |n| {
            buf.borrow_mut().push(ListenEvent::Notification(n.clone()));
        });
        let buf = Rc::downgrade(&self.buf);
        conn.on_broken(move || {
            if let Some(buf) = buf.upgrade() {
                let mut b = buf.borrow_mut();
                if b.generation == generation {
                    b.lost = true;
                    if let Some(w) = b.waker.take() {
                        w.wake();
                    }
                }
            }
        });
        if generation > 1 {
            self.buf.borrow_mut().push(ListenEvent::Gap);
        }
        if !self.channels.is_empty() {
            let mut sql = String::new();
            for c in &self.channels {
                sql.push_str("LISTEN ");
                sql.push_str(&quote_ident(c)?);
                sql.push(';');
            }
            conn.query(&sql).await?;
        }
        self.conn = Some(conn);
        Ok(())
    }
}

/// `name` as a quoted SQL identifier: in `"`, each `"` doubled. NUL cannot be sent.
fn quote_ident(name: &str) -> Result<String, PgError> {
    if name.contains('\0') {
        return Err(PgError::misuse(
            "a channel name cannot contain a NUL character",
        ));
    }
    let mut q = String::with_capacity(name.len() + 2);
    q.push('"');
    for ch in name.chars() {
        if ch == '"' {
            q.push('"');
        }
        q.push(ch);
    }
    q.push('"');
    Ok(q)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn note(i: u32) -> ListenEvent {
        ListenEvent::Notification(Notification {
            channel: "c".into(),
            payload: i.to_string(),
            process_id: 1,
        })
    }

    #[test]
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(quote_ident("Chan").unwrap(), "\"Chan\"");
        assert_eq!(quote_ident("a \"b\" c").unwrap(), "\"a \"\"b\"\" c\"");
        assert!(quote_ident("a\0b").unwrap_err().is_misuse());
    }

    #[test]
    fn overflow_drops_the_oldest_and_yields_one_gap_in_their_place() {
        let mut b = Buffer::new();
        b.limit = 3;
        (0..10).for_each(|i| b.push(note(i)));
        assert_eq!(b.pop(), Some(ListenEvent::Gap));
        assert_eq!(b.pop(), Some(note(7)));
        assert_eq!(b.pop(), Some(note(8)));
        assert_eq!(b.pop(), Some(note(9)));
        assert_eq!(b.pop(), None);
    }

    #[test]
    fn consecutive_gaps_are_one() {
        let mut b = Buffer::new();
        b.push(note(1));
        b.push(ListenEvent::Gap);
        b.push(ListenEvent::Gap);
        b.push(note(2));
        b.push(ListenEvent::Gap);
        let all: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(
            all,
            vec![note(1), ListenEvent::Gap, note(2), ListenEvent::Gap]
        );
        // A gap from overflow followed by a reconnect's gap is still one.
        b.limit = 1;
        b.push(note(3));
        b.push(note(4));
        b.push(ListenEvent::Gap);
        let all: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(all, vec![ListenEvent::Gap, note(4), ListenEvent::Gap]);
    }
}
