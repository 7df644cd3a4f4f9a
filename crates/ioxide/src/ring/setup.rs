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
    /// Behave as on this (older) kernel: every io_uring feature it lacks is left unused even
    /// when the running kernel has it, so the fallbacks run (see [`RingFeatures`] and
    /// ARCHITECTURE.md, "Kernel features"). `None` uses whatever the kernel offers. The
    /// default comes from the `IOXIDE_KERNEL_COMPAT` environment variable (e.g. `6.1`);
    /// versions below [`KernelVersion::MINIMUM`] are raised to it.
    pub kernel_compat: Option<KernelVersion>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            entries: 1024,
            cq_entries: None,
            kernel_compat: kernel_compat_from_env(),
        }
    }
}

/// The environment variable that sets [`RingConfig::kernel_compat`]'s default: a kernel
/// version such as `6.1`. Empty or unset: no mask.
pub const KERNEL_COMPAT_ENV: &str = "IOXIDE_KERNEL_COMPAT";

/// A Linux kernel version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    /// The major number (6 in 6.1).
    pub major: u32,
    /// The minor number (1 in 6.1).
    pub minor: u32,
}

impl KernelVersion {
    /// The oldest kernel ioxide supports (6.1: `DEFER_TASKRUN`).
    pub const MINIMUM: KernelVersion = KernelVersion::new(6, 1);

    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> KernelVersion {
        KernelVersion { major, minor }
    }

