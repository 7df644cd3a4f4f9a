//! `ioxide`: a thread-per-core io_uring runtime.
//!
//! Each reactor thread owns one io_uring ring, one task executor and a registry of
//! per-reactor services; nothing is shared between reactors. Every socket operation and every
//! timer is an io_uring op, and the task awaiting it resumes on the same thread, in the same
//! loop turn as its completion — all continuations of a batch run before the next
//! `io_uring_enter`.
//!
//! ```no_run
//! use ioxide::net::Stream;
//! ioxide::block_on(async {
//!     let s = Stream::connect("127.0.0.1:5432".parse().unwrap()).await.unwrap();
//!     let (r, _buf) = s.send_all(b"hello".to_vec()).await;
//!     r.unwrap();
//! });
//! ```
//!
//! Two hooks shape how work is grouped around the kernel: [`end_of_turn`] resolves just before
//! the reactor enters the kernel (a writer awaits it to put a whole turn's output into one
//! send), and [`batch_wait`] lets a task that expects more completions soon ask the next wait
//! to gather them into one wake-up.
//!
//! The only `unsafe` code lives in the `ring` module; see ARCHITECTURE.md, "The ring layer".

#![warn(missing_docs)]

pub mod dns;
mod executor;
pub mod future;
pub mod net;
mod reactor;
// The one module allowed `unsafe` (the workspace denies it everywhere else).
#[allow(unsafe_code)]
mod ring;
pub mod server;
mod shutdown;
pub mod time;

pub use executor::JoinHandle;
pub use reactor::{
    batch_wait, block_on, end_of_turn, spawn, Reactor, ReactorStopped, RemoteHandle, Runtime,
    MAX_BATCH_WINDOW,
};
pub use ring::signal;
pub use ring::{
    process_cpu_time, IoBuf, IoBufMut, KernelVersion, RecvBuf, RingConfig, RingError, RingFeatures,
    RingStats, KERNEL_COMPAT_ENV,
};
pub use server::{Server, ServerHandle};
