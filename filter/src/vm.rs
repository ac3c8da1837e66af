//! What one Wasm VM (one Envoy worker, or Envoy's main thread) keeps between
//! requests: the bootstrap, the snapshot in force, the metric ids and a CSPRNG.

use std::cell::RefCell;
use std::rc::Rc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use sidestream_core::config::{FailMode, FilterBootstrap, Snapshot};

use crate::metrics::Metrics;

/// Per-VM state shared by the root context and the HTTP contexts.
#[derive(Debug)]
pub struct VmState {
    /// The plugin configuration this VM was configured with.
    pub bootstrap: FilterBootstrap,
    /// What to do when a host call fails outside a stream-limit policy.
    pub fail_mode: FailMode,
    /// This VM's metric ids.
    pub metrics: Metrics,
    snapshot: RefCell<Rc<Snapshot>>,
    /// ChaCha12 seeded once per VM from the host's entropy (WASI `random_get`):
    /// trace ids and request ids cost no host call per request.
    rng: RefCell<ChaCha12Rng>,
}

impl VmState {
    /// A VM running `bootstrap.defaults` until a snapshot arrives.
    pub fn new(bootstrap: FilterBootstrap, metrics: Metrics, seed: [u8; 32]) -> Self {
        let snapshot = Rc::new(bootstrap.defaults.clone());
        VmState {
            fail_mode: bootstrap.fail_mode,
            bootstrap,
            metrics,
            snapshot: RefCell::new(snapshot),
            rng: RefCell::new(ChaCha12Rng::from_seed(seed)),
        }
    }

    /// The snapshot in force; a request keeps the one it started with.
    pub fn snapshot(&self) -> Rc<Snapshot> {
        Rc::clone(&self.snapshot.borrow())
    }

    /// Puts a new snapshot in force for the requests that start from now on.
    pub fn replace_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.borrow_mut() = Rc::new(snapshot);
    }

    /// Fills `buf` from the VM's CSPRNG.
    pub fn fill_random(&self, buf: &mut [u8]) {
        self.rng.borrow_mut().fill_bytes(buf);
    }

    /// A random `u64` (backoff jitter).
    pub fn random_u64(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }
}

/// 32 bytes from the host's entropy source, to seed a VM's CSPRNG.
pub fn entropy_seed() -> Result<[u8; 32], getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(seed)
}
