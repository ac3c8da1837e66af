//! Keeps docs/config.md and docs/schema/*.json true.
//!
//! - The JSON Schemas in docs/schema/ are exactly what `config::schema` generates.
//! - The generated parts of docs/config.md (between `<!-- generated:NAME -->`
//!   and `<!-- /generated -->`) are exactly what this file generates from the
//!   schemas.
//! - Every ```json / ```yaml block in docs/config.md is marked with an
//!   `<!-- example: ... -->` line saying what it is, and parses and validates
//!   as that (or, for `invalid-document`, fails with exactly the message in the
//!   ```text block that follows).
//!
//! `SIDESTREAM_BLESS=1 cargo test -p sidestream-core --test docs` rewrites the
//! generated files and parts instead of comparing them.

// A test file: failing loudly is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sidestream_core::config::{
    documents_from_value, key_for, parse_spec_value, schema, FilterBootstrap, Kind, Snapshot,
};

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn blessing() -> bool {
    std::env::var("SIDESTREAM_BLESS").is_ok_and(|v| v == "1")
}

/// Objects with keys sorted, whatever serde_json's map flavour.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn schema_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(schema)).unwrap();
    text.push('\n');
    text
}

#[test]
fn schema_files_are_current() {
    let dir = docs_dir().join("schema");
    let mut stale = Vec::new();
    for (name, schema) in schema::all() {
        let path = dir.join(name);
        let expected = schema_text(&schema);
        if blessing() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &expected).unwrap();
            continue;
        }
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        if found != expected {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "docs/schema/{stale:?} differ from the generated schemas; run \
         SIDESTREAM_BLESS=1 cargo test -p sidestream-core --test docs"
    );
}

// ---- field tables -------------------------------------------------------

struct Row {
    path: String,
    ty: String,
    default: String,
    description: String,
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.trim_start_matches("#/$defs/");
            root.get("$defs")
                .and_then(|d| d.get(name))
                .map_or(node, |target| resolve(root, target))
        }
        None => node,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The variants of an internally tagged enum: (tag field, tag value, variant).
fn tagged_variants<'a>(root: &'a Value, node: &'a Value) -> Vec<(String, String, &'a Value)> {
    let Some(variants) = node.get("oneOf").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in variants {
        let v = resolve(root, v);
        let Some(props) = v.get("properties").and_then(Value::as_object) else {
            return Vec::new();
        };
        let Some((tag, value)) = props
            .iter()
            .find_map(|(k, p)| p.get("const").and_then(Value::as_str).map(|c| (k, c)))
        else {
            return Vec::new();
        };
        out.push((tag.clone(), value.to_owned(), v));
    }
    out
}

/// Kinds documented in their own section: shown by name, not expanded.
const OWN_SECTION: [&str; 5] = [
    "RawTraceSettings",
    "RawReleasePolicy",
    "RawStreamLimitPolicy",
    "RawTopicSettings",
    "RawSnapshot",
];

fn own_section(node: &Value) -> Option<&str> {
    let name = node.get("$ref")?.as_str()?.trim_start_matches("#/$defs/");
    OWN_SECTION
        .contains(&name)
        .then(|| name.trim_start_matches("Raw"))
}

fn range(node: &Value) -> String {
    let bound = |key: &str| {
        node.get(key)
            .map(|v| v.to_string().trim_end_matches(".0").to_owned())
    };
    match (bound("minimum"), bound("maximum")) {
        (Some(min), Some(max)) => format!(", {min}..={max}"),
        (Some(min), None) => format!(", ≥ {min}"),
        (None, Some(max)) => format!(", ≤ {max}"),
        (None, None) => String::new(),
    }
}

fn type_name(root: &Value, node: &Value) -> String {
    if let Some(name) = own_section(node) {
        return format!("{name} (see its section)");
    }
    if let Some(any) = node.get("anyOf").and_then(Value::as_array) {
        let parts: Vec<String> = any
            .iter()
            .map(|n| {
                if n.get("type").and_then(Value::as_str) == Some("null") {
                    "null".to_owned()
                } else {
                    type_name(root, n)
                }
            })
            .collect();
        return parts.join(" or ");
    }
    let resolved = resolve(root, node);
    if let Some(c) = resolved.get("const") {
        return format!("`{c}`");
    }
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
        return names.join(" \\| ");
    }
    if let Some(variants) = resolved.get("oneOf").and_then(Value::as_array) {
        if variants.iter().all(|v| v.get("const").is_some()) {
            let names: Vec<String> = variants
                .iter()
                .map(|v| format!("`{}`", v["const"]))
                .collect();
            return names.join(" \\| ");
        }
        let tagged = tagged_variants(root, resolved);
        if !tagged.is_empty() {
            return format!("object by `{}`", tagged[0].0);
        }
    }
    let types: Vec<&str> = match resolved.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec!["any"],
    };
    let mut out = Vec::new();
    for t in types {
        match t {
            "array" => {
                let items = resolved
                    .get("items")
                    .map_or("any".to_owned(), |i| type_name(root, i));
                out.push(format!("array of {items}"));
            }
            "object"
                if resolved
                    .get("additionalProperties")
                    .is_some_and(Value::is_object) =>
            {
                let values = type_name(root, &resolved["additionalProperties"]);
                out.push(format!("map of name → {values}"));
            }
            "integer" | "number" => out.push(format!("{t}{}", range(resolved))),
            other => out.push(other.to_owned()),
        }
    }
    out.join(" or ")
}

