//! Keeps docs/api.md, the client protocol reference, true.
//!
//! The page is read top to bottom. Fenced blocks after a marker comment are
//! acted on:
//!
//! - `<!-- api-example: file NAME -->`: the block is written to NAME in the
//!   server's folder; `<!-- api-example: server -->`: the `sh` block that
//!   starts the push server (the real binary; the test adds only the listen
//!   addresses, on free ports in place of 18080 and 18090).
//! - `<!-- api-example: run -->`: the `sh` block runs (stderr with stdout) and
//!   what it prints must be exactly the ```text block right after it (no such
//!   block: nothing).
//! - `<!-- api-example: stream NAME -->` starts a long-running `sh` block (an
//!   SSE `curl -N`) and waits for its first bytes; the
//!   `<!-- api-example: stream-output NAME -->` block is what it must have
//!   printed by then (polled; then the command is stopped).
//! - `<!-- api-example: browser NAME -->`: the `js` block runs in headless
//!   Chromium on a page of the push server, with its own `console`; the test
//!   waits for its first line, and `<!-- api-example: browser-output NAME -->`
//!   is what it must have logged.
//! - `<!-- api-example: sigterm -->`: the block is not run; the server gets
//!   SIGTERM (and drains) instead.
//! - `<!-- api-params: METHOD PATH: names -->`: every query parameter and
//!   header the endpoint's handler reads is listed, and nothing else.
//! - `<!-- api-errors -->`: the table lists every `PushError` with its code,
//!   HTTP status and gRPC status.
//! - `<!-- api-refusal: policy -->` / `response`: the filter's 429 for that
//!   stream-limit policy, from `sidestream_core::limit`.
//! - The condensed proto holds exactly the rpcs and fields of
//!   proto/sidestream/push/v1/push.proto.
//!
//! Commands get the real addresses and epoch; outputs are compared with the
//! epoch written `k3x9a2`, `\r` dropped, trailing spaces and heartbeat
//! comments (`:` lines) ignored, and an expected line ending in `…` matching
//! any line that starts with what precedes it (a `date:` header).
//!
//! `SIDESTREAM_BLESS=1 cargo test -p sidestream-tests --test api_docs`
//! rewrites the expected outputs with what the commands print instead.
//! Needs `sidestream-push` and its example `grpc-client` built
//! (`make build`), `curl`, and Chromium.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sidestream_core::config::{parse_spec_value, Item, Kind};
use sidestream_core::limit::{Admission, StreamLimitState};
use sidestream_push::broker::BrokerError;
use sidestream_push::event_id::EventIdError;
use sidestream_push::PushError;
use sidestream_tests::browser::Chromium;
use sidestream_tests::{
    binary, free_port, profile_dir, run_dir, wait_http_ok, workspace_root, Proc,
};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The addresses and epoch the page is written with.
const DOC_HTTP: &str = "127.0.0.1:18080";
const DOC_GRPC: &str = "127.0.0.1:18090";
const DOC_EPOCH: &str = "k3x9a2";
/// How the page runs the gRPC example.
const DOC_GRPC_CLIENT: &str = "cargo run -q -p sidestream-push --example grpc-client --";
const WAIT: Duration = Duration::from_secs(20);

fn doc_path() -> PathBuf {
    workspace_root().join("docs/api.md")
}

fn blessing() -> bool {
    std::env::var("SIDESTREAM_BLESS").is_ok_and(|v| v == "1")
}

// ---- the page ------------------------------------------------------------

/// A fenced block with the marker comment right before it, if any.
#[derive(Debug, Clone)]
struct Block {
    marker: Option<String>,
    lang: String,
    text: String,
    /// Line numbers (0-based) of the opening and closing fences.
    open: usize,
    close: usize,
    /// Only blank lines between the previous block's closing fence and this one.
    follows_previous: bool,
}

fn blocks(page: &str) -> Vec<Block> {
    let lines: Vec<&str> = page.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut last_close: Option<usize> = None;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let open = i;
        let mut close = i + 1;
        while close < lines.len() && lines[close] != "```" {
            close += 1;
        }
        assert!(
            close < lines.len(),
            "docs/api.md:{}: unclosed block",
            open + 1
        );
        let marker = lines[..open]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!--"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(|m| m.trim().to_owned());
        let follows_previous =
            last_close.is_some_and(|c| lines[c + 1..open].iter().all(|l| l.trim().is_empty()));
        let mut text = lines[open + 1..close].join("\n");
        if close > open + 1 {
            text.push('\n');
        }
        out.push(Block {
            marker,
            lang: lang.trim().to_owned(),
            text,
            open,
            close,
            follows_previous,
        });
        last_close = Some(close);
        i = close + 1;
    }
    out
}

