//! Ring creation: the flags we want, the fallbacks, and errors that name the cause and the fix.

use io_uring::IoUring;
use std::fmt;
use std::io;
use std::time::Duration;

/// How a reactor's ring is built.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Submission queue entries (rounded up to a power of two by the kernel). Default 1024.
    pub entries: u32,
    /// Completion queue entries; default 4 × `entries` so bursts of completions never overflow.
    pub cq_entries: Option<u32>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            entries: 1024,
            cq_entries: None,
        }
    }
}

/// Why a ring could not be created.
#[derive(Debug)]
pub struct RingError {
    kind: RingErrorKind,
    source: io::Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingErrorKind {
    NotSupported,
    DisabledBySysctl,
    Forbidden,
    OutOfMemory,
    Other,
}

impl RingError {
    /// The errno the kernel returned.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RingErrorKind::NotSupported => write!(
                f,
                "io_uring is not supported by this kernel ({}): ioxide needs Linux 6.1 or newer",
                self.source
            ),
            RingErrorKind::DisabledBySysctl => write!(
                f,
                "io_uring is disabled by the kernel.io_uring_disabled sysctl ({}): \
                 run `sysctl -w kernel.io_uring_disabled=0` (or 1 and add this user to the \
                 kernel.io_uring_group group)",
                self.source
            ),
            RingErrorKind::Forbidden => write!(
                f,
                "io_uring is forbidden for this process ({}): most likely a seccomp filter such \
                 as a container runtime's default profile (Docker 25+ blocks io_uring); run with \
                 a profile that allows io_uring_setup/io_uring_enter/io_uring_register",
                self.source
            ),
            RingErrorKind::OutOfMemory => write!(
                f,
                "could not allocate an io_uring ({}): lower the ring size, or raise \
                 RLIMIT_MEMLOCK (`ulimit -l`) on kernels older than 5.12",
                self.source
            ),
            RingErrorKind::Other => write!(f, "could not create an io_uring: {}", self.source),
        }
    }
}

impl std::error::Error for RingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn io_uring_disabled_sysctl() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Classifies a setup failure.
pub(crate) fn classify(err: io::Error) -> RingError {
    let kind = match err.raw_os_error() {
        Some(libc::ENOSYS) => RingErrorKind::NotSupported,
        Some(libc::EPERM) | Some(libc::EACCES) => {
            if io_uring_disabled_sysctl().is_some_and(|v| v > 0) {
                RingErrorKind::DisabledBySysctl
            } else {
                RingErrorKind::Forbidden
            }
        }
        Some(libc::ENOMEM) => RingErrorKind::OutOfMemory,
        _ => RingErrorKind::Other,
    };
    RingError { kind, source: err }
}

/// The flag sets we try, best first. `SINGLE_ISSUER | DEFER_TASKRUN` (6.1) is the combination
/// the io_uring maintainer recommends for thread-per-core: completions are processed only when
/// the owning thread enters with GETEVENTS, never by an interrupt on another CPU.
/// `NO_SQARRAY` (6.6) drops an indirection; `SUBMIT_ALL` (5.18) keeps a batch together when
/// one SQE fails to submit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flags {
    pub(crate) defer_taskrun: bool,
    pub(crate) no_sqarray: bool,
}

pub(crate) fn build(config: &RingConfig) -> Result<(IoUring, Flags), RingError> {
    let entries = config.entries.max(8);
    let cq = config.cq_entries.unwrap_or(entries.saturating_mul(4));
    let attempts: [(Flags, bool, bool); 4] = [
        // (flags, single_issuer+defer, submit_all/coop)
        (
            Flags {
                defer_taskrun: true,
                no_sqarray: true,
            },
            true,
            true,
        ),
        (
            Flags {
                defer_taskrun: true,
                no_sqarray: false,
            },
            true,
            true,
        ),
        (
            Flags {
                defer_taskrun: false,
                no_sqarray: false,
            },
            false,
            true,
        ),
        (
            Flags {
                defer_taskrun: false,
                no_sqarray: false,
            },
            false,
            false,
        ),
    ];
    let mut last_err = None;
    for (flags, defer, extras) in attempts {
        let mut mem_retries = 0;
        let mut size = entries;
        let mut cq_size = cq;
        loop {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq_size.max(size));
            if flags.no_sqarray {
                b.setup_no_sqarray();
            }
            if defer {
                b.setup_single_issuer().setup_defer_taskrun();
            } else if extras {
                b.setup_coop_taskrun();
            }
            if extras {
                b.setup_submit_all();
            }
            match b.build(size) {
                Ok(ring) => {
                    if size < entries {
                        tracing::warn!(
                            requested = entries,
                            entries = size,
                            cq_entries = cq_size.max(size),
                            "io_uring: out of memory for the requested ring size \
                             (RLIMIT_MEMLOCK on kernels before 5.12, or fragmentation); \
                             running with a smaller ring"
                        );
                    }
                    if !defer {
                        tracing::debug!(
                            "io_uring: SINGLE_ISSUER|DEFER_TASKRUN unavailable on this kernel; \
                             running without them (completions may be processed on interrupts)"
                        );
                    }
                    return Ok((ring, flags));
                }
                Err(e) => match e.raw_os_error() {
                    // Unknown flag: try the next, older combination.
                    Some(libc::EINVAL) => {
                        last_err = Some(e);
                        break;
                    }
                    // Transient fragmentation or a low memlock limit: retry briefly, smaller.
                    Some(libc::ENOMEM) if mem_retries < 5 => {
                        mem_retries += 1;
                        // Both queues shrink: the CQ is most of the memory.
                        size = (size / 2).max(8);
                        cq_size = (cq_size / 2).max(size);
                        std::thread::sleep(Duration::from_millis(10 << mem_retries));
                    }
                    _ => return Err(classify(e)),
                },
            }
        }
    }
    Err(classify(last_err.unwrap_or_else(|| {
        io::Error::from_raw_os_error(libc::EINVAL)
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enosys_names_the_kernel_requirement() {
        let e = classify(io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(e.to_string().contains("Linux 6.1"), "{e}");
    }

    #[test]
    fn eperm_names_seccomp_or_the_sysctl() {
        let e = classify(io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(
            e.contains("seccomp") || e.contains("io_uring_disabled"),
            "{e}"
        );
    }

    #[test]
    fn enomem_names_the_memlock_limit_and_ring_size() {
        let e = classify(io::Error::from_raw_os_error(libc::ENOMEM)).to_string();
        assert!(
            e.contains("RLIMIT_MEMLOCK") && e.contains("ring size"),
            "{e}"
        );
    }

    #[test]
    fn the_best_flags_build_on_this_kernel() {
        let (_ring, flags) = build(&RingConfig::default()).expect("io_uring available");
        assert!(flags.defer_taskrun);
    }
}