fn rows(root: &Value, node: &Value, prefix: &str, out: &mut Vec<Row>) {
    let node = resolve(root, node);
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut names: Vec<&String> = props.keys().collect();
    names.sort();
    for name in names {
        let prop = &props[name];
        if prop.get("const").is_some() {
            continue; // a variant's tag, shown in the path
        }
        let path = format!("{prefix}{name}");
        let default = match prop.get("default") {
            Some(d) => format!("`{}`", sorted(d)),
            None if required.contains(&name.as_str()) => "required".to_owned(),
            None => "`null`".to_owned(),
        };
        let description = prop
            .get("description")
            .or_else(|| resolve(root, prop).get("description"))
            .and_then(Value::as_str)
            .map(one_line)
            .unwrap_or_default();
        out.push(Row {
            path: path.clone(),
            ty: type_name(root, prop),
            default,
            description,
        });
        // Nested objects, arrays of objects, tagged variants; maps stop here.
        let inner = match prop.get("anyOf").and_then(Value::as_array) {
            Some(any) => any
                .iter()
                .find(|n| n.get("type").and_then(Value::as_str) != Some("null"))
                .unwrap_or(prop),
            None => prop,
        };
        if own_section(inner).is_some() {
            continue;
        }
        let resolved = resolve(root, inner);
        let (target, child) = if resolved.get("type").and_then(Value::as_str) == Some("array") {
            match resolved.get("items") {
                Some(items) => (resolve(root, items), format!("{path}[]")),
                None => continue,
            }
        } else {
            (resolved, path.clone())
        };
        if target
            .get("additionalProperties")
            .is_some_and(Value::is_object)
        {
            continue;
        }
        let tagged = tagged_variants(root, target);
        if tagged.is_empty() {
            rows(root, target, &format!("{child}."), out);
        } else {
            for (tag, value, variant) in tagged {
                let base = child.trim_end_matches("[]");
                out.push(Row {
                    path: format!("{base}[{tag}={value}]"),
                    ty: format!("`{tag}`: `\"{value}\"`"),
                    default: String::new(),
                    description: variant
                        .get("description")
                        .and_then(Value::as_str)
                        .map(one_line)
                        .unwrap_or_default(),
                });
                rows(root, variant, &format!("{base}[{tag}={value}]."), out);
            }
        }
    }
}

fn field_table(schema: &Value) -> String {
    let mut out = Vec::new();
    rows(schema, schema, "", &mut out);
    let mut text =
        String::from("| field | type | default | meaning |\n| --- | --- | --- | --- |\n");
    for row in out {
        text.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            row.path, row.ty, row.default, row.description
        ));
    }
    text
}

fn key_table() -> String {
    let mut text = String::from(
        "| kind (document `kind`) | etcd key (under the prefix) | CLI aliases |\n| --- | --- | --- |\n",
    );
    for kind in Kind::ALL {
        let key = if kind.is_singleton() {
            key_for(kind, "")
        } else {
            key_for(kind, "<name>")
        };
        let aliases: Vec<String> = [
            kind.key_segment().to_owned(),
            kind.key_segment().trim_end_matches('s').to_owned(),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|a| format!("`{a}`"))
        .collect();
        text.push_str(&format!(
            "| `{}` | `<prefix>/{key}` | {} |\n",
            kind.document_kind(),
            aliases.join(", ")
        ));
    }
    text
}

fn generated(name: &str) -> Option<String> {
    Some(match name {
        "keys" => key_table(),
        "trace-settings" => field_table(&schema::for_kind(Kind::Trace)),
        "release-policy" => field_table(&schema::for_kind(Kind::Release)),
        "stream-limit-policy" => field_table(&schema::for_kind(Kind::StreamLimit)),
        "topic-settings" => field_table(&schema::for_kind(Kind::Topic)),
        "snapshot" => field_table(&schema::snapshot()),
        "filter-bootstrap" => field_table(&schema::bootstrap()),
        _ => return None,
    })
}

const BEGIN: &str = "<!-- generated:";
const END: &str = "<!-- /generated -->";

