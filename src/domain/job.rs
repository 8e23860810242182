//! The read model of one job and the fold that builds it from events.
//!
//! The fold is designed to converge: applying any permutation of a job's events, with any
//! duplicates, yields the same [`JobView`]. That is what lets several projectors consume one queue,
//! lets the broker redeliver, and lets replay rebuild the model from the event log. The rules:
//! - a duplicate (same message id) is ignored by the caller, and re-applying is harmless anyway;
//! - progress is the maximum seen; the message is the one at the latest position;
//! - a terminal event beats any non-terminal one; among terminal events the earliest position
//!   wins, so the first outcome a worker reported is the one that stands;
//! - warnings are kept in position order without repeats.

use super::ids::{AssetId, JobId, MessageId, TenantId};
use super::messages::{Event, EventRecord, Position};
use super::plan::{Capability, Preset};
use super::stages::Summary;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[schema(
    description = "`pending`: accepted, not started; `running`: a worker is on it; `completed`, `failed`, `cancelled`: terminal, never left."
)]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// How an asset can be fetched. `inline`: stored and downloadable now, through its
/// `download_url`.
pub const AVAILABILITY_INLINE: &str = "inline";
/// `partial`: stored and downloadable now, but from a job that was cancelled mid-run: it holds
/// what the job had done before it stopped.
pub const AVAILABILITY_PARTIAL: &str = "partial";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetView {
    pub asset_id: AssetId,
    pub label: String,
    pub kind: String,
    pub mime_type: String,
    pub availability: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultView {
    pub result_id: Uuid,
    pub summary: Summary,
    pub assets: Vec<AssetView>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: JobId,
    pub tenant: TenantId,
    pub status: JobStatus,
    pub progress_percent: u8,
    pub progress_message: String,
    pub preset: Option<Preset>,
    pub requested_capabilities: Vec<Capability>,
    pub warnings: Vec<String>,
    pub error_message: Option<String>,
    pub chat_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub result: Option<ResultView>,
    /// Bookkeeping for convergence; not part of the API.
    pub message_at: Option<(Position, MessageId)>,
    pub stage_message: String,
    pub terminal_at: Option<(Position, MessageId)>,
    pub warning_log: Vec<(Position, String)>,
    pub planning_warnings: Vec<String>,
    /// The highest progress any event reported (below 100), kept apart from `progress_percent`
    /// so that the percentage does not depend on whether a completion was seen before an
    /// earlier failure overtook it. Views stored before this field existed read it as 0.
    #[serde(default)]
    pub max_percent: u8,
    /// The chunks of a chunked job that reported done (sorted, each once), and how many it has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks_done: Vec<u32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_total: u32,
    /// The job's own webhook URL, from its `job.created`; not part of the API's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Whether the job asked for its stages to be announced (`webhook_stages` of its
    /// `job.created`); not part of the API's answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webhook_stages: bool,
    /// The latest stage of the plan any `job.progress` reported, kept only for a job that asked
    /// for its stages (so other views stay as they were): the maximum, so it converges whatever
    /// the order of the reports, and a stage is announced when it raises it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_reached: Option<Capability>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The assets a job publishes, in the order the result lists them.
pub fn deliverable_assets(availability: &str) -> Vec<AssetView> {
    [
        ("verified_contacts", "Verified Contacts", "application/json"),
        (
            "verified_contacts_csv",
            "Verified Contacts (CSV)",
            "text/csv",
        ),
    ]
    .into_iter()
    .map(|(id, label, mime)| AssetView {
        asset_id: AssetId::parse(id).expect("static asset ids are valid"),
        label: label.to_owned(),
        kind: "contacts".to_owned(),
        mime_type: mime.to_owned(),
        availability: availability.to_owned(),
    })
    .collect()
}

/// A result id derived from the job id, so that replay reproduces it exactly.
pub fn result_id_for(job: JobId) -> Uuid {
    Uuid::new_v5(&job.0, b"bdjobs/result")
}

impl JobView {
    /// The view a `job.created` event starts. Other events before it (possible only when the
    /// broker delivers out of order, which the API's own transaction rules out) are refused by
    /// [`fold`] rather than guessed at.
    pub fn created(rec: &EventRecord) -> Option<Self> {
        let Event::Created(c) = &rec.event else {
            return None;
        };
        Some(Self {
            job_id: rec.job_id,
            tenant: rec.tenant.clone(),
            status: JobStatus::Pending,
            progress_percent: 0,
            progress_message: "Queued.".to_owned(),
            preset: c.preset,
            requested_capabilities: c.requested_capabilities.clone(),
            warnings: c.warnings.clone(),
            error_message: None,
            chat_id: c.chat_id,
            created_at: rec.occurred_at,
            updated_at: rec.occurred_at,
            started_at: None,
            completed_at: None,
            result: None,
            message_at: None,
            stage_message: "Queued.".to_owned(),
            terminal_at: None,
            warning_log: Vec::new(),
            planning_warnings: c.warnings.clone(),
            max_percent: 0,
            chunks_done: Vec::new(),
            chunks_total: 0,
            webhook_url: c.webhook_url.clone(),
            webhook_stages: c.webhook_stages,
            stage_reached: None,
        })
    }

    /// Applies one event. Returns whether anything changed.
    pub fn apply(&mut self, rec: &EventRecord) -> bool {
        if let Event::Warning(w) = &rec.event {
            // Apart from the clock, a warning touches the warnings alone: compared without
            // cloning the whole view, kept sorted by insertion rather than a sort per warning.
            let updated = self.updated_at.max(rec.occurred_at);
            let clock = updated != self.updated_at;
            self.updated_at = updated;
            return self.add_warning(rec.position, &w.message) || clock;
        }
        let before = self.clone();
        // Two runs of one job (a duplicated command) can produce equal positions; the message
        // id breaks the tie so that every projector picks the same winner.
        let key = (rec.position, rec.message_id);
        self.updated_at = self.updated_at.max(rec.occurred_at);
        match &rec.event {
            Event::Created(_) => {}
            Event::Started(_) => {
                self.started_at = Some(match self.started_at {
                    Some(t) => t.min(rec.occurred_at),
                    None => rec.occurred_at,
                });
                if self.status == JobStatus::Pending {
                    self.status = JobStatus::Running;
                }
                self.set_message(key, "Starting...");
            }
            Event::Progress(p) => {
                if self.status == JobStatus::Pending {
                    self.status = JobStatus::Running;
                }
                // 100 is reserved for a completed job, so that "100%" always means done.
                self.max_percent = self.max_percent.max(p.percent.min(99));
                if self.status != JobStatus::Completed {
                    self.progress_percent = self.max_percent;
                }
                self.set_message(key, &p.message);
                if self.webhook_stages && self.stage_reached < Some(p.stage) {
                    self.stage_reached = Some(p.stage);
                }
            }
            Event::ChunkCompleted(c) => {
                if self.status == JobStatus::Pending {
                    self.status = JobStatus::Running;
                }
                if let Err(i) = self.chunks_done.binary_search(&c.chunk.index) {
                    self.chunks_done.insert(i, c.chunk.index);
                }
                self.chunks_total = self.chunks_total.max(c.chunk.count).max(1);
                let done = self.chunks_done.len() as u64;
                let total = u64::from(self.chunks_total);
                self.max_percent = self.max_percent.max((done * 99 / total).min(99) as u8);
                if self.status != JobStatus::Completed {
                    self.progress_percent = self.max_percent;
                }
                // Chunks run at once on several workers, so their positions say nothing about
                // which report is the latest; the count of chunks done does. Keyed after every
                // worker position and by that count, the message converges to the final count
                // whatever order the reports arrive in.
                let key = (
                    Position {
                        attempt: u32::MAX,
                        seq: done,
                    },
                    MessageId(Uuid::nil()),
                );
                self.set_message(key, &format!("{done} of {total} chunks done..."));
            }
            Event::Warning(_) => unreachable!("warnings are applied above"),
            Event::Completed(_) | Event::Failed(_) | Event::Cancelled(_) => {
                if self.terminal_at.is_none_or(|t| key < t) {
                    self.set_terminal(rec);
                }
            }
        }
        *self != before
    }

    /// Records a warning at its earliest position; returns whether the warnings changed.
    fn add_warning(&mut self, at: Position, message: &str) -> bool {
        if let Some(i) = self.warning_log.iter().position(|(_, m)| m == message) {
            if self.warning_log[i].0 <= at {
                return false;
            }
            self.warning_log.remove(i);
        }
        let entry = (at, message.to_owned());
        let i = self.warning_log.partition_point(|e| *e < entry);
        self.warning_log.insert(i, entry);
        self.warnings = self
            .planning_warnings
            .iter()
            .chain(self.warning_log.iter().map(|(_, m)| m))
            .cloned()
            .collect();
        true
    }

    fn set_message(&mut self, at: (Position, MessageId), message: &str) {
        if self.message_at.is_none_or(|m| at >= m) {
            self.message_at = Some(at);
            self.stage_message = message.to_owned();
        }
        if self.terminal_at.is_none() {
            self.progress_message = self.stage_message.clone();
        }
    }

    fn set_terminal(&mut self, rec: &EventRecord) {
        self.terminal_at = Some((rec.position, rec.message_id));
        self.completed_at = Some(rec.occurred_at);
        self.result = None;
        self.error_message = None;
        match &rec.event {
            Event::Completed(c) => {
                self.status = JobStatus::Completed;
                self.progress_percent = 100;
                self.progress_message = "Job complete.".to_owned();
                self.result = Some(ResultView {
                    result_id: result_id_for(self.job_id),
                    summary: c.summary.clone(),
                    assets: deliverable_assets(AVAILABILITY_INLINE),
                    created_at: rec.occurred_at,
                });
            }
            Event::Failed(f) => {
                self.status = JobStatus::Failed;
                self.progress_percent = self.max_percent;
                self.progress_message = "Job failed.".to_owned();
                self.error_message = Some(f.error.clone());
            }
            Event::Cancelled(c) => {
                self.status = JobStatus::Cancelled;
                self.progress_percent = self.max_percent;
                self.progress_message = format!("Job cancelled: {}", c.reason);
                if let Some(partial) = &c.partial {
                    self.result = Some(ResultView {
                        result_id: result_id_for(self.job_id),
                        summary: partial.summary.clone(),
                        assets: deliverable_assets(AVAILABILITY_PARTIAL),
                        created_at: rec.occurred_at,
                    });
                }
            }
            _ => unreachable!("set_terminal is only called for terminal events"),
        }
    }
}

/// Folds a whole stream (in any order) into a view. `None` when there is no `job.created`.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a EventRecord>) -> Option<JobView> {
    let events: Vec<&EventRecord> = events.into_iter().collect();
    let created = events
        .iter()
        .filter(|e| matches!(e.event, Event::Created(_)))
        .min_by_key(|e| e.occurred_at)?;
    let mut view = JobView::created(created)?;
    let mut seen = std::collections::HashSet::new();
    for e in events {
        if seen.insert(e.message_id) {
            view.apply(e);
        }
    }
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::MessageId;
    use crate::domain::messages::{
        Cancelled, Completed, Created, Failed, Progress, Started, Warning,
    };
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn rec(attempt: u32, seq: u64, event: Event) -> EventRecord {
        EventRecord {
            message_id: MessageId::new(),
            job_id: JobId(Uuid::nil()),
            tenant: TenantId::parse("acme").unwrap(),
            occurred_at: Utc
                .timestamp_opt(1_700_000_000 + (attempt as i64) * 1000 + seq as i64, 0)
                .unwrap(),
            position: Position { attempt, seq },
            event,
        }
    }

    fn created() -> EventRecord {
        rec(
            0,
            0,
            Event::Created(Created {
                webhook_url: None,
                webhook_stages: false,
                preset: Some(Preset::VerifyExistingEmails),
                requested_capabilities: vec![
                    Capability::EmailVerify,
                    Capability::DeliverableFinalize,
                ],
                warnings: vec!["planning".into()],
                chat_id: None,
                companies: 0,
                contacts: 1,
            }),
        )
    }

    fn progress(attempt: u32, seq: u64, percent: u8) -> EventRecord {
        rec(
            attempt,
            seq,
            Event::Progress(Progress {
                stage: Capability::EmailVerify,
                percent,
                message: format!("at {percent}"),
                done: None,
                total: None,
            }),
        )
    }

    fn completed(attempt: u32, seq: u64) -> EventRecord {
        rec(
            attempt,
            seq,
            Event::Completed(Completed {
                summary: Summary::default(),
                contacts: vec![],
            }),
        )
    }

    /// A stream with two attempts: the first crashed half-way, the second finished.
    fn retried_stream() -> Vec<EventRecord> {
        vec![
            created(),
            rec(1, 1, Event::Started(Started { worker: "a".into() })),
            progress(1, 2, 30),
            rec(
                1,
                3,
                Event::Warning(Warning {
                    message: "w1".into(),
                }),
            ),
            rec(2, 1, Event::Started(Started { worker: "b".into() })),
            progress(2, 2, 20),
            rec(
                2,
                3,
                Event::Warning(Warning {
                    message: "w1".into(),
                }),
            ),
            progress(2, 4, 80),
            rec(
                2,
                5,
                Event::Warning(Warning {
                    message: "w2".into(),
                }),
            ),
            completed(2, 6),
        ]
    }

    #[test]
    fn a_job_starts_pending_at_zero() {
        let v = JobView::created(&created()).unwrap();
        assert_eq!(v.status, JobStatus::Pending);
        assert_eq!(v.progress_percent, 0);
        assert!(v.result.is_none());
    }

    #[test]
    fn the_retried_stream_ends_completed_at_100_with_each_warning_once() {
        let v = fold(&retried_stream()).unwrap();
        assert_eq!(v.status, JobStatus::Completed);
        assert_eq!(v.progress_percent, 100);
        assert_eq!(v.progress_message, "Job complete.");
        assert_eq!(v.warnings, ["planning", "w1", "w2"]);
        assert!(v.result.is_some());
        assert!(v.completed_at.is_some());
    }

    #[test]
    fn progress_never_decreases_and_stops_below_100_until_completion() {
        let mut v = JobView::created(&created()).unwrap();
        v.apply(&progress(1, 1, 60));
        v.apply(&progress(1, 2, 40));
        assert_eq!(v.progress_percent, 60);
        v.apply(&progress(1, 3, 100));
        assert_eq!(v.progress_percent, 99);
        assert_eq!(v.status, JobStatus::Running);
    }

    #[test]
    fn a_terminal_state_is_not_left_for_a_later_event() {
        let mut v = JobView::created(&created()).unwrap();
        v.apply(&rec(
            1,
            5,
            Event::Failed(Failed {
                error: "boom".into(),
                stage: None,
            }),
        ));
        v.apply(&progress(1, 6, 50));
        v.apply(&completed(2, 9));
        v.apply(&rec(
            3,
            1,
            Event::Cancelled(Cancelled {
                reason: "x".into(),
                partial: None,
            }),
        ));
        assert_eq!(v.status, JobStatus::Failed);
        assert_eq!(v.error_message.as_deref(), Some("boom"));
        assert_eq!(v.progress_message, "Job failed.");
    }

    #[test]
    fn an_earlier_failure_arriving_after_a_completion_takes_over_with_its_own_percent() {
        let failed = rec(
            1,
            4,
            Event::Failed(Failed {
                error: "boom".into(),
                stage: None,
            }),
        );
        let stream = [created(), progress(1, 2, 40), completed(2, 9), failed];
        let forward = fold(&stream).unwrap();
        let backward = fold(stream.iter().rev()).unwrap();
        assert_eq!(forward, backward);
        assert_eq!(forward.status, JobStatus::Failed);
        assert_eq!(forward.progress_percent, 40);
        assert!(forward.result.is_none());
    }

    #[test]
    fn applying_an_event_twice_changes_nothing_the_second_time() {
        let mut v = JobView::created(&created()).unwrap();
        let p = progress(1, 1, 10);
        assert!(v.apply(&p));
        assert!(!v.apply(&p));
    }

    fn chunk_done(attempt: u32, seq: u64, index: u32, count: u32) -> EventRecord {
        rec(
            attempt,
            seq,
            Event::ChunkCompleted(crate::domain::messages::ChunkCompleted {
                chunk: crate::domain::messages::ChunkOf { index, count },
                contacts: vec![],
                companies_kept: 0,
                companies_disqualified: 0,
                contacts_discovered: 0,
            }),
        )
    }

    #[test]
    fn chunk_reports_advance_progress_per_distinct_chunk_in_any_order() {
        let stream = [
            created(),
            rec(1, 1, Event::Started(Started { worker: "a".into() })),
            progress(1, 2, 0),
            chunk_done(1, 3_000_000_001, 2, 4),
            chunk_done(2, 1_000_000_001, 0, 4),
            chunk_done(1, 1_000_000_001, 0, 4),
            chunk_done(1, 2_000_000_001, 1, 4),
        ];
        let forward = fold(&stream).unwrap();
        let backward = fold(stream.iter().rev()).unwrap();
        assert_eq!(forward, backward);
        assert_eq!(forward.status, JobStatus::Running);
        assert_eq!(forward.chunks_done, [0, 1, 2]);
        assert_eq!(forward.progress_percent, 74);
        assert_eq!(forward.progress_message, "3 of 4 chunks done...");
    }

    #[test]
    fn the_stage_reached_converges_and_is_kept_only_for_a_job_that_asked() {
        let mut asked = created();
        if let Event::Created(c) = &mut asked.event {
            c.webhook_stages = true;
        }
        let stage = |seq: u64, stage: Capability| {
            rec(
                1,
                seq,
                Event::Progress(Progress {
                    stage,
                    percent: 10,
                    message: "m".into(),
                    done: None,
                    total: None,
                }),
            )
        };
        let reports = [
            stage(2, Capability::EmailVerify),
            stage(3, Capability::DeliverableFinalize),
            stage(4, Capability::EmailVerify),
        ];
        let stream: Vec<EventRecord> = std::iter::once(asked).chain(reports.clone()).collect();
        let forward = fold(&stream).unwrap();
        assert_eq!(forward, fold(stream.iter().rev()).unwrap());
        assert_eq!(forward.stage_reached, Some(Capability::DeliverableFinalize));
        let plain: Vec<EventRecord> = std::iter::once(created()).chain(reports).collect();
        assert_eq!(fold(&plain).unwrap().stage_reached, None);
    }

    proptest! {
        #[test]
        fn any_permutation_with_duplicates_folds_to_the_same_view(
            order in Just((0..10usize).collect::<Vec<_>>()).prop_shuffle(),
            dups in proptest::collection::vec(0..10usize, 0..6),
        ) {
            let stream = retried_stream();
            let expected = fold(&stream).unwrap();
            let mut shuffled: Vec<EventRecord> = order.iter().map(|&i| stream[i].clone()).collect();
            for d in dups {
                shuffled.push(stream[d].clone());
            }
            // Fold without the helper's de-duplication: the view itself must absorb repeats.
            let created = shuffled.iter().find(|e| matches!(e.event, Event::Created(_))).unwrap();
            let mut v = JobView::created(created).unwrap();
            for e in &shuffled {
                v.apply(e);
            }
            prop_assert_eq!(v, expected);
        }

        #[test]
        fn any_permutation_of_competing_outcomes_folds_to_the_same_view(
            order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            // Two runs of a duplicated command and a cancellation, all claiming the outcome.
            let stream = vec![
                created(),
                progress(1, 2, 35),
                completed(2, 9),
                rec(1, 7, Event::Failed(Failed { error: "boom".into(), stage: None })),
                progress(2, 3, 70),
                completed(1, 8),
                rec(3, 1, Event::Cancelled(Cancelled { reason: "user".into(), partial: None })),
                rec(1, 1, Event::Started(Started { worker: "a".into() })),
            ];
            let expected = fold(&stream).unwrap();
            prop_assert_eq!(expected.status, JobStatus::Failed);
            let shuffled: Vec<EventRecord> = order.iter().map(|&i| stream[i].clone()).collect();
            prop_assert_eq!(fold(&shuffled).unwrap(), expected);
        }
    }
}
