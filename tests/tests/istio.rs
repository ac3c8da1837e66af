//! The Istio manifests in `istio/` are valid, consistent and complete:
//! - every Istio resource validates against Istio's own CRD schemas (Istio
//!   1.29's, from the npm package `@kubernetes-models/istio` pinned in
//!   `tests/istio-crds/package.json`), strictly (an unknown field is an error,
//!   as `kubectl apply`'s default strict field validation makes it);
//! - every Kubernetes resource validates against the Kubernetes schemas
//!   (`kubernetes-validate --strict`, from PyPI, installed by
//!   `scripts/install-deps.sh test`);
//! - cross-references hold: Service selectors and target ports, subsets,
//!   VirtualService hosts, gateways and ports, the WasmPlugin's control-plane
//!   cluster, HPA and PDB targets, service accounts, probes;
//! - and each check fails on a manifest broken on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

/// One manifest file: its name and its single resource.
#[derive(Clone)]
struct Manifest {
    file: String,
    doc: Value,
}

fn istio_dir() -> PathBuf {
    sidestream_tests::workspace_root().join("istio")
}

/// The checker of Istio's CRD schemas: `tests/istio-crds/validate.mjs`, with
/// the pinned npm packages that `scripts/install-deps.sh test` installs beside it.
fn istio_crd_checker() -> PathBuf {
    let dir = sidestream_tests::workspace_root().join("tests/istio-crds");
    assert!(
        dir.join("node_modules/@kubernetes-models/istio").is_dir()
            && dir.join("node_modules/typescript").is_dir(),
        "Istio's CRD schemas are missing: expected the npm packages of {} to be installed \
         (run scripts/install-deps.sh test, which runs `npm ci` there)",
        dir.join("package.json").display()
    );
    dir.join("validate.mjs")
}

fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Every `*.yaml` under istio/ except the kustomization, one resource each.
fn load_manifests() -> Vec<Manifest> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(istio_dir())
        .expect("istio/ exists")
        .map(|entry| entry.expect("readable dir entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests in {}",
        istio_dir().display()
    );
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("readable manifest");
            let docs = yaml_documents(&text)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
            assert_eq!(
                docs.len(),
                1,
                "{}: one Kubernetes resource per file, found {}",
                path.display(),
                docs.len()
            );
            Manifest {
                file: path
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                doc: docs.into_iter().next().expect("one document"),
            }
        })
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}
fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}
fn namespace(doc: &Value) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap_or("")
}
fn api_group(doc: &Value) -> &str {
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}
fn is_istio(doc: &Value) -> bool {
    api_group(doc).ends_with("istio.io")
}

fn is_kebab(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn subset_of(wanted: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| have.get(k) == Some(v))
}

// ---------------------------------------------------------------------------
// Istio CRD schemas

/// Problems of Istio resources against Istio's CRD schemas, one string each,
/// starting with the manifest's file name. The schemas are Istio's own (from
/// the npm package `@kubernetes-models/istio`, generated from Istio's
/// `crd-all.gen.yaml`); unknown fields are errors, as `kubectl apply`'s strict
/// field validation makes them (see `tests/istio-crds/validate.mjs`).
fn crd_problems(manifests: &[&Manifest]) -> Vec<String> {
    use std::io::Write as _;
    let checker = istio_crd_checker();
    let input: Vec<Value> = manifests
        .iter()
        .map(|m| json!({"file": m.file, "doc": m.doc}))
        .collect();
    let mut child = Command::new("node")
        .arg(&checker)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run node {} ({e}); run scripts/install-deps.sh test",
                checker.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(serde_json::to_string(&input).expect("json").as_bytes())
        .expect("write manifests to the checker");
    let output = child.wait_with_output().expect("checker finishes");
    assert!(
        output.status.success(),
        "{} failed ({}): {}",
        checker.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{} printed no JSON report ({e}): {}",
            checker.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    });
    report["problems"]
        .as_array()
        .expect("report.problems is an array")
        .iter()
        .map(|p| p.as_str().expect("problem is a string").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// Cross-references: one function per kind of resource (or per concern), each
// listing the broken references it finds, described.

/// A Deployment or StatefulSet and what the checks read of it.
struct Workload<'a> {
    file: &'a str,
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
    /// The whole resource.
    doc: &'a Value,
    pod_labels: BTreeMap<String, String>,
    /// container port name → number
    ports: BTreeMap<String, u64>,
    pod_spec: &'a Value,
}

impl Workload<'_> {
    fn is_app(&self, app: &str) -> bool {
        self.pod_labels.get("app").map(String::as_str) == Some(app)
    }

    fn containers(&self) -> impl Iterator<Item = &Value> {
        self.pod_spec["containers"].as_array().into_iter().flatten()
    }

    fn declares_port(&self, port: u64) -> bool {
        self.ports.values().any(|p| *p == port)
    }
}

fn workloads(manifests: &[Manifest]) -> Vec<Workload<'_>> {
    manifests
        .iter()
        .filter(|m| matches!(kind(&m.doc), "Deployment" | "StatefulSet"))
        .map(|m| {
            let pod_spec = &m.doc["spec"]["template"]["spec"];
            let mut ports = BTreeMap::new();
            for container in pod_spec["containers"].as_array().into_iter().flatten() {
                for port in container["ports"].as_array().into_iter().flatten() {
                    let number = port["containerPort"].as_u64().unwrap_or(0);
                    let port_name = port["name"].as_str().unwrap_or("").to_owned();
                    ports.insert(port_name, number);
                }
            }
            Workload {
                file: &m.file,
                kind: kind(&m.doc),
                namespace: namespace(&m.doc),
                name: name(&m.doc),
                doc: &m.doc,
                pod_labels: labels(&m.doc["spec"]["template"]["metadata"]["labels"]),
                ports,
                pod_spec,
            }
        })
        .collect()
}

