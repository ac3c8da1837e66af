use super::*;

fn put(key: &str, value: &str, revision: i64) -> Change {
    Change::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        mod_revision: revision,
    }
}

fn delete(key: &str, revision: i64) -> Change {
    Change::Delete {
        key: key.to_owned(),
        revision,
    }
}

fn events(header_revision: i64, changes: Vec<Change>) -> WatchMessage {
    WatchMessage {
        header_revision,
        cluster_id: 7,
        changes,
        ..WatchMessage::default()
    }
}

fn machine_at(revision: i64) -> WatchMachine {
    let mut machine = WatchMachine::new(Duration::from_secs(5), Duration::from_secs(10));
    assert_eq!(machine.next(), Next::ReadAll);
    assert_eq!(machine.on_full_read(revision, 7), None);
    machine
}

#[test]
fn watches_from_the_revision_after_the_full_read() {
    let machine = machine_at(41);
    assert_eq!(machine.next(), Next::Watch { start_revision: 42 });
}

#[test]
fn groups_events_by_revision_and_advances_to_the_last() {
    let mut machine = machine_at(10);
    let now = Instant::now();
    let step = machine.on_message(
        events(
            13,
            vec![
                put("v1/releases/a", "1", 11),
                delete("v1/releases/b", 11),
                put("v1/topics/t", "2", 13),
            ],
        ),
        now,
    );
    assert_eq!(
        step,
        Step::Apply(vec![
            Batch {
                revision: 11,
                changes: vec![put("v1/releases/a", "1", 11), delete("v1/releases/b", 11)],
            },
            Batch {
                revision: 13,
                changes: vec![put("v1/topics/t", "2", 13)],
            },
        ])
    );
    assert_eq!(machine.revision(), Some(13));
    assert_eq!(machine.next(), Next::Watch { start_revision: 14 });
}

#[test]
fn events_already_applied_are_skipped() {
    let mut machine = machine_at(10);
    let step = machine.on_message(
        events(12, vec![put("k", "old", 9), put("k", "new", 12)]),
        Instant::now(),
    );
    assert_eq!(
        step,
        Step::Apply(vec![Batch {
            revision: 12,
            changes: vec![put("k", "new", 12)],
        }])
    );
    let step = machine.on_message(events(12, vec![put("k", "again", 12)]), Instant::now());
    assert_eq!(step, Step::Nothing);
    assert_eq!(machine.revision(), Some(12));
}

#[test]
fn the_created_confirmation_does_not_advance() {
    let mut machine = machine_at(10);
    let message = WatchMessage {
        header_revision: 50,
        cluster_id: 7,
        created: true,
        ..WatchMessage::default()
    };
    assert_eq!(machine.on_message(message, Instant::now()), Step::Nothing);
    assert_eq!(machine.revision(), Some(10));
}

#[test]
fn a_progress_notification_advances_to_its_header() {
    let mut machine = machine_at(10);
    assert_eq!(
        machine.on_message(events(25, vec![]), Instant::now()),
        Step::Progress { revision: 25 }
    );
    assert_eq!(machine.next(), Next::Watch { start_revision: 26 });
}

#[test]
fn a_lost_stream_or_timeout_never_advances() {
    let mut machine = machine_at(10);
    let start = Instant::now();
    machine.on_watch_started(start);
    assert!(!machine.progress_due(start + Duration::from_secs(4)));
    assert!(machine.progress_due(start + Duration::from_secs(5)));
    assert!(
        !machine.progress_due(start + Duration::from_secs(6)),
        "asked once"
    );
    assert_eq!(machine.check_idle(start + Duration::from_secs(14)), None);
    assert!(matches!(
        machine.check_idle(start + Duration::from_secs(15)),
        Some(Step::Reconnect { .. })
    ));
    assert_eq!(machine.next(), Next::Watch { start_revision: 11 });
    assert!(matches!(
        machine.on_stream_lost("eof".into()),
        Step::Reconnect { .. }
    ));
    assert_eq!(machine.next(), Next::Watch { start_revision: 11 });
}

#[test]
fn an_answer_clears_the_pending_progress_request() {
    let mut machine = machine_at(10);
    let start = Instant::now();
    machine.on_watch_started(start);
    assert!(machine.progress_due(start + Duration::from_secs(5)));
    machine.on_message(events(10, vec![]), start + Duration::from_secs(6));
    assert_eq!(machine.check_idle(start + Duration::from_secs(30)), None);
}

#[test]
fn compaction_asks_for_a_full_read() {
    let mut machine = machine_at(10);
    let message = WatchMessage {
        header_revision: 30,
        cluster_id: 7,
        canceled: true,
        compact_revision: 20,
        ..WatchMessage::default()
    };
    assert_eq!(
        machine.on_message(message, Instant::now()),
        Step::Resync(ResyncReason::Compacted {
            compact_revision: 20
        })
    );
    assert_eq!(machine.next(), Next::ReadAll);
    assert_eq!(machine.on_full_read(30, 7), None);
    assert_eq!(machine.next(), Next::Watch { start_revision: 31 });
}

#[test]
fn a_plain_cancel_reconnects_at_the_same_revision() {
    let mut machine = machine_at(10);
    let message = WatchMessage {
        header_revision: 12,
        cluster_id: 7,
        canceled: true,
        cancel_reason: "permission denied".into(),
        ..WatchMessage::default()
    };
    assert!(matches!(
        machine.on_message(message, Instant::now()),
        Step::Reconnect { .. }
    ));
    assert_eq!(machine.next(), Next::Watch { start_revision: 11 });
}

#[test]
fn a_revision_going_backwards_asks_for_a_full_read() {
    let mut machine = machine_at(100);
    let message = WatchMessage {
        header_revision: 3,
        cluster_id: 7,
        created: true,
        ..WatchMessage::default()
    };
    assert_eq!(
        machine.on_message(message, Instant::now()),
        Step::Resync(ResyncReason::RevisionWentBackwards {
            seen: 3,
            applied: 100
        })
    );
    assert_eq!(machine.next(), Next::ReadAll);
    assert_eq!(
        machine.on_full_read(3, 7),
        Some(ResyncReason::RevisionWentBackwards {
            seen: 3,
            applied: 100
        })
    );
    assert_eq!(machine.next(), Next::Watch { start_revision: 4 });
}

#[test]
fn a_new_cluster_asks_for_a_full_read() {
    let mut machine = machine_at(10);
    let mut message = events(200, vec![put("k", "v", 200)]);
    message.cluster_id = 8;
    assert_eq!(
        machine.on_message(message, Instant::now()),
        Step::Resync(ResyncReason::ClusterChanged { was: 7, now: 8 })
    );
    assert_eq!(machine.revision(), Some(10));
}
