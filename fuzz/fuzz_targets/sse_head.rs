//! The start of an HTTP connection to the push server, through protocol
//! detection (`server::detect`) on a real loopback socket, up to the hand-off:
//! the direct SSE path (a complete `GET /v1/events` head over HTTP/1.1), a
//! 400 for a bad `Host`, or hyper (HTTP/1 or, after the preface, HTTP/2)
//! with the bytes already read replayed. Input: a first byte giving the size
//! of the writes the client makes (0: one write), then the bytes it sends
//! before closing its side. Whatever is sent, hyper reads exactly those
//! bytes, byte for byte; only a `GET /v1/events` head is served directly or
//! refused; a connection that sent bytes and closed never times out.
#![no_main]

#[path = "../common/push.rs"]
mod push;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sidestream_push::server::detect::{detect, Detection, HyperProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, sent)) = data.split_first() else {
        return;
    };
    push::runtime().block_on(run(usize::from(chunk), sent));
});

/// One listener on loopback for every input.
async fn listener() -> &'static TcpListener {
    static LISTENER: OnceLock<Arc<TcpListener>> = OnceLock::new();
    if let Some(listener) = LISTENER.get() {
        return listener;
    }
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(error) => panic!("binding a loopback port: {error}"),
    };
    LISTENER.get_or_init(|| Arc::new(listener))
}

async fn run(chunk: usize, sent: &[u8]) {
    let listener = listener().await;
    let Ok(address) = listener.local_addr() else {
        panic!("the listener has no address");
    };
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let (Ok(mut client), Ok((server, _))) = (client, accepted) else {
        panic!("no loopback connection");
    };
    // Closed with a reset (zero linger).
    let _ = client.set_zero_linger();
    let writes = async {
        let size = if chunk == 0 { sent.len().max(1) } else { chunk };
        for part in sent.chunks(size) {
            if client.write_all(part).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = client.shutdown().await;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (detection, ()) = tokio::join!(detect(server, deadline, Duration::from_secs(1)), writes);
    let ours = sent.starts_with(b"GET /v1/events");
    // The server's side closes after the client's reset (below), so a long
    // run leaves no TIME_WAIT behind.
    let mut server_side: Option<Box<dyn std::any::Any>> = None;
    match detection {
        Detection::DirectSse(stream, _request) => {
            assert!(ours, "served directly: {:?}", String::from_utf8_lossy(sent));
            server_side = Some(Box::new(stream));
        }
        Detection::Hyper(mut rewind, protocol) => {
            assert_eq!(
                protocol == HyperProtocol::Http2,
                sent.starts_with(H2_PREFACE),
                "{protocol:?} for {:?}",
                String::from_utf8_lossy(sent)
            );
            let mut replayed = Vec::with_capacity(sent.len());
            match tokio::time::timeout(Duration::from_secs(10), rewind.read_to_end(&mut replayed))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => panic!("reading what hyper would read: {error}"),
                Err(_) => panic!("hyper's reads did not end after the client closed"),
            }
            assert!(
                replayed == sent,
                "hyper reads {} bytes of {}",
                replayed.len(),
                sent.len()
            );
            server_side = Some(Box::new(rewind));
        }
        Detection::BadRequest => {
            assert!(ours, "refused: {:?}", String::from_utf8_lossy(sent));
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
                .await;
            assert!(
                answer.starts_with(b"HTTP/1.1 400 "),
                "answer {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        Detection::TimedOut => panic!("timed out, yet the client closed"),
        Detection::Closed => assert!(sent.is_empty(), "closed after {} bytes", sent.len()),
    }
    drop(client);
    drop(server_side);
}
