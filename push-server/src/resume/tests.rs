use super::*;

const E: Epoch = Epoch(77);

fn id(epoch: u64, seq: u64) -> MessageId {
    MessageId {
        epoch: Epoch(epoch),
        seq,
    }
}

fn at(epoch: u64, seq: u64) -> Option<MessageId> {
    Some(id(epoch, seq))
}

#[test]
fn replay_pages_are_bounded_by_queue_count_and_bytes() {
    let mut settings = TopicSettings::defaults("t");
    settings.max_message_bytes = 64 * 1024;
    assert_eq!(replay_page(&settings, 1024), 16);
    assert_eq!(replay_page(&settings, 4), 4);
    settings.max_message_bytes = 100;
    assert_eq!(replay_page(&settings, 1024), REPLAY_PAGE_MESSAGES);
    settings.max_message_bytes = 16 * 1024 * 1024;
    assert_eq!(replay_page(&settings, 1024), 1);
    settings.max_message_bytes = 0;
    assert_eq!(
        replay_page(&settings, 0),
        1,
        "a page holds one message at least"
    );
}

#[test]
fn resume_plans() {
    use ResetReason::*;
    type Case = (
        Option<MessageId>,
        u64,
        Option<(u64, u64)>,
        (u64, Option<ResetReason>),
    );
    let cases: &[Case] = &[
        // fresh subscription: live only
        (None, 10, Some((1, 10)), (10, None)),
        // within history
        (at(77, 4), 10, Some((1, 10)), (4, None)),
        (at(77, 10), 10, Some((1, 10)), (10, None)),
        // exactly before the first held message: nothing missed
        (at(77, 4), 10, Some((5, 10)), (4, None)),
        // older than history
        (at(77, 3), 10, Some((5, 10)), (4, Some(HistoryGap))),
        // history aged out entirely
        (at(77, 3), 10, None, (10, Some(HistoryGap))),
        (at(77, 10), 10, None, (10, None)),
        // other epoch: everything held is replayed
        (at(5, 3), 10, Some((5, 10)), (4, Some(EpochChanged))),
        (at(5, 3), 0, None, (0, Some(EpochChanged))),
        // a position never issued
        (at(77, 11), 10, Some((1, 10)), (10, Some(UnknownPosition))),
        // "before any epoch"
        (at(0, 0), 3, Some((1, 3)), (0, None)),
        (at(0, 0), 9, Some((4, 9)), (3, Some(HistoryGap))),
    ];
    for (from, head, held, expected) in cases {
        assert_eq!(
            plan_resume(*from, E, 0, *head, *held),
            *expected,
            "from {from:?} head {head} held {held:?}"
        );
    }
    // An epoch that started after sequence 5000 (Redis: its start time).
    assert_eq!(
        plan_resume(at(0, 0), E, 5000, 5003, Some((5001, 5003))),
        (5000, None)
    );
    assert_eq!(
        plan_resume(at(0, 0), E, 5000, 5009, Some((5004, 5009))),
        (5003, Some(HistoryGap))
    );
    assert_eq!(
        plan_resume(at(5, 3), E, 5000, 5003, Some((5001, 5003))),
        (5000, Some(EpochChanged))
    );
}

#[test]
fn resume_outcomes_name_every_reason() {
    use ResetReason::*;
    let cases = [
        (None, "resumed"),
        (Some(HistoryGap), "reset-history-gap"),
        (Some(EpochChanged), "reset-epoch-changed"),
        (Some(UnknownPosition), "reset-unknown-position"),
    ];
    for (reset, label) in cases {
        assert_eq!(resume_outcome(reset), label);
        if let Some(reason) = reset {
            assert_eq!(format!("reset-{}", reason.as_str()), label);
        }
    }
}

#[test]
fn history_age_limit() {
    let mut settings = TopicSettings::defaults("t");
    settings.history_max_age = std::time::Duration::from_secs(60);
    assert_eq!(oldest_kept(&settings, 100_000_000_000), 40_000_000_000);
    assert_eq!(oldest_kept(&settings, 5), 0, "saturates at the epoch");
}

#[test]
fn start_positions() {
    use ResetReason::*;
    let planned = id(77, 4);
    let cases = [
        // live only: the planned position (the head)
        (None, None, planned),
        // a resume without a reset continues the client's position
        (at(77, 2), None, id(77, 2)),
        // "from the start": the topic's epoch, not 0
        (at(0, 0), None, planned),
        // a reset moves the cursor to where the replay starts
        (at(77, 1), Some(HistoryGap), planned),
        (at(5, 9), Some(EpochChanged), planned),
        (at(77, 99), Some(UnknownPosition), planned),
    ];
    for (from, reset, expected) in cases {
        assert_eq!(
            start_position(from, reset, planned),
            expected,
            "from {from:?} reset {reset:?}"
        );
    }
}

#[test]
fn already_delivered_is_by_epoch_and_sequence() {
    let cases = [
        (id(77, 5), id(77, 4), true),
        (id(77, 5), id(77, 5), true),
        (id(77, 5), id(77, 6), false),
        (id(77, 5), id(78, 1), false),
        (id(0, 0), id(77, 1), false),
    ];
    for (position, message, expected) in cases {
        assert_eq!(
            already_delivered(position, message),
            expected,
            "{position:?} {message:?}"
        );
    }
}

