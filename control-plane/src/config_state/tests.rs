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

mod history_walk {
    use super::*;
    use crate::config_state::history::{HistoryRead, HistoryWalk, WalkStep, HISTORY_STEPS};
    use sidestream_core::config::Kind;

    const RELEASE_KEY: &str = "v1/releases/push";
    const GOOD_RELEASE: &str = r#"{"groups": ["stable", "canary"], "defaultGroup": "canary"}"#;
    const BAD_RELEASE: &str = r#"{"groups": []}"#;

    fn value(text: &str, mod_revision: i64, create_revision: i64) -> HistoryRead {
        HistoryRead::Value {
            value: text.as_bytes().to_vec(),
            mod_revision,
            create_revision,
        }
    }

    fn walk(mod_revision: i64, create_revision: i64, max_steps: usize) -> Option<HistoryWalk> {
        HistoryWalk::new(
            RELEASE_KEY.to_owned(),
            Kind::Release,
            "push".to_owned(),
            mod_revision,
            create_revision,
            max_steps,
        )
    }

    /// Feeds `reads` (revision expected, answer) and returns the last step.
    fn run(walk: &mut HistoryWalk, reads: Vec<(i64, HistoryRead)>) -> WalkStep {
        let mut last = WalkStep::Continue;
        for (expected, read) in reads {
            assert_eq!(walk.next_revision(), Some(expected));
            last = walk.on_read(read);
        }
        last
    }

    #[test]
    fn walks_back_past_invalid_values_to_the_most_recent_valid_one() {
        let mut walk = walk(20, 3, HISTORY_STEPS).expect("a previous version exists");
        assert_eq!(walk.rejected_revision(), 20);
        let step = run(
            &mut walk,
            vec![
                (19, value(BAD_RELEASE, 15, 3)),
                (14, value("{oops", 9, 3)),
                (8, value(GOOD_RELEASE, 6, 3)),
            ],
        );
        let WalkStep::Recovered(found) = step else {
            panic!("expected a recovered value, got {step:?}");
        };
        assert_eq!(found.key, RELEASE_KEY);
        assert_eq!(found.mod_revision, 6);
        assert_eq!(found.rejected_revision, 20);
        assert_eq!(found.value, GOOD_RELEASE.as_bytes());
        assert_eq!(walk.next_revision(), None, "the walk is over");
    }

    #[test]
    fn stops_at_creation_compaction_absence_and_the_step_bound() {
        // Created with the rejected value: nothing to walk.
        assert!(walk(7, 7, HISTORY_STEPS).is_none());
        assert!(walk(7, 3, 0).is_none());
        // Back to the creation without a valid value.
        let mut w = walk(9, 3, HISTORY_STEPS).expect("walk");
        assert!(
            matches!(run(&mut w, vec![(8, value(BAD_RELEASE, 3, 3))]), WalkStep::GaveUp(r) if r.contains("created at revision 3"))
        );
        assert_eq!(w.next_revision(), None);
        // Compacted.
        let mut w = walk(9, 3, HISTORY_STEPS).expect("walk");
        assert!(matches!(
            run(&mut w, vec![(8, value(BAD_RELEASE, 5, 3)), (4, HistoryRead::Compacted)]),
            WalkStep::GaveUp(r) if r.contains("compacted")
        ));
        // Absent (deleted before).
        let mut w = walk(9, 3, HISTORY_STEPS).expect("walk");
        assert!(matches!(
            run(&mut w, vec![(8, HistoryRead::Absent)]),
            WalkStep::GaveUp(_)
        ));
        // A bound of two reads.
        let mut w = walk(30, 1, 2).expect("walk");
        let step = run(
            &mut w,
            vec![
                (29, value(BAD_RELEASE, 25, 1)),
                (24, value(BAD_RELEASE, 20, 1)),
            ],
        );
        assert!(matches!(step, WalkStep::GaveUp(r) if r.contains("2 earlier versions")));
        assert_eq!(w.next_revision(), None);
        // etcd answering with a newer revision than asked for ends the walk.
        let mut w = walk(9, 3, HISTORY_STEPS).expect("walk");
        assert!(matches!(
            run(&mut w, vec![(8, value(BAD_RELEASE, 9, 3))]),
            WalkStep::GaveUp(_)
        ));
    }

