//! Walking a host list, libpq's way: each host in turn (shuffled with
//! `load_balance_hosts=random`), each bounded by `connect_timeout`, kept only if it fits
//! `target_session_attrs`; `prefer-standby` takes a second pass accepting any host.

use std::net::{IpAddr, SocketAddr};

use crate::options::{shuffle, HostEntry};
use crate::{Host, LoadBalanceHosts, PgConnection, PgError, PgOptions, Target, TargetSessionAttrs};

/// One host to try: the options for it (its name and port) and its address when known
/// without a lookup.
#[derive(Debug, Clone)]
struct Candidate {
    label: String,
    opts: PgOptions,
    /// `None`: a host name, looked up on the ring at each connect (`resolve::resolve_name`).
    target: Option<Target>,
    name: Option<(String, u16)>,
}

/// The hosts a connect walks, with the rules of the options they came from. A pool keeps
/// one and walks it for every connect.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    hosts: Vec<Candidate>,
    attrs: TargetSessionAttrs,
    balance: LoadBalanceHosts,
    /// The last failed walk found a host that answered but did not fit
    /// `target_session_attrs` (a standby while a read-write walk looks for a primary): a
    /// promotion may be under way, so a pool with waiters retries at a short step.
    misfit_seen: std::cell::Cell<bool>,
}

impl Topology {
    /// From the options' host list, with `targets` (one per host, resolved beforehand) if
    /// given. A single target for a one-host list is the per-`Target` API; targets that do
    /// not match the list one to one are tried as they are, with the first host's options.
    ///
    /// Without targets, a host name is looked up on the ring at each connect
    /// (`resolve::resolve_name`).
    pub(crate) fn new(opts: &PgOptions, targets: Option<Vec<Target>>) -> Result<Topology, PgError> {
        opts.validate_connection()?;
        let entries = opts.host_entries();
        let hosts = match targets {
            Some(ts) if ts.len() == entries.len() => entries
                .iter()
                .zip(ts)
                .map(|(e, t)| Candidate {
                    label: e.label(),
                    opts: opts.for_entry(e),
                    target: Some(t),
                    name: None,
                })
                .collect(),
            Some(ts) => {
                let one = opts.for_entry(&entries[0]);
                ts.into_iter()
                    .map(|t| Candidate {
                        label: target_label(&t),
                        opts: one.clone(),
                        target: Some(t),
                        name: None,
                    })
                    .collect()
            }
            None => entries
                .iter()
                .map(|e| {
                    let target = static_target(e);
                    // A host name: looked up on the ring at each connect.
                    let name = match (&target, &e.host) {
                        (None, Host::Tcp(h)) => Some((h.clone(), e.port)),
                        _ => None,
                    };
                    Ok(Candidate {
                        label: e.label(),
                        opts: opts.for_entry(e),
                        target,
                        name,
                    })
                })
                .collect::<Result<Vec<_>, PgError>>()?,
        };
        Ok(Topology {
            hosts,
            attrs: opts.get_target_session_attrs(),
            balance: opts.get_load_balance_hosts(),
            misfit_seen: std::cell::Cell::new(false),
        })
    }

    /// Whether the last failed walk found a host that answered but did not fit (see
    /// `misfit_seen`).
    pub(crate) fn misfit_seen(&self) -> bool {
        self.misfit_seen.get()
    }

    /// Every target known without a lookup, with the options for it (for the TLS file check).
    pub(crate) fn targets(&self) -> impl Iterator<Item = (&PgOptions, &Target)> {
        self.hosts
            .iter()
            .filter_map(|c| c.target.as_ref().map(|t| (&c.opts, t)))
    }
}

/// A host's address when it needs no lookup: its `hostaddr`, its Unix socket, its IP literal.
fn static_target(e: &HostEntry) -> Option<Target> {
    if let Some(ip) = e.hostaddr {
        return Some(Target::Tcp(vec![SocketAddr::new(ip, e.port)]));
    }
    match &e.host {
        Host::Unix(dir) => Some(Target::Unix(dir.join(format!(".s.PGSQL.{}", e.port)))),
        Host::Tcp(h) => h
            .parse::<IpAddr>()
            .ok()
            .map(|ip| Target::Tcp(vec![SocketAddr::new(ip, e.port)])),
    }
}

fn target_label(t: &Target) -> String {
    match t {
        Target::Tcp(a) => a
            .first()
            .map_or_else(|| "(no address)".to_owned(), |a| a.to_string()),
        Target::Unix(p) => p.display().to_string(),
    }
}

/// Connects to the first host of `topo` that accepts and fits its `target_session_attrs`.
/// The error of a failed walk names each host and why it was skipped.
pub(crate) async fn connect(topo: &Topology) -> Result<PgConnection, PgError> {
    connect_timed(topo).await.map(|(conn, _)| conn)
}

