//! Buffers the kernel may read from or write into while an op is in flight.
//!
//! An op takes its buffer *by value* and gives it back with the result. While the op is in
//! flight the buffer lives inside the op record, so its heap allocation cannot be freed or
//! reallocated under the kernel. The traits are `unsafe` because the ring trusts the
//! pointers and lengths they report.

use bytes::{Bytes, BytesMut};

/// A buffer the kernel may read `bytes_init()` bytes from, at a stable address.
///
/// # Safety
/// `stable_ptr()` must point to at least `bytes_init()` initialised bytes, and that memory must
/// stay valid and unmoved for as long as the value exists, even if the value itself moves.
/// (Heap-backed buffers qualify; arrays stored inline do not.)
pub unsafe trait IoBuf: 'static {
    /// Start of the initialised bytes.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialised bytes.
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel may write into: the spare capacity after the initialised bytes.
///
/// # Safety
/// As [`IoBuf`], and `stable_mut_ptr()` must be valid for writes of `bytes_total()` bytes.
/// `set_init(n)` may only be called with `n <= bytes_total()` bytes that really are
/// initialised.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the whole allocation (initialised part first).
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Capacity of the allocation.
    fn bytes_total(&self) -> usize;
    /// Marks the first `n` bytes as initialised.
    ///
    /// # Safety
    /// The first `n` bytes must be initialised and `n <= bytes_total()`.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's heap buffer does not move when the Vec moves; len bytes are initialised.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: capacity is the allocation's size; set_len is sound for initialised bytes.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller guarantees n <= capacity and the bytes are initialised.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: BytesMut's storage is heap-allocated and does not move with the handle.
unsafe impl IoBuf for BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for Vec<u8>.
unsafe impl IoBufMut for BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller guarantees n <= capacity and the bytes are initialised.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: Bytes points at immutable heap or static memory that lives as long as the handle.
unsafe impl IoBuf for Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: a boxed slice is heap memory that does not move with the box.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves or frees.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never moves or frees.
unsafe impl IoBuf for &'static str {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}
