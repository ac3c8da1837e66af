//! sidestreamctl's flags and subcommands (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use sidestream_core::config::Kind;

use crate::etcd::EtcdArgs;

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        CtlArgs::try_parse_from(std::iter::once("sidestreamctl").chain(args.iter().copied()))
    }

    #[test]
    fn kinds_parse_by_short_and_document_name() {
        let args = parse(&["get", "release", "push"]).unwrap();
        assert!(matches!(
            args.command,
            Command::Get { kind: Some(Kind::Release), name: Some(ref n) } if n == "push"
        ));
        let args = parse(&["get", "ReleasePolicy"]).unwrap();
        assert!(matches!(
            args.command,
            Command::Get {
                kind: Some(Kind::Release),
                name: None
            }
        ));
        let error = parse(&["get", "bogus"]).unwrap_err().to_string();
        assert!(error.contains("unknown kind \"bogus\""), "{error}");
    }

    #[test]
    fn output_is_global_and_rollback_needs_a_revision() {
        let args = parse(&["history", "topic", "ticks", "-o", "json"]).unwrap();
        assert_eq!(args.output, Output::Json);
        assert!(parse(&["rollback", "topic", "ticks"]).is_err());
    }
}
