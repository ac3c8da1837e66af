//! What sidestreamctl prints: every command's result for people (`-o human`)
//! or as JSON (`-o json`, and YAML documents for `get -o yaml`). Nothing here
//! talks to etcd or the admin API.

use serde::Serialize;
use serde_json::Value;
use sidestream_core::config::{Document, Kind};

use super::args::Output;
use super::commands::AdminStatus;
use super::diff;
use super::files::FileProblem;
use super::store::{History, Plan, StoreError, Stored};
use super::CtlError;

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

/// Pretty JSON of `value`, keys in the order `serde_json::Value` keeps them.
fn pretty(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string()),
        Err(error) => format!("null (cannot render: {error})"),
    }
}

/// Prints `value` as pretty JSON.
pub fn json(value: &impl Serialize) {
    out!("{}", pretty(value));
}

/// Prints one line for people.
pub fn line(text: &str) {
    out!("{text}");
}

/// A problem in a file, as `-o json` lists it.
#[derive(Serialize)]
struct ProblemView<'a> {
    file: &'a str,
    document: Option<usize>,
    subject: Option<&'a str>,
    field: &'a str,
    message: &'a str,
    text: String,
}

/// The error a command ended with: every file problem, or one message.
pub fn failure(error: &CtlError, output: Output) {
    #[derive(Serialize)]
    struct Invalid<'a> {
        valid: bool,
        problems: Vec<ProblemView<'a>>,
    }
    #[derive(Serialize)]
    struct Failed {
        error: String,
        stale: bool,
    }
    match (error, output) {
        (CtlError::Invalid(problems), Output::Human) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            eprintln!("{} problem(s) found", problems.len());
        }
        (CtlError::Invalid(problems), _) => json(&Invalid {
            valid: false,
            problems: problems.iter().map(problem_view).collect(),
        }),
        (error, Output::Human) => eprintln!("sidestreamctl: {error}"),
        (error, _) => {
            json(&Failed {
                error: error.to_string(),
                stale: matches!(error, CtlError::Store(StoreError::Stale { .. })),
            });
            eprintln!("sidestreamctl: {error}");
        }
    }
}

fn problem_view(problem: &FileProblem) -> ProblemView<'_> {
    ProblemView {
        file: &problem.file,
        document: problem.document,
        subject: problem.subject.as_deref(),
        field: &problem.field,
        message: &problem.message,
        text: problem.to_string(),
    }
}

/// `validate`: the valid documents.
pub fn validated(documents: &[Document], output: Output) {
    #[derive(Serialize)]
    struct Valid {
        kind: &'static str,
        name: String,
        key: String,
    }
    #[derive(Serialize)]
    struct Report {
        valid: bool,
        documents: Vec<Valid>,
    }
    if output == Output::Human {
        for document in documents {
            out!("ok  {} {}", document.kind, document.name);
        }
        out!("{} document(s) valid", documents.len());
        return;
    }
    json(&Report {
        valid: true,
        documents: documents
            .iter()
            .map(|d| Valid {
                kind: d.kind.document_kind(),
                name: d.name.clone(),
                key: d.key(),
            })
            .collect(),
    });
}

/// What became of a plan that `apply` or `rollback` would write, added to
/// its JSON.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Only shown, on request.
    pub dry_run: bool,
    /// The revision it was written at; `None` when nothing was written.
    pub revision: Option<i64>,
}

