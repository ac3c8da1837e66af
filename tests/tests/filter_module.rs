//! The shipped filter module exports exactly what filter/exports.txt lists:
//! Envoy enters the VM only for callbacks a module exports, so a callback the
//! filter does not use (response body chunks, trailers, gRPC metadata) must not
//! be there. scripts/build-filter.sh trims cargo's module to that list and keeps
//! the untrimmed one beside it.
//!
//! Needs the filter built first (`make filter`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::BTreeSet;
use std::path::Path;

use sidestream_tests::{filter_wasm, workspace_root};
use wasmparser::{KnownCustom, Name, Parser, Payload};

/// What filter/exports.txt lists (comments and blank lines skipped): the
/// shipped export name and the module symbol it is (`NAME = SYMBOL`, or the
/// same name twice).
fn listed() -> Vec<(String, String)> {
    let path = workspace_root().join("filter/exports.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once('=') {
            Some((name, symbol)) => (name.trim().to_owned(), symbol.trim().to_owned()),
            None => (line.to_owned(), line.to_owned()),
        })
        .collect()
}

/// The export names filter/exports.txt lists.
fn listed_exports() -> BTreeSet<String> {
    listed().into_iter().map(|(name, _)| name).collect()
}

/// The export names of the Wasm module at `path`.
fn module_exports(path: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let mut names = BTreeSet::new();
    for payload in Parser::new(0).parse_all(&bytes) {
        let payload = payload.unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        if let Payload::ExportSection(reader) = payload {
            for export in reader {
                let export = export.unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                assert!(
                    names.insert(export.name.to_owned()),
                    "{}: export '{}' twice",
                    path.display(),
                    export.name
                );
            }
        }
    }
    names
}

#[test]
fn shipped_module_exports_exactly_the_listed_set() {
    let listed = listed_exports();
    let shipped = module_exports(&filter_wasm().expect("filter module"));
    assert_eq!(
        shipped, listed,
        "the shipped module's exports differ from filter/exports.txt (rebuild with scripts/build-filter.sh)"
    );
    // The callbacks the trim exists for: Envoy would enter the VM for each.
    for unused in [
        "proxy_on_request_body",
        "proxy_on_response_body",
        "proxy_on_request_trailers",
        "proxy_on_response_trailers",
        "proxy_on_log",
        "proxy_on_delete",
        "proxy_on_grpc_receive_initial_metadata",
        "proxy_on_grpc_receive_trailing_metadata",
    ] {
        assert!(
            !shipped.contains(unused),
            "the shipped module exports {unused}"
        );
    }
}

#[test]
fn listed_exports_are_all_the_sdks_own() {
    // A misspelt name in the list would silently keep nothing: every listed
    // symbol is an export of cargo's untrimmed module (the SDK's, and
    // filter/src/stream_end.rs's), and the trim removed some.
    let shipped = filter_wasm().expect("filter module");
    let untrimmed_path = shipped.with_file_name("sidestream_filter.untrimmed.wasm");
    let untrimmed = module_exports(&untrimmed_path);
    let symbols: BTreeSet<String> = listed().into_iter().map(|(_, symbol)| symbol).collect();
    let unknown: Vec<&String> = symbols.difference(&untrimmed).collect();
    assert!(
        unknown.is_empty(),
        "filter/exports.txt lists exports the SDK's module does not have: {unknown:?}"
    );
    assert!(
        untrimmed.contains("proxy_on_response_body"),
        "the untrimmed module lacks the SDK's proxy_on_response_body: {untrimmed:?}"
    );
}

#[test]
fn the_shipped_proxy_on_done_is_the_one_that_also_deletes_the_context() {
    // filter/src/stream_end.rs: Envoy calls proxy_on_done then proxy_on_delete;
    // the module's proxy_on_done is sidestream_on_done, which runs the SDK's
    // two in one VM entry, and the SDK's proxy_on_delete is not exported.
    let path = filter_wasm().expect("filter module");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let mut done = None;
    let mut names = std::collections::HashMap::new();
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.unwrap_or_else(|error| panic!("{}: {error}", path.display())) {
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.expect("export");
                    if export.name == "proxy_on_done" {
                        done = Some(export.index);
                    }
                }
            }
            Payload::CustomSection(section) => {
                if let KnownCustom::Name(reader) = section.as_known() {
                    for subsection in reader {
                        if let Name::Function(map) = subsection.expect("name subsection") {
                            for naming in map {
                                let naming = naming.expect("function name");
                                names.insert(naming.index, naming.name.to_owned());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let done = done.expect("the module exports proxy_on_done");
    assert_eq!(
        names.get(&done).map(String::as_str),
        Some("sidestream_on_done"),
        "the shipped proxy_on_done is not filter/src/stream_end.rs's (function {done})"
    );
    assert!(!listed_exports().contains("proxy_on_delete"));
}
