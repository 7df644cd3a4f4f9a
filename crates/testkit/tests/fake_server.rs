//! The scripted fake server, driven by a raw std TCP client.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testkit::{backend, frontend, FakeServer, Step};

fn connect(server: &FakeServer) -> TcpStream {
    let s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn client_gets_the_scripted_bytes_exactly() {
    let mut answer = backend::handshake_ok();
    answer.extend(backend::simple_query_result("n", "42"));
    let server = FakeServer::start(vec![
        Step::Send(backend::handshake_ok()),
        Step::ReadMessage,
        Step::Send(backend::simple_query_result("n", "42")),
        Step::ReadMessage,
    ])
    .unwrap();
    let mut client = connect(&server);
    client.write_all(&frontend::ssl_request()).unwrap();
    assert_eq!(read_n(&mut client, 1), b"N");
    let startup = frontend::startup(&[("user", "ioxide"), ("database", "db")]);
    client.write_all(&startup).unwrap();
    assert_eq!(
        read_n(&mut client, backend::handshake_ok().len()),
        backend::handshake_ok()
    );
    client.write_all(&frontend::query("SELECT 42")).unwrap();
    let expected = backend::simple_query_result("n", "42");
    assert_eq!(read_n(&mut client, expected.len()), expected);
    client.write_all(&frontend::terminate()).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap(); // script over: server closes
    assert!(rest.is_empty());

    assert_eq!(server.accepted(), 1);
    let log = &server.connections()[0];
    assert_eq!(log.encryption_requests, 1);
    assert_eq!(log.startup.as_deref(), Some(&startup[..]));
    let parsed = frontend::parse_startup(log.startup.as_deref().unwrap()).unwrap();
    assert_eq!(parsed.param("database"), Some("db"));
    assert_eq!(
        log.received,
        vec![frontend::query("SELECT 42"), frontend::terminate()]
    );
    assert!(log.script_completed);
}

#[test]
fn close_mid_message_and_garbage() {
    let rfq = backend::ready_for_query(b'I');
    let server = FakeServer::start_with(move |n| match n {
        0 => vec![Step::Send(rfq[..3].to_vec()), Step::Close],
        _ => vec![Step::SendGarbage(64), Step::Reset],
    })
    .unwrap();
    let mut first = connect(&server);
    first
        .write_all(&frontend::startup(&[("user", "u")]))
        .unwrap();
    let mut got = Vec::new();
    first.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"Z\0\0");

    let mut second = connect(&server);
    second
        .write_all(&frontend::startup(&[("user", "u")]))
        .unwrap();
    let garbage = read_n(&mut second, 64);
    assert!(
        garbage.iter().any(|&b| b != garbage[0]),
        "garbage is not varied"
    );
    let mut tail = Vec::new();
    let reset = second.read_to_end(&mut tail).unwrap_err();
    assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(server.wait_for_connections(2, Duration::from_secs(5)));
    assert_eq!(server.startup_packets().len(), 2);
}

#[test]
fn stall_forever_holds_the_socket_and_drop_does_not_hang() {
    let server = FakeServer::start(vec![Step::Send(b"R".to_vec()), Step::StallForever]).unwrap();
    let mut client = connect(&server);
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    client.write_all(&frontend::startup(&[])).unwrap();
    assert_eq!(read_n(&mut client, 1), b"R");
    let mut more = [0u8; 1];
    let err = client.read(&mut more).unwrap_err();
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));

    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        started.elapsed()
    );
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        client.read(&mut more).unwrap(),
        0,
        "socket not closed by drop"
    );
}

#[test]
fn client_hanging_up_is_recorded() {
    let server = FakeServer::start(vec![Step::ReadMessage]).unwrap();
    let mut client = connect(&server);
    client
        .write_all(&frontend::startup(&[("user", "u")]))
        .unwrap();
    client.write_all(&frontend::query("SEL")[..4]).unwrap();
    drop(client);
    assert!(server.wait_for_connections(1, Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.connections()[0].client_closed {
        assert!(Instant::now() < deadline, "EOF not seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = &server.connections()[0];
    assert!(log.received.is_empty());
    assert!(!log.script_completed);
}
