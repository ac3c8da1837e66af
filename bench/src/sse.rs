//! SSE subscribers for the push benchmarks: raw TCP, one task per
//! connection, optional source address per connection (to spread many
//! connections over 127.0.0.x), chunked transfer decoding, and a line parser
//! that finds the publish timestamp the publisher put into each message.
//!
//! Message payload (one `data:` line, same bytes for every server):
//! `ts=<unix nanos at publish> seq=<n> step=<k> pad=xxxx…`

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::histogram::AtomicHistogram;
use crate::http1::{connect, find, parse_url};

/// Connection attempts per subscriber before it counts as failed.
pub const CONNECT_ATTEMPTS: u32 = 5;

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub request: Arc<Vec<u8>>,
}

impl Target {
    /// An SSE GET for `url` (`http://ip:port/path?query`).
    pub fn sse(url: &str) -> anyhow::Result<Target> {
        let (addr, path) = parse_url(url)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
        );
        Ok(Target {
            addr,
            request: Arc::new(request.into_bytes()),
        })
    }
}

/// Parses `127.0.0.2,127.0.0.3` or a range `127.0.0.2-127.0.0.9`.
pub fn parse_sources(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').filter(|s| !s.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a.parse().with_context(|| format!("bad address {a}"))?;
            let b: std::net::Ipv4Addr = b.parse().with_context(|| format!("bad address {b}"))?;
            for n in u32::from(a)..=u32::from(b) {
                out.push(IpAddr::V4(n.into()));
            }
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad address {part}"))?,
            );
        }
    }
    Ok(out)
}

/// Per measurement step: deliveries and publish-to-receive latency.
#[derive(Default)]
pub struct StepStats {
    pub delivered: AtomicU64,
    pub latency: AtomicHistogram,
}

/// Counters shared by every subscriber of a process.
pub struct Shared {
    /// Connections that got a `200` and headers.
    pub connected: AtomicU64,
    /// Subscribers that failed to connect (or got another status) on every attempt.
    pub failed: AtomicU64,
    /// Connection attempts that failed and were tried again.
    pub retries: AtomicU64,
    /// Connections that were open and then ended (by the server or an error).
    pub closed: AtomicU64,
    /// Messages received in total, every step.
    pub delivered: AtomicU64,
    /// Messages a subscriber never saw (sequence gaps), every step.
    pub missed: AtomicU64,
    /// Messages that arrived with a sequence number not above the last one.
    pub out_of_order: AtomicU64,
    pub bytes: AtomicU64,
    pub steps: Vec<StepStats>,
    /// First failure, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
    pub connecting: Semaphore,
    pub parse: bool,
    next_source: AtomicUsize,
}

impl Shared {
    pub fn new(steps: usize, parse: bool, max_connecting: usize) -> Arc<Shared> {
        Arc::new(Shared {
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            steps: (0..steps).map(|_| StepStats::default()).collect(),
            first_error: std::sync::Mutex::new(None),
            connecting: Semaphore::new(max_connecting.max(1)),
            parse,
            next_source: AtomicUsize::new(0),
        })
    }

    fn note_error(&self, e: &anyhow::Error) {
        if let Ok(mut slot) = self.first_error.lock() {
            if slot.is_none() {
                *slot = Some(format!("{e:#}"));
            }
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|s| s.clone())
    }
}