/// As [`connect`], also returning when the attempt that succeeded began (the pool bounds
/// connect plus after-connect hook by `connect_timeout` from there: each host has its own).
pub(crate) async fn connect_timed(
    topo: &Topology,
) -> Result<(PgConnection, std::time::Instant), PgError> {
    let mut order: Vec<usize> = (0..topo.hosts.len()).collect();
    if topo.balance == LoadBalanceHosts::Random {
        shuffle(&mut order);
    }
    let passes: &[TargetSessionAttrs] = match topo.attrs {
        TargetSessionAttrs::PreferStandby => {
            &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        }
        TargetSessionAttrs::Any => &[TargetSessionAttrs::Any],
        TargetSessionAttrs::ReadWrite => &[TargetSessionAttrs::ReadWrite],
        TargetSessionAttrs::ReadOnly => &[TargetSessionAttrs::ReadOnly],
        TargetSessionAttrs::Primary => &[TargetSessionAttrs::Primary],
        _ => &[TargetSessionAttrs::Standby],
    };
    let mut skipped: Vec<String> = Vec::new();
    let mut unreachable = vec![false; topo.hosts.len()];
    let mut last_err: Option<PgError> = None;
    let mut misfits = 0usize;
    let mut all_transient = true;
    for &want in passes {
        for &i in &order {
            if unreachable[i] {
                // Failed in the first pass moments ago: prefer-standby's second pass
                // only reconsiders hosts that answered.
                continue;
            }
            let c = &topo.hosts[i];
            let began = std::time::Instant::now();
            let attempt = async {
                // A name is looked up on the ring for every attempt (a name that moves is
                // followed); the lookup counts towards this host's connect_timeout.
                let target = match (&c.target, &c.name) {
                    (Some(t), _) => t.clone(),
                    (None, Some((h, port))) => Target::Tcp(
                        super::resolve::resolve_name(h, *port, c.opts.get_connect_timeout())
                            .await?,
                    ),
                    (None, None) => Target::Tcp(Vec::new()),
                };
                PgConnection::connect_since(&c.opts, target, began).await
            };
            match attempt.await {
                Err(e) => {
                    tracing::debug!(host = %c.label, error = %e, "host skipped: connect failed");
                    all_transient &= crate::pool::transient(&e);
                    skipped.push(format!("{}: {e}", c.label));
                    unreachable[i] = true;
                    last_err = Some(e);
                }
                Ok(conn) => match fits(&conn, want).await {
                    Ok(None) => return Ok((conn, began)),
                    Ok(Some(why)) => {
                        tracing::debug!(host = %c.label, %why, "host skipped: target_session_attrs");
                        misfits += 1;
                        skipped.push(format!("{}: {why}", c.label));
                        drop(ioxide::spawn(conn.close()));
                    }
                    Err(e) => {
                        all_transient &= crate::pool::transient(&e);
                        skipped.push(format!("{}: checking target_session_attrs: {e}", c.label));
                        drop(ioxide::spawn(conn.close()));
                        last_err = Some(e);
                    }
                },
            }
        }
    }
    topo.misfit_seen.set(misfits > 0);
    let summary = skipped.join("; ");
    match last_err {
        // One host, nothing refused for its attributes: its own error, unchanged.
        Some(e) if topo.hosts.len() == 1 && misfits == 0 => Err(e),
        // Every host refused us for good (authentication, configuration): that error.
        Some(e) if misfits == 0 && !all_transient => Err(e.with_cause(format!(
            "no host of {} accepted the connection: {summary}",
            topo.hosts.len()
        ))),
        _ => Err(PgError::closed(format!(
            "no host fits target_session_attrs={} ({} tried)",
            topo.attrs,
            topo.hosts.len()
        ))
        .with_cause(summary)),
    }
}

/// Whether `conn` fits `want`: `None` if it does, else why not. As libpq 14+: the
/// `in_hot_standby` and `default_transaction_read_only` parameters when the server reports
/// them, else a query.
async fn fits(conn: &PgConnection, want: TargetSessionAttrs) -> Result<Option<String>, PgError> {
    use TargetSessionAttrs as T;
    match want {
        T::ReadWrite | T::ReadOnly => {
            let (ro, why) = match (
                conn.parameter("in_hot_standby"),
                conn.parameter("default_transaction_read_only"),
            ) {
                (Some(hs), Some(dro)) if hs == "on" => (
                    true,
                    format!("in_hot_standby={hs}, default_transaction_read_only={dro}"),
                ),
                (Some(hs), Some(dro)) => (
                    dro == "on",
                    format!("in_hot_standby={hs}, default_transaction_read_only={dro}"),
                ),
                _ => {
                    let v = show(conn, "SHOW transaction_read_only").await?;
                    (v == "on", format!("transaction_read_only={v}"))
                }
            };
            Ok(match (want, ro) {
                (T::ReadWrite, true) => Some(format!("session is read-only ({why})")),
                (T::ReadOnly, false) => Some(format!("session is read-write ({why})")),
                _ => None,
            })
        }
        T::Primary | T::Standby => {
            let (standby, why) = match conn.parameter("in_hot_standby") {
                Some(hs) => (hs == "on", format!("in_hot_standby={hs}")),
                None => {
                    let v = show(conn, "SELECT pg_is_in_recovery()").await?;
                    (v == "t", format!("pg_is_in_recovery()={v}"))
                }
            };
            Ok(match (want, standby) {
                (T::Primary, true) => Some(format!("server is a standby ({why})")),
                (T::Standby, false) => Some(format!("server is not a standby ({why})")),
                _ => None,
            })
        }
        _ => Ok(None),
    }
}

async fn show(conn: &PgConnection, sql: &str) -> Result<String, PgError> {
    let r = conn.query(sql).await?;
    r.value()
        .map(str::to_owned)
        .ok_or_else(|| PgError::protocol(format!("{sql} returned no value")))
}
