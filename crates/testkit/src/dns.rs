//! A small DNS server on loopback UDP whose answers tests change mid-run.
//!
//! It answers A and AAAA questions from a table (name → addresses and TTL) that can be
//! changed at any time; a name not in the table gets NXDOMAIN. It can also be told to
//! misbehave ([`DnsMode`]): never answer, answer garbage, answer with another id, answer
//! SERVFAIL, or set the truncation bit on an empty answer. It counts the questions it gets.
//! It also answers over TCP on the same port (the fallback for truncated answers), unless
//! told not to ([`FakeDns::set_tcp`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use simple_dns::rdata::{RData, A, AAAA};
use simple_dns::{Name, Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};

/// How a [`FakeDns`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// From the table: the addresses of the asked type with their TTL, NXDOMAIN for a name
    /// not in it (NOERROR with no answer for a name without addresses of that type).
    Answer,
    /// Reads the question and never answers.
    Silent,
    /// Answers A questions as `Answer` does and never answers AAAA ones (as some broken
    /// middleboxes do).
    SilentAaaa,
    /// Answers every question with bytes that are not a DNS message.
    Garbage,
    /// Answers as `Answer` would, but with the id off by one.
    WrongId,
    /// Answers SERVFAIL.
    ServFail,
    /// Answers NOERROR with the truncation bit and no records over UDP; over TCP as
    /// `Answer` does.
    Truncated,
}

#[derive(Debug)]
struct State {
    names: HashMap<String, (Vec<IpAddr>, u32)>,
    mode: DnsMode,
    asked: HashMap<String, usize>,
    tcp: bool,
    tcp_queries: usize,
}

/// A DNS server on 127.0.0.1 (a free UDP port), stopped on drop.
///
/// ```no_run
/// let dns = testkit::FakeDns::start()?;
/// dns.set("db.test", &["127.0.0.1".parse().unwrap()], 1);
/// // point the resolver at dns.addr() …
/// dns.set_mode(testkit::DnsMode::Silent); // now it never answers
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FakeDns {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    tcp_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDns")
            .field("addr", &self.addr)
            .field("queries", &self.queries())
            .finish()
    }
}

impl FakeDns {
    /// Starts the server with an empty table, answering (`DnsMode::Answer`).
    ///
    /// # Errors
    /// If the loopback socket cannot be made.
    pub fn start() -> io::Result<FakeDns> {
        // The same port for UDP and TCP: a free UDP port may be taken for TCP, so retry.
        let mut tries = 0;
        let (sock, listener) = loop {
            let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            match TcpListener::bind(sock.local_addr()?) {
                Ok(l) => break (sock, l),
                Err(e) if tries >= 50 => return Err(e),
                Err(_) => tries += 1,
            }
        };
        listener.set_nonblocking(true)?;
        sock.set_read_timeout(Some(Duration::from_millis(10)))?;
        let addr = sock.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            names: HashMap::new(),
            mode: DnsMode::Answer,
            asked: HashMap::new(),
            tcp: true,
            tcp_queries: 0,
        }));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, queries, stop) = (state.clone(), queries.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("fake-dns-{}", addr.port()))
                .spawn(move || serve(&sock, &state, &queries, &stop))?
        };
        let tcp_thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("fake-dns-tcp-{}", addr.port()))
                .spawn(move || serve_tcp(&listener, &state, &stop))?
        };
        Ok(FakeDns {
            addr,
            state,
            queries,
            stop,
            thread: Some(thread),
            tcp_thread: Some(tcp_thread),
        })
    }

    /// Where it listens (127.0.0.1, UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `name` resolve to `addrs` (A for the IPv4 ones, AAAA for the IPv6 ones) with
    /// `ttl` seconds, replacing what it had.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        self.lock()
            .names
            .insert(normalize(name), (addrs.to_vec(), ttl));
    }

    /// Removes `name`: it gets NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.lock().names.remove(&normalize(name));
    }

    /// Changes how it answers from the next question on.
    pub fn set_mode(&self, mode: DnsMode) {
        self.lock().mode = mode;
    }

    /// Whether questions over TCP are answered (default); when off, each TCP connection is
    /// closed at once.
    pub fn set_tcp(&self, on: bool) {
        self.lock().tcp = on;
    }

    /// Questions answered over TCP so far.
    pub fn tcp_queries(&self) -> usize {
        self.lock().tcp_queries
    }

    /// Questions received so far over UDP (each A or AAAA question counts one).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Questions received so far about `name`.
    pub fn queries_for(&self, name: &str) -> usize {
        self.lock()
            .asked
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in [self.thread.take(), self.tcp_thread.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(sock: &UdpSocket, state: &Mutex<State>, queries: &AtomicUsize, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => continue,
        };
        let Ok(query) = Packet::parse(&buf[..n]) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let reply = {
            let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(q) = query.questions.first() {
                let name = normalize(&q.qname.to_string());
                *st.asked.entry(name).or_default() += 1;
            }
            answer(&query, &st)
        };
        if let Some(bytes) = reply {
            let _ = sock.send_to(&bytes, from);
        }
    }
}