/// config.md with every generated part regenerated; the names seen.
fn regenerate(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after_marker = &rest[start..];
        let line_end = after_marker.find('\n').unwrap() + 1;
        let name = after_marker[BEGIN.len()..]
            .split(' ')
            .next()
            .unwrap()
            .trim_end_matches("-->")
            .to_owned();
        let body_start = start + line_end;
        let end = rest[body_start..]
            .find(END)
            .unwrap_or_else(|| panic!("generated:{name} has no end marker"))
            + body_start;
        let body = generated(&name).unwrap_or_else(|| panic!("unknown generated part {name}"));
        out.push_str(&rest[..body_start]);
        out.push_str(&body);
        names.push(name);
        rest = &rest[end..];
    }
    out.push_str(rest);
    (out, names)
}

#[test]
fn config_md_generated_parts_are_current() {
    let path = docs_dir().join("config.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (fresh, names) = regenerate(&text);
    for required in [
        "keys",
        "trace-settings",
        "release-policy",
        "stream-limit-policy",
        "topic-settings",
        "snapshot",
        "filter-bootstrap",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "config.md lacks generated:{required}"
        );
    }
    if blessing() {
        std::fs::write(&path, fresh).unwrap();
        return;
    }
    assert!(
        fresh == text,
        "docs/config.md's generated parts are stale; run \
         SIDESTREAM_BLESS=1 cargo test -p sidestream-core --test docs"
    );
}

// ---- examples -----------------------------------------------------------

struct Block {
    line: usize,
    lang: String,
    marker: Option<String>,
    body: String,
}

fn code_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```") {
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            let marker = lines[..start]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| l.trim().strip_prefix("<!-- example:"))
                .map(|m| m.trim_end_matches("-->").trim().to_owned());
            blocks.push(Block {
                line: start + 1,
                lang: lang.trim().to_owned(),
                marker,
                body,
            });
        }
        i += 1;
    }
    blocks
}

fn parse_block(block: &Block) -> Value {
    match block.lang.as_str() {
        "json" => serde_json::from_str(&block.body)
            .unwrap_or_else(|e| panic!("config.md line {}: bad JSON: {e}", block.line)),
        "yaml" => serde_norway::from_str(&block.body)
            .unwrap_or_else(|e| panic!("config.md line {}: bad YAML: {e}", block.line)),
        other => panic!("config.md line {}: example in {other}", block.line),
    }
}

fn validate_documents(value: Value, line: usize) -> Result<usize, String> {
    let docs = documents_from_value(value).map_err(|e| e.to_string())?;
    for doc in &docs {
        doc.validate().map_err(|e| e.to_string())?;
    }
    assert!(!docs.is_empty(), "config.md line {line}: no documents");
    Ok(docs.len())
}

#[test]
fn config_md_examples_validate() {
    let text = std::fs::read_to_string(docs_dir().join("config.md")).unwrap();
    let blocks = code_blocks(&text);
    let mut checked = 0;
    let mut i = 0;
    while i < blocks.len() {
        let block = &blocks[i];
        i += 1;
        if !matches!(block.lang.as_str(), "json" | "yaml") {
            continue;
        }
        let marker = block.marker.clone().unwrap_or_else(|| {
            panic!(
                "config.md line {}: {} block without an `<!-- example: ... -->` marker",
                block.line, block.lang
            )
        });
        let value = parse_block(block);
        let line = block.line;
        let mut words = marker.split_whitespace();
        match (words.next(), words.next()) {
            (Some("document"), None) => {
                validate_documents(value, line)
                    .unwrap_or_else(|e| panic!("config.md line {line}: {e}"));
            }
            (Some("spec"), Some(kind)) => {
                let kind = Kind::parse(kind).unwrap_or_else(|| panic!("line {line}: kind {kind}"));
                let name = if kind.is_singleton() {
                    "default"
                } else {
                    "example"
                };
                parse_spec_value(kind, name, value)
                    .unwrap_or_else(|e| panic!("config.md line {line}: {e}"));
            }
            (Some("snapshot"), None) => {
                Snapshot::from_json(&serde_json::to_vec(&value).unwrap())
                    .unwrap_or_else(|e| panic!("config.md line {line}: {e}"));
            }
            (Some("bootstrap"), None) => {
                FilterBootstrap::from_json(&serde_json::to_vec(&value).unwrap())
                    .unwrap_or_else(|e| panic!("config.md line {line}: {e}"));
            }
            (Some("invalid-document"), None) => {
                let error = validate_documents(value, line)
                    .err()
                    .unwrap_or_else(|| panic!("config.md line {line}: invalid example validates"));
                let expected = blocks
                    .get(i)
                    .filter(|b| b.lang == "text")
                    .unwrap_or_else(|| {
                        panic!("config.md line {line}: no ```text block with the error")
                    });
                i += 1;
                assert_eq!(error, expected.body.trim_end(), "config.md line {line}");
            }
            _ => panic!("config.md line {line}: unknown marker `{marker}`"),
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} examples checked");
}
