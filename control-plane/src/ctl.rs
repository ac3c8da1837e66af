//! sidestreamctl: validate, apply, get, diff, delete, history, rollback,
//! status and schema. Human output by default, JSON with `-o json` (and YAML
//! documents with `-o yaml` for `get`).

/// Prints a line to stdout; a closed pipe (`| head`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints to stdout without a newline; a closed pipe is not an error.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub mod diff;
pub mod files;
pub mod store;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use sidestream_core::config::{schema, Document, Kind, TRACE_NAME};

use crate::etcd::EtcdArgs;
use files::{load, FileProblem};
use store::{Plan, Store, StoreError};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: invalid files, a failed operation or an unreachable service.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: a write lost a race (its base is stale).
pub const EXIT_STALE: u8 = 3;
/// Exit code: bad flags.
pub const EXIT_USAGE: u8 = 64;

/// sidestreamctl: manage sidestream's config in etcd.
#[derive(Debug, Parser)]
#[command(name = "sidestreamctl", version)]
pub struct CtlArgs {
    #[command(flatten)]
    /// etcd connection.
    pub etcd: EtcdArgs,
    /// The control plane's admin API (for `status`).
    #[arg(
        long,
        global = true,
        env = "SIDESTREAM_ADMIN",
        default_value = "http://127.0.0.1:18001"
    )]
    pub admin: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "human"
    )]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Human,
    /// JSON.
    Json,
    /// YAML documents (`get`; other commands print JSON).
    Yaml,
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::parse(text).ok_or_else(|| {
        format!(
            "unknown kind {text:?} (trace, release, stream-limit, topic or their document kinds)"
        )
    })
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check files offline; lists every problem by file, document and field.
    Validate {
        /// Files or directories (every .json, .yaml, .yml in them).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Validate, show the diff and write in one transaction that fails if any
    /// key changed since it was read.
    Apply {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Diff against (and require unchanged since) the keys as they were at
        /// this etcd revision, e.g. the one `get` showed you.
        #[arg(long)]
        base_revision: Option<i64>,
    },
    /// Show objects: all, every one of a kind, or one.
    Get {
        /// Kind (trace, release, stream-limit, topic).
        #[arg(value_parser = parse_kind)]
        kind: Option<Kind>,
        /// Name.
        name: Option<String>,
    },
    /// Show how etcd differs from the files.
    Diff {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Delete one object (if unchanged since read).
    Delete {
        /// Kind.
        #[arg(value_parser = parse_kind)]
        kind: Kind,
        /// Name (not needed for trace).
        name: Option<String>,
    },
    /// Previous values of one object that etcd still keeps.
    History {
        /// Kind.
        #[arg(value_parser = parse_kind)]
        kind: Kind,
        /// Name (not needed for trace).
        name: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Put back the value an object had at a revision (validated first).
    Rollback {
        /// Kind.
        #[arg(value_parser = parse_kind)]
        kind: Kind,
        /// Name (not needed for trace).
        name: Option<String>,
        /// The revision whose value to restore (see `history`).
        #[arg(long)]
        to_revision: i64,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Clients, versions, NACKs and rejections, from the control plane's admin API.
    Status,
    /// The JSON Schema of a kind's spec, or of a config file.
    Schema {
        /// Kind (omit for the file document schema).
        #[arg(value_parser = parse_kind)]
        kind: Option<Kind>,
    },
}

/// Errors of a command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Invalid files.
    #[error("{} problem(s) found", .0.len())]
    Invalid(Vec<FileProblem>),
    /// etcd operations.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// etcd flags.
    #[error(transparent)]
    Config(#[from] crate::etcd::EtcdConfigError),
    /// The admin API.
    #[error("admin API {url}: {message}")]
    Admin {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Store(StoreError::Stale { .. }) => EXIT_STALE,
            CtlError::Usage(_) | CtlError::Config(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

fn object_name(kind: Kind, name: Option<String>) -> Result<String, CtlError> {
    match (kind.is_singleton(), name) {
        (true, None) => Ok(TRACE_NAME.to_owned()),
        (true, Some(name)) if name == TRACE_NAME => Ok(name),
        (true, Some(name)) => Err(CtlError::Usage(format!(
            "trace settings have no name ('{name}' given)"
        ))),
        (false, Some(name)) => Ok(name),
        (false, None) => Err(CtlError::Usage(format!("{kind} needs a NAME"))),
    }
}

fn print_json(value: &Value) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn load_valid(paths: &[PathBuf]) -> Result<Vec<Document>, CtlError> {
    let (loaded, problems) = load(paths);
    if !problems.is_empty() {
        return Err(CtlError::Invalid(problems));
    }
    Ok(loaded.into_iter().map(|l| l.document).collect())
}

fn print_plan(plan: &Plan, output: Output, extra: Value) {
    if output != Output::Human {
        let mut value = serde_json::to_value(plan).unwrap_or(Value::Null);
        if let (Value::Object(map), Value::Object(more)) = (&mut value, extra) {
            map.extend(more);
        }
        print_json(&value);
        return;
    }
    for change in &plan.changes {
        let (mark, action) = if change.old.is_some() {
            ("~", "update")
        } else {
            ("+", "create")
        };
        out!(
            "{mark} {} {} ({action} {}, base mod revision {})",
            change.kind,
            change.name,
            change.key,
            change.base_mod_revision
        );
        let old = change.old.as_ref().map(pretty).unwrap_or_default();
        out_raw!("{}", diff::render(&old, &pretty(&change.new), "    "));
    }
    for key in &plan.unchanged {
        out!("= {key} (unchanged)");
    }
    if plan.changes.is_empty() {
        out!("Nothing to change.");
    }
}

/// Runs one command; returns the exit code. Errors are printed here.
pub async fn run(args: CtlArgs) -> u8 {
    let output = args.output;
    match execute(args).await {
        Ok(code) => code,
        Err(error) => {
            if let CtlError::Invalid(problems) = &error {
                if output == Output::Human {
                    for problem in problems {
                        eprintln!("{problem}");
                    }
                    eprintln!("{} problem(s) found", problems.len());
                } else {
                    let list: Vec<Value> = problems
                        .iter()
                        .map(|p| {
                            json!({"file": p.file, "document": p.document, "subject": p.subject,
                                   "field": p.field, "message": p.message, "text": p.to_string()})
                        })
                        .collect();
                    print_json(&json!({"valid": false, "problems": list}));
                }
            } else if output == Output::Human {
                eprintln!("sidestreamctl: {error}");
            } else {
                print_json(
                    &json!({"error": error.to_string(), "stale": matches!(error, CtlError::Store(StoreError::Stale { .. }))}),
                );
                eprintln!("sidestreamctl: {error}");
            }
            error.exit_code()
        }
    }
}

async fn execute(args: CtlArgs) -> Result<u8, CtlError> {
    let output = args.output;
    match args.command {
        Command::Validate { paths } => {
            let documents = load_valid(&paths)?;
            if output == Output::Human {
                for document in &documents {
                    out!("ok  {} {}", document.kind, document.name);
                }
                out!("{} document(s) valid", documents.len());
            } else {
                let list: Vec<Value> = documents
                    .iter()
                    .map(
                        |d| json!({"kind": d.kind.document_kind(), "name": d.name, "key": d.key()}),
                    )
                    .collect();
                print_json(&json!({"valid": true, "documents": list}));
            }
            Ok(EXIT_OK)
        }
        Command::Schema { kind } => {
            let value = match kind {
                Some(kind) => schema::for_kind(kind),
                None => schema::document(),
            };
            print_json(&value);
            Ok(EXIT_OK)
        }
        Command::Status => status(&args.admin, output).await,
        command => {
            let settings = args.etcd.settings()?;
            let store = Store::connect(settings).await?;
            with_store(&store, command, output).await
        }
    }
}

async fn with_store(store: &Store, command: Command, output: Output) -> Result<u8, CtlError> {
    match command {
        Command::Apply {
            paths,
            dry_run,
            base_revision,
        } => {
            let documents = load_valid(&paths)?;
            let plan = store.plan(&documents, base_revision).await?;
            if dry_run || plan.changes.is_empty() {
                print_plan(&plan, output, json!({"dryRun": dry_run, "revision": null}));
                return Ok(EXIT_OK);
            }
            if output == Output::Human {
                print_plan(&plan, output, Value::Null);
            }
            let revision = store.commit(&plan).await?;
            if output == Output::Human {
                out!(
                    "Applied {} change(s) at revision {revision}.",
                    plan.changes.len()
                );
            } else {
                print_plan(
                    &plan,
                    output,
                    json!({"dryRun": false, "revision": revision}),
                );
            }
            Ok(EXIT_OK)
        }
        Command::Diff { paths } => {
            let documents = load_valid(&paths)?;
            let plan = store.plan(&documents, None).await?;
            print_plan(&plan, output, json!({}));
            Ok(EXIT_OK)
        }
        Command::Get { kind, name } => {
            let items = match (kind, name) {
                (Some(kind), Some(name)) => {
                    let name = object_name(kind, Some(name))?;
                    let found = store.get(kind, &name, None).await?.ok_or_else(|| {
                        StoreError::NotFound(
                            store
                                .settings()
                                .full_key(&sidestream_core::config::key_for(kind, &name)),
                        )
                    })?;
                    vec![found]
                }
                (Some(Kind::Trace), None) => store.list(Some(Kind::Trace)).await?.0,
                (kind, _) => store.list(kind).await?.0,
            };
            print_objects(&items, output);
            Ok(EXIT_OK)
        }
        Command::Delete { kind, name } => {
            let name = object_name(kind, name)?;
            let revision = store.delete(kind, &name).await?;
            if output == Output::Human {
                out!("Deleted {kind} {name} at revision {revision}.");
            } else {
                print_json(&json!({"deleted": true, "revision": revision}));
            }
            Ok(EXIT_OK)
        }
        Command::History { kind, name, limit } => {
            let name = object_name(kind, name)?;
            let history = store.history(kind, &name, limit).await?;
            if output != Output::Human {
                print_json(&serde_json::to_value(&history).unwrap_or(Value::Null));
                return Ok(EXIT_OK);
            }
            if history.entries.is_empty() {
                out!("{} does not exist.", history.key);
            }
            out!("{}", history.key);
            for entry in &history.entries {
                out!(
                    "revision {} (version {}, created at {}){}",
                    entry.mod_revision,
                    entry.version,
                    entry.create_revision,
                    if entry.valid { "" } else { " INVALID" }
                );
                out!("    {}", entry.spec);
            }
            if history.truncated_by_compaction {
                out!("(older revisions were compacted)");
            }
            Ok(EXIT_OK)
        }
        Command::Rollback {
            kind,
            name,
            to_revision,
            dry_run,
        } => {
            let name = object_name(kind, name)?;
            let plan = store.plan_rollback(kind, &name, to_revision).await?;
            if dry_run || plan.changes.is_empty() {
                print_plan(&plan, output, json!({"dryRun": dry_run, "revision": null}));
                return Ok(EXIT_OK);
            }
            if output == Output::Human {
                print_plan(&plan, output, Value::Null);
            }
            let revision = store.commit(&plan).await?;
            if output == Output::Human {
                out!("Rolled {kind} {name} back to its value at revision {to_revision} (now revision {revision}).");
            } else {
                print_plan(
                    &plan,
                    output,
                    json!({"dryRun": false, "revision": revision}),
                );
            }
            Ok(EXIT_OK)
        }
        Command::Validate { .. } | Command::Schema { .. } | Command::Status => {
            Err(CtlError::Usage("not an etcd command".to_owned()))
        }
    }
}

fn print_objects(items: &[store::Stored], output: Output) {
    match output {
        Output::Json => {
            let list: Vec<Value> = items
                .iter()
                .map(|s| {
                    json!({"kind": s.kind.document_kind(), "name": s.name, "spec": s.spec(),
                           "key": s.key, "modRevision": s.mod_revision,
                           "createRevision": s.create_revision, "version": s.version})
                })
                .collect();
            print_json(&Value::Array(list));
        }
        Output::Yaml => {
            for s in items {
                let doc = json!({"kind": s.kind.document_kind(), "name": s.name, "spec": s.spec()});
                out!("---\n# {} (mod revision {})", s.key, s.mod_revision);
                out_raw!("{}", serde_yaml::to_string(&doc).unwrap_or_default());
            }
        }
        Output::Human => {
            if items.is_empty() {
                out!("No objects.");
                return;
            }
            out!("{:<18} {:<32} {:>12}  KEY", "KIND", "NAME", "MODREVISION");
            for s in items {
                out!(
                    "{:<18} {:<32} {:>12}  {}",
                    s.kind.document_kind(),
                    s.name,
                    s.mod_revision,
                    s.key
                );
            }
            if let [one] = items {
                out!("{}", pretty(&one.spec()));
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, base: &str, path: &str) -> Result<Value, CtlError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let admin = |message: String| CtlError::Admin {
        url: url.clone(),
        message,
    };
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| admin(e.to_string()))?;
    let status = response.status();
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && path == "/v1/snapshot" {
        return Ok(Value::Null);
    }
    if !status.is_success() {
        return Err(admin(format!("HTTP {status}")));
    }
    response.json().await.map_err(|e| admin(e.to_string()))
}

async fn status(admin: &str, output: Output) -> Result<u8, CtlError> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| CtlError::Admin {
            url: admin.to_owned(),
            message: e.to_string(),
        })?;
    let snapshot = fetch(&client, admin, "/v1/snapshot").await?;
    let clients = fetch(&client, admin, "/v1/clients").await?;
    let rejections = fetch(&client, admin, "/v1/rejections").await?;
    if output != Output::Human {
        let summary = json!({
            "snapshot": {"version": snapshot["version"], "revision": snapshot["revision"], "ready": snapshot["ready"]},
            "clients": clients,
            "rejections": rejections,
        });
        print_json(&summary);
        return Ok(EXIT_OK);
    }
    if snapshot.is_null() {
        out!("Snapshot: none yet");
    } else {
        out!(
            "Snapshot: {} (revision {}{})",
            snapshot["version"].as_str().unwrap_or("?"),
            snapshot["revision"],
            if snapshot["ready"].as_bool() == Some(true) {
                ""
            } else {
                ", from cache: etcd not read yet"
            }
        );
    }
    let list = clients.as_array().cloned().unwrap_or_default();
    out!("Clients: {}", list.len());
    for c in &list {
        let acked = c["ackedVersion"].as_str().unwrap_or("-");
        out!(
            "  {:<32} {:<14} acked {:<26} kinds {}",
            c["nodeId"].as_str().unwrap_or("?"),
            c["clientKind"].as_str().unwrap_or(""),
            acked,
            c["kinds"]
                .as_array()
                .map(|k| k
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        );
        if let Some(nack) = c.get("lastNack").filter(|n| !n.is_null()) {
            out!(
                "      last NACK: version {} ({})",
                nack["version"].as_str().unwrap_or("?"),
                nack["error"].as_str().unwrap_or("")
            );
        }
    }
    out!("Rejections: {} total", rejections["total"]);
    for r in rejections["active"].as_array().cloned().unwrap_or_default() {
        out!(
            "  {} at revision {}: {}",
            r["key"].as_str().unwrap_or("?"),
            r["revision"],
            r["reason"].as_str().unwrap_or("")
        );
    }
    let unknown = rejections["unknownKeys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !unknown.is_empty() {
        out!("Unknown keys: {}", unknown.len());
        for u in unknown {
            out!(
                "  {}: {}",
                u["key"].as_str().unwrap_or("?"),
                u["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(EXIT_OK)
}