// ---- the server ----------------------------------------------------------

struct Server {
    proc: Proc,
    http: String,
    grpc: String,
    dir: PathBuf,
    epoch: String,
}

impl Server {
    /// What a command of the page runs here.
    fn command(&self, text: &str) -> String {
        let client = profile_dir().unwrap().join("examples/grpc-client");
        text.replace(
            DOC_GRPC_CLIENT,
            &format!("{} --addr http://{}", client.display(), self.grpc),
        )
        .replace(DOC_HTTP, &self.http)
        .replace(DOC_GRPC, &self.grpc)
        .replace(DOC_EPOCH, &self.epoch)
    }

    /// What an output of the page says for `actual`.
    fn normalise(&self, actual: &str) -> String {
        let text = actual
            .replace('\r', "")
            .replace(&self.epoch, DOC_EPOCH)
            .replace(&self.http, DOC_HTTP)
            .replace(&self.grpc, DOC_GRPC);
        let lines: Vec<&str> = text.lines().collect();
        let mut kept = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            // An SSE heartbeat: a `:` comment and the blank line ending it.
            if lines[i] == ":" && lines.get(i + 1) == Some(&"") {
                i += 2;
                continue;
            }
            kept.push(lines[i].trim_end());
            i += 1;
        }
        kept.join("\n").trim_end().to_owned()
    }
}

/// Whether `actual` (normalised) is what the page says; `…` ends a prefix line.
fn matches(expected: &str, actual: &str) -> bool {
    let expected: Vec<&str> = expected.trim_end().lines().map(str::trim_end).collect();
    let actual: Vec<&str> = actual.lines().collect();
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(&actual)
            .all(|(e, a)| match e.strip_suffix('…') {
                Some(prefix) => a.starts_with(prefix),
                None => e == a,
            })
}

/// Keeps the page's wildcard lines where they still match.
fn blessed(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let lines: Vec<&str> = if e.len() == a.len() {
        e.iter()
            .zip(&a)
            .map(|(e, a)| match e.strip_suffix('…') {
                Some(prefix) if a.starts_with(prefix) => *e,
                _ => *a,
            })
            .collect()
    } else {
        a
    };
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

async fn start_server(blocks: &[Block], dir: &Path) -> Server {
    for block in blocks {
        if let Some(name) = block
            .marker
            .as_deref()
            .and_then(|m| m.strip_prefix("api-example: file "))
        {
            std::fs::write(dir.join(name.trim()), &block.text).unwrap();
        }
    }
    let servers: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.marker.as_deref() == Some("api-example: server"))
        .collect();
    assert_eq!(servers.len(), 1, "one server block");
    let line = servers[0].text.replace("\\\n", " ");
    let mut words = line.split_whitespace().peekable();
    let mut command = Command::new(binary("sidestream-push").unwrap());
    while let Some((name, value)) = words.peek().and_then(|w| w.split_once('=')) {
        command.env(name, value);
        words.next();
    }
    assert_eq!(words.next(), Some("sidestream-push"), "{line}");
    let args: Vec<&str> = words.collect();
    assert!(
        !args.iter().any(|a| a.contains("listen")),
        "the examples use the default addresses: {line}"
    );
    let http = format!("127.0.0.1:{}", free_port().unwrap());
    let grpc = format!("127.0.0.1:{}", free_port().unwrap());
    command
        .current_dir(dir)
        .args(&args)
        .args(["--listen", &http, "--grpc-listen", &grpc])
        .env("RUST_LOG", "info");
    let proc = Proc::spawn("push", dir, command).unwrap();
    if let Err(error) = wait_http_ok(&format!("http://{http}/healthz/ready"), WAIT).await {
        panic!("push server not ready: {error:#}\n{}", proc.log());
    }
    // The in-memory broker's epoch: the position of a topic with no messages.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws"))
        .await
        .unwrap();
    socket
        .send(WsMessage::text(
            json!({"type": "subscribe", "topic": "api-docs-epoch"}).to_string(),
        ))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let frame: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    let position = frame["position"].as_str().expect("a subscribed frame");
    let epoch = position
        .strip_suffix("-0")
        .expect("position <epoch>-0")
        .to_owned();
    Server {
        proc,
        http,
        grpc,
        dir: dir.to_owned(),
        epoch,
    }
}

