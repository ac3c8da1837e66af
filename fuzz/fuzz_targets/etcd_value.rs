//! etcd values in the control plane: puts and deletes of any keys and values
//! through `ConfigState` (key classification, validation, last good value).
//! Input: sections `@put <key>` (the lines after it are the value, to the
//! next `@` line) and `@delete <key>`, keys relative to the prefix
//! (`v1/releases/checkout`). Whatever is applied, the snapshot holds only
//! valid items and survives the JSON the data planes receive.
#![no_main]

#[path = "../common/text.rs"]
mod text;

use libfuzzer_sys::fuzz_target;
use sidestream_control_plane::config_state::ConfigState;
use sidestream_control_plane::watch::Change;
use sidestream_core::config::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let mut state = ConfigState::new();
    let mut revision = 1i64;
    for (head, value) in text::sections(input, "@").into_iter().take(16) {
        revision += 1;
        let (op, key) = head.split_once(' ').unwrap_or((head, ""));
        let change = match op {
            "put" => Change::Put {
                key: key.to_owned(),
                value: value.as_bytes().to_vec(),
                mod_revision: revision,
            },
            "delete" => Change::Delete {
                key: key.to_owned(),
                revision,
            },
            _ => continue,
        };
        let report = state.apply_batch(revision, vec![change], 1_000);
        for rejection in &report.rejections {
            assert!(!rejection.reason.is_empty());
            assert_eq!(
                state.good_revision(&rejection.key),
                rejection.serving_revision
            );
        }
        assert_eq!(state.revision(), revision);
    }
    let snapshot = state.snapshot();
    let json = snapshot.to_json();
    match Snapshot::from_json(&json) {
        Ok(again) => assert_eq!(again, snapshot),
        Err(error) => panic!(
            "snapshot {} is refused: {error}",
            String::from_utf8_lossy(&json)
        ),
    }
});