fn serve_tcp(listener: &TcpListener, state: &Mutex<State>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((conn, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = answer_tcp(conn, state, stop);
    }
}

/// Answers length-prefixed questions on one connection until it closes or goes quiet.
fn answer_tcp(mut conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) -> io::Result<()> {
    if !state.lock().unwrap_or_else(PoisonError::into_inner).tcp {
        return Ok(());
    }
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
    while !stop.load(Ordering::SeqCst) {
        let mut len = [0u8; 2];
        conn.read_exact(&mut len)?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut msg)?;
        let Ok(query) = Packet::parse(&msg) else {
            return Ok(());
        };
        let reply = {
            let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
            st.tcp_queries += 1;
            let mode = std::mem::replace(&mut st.mode, DnsMode::Answer);
            let reply = answer(&query, &st);
            st.mode = mode;
            reply
        };
        let Some(reply) = reply else { return Ok(()) };
        let n = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        conn.write_all(&n.to_be_bytes())?;
        conn.write_all(&reply)?;
    }
    Ok(())
}

fn answer(query: &Packet<'_>, st: &State) -> Option<Vec<u8>> {
    let mut reply = Packet::new_reply(query.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    reply.questions = query.questions.clone();
    match st.mode {
        DnsMode::Silent => return None,
        DnsMode::SilentAaaa if query.questions.first()?.qtype == QTYPE::TYPE(TYPE::AAAA) => {
            return None
        }
        DnsMode::Garbage => return Some(b"\x00\x01 this is not a DNS message".to_vec()),
        DnsMode::ServFail => {
            *reply.rcode_mut() = RCODE::ServerFailure;
            return reply.build_bytes_vec().ok();
        }
        DnsMode::Truncated => {
            reply.set_flags(PacketFlag::TRUNCATION);
            return reply.build_bytes_vec().ok();
        }
        DnsMode::Answer | DnsMode::WrongId | DnsMode::SilentAaaa => {}
    }
    if st.mode == DnsMode::WrongId {
        reply.set_id(query.id().wrapping_add(1));
    }
    let q = query.questions.first()?;
    let name = normalize(&q.qname.to_string());
    let Some((addrs, ttl)) = st.names.get(&name) else {
        *reply.rcode_mut() = RCODE::NameError;
        return reply.build_bytes_vec().ok();
    };
    let owner = Name::new_unchecked(&name);
    for ip in addrs {
        let rdata = match (ip, q.qtype) {
            (IpAddr::V4(v4), QTYPE::TYPE(TYPE::A)) => RData::A(A::from(*v4)),
            (IpAddr::V6(v6), QTYPE::TYPE(TYPE::AAAA)) => RData::AAAA(AAAA::from(*v6)),
            _ => continue,
        };
        reply
            .answers
            .push(ResourceRecord::new(owner.clone(), CLASS::IN, *ttl, rdata));
    }
    reply.build_bytes_vec().ok()
}
