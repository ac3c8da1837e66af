//! Reading the plugin configuration and naming this VM's config-stream client.

use sidestream_core::config::FilterBootstrap;

use crate::host::Host;
use crate::shared::{self, Step};

/// Shared-data key counting the VMs that opened a config stream, so each gets
/// its own node id (`<nodeId>.vm-<n>`).
pub const VM_SEQUENCE_KEY: &str = "sidestream.vm-sequence";

/// Parses the plugin configuration; the error says exactly what is wrong.
pub fn parse_bootstrap(bytes: &[u8]) -> Result<FilterBootstrap, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "the plugin configuration is empty; expected a JSON object with \
                    nodeId, controlPlane (optional), failMode and defaults"
                .to_owned(),
        );
    }
    FilterBootstrap::from_json(bytes).map_err(|error| error.to_string())
}

/// The node id this VM's config stream announces: the bootstrap's `nodeId` plus
/// a per-Envoy sequence number (one stream per worker VM, see `config_stream`).
pub fn stream_node_id(host: &impl Host, node_id: &str) -> String {
    let sequence = shared::update(host, VM_SEQUENCE_KEY, |current| {
        let next = current
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map_or(0, u64::from_le_bytes);
        Step::Write(next.wrapping_add(1).to_le_bytes().to_vec(), next)
    });
    match sequence {
        Ok(n) => format!("{node_id}.vm-{n}"),
        Err(error) => {
            log::warn!("sidestream: no VM sequence number ({error:?}); using a random suffix");
            format!(
                "{node_id}.vm-{:08x}",
                host.now_nanos().unwrap_or(0) & 0xffff_ffff
            )
        }
    }
}