/// (namespace, Service name) → the subsets DestinationRules define for it.
type SubsetsByService = BTreeMap<(String, String), BTreeSet<String>>;

/// The manifests, with what several checks need computed once.
struct Mesh<'a> {
    manifests: &'a [Manifest],
    workloads: Vec<Workload<'a>>,
    /// Namespaces created here, and istio-system.
    namespaces: BTreeSet<&'a str>,
    /// The subsets of every DestinationRule whose host names a Service.
    subsets: SubsetsByService,
}

impl<'a> Mesh<'a> {
    fn new(manifests: &'a [Manifest]) -> Self {
        let namespaces = manifests
            .iter()
            .filter(|m| kind(&m.doc) == "Namespace")
            .map(|m| name(&m.doc))
            .chain(["istio-system"])
            .collect();
        let mut mesh = Mesh {
            manifests,
            workloads: workloads(manifests),
            namespaces,
            subsets: BTreeMap::new(),
        };
        let mut subsets = SubsetsByService::new();
        for rule in mesh.of_kind("DestinationRule") {
            let host = rule.doc["spec"]["host"].as_str().unwrap_or("");
            if let Some(service) = mesh.service_for_host(host, namespace(&rule.doc)) {
                let entry = subsets.entry(service_key(service)).or_default();
                for subset in rule.doc["spec"]["subsets"].as_array().into_iter().flatten() {
                    entry.insert(subset["name"].as_str().unwrap_or("").to_owned());
                }
            }
        }
        mesh.subsets = subsets;
        mesh
    }

    fn of_kind<'k>(&self, kind_name: &'k str) -> impl Iterator<Item = &'a Manifest> + 'k
    where
        'a: 'k,
    {
        self.manifests
            .iter()
            .filter(move |m| kind(&m.doc) == kind_name)
    }

    fn find(&self, kind_name: &str, ns: &str, resource: &str) -> Option<&'a Manifest> {
        self.manifests.iter().find(|m| {
            kind(&m.doc) == kind_name && namespace(&m.doc) == ns && name(&m.doc) == resource
        })
    }

    /// The Service an in-mesh host names: `<name>.<namespace>.svc.cluster.local`
    /// (or the short forms relative to `ns`).
    fn service_for_host(&self, host: &str, ns: &str) -> Option<&'a Manifest> {
        let host = host.trim_end_matches(".svc.cluster.local");
        let (svc, svc_ns) = host.split_once('.').unwrap_or((host, ns));
        self.find("Service", svc_ns, svc)
    }

    /// The workloads in `ns` whose pods `selector` matches (none for an
    /// empty selector).
    fn selected(&self, ns: &str, selector: &BTreeMap<String, String>) -> Vec<&Workload<'a>> {
        self.workloads
            .iter()
            .filter(|w| {
                w.namespace == ns && !selector.is_empty() && subset_of(selector, &w.pod_labels)
            })
            .collect()
    }

    /// The workloads behind a Service.
    fn backends(&self, service: &Manifest) -> Vec<&Workload<'a>> {
        self.selected(
            namespace(&service.doc),
            &labels(&service.doc["spec"]["selector"]),
        )
    }

    /// The workloads whose pods are labelled `app: <app>`.
    fn apps<'s>(&'s self, app: &'s str) -> impl Iterator<Item = &'s Workload<'a>> + 's {
        self.workloads.iter().filter(move |w| w.is_app(app))
    }
}

fn service_key(service: &Manifest) -> (String, String) {
    (
        namespace(&service.doc).to_owned(),
        name(&service.doc).to_owned(),
    )
}

fn service_ports(service: &Value) -> Vec<&Value> {
    service["spec"]["ports"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default()
}

fn is_grpc_port(port: &Value) -> bool {
    port["appProtocol"].as_str() == Some("grpc")
        || port["name"]
            .as_str()
            .is_some_and(|n| n == "grpc" || n.starts_with("grpc-"))
}

/// A duration as the push server and Istio write it: `30s`, `500ms`, `2m`.
fn duration_secs(text: &str) -> Option<f64> {
    let text = text.trim().trim_matches('"');
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(s) = text.strip_suffix('s') {
        return s.parse().ok();
    }
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v * 60.0);
    }
    text.parse().ok()
}

/// Whether a duration flag's value ends in a unit (the daemons refuse a bare
/// number).
fn has_unit(duration: &str) -> bool {
    duration
        .trim_end()
        .ends_with(|c: char| c.is_ascii_alphabetic())
}

/// The release policy the WasmPlugin embeds for the push service: its tag
/// header and groups.
fn wasm_release(manifests: &[Manifest]) -> Option<(String, Vec<String>)> {
    let plugin = manifests.iter().find(|m| kind(&m.doc) == "WasmPlugin")?;
    let releases = plugin.doc["spec"]["pluginConfig"]["defaults"]["releases"].as_object()?;
    let policy = releases.values().next()?;
    Some((
        policy["tagHeader"].as_str()?.to_owned(),
        strings(&policy["groups"])
            .into_iter()
            .map(str::to_owned)
            .collect(),
    ))
}

/// Every broken cross-reference, described.
fn cross_reference_problems(manifests: &[Manifest]) -> Vec<String> {
    let mesh = Mesh::new(manifests);
    let checks: [fn(&Mesh) -> Vec<String>; 11] = [
        namespace_problems,
        workload_problems,
        service_problems,
        destination_rule_problems,
        virtual_service_problems,
        release_group_problems,
        wasm_plugin_problems,
        limiter_problems,
        scaling_problems,
        authorization_policy_problems,
        push_server_problems,
    ];
    checks.iter().flat_map(|check| check(&mesh)).collect()
}

