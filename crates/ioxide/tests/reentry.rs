//! Re-entrancy into the ring: code the ring calls out to (a waker that polls its future
//! inline, a destructor) may come back to the ring. Nothing may then hand back a buffer the
//! kernel may still own, lose a completion, or leave an op armed.
#![allow(clippy::unwrap_used)]

use ioxide::net::{Stream, TcpListener};
use ioxide::time::{sleep, timeout};
use ioxide::{Reactor, RecvBuf};
use std::cell::RefCell;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

thread_local! {
    /// The future the inline waker polls.
    static INLINE: RefCell<Option<Pin<Box<dyn Future<Output = ()>>>>> = RefCell::new(None);
    /// What that future produced.
    static RESULT: RefCell<Option<std::io::Result<Option<RecvBuf>>>> = const { RefCell::new(None) };
}

/// A waker that polls the thread's `INLINE` future right inside `wake`, on whatever stack
/// called it — the way some executors (and hand-written combinators) behave.
struct InlinePoller;

impl Wake for InlinePoller {
    fn wake(self: Arc<Self>) {
        poll_inline();
    }
}

fn poll_inline() {
    INLINE.with(|slot| {
        // A wake from inside the future's own poll is not polled recursively.
        let Ok(mut slot) = slot.try_borrow_mut() else {
            return;
        };
        let done = match slot.as_mut() {
            Some(f) => {
                let waker = Waker::from(Arc::new(InlinePoller));
                f.as_mut().poll(&mut Context::from_waker(&waker)).is_ready()
            }
            None => false,
        };
        if done {
            *slot = None;
        }
    });
}

fn pattern(offset: usize, bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((offset + i) % 251) as u8)
}

/// A peer that writes `total` pattern bytes (byte i is i % 251) and then keeps the socket
/// open until the reactor side closes.
fn pattern_peer(total: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let _ = s.write_all(&data);
        let mut sink = [0u8; 16];
        let _ = std::io::Read::read(&mut s, &mut sink);
    });
    (addr, h)
}

#[test]
fn a_starved_recv_stream_whose_waker_polls_inline_gets_its_data_when_a_buffer_comes_back() {
    // Hold every provided buffer, park the next `next()` on the buffer ring with a waker that
    // polls inline, then give one buffer back. Waking inside the ring's borrow would run that
    // poll while the ring is borrowed: it used to take "no ring" for "no reactor" and end the
    // stream with an error. Now the wake runs after the borrow and the data arrives intact.
    let (addr, peer) = pattern_peer(4 << 20);
    ioxide::block_on(async move {
        let s = Stream::connect(addr).await.unwrap();
        let mut rx = s.recv_stream();
        let mut held = Vec::new();
        let mut offset = 0;
        while held.len() < 256 {
            let c = rx.next().await.unwrap().expect("data before EOF");
            assert!(pattern(offset, &c), "chunk at {offset} corrupted");
            offset += c.len();
            held.push(c);
        }
        INLINE.with(|slot| {
            *slot.borrow_mut() = Some(Box::pin(async move {
                let r = rx.next().await;
                RESULT.with(|out| *out.borrow_mut() = Some(r));
                drop(rx);
            }));
        });
        poll_inline();
        // The kernel ends the receive for lack of buffers; the stream parks on the buffer
        // ring (its waker polled inline from the completion, outside the borrow).
        sleep(Duration::from_millis(100)).await;
        assert!(
            RESULT.with(|out| out.borrow().is_none()),
            "next() finished while every buffer was held"
        );
        // Giving a buffer back wakes the parked stream.
        drop(held.remove(0));
        let waited = timeout(Duration::from_secs(5), async {
            while RESULT.with(|out| out.borrow().is_none()) {
                sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the stream never got its next chunk");
        let got = RESULT.with(|out| out.borrow_mut().take()).unwrap();
        let chunk = got
            .expect("next() failed after a buffer came back")
            .expect("EOF instead of data");
        assert!(!chunk.is_empty());
        assert!(
            pattern(offset, &chunk),
            "the chunk after the wait is corrupted"
        );
        drop(chunk);
        drop(held);
        drop(s);
    });
    peer.join().unwrap();
}

/// A connected pair: ours on the reactor, the peer as a std socket.
async fn pair() -> (Stream, std::net::TcpStream) {
    let mut l = TcpListener::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let addr = l.local_addr().unwrap();
    let peer = std::net::TcpStream::connect(addr).unwrap();
    let ours = l.accept().await.unwrap();
    (ours, peer)
}

#[test]
fn a_completed_recv_polled_while_the_ring_is_borrowed_stays_pending_then_delivers_its_bytes() {
    // The CQE has arrived, but the ring is borrowed further up the stack: the recv used to
    // report ENXIO and hand its buffer back without the bytes. It must wait and deliver.
    ioxide::block_on(async {
        let (s, mut peer) = pair().await;
        let mut recv = s.recv(Vec::with_capacity(64));
        peer.write_all(b"hello").unwrap();
        // Let the loop reap the completion.
        sleep(Duration::from_millis(50)).await;
        let r = Reactor::current();
        let polled = r.with_ring_borrowed(|| {
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(&mut recv).poll(&mut cx) {
                Poll::Ready((res, buf)) => Some((res.map_err(|e| e.raw_os_error()), buf)),
                Poll::Pending => None,
            }
        });
        assert!(
            polled.is_none(),
            "the recv completed inside the borrow: {polled:?}"
        );
        let (res, buf) = timeout(Duration::from_secs(2), recv)
            .await
            .expect("the deferred wake never came");
        assert_eq!(res.unwrap(), 5);
        assert_eq!(buf, b"hello");
    });
}

#[test]
fn a_recv_dropped_while_the_ring_is_borrowed_is_cancelled_not_left_armed() {
    // Dropped inside the borrow, the recv could not reach its record: it used to leak its
    // buffer and leave the op armed in the kernel, where it swallowed the next bytes.
    ioxide::block_on(async {
        let (s, mut peer) = pair().await;
        let first = s.recv(Vec::with_capacity(64));
        // Let the first recv reach the kernel and park on the socket.
        sleep(Duration::from_millis(20)).await;
        let r = Reactor::current();
        r.with_ring_borrowed(|| drop(first));
        // The bytes arrive with no receive of ours armed; a leaked one would take them.
        sleep(Duration::from_millis(20)).await;
        peer.write_all(b"after").unwrap();
        sleep(Duration::from_millis(20)).await;
        let second = s.recv(Vec::with_capacity(64));
        let (res, buf) = timeout(Duration::from_secs(2), second)
            .await
            .expect("the dropped recv took the bytes");
        assert_eq!(res.unwrap(), 5);
        assert_eq!(buf, b"after");
    });
}
