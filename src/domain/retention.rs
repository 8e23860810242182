//! Retention of the event log: which events of a finished job may be deleted without changing
//! what replay rebuilds from what is left.
//!
//! Only `job.progress` events are ever candidates, and only once the job has an outcome. Of a
//! finished job's progress events, three decide its view (see the fold in `domain::job`):
//! - the one with the highest percentage (`max_percent`, and `progress_percent` of a failed or
//!   cancelled job);
//! - the one at the latest position (`stage_message` and its `message_at`);
//! - the one that occurred last (it may be the latest of all events, and so set `updated_at`).
//!
//! Those are kept (one event can play several parts); every other progress event is redundant,
//! and the fold of what remains equals the fold of the whole stream, field for field. Any
//! subset of the redundant events may go too, which is what lets compaction honour an age limit.

use super::ids::MessageId;
use super::job::fold;
use super::messages::{Event, EventRecord};
use std::collections::HashSet;

/// The progress events of a finished job whose deletion leaves its folded view unchanged.
/// Empty when the stream has no outcome yet (or no `job.created`): a running job may still need
/// every event, and an orphan stream is left for whoever created it.
pub fn redundant_progress(records: &[EventRecord]) -> Vec<MessageId> {
    let Some(view) = fold(records) else {
        return Vec::new();
    };
    if view.terminal_at.is_none() {
        return Vec::new();
    }
    let progress: Vec<(&EventRecord, u8)> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Progress(p) => Some((r, p.percent.min(99))),
            _ => None,
        })
        .collect();
    let key = |r: &EventRecord| (r.position, r.message_id);
    let mut keep = HashSet::new();
    // Ties are broken by position and id so that every run keeps the same events.
    if let Some((r, _)) = progress.iter().max_by_key(|(r, pct)| (*pct, key(r))) {
        keep.insert(r.message_id);
    }
    if let Some((r, _)) = progress.iter().max_by_key(|(r, _)| key(r)) {
        keep.insert(r.message_id);
    }
    if let Some((r, _)) = progress.iter().max_by_key(|(r, _)| (r.occurred_at, key(r))) {
        keep.insert(r.message_id);
    }
    let mut seen = HashSet::new();
    progress
        .into_iter()
        .map(|(r, _)| r.message_id)
        .filter(|id| !keep.contains(id) && seen.insert(*id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{JobId, TenantId};
    use crate::domain::messages::{Cancelled, Created, Failed, Position, Progress, Started};
    use crate::domain::plan::Capability;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn rec(attempt: u32, seq: u64, at: i64, event: Event) -> EventRecord {
        EventRecord {
            message_id: MessageId::new(),
            job_id: JobId(uuid::Uuid::nil()),
            tenant: TenantId::parse("acme").unwrap(),
            occurred_at: Utc.timestamp_opt(1_700_000_000 + at, 0).unwrap(),
            position: Position { attempt, seq },
            event,
        }
    }

    fn created() -> EventRecord {
        rec(
            0,
            0,
            0,
            Event::Created(Created {
                webhook_url: None,
                webhook_stages: false,
                preset: None,
                requested_capabilities: vec![Capability::DeliverableFinalize],
                warnings: vec![],
                chat_id: None,
                companies: 0,
                contacts: 1,
            }),
        )
    }

    fn progress(attempt: u32, seq: u64, at: i64, percent: u8) -> EventRecord {
        rec(
            attempt,
            seq,
            at,
            Event::Progress(Progress {
                stage: Capability::EmailVerify,
                percent,
                message: format!("{attempt}/{seq} at {percent}"),
                done: None,
                total: None,
            }),
        )
    }

    fn failed(attempt: u32, seq: u64, at: i64) -> EventRecord {
        rec(
            attempt,
            seq,
            at,
            Event::Failed(Failed {
                error: "boom".into(),
                stage: None,
            }),
        )
    }

    fn without(records: &[EventRecord], drop: &[MessageId]) -> Vec<EventRecord> {
        records
            .iter()
            .filter(|r| !drop.contains(&r.message_id))
            .cloned()
            .collect()
    }

    #[test]
    fn a_running_job_keeps_every_event() {
        let stream = [created(), progress(1, 1, 1, 10), progress(1, 2, 2, 20)];
        assert!(redundant_progress(&stream).is_empty());
    }

    #[test]
    fn a_failed_job_keeps_its_highest_latest_and_last_progress() {
        let stream = [
            created(),
            rec(1, 1, 1, Event::Started(Started { worker: "a".into() })),
            progress(1, 2, 2, 10),
            progress(1, 3, 3, 60),
            progress(1, 4, 4, 20),
            progress(1, 5, 5, 30),
            failed(1, 6, 6),
            // A straggler of a zombie attempt, recorded after the failure.
            progress(1, 1, 9, 5),
        ];
        let drop = redundant_progress(&stream);
        assert_eq!(drop, [stream[2].message_id, stream[4].message_id]);
        let kept = without(&stream, &drop);
        assert_eq!(fold(&kept), fold(&stream));
        assert_eq!(fold(&kept).unwrap().progress_percent, 60);
    }

    #[test]
    fn a_cancelled_job_compacts_to_the_same_view() {
        let mut stream = vec![created()];
        stream.extend((1..=20).map(|i| progress(1, i, i as i64, (i * 4) as u8)));
        stream.push(rec(
            1,
            21,
            30,
            Event::Cancelled(Cancelled {
                reason: "user".into(),
                partial: None,
            }),
        ));
        let drop = redundant_progress(&stream);
        assert_eq!(drop.len(), 19);
        assert_eq!(fold(&without(&stream, &drop)), fold(&stream));
    }

    proptest! {
        #[test]
        fn dropping_any_part_of_the_redundant_progress_leaves_the_view_unchanged(
            events in proptest::collection::vec((1u32..3, 1u64..12, 0i64..50, 0u8..120), 0..16),
            terminal in (1u32..3, 1u64..12, 0i64..50),
            keep_mask in proptest::collection::vec(any::<bool>(), 16),
        ) {
            let mut stream = vec![created()];
            stream.extend(events.iter().map(|&(a, s, t, p)| progress(a, s, t, p)));
            stream.push(failed(terminal.0, terminal.1, terminal.2));
            let drop = redundant_progress(&stream);
            let whole = fold(&stream);
            prop_assert_eq!(fold(&without(&stream, &drop)), whole.clone());
            let some: Vec<MessageId> = drop
                .iter()
                .zip(keep_mask.iter().cycle())
                .filter(|(_, k)| !**k)
                .map(|(id, _)| *id)
                .collect();
            prop_assert_eq!(fold(&without(&stream, &some)), whole);
        }
    }
}
