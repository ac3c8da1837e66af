//! One etcd value or document spec, any bytes, through `parse_spec`. Input:
//! a first line `<kind> [<name>]` (a kind's document name, key segment or
//! alias; anything else picks a kind by its length), then the spec. A spec
//! that validates has a canonical form (`Item::to_spec`) that validates to
//! the same item.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream_core::config::{parse_spec, parse_spec_value, Kind};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (first, spec) = data.split_at(split);
    let spec = spec.get(1..).unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let (kind, name) = first.split_once(' ').unwrap_or((&first, ""));
    let kind = Kind::parse(kind).unwrap_or(Kind::ALL[kind.len() % Kind::ALL.len()]);
    let name = match (name, kind.is_singleton()) {
        ("", true) => "default",
        ("", false) => "fuzz",
        (name, _) => name,
    };
    let Ok(item) = parse_spec(kind, name, spec) else {
        return;
    };
    assert_eq!(item.kind(), kind);
    let canonical = item.to_spec();
    match parse_spec_value(kind, name, canonical.clone()) {
        Ok(again) => assert_eq!(again, item, "canonical {canonical}"),
        Err(error) => panic!("canonical spec {canonical} is refused: {error}"),
    }
});