// ---- commands --------------------------------------------------------------

async fn run(server: &Server, text: &str) -> String {
    let script = format!("exec 2>&1\n{}", server.command(text));
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&server.dir)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("still running after 60 s:\n{text}"))
    .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command left running; its output collected as it comes.
struct Running {
    child: tokio::process::Child,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Running {
    fn start(server: &Server, text: &str) -> Running {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 2>&1\n{}", server.command(text)))
            .current_dir(&server.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Running { child, output }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.child.start_kill();
    }
}

/// Polls `current` until it matches `expected`; in bless mode until it has
/// been quiet for a second. Returns the last normalised value.
async fn settle<F, Fut>(server: &Server, what: &str, expected: &str, mut current: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    let mut quiet_since = Instant::now();
    loop {
        let now = server.normalise(&current().await);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        if blessing() {
            if !last.is_empty() && quiet_since.elapsed() > Duration::from_secs(1) {
                return last;
            }
        } else if matches(expected, &last) {
            return last;
        }
        if Instant::now() > deadline {
            if blessing() {
                return last;
            }
            panic!("{what}: the page says\n{expected}\n--- but it printed\n{last}\n---");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the walk --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_of_the_api_reference_prints_what_the_page_says() {
    let page = std::fs::read_to_string(doc_path()).unwrap();
    let blocks = blocks(&page);
    let dir = run_dir("api-docs").unwrap();
    let server = start_server(&blocks, &dir).await;
    let client = profile_dir().unwrap().join("examples/grpc-client");
    assert!(
        client.is_file(),
        "{} is missing: build it (`make build`, or cargo build -p sidestream-push --examples)",
        client.display()
    );

    let mut replacements: Vec<(usize, usize, String)> = Vec::new();
    let mut streams: BTreeMap<String, Running> = BTreeMap::new();
    let mut browser: Option<Chromium> = None;
    let mut ran = 0;
    for (index, block) in blocks.iter().enumerate() {
        let Some(marker) = block.marker.as_deref() else {
            continue;
        };
        let Some(action) = marker.strip_prefix("api-example: ") else {
            continue;
        };
        let at = format!("docs/api.md:{}", block.open + 1);
        let (verb, name) = action.split_once(' ').unwrap_or((action, ""));
        match verb {
            "file" | "server" => {}
            "sigterm" => server.proc.signal(15).unwrap(),
            "run" => {
                assert_eq!(block.lang, "sh", "{at}");
                let output = blocks
                    .get(index + 1)
                    .filter(|b| b.follows_previous && b.lang == "text" && b.marker.is_none());
                let expected = output.map_or("", |b| b.text.as_str());
                let actual = server.normalise(&run(&server, &block.text).await);
                if blessing() {
                    match output {
                        Some(b) => replacements.push((b.open, b.close, blessed(&b.text, &actual))),
                        None => {
                            assert!(actual.is_empty(), "{at}: add an output block for\n{actual}")
                        }
                    }
                } else {
                    assert!(
                        matches(expected, &actual),
                        "{at}: the page says\n{expected}\n--- but it printed\n{actual}\n---"
                    );
                }
                ran += 1;
            }
            "stream" => {
                assert_eq!(block.lang, "sh", "{at}");
                let running = Running::start(&server, &block.text);
                // Connected: its first line is out (an SSE stream's `retry`).
                settle(&server, &at, "…", || {
                    let text = running.text();
                    async move { text.lines().next().unwrap_or("").to_owned() }
                })
                .await;
                streams.insert(name.to_owned(), running);
            }
            "stream-output" => {
                let running = streams
                    .remove(name)
                    .unwrap_or_else(|| panic!("{at}: no stream {name} before"));
                let last = settle(&server, &at, &block.text, || {
                    let text = running.text();
                    async move { text }
                })
                .await;
                running.stop();
                if blessing() {
                    replacements.push((block.open, block.close, blessed(&block.text, &last)));
                }
                ran += 1;
            }
            "browser" => {
                assert_eq!(block.lang, "js", "{at}");
                let page = match &browser {
                    Some(page) => page,
                    None => browser.insert(open_page(&server, &dir).await),
                };
                let code = server.command(&block.text);
                let script = format!(
                    "(() => {{ const lines = (window.apiDocs ??= {{}})[{name:?}] = []; \
                     const console = {{ log: (...args) => lines.push(args.join(' ')) }};\n{code}\n}})(); true"
                );
                page.evaluate(&script)
                    .await
                    .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                let lines = format!("window.apiDocs[{name:?}].join('\\n')");
                settle(&server, &at, "…", || async {
                    let text = page.evaluate(&lines).await.unwrap();
                    text.as_str()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
                .await;
            }
            "browser-output" => {
                let page = browser
                    .as_ref()
                    .unwrap_or_else(|| panic!("{at}: no browser example before"));
                let lines = format!("window.apiDocs[{name:?}].join('\\n')");
                let last = settle(&server, &at, &block.text, || async {
                    page.evaluate(&lines)
                        .await
                        .unwrap()
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .await;
                if blessing() {
                    replacements.push((block.open, block.close, blessed(&block.text, &last)));
                }
                ran += 1;
            }
            other => panic!("{at}: unknown api-example '{other}'"),
        }
    }
    assert!(
        streams.is_empty(),
        "streams without an output: {:?}",
        streams.keys()
    );
    assert!(ran >= 10, "only {ran} examples checked");
    if blessing() {
        let mut lines: Vec<String> = page.lines().map(str::to_owned).collect();
        for (open, close, text) in replacements.into_iter().rev() {
            lines.splice(open + 1..close, text.lines().map(str::to_owned));
        }
        std::fs::write(doc_path(), lines.join("\n") + "\n").unwrap();
    }
}

/// Chromium on a page of the push server's origin, loaded.
async fn open_page(server: &Server, dir: &Path) -> Chromium {
    let origin = format!("http://{}", server.http);
    let browser = Chromium::open(&format!("{origin}/healthz/live"), dir)
        .await
        .expect("Chromium opens the page");
    let deadline = Instant::now() + WAIT;
    loop {
        let location = browser
            .evaluate("document.readyState === 'complete' ? location.origin : ''")
            .await
            .unwrap();
        if location == origin.as_str() {
            return browser;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not load: {location}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- parameters -------------------------------------------------------------

/// The handler sources of an endpoint (the shared helpers of http.rs included).
fn handler_sources(endpoint: &str) -> Vec<PathBuf> {
    let src = workspace_root().join("push-server/src");
    let handler = match endpoint {
        "GET /v1/events" => "http/sse.rs",
        "GET /v1/ws" => "http/ws.rs",
        "POST /v1/topics/{topic}/messages" => "http/publish.rs",
        other => panic!("docs/api.md documents parameters of an unknown endpoint '{other}'"),
    };
    vec![src.join("http.rs"), src.join(handler)]
}

/// The query parameters and headers a source reads (spaces and line breaks
/// in the calls ignored).
fn names_read(source: &str) -> BTreeSet<String> {
    let source: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    let mut names = BTreeSet::new();
    for pattern in [
        "query.first(\"",
        "query.all(\"",
        "header(headers,\"",
        "_PARAM:&str=\"",
    ] {
        for (i, _) in source.match_indices(pattern) {
            let rest = &source[i + pattern.len()..];
            if let Some(end) = rest.find('"') {
                names.insert(rest[..end].to_owned());
            }
        }
    }
    names
}

#[test]
fn every_parameter_an_endpoint_reads_is_documented_and_no_other() {
    let page = std::fs::read_to_string(doc_path()).unwrap();
    let lines: Vec<&str> = page.lines().collect();
    let mut endpoints = 0;
    for (at, line) in lines.iter().enumerate() {
        let Some(spec) = line
            .trim()
            .strip_prefix("<!-- api-params: ")
            .and_then(|l| l.strip_suffix("-->"))
        else {
            continue;
        };
        let (endpoint, names) = spec.rsplit_once(": ").unwrap();
        let documented: BTreeSet<String> = names.split_whitespace().map(str::to_owned).collect();
        let read: BTreeSet<String> = handler_sources(endpoint.trim())
            .iter()
            .flat_map(|path| names_read(&std::fs::read_to_string(path).unwrap()))
            .collect();
        assert_eq!(
            documented, read,
            "{endpoint}: the parameters docs/api.md lists vs what the handler reads"
        );
        // The table right above the comment (`| where | name | what |`) lists
        // the same names.
        let table: BTreeSet<String> = lines[..at]
            .iter()
            .rev()
            .skip_while(|l| l.trim().is_empty())
            .take_while(|l| l.starts_with('|'))
            .filter_map(|row| {
                let name = row.split('|').nth(2)?.trim();
                let name = name.strip_prefix('`')?;
                let end = name.find(['`', ':'])?;
                Some(name[..end].to_owned())
            })
            .collect();
        assert_eq!(
            table, documented,
            "{endpoint}: the parameter table above the api-params comment vs its list"
        );
        endpoints += 1;
    }
    assert_eq!(
        endpoints, 3,
        "publish, SSE and WebSocket list their parameters"
    );
}

// ---- errors -----------------------------------------------------------------

/// One of every error (a new variant fails to compile in `kind` below until
/// it is added here, and then the page must document it).
fn every_error() -> Vec<PushError> {
    let errors = vec![
        PushError::InvalidTopic("a b".into()),
        PushError::UnknownTopic("t".into()),
        PushError::BadRequest("x".into()),
        PushError::Unauthorized("x".into()),
        PushError::Forbidden("x".into()),
        PushError::TooLarge {
            topic: "t".into(),
            size: 2,
            limit: 1,
        },
        PushError::UnsupportedMediaType("x".into()),
        PushError::EventId(EventIdError::Malformed("x".into())),
        PushError::Draining { retry_ms: 1500 },
        PushError::Broker(BrokerError::TooManyTopics(1)),
        PushError::Broker(BrokerError::Protocol("x".into())),
        PushError::SlowConsumer,
        PushError::RequestTimeout,
        PushError::NoRoute,
        PushError::MethodNotAllowed,
        PushError::NotWebSocket {
            status: axum::http::StatusCode::BAD_REQUEST,
            message: "x".into(),
        },
    ];
    for error in &errors {
        kind(error);
    }
    errors
}

/// Exhaustive on purpose: no wildcard arm.
fn kind(error: &PushError) -> &'static str {
    match error {
        PushError::InvalidTopic(_) => "invalid topic",
        PushError::UnknownTopic(_) => "unknown topic",
        PushError::BadRequest(_) => "bad request",
        PushError::Unauthorized(_) => "unauthorized",
        PushError::Forbidden(_) => "forbidden",
        PushError::TooLarge { .. } => "too large",
        PushError::UnsupportedMediaType(_) => "unsupported media type",
        PushError::EventId(_) => "event id",
        PushError::Draining { .. } => "draining",
        PushError::Broker(BrokerError::TooManyTopics(_)) => "too many topics",
        PushError::Broker(BrokerError::Protocol(_) | BrokerError::Redis(_)) => "broker",
        PushError::SlowConsumer => "slow consumer",
        PushError::RequestTimeout => "request timeout",
        PushError::NoRoute => "no route",
        PushError::MethodNotAllowed => "method not allowed",
        PushError::NotWebSocket { .. } => "not websocket",
    }
}

fn grpc_name(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn the_error_table_lists_every_error_with_its_statuses() {
    let page = std::fs::read_to_string(doc_path()).unwrap();
    let table = page
        .split("<!-- api-errors -->")
        .nth(1)
        .expect("an api-errors table");
    let mut rows: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in table.lines().skip_while(|l| l.trim().is_empty()).skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let code = cells[1].trim_matches('`').to_owned();
        let grpc = cells[3].trim_matches('`').to_owned();
        assert!(
            rows.insert(code.clone(), (cells[2].to_owned(), grpc))
                .is_none(),
            "{code} twice"
        );
    }
    let mut codes = BTreeSet::new();
    for error in every_error() {
        let code = error.code();
        codes.insert(code.to_owned());
        let (http, grpc) = rows.get(code).unwrap_or_else(|| {
            panic!(
                "docs/api.md's error table has no row for '{code}' ({})",
                kind(&error)
            )
        });
        let status = error.status().as_u16().to_string();
        assert!(
            *http == status || http == "—",
            "{code}: the page says HTTP {http}, the code answers {status}"
        );
        let mapped = grpc_name(tonic::Status::from(error).code());
        assert!(
            *grpc == mapped || grpc == "—",
            "{code}: the page says gRPC {grpc}, the code maps it to {mapped}"
        );
    }
    let documented: BTreeSet<String> = rows.keys().cloned().collect();
    assert_eq!(documented, codes, "the table's codes vs PushError's codes");
}

// ---- the filter's refusal -----------------------------------------------------

#[test]
fn the_documented_429_is_what_the_filter_answers_for_that_policy() {
    let page = std::fs::read_to_string(doc_path()).unwrap();
    let blocks = blocks(&page);
    let block = |marker: &str| {
        blocks
            .iter()
            .find(|b| b.marker.as_deref() == Some(marker))
            .unwrap_or_else(|| panic!("no <!-- {marker} --> block"))
            .text
            .clone()
    };
    let response = block("api-refusal: response");
    let (head, body) = response.split_once("\n\n").expect("head and body");
    let body: Value = serde_json::from_str(body.trim()).expect("a JSON body");
    let name = body["policy"].as_str().expect("the policy's name");
    let spec: Value = serde_json::from_str(&block("api-refusal: policy")).unwrap();
    let Ok(Item::StreamLimit(policy)) = parse_spec_value(Kind::StreamLimit, name, spec) else {
        panic!("the documented policy is not a valid StreamLimitPolicy");
    };
    // Opened at once: the bucket's burst is admitted, the next refused.
    let mut state = StreamLimitState::new(&policy, 0);
    for _ in 0..policy.burst {
        assert!(matches!(
            state.admit(&policy, 0),
            Admission::Admitted { .. }
        ));
    }
    let Admission::Refused(refusal) = state.admit(&policy, 0) else {
        panic!("the stream after the burst is refused");
    };
    let mut expected = vec!["HTTP/1.1 429 Too Many Requests".to_owned()];
    for (header, value) in refusal.headers(&policy) {
        expected.push(format!("{header}: {value}"));
    }
    expected.push("content-type: application/json".to_owned());
    assert_eq!(head.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        body,
        json!({ "error": "stream limit reached", "policy": name, "retryAfterSeconds": refusal.retry_after_secs })
    );
    // The body is the filter's (filter/src/request.rs, refusal_body).
    let filter = std::fs::read_to_string(workspace_root().join("filter/src/request.rs")).unwrap();
    for needle in [
        "\"error\": \"stream limit reached\"",
        "\"policy\": policy.name",
        "\"retryAfterSeconds\": retry_after_secs",
        "\"stream limit reached; retry later\"",
        "b\"{\\\"error\\\":\\\"sidestream: stream admission unavailable\\\"}\\n\"",
    ] {
        assert!(
            filter.contains(needle),
            "filter/src/request.rs no longer holds {needle}"
        );
    }
    assert!(
        page.contains("`stream limit reached; retry later`")
            && page.contains("`{\"error\":\"sidestream: stream admission unavailable\"}`"),
        "the gRPC refusal and the fail-closed answer are documented"
    );
}

// ---- the proto ----------------------------------------------------------------

/// `rpc` lines, message names and `Message: type field = n` of a proto text.
fn proto_shape(text: &str) -> BTreeSet<String> {
    let mut shape = BTreeSet::new();
    let mut message: Vec<String> = Vec::new();
    let text = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let tokens: Vec<String> = text
        .replace('{', " { ")
        .replace('}', " } ")
        .replace(';', " ; ")
        .replace('(', " ( ")
        .replace(')', " ) ")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut i = 0;
    let mut statement: Vec<String> = Vec::new();
    while i < tokens.len() {
        let token = tokens[i].as_str();
        match token {
            "{" => {
                if statement.first().map(String::as_str) == Some("message") {
                    shape.insert(format!("message {}", statement[1]));
                    message.push(statement[1].clone());
                } else {
                    message.push(String::new());
                }
                statement.clear();
            }
            "}" => {
                message.pop();
                statement.clear();
            }
            ";" => {
                let s = statement.join(" ");
                if s.starts_with("rpc ") {
                    shape.insert(s);
                } else if let Some(owner) = message.iter().rev().find(|m| !m.is_empty()) {
                    if s.contains(" = ") {
                        shape.insert(format!("{owner}: {s}"));
                    }
                }
                statement.clear();
            }
            _ => statement.push(token.to_owned()),
        }
        i += 1;
    }
    shape
}

#[test]
fn the_condensed_proto_is_the_push_proto() {
    let page = std::fs::read_to_string(doc_path()).unwrap();
    let condensed = blocks(&page)
        .into_iter()
        .find(|b| b.lang == "proto")
        .expect("a proto block");
    let proto =
        std::fs::read_to_string(workspace_root().join("proto/sidestream/push/v1/push.proto"))
            .unwrap();
    let real = proto_shape(&proto);
    assert!(
        real.iter().any(|s| s.starts_with("rpc Subscribe")),
        "{real:?}"
    );
    assert_eq!(proto_shape(&condensed.text), real);
}

// ---- the protocol's vocabulary ---------------------------------------------------

/// The string literals in `source` (whitespace stripped) that follow `prefix`.
fn literals_after(source: &str, prefix: &str) -> BTreeSet<String> {
    let source: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    source
        .match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &source[i + prefix.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

fn push_source(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join("push-server/src").join(path)).unwrap()
}

#[test]
fn every_event_frame_close_code_and_metadata_the_server_sends_is_documented() {
    let page = std::fs::read_to_string(doc_path()).unwrap();
    let mut missing = Vec::new();
    let mut want = |what: &str, text: String| {
        if !page.contains(&text) {
            missing.push(format!("{what} {text}"));
        }
    };
    // SSE control events.
    let events = literals_after(&push_source("http/sse.rs"), "\"sidestream.");
    let events: Vec<&String> = events.iter().filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 3, "{events:?}");
    for event in events {
        want("SSE event", format!("`sidestream.{event}`"));
    }
    // WebSocket frames, both ways.
    let mut types = literals_after(&push_source("http/ws.rs"), "\"type\":\"");
    types.extend(literals_after(&push_source("message.rs"), "\"type\":\""));
    assert!(
        types.contains("message") && types.contains("drain"),
        "{types:?}"
    );
    let ws = push_source("http/ws.rs");
    let client = ws
        .split("enum ClientFrame {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("the ClientFrame enum");
    for line in client.lines() {
        let line = line.trim_start();
        let name: String = line
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if line.len() == line.trim_start().len()
            && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && line[name.len()..].trim_start().starts_with(['{', ','])
        {
            let mut camel = name.clone();
            camel[..1].make_ascii_lowercase();
            types.insert(camel);
        }
    }
    assert!(
        types.contains("subscribe") && types.contains("unsubscribe"),
        "{types:?}"
    );
    for frame in types {
        want("WebSocket frame", format!("{{\"type\":\"{frame}\""));
    }
    // Close codes.
    let source: String = ws.chars().filter(|c| !c.is_whitespace()).collect();
    for (i, _) in source.match_indices(":u16=") {
        let code: String = source[i + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        want("WebSocket close code", format!("**{code}**"));
    }
    // gRPC metadata, sent and read.
    for file in ["error.rs", "grpc.rs"] {
        for name in literals_after(&push_source(file), "_METADATA:&str=\"") {
            want("gRPC metadata", format!("`{name}`"));
        }
    }
    // Reset reasons.
    let resume = push_source("resume.rs");
    let reasons = resume
        .split("impl ResetReason")
        .nth(1)
        .expect("ResetReason::as_str");
    for reason in literals_after(reasons.split("\n}").next().unwrap_or(""), "=>\"") {
        want("reset reason", format!("`{reason}`"));
    }
    let grpc = push_source("grpc.rs");
    let mut read = literals_after(&grpc, "metadata(request,\"");
    read.extend(literals_after(&grpc, "metadata().get(\""));
    assert!(read.contains("authorization"), "{read:?}");
    let grpc_section = page
        .split("\n## gRPC")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a gRPC section");
    for name in read {
        if !grpc_section.contains(&format!("`{name}")) {
            missing.push(format!(
                "gRPC metadata read: `{name}` (in the gRPC section)"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/api.md does not mention: {missing:#?}"
    );
}
