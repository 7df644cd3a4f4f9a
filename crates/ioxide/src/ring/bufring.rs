//! Provided buffers for multishot receives: one buffer ring per reactor.
//!
//! A multishot receive (`IORING_OP_RECV` with `IORING_RECV_MULTISHOT` and `BUFFER_SELECT`)
//! stays armed on its socket and, for every chunk of data, takes a buffer from a ring of
//! buffers the application registered (`IORING_REGISTER_PBUF_RING`, 5.19+), fills it and posts
//! a CQE naming the buffer (`IORING_CQE_F_BUFFER`, id in the upper 16 bits of the flags).
//! Compared with a single-shot receive there is no SQE, no prep and no poll re-arm per chunk.
//!
//! Ownership: a buffer is the kernel's while its id sits in the ring, the consumer's from the
//! CQE that names it until it is handed back ([`RecvBuf`]'s drop pushes it onto the ring
//! again). CQEs nobody will consume (their op was dropped) hand their buffer back at once
//! (`Ring::complete` / `Ring::abandon`). The buffer memory is reference-counted, so a
//! [`RecvBuf`] that outlives its reactor still points at valid memory; the kernel stops using
//! the ring when the io_uring is closed, after teardown drained every op.

use super::Ring;
use crate::reactor;
use io_uring::types::BufRingEntry;
use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::Waker;

/// Buffers in the ring (a power of two, at most 32768).
pub(crate) const BUFFERS: u16 = 256;
/// Bytes per buffer.
pub(crate) const BUFFER_SIZE: usize = 4096;
/// The buffer group id of the reactor's one ring.
pub(crate) const GROUP: u16 = 0;

/// Heap memory the kernel writes into through raw pointers (never through a Rust reference).
struct RawMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl RawMem {
    fn new(size: usize, align: usize) -> io::Result<RawMem> {
        let layout = Layout::from_size_align(size, align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (callers pass BUFFERS × something > 0).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(RawMem { ptr, layout })
    }
}

impl Drop for RawMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The registered ring of buffer descriptors plus the buffers themselves.
pub(crate) struct BufRing {
    entries: RawMem,
    buffers: Rc<RawMem>,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    /// Buffers in the kernel's hands, as far as reaped CQEs tell (an upper bound).
    in_kernel: u16,
    /// Starved receives waiting for a buffer to come back.
    waiters: Vec<Waker>,
}

impl fmt::Debug for BufRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufRing").field("tail", &self.tail).finish()
    }
}

impl BufRing {
    /// Allocates and registers the ring with every buffer in it.
    pub(crate) fn register(ring: &Ring) -> io::Result<BufRing> {
        // SAFETY: sysconf only reads a system constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        // The descriptor ring must be page-aligned.
        let entries = RawMem::new(
            (usize::from(BUFFERS) * std::mem::size_of::<BufRingEntry>()).max(page),
            page,
        )?;
        let buffers = Rc::new(RawMem::new(usize::from(BUFFERS) * BUFFER_SIZE, 64)?);
        let mut br = BufRing {
            entries,
            buffers,
            tail: 0,
            in_kernel: BUFFERS,
            waiters: Vec::new(),
        };
        for bid in 0..BUFFERS {
            br.write_entry(bid);
        }
        br.publish();
        // SAFETY: the descriptor ring is page-aligned, BUFFERS entries long, and lives in the
        // Ring (dropped after the io_uring itself, which unregisters it on close).
        unsafe {
            ring.uring.submitter().register_buf_ring_with_flags(
                br.entries.ptr.as_ptr() as u64,
                BUFFERS,
                GROUP,
                0,
            )?;
        }
        Ok(br)
    }

    /// Writes the descriptor of buffer `bid` at the tail (not yet visible to the kernel).
    fn write_entry(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (BUFFERS - 1));
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: idx < BUFFERS, inside the descriptor allocation; the kernel reads only
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *base.add(idx) };
        // SAFETY: bid < BUFFERS, so the buffer lies inside the buffer allocation.
        let addr = unsafe {
            self.buffers
                .ptr
                .as_ptr()
                .add(usize::from(bid) * BUFFER_SIZE)
        };
        entry.set_addr(addr as u64);
        entry.set_len(BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every written descriptor visible to the kernel.
    fn publish(&self) {
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the tail field overlays entry 0's reserved field; it is a u16 the kernel
        // only reads, so an atomic release store orders the descriptor writes before it.
        unsafe {
            let tail = BufRingEntry::tail(base).cast_mut().cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Gives buffer `bid` back to the kernel, and moves the wakers of the receives starved
    /// for one into `wake`: the caller wakes them after releasing the ring, since a waker may
    /// poll its receive inline, and that needs the ring.
    pub(crate) fn recycle(&mut self, bid: u16, wake: &mut Vec<Waker>) {
        if bid < BUFFERS {
            self.write_entry(bid);
            self.publish();
            self.in_kernel = self.in_kernel.saturating_add(1).min(BUFFERS);
            wake.append(&mut self.waiters);
        }
    }

    /// A CQE named a buffer: the kernel has one fewer.
    pub(crate) fn consumed(&mut self) {
        self.in_kernel = self.in_kernel.saturating_sub(1);
    }

    /// True if the kernel holds a buffer; else the waker is stored for the next recycle.
    pub(crate) fn poll_available(&mut self, waker: &Waker) -> bool {
        if self.in_kernel > 0 {
            return true;
        }
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
        false
    }

    /// A consumer's handle on buffer `bid` holding `len` bytes.
    pub(crate) fn take(&self, reactor: u64, bid: u16, len: usize) -> Option<RecvBuf> {
        (bid < BUFFERS && len <= BUFFER_SIZE).then(|| RecvBuf {
            mem: self.buffers.clone(),
            reactor,
            bid,
            len,
        })
    }
}

/// Data from a multishot receive, in a provided buffer. Derefs to the bytes; dropping it
/// hands the buffer back to the kernel. Hold it briefly: while it lives, the kernel has one
/// buffer fewer for every multishot receive of this reactor.
pub struct RecvBuf {
    mem: Rc<RawMem>,
    reactor: u64,
    bid: u16,
    len: usize,
}

impl fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the CQE that named this buffer handed it to us: the kernel does not write
        // it until it is recycled (in our drop). `mem` keeps the memory alive; bid and len
        // were bounds-checked in `take`.
        unsafe {
            std::slice::from_raw_parts(
                self.mem
                    .ptr
                    .as_ptr()
                    .add(usize::from(self.bid) * BUFFER_SIZE),
                self.len,
            )
        }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        let (reactor, bid) = (self.reactor, self.bid);
        // After the reactor ended there is no ring to give it back to, and none needs it. If
        // the ring is borrowed further up the stack, the buffer goes back once it is released.
        reactor::with_ring_or_defer(reactor, move |ring| ring.recycle_buffer(bid));
    }
}
