//! Connecting to etcd: the flags both binaries share and the client options.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// etcd connection flags (each with an environment variable).
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated (https:// endpoints use TLS).
    #[arg(
        long,
        global = true,
        env = "SIDESTREAM_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// The root prefix of sidestream's keys.
    #[arg(
        long,
        global = true,
        env = "SIDESTREAM_PREFIX",
        default_value = "/sidestream"
    )]
    pub prefix: String,
    /// etcd user (with --etcd-password).
    #[arg(
        long,
        global = true,
        env = "SIDESTREAM_ETCD_USER",
        requires = "etcd_password"
    )]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(
        long,
        global = true,
        env = "SIDESTREAM_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificate.
    #[arg(long, global = true, env = "SIDESTREAM_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd (with --etcd-key).
    #[arg(
        long,
        global = true,
        env = "SIDESTREAM_ETCD_CERT",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(
        long,
        global = true,
        env = "SIDESTREAM_ETCD_KEY",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
}

/// Errors building the etcd connection.
#[derive(Debug, thiserror::Error)]
pub enum EtcdConfigError {
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The prefix is not usable.
    #[error("prefix {0:?} must start with '/' and not end with '/'")]
    Prefix(String),
}

/// Whether etcd refused a read because the revision asked for was compacted
/// ("mvcc: required revision has been compacted").
pub fn is_compacted(error: &etcd_client::Error) -> bool {
    error.to_string().contains("compacted")
}

/// Everything needed to (re)connect to etcd, checked once at start.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Endpoints.
    pub endpoints: Vec<String>,
    /// The root prefix, e.g. "/sidestream".
    pub prefix: String,
    options: ConnectOptions,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, EtcdConfigError> {
    std::fs::read(path).map_err(|source| EtcdConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl EtcdArgs {
    /// Checks the flags and reads the TLS files.
    pub fn settings(&self) -> Result<EtcdSettings, EtcdConfigError> {
        let prefix = self.prefix.clone();
        if !prefix.starts_with('/') || (prefix.len() > 1 && prefix.ends_with('/')) {
            return Err(EtcdConfigError::Prefix(prefix));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_auto_token_refresh(true);
        if let (Some(user), Some(password)) = (&self.etcd_user, &self.etcd_password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.etcd_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        Ok(EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            prefix,
            options,
        })
    }
}

impl EtcdSettings {
    /// Plain settings (no auth, no TLS), for tests and tools.
    pub fn plain(endpoints: Vec<String>, prefix: &str) -> Self {
        EtcdSettings {
            endpoints,
            prefix: prefix.to_owned(),
            options: ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(3))
                .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
                .with_keep_alive_while_idle(true),
        }
    }

    /// Connects (and authenticates, when a user is set).
    pub async fn connect(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(&self.endpoints, Some(self.options.clone())).await
    }

    /// The prefix every config key starts with, with its trailing slash.
    pub fn key_prefix(&self) -> String {
        if self.prefix == "/" {
            "/".to_owned()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// The full etcd key of a relative key ("v1/trace" → "/sidestream/v1/trace").
    pub fn full_key(&self, relative: &str) -> String {
        format!("{}{relative}", self.key_prefix())
    }

    /// The relative key of a full etcd key under the prefix.
    pub fn relative_key<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(&self.key_prefix())
    }
}