/// Every resource but a Namespace lives in istio-system or a namespace
/// created here.
fn namespace_problems(mesh: &Mesh) -> Vec<String> {
    mesh.manifests
        .iter()
        .filter(|m| kind(&m.doc) != "Namespace")
        .filter(|m| !mesh.namespaces.contains(namespace(&m.doc)))
        .map(|m| {
            format!(
                "{}: namespace '{}' is neither istio-system nor created here",
                m.file,
                namespace(&m.doc)
            )
        })
        .collect()
}

/// Workloads: selectors, service accounts, probe ports.
fn workload_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for w in &mesh.workloads {
        let selector = labels(&w.doc["spec"]["selector"]["matchLabels"]);
        if selector.is_empty() || !subset_of(&selector, &w.pod_labels) {
            problems.push(format!(
                "{}: selector {selector:?} does not match its pod labels {:?}",
                w.file, w.pod_labels
            ));
        }
        if let Some(account) = w.pod_spec["serviceAccountName"].as_str() {
            if mesh.find("ServiceAccount", w.namespace, account).is_none() {
                problems.push(format!(
                    "{}: serviceAccountName '{account}' has no ServiceAccount",
                    w.file
                ));
            }
        }
        problems.extend(probe_port_problems(w));
    }
    problems
}

/// Every probe of a workload's containers uses a port they declare.
fn probe_port_problems(w: &Workload) -> Vec<String> {
    let mut problems = Vec::new();
    for container in w.containers() {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                match &container[probe][handler]["port"] {
                    Value::String(port) if !w.ports.contains_key(port) => problems.push(format!(
                        "{}: {probe} uses port '{port}', which the container does not declare",
                        w.file
                    )),
                    Value::Number(n) if !n.as_u64().is_some_and(|n| w.declares_port(n)) => problems
                        .push(format!(
                            "{}: {probe} uses port {n}, which the container does not declare",
                            w.file
                        )),
                    _ => {}
                }
            }
        }
    }
    problems
}

/// Services: selectors and target ports.
fn service_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for service in mesh.of_kind("Service") {
        let backends = mesh.backends(service);
        if backends.is_empty() {
            let selector = labels(&service.doc["spec"]["selector"]);
            problems.push(format!(
                "{}: selector {selector:?} matches no Deployment or StatefulSet",
                service.file
            ));
        }
        for port in service_ports(&service.doc) {
            let target = &port["targetPort"];
            for backend in &backends {
                let ok = match target {
                    Value::String(port_name) => backend.ports.contains_key(port_name),
                    Value::Number(n) => n.as_u64().is_some_and(|n| backend.declares_port(n)),
                    _ => port["port"]
                        .as_u64()
                        .is_some_and(|n| backend.declares_port(n)),
                };
                if !ok {
                    problems.push(format!(
                        "{}: targetPort {target} does not exist in {} {}",
                        service.file, backend.kind, backend.name
                    ));
                }
            }
        }
    }
    problems
}

/// DestinationRules: the host names a Service, each subset's labels match a
/// pod behind it.
fn destination_rule_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for rule in mesh.of_kind("DestinationRule") {
        let host = rule.doc["spec"]["host"].as_str().unwrap_or("");
        let Some(service) = mesh.service_for_host(host, namespace(&rule.doc)) else {
            problems.push(format!("{}: host '{host}' names no Service", rule.file));
            continue;
        };
        let backends = mesh.backends(service);
        for subset in rule.doc["spec"]["subsets"].as_array().into_iter().flatten() {
            let subset_name = subset["name"].as_str().unwrap_or("");
            let subset_labels = labels(&subset["labels"]);
            if !backends
                .iter()
                .any(|w| subset_of(&subset_labels, &w.pod_labels))
            {
                problems.push(format!(
                    "{}: subset '{subset_name}' labels {subset_labels:?} match no pod behind Service {}",
                    rule.file,
                    name(&service.doc)
                ));
            }
        }
    }
    problems
}

/// VirtualServices: gateways, hosts, destinations, subsets, ports, tag header.
fn virtual_service_problems(mesh: &Mesh) -> Vec<String> {
    let release = wasm_release(mesh.manifests);
    let mut problems = Vec::new();
    for vs in mesh.of_kind("VirtualService") {
        let (mesh_ports, host_problems) = virtual_service_hosts(mesh, vs);
        problems.extend(host_problems);
        for route in vs.doc["spec"]["http"].as_array().into_iter().flatten() {
            problems.extend(route_match_problems(
                vs,
                route,
                &mesh_ports,
                release.as_ref(),
            ));
            problems.extend(route_destination_problems(mesh, vs, route));
        }
    }
    problems
}

/// A VirtualService's gateways exist and serve its hosts; in the mesh, its
/// hosts name Services. Returns the ports those Services expose, and the
/// problems.
fn virtual_service_hosts(mesh: &Mesh, vs: &Manifest) -> (Vec<u64>, Vec<String>) {
    let mut problems = Vec::new();
    let ns = namespace(&vs.doc);
    let gateways = strings(&vs.doc["spec"]["gateways"]);
    let in_mesh = gateways.is_empty() || gateways.contains(&"mesh");
    let mut gateway_hosts: BTreeSet<&str> = BTreeSet::new();
    for gateway in gateways.iter().filter(|g| **g != "mesh") {
        let (gw_ns, gw_name) = gateway.split_once('/').unwrap_or((ns, gateway));
        match mesh.find("Gateway", gw_ns, gw_name) {
            Some(gw) => {
                for server in gw.doc["spec"]["servers"].as_array().into_iter().flatten() {
                    gateway_hosts.extend(strings(&server["hosts"]));
                }
            }
            None => problems.push(format!("{}: gateway '{gateway}' does not exist", vs.file)),
        }
    }
    let mut mesh_ports: Vec<u64> = Vec::new();
    for host in strings(&vs.doc["spec"]["hosts"]) {
        if in_mesh {
            match mesh.service_for_host(host, ns) {
                Some(service) => mesh_ports.extend(
                    service_ports(&service.doc)
                        .iter()
                        .filter_map(|p| p["port"].as_u64()),
                ),
                None => problems.push(format!("{}: host '{host}' names no Service", vs.file)),
            }
        } else if !gateway_hosts.contains(host) && !gateway_hosts.contains("*") {
            problems.push(format!(
                "{}: host '{host}' is served by none of its gateways",
                vs.file
            ));
        }
    }
    (mesh_ports, problems)
}