/// A plan: each change with its diff, the unchanged keys; in JSON with the
/// outcome's fields when there is one (`diff` has none).
pub fn plan(plan: &Plan, output: Output, outcome: Option<Outcome>) {
    if output != Output::Human {
        let mut value = serde_json::to_value(plan).unwrap_or(Value::Null);
        if let (Value::Object(map), Ok(Value::Object(more))) =
            (&mut value, serde_json::to_value(outcome))
        {
            map.extend(more);
        }
        json(&value);
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

/// A plan about to be written: people see it before the write, JSON gets
/// it with the revision after.
pub fn writing(to_write: &Plan, output: Output) {
    if output == Output::Human {
        plan(to_write, output, None);
    }
}

/// A plan written at `revision`: `summary` for people, the plan and its
/// revision in JSON.
pub fn written(written: &Plan, output: Output, revision: i64, summary: &str) {
    if output == Output::Human {
        line(summary);
    } else {
        let outcome = Outcome {
            dry_run: false,
            revision: Some(revision),
        };
        plan(written, output, Some(outcome));
    }
}

/// `get`: a table of objects (and the spec of a single one), JSON, or YAML
/// documents that `apply` takes back.
pub fn objects(items: &[Stored], output: Output) {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ObjectView<'a> {
        kind: &'static str,
        name: &'a str,
        spec: Value,
        key: &'a str,
        mod_revision: i64,
        create_revision: i64,
        version: i64,
    }
    #[derive(Serialize)]
    struct DocumentView<'a> {
        kind: &'static str,
        name: &'a str,
        spec: Value,
    }
    match output {
        Output::Json => json(
            &items
                .iter()
                .map(|s| ObjectView {
                    kind: s.kind.document_kind(),
                    name: &s.name,
                    spec: s.spec(),
                    key: &s.key,
                    mod_revision: s.mod_revision,
                    create_revision: s.create_revision,
                    version: s.version,
                })
                .collect::<Vec<_>>(),
        ),
        Output::Yaml => {
            for s in items {
                let document = DocumentView {
                    kind: s.kind.document_kind(),
                    name: &s.name,
                    spec: s.spec(),
                };
                // Through `Value`, so keys come in the same order as in JSON.
                let document = serde_json::to_value(&document).unwrap_or(Value::Null);
                out!("---\n# {} (mod revision {})", s.key, s.mod_revision);
                out_raw!("{}", serde_norway::to_string(&document).unwrap_or_default());
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

/// `delete`: the revision of the delete.
pub fn deleted(kind: Kind, name: &str, revision: i64, output: Output) {
    #[derive(Serialize)]
    struct Deleted {
        deleted: bool,
        revision: i64,
    }
    if output == Output::Human {
        out!("Deleted {kind} {name} at revision {revision}.");
    } else {
        json(&Deleted {
            deleted: true,
            revision,
        });
    }
}

/// `history`: newest first, invalid values marked.
pub fn history(history: &History, output: Output) {
    if output != Output::Human {
        json(history);
        return;
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
}

/// `status`: the snapshot, the clients with their versions and NACKs, and
/// the rejections.
pub fn status(status: &AdminStatus, output: Output) {
    if output != Output::Human {
        #[derive(Serialize)]
        struct SnapshotSummary<'a> {
            version: Option<&'a str>,
            revision: Option<i64>,
            ready: Option<bool>,
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            snapshot: SnapshotSummary<'a>,
            clients: &'a [crate::admin::ClientInfo],
            rejections: &'a crate::admin::RejectionsView,
        }
        let snapshot = status.snapshot.as_ref();
        json(&Summary {
            snapshot: SnapshotSummary {
                version: snapshot.map(|s| s.version.as_str()),
                revision: snapshot.map(|s| s.revision),
                ready: snapshot.map(|s| s.ready),
            },
            clients: &status.clients,
            rejections: &status.rejections,
        });
        return;
    }
    match &status.snapshot {
        None => out!("Snapshot: none yet"),
        Some(snapshot) => out!(
            "Snapshot: {} (revision {}{})",
            snapshot.version,
            snapshot.revision,
            if snapshot.ready {
                ""
            } else {
                ", from cache: etcd not read yet"
            }
        ),
    }
    out!("Clients: {}", status.clients.len());
    for c in &status.clients {
        out!(
            "  {:<32} {:<14} acked {:<26} kinds {}",
            c.node_id,
            c.client_kind,
            c.acked_version.as_deref().unwrap_or("-"),
            c.kinds.join(",")
        );
        if let Some(nack) = &c.last_nack {
            out!("      last NACK: version {} ({})", nack.version, nack.error);
        }
    }
    let rejections = &status.rejections;
    out!("Rejections: {} total", rejections.total);
    for r in &rejections.active {
        out!("  {} at revision {}: {}", r.key, r.revision, r.reason);
    }
    if !rejections.unknown_keys.is_empty() {
        out!("Unknown keys: {}", rejections.unknown_keys.len());
        for u in &rejections.unknown_keys {
            out!("  {}: {}", u.key, u.reason);
        }
    }
}