#[test]
fn what_a_resume_leaves_to_replay() {
    let window = |after, until| {
        Some(ReplayWindow {
            epoch: E,
            after,
            until,
        })
    };
    type Case = (bool, MessageId, Vec<MessageId>, u64, Option<ReplayWindow>);
    let cases: Vec<Case> = vec![
        // live only: nothing to replay whatever the head
        (false, id(77, 10), vec![], 10, None),
        (false, id(77, 3), vec![], 10, None),
        // the first page reached the head
        (
            true,
            id(77, 3),
            (4..=10).map(|s| id(77, s)).collect(),
            10,
            None,
        ),
        // the first page stopped short: the rest page by page
        (
            true,
            id(77, 3),
            (4..=6).map(|s| id(77, s)).collect(),
            10,
            window(6, 10),
        ),
        // no first page (another topic replays): all of it later
        (true, id(77, 3), vec![], 10, window(3, 10)),
        // already at the head
        (true, id(77, 10), vec![], 10, None),
    ];
    for (resuming, position, first_page, head, expected) in cases {
        assert_eq!(
            ReplayWindow::after_resume(resuming, position, first_page.clone(), head),
            expected,
            "resuming {resuming} from {position:?} page {first_page:?} head {head}"
        );
    }
}

#[test]
fn replay_pages() {
    use PageStep::{Deliver, Reset};
    let window = |after, until| ReplayWindow {
        epoch: E,
        after,
        until,
    };
    let seqs = |range: std::ops::RangeInclusive<u64>| range.map(|s| id(77, s)).collect::<Vec<_>>();
    type Case = (
        &'static str,
        ReplayWindow,
        Vec<MessageId>,
        Vec<PageStep>,
        Option<ReplayWindow>,
    );
    let cases: Vec<Case> = vec![
        (
            "a full page, more to come",
            window(4, 20),
            seqs(5..=8),
            vec![Deliver(0), Deliver(1), Deliver(2), Deliver(3)],
            Some(window(8, 20)),
        ),
        (
            "the last page reaches `until`: live after",
            window(16, 20),
            seqs(17..=20),
            vec![Deliver(0), Deliver(1), Deliver(2), Deliver(3)],
            None,
        ),
        (
            "messages past `until` (published since) end the replay too",
            window(18, 20),
            seqs(19..=22),
            vec![Deliver(0), Deliver(1), Deliver(2), Deliver(3)],
            None,
        ),
        (
            "trimmed under the replay: a reset before the next held message",
            window(4, 20),
            seqs(9..=10),
            vec![
                Reset {
                    position: id(77, 8),
                },
                Deliver(0),
                Deliver(1),
            ],
            Some(window(10, 20)),
        ),
        (
            "a hole inside the page",
            window(4, 20),
            vec![id(77, 5), id(77, 8)],
            vec![
                Deliver(0),
                Reset {
                    position: id(77, 7),
                },
                Deliver(1),
            ],
            Some(window(8, 20)),
        ),
        (
            "nothing held any more: a reset to `until`, live after",
            window(16, 30),
            vec![],
            vec![Reset {
                position: id(77, 30),
            }],
            None,
        ),
        (
            "only messages already fetched: as good as empty",
            window(16, 30),
            seqs(15..=16),
            vec![Reset {
                position: id(77, 30),
            }],
            None,
        ),
        (
            "another epoch's messages are not this replay's",
            window(4, 20),
            vec![id(78, 5), id(77, 5), id(78, 6)],
            vec![Deliver(1)],
            Some(window(5, 20)),
        ),
    ];
    for (what, window, page, steps, rest) in cases {
        let taken = window.take_page(&page);
        assert_eq!(taken.steps, steps, "{what}");
        assert_eq!(taken.rest, rest, "{what}");
    }
}

#[test]
fn live_messages() {
    use ResetReason::*;
    let cases = [
        // the next one
        (id(77, 4), id(77, 5), Live::Deliver),
        // replayed already
        (id(77, 5), id(77, 5), Live::Skip),
        (id(77, 5), id(77, 2), Live::Skip),
        // a hole
        (
            id(77, 5),
            id(77, 9),
            Live::ResetThenDeliver {
                reason: HistoryGap,
                position: id(77, 8),
            },
        ),
        // a new epoch (history lost while subscribed)
        (
            id(77, 5),
            id(78, 1),
            Live::ResetThenDeliver {
                reason: EpochChanged,
                position: id(78, 0),
            },
        ),
        (
            id(77, 5),
            id(78, 3),
            Live::ResetThenDeliver {
                reason: EpochChanged,
                position: id(78, 2),
            },
        ),
        // a new epoch at sequence 0 is still a reset
        (
            id(77, 5),
            id(78, 0),
            Live::ResetThenDeliver {
                reason: EpochChanged,
                position: id(78, 0),
            },
        ),
        // subscribed before the topic had a message: the first is next
        (id(0, 0), id(77, 1), Live::Deliver),
        (id(0, 0), id(77, 42), Live::Deliver),
    ];
    for (position, message, expected) in cases {
        assert_eq!(
            live(position, message),
            expected,
            "cursor {position:?} message {message:?}"
        );
    }
}