/// A route's matches: ports its hosts expose, and headers that are the
/// release tag with one of its groups.
fn route_match_problems(
    vs: &Manifest,
    route: &Value,
    mesh_ports: &[u64],
    release: Option<&(String, Vec<String>)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let route_name = route["name"].as_str().unwrap_or("?");
    for matcher in route["match"].as_array().into_iter().flatten() {
        if let Some(port) = matcher["port"].as_u64() {
            if !mesh_ports.contains(&port) {
                problems.push(format!(
                    "{}: route '{route_name}' matches port {port}, which its hosts do not expose",
                    vs.file
                ));
            }
        }
        for (header, condition) in matcher["headers"].as_object().into_iter().flatten() {
            let Some((tag_header, groups)) = release else {
                problems.push(format!(
                    "{}: route '{route_name}' matches a header but the WasmPlugin embeds no release policy",
                    vs.file
                ));
                continue;
            };
            if header != tag_header {
                problems.push(format!(
                    "{}: route '{route_name}' matches header '{header}', not the release tag '{tag_header}'",
                    vs.file
                ));
            }
            if let Some(group) = condition["exact"].as_str() {
                if !groups.iter().any(|g| g == group) {
                    problems.push(format!(
                        "{}: route '{route_name}' matches group '{group}', not one of {groups:?}",
                        vs.file
                    ));
                }
            }
        }
    }
    problems
}

/// A route's destinations: a Service, one of its ports, a subset a
/// DestinationRule defines for it.
fn route_destination_problems(mesh: &Mesh, vs: &Manifest, route: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let route_name = route["name"].as_str().unwrap_or("?");
    for destination in route["route"].as_array().into_iter().flatten() {
        let destination = &destination["destination"];
        let host = destination["host"].as_str().unwrap_or("");
        let Some(service) = mesh.service_for_host(host, namespace(&vs.doc)) else {
            problems.push(format!(
                "{}: route '{route_name}' sends to '{host}', which names no Service",
                vs.file
            ));
            continue;
        };
        if let Some(port) = destination["port"]["number"].as_u64() {
            if !service_ports(&service.doc)
                .iter()
                .any(|p| p["port"].as_u64() == Some(port))
            {
                problems.push(format!(
                    "{}: route '{route_name}' sends to port {port}, which Service {} does not expose",
                    vs.file,
                    name(&service.doc)
                ));
            }
        }
        if let Some(subset) = destination["subset"].as_str() {
            if !mesh
                .subsets
                .get(&service_key(service))
                .is_some_and(|s| s.contains(subset))
            {
                problems.push(format!(
                    "{}: route '{route_name}' uses subset '{subset}', which no DestinationRule for {} defines",
                    vs.file,
                    name(&service.doc)
                ));
            }
        }
    }
    problems
}

/// The release groups the WasmPlugin embeds are exactly the push service's
/// subsets.
fn release_group_problems(mesh: &Mesh) -> Vec<String> {
    let Some((_, groups)) = wasm_release(mesh.manifests) else {
        return Vec::new();
    };
    let groups: BTreeSet<String> = groups.into_iter().collect();
    if mesh.subsets.values().any(|subsets| subsets == &groups) {
        return Vec::new();
    }
    vec![format!(
        "wasm plugin: release groups {groups:?} are not the subsets of any DestinationRule ({:?})",
        mesh.subsets
    )]
}

/// WasmPlugin: module pinned, one kind of target, and the control plane's and
/// the limiter's clusters.
fn wasm_plugin_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for plugin in mesh.of_kind("WasmPlugin") {
        let spec = &plugin.doc["spec"];
        let sha = spec["sha256"].as_str().unwrap_or("");
        if sha.len() != 64
            || !sha
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            problems.push(format!(
                "{}: sha256 '{sha}' is not 64 lowercase hex digits",
                plugin.file
            ));
        }
        let url = spec["url"].as_str().unwrap_or("");
        if !["https://", "http://", "oci://", "file://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            problems.push(format!(
                "{}: url '{url}' is not http(s)://, oci:// or file://",
                plugin.file
            ));
        }
        let targets = ["selector", "targetRef", "targetRefs"]
            .iter()
            .filter(|k| !spec[**k].is_null())
            .count();
        if targets > 1 {
            problems.push(format!(
                "{}: only one of selector, targetRef, targetRefs may be set",
                plugin.file
            ));
        }
        let limiter_deployed = mesh.apps("sidestream-limiter").next().is_some();
        for (label, field, service_part) in [
            ("control plane", "controlPlane", "control-plane"),
            ("limiter", "limiter", "limiter"),
        ] {
            let config = &spec["pluginConfig"][field];
            if config.is_null() {
                if field == "limiter" && limiter_deployed {
                    problems.push(format!(
                        "{}: the limiter is deployed but pluginConfig.limiter.cluster does not name it (mesh-scoped policies could only fall back)",
                        plugin.file
                    ));
                }
                continue;
            }
            let cluster = config["cluster"].as_str().unwrap_or("");
            problems.extend(
                plugin_cluster_problems(mesh, cluster, label, service_part)
                    .into_iter()
                    .map(|problem| format!("{}: {problem}", plugin.file)),
            );
        }
    }
    problems
}

