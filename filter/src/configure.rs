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

/// The node id this VM's config stream announces, unique per Envoy and VM:
///
/// - `<nodeId>/<Envoy node id>/vm-<n>` when Envoy has a node id (the property
///   `node.id`; in Istio `router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, unique
///   per pod, while every pod gets the same plugin configuration);
/// - `<nodeId>.vm-<n>-<8 hex>` (a random suffix) when it has none or the property
///   cannot be read, so Envoys sharing a `nodeId` still do not share node ids.
///
/// `<n>` numbers the VMs of one Envoy (shared data); if that fails it is random
/// too. `random` comes from the VM's CSPRNG. The control plane groups the VMs
/// by `Node.cluster`, which stays the bootstrap's `nodeId`.
pub fn stream_node_id(host: &impl Host, node_id: &str, random: u64) -> String {
    let sequence = shared::update(host, VM_SEQUENCE_KEY, |current| {
        let next = current
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map_or(0, u64::from_le_bytes);
        Step::Write(next.wrapping_add(1).to_le_bytes().to_vec(), next)
    });
    let vm = match sequence {
        Ok(n) => format!("vm-{n}"),
        Err(error) => {
            log::warn!("sidestream: no VM sequence number ({error:?}); using a random one");
            format!("vm-{:08x}", random >> 32)
        }
    };
    let envoy_node_id = match host.envoy_node_id() {
        Ok(Some(id)) if !id.is_empty() => Some(id),
        Ok(_) => {
            log::info!(
                "sidestream: Envoy has no node id (node.id); the config-stream node id gets a random suffix"
            );
            None
        }
        Err(error) => {
            log::warn!("sidestream: {error}; the config-stream node id gets a random suffix");
            None
        }
    };
    match envoy_node_id {
        Some(envoy) => format!("{node_id}/{envoy}/{vm}"),
        None => format!("{node_id}.{vm}-{:08x}", random & 0xffff_ffff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeEnvoy, FakeHost};

    const ISTIO_NODE: &str = "router~10.0.0.1~gw-7d9f.istio-system~istio-system.svc.cluster.local";

    #[test]
    fn node_ids_name_the_envoy_and_number_its_vms() {
        let envoy = FakeEnvoy::with_node_id(ISTIO_NODE);
        let ids: Vec<String> = (0..3)
            .map(|_| stream_node_id(&FakeHost::new(&envoy), "ingress", 0xdead_beef))
            .collect();
        assert_eq!(
            ids,
            [0, 1, 2].map(|n| format!("ingress/{ISTIO_NODE}/vm-{n}"))
        );
    }

    #[test]
    fn envoys_with_the_same_plugin_config_get_different_node_ids() {
        let pod_a = FakeEnvoy::with_node_id("router~10.0.0.1~gw-a.ns~ns.svc.cluster.local");
        let pod_b = FakeEnvoy::with_node_id("router~10.0.0.2~gw-b.ns~ns.svc.cluster.local");
        let a = stream_node_id(&FakeHost::new(&pod_a), "ingress", 1);
        let b = stream_node_id(&FakeHost::new(&pod_b), "ingress", 1);
        assert_ne!(a, b);
        assert_eq!(
            a,
            "ingress/router~10.0.0.1~gw-a.ns~ns.svc.cluster.local/vm-0"
        );
    }

    #[test]
    fn without_an_envoy_node_id_a_random_suffix_keeps_them_apart() {
        let first = FakeEnvoy::new();
        let second = FakeEnvoy::new();
        let a = stream_node_id(&FakeHost::new(&first), "ingress", 0x0123_4567_89ab_cdef);
        let b = stream_node_id(&FakeHost::new(&second), "ingress", 0x0fed_cba9_8765_4321);
        assert_eq!(a, "ingress.vm-0-89abcdef");
        assert_eq!(b, "ingress.vm-0-87654321");
        // The property exists but is empty, or cannot be read.
        let empty = FakeEnvoy::with_node_id("");
        assert_eq!(
            stream_node_id(&FakeHost::new(&empty), "ingress", 0xabcd),
            "ingress.vm-0-0000abcd"
        );
        let failing = FakeHost::new(&FakeEnvoy::with_node_id(ISTIO_NODE));
        failing.fail("envoy_node_id");
        assert_eq!(
            stream_node_id(&failing, "ingress", 0x1111_2222),
            "ingress.vm-0-11112222"
        );
    }

    #[test]
    fn a_failing_sequence_gives_a_random_vm_number() {
        let host = FakeHost::new(&FakeEnvoy::with_node_id("pod-1"));
        host.fail("shared_get");
        assert_eq!(
            stream_node_id(&host, "ingress", 0xcafe_f00d_0000_0001),
            "ingress/pod-1/vm-cafef00d"
        );
    }
}
