//! Socket options a TCP connection carries from before its connect: keepalives and the user
//! timeout, the kernel's ways to notice a peer that vanished without a word (a host powered
//! off, a network cut, a NAT that forgot the flow).

use crate::ring::sys;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// The largest `TCP_KEEPIDLE` and `TCP_KEEPINTVL` Linux accepts, in seconds.
pub const MAX_KEEPALIVE_SECS: u64 = 32_767;

/// The largest `TCP_KEEPCNT` Linux accepts.
pub const MAX_KEEPALIVE_COUNT: u32 = 127;

/// TCP options for [`Stream::connect_with`](super::Stream::connect_with), set on the socket
/// before it connects (so they also bound the handshake where the kernel applies them).
///
/// `None` leaves the kernel's default (the `net.ipv4.tcp_keepalive_*` sysctls: 7200 s idle,
/// 75 s between probes, 9 probes; no user timeout). Timers are whole seconds
/// (`keepalive_idle`, `keepalive_interval`) or milliseconds (`user_timeout`), a fraction
/// rounded up.
///
/// ```
/// use std::time::Duration;
/// use ioxide::net::TcpOptions;
/// let o = TcpOptions::new()
///     .with_keepalive(true)
///     .with_keepalive_idle(Some(Duration::from_secs(30)))
///     .with_user_timeout(Some(Duration::from_secs(20)));
/// assert!(o.keepalive && o.keepalive_interval.is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TcpOptions {
    /// `SO_KEEPALIVE`: probe an idle connection. Off by default (the kernel's default); the
    /// three `keepalive_*` timers apply only when it is on.
    pub keepalive: bool,
    /// `TCP_KEEPIDLE`: idle time before the first probe; 1 s to [`MAX_KEEPALIVE_SECS`].
    pub keepalive_idle: Option<Duration>,
    /// `TCP_KEEPINTVL`: time between probes; 1 s to [`MAX_KEEPALIVE_SECS`].
    pub keepalive_interval: Option<Duration>,
    /// `TCP_KEEPCNT`: unanswered probes before the connection is dropped; 1 to
    /// [`MAX_KEEPALIVE_COUNT`].
    pub keepalive_count: Option<u32>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged (and, with keepalives,
    /// how long probes may go unanswered) before the kernel drops the connection; at most
    /// `i32::MAX` milliseconds.
    pub user_timeout: Option<Duration>,
}

impl TcpOptions {
    /// Everything at the kernel's default (same as `Default`).
    pub const fn new() -> TcpOptions {
        TcpOptions {
            keepalive: false,
            keepalive_idle: None,
            keepalive_interval: None,
            keepalive_count: None,
            user_timeout: None,
        }
    }

    /// Sets [`keepalive`](Self::keepalive).
    #[must_use]
    pub const fn with_keepalive(mut self, on: bool) -> TcpOptions {
        self.keepalive = on;
        self
    }

    /// Sets [`keepalive_idle`](Self::keepalive_idle).
    #[must_use]
    pub const fn with_keepalive_idle(mut self, idle: Option<Duration>) -> TcpOptions {
        self.keepalive_idle = idle;
        self
    }

    /// Sets [`keepalive_interval`](Self::keepalive_interval).
    #[must_use]
    pub const fn with_keepalive_interval(mut self, interval: Option<Duration>) -> TcpOptions {
        self.keepalive_interval = interval;
        self
    }

    /// Sets [`keepalive_count`](Self::keepalive_count).
    #[must_use]
    pub const fn with_keepalive_count(mut self, count: Option<u32>) -> TcpOptions {
        self.keepalive_count = count;
        self
    }

    /// Sets [`user_timeout`](Self::user_timeout).
    #[must_use]
    pub const fn with_user_timeout(mut self, timeout: Option<Duration>) -> TcpOptions {
        self.user_timeout = timeout;
        self
    }

    /// Sets the options on `fd` (a TCP socket, before its connect).
    pub(crate) fn apply(&self, fd: RawFd) -> io::Result<()> {
        let tcp = |name, value| sys::set_int_opt(fd, libc::IPPROTO_TCP, name, value);
        if self.keepalive {
            sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
            let timers = [
                (
                    libc::TCP_KEEPIDLE,
                    "keepalive_idle (s)",
                    self.keepalive_idle,
                ),
                (
                    libc::TCP_KEEPINTVL,
                    "keepalive_interval (s)",
                    self.keepalive_interval,
                ),
            ];
            for (name, what, value) in timers {
                if let Some(d) = value {
                    tcp(name, whole(d, 1, MAX_KEEPALIVE_SECS, what)?)?;
                }
            }
            if let Some(n) = self.keepalive_count {
                let n = in_range(
                    u64::from(n),
                    1,
                    MAX_KEEPALIVE_COUNT.into(),
                    "keepalive_count",
                )?;
                tcp(libc::TCP_KEEPCNT, n)?;
            }
        }
        if let Some(d) = self.user_timeout {
            tcp(
                libc::TCP_USER_TIMEOUT,
                whole(d, 1_000, i32::MAX as u64, "user_timeout (ms)")?,
            )?;
        }
        Ok(())
    }

    /// The options as the kernel has them on `fd` (a TCP socket): the timers are its
    /// effective values, defaults included; a zero user timeout is `None`.
    pub(crate) fn read(fd: RawFd) -> io::Result<TcpOptions> {
        let tcp = |name| sys::get_int_opt(fd, libc::IPPROTO_TCP, name);
        let secs = |v: i32| Some(Duration::from_secs(u64::try_from(v).unwrap_or(0)));
        let user_timeout = u64::try_from(tcp(libc::TCP_USER_TIMEOUT)?).unwrap_or(0);
        Ok(TcpOptions {
            keepalive: sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE)? != 0,
            keepalive_idle: secs(tcp(libc::TCP_KEEPIDLE)?),
            keepalive_interval: secs(tcp(libc::TCP_KEEPINTVL)?),
            keepalive_count: u32::try_from(tcp(libc::TCP_KEEPCNT)?).ok(),
            user_timeout: (user_timeout > 0).then(|| Duration::from_millis(user_timeout)),
        })
    }
}

/// `d` in units of `1/per_sec` s, rounded up, checked to be 1..=max.
fn whole(d: Duration, per_sec: u64, max: u64, what: &str) -> io::Result<i32> {
    let units = d.as_nanos().div_ceil(1_000_000_000 / u128::from(per_sec));
    in_range(u64::try_from(units).unwrap_or(u64::MAX), 1, max, what)
}

fn in_range(v: u64, min: u64, max: u64, what: &str) -> io::Result<i32> {
    if (min..=max).contains(&v) {
        if let Ok(v) = i32::try_from(v) {
            return Ok(v);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("TCP option {what} is {v}, outside {min}..={max}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_round_up_to_whole_units_and_are_bounded() {
        let s = |d| whole(d, 1, MAX_KEEPALIVE_SECS, "t").ok();
        assert_eq!(s(Duration::from_millis(1500)), Some(2));
        assert_eq!(s(Duration::from_secs(30)), Some(30));
        assert_eq!(s(Duration::ZERO), None);
        assert_eq!(s(Duration::from_secs(32_768)), None);
        let ms = |d| whole(d, 1_000, i32::MAX as u64, "t").ok();
        assert_eq!(ms(Duration::from_micros(1)), Some(1));
        assert_eq!(ms(Duration::from_secs(20)), Some(20_000));
        assert_eq!(ms(Duration::from_secs(u64::MAX)), None);
    }
}
