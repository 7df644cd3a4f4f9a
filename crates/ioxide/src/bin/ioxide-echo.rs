//! A minimal echo server on the reactors: `ioxide-echo [PORT] [REACTORS]`.
//!
//! Prints `listening on ADDR` once serving; exits 0 on SIGINT/SIGTERM after a graceful
//! shutdown. Used by the runtime's signal-handling test and handy for poking at the reactor.

use ioxide::net::Stream;
use ioxide::Server;
use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let reactors: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(1);
    let server = Server::new()
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .reactors(reactors)
        .shutdown_grace(std::time::Duration::from_secs(2));
    let result = server.run_with(
        |addr| {
            println!("listening on {addr}");
            let _ = std::io::stdout().flush();
        },
        echo,
    );
    if let Err(e) = result {
        eprintln!("ioxide-echo: {e}");
        std::process::exit(1);
    }
}

async fn echo(s: Stream) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (r, b) = s.recv(buf).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (r, b) = s.send_all(buf).await;
        buf = b;
        if r.is_err() {
            return;
        }
    }
}
