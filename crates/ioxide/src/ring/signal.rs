//! Process signals without a handler, a self-pipe or a socket: block them in every thread,
//! then take them synchronously with `sigtimedwait(2)`.
//!
//! ```no_run
//! use ioxide::signal::{self, SIGINT, SIGTERM};
//! // First thing in main, before any thread starts: threads inherit the mask, so no thread
//! // runs the default action (death) and the signal stays pending until it is taken.
//! signal::block(&[SIGINT, SIGTERM]).expect("valid signals");
//! // ... start the reactors ...
//! let sig = signal::wait(&[SIGINT, SIGTERM]).expect("valid signals");
//! println!("stopping on signal {sig}");
//! ```
//!
//! The mask is inherited across `fork` and `exec`: children started after [`block`] (by
//! `std::process::Command` too, as observed in `/proc/<pid>/status`) begin with these signals
//! blocked. Programs that manage their own signals (PostgreSQL's postmaster sets its own
//! mask) are unaffected; a child that relies on the default action of SIGINT/SIGTERM should be
//! started before [`block`] or stopped another way.

use std::io;
use std::mem;
use std::time::Duration;

/// Interrupt (Ctrl-C).
pub const SIGINT: i32 = libc::SIGINT;
/// Termination request (`kill`, a service manager).
pub const SIGTERM: i32 = libc::SIGTERM;

fn sigset(signals: &[i32]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, and sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: set is a live sigset_t.
    if unsafe { libc::sigemptyset(&mut set) } < 0 {
        return Err(io::Error::last_os_error());
    }
    for &sig in signals {
        // SAFETY: set is a live, initialised sigset_t; an invalid number is refused with
        // EINVAL, not undefined behaviour.
        if unsafe { libc::sigaddset(&mut set, sig) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

/// Blocks `signals` in the calling thread; threads it starts afterwards inherit the mask.
/// Call it first in `main`, before any thread exists, so every thread blocks them and they
/// stay pending for [`wait`]. An invalid signal number is an `EINVAL` error.
pub fn block(signals: &[i32]) -> io::Result<()> {
    block_saving(signals).map(drop)
}

/// The calling thread's signal mask before a [`block_saving`], to put back with
/// [`restore`].
pub(crate) struct SavedMask(libc::sigset_t);

/// As [`block`], returning the mask it replaced.
pub(crate) fn block_saving(signals: &[i32]) -> io::Result<SavedMask> {
    let set = sigset(signals)?;
    // SAFETY: sigset_t is plain data; pthread_sigmask fills it before it is read.
    let mut old: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: set is an initialised sigset_t and old a live one to write the previous mask to.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(SavedMask(old))
}

/// Puts back the calling thread's mask saved by [`block_saving`].
pub(crate) fn restore(saved: &SavedMask) {
    // SAFETY: saved.0 is the initialised mask pthread_sigmask wrote; a null old-mask pointer
    // is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved.0, std::ptr::null_mut()) };
}

/// Waits until one of `signals` is pending and takes it; returns its number. The signals
/// must be blocked ([`block`]) in every thread, or one of them may die of it instead.
/// Blocking: call it from a thread that is not a reactor.
pub fn wait(signals: &[i32]) -> io::Result<i32> {
    loop {
        if let Some(sig) = wait_for(signals, None)? {
            return Ok(sig);
        }
    }
}

/// As [`wait`], but gives up after `timeout` (`Ok(None)`); a zero timeout takes a signal that
/// is already pending, if any, without waiting.
pub fn wait_timeout(signals: &[i32], timeout: Duration) -> io::Result<Option<i32>> {
    wait_for(signals, Some(timeout))
}

/// One `sigtimedwait`: `Ok(None)` on timeout or an interruption by another signal's handler.
fn wait_for(signals: &[i32], timeout: Option<Duration>) -> io::Result<Option<i32>> {
    let set = sigset(signals)?;
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9: fits every c_long.
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: set is an initialised sigset_t and ts_ptr is null (wait without a bound) or
    // points at the live timespec above; a null siginfo pointer is allowed.
    let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), ts_ptr) };
    if r > 0 {
        return Ok(Some(r));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Ok(None),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_signal_number_is_an_error() {
        assert!(block(&[0x7fff]).is_err());
        assert!(wait_timeout(&[-1], Duration::ZERO).is_err());
    }

    #[test]
    fn a_blocked_signal_raised_on_this_thread_is_taken_by_wait() {
        // SIGUSR2 is not used by the test harness; raised at this thread while blocked, it
        // stays pending for this thread until taken.
        block(&[libc::SIGUSR2]).expect("block");
        assert_eq!(
            wait_timeout(&[libc::SIGUSR2], Duration::ZERO).expect("wait"),
            None
        );
        // SAFETY: raise sends the signal to this thread, which blocks it.
        let r = unsafe { libc::raise(libc::SIGUSR2) };
        assert_eq!(r, 0);
        assert_eq!(wait(&[libc::SIGUSR2]).expect("wait"), libc::SIGUSR2);
        assert_eq!(
            wait_timeout(&[libc::SIGUSR2], Duration::from_millis(10)).expect("wait"),
            None
        );
    }
}
