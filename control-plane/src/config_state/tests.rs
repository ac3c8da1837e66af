use super::*;

const TOPIC_KEY: &str = "v1/topics/ticker";

fn put(key: &str, value: &str, revision: i64) -> Change {
    Change::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        mod_revision: revision,
    }
}

fn topic_history(state: &ConfigState, name: &str) -> Option<usize> {
    state.snapshot().topics.get(name).map(|t| t.history_size)
}

#[test]
fn a_valid_value_becomes_part_of_the_snapshot() {
    let mut state = ConfigState::new();
    let report = state.apply_batch(5, vec![put(TOPIC_KEY, r#"{"historySize": 7}"#, 5)], 0);
    assert!(report.changed);
    assert!(report.rejections.is_empty());
    assert_eq!(topic_history(&state, "ticker"), Some(7));
    assert_eq!(state.revision(), 5);
}

#[test]
fn an_invalid_value_is_rejected_and_the_last_good_one_kept() {
    let mut state = ConfigState::new();
    state.apply_batch(5, vec![put(TOPIC_KEY, r#"{"historySize": 7}"#, 5)], 0);
    let report = state.apply_batch(6, vec![put(TOPIC_KEY, r#"{"historySize": -3}"#, 6)], 99);
    assert!(!report.changed);
    assert_eq!(report.rejections.len(), 1);
    let rejection = &report.rejections[0];
    assert_eq!(rejection.key, TOPIC_KEY);
    assert_eq!(rejection.revision, 6);
    assert!(
        rejection.reason.contains("historySize"),
        "{}",
        rejection.reason
    );
    assert_eq!(
        topic_history(&state, "ticker"),
        Some(7),
        "last good value kept"
    );
    assert_eq!(state.rejections().len(), 1);
    // Not JSON at all.
    let report = state.apply_batch(7, vec![put(TOPIC_KEY, "{oops", 7)], 100);
    assert_eq!(report.rejections.len(), 1);
    assert_eq!(state.rejections()[0].revision, 7);
    // A good value clears the rejection.
    let report = state.apply_batch(8, vec![put(TOPIC_KEY, r#"{"historySize": 9}"#, 8)], 0);
    assert!(report.changed);
    assert!(state.rejections().is_empty());
    assert_eq!(topic_history(&state, "ticker"), Some(9));
}

#[test]
fn a_rejected_first_value_leaves_the_key_out() {
    let mut state = ConfigState::new();
    let report = state.apply_batch(3, vec![put("v1/releases/push", r#"{"groups": []}"#, 3)], 0);
    assert_eq!(report.rejections.len(), 1);
    assert!(!report.changed);
    assert!(state.snapshot().releases.is_empty());
}

#[test]
fn unknown_keys_are_reported_not_fatal() {
    let mut state = ConfigState::new();
    let report = state.apply_batch(
        4,
        vec![
            put("v2/whatever", "{}", 4),
            put("v1/bogus/x", "{}", 4),
            put(TOPIC_KEY, "{}", 4),
        ],
        0,
    );
    assert_eq!(report.unknown.len(), 2);
    assert!(report.changed);
    assert_eq!(state.unknown_keys().len(), 2);
    // Seen again in a full read: not reported again.
    let report = state.replace_all(
        4,
        vec![
            ("v2/whatever".into(), b"{}".to_vec(), 4),
            ("v1/bogus/x".into(), b"{}".to_vec(), 4),
            (TOPIC_KEY.into(), b"{}".to_vec(), 4),
        ],
        0,
    );
    assert!(report.unknown.is_empty());
    assert!(!report.changed);
}

#[test]
fn a_delete_removes_the_item() {
    let mut state = ConfigState::new();
    state.apply_batch(5, vec![put(TOPIC_KEY, "{}", 5)], 0);
    let report = state.apply_batch(
        6,
        vec![Change::Delete {
            key: TOPIC_KEY.into(),
            revision: 6,
        }],
        0,
    );
    assert!(report.changed);
    assert_eq!(topic_history(&state, "ticker"), None);
}

#[test]
fn a_full_read_reuses_unchanged_items_and_drops_missing_ones() {
    let mut state = ConfigState::new();
    state.apply_batch(
        5,
        vec![
            put(TOPIC_KEY, r#"{"historySize": 7}"#, 5),
            put("v1/topics/news", "{}", 5),
            put("v1/topics/bad", r#"{"historySize": -1}"#, 5),
        ],
        0,
    );
    let before = state.snapshot();
    // Same keys, same revisions: nothing changes, the rejection is not reported twice.
    let report = state.replace_all(
        9,
        vec![
            (TOPIC_KEY.into(), br#"{"historySize": 7}"#.to_vec(), 5),
            ("v1/topics/news".into(), b"{}".to_vec(), 5),
            (
                "v1/topics/bad".into(),
                br#"{"historySize": -1}"#.to_vec(),
                5,
            ),
        ],
        0,
    );
    assert_eq!(report, ApplyReport::default());
    assert_eq!(state.snapshot(), before);
    assert_eq!(state.revision(), 9);
    // "news" is gone and "ticker" changed while the watch was away.
    let report = state.replace_all(
        12,
        vec![(TOPIC_KEY.into(), br#"{"historySize": 8}"#.to_vec(), 11)],
        0,
    );
    assert!(report.changed);
    assert_eq!(topic_history(&state, "ticker"), Some(8));
    assert_eq!(topic_history(&state, "news"), None);
    assert!(
        state.rejections().is_empty(),
        "the rejected key is gone too"
    );
}

#[test]
fn the_same_content_written_again_is_no_change() {
    let mut state = ConfigState::new();
    state.apply_batch(5, vec![put(TOPIC_KEY, r#"{"historySize": 7}"#, 5)], 0);
    let report = state.apply_batch(6, vec![put(TOPIC_KEY, r#"{ "historySize" : 7 }"#, 6)], 0);
    assert!(!report.changed);
    assert_eq!(state.good_revision(TOPIC_KEY), Some(6));
}
