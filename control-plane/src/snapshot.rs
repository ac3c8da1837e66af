//! Immutable, versioned snapshots and the on-disk cache of the last good one.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sidestream_core::config::{Kind, Snapshot};

/// One published snapshot. Never mutated: a change makes a new one.
#[derive(Debug, Clone)]
pub struct VersionedSnapshot {
    /// "<revision>-<first 16 hex digits of the content hash>".
    pub version: String,
    /// The etcd revision the snapshot reflects.
    pub revision: i64,
    /// SHA-256 of `json`, hex.
    pub content_hash: String,
    /// `Snapshot::to_json` of `snapshot`.
    pub json: Vec<u8>,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// When the control plane saw the etcd change this snapshot reflects (Unix ns).
    pub observed_unix_nanos: i64,
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The version string of a snapshot: revision plus 16 hex digits of its hash.
pub fn version_for(revision: i64, content_hash: &str) -> String {
    let short = content_hash.get(..16).unwrap_or(content_hash);
    format!("{revision}-{short}")
}

impl VersionedSnapshot {
    /// Versions `snapshot` as of `revision`.
    pub fn new(snapshot: Snapshot, revision: i64, observed_unix_nanos: i64) -> Self {
        let json = snapshot.to_json();
        let content_hash = content_hash(&json);
        VersionedSnapshot {
            version: version_for(revision, &content_hash),
            revision,
            content_hash,
            json,
            snapshot,
            observed_unix_nanos,
        }
    }

    /// The snapshot holding only `kinds` (all when empty), its JSON and hash.
    pub fn filtered(&self, kinds: &[Kind]) -> (Vec<u8>, String) {
        if kinds.is_empty() || Kind::ALL.iter().all(|kind| kinds.contains(kind)) {
            return (self.json.clone(), self.content_hash.clone());
        }
        let json = self.snapshot.only(kinds).to_json();
        let hash = content_hash(&json);
        (json, hash)
    }
}

/// The snapshot cache file: what the last good snapshot was.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheFile {
    version: String,
    revision: i64,
    content_hash: String,
    observed_unix_nanos: i64,
    snapshot: serde_json::Value,
}

/// Errors reading or writing the snapshot cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be read or written.
    #[error("snapshot cache {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a snapshot cache.
    #[error("snapshot cache {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Writes `snapshot` to `path` atomically (a temporary file in the same folder,
/// renamed over the old one): a reader sees the old file or the new one, never
/// a part. The file is not fsynced: that would put a disk flush on every
/// propagation; a process crash keeps it (page cache), a machine crash may
/// leave the previous snapshot, which is still a good one.
pub fn write_cache(path: &Path, snapshot: &VersionedSnapshot) -> Result<(), CacheError> {
    let io = |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&snapshot.json).map_err(|e| CacheError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    let file = CacheFile {
        version: snapshot.version.clone(),
        revision: snapshot.revision,
        content_hash: snapshot.content_hash.clone(),
        observed_unix_nanos: snapshot.observed_unix_nanos,
        snapshot: value,
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| CacheError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".to_owned());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        use std::io::Write;
        let mut out = std::fs::File::create(&tmp).map_err(io)?;
        out.write_all(&bytes).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Reads the snapshot cache at `path`; `Ok(None)` when there is none.
pub fn read_cache(path: &Path) -> Result<Option<VersionedSnapshot>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let invalid = |message: String| CacheError::Invalid {
        path: path.display().to_string(),
        message,
    };
    let file: CacheFile = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let snapshot_bytes = serde_json::to_vec(&file.snapshot).map_err(|e| invalid(e.to_string()))?;
    let snapshot = Snapshot::from_json(&snapshot_bytes).map_err(|e| invalid(e.to_string()))?;
    let mut versioned = VersionedSnapshot::new(snapshot, file.revision, file.observed_unix_nanos);
    if versioned.content_hash == file.content_hash {
        // Same content: keep the version the data planes already know.
        versioned.version = file.version;
    }
    Ok(Some(versioned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_revision_and_sixteen_hex_digits() {
        let snapshot = VersionedSnapshot::new(Snapshot::default(), 42, 7);
        let (revision, hash) = snapshot.version.split_once('-').expect("a dash");
        assert_eq!(revision, "42");
        assert_eq!(hash.len(), 16);
        assert!(snapshot.content_hash.starts_with(hash));
        assert_eq!(
            snapshot.content_hash,
            content_hash(&Snapshot::default().to_json())
        );
    }

    #[test]
    fn cache_round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot.json");
        assert!(read_cache(&path).expect("no cache yet").is_none());
        let snapshot = VersionedSnapshot::new(Snapshot::default(), 9, 123);
        write_cache(&path, &snapshot).expect("write");
        let read = read_cache(&path).expect("read").expect("present");
        assert_eq!(read.version, snapshot.version);
        assert_eq!(read.json, snapshot.json);
        assert_eq!(read.revision, 9);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary file left behind");
    }

    #[test]
    fn a_corrupt_cache_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(matches!(read_cache(&path), Err(CacheError::Invalid { .. })));
    }
}