/// A cluster the WasmPlugin names (the control plane's or the limiter's) is
/// a gRPC port of the right Service, named as Istio names it:
/// `outbound|<port>||<service>.<namespace>.svc.cluster.local`.
fn plugin_cluster_problems(
    mesh: &Mesh,
    cluster: &str,
    label: &str,
    service_part: &str,
) -> Vec<String> {
    let parts: Vec<&str> = cluster.split('|').collect();
    let ["outbound", port, "", host] = parts.as_slice() else {
        return vec![format!(
            "{label} cluster '{cluster}' is not an Istio cluster name outbound|<port>||<service FQDN>"
        )];
    };
    let port: u64 = port.parse().unwrap_or(0);
    let Some((svc, svc_ns)) = host
        .strip_suffix(".svc.cluster.local")
        .and_then(|h| h.split_once('.'))
    else {
        return vec![format!(
            "{label} cluster host '{host}' is not <service>.<namespace>.svc.cluster.local"
        )];
    };
    let Some(service) = mesh.find("Service", svc_ns, svc) else {
        return vec![format!("{label} cluster '{cluster}' names no Service")];
    };
    let mut problems = Vec::new();
    match service_ports(&service.doc)
        .into_iter()
        .find(|p| p["port"].as_u64() == Some(port))
    {
        Some(p) if is_grpc_port(p) => {}
        Some(_) => problems.push(format!(
            "{label} cluster port {port} of Service {svc} is not declared gRPC (HTTP/2)"
        )),
        None => problems.push(format!(
            "{label} cluster port {port} is not a port of Service {svc}"
        )),
    }
    if !svc.contains(service_part) {
        problems.push(format!(
            "{label} cluster names Service {svc}, not the {label}"
        ));
    }
    problems
}

/// The limiter: ready only while Redis answers, alive while it runs, and a
/// lease with a unit (the daemon refuses a bare number).
fn limiter_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for w in mesh.apps("sidestream-limiter") {
        for container in w.containers() {
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                if container[probe]["httpGet"]["path"].as_str() != Some(path) {
                    problems.push(format!(
                        "{}: the limiter's {probe} is not on {path}",
                        w.file
                    ));
                }
            }
            let lease = strings(&container["args"])
                .into_iter()
                .find_map(|arg| arg.strip_prefix("--lease="));
            if !lease.is_some_and(|l| has_unit(l) && duration_secs(l).is_some()) {
                problems.push(format!(
                    "{}: the limiter's --lease ({lease:?}) must be set, with a unit",
                    w.file
                ));
            }
        }
    }
    problems
}

/// HPAs and PDBs point at something.
fn scaling_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for hpa in mesh.of_kind("HorizontalPodAutoscaler") {
        let target = &hpa.doc["spec"]["scaleTargetRef"];
        let target_kind = target["kind"].as_str().unwrap_or("");
        let target_name = target["name"].as_str().unwrap_or("");
        if mesh
            .find(target_kind, namespace(&hpa.doc), target_name)
            .is_none()
        {
            problems.push(format!(
                "{}: scaleTargetRef {target_kind} '{target_name}' does not exist",
                hpa.file
            ));
        }
        if hpa.doc["spec"]["minReplicas"].as_u64() > hpa.doc["spec"]["maxReplicas"].as_u64() {
            problems.push(format!("{}: minReplicas above maxReplicas", hpa.file));
        }
    }
    for pdb in mesh.of_kind("PodDisruptionBudget") {
        let selector = labels(&pdb.doc["spec"]["selector"]["matchLabels"]);
        if mesh.selected(namespace(&pdb.doc), &selector).is_empty() {
            problems.push(format!(
                "{}: selector {selector:?} matches no workload",
                pdb.file
            ));
        }
    }
    problems
}

