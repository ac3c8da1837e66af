//! Read-modify-write of one Envoy shared-data key with compare-and-swap, so the
//! stream-limit state is one per Envoy, not one per worker.
//!
//! Envoy's shared data (proxy-wasm-cpp-host `SharedData::set`) checks `cas` only
//! when the key exists and inserts a missing key whatever `cas` says. A missing key
//! is therefore written with `cas = u32::MAX` ([`CREATE_IF_ABSENT`]): if another
//! worker created the key meanwhile, its token differs (tokens count up from 1, so
//! only the 2^32-1-th write ever carries that value) and the write fails with a
//! mismatch instead of overwriting that worker's admission.

use crate::host::{Host, HostError, SharedSetError};

/// The `cas` that makes a write of an absent key fail if the key appeared meanwhile.
pub const CREATE_IF_ABSENT: u32 = u32::MAX;

/// Attempts before an update gives up as contended.
pub const MAX_ATTEMPTS: usize = 16;

/// Why an update did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// A host call failed.
    Host(HostError),
    /// Every attempt lost the compare-and-swap race.
    Contended,
}

/// What an update step decided.
pub enum Step<T> {
    /// Write these bytes and return `T` once the write wins.
    Write(Vec<u8>, T),
    /// Write nothing; return `T`.
    Skip(T),
}

/// Applies `step` to the current value of `key` (`None` when absent) and writes
/// its result with compare-and-swap, retrying with a fresh read on a mismatch.
pub fn update<H: Host, T>(
    host: &H,
    key: &str,
    mut step: impl FnMut(Option<&[u8]>) -> Step<T>,
) -> Result<T, UpdateError> {
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = host.shared_get(key).map_err(UpdateError::Host)?;
        let exists = value.is_some();
        match step(value.as_deref()) {
            Step::Skip(result) => return Ok(result),
            Step::Write(bytes, result) => {
                let cas = match (exists, cas) {
                    (true, Some(cas)) => Some(cas),
                    _ => Some(CREATE_IF_ABSENT),
                };
                match host.shared_set(key, &bytes, cas) {
                    Ok(()) => return Ok(result),
                    Err(SharedSetError::CasMismatch) => continue,
                    Err(SharedSetError::Host(error)) => return Err(UpdateError::Host(error)),
                }
            }
        }
    }
    Err(UpdateError::Contended)
}