    #[test]
    fn a_walk_is_wanted_only_for_an_invalid_value_with_no_last_good_value() {
        let mut state = ConfigState::new();
        // A valid value needs no walk; an unknown key neither.
        assert!(state
            .history_walk(RELEASE_KEY, GOOD_RELEASE.as_bytes(), 5, 2, HISTORY_STEPS)
            .is_none());
        assert!(state
            .history_walk("v1/widgets/x", b"{", 5, 2, HISTORY_STEPS)
            .is_none());
        let walk = state
            .history_walk(RELEASE_KEY, BAD_RELEASE.as_bytes(), 5, 2, HISTORY_STEPS)
            .expect("invalid, nothing in memory");
        assert_eq!(walk.next_revision(), Some(4));
        // A last good value in memory: no walk.
        state.apply_batch(4, vec![put(RELEASE_KEY, GOOD_RELEASE, 4)], 0);
        assert!(state
            .history_walk(RELEASE_KEY, BAD_RELEASE.as_bytes(), 5, 2, HISTORY_STEPS)
            .is_none());
    }

    #[test]
    fn a_full_read_serves_the_recovered_value_and_still_reports_the_rejection() {
        let mut state = ConfigState::new();
        let mut walk = state
            .history_walk(RELEASE_KEY, BAD_RELEASE.as_bytes(), 8, 2, HISTORY_STEPS)
            .expect("walk");
        let WalkStep::Recovered(found) = walk.on_read(value(GOOD_RELEASE, 5, 2)) else {
            panic!("expected a recovered value");
        };
        let kvs = vec![
            (RELEASE_KEY.to_owned(), BAD_RELEASE.as_bytes().to_vec(), 8),
            (TOPIC_KEY.to_owned(), b"{}".to_vec(), 3),
        ];
        let report = state.replace_all_recovering(9, kvs.clone(), vec![*found], 42);
        assert!(report.changed);
        assert_eq!(report.rejections.len(), 1);
        let rejection = &report.rejections[0];
        assert_eq!(rejection.key, RELEASE_KEY);
        assert_eq!(rejection.revision, 8);
        assert_eq!(rejection.serving_revision, Some(5));
        assert!(rejection.serving_from_history);
        let releases = state.snapshot().releases;
        assert_eq!(releases.len(), 1, "the recovered policy is served");
        assert_eq!(
            state.snapshot().to_json(),
            Snapshot::from_items(vec![
                parse_spec(Kind::Release, "push", GOOD_RELEASE.as_bytes()).expect("valid"),
                parse_spec(Kind::Topic, "ticker", b"{}").expect("valid"),
            ])
            .to_json()
        );
        assert_eq!(state.good_revision(RELEASE_KEY), Some(5));
        assert_eq!(state.rejections(), vec![rejection.clone()]);
        // Read again (a resync): no new walk, nothing reported twice.
        assert!(state
            .history_walk(RELEASE_KEY, BAD_RELEASE.as_bytes(), 8, 2, HISTORY_STEPS)
            .is_none());
        assert_eq!(state.replace_all(10, kvs, 43), ApplyReport::default());
        assert_eq!(state.snapshot().releases.len(), 1);
        // Another invalid value while running keeps the recovered one.
        let report = state.apply_batch(11, vec![put(RELEASE_KEY, "{oops", 11)], 44);
        assert!(!report.changed);
        assert_eq!(report.rejections[0].serving_revision, Some(5));
        assert!(report.rejections[0].serving_from_history);
        // A valid value replaces it and clears the rejection.
        let report = state.apply_batch(12, vec![put(RELEASE_KEY, GOOD_RELEASE, 12)], 45);
        assert!(state.rejections().is_empty());
        assert!(!report.changed, "same content as the recovered value");
        assert_eq!(state.good_revision(RELEASE_KEY), Some(12));
    }

    #[test]
    fn a_recovered_value_for_an_older_rejected_revision_is_ignored() {
        let mut state = ConfigState::new();
        let mut walk = state
            .history_walk(RELEASE_KEY, BAD_RELEASE.as_bytes(), 8, 2, HISTORY_STEPS)
            .expect("walk");
        let WalkStep::Recovered(found) = walk.on_read(value(GOOD_RELEASE, 5, 2)) else {
            panic!("expected a recovered value");
        };
        // The key now holds another invalid value than the one walked from.
        let report = state.replace_all_recovering(
            10,
            vec![(RELEASE_KEY.to_owned(), b"{oops".to_vec(), 10)],
            vec![*found],
            0,
        );
        assert!(!report.changed);
        assert_eq!(report.rejections[0].serving_revision, None);
        assert!(state.snapshot().releases.is_empty());
    }
}