/// Runs one subscriber until its connection ends. Connection failures are
/// counted, not returned.
pub async fn subscriber(target: Target, sources: Arc<Vec<IpAddr>>, shared: Arc<Shared>) {
    let source = if sources.is_empty() {
        None
    } else {
        let i = shared.next_source.fetch_add(1, Ordering::Relaxed);
        Some(sources[i % sources.len()])
    };
    // Like an EventSource, a subscriber whose connection attempt fails tries
    // again after a pause (the same policy for every server).
    let mut attempt = 1;
    let (mut stream, rest, chunked) = loop {
        let permit = shared.connecting.acquire().await;
        let opened = open(&target, source).await;
        drop(permit);
        match opened {
            Ok(v) => break v,
            Err(e) if attempt < CONNECT_ATTEMPTS => {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                shared.note_error(&e);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.note_error(&e);
                return;
            }
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut reader = EventReader::new(chunked);
    reader.feed(&rest, &shared);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if shared.parse {
                    reader.feed(&buf[..n], &shared);
                }
            }
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

async fn open(
    target: &Target,
    source: Option<IpAddr>,
) -> anyhow::Result<(tokio::net::TcpStream, Vec<u8>, bool)> {
    let mut stream = connect(target.addr, source).await?;
    stream.write_all(&target.request).await?;
    let mut buf = Vec::with_capacity(2048);
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            bail!("response head too large");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "status {status}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let rest = buf[head_end + 4..].to_vec();
    Ok((stream, rest, chunked))
}

/// Chunked decoding plus SSE line splitting, fed with raw socket bytes.
struct EventReader {
    chunked: bool,
    state: Chunk,
    size_line: Vec<u8>,
    line: Vec<u8>,
    last_seq: Option<u64>,
}

enum Chunk {
    Size,
    Data(usize),
    DataEnd(u8),
}

impl EventReader {
    fn new(chunked: bool) -> EventReader {
        EventReader {
            chunked,
            state: Chunk::Size,
            size_line: Vec::new(),
            line: Vec::with_capacity(512),
            last_seq: None,
        }
    }

    fn feed(&mut self, mut input: &[u8], shared: &Shared) {
        if !self.chunked {
            self.body(input, shared);
            return;
        }
        while !input.is_empty() {
            match self.state {
                Chunk::Size => {
                    if let Some(pos) = input.iter().position(|&b| b == b'\n') {
                        self.size_line.extend_from_slice(&input[..pos]);
                        input = &input[pos + 1..];
                        let text = String::from_utf8_lossy(&self.size_line);
                        let hex = text.split(';').next().unwrap_or("").trim();
                        let size = usize::from_str_radix(hex, 16).unwrap_or(0);
                        self.size_line.clear();
                        self.state = if size == 0 {
                            Chunk::DataEnd(2)
                        } else {
                            Chunk::Data(size)
                        };
                    } else {
                        self.size_line.extend_from_slice(input);
                        input = &[];
                    }
                }
                Chunk::Data(left) => {
                    let n = left.min(input.len());
                    let (data, rest) = input.split_at(n);
                    self.body(data, shared);
                    input = rest;
                    self.state = if n == left {
                        Chunk::DataEnd(2)
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd(left) => {
                    // Skip the CRLF after a chunk's data.
                    let n = usize::from(left).min(input.len());
                    input = &input[n..];
                    let left = left - n as u8;
                    self.state = if left == 0 {
                        Chunk::Size
                    } else {
                        Chunk::DataEnd(left)
                    };
                }
            }
        }
    }

    fn body(&mut self, mut data: &[u8], shared: &Shared) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.handle_line(&data[..pos], shared);
            } else {
                self.line.extend_from_slice(&data[..pos]);
                let line = std::mem::take(&mut self.line);
                self.handle_line(&line, shared);
                self.line = line;
                self.line.clear();
            }
            data = &data[pos + 1..];
        }
        self.line.extend_from_slice(data);
    }

    fn handle_line(&mut self, line: &[u8], shared: &Shared) {
        let Some(payload) = line.strip_prefix(b"data:") else {
            return;
        };
        let Some(message) = parse_payload(payload) else {
            return;
        };
        let now = unix_nanos();
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(last) = self.last_seq {
            if message.seq > last + 1 {
                shared
                    .missed
                    .fetch_add(message.seq - last - 1, Ordering::Relaxed);
            } else if message.seq <= last {
                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.last_seq = Some(message.seq.max(self.last_seq.unwrap_or(0)));
        if let Some(step) = usize::try_from(message.step)
            .ok()
            .and_then(|s| shared.steps.get(s))
        {
            step.delivered.fetch_add(1, Ordering::Relaxed);
            step.latency
                .record_us(now.saturating_sub(message.ts_nanos) / 1000);
        }
    }
}

/// What the subscriber reads back from a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload {
    pub ts_nanos: u64,
    pub seq: u64,
    pub step: u64,
}

/// The message body the publisher sends: exactly `bytes` long (at least the
/// fields themselves).
pub fn make_payload(ts_nanos: u64, seq: u64, step: u64, bytes: usize) -> String {
    let mut s = format!("ts={ts_nanos} seq={seq} step={step} pad=");
    while s.len() < bytes {
        s.push('x');
    }
    s
}

pub fn parse_payload(data: &[u8]) -> Option<Payload> {
    let text = std::str::from_utf8(data).ok()?.trim();
    let mut ts = None;
    let mut seq = None;
    let mut step = None;
    for field in text.split(' ') {
        match field.split_once('=') {
            Some(("ts", v)) => ts = v.parse().ok(),
            Some(("seq", v)) => seq = v.parse().ok(),
            Some(("step", v)) => step = v.parse().ok(),
            _ => {}
        }
    }
    Some(Payload {
        ts_nanos: ts?,
        seq: seq?,
        step: step?,
    })
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip_and_size() {
        let p = make_payload(123, 4, 5, 128);
        assert_eq!(p.len(), 128);
        assert_eq!(
            parse_payload(format!(" {p}").as_bytes()),
            Some(Payload {
                ts_nanos: 123,
                seq: 4,
                step: 5
            })
        );
    }

    #[test]
    fn chunked_events_split_anywhere_are_counted_once() {
        let now = unix_nanos();
        let body = format!(
            "id: 1\ndata: {}\n\n: comment\n\nid: 2\ndata: {}\n\n",
            make_payload(now, 1, 0, 64),
            make_payload(now, 2, 0, 64)
        );
        // Two chunks, the boundary in the middle of the first payload.
        let cut = 20;
        let wire = format!(
            "{:x}\r\n{}\r\n{:x}\r\n{}\r\n",
            cut,
            &body[..cut],
            body.len() - cut,
            &body[cut..]
        );
        for split in [1usize, 3, 7, 64, wire.len()] {
            let shared = Shared::new(1, true, 1);
            let mut r = EventReader::new(true);
            for piece in wire.as_bytes().chunks(split) {
                r.feed(piece, &shared);
            }
            assert_eq!(shared.delivered.load(Ordering::Relaxed), 2, "split {split}");
            assert_eq!(shared.steps[0].delivered.load(Ordering::Relaxed), 2);
            assert_eq!(shared.missed.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn gaps_are_counted() {
        let shared = Shared::new(1, true, 1);
        let mut r = EventReader::new(false);
        for seq in [1u64, 2, 5] {
            r.feed(
                format!("data: {}\n\n", make_payload(1, seq, 0, 10)).as_bytes(),
                &shared,
            );
        }
        assert_eq!(shared.missed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn sources_parse() {
        let s = parse_sources("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(s.len(), 4);
    }
}
