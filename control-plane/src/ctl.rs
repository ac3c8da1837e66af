//! sidestreamctl: validate, apply, get, diff, delete, history, rollback,
//! status and schema. Human output by default, JSON with `-o json` (and YAML
//! documents with `-o yaml` for `get`).
//!
//! [`args`] holds the flags, [`commands`] what each command does (files,
//! etcd through [`store`], the admin API through the types
//! [`crate::admin`] serves), [`render`] what it prints.

pub mod args;
pub mod commands;
pub mod diff;
pub mod files;
pub mod render;
pub mod store;

pub use args::{Command, CtlArgs, Output};

use files::FileProblem;
use store::StoreError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: invalid files, a failed operation or an unreachable service.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: a write lost a race (its base is stale).
pub const EXIT_STALE: u8 = 3;
/// Exit code: bad flags.
pub const EXIT_USAGE: u8 = 64;

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

/// Runs one command; returns the exit code. Errors are printed here.
pub async fn run(args: CtlArgs) -> u8 {
    let output = args.output;
    match commands::execute(args).await {
        Ok(code) => code,
        Err(error) => {
            render::failure(&error, output);
            error.exit_code()
        }
    }
}
