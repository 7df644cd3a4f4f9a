//! One exchange with one nameserver: A and AAAA questions sent together on one UDP socket
//! (ring ops), answers matched by id and question, validated and reduced to addresses; a
//! truncated answer is asked again over TCP (ring ops too).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::net::{Stream, UdpSocket};

/// The address families a lookup asks for, in the order their addresses are returned.
pub(super) const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// A record type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

impl Family {
    fn rtype(self) -> TYPE {
        match self {
            Family::V4 => TYPE::A,
            Family::V6 => TYPE::AAAA,
        }
    }
}

/// What one nameserver said about one question.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Addresses, and the smallest TTL on the way to them (CNAMEs included).
    Addrs(Vec<IpAddr>, u32),
    /// NOERROR without an address of this family.
    NoData,
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// No usable answer from this server: try the next.
    Failed(Failure),
}

/// Why a nameserver gave no usable answer.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// Nothing within the timeout; `ignored` datagrams did not match a question we asked.
    Timeout { after: Duration, ignored: u32 },
    /// SERVFAIL, REFUSED, NOTIMP, FORMERR, …
    Rcode(String),
    /// Not a DNS message, or not an answer to our question.
    Garbage(String),
    /// The UDP answer was truncated and asking again over TCP failed (the reason).
    Truncated(String),
    /// The socket failed (`ECONNREFUSED`: nothing listens on the nameserver's port).
    Io(io::ErrorKind, String),
}

/// The largest answer read (a UDP answer without EDNS is at most 512 bytes; room for more
/// costs nothing).
const ANSWER_CAPACITY: usize = 4096;

/// Asks `server` about `name` for each of `families` at once, waiting up to `timeout` for
/// all the answers. Returns one outcome per family, in the same order.
pub(super) async fn exchange(
    server: SocketAddr,
    name: &str,
    families: &[Family],
    timeout: Duration,
) -> Vec<Outcome> {
    let failed_all = |f: Failure| {
        families
            .iter()
            .map(|_| Outcome::Failed(f.clone()))
            .collect()
    };
    let qname = match Name::new(name) {
        Ok(n) => n,
        Err(e) => return failed_all(Failure::Garbage(format!("cannot encode the name: {e}"))),
    };
    let sock = match UdpSocket::connect(server).await {
        Ok(s) => s,
        Err(e) => return failed_all(Failure::Io(e.kind(), e.to_string())),
    };
    let mut ids = Vec::with_capacity(families.len());
    for &family in families {
        let id = query_id();
        let bytes = match encode(id, &qname, family) {
            Ok(b) => b,
            Err(e) => return failed_all(Failure::Garbage(e)),
        };
        if let (Err(e), _) = sock.send(bytes).await {
            return failed_all(Failure::Io(e.kind(), e.to_string()));
        }
        ids.push(id);
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut out: Vec<Option<Outcome>> = vec![None; families.len()];
    let mut ignored = 0;
    while out.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let (r, buf) = sock
            .recv_timeout(Vec::with_capacity(ANSWER_CAPACITY), left)
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
            Err(e) => {
                let f = Failure::Io(e.kind(), e.to_string());
                return fill(out, Outcome::Failed(f));
            }
        }
        let packet = match Packet::parse(&buf) {
            Ok(p) => p,
            Err(e) => {
                let f =
                    Failure::Garbage(format!("an unparseable answer ({} bytes: {e})", buf.len()));
                return fill(out, Outcome::Failed(f));
            }
        };
        let Some(i) = ids.iter().position(|&id| id == packet.id()) else {
            ignored += 1;
            continue;
        };
        if out[i].is_some() {
            ignored += 1;
            continue;
        }
        out[i] = Some(match validate(&packet, name, families[i], false) {
            Ok(outcome) => outcome,
            // Our id on an answer to another question: an answer we cannot use.
            Err(why) => Outcome::Failed(Failure::Garbage(why)),
        });
    }
    let after = started.elapsed();
    // Truncated answers: the same question again over TCP, with a timeout of its own.
    for (slot, &family) in out.iter_mut().zip(families) {
        if let Some(Outcome::Failed(Failure::Truncated(_))) = slot {
            let over_tcp = crate::time::timeout(timeout, over_tcp(server, &qname, name, family));
            *slot = Some(match over_tcp.await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(why)) => Outcome::Failed(Failure::Truncated(why)),
                Err(_) => Outcome::Failed(Failure::Truncated(format!(
                    "no answer over TCP within {timeout:?}"
                ))),
            });
        }
    }
    fill(out, Outcome::Failed(Failure::Timeout { after, ignored }))
}

