//! TCP keepalives and the user timeout (libpq's `keepalives`, `keepalives_idle`,
//! `keepalives_interval`, `keepalives_count`, `tcp_user_timeout`): set on the socket before
//! it connects, for every connection the driver opens to the server (CancelRequests
//! included), and ignored for Unix sockets.

use std::time::Duration;

use ioxide::net::{TcpOptions, MAX_KEEPALIVE_COUNT, MAX_KEEPALIVE_SECS};

use super::PgOptions;
use crate::PgError;

/// The socket options a connection starts with: keepalives on (libpq's default), timers at
/// the kernel's defaults.
pub(super) const DEFAULT: TcpOptions = TcpOptions::new().with_keepalive(true);

/// The keys this module handles.
pub(super) const KEYS: [&str; 5] = [
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

/// libpq's integer parameters: optional surrounding whitespace, a sign, digits.
fn integer(value: &str) -> Result<i64, String> {
    value
        .trim()
        .parse()
        .map_err(|e| format!("not an integer: {e}"))
}

fn non_negative(value: &str, unit: &str) -> Result<u64, String> {
    u64::try_from(integer(value)?).map_err(|_| format!("must be a non-negative number of {unit}"))
}

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Applies one of [`KEYS`] to `tcp`; the error says what is wrong with the value.
pub(super) fn apply(mut tcp: TcpOptions, key: &str, value: &str) -> Result<TcpOptions, String> {
    match key {
        "keepalives" => tcp.keepalive = integer(value)? != 0,
        "keepalives_idle" => {
            tcp.keepalive_idle = non_zero(Duration::from_secs(non_negative(value, "seconds")?))
        }
        "keepalives_interval" => {
            tcp.keepalive_interval = non_zero(Duration::from_secs(non_negative(value, "seconds")?))
        }
        "keepalives_count" => {
            let n = non_negative(value, "probes")?;
            let n =
                u32::try_from(n).map_err(|_| format!("must be at most {MAX_KEEPALIVE_COUNT}"))?;
            tcp.keepalive_count = (n > 0).then_some(n);
        }
        "tcp_user_timeout" => {
            tcp.user_timeout = non_zero(Duration::from_millis(non_negative(value, "milliseconds")?))
        }
        _ => return Err("not a TCP option".to_owned()),
    }
    Ok(tcp)
}

/// Range checks the kernel would otherwise make at connect time; errors name the option.
pub(super) fn validate(tcp: &TcpOptions) -> Result<(), PgError> {
    let max_secs = Duration::from_secs(MAX_KEEPALIVE_SECS);
    let max_user = Duration::from_millis(i32::MAX as u64);
    for (field, value, max) in [
        ("keepalives_idle", tcp.keepalive_idle, max_secs),
        ("keepalives_interval", tcp.keepalive_interval, max_secs),
        ("tcp_user_timeout", tcp.user_timeout, max_user),
    ] {
        if let Some(v) = value.filter(|v| *v > max) {
            return Err(PgError::config(
                field,
                Some(&format!("{v:?}")),
                format!("must be at most {max:?}"),
            ));
        }
    }
    if let Some(n) = tcp.keepalive_count.filter(|n| *n > MAX_KEEPALIVE_COUNT) {
        return Err(PgError::config(
            "keepalives_count",
            Some(&n.to_string()),
            format!("must be at most {MAX_KEEPALIVE_COUNT}"),
        ));
    }
    Ok(())
}

impl PgOptions {
    /// libpq's `keepalives`: whether the kernel probes an idle connection, so a server that
    /// vanished (host down, network cut) is noticed and the connection fails instead of
    /// waiting forever. Key `keepalives` (`1`/`0`). Default on. Unix sockets ignore it.
    pub fn keepalives(mut self, on: bool) -> PgOptions {
        self.tcp.keepalive = on;
        self
    }

    /// libpq's `keepalives_idle`: idle time before the first keepalive probe (`TCP_KEEPIDLE`),
    /// whole seconds (a fraction rounds up), at most 32 767 s. Zero: the OS default
    /// (`net.ipv4.tcp_keepalive_time`, usually 7200 s). Key `keepalives_idle` (seconds).
    pub fn keepalives_idle(mut self, idle: Duration) -> PgOptions {
        self.tcp.keepalive_idle = non_zero(idle);
        self
    }

    /// libpq's `keepalives_interval`: time between unanswered probes (`TCP_KEEPINTVL`),
    /// whole seconds (a fraction rounds up), at most 32 767 s. Zero: the OS default
    /// (`net.ipv4.tcp_keepalive_intvl`, usually 75 s). Key `keepalives_interval` (seconds).
    pub fn keepalives_interval(mut self, interval: Duration) -> PgOptions {
        self.tcp.keepalive_interval = non_zero(interval);
        self
    }

    /// libpq's `keepalives_count`: unanswered probes before the connection is considered dead
    /// (`TCP_KEEPCNT`), at most 127. Zero: the OS default (`net.ipv4.tcp_keepalive_probes`,
    /// usually 9). Key `keepalives_count`.
    pub fn keepalives_count(mut self, count: u32) -> PgOptions {
        self.tcp.keepalive_count = (count > 0).then_some(count);
        self
    }

    /// libpq's `tcp_user_timeout`: how long sent data may stay unacknowledged before the
    /// kernel drops the connection (`TCP_USER_TIMEOUT`; with keepalives on it also bounds the
    /// probing), whole milliseconds (a fraction rounds up). Zero: the OS default (none). Key
    /// `tcp_user_timeout` (milliseconds). Unix sockets ignore it.
    pub fn tcp_user_timeout(mut self, timeout: Duration) -> PgOptions {
        self.tcp.user_timeout = non_zero(timeout);
        self
    }

    /// Whether TCP keepalives are on.
    pub fn get_keepalives(&self) -> bool {
        self.tcp.keepalive
    }

    /// The keepalive idle time; `None`: the OS default.
    pub fn get_keepalives_idle(&self) -> Option<Duration> {
        self.tcp.keepalive_idle
    }

    /// The time between keepalive probes; `None`: the OS default.
    pub fn get_keepalives_interval(&self) -> Option<Duration> {
        self.tcp.keepalive_interval
    }

    /// The keepalive probe count; `None`: the OS default.
    pub fn get_keepalives_count(&self) -> Option<u32> {
        self.tcp.keepalive_count
    }

    /// The TCP user timeout; `None`: the OS default.
    pub fn get_tcp_user_timeout(&self) -> Option<Duration> {
        self.tcp.user_timeout
    }

    /// All of the above, as the socket options a TCP connection is opened with.
    pub fn get_tcp_options(&self) -> TcpOptions {
        self.tcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_libpq_integers() {
        let t = |k, v| apply(TcpOptions::new(), k, v);
        assert_eq!(t("keepalives", " 7 ").map(|t| t.keepalive), Ok(true));
        assert_eq!(t("keepalives", "0").map(|t| t.keepalive), Ok(false));
        assert!(t("keepalives", "on").is_err());
        assert_eq!(
            t("keepalives_idle", "30").map(|t| t.keepalive_idle),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            t("keepalives_idle", "0").map(|t| t.keepalive_idle),
            Ok(None)
        );
        assert!(t("keepalives_interval", "-1").is_err());
        assert!(t("keepalives_interval", "1.5").is_err());
        assert_eq!(
            t("keepalives_count", "0").map(|t| t.keepalive_count),
            Ok(None)
        );
        assert_eq!(
            t("tcp_user_timeout", "2500").map(|t| t.user_timeout),
            Ok(Some(Duration::from_millis(2500)))
        );
        assert!(validate(&TcpOptions::new().with_keepalive_count(Some(128))).is_err());
        assert!(validate(&TcpOptions::new().with_keepalive_count(Some(127))).is_ok());
        let idle = Some(Duration::from_secs(32_768));
        assert!(validate(&TcpOptions::new().with_keepalive_idle(idle)).is_err());
    }
}
