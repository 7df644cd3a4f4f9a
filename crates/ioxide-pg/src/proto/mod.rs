//! The sans-io protocol core: plain code fed bytes, producing bytes and events.
//!
//! **No stability: internal, for the fuzzers, benches and property tests only.** This module
//! is public (and `#[doc(hidden)]`) so that `fuzz/`, `bench/` and the crate's tests reach the
//! protocol core without a socket. Nothing here is part of the API: any release may change or
//! remove any item. Users name the types they need ([`crate::Row`], [`crate::Columns`],
//! [`crate::TxnStatus`], [`crate::ServerInfo`], …) from the crate root.
//!
//! Nothing here does I/O, reads a clock or allocates per message on the hot path; the ring
//! connection drives it, and tests and fuzzers reach it without a socket.
//!
//! # The pieces
//!
//! - [`frame`] finds complete backend messages in a receive buffer and enforces
//!   `max_message_bytes` from the 5-byte header alone.
//! - [`message`] decodes one framed message into a borrowing [`message::BackendMessage`] and
//!   classifies the asynchronous ones ([`message::classify_async`]).
//! - [`startup`] is the handshake and authentication machine ([`startup::Startup`]).
//! - [`scram`] is its SCRAM-SHA-256 client and the process-wide cache of derived keys.
//! - [`reply`] is the per-command reply machine ([`reply::Reply`]).
//! - [`encode`] appends frontend messages to a send buffer.
//! - [`row`] and [`query_result`] read results without copying them.
//! - [`driver`] is the reference routing loop below, as plain code: startup first, then
//!   asynchronous messages out, then the head command. Property tests and fuzzers use it.
//!
//! # How a connection drives them
//!
//! 1. **Startup.** `Startup::new(&opts)`, `start(&mut out)`, send `out`. For each frame
//!    received, call `handle(tag, body, &mut out)` and send whatever it appended; stop at
//!    `StartupStatus::Ready(info)`, keeping `info.backend_key()` for cancels. Any error ends
//!    the connection (a wrong password arrives as a server error, SQLSTATE `28P01`).
//! 2. **Commands.** For each command, append its messages with [`encode`] (Query; or
//!    Parse/Describe/Bind/Execute ending with Sync) and push the matching
//!    [`reply::Reply`] (`simple()`, `prepare()`, `bind_execute()` or `extended(steps)`) on a
//!    FIFO. Commands issued together can leave in one send: each ends with its own Sync, so
//!    each gets exactly one ReadyForQuery.
//! 3. **Receiving.** Loop `frame::next_frame(&buf[pos..], max)`: `Ok(None)` → receive more
//!    (`frame::bytes_needed` says how much at least; the buffer never needs to exceed
//!    `max_message_bytes`); `Err` → the connection is broken. For each frame, first call
//!    `message::classify_async`: notices go to `tracing` (`message::log_notice`),
//!    ParameterStatus updates the `ServerInfo`, notifications to whoever listens — these are
//!    never given to a reply machine. Everything else goes to the head reply's `on_message`:
//!    - `RowDescription` / `DataRow` / `CommandComplete` / … feed the command's consumer
//!      ([`row::Row::new`] over a cached [`row::Columns`], or a
//!      [`query_result::QueryResult`]);
//!    - `ServerError(e)` is remembered as the command's outcome; the machine then skips to
//!      ReadyForQuery, so the stream stays in sync and the connection stays usable (unless
//!      `e.is_fatal()`: the server is closing the session);
//!    - `Done { .. }` completes the command; pop it and deliver its result or error.
//!
//!    An `Err` from `on_message` means the stream makes no sense (including COPY, which is
//!    unsupported): mark the connection broken and fail every waiter.
//! 4. A frame arriving with no command in flight is either asynchronous (classified above) or
//!    a FATAL ErrorResponse before the server hangs up (decode it with
//!    [`db_error::DbError::parse`]); anything else is a protocol error.
//! 5. **Cancel** sends [`encode::cancel_request`] on a fresh connection. **Close** sends
//!    [`encode::terminate`].

pub mod auth;
mod cursor;
pub mod db_error;
pub mod driver;
pub mod encode;
pub mod frame;
pub mod message;
pub mod query_result;
pub mod reply;
pub mod row;
pub mod scram;
pub mod startup;
