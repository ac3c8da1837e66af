//! What one Wasm VM (one Envoy worker, or Envoy's main thread) keeps between
//! requests: the bootstrap, the snapshot in force, the metric ids and a CSPRNG.

use std::cell::RefCell;
use std::rc::Rc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use sidestream_core::config::{FailMode, FilterBootstrap, Snapshot};

use crate::mesh::MeshClient;
use crate::metrics::Metrics;

/// A snapshot in force and what the filter derives from it once, when it is
/// applied, rather than on every request.
#[derive(Debug, Clone)]
pub struct Applied {
    pub snapshot: Rc<Snapshot>,
    /// The tag headers of the release policies that do not trust client tags
    /// (sorted, no duplicates). A request no release policy matches has them
    /// removed, so a client cannot pick a group on paths no policy covers.
    pub untrusted_tag_headers: Rc<[String]>,
}

impl Applied {
    /// Derives what the requests need from `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let mut headers: Vec<String> = snapshot
            .releases
            .iter()
            .filter(|policy| !policy.trust_client_tag)
            .map(|policy| policy.tag_header.clone())
            .collect();
        headers.sort();
        headers.dedup();
        Applied {
            snapshot: Rc::new(snapshot),
            untrusted_tag_headers: headers.into(),
        }
    }
}

/// Per-VM state shared by the root context and the HTTP contexts.
#[derive(Debug)]
pub struct VmState {
    /// The plugin configuration this VM was configured with.
    pub bootstrap: FilterBootstrap,
    /// What to do when a host call fails outside a stream-limit policy.
    pub fail_mode: FailMode,
    /// This VM's metric ids.
    pub metrics: Metrics,
    /// Mesh-scoped limits: the limiter, this instance, its held streams.
    pub mesh: MeshClient,
    applied: RefCell<Applied>,
    /// ChaCha12 seeded once per VM from the host's entropy (WASI `random_get`):
    /// trace ids and request ids cost no host call per request.
    rng: RefCell<ChaCha12Rng>,
}

impl VmState {
    /// A VM running `bootstrap.defaults` until a snapshot arrives.
    pub fn new(bootstrap: FilterBootstrap, metrics: Metrics, seed: [u8; 32]) -> Self {
        let applied = Applied::new(bootstrap.defaults.clone());
        let mut rng = ChaCha12Rng::from_seed(seed);
        // Renamed after the VM's node id is known (glue); unique meanwhile.
        let mesh = MeshClient::new(
            bootstrap.limiter.as_ref().map(|l| l.cluster.clone()),
            crate::mesh::instance_name(&bootstrap.node_id, rng.next_u64()),
        );
        VmState {
            fail_mode: bootstrap.fail_mode,
            bootstrap,
            metrics,
            mesh,
            applied: RefCell::new(applied),
            rng: RefCell::new(rng),
        }
    }

    /// The snapshot in force; a request keeps the one it started with.
    pub fn snapshot(&self) -> Rc<Snapshot> {
        Rc::clone(&self.applied.borrow().snapshot)
    }

    /// The snapshot in force with what was derived from it (two `Rc` clones).
    pub fn applied(&self) -> Applied {
        self.applied.borrow().clone()
    }

    /// Puts a new snapshot in force for the requests that start from now on.
    pub fn replace_snapshot(&self, snapshot: Snapshot) {
        *self.applied.borrow_mut() = Applied::new(snapshot);
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