    /// Parses `6.1`, `6.12` or a release string such as `6.8.0-45-generic` (the first two
    /// numbers count).
    pub fn parse(text: &str) -> Option<KernelVersion> {
        let mut parts = text.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor_part = parts.next()?;
        let digits = minor_part
            .find(|c: char| !c.is_ascii_digit())
            .map_or(minor_part, |end| &minor_part[..end]);
        let minor = digits.parse().ok()?;
        Some(KernelVersion::new(major, minor))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The kernel versions that introduced the features the ring uses only when available.
pub(crate) mod since {
    use super::KernelVersion;
    /// `IORING_SETUP_SUBMIT_ALL`.
    pub(crate) const SUBMIT_ALL: KernelVersion = KernelVersion::new(5, 18);
    /// `IORING_SETUP_COOP_TASKRUN`.
    pub(crate) const COOP_TASKRUN: KernelVersion = KernelVersion::new(5, 19);
    /// `IORING_SETUP_DEFER_TASKRUN` (with `SINGLE_ISSUER`, 6.0).
    pub(crate) const DEFER_TASKRUN: KernelVersion = KernelVersion::new(6, 1);
    /// `IORING_SETUP_NO_SQARRAY`.
    pub(crate) const NO_SQARRAY: KernelVersion = KernelVersion::new(6, 6);
    /// `IORING_FEAT_MIN_TIMEOUT` (`min_wait_usec` in the enter arguments).
    pub(crate) const MIN_TIMEOUT: KernelVersion = KernelVersion::new(6, 12);
}

/// Whether a feature introduced in `since` may be used under the mask `compat`.
pub(crate) fn allowed(compat: Option<KernelVersion>, since: KernelVersion) -> bool {
    compat.is_none_or(|c| c >= since)
}

/// Parses the variable's value: the mask, and a warning to log if the value was not taken
/// as given.
fn parse_compat(value: &str) -> (Option<KernelVersion>, Option<String>) {
    if value.trim().is_empty() {
        return (None, None);
    }
    match KernelVersion::parse(value) {
        Some(v) if v < KernelVersion::MINIMUM => (
            Some(KernelVersion::MINIMUM),
            Some(format!(
                "{KERNEL_COMPAT_ENV}={value}: ioxide needs Linux {min} or newer; masking as {min}",
                min = KernelVersion::MINIMUM
            )),
        ),
        Some(v) => (Some(v), None),
        None => (
            None,
            Some(format!(
                "{KERNEL_COMPAT_ENV}={value:?} is not a kernel version like 6.1; ignored"
            )),
        ),
    }
}

/// `IOXIDE_KERNEL_COMPAT`, read once per process (and logged once).
fn kernel_compat_from_env() -> Option<KernelVersion> {
    static COMPAT: std::sync::OnceLock<Option<KernelVersion>> = std::sync::OnceLock::new();
    *COMPAT.get_or_init(|| {
        let value = std::env::var(KERNEL_COMPAT_ENV).ok()?;
        let (compat, warning) = parse_compat(&value);
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        if let Some(v) = compat {
            tracing::info!(
                "{KERNEL_COMPAT_ENV}={value}: io_uring features newer than Linux {v} are masked \
                 (their fallbacks run)"
            );
        }
        compat
    })
}

/// What a ring actually uses: the kernel's offer, minus what [`RingConfig::kernel_compat`]
/// masks. See ARCHITECTURE.md, "Kernel features", for each feature's fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingFeatures {
    /// The mask in force, if any.
    pub kernel_compat: Option<KernelVersion>,
    /// `IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN` (6.1).
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19), the fallback when `defer_taskrun` is off.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_SUBMIT_ALL` (5.18).
    pub submit_all: bool,
    /// `IORING_SETUP_NO_SQARRAY` (6.6).
    pub no_sqarray: bool,
    /// Batched waits with `min_wait_usec` (`IORING_FEAT_MIN_TIMEOUT`, 6.12); without it a
    /// batched wait is a plain timed wait.
    pub min_timeout: bool,
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
    pub(crate) coop_taskrun: bool,
    pub(crate) submit_all: bool,
}

impl Flags {
    /// The kernel that introduced the newest of these flags.
    fn since(&self) -> KernelVersion {
        if self.no_sqarray {
            since::NO_SQARRAY
        } else if self.defer_taskrun {
            since::DEFER_TASKRUN
        } else if self.coop_taskrun {
            since::COOP_TASKRUN
        } else if self.submit_all {
            since::SUBMIT_ALL
        } else {
            KernelVersion::new(0, 0)
        }
    }
}

const ATTEMPTS: [Flags; 4] = [
    Flags {
        defer_taskrun: true,
        no_sqarray: true,
        coop_taskrun: false,
        submit_all: true,
    },
    Flags {
        defer_taskrun: true,
        no_sqarray: false,
        coop_taskrun: false,
        submit_all: true,
    },
    Flags {
        defer_taskrun: false,
        no_sqarray: false,
        coop_taskrun: true,
        submit_all: true,
    },
    Flags {
        defer_taskrun: false,
        no_sqarray: false,
        coop_taskrun: false,
        submit_all: false,
    },
];

pub(crate) fn build(config: &RingConfig) -> Result<(IoUring, Flags), RingError> {
    let entries = config.entries.max(8);
    let cq = config.cq_entries.unwrap_or(entries.saturating_mul(4));
    if let Some(compat) = config.kernel_compat {
        tracing::debug!(
            %compat,
            "io_uring: kernel compatibility mask: no setup flag or feature newer than {compat}"
        );
    }
    let mut last_err = None;
    // Flags the mask forbids are skipped as if the kernel had refused them (EINVAL).
    for flags in ATTEMPTS
        .into_iter()
        .filter(|f| allowed(config.kernel_compat, f.since()))
    {
        let mut mem_retries = 0;
        let mut size = entries;
        let mut cq_size = cq;
        loop {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq_size.max(size));
            if flags.no_sqarray {
                b.setup_no_sqarray();
            }
            if flags.defer_taskrun {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            if flags.coop_taskrun {
                b.setup_coop_taskrun();
            }
            if flags.submit_all {
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
                    if !flags.defer_taskrun {
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

    #[test]
    fn kernel_versions_parse_from_the_variable_and_from_release_strings() {
        assert_eq!(KernelVersion::parse("6.1"), Some(KernelVersion::new(6, 1)));
        assert_eq!(
            KernelVersion::parse(" 6.12 "),
            Some(KernelVersion::new(6, 12))
        );
        assert_eq!(
            KernelVersion::parse("6.8.0-45-generic"),
            Some(KernelVersion::new(6, 8))
        );
        assert_eq!(
            KernelVersion::parse("6.18-rc1"),
            Some(KernelVersion::new(6, 18))
        );
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(KernelVersion::parse("six.one"), None);
        assert!(KernelVersion::new(6, 12) > KernelVersion::new(6, 6));
    }

    #[test]
    fn the_variable_masks_at_the_minimum_at_least_and_ignores_garbage() {
        assert_eq!(parse_compat(""), (None, None));
        assert_eq!(parse_compat("6.1"), (Some(KernelVersion::new(6, 1)), None));
        assert_eq!(parse_compat("6.6"), (Some(KernelVersion::new(6, 6)), None));
        let (low, warning) = parse_compat("5.15");
        assert_eq!(low, Some(KernelVersion::MINIMUM));
        assert!(warning.is_some());
        let (garbage, warning) = parse_compat("yes");
        assert_eq!(garbage, None);
        assert!(warning.is_some());
    }

    #[test]
    fn a_6_1_mask_builds_the_flags_a_6_1_kernel_accepts() {
        let config = RingConfig {
            kernel_compat: Some(KernelVersion::new(6, 1)),
            ..RingConfig::default()
        };
        let (_ring, flags) = build(&config).expect("io_uring available");
        assert!(flags.defer_taskrun && flags.submit_all);
        assert!(!flags.no_sqarray);
        assert!(!allowed(config.kernel_compat, since::MIN_TIMEOUT));
        assert!(allowed(None, since::MIN_TIMEOUT));
    }
}