/// AuthorizationPolicies: selector, ports, principals.
fn authorization_policy_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for policy in mesh.of_kind("AuthorizationPolicy") {
        let selector = labels(&policy.doc["spec"]["selector"]["matchLabels"]);
        let targets = mesh.selected(namespace(&policy.doc), &selector);
        if targets.is_empty() {
            problems.push(format!(
                "{}: selector {selector:?} matches no workload",
                policy.file
            ));
        }
        for rule in policy.doc["spec"]["rules"].as_array().into_iter().flatten() {
            for to in rule["to"].as_array().into_iter().flatten() {
                for port in strings(&to["operation"]["ports"]) {
                    let port: u64 = port.parse().unwrap_or(0);
                    if !targets.iter().all(|w| w.declares_port(port)) {
                        problems.push(format!(
                            "{}: port {port} is not a container port of the selected workloads",
                            policy.file
                        ));
                    }
                }
            }
            for from in rule["from"].as_array().into_iter().flatten() {
                for principal in strings(&from["source"]["principals"]) {
                    if !principal_exists(mesh, principal) {
                        problems.push(format!(
                            "{}: principal '{principal}' names no ServiceAccount",
                            policy.file
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// Whether a principal `cluster.local/ns/<ns>/sa/<account>` in a namespace
/// created here names a ServiceAccount (others are not ours to check).
fn principal_exists(mesh: &Mesh, principal: &str) -> bool {
    let Some((p_ns, account)) = principal
        .strip_prefix("cluster.local/ns/")
        .and_then(|rest| rest.split_once("/sa/"))
    else {
        return true;
    };
    !mesh.namespaces.contains(p_ns)
        || p_ns == "istio-system"
        || mesh.find("ServiceAccount", p_ns, account).is_some()
}

/// The push servers: health probes, and a grace period longer than every
/// drain (the push server's and the sidecar's).
fn push_server_problems(mesh: &Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for w in mesh.apps("sidestream-push") {
        let grace = w.pod_spec["terminationGracePeriodSeconds"]
            .as_f64()
            .unwrap_or(30.0);
        for container in w.containers() {
            for (probe, path) in [
                ("livenessProbe", "/healthz/live"),
                ("readinessProbe", "/healthz/ready"),
            ] {
                if container[probe]["httpGet"]["path"].as_str() != Some(path) {
                    problems.push(format!("{}: {probe} is not on {path}", w.file));
                }
            }
            let drain = strings(&container["args"]).into_iter().find_map(|arg| {
                arg.strip_prefix("--drain-grace=")
                    .or_else(|| arg.strip_prefix("--drain-timeout="))
            });
            // The push server refuses a duration without a unit.
            match drain.filter(|d| has_unit(d)).and_then(duration_secs) {
                Some(drain) if drain < grace => {}
                _ => problems.push(format!(
                    "{}: the push server's --drain-grace ({drain:?}) must be set, with a unit, and shorter than terminationGracePeriodSeconds {grace}",
                    w.file
                )),
            }
        }
        let proxy_config = w.doc["spec"]["template"]["metadata"]["annotations"]
            ["proxy.istio.io/config"]
            .as_str()
            .and_then(|text| serde_json::from_str::<Value>(text).ok());
        let proxy_drain = proxy_config
            .as_ref()
            .and_then(|c| c["terminationDrainDuration"].as_str())
            .and_then(duration_secs);
        match proxy_drain {
            Some(proxy_drain) if proxy_drain < grace => {}
            other => problems.push(format!(
                "{}: the sidecar's terminationDrainDuration ({other:?} s) must be set and shorter than terminationGracePeriodSeconds {grace}",
                w.file
            )),
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn every_file_is_one_kebab_case_resource_listed_in_the_kustomization() {
    let manifests = load_manifests();
    for m in &manifests {
        let stem = m.file.trim_end_matches(".yaml");
        assert!(is_kebab(stem), "{}: file names are kebab-case", m.file);
        assert!(
            is_kebab(name(&m.doc)),
            "{}: metadata.name '{}' is not kebab-case",
            m.file,
            name(&m.doc)
        );
        assert!(!kind(&m.doc).is_empty(), "{}: no kind", m.file);
    }
    let text = std::fs::read_to_string(istio_dir().join("kustomization.yaml"))
        .expect("istio/kustomization.yaml exists");
    let kustomization: Value = serde_norway::from_str(&text).expect("kustomization is YAML");
    assert_eq!(kustomization["kind"], "Kustomization");
    let listed: BTreeSet<&str> = strings(&kustomization["resources"]).into_iter().collect();
    let files: BTreeSet<&str> = manifests.iter().map(|m| m.file.as_str()).collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml resources must list exactly the manifests in istio/"
    );
    let mut seen = BTreeSet::new();
    for m in &manifests {
        let key = (
            kind(&m.doc).to_owned(),
            namespace(&m.doc).to_owned(),
            name(&m.doc).to_owned(),
        );
        assert!(
            seen.insert(key.clone()),
            "{}: {key:?} is defined twice",
            m.file
        );
    }
}

#[test]
fn istio_resources_validate_against_istio_crd_schemas() {
    let manifests = load_manifests();
    let istio: Vec<&Manifest> = manifests.iter().filter(|m| is_istio(&m.doc)).collect();
    let kinds: BTreeSet<&str> = istio.iter().map(|m| kind(&m.doc)).collect();
    for expected in [
        "WasmPlugin",
        "DestinationRule",
        "VirtualService",
        "Gateway",
        "AuthorizationPolicy",
    ] {
        assert!(kinds.contains(expected), "istio/ has no {expected}");
    }
    let problems = crd_problems(&istio);
    assert!(
        problems.is_empty(),
        "Istio CRD schema violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn crd_validation_rejects_broken_istio_resources() {
    let manifests = load_manifests();
    let by_kind = |k: &str| {
        manifests
            .iter()
            .find(|m| kind(&m.doc) == k)
            .expect("resource of that kind")
            .clone()
    };
    let broken: Vec<(&str, Manifest)> = vec![
        ("unknown field in a VirtualService route", {
            let mut m = by_kind("VirtualService");
            m.doc["spec"]["http"][0]["timeoutt"] = json!("0s");
            m
        }),
        ("failStrategy outside the enum", {
            let mut m = by_kind("WasmPlugin");
            m.doc["spec"]["failStrategy"] = json!("FAIL_SOMETIMES");
            m
        }),
        ("sha256 that is not hex", {
            let mut m = by_kind("WasmPlugin");
            m.doc["spec"]["sha256"] = json!("not-a-checksum");
            m
        }),
        ("subsets as an object", {
            let mut m = by_kind("DestinationRule");
            m.doc["spec"]["subsets"] = json!({"stable": {}});
            m
        }),
        ("unknown apiVersion", {
            let mut m = by_kind("Gateway");
            m.doc["apiVersion"] = json!("networking.istio.io/v9");
            m
        }),
    ];
    // One checker run for all: each broken manifest under a file name of its own.
    let broken: Vec<(&str, Manifest)> = broken
        .into_iter()
        .enumerate()
        .map(|(i, (what, mut m))| {
            m.file = format!("broken-{i}-{}", m.file);
            (what, m)
        })
        .collect();
    let problems = crd_problems(&broken.iter().map(|(_, m)| m).collect::<Vec<_>>());
    for (what, manifest) in &broken {
        let prefix = format!("{}: ", manifest.file);
        assert!(
            problems.iter().any(|p| p.starts_with(&prefix)),
            "CRD validation accepted a manifest with {what}; problems found: {problems:#?}"
        );
    }
}

#[test]
fn kubernetes_resources_validate_against_kubernetes_schemas() {
    let manifests = load_manifests();
    let files: Vec<PathBuf> = manifests
        .iter()
        .filter(|m| !is_istio(&m.doc))
        .map(|m| istio_dir().join(&m.file))
        .collect();
    let output = kubernetes_validate(&files);
    for m in manifests.iter().filter(|m| !is_istio(&m.doc)) {
        assert!(
            output.lines().any(|line| line.starts_with("INFO")
                && line.contains(&m.file)
                && line.contains("passed")),
            "kubernetes-validate did not pass {}:\n{output}",
            m.file
        );
    }
}

#[test]
fn kubernetes_validation_rejects_broken_resources() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = load_manifests();
    let mut deployment = manifests
        .iter()
        .find(|m| kind(&m.doc) == "Deployment")
        .expect("a Deployment")
        .doc
        .clone();
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = json!(45);
    let path = dir.path().join("broken-deployment.yaml");
    std::fs::write(&path, serde_norway::to_string(&deployment).expect("yaml")).expect("write");
    let status = kubernetes_validate_status(&[path]);
    assert!(
        !status.0,
        "kubernetes-validate accepted an unknown field:\n{}",
        status.1
    );
}

/// Runs `kubernetes-validate --strict` and returns its output, failing the
/// test if it fails.
fn kubernetes_validate(files: &[PathBuf]) -> String {
    let (ok, output) = kubernetes_validate_status(files);
    assert!(ok, "kubernetes-validate --strict failed:\n{output}");
    output
}

fn kubernetes_validate_status(files: &[PathBuf]) -> (bool, String) {
    let result = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output();
    let output = match result {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run python3 -m kubernetes_validate ({e}); run scripts/install-deps.sh test"
        ),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "the kubernetes-validate package is missing; run scripts/install-deps.sh test"
    );
    (output.status.success() && !text.contains("ERROR"), text)
}

#[test]
fn cross_references_hold() {
    let manifests = load_manifests();
    let problems = cross_reference_problems(&manifests);
    assert!(
        problems.is_empty(),
        "broken cross-references:\n{}",
        problems.join("\n")
    );
}

fn mutate(manifests: &[Manifest], file: &str, change: impl FnOnce(&mut Value)) -> Vec<Manifest> {
    let mut copy = manifests.to_vec();
    let m = copy
        .iter_mut()
        .find(|m| m.file == file)
        .unwrap_or_else(|| panic!("{file} exists"));
    change(&mut m.doc);
    copy
}

#[test]
fn cross_reference_checks_catch_broken_manifests() {
    let manifests = load_manifests();
    type Change = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, &str, Change, &str)> = vec![
        (
            "service selector",
            "service-push.yaml",
            Box::new(|d| d["spec"]["selector"]["app"] = json!("sidestream-pushh")),
            "matches no",
        ),
        (
            "service targetPort",
            "service-control-plane.yaml",
            Box::new(|d| d["spec"]["ports"][0]["targetPort"] = json!("grpc-cfg")),
            "targetPort",
        ),
        (
            "subset label",
            "destination-rule-push.yaml",
            Box::new(|d| d["spec"]["subsets"][1]["labels"]["version"] = json!("canary-2")),
            "subset 'canary'",
        ),
        (
            "virtual service subset",
            "virtual-service-push.yaml",
            Box::new(|d| d["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("beta")),
            "subset 'beta'",
        ),
        (
            "virtual service port",
            "virtual-service-push-gateway.yaml",
            Box::new(|d| {
                d["spec"]["http"][0]["route"][0]["destination"]["port"]["number"] = json!(18999)
            }),
            "port 18999",
        ),
        (
            "virtual service host",
            "virtual-service-push.yaml",
            Box::new(|d| d["spec"]["hosts"][0] = json!("push.other.svc.cluster.local")),
            "names no Service",
        ),
        (
            "gateway reference",
            "virtual-service-push-gateway.yaml",
            Box::new(|d| d["spec"]["gateways"][0] = json!("sidestream/missing")),
            "does not exist",
        ),
        (
            "tag header",
            "virtual-service-push.yaml",
            Box::new(|d| {
                d["spec"]["http"][0]["match"][0]["headers"] =
                    json!({"x-group": {"exact": "canary"}})
            }),
            "release tag",
        ),
        (
            "control plane cluster",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| {
                d["spec"]["pluginConfig"]["controlPlane"]["cluster"] =
                    json!("sidestream-control-plane")
            }),
            "outbound|",
        ),
        (
            "control plane port",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| {
                d["spec"]["pluginConfig"]["controlPlane"]["cluster"] =
                    json!("outbound|18001||sidestream-control-plane.sidestream.svc.cluster.local")
            }),
            "gRPC",
        ),
        (
            "control plane service",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| {
                d["spec"]["pluginConfig"]["controlPlane"]["cluster"] =
                    json!("outbound|18000||sidestream-cp.sidestream.svc.cluster.local")
            }),
            "names no Service",
        ),
        (
            "limiter port",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| {
                d["spec"]["pluginConfig"]["limiter"]["cluster"] =
                    json!("outbound|18301||sidestream-limiter.sidestream.svc.cluster.local")
            }),
            "limiter cluster port 18301 of Service sidestream-limiter is not declared gRPC",
        ),
        (
            "limiter service",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| {
                d["spec"]["pluginConfig"]["limiter"]["cluster"] =
                    json!("outbound|18300||sidestream-limits.sidestream.svc.cluster.local")
            }),
            "limiter cluster 'outbound|18300||sidestream-limits.sidestream.svc.cluster.local' names no Service",
        ),
        (
            "limiter not named",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| {
                d["spec"]["pluginConfig"]
                    .as_object_mut()
                    .expect("pluginConfig")
                    .remove("limiter");
            }),
            "the limiter is deployed but pluginConfig.limiter.cluster does not name it",
        ),
        (
            "limiter readiness",
            "deployment-limiter.yaml",
            Box::new(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
                    ["path"] = json!("/healthz")
            }),
            "the limiter's readinessProbe is not on /readyz",
        ),
        (
            "limiter lease",
            "deployment-limiter.yaml",
            Box::new(|d| {
                let args = d["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array_mut()
                    .expect("args");
                for arg in args.iter_mut() {
                    if arg.as_str().is_some_and(|a| a.starts_with("--lease=")) {
                        *arg = json!("--lease=15");
                    }
                }
            }),
            "--lease",
        ),
        (
            "limiter service selector",
            "service-limiter.yaml",
            Box::new(|d| d["spec"]["selector"]["app"] = json!("limiter")),
            "matches no",
        ),
        (
            "limiter hpa target",
            "horizontal-pod-autoscaler-limiter.yaml",
            Box::new(|d| d["spec"]["scaleTargetRef"]["name"] = json!("sidestream-limiters")),
            "scaleTargetRef",
        ),
        (
            "limiter pdb selector",
            "pod-disruption-budget-limiter.yaml",
            Box::new(|d| d["spec"]["selector"]["matchLabels"]["app"] = json!("limiter")),
            "matches no workload",
        ),
        (
            "sha256",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| d["spec"]["sha256"] = json!("abc")),
            "sha256",
        ),
        (
            "release groups",
            "wasm-plugin-sidestream.yaml",
            Box::new(|d| {
                d["spec"]["pluginConfig"]["defaults"]["releases"]["push"]["groups"] =
                    json!(["stable", "beta"])
            }),
            "not one of",
        ),
        (
            "hpa target",
            "horizontal-pod-autoscaler-push-canary.yaml",
            Box::new(|d| d["spec"]["scaleTargetRef"]["name"] = json!("sidestream-push-beta")),
            "scaleTargetRef",
        ),
        (
            "pdb selector",
            "pod-disruption-budget-push.yaml",
            Box::new(|d| d["spec"]["selector"]["matchLabels"]["app"] = json!("push")),
            "matches no workload",
        ),
        (
            "probe path",
            "deployment-push-canary.yaml",
            Box::new(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
                    ["path"] = json!("/ready")
            }),
            "/healthz/ready",
        ),
        (
            "probe port",
            "deployment-control-plane.yaml",
            Box::new(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] =
                    json!("admin")
            }),
            "does not declare",
        ),
        (
            "grace period",
            "deployment-push-stable.yaml",
            Box::new(|d| {
                d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(10)
            }),
            "terminationGracePeriodSeconds",
        ),
        (
            "service account",
            "deployment-push-stable.yaml",
            Box::new(|d| d["spec"]["template"]["spec"]["serviceAccountName"] = json!("push")),
            "ServiceAccount",
        ),
        (
            "namespace",
            "service-redis.yaml",
            Box::new(|d| d["metadata"]["namespace"] = json!("default")),
            "namespace 'default'",
        ),
        (
            "authorization principal",
            "authorization-policy-control-plane.yaml",
            Box::new(|d| {
                d["spec"]["rules"][0]["from"][0]["source"]["principals"][1] =
                    json!("cluster.local/ns/sidestream/sa/nobody")
            }),
            "principal",
        ),
    ];
    for (what, file, change, expected) in cases {
        let broken = mutate(&manifests, file, change);
        let problems = cross_reference_problems(&broken);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "breaking the {what} in {file} was not reported (expected a problem containing '{expected}'); got:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn wasm_plugin_carries_the_bootstrap_settings() {
    let manifests = load_manifests();
    let plugin = manifests
        .iter()
        .find(|m| kind(&m.doc) == "WasmPlugin")
        .expect("a WasmPlugin");
    let spec = &plugin.doc["spec"];
    assert_eq!(spec["type"], "HTTP");
    assert!(spec["phase"].is_string(), "phase is chosen explicitly");
    assert!(
        spec["failStrategy"].is_string(),
        "failStrategy is chosen explicitly"
    );
    let config = &spec["pluginConfig"];
    assert!(
        config["nodeId"].as_str().is_some_and(|s| !s.is_empty()),
        "nodeId set"
    );
    assert!(matches!(
        config["failMode"].as_str(),
        Some("open" | "closed")
    ));
    for key in ["trace", "releases", "streamLimits", "topics"] {
        assert!(
            !config["defaults"][key].is_null(),
            "pluginConfig.defaults.{key} is set"
        );
    }
    let cp = &config["controlPlane"];
    for key in ["timeoutMs", "initialBackoffMs", "maxBackoffMs"] {
        assert!(
            cp[key].is_u64(),
            "controlPlane.{key} is a non-negative integer"
        );
    }
    assert!(cp["initialBackoffMs"].as_u64() <= cp["maxBackoffMs"].as_u64());
    // The filter accepts it: the same parser and validation its on_configure runs.
    let bytes = serde_json::to_vec(config).expect("JSON");
    let bootstrap =
        sidestream_core::config::FilterBootstrap::from_json(&bytes).unwrap_or_else(|e| {
            panic!("the WasmPlugin's pluginConfig is not a valid filter bootstrap: {e}")
        });
    let control_plane = bootstrap.control_plane.expect("controlPlane is set");
    assert_eq!(
        control_plane.cluster,
        cp["cluster"].as_str().expect("cluster")
    );
    let limiter = bootstrap.limiter.expect("limiter is set");
    assert_eq!(
        limiter.cluster,
        config["limiter"]["cluster"]
            .as_str()
            .expect("limiter cluster")
    );
    assert!(
        !bootstrap.defaults.releases.is_empty(),
        "an embedded release policy"
    );
    assert!(
        !bootstrap.defaults.stream_limits.is_empty(),
        "an embedded stream limit"
    );
}