/// A query for `name`'s records of `family`, recursion desired.
fn encode(id: u16, qname: &Name<'_>, family: Family) -> Result<Vec<u8>, String> {
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(
        qname.clone(),
        QTYPE::TYPE(family.rtype()),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    q.build_bytes_vec()
        .map_err(|e| format!("cannot encode the query: {e}"))
}

/// The largest DNS message over TCP (its 2-byte length prefix).
const TCP_MAX: usize = 2 + u16::MAX as usize;

/// One question over TCP (RFC 1035 4.2.2: each message behind a 2-byte length): connect,
/// send and receive are ring ops. The error says what failed.
async fn over_tcp(
    server: SocketAddr,
    qname: &Name<'_>,
    name: &str,
    family: Family,
) -> Result<Outcome, String> {
    let stream = Stream::connect(server)
        .await
        .map_err(|e| format!("connecting over TCP failed: {e}"))?;
    let id = query_id();
    let query = encode(id, qname, family)?;
    let len = u16::try_from(query.len()).map_err(|_| "the query is too long".to_owned())?;
    let mut msg = Vec::with_capacity(2 + query.len());
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(&query);
    if let (Err(e), _) = stream.send_all(msg).await {
        return Err(format!("sending over TCP failed: {e}"));
    }
    let mut buf: Vec<u8> = Vec::with_capacity(TCP_MAX);
    let end = loop {
        if let [hi, lo, ..] = buf[..] {
            let end = 2 + usize::from(u16::from_be_bytes([hi, lo]));
            if buf.len() >= end {
                break end;
            }
        }
        let (r, b) = stream.recv(buf).await;
        buf = b;
        match r {
            Ok(0) => return Err("the TCP connection closed before a whole answer".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("receiving over TCP failed: {e}")),
        }
    };
    let packet = Packet::parse(&buf[2..end])
        .map_err(|e| format!("an unparseable answer over TCP ({} bytes: {e})", end - 2))?;
    if packet.id() != id {
        return Err("an answer over TCP with a wrong id".into());
    }
    validate(&packet, name, family, true)
}

fn fill(out: Vec<Option<Outcome>>, missing: Outcome) -> Vec<Outcome> {
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| missing.clone()))
        .collect()
}

/// Checks that `p` answers our question (`name`, the family's type, class IN) and reads it.
/// Over UDP (`tcp` false) a truncated answer is `Failed(Truncated)`, to be asked over TCP.
fn validate(p: &Packet<'_>, name: &str, family: Family, tcp: bool) -> Result<Outcome, String> {
    if !p.has_flags(PacketFlag::RESPONSE) {
        return Err("a query where an answer was expected".into());
    }
    let [q] = p.questions.as_slice() else {
        return Err(format!(
            "an answer with {} questions instead of 1",
            p.questions.len()
        ));
    };
    let asked = QTYPE::TYPE(family.rtype());
    if !same_name(&q.qname, name) || q.qtype != asked || q.qclass != QCLASS::CLASS(CLASS::IN) {
        return Err(format!(
            "an answer to another question ({} {:?})",
            q.qname, q.qtype
        ));
    }
    match p.rcode() {
        RCODE::NoError => {}
        RCODE::NameError => return Ok(Outcome::NxDomain),
        RCODE::ServerFailure => return Ok(Outcome::Failed(Failure::Rcode("SERVFAIL".into()))),
        RCODE::Refused => return Ok(Outcome::Failed(Failure::Rcode("REFUSED".into()))),
        other => return Ok(Outcome::Failed(Failure::Rcode(format!("{other:?}")))),
    }
    if !tcp && p.has_flags(PacketFlag::TRUNCATION) {
        return Ok(Outcome::Failed(Failure::Truncated(
            "not tried: the exchange failed first".into(),
        )));
    }
    // Follow CNAMEs from the name asked (in any order, bounded by the answer's length).
    let mut names = vec![name.to_ascii_lowercase()];
    let mut ttl = u32::MAX;
    for _ in 0..p.answers.len() {
        let mut grew = false;
        for rr in &p.answers {
            if let RData::CNAME(c) = &rr.rdata {
                let owner = lower(&rr.name);
                let target = lower(&c.0);
                if names.contains(&owner) && !names.contains(&target) {
                    names.push(target);
                    ttl = ttl.min(rr.ttl);
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    let mut addrs = Vec::new();
    for rr in &p.answers {
        if rr.class != CLASS::IN || !names.contains(&lower(&rr.name)) {
            continue;
        }
        let ip = match (&rr.rdata, family) {
            (RData::A(a), Family::V4) => IpAddr::V4(Ipv4Addr::from(a.address)),
            (RData::AAAA(a), Family::V6) => IpAddr::V6(Ipv6Addr::from(a.address)),
            _ => continue,
        };
        ttl = ttl.min(rr.ttl);
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if addrs.is_empty() {
        return Ok(Outcome::NoData);
    }
    Ok(Outcome::Addrs(addrs, ttl))
}

fn lower(n: &Name<'_>) -> String {
    n.to_string().trim_end_matches('.').to_ascii_lowercase()
}

fn same_name(n: &Name<'_>, name: &str) -> bool {
    lower(n) == name.trim_end_matches('.').to_ascii_lowercase()
}

thread_local! {
    static COUNTER: Cell<u64> = const { Cell::new(0) };
}

/// An unpredictable query id: a counter hashed with a per-process random key (std's
/// `RandomState`) and the clock, so an off-path sender cannot guess it.
fn query_id() -> u16 {
    let n = COUNTER.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n
    });
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() & 0xffff) as u16
}
