//! The wire contract: every message on the broker and every row of the event log is an
//! [`Envelope`] — a versioned JSON object with a type, ids, a per-job position and a payload.
//! `docs/messaging.md` is the prose version of this file; keep them in step.

use super::ids::{JobId, MessageId, TenantId};
use super::input::JobInput;
use super::plan::{Capability, Plan, Preset};
use super::stages::{DeliveredContact, ExecutionOptions, IcpConfig, Summary};
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The type of every message, which is also its routing key on the broker: spelled once, here.
pub mod kinds {
    /// The command that runs a job (`NS.commands` → `NS.jobs`).
    pub const RUN: &str = "job.run";
    /// One chunk of a split job (`NS.commands` → `NS.jobs`).
    pub const RUN_CHUNK: &str = "job.run_chunk";
    pub const CREATED: &str = "job.created";
    pub const STARTED: &str = "job.started";
    pub const PROGRESS: &str = "job.progress";
    pub const WARNING: &str = "job.warning";
    pub const COMPLETED: &str = "job.completed";
    pub const CHUNK_COMPLETED: &str = "job.chunk_completed";
    pub const FAILED: &str = "job.failed";
    pub const CANCELLED: &str = "job.cancelled";
}

/// Where a message stands in its job's history: the worker attempt that produced it, then its
/// sequence number within that attempt. Positions order a job's events even when the broker
/// delivers them out of order or twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub attempt: u32,
    pub seq: u64,
}

impl Position {
    /// `job.created` comes before any worker attempt.
    pub const ORIGIN: Position = Position { attempt: 0, seq: 0 };
    /// A `job.cancelled` written by the API for a job no worker had started. Attempt 0 orders it
    /// before anything a worker reports, so a worker that started anyway cannot overturn it.
    pub const API_CANCEL: Position = Position { attempt: 0, seq: 1 };
    /// A `job.failed` written by the stuck-job reaper: likewise final once written.
    pub const REAPER: Position = Position { attempt: 0, seq: 2 };
    /// A `job.failed` written by the projector for a job one of whose events it could never
    /// apply: likewise final, since the job's history is incomplete.
    pub const PROJECTOR: Position = Position { attempt: 0, seq: 3 };
}

/// The generic envelope as it travels: the payload stays raw JSON until [`RawEnvelope::decode`]
/// checks its type and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEnvelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub message_id: MessageId,
    pub job_id: JobId,
    pub tenant: TenantId,
    pub occurred_at: DateTime<Utc>,
    pub attempt: u32,
    pub seq: u64,
    /// `null` when the payload was checked out to object storage ([`RawEnvelope::check_out`]).
    pub payload: serde_json::Value,
    /// Where the payload is when it travels apart from the envelope (a claim check): set only
    /// on messages too big for the broker, absent from every other message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_ref: Option<ClaimCheck>,
}

/// A claim check: where a message's payload was stored, with its size and SHA-256 so that the
/// receiver can tell the object it reads back is the one the sender wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCheck {
    pub key: String,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("the stored payload of message {message_id} is {found} bytes with SHA-256 {found_sha}, expected {expected} bytes with {expected_sha}")]
    Mismatch {
        message_id: MessageId,
        found: u64,
        found_sha: String,
        expected: u64,
        expected_sha: String,
    },
    #[error("the stored payload of message {0} is not JSON: {1}")]
    NotJson(MessageId, serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("unknown message type {kind:?} version {version}")]
    Unknown { kind: String, version: u32 },
    #[error("bad payload for {kind} v{version}: {source}")]
    Payload {
        kind: String,
        version: u32,
        source: serde_json::Error,
    },
}

impl RawEnvelope {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(DecodeError::Envelope)
    }

    pub fn position(&self) -> Position {
        Position {
            attempt: self.attempt,
            seq: self.seq,
        }
    }

    /// The object key a checked-out payload is stored under: one per message, in the job's
    /// tenant, sharded like assets (256 folders picked by the random end of the job id).
    pub fn claim_key(&self) -> String {
        let job = self.job_id.0.simple().to_string();
        let shard = &job[job.len() - 2..];
        format!(
            "tenants/{}/claims/{shard}/{job}/{}.json",
            self.tenant,
            self.message_id.0.simple()
        )
    }

    /// Takes the payload out of the envelope for storage, leaving a claim check in its place.
    /// Returns the key and the bytes to store there; the envelope is then small whatever the
    /// payload's size. Storing first and publishing after is the caller's part.
    pub fn check_out(&mut self) -> (String, Vec<u8>) {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(&self.payload).expect("JSON values serialise");
        let key = self.claim_key();
        self.payload_ref = Some(ClaimCheck {
            key: key.clone(),
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
        self.payload = serde_json::Value::Null;
        (key, bytes)
    }

    /// Puts a checked-out payload back from the bytes read at its claim check, after checking
    /// they are the bytes that were stored. A no-op for an envelope without a claim check.
    pub fn check_in(&mut self, bytes: &[u8]) -> Result<(), ClaimError> {
        use sha2::{Digest, Sha256};
        let Some(check) = &self.payload_ref else {
            return Ok(());
        };
        let found_sha = hex::encode(Sha256::digest(bytes));
        if bytes.len() as u64 != check.size_bytes || found_sha != check.sha256 {
            return Err(ClaimError::Mismatch {
                message_id: self.message_id,
                found: bytes.len() as u64,
                found_sha,
                expected: check.size_bytes,
                expected_sha: check.sha256.clone(),
            });
        }
        self.payload =
            serde_json::from_slice(bytes).map_err(|e| ClaimError::NotJson(self.message_id, e))?;
        self.payload_ref = None;
        Ok(())
    }

    fn payload_as<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        // Deserialised from a reference: a completion's payload holds every delivered contact,
        // and cloning it first was the largest allocation of decoding (replay profile).
        T::deserialize(&self.payload).map_err(|source| DecodeError::Payload {
            kind: self.kind.clone(),
            version: self.version,
            source,
        })
    }

    pub fn decode_command(&self) -> Result<Command, DecodeError> {
        match (self.kind.as_str(), self.version) {
            (RunJob::TYPE, 1) => Ok(Command::RunJob(self.payload_as()?)),
            (RunChunk::TYPE, 1) => Ok(Command::RunChunk(self.payload_as()?)),
            _ => Err(self.unknown()),
        }
    }

    /// Decodes an event of any version this build knows, upcasting older versions to the
    /// newest shape first, so that the read model (and replay of an old log) only ever sees one
    /// shape per type.
    pub fn decode_event(&self) -> Result<Event, DecodeError> {
        use Event::*;
        let upcast;
        let this = match upcast_event(self) {
            Some(newer) => {
                upcast = newer;
                &upcast
            }
            None => self,
        };
        Ok(match (this.kind.as_str(), this.version) {
            (kinds::CREATED, 1) => Created(this.payload_as()?),
            (kinds::STARTED, 1) => Started(this.payload_as()?),
            (kinds::PROGRESS, 2) => Progress(this.payload_as()?),
            (kinds::WARNING, 1) => Warning(this.payload_as()?),
            (kinds::COMPLETED, 1) => Completed(this.payload_as()?),
            (kinds::CHUNK_COMPLETED, 1) => ChunkCompleted(this.payload_as()?),
            (kinds::FAILED, 1) => Failed(this.payload_as()?),
            (kinds::CANCELLED, 1) => Cancelled(this.payload_as()?),
            _ => return Err(self.unknown()),
        })
    }

    fn unknown(&self) -> DecodeError {
        DecodeError::Unknown {
            kind: self.kind.clone(),
            version: self.version,
        }
    }
}

/// Rewrites an event of an older version into the next version's shape, repeatedly, until it
/// has the newest shape. `None` when the event is already current (or of a type or version
/// nobody upcasts: decoding then reports it). Upcasters only add what the old version could not
/// say, as `null`; they never invent values, so an old log folds to exactly the view it folded
/// to when it was written.
fn upcast_event(raw: &RawEnvelope) -> Option<RawEnvelope> {
    let mut current: Option<RawEnvelope> = None;
    loop {
        let at = current.as_ref().unwrap_or(raw);
        let next = match (at.kind.as_str(), at.version) {
            // v1 → v2: v2 adds the stage's item counts, which v1 never carried.
            (kinds::PROGRESS, 1) => {
                let mut payload = at.payload.clone();
                if let Some(obj) = payload.as_object_mut() {
                    obj.entry("done").or_insert(serde_json::Value::Null);
                    obj.entry("total").or_insert(serde_json::Value::Null);
                }
                RawEnvelope {
                    version: 2,
                    payload,
                    ..at.clone()
                }
            }
            _ => return current,
        };
        current = Some(next);
    }
}

/// Metadata shared by every message of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRef {
    pub job_id: JobId,
    pub tenant: TenantId,
}

fn envelope(
    job: &JobRef,
    kind: &str,
    version: u32,
    at: Position,
    occurred_at: DateTime<Utc>,
    payload: serde_json::Value,
) -> RawEnvelope {
    RawEnvelope {
        kind: kind.to_owned(),
        version,
        message_id: MessageId::new(),
        job_id: job.job_id,
        tenant: job.tenant.clone(),
        occurred_at,
        attempt: at.attempt,
        seq: at.seq,
        payload,
        payload_ref: None,
    }
}

// ---------------------------------------------------------------- commands

/// `job.run` v1: everything a worker needs to run a job, so that any worker can take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunJob {
    pub plan: Plan,
    pub input: JobInput,
    #[serde(default)]
    pub icp_config: IcpConfig,
    #[serde(default)]
    pub execution_options: ExecutionOptions,
}

impl RunJob {
    pub const TYPE: &'static str = kinds::RUN;
}

/// Which part of a chunked job a `job.run_chunk` command or a `job.chunk_completed` event is:
/// chunk `index` (from 0) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOf {
    pub index: u32,
    pub count: u32,
}

/// `job.run_chunk` v1: one chunk of a job too big to run in one delivery. `run.input` holds
/// only the chunk's records; the plan and options are the job's. The worker that split the job
/// publishes one per chunk; any worker may run any of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunChunk {
    #[serde(flatten)]
    pub run: RunJob,
    pub chunk: ChunkOf,
}

impl RunChunk {
    pub const TYPE: &'static str = kinds::RUN_CHUNK;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    RunJob(RunJob),
    RunChunk(RunChunk),
}

pub fn run_chunk_command(job: &JobRef, chunk: &RunChunk, now: DateTime<Utc>) -> RawEnvelope {
    envelope(
        job,
        RunChunk::TYPE,
        1,
        Position::ORIGIN,
        now,
        serde_json::to_value(chunk).expect("RunChunk serialises"),
    )
}

pub fn run_job_command(job: &JobRef, run: &RunJob, now: DateTime<Utc>) -> RawEnvelope {
    envelope(
        job,
        RunJob::TYPE,
        1,
        Position::ORIGIN,
        now,
        serde_json::to_value(run).expect("RunJob serialises"),
    )
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub preset: Option<Preset>,
    pub requested_capabilities: Vec<Capability>,
    pub warnings: Vec<String>,
    #[serde(default)]
    pub chat_id: Option<uuid::Uuid>,
    pub companies: usize,
    pub contacts: usize,
    /// Where the job's outcome is posted (issue 16); absent: the tenant's endpoint, if any.
    /// Absent from events recorded before webhooks existed, and omitted when unset so their
    /// recordings stay byte for byte the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Whether each stage the job reaches is announced too (`job.stage`), not only its outcome.
    /// Omitted when false, so that recordings made before it existed stay byte for byte the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webhook_stages: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub worker: String,
}

/// `job.progress` v2. v1 had only `stage`, `percent` and `message`; v2 adds the stage's item
/// counts so that a consumer can draw its own progress without parsing the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: Capability,
    pub percent: u8,
    pub message: String,
    /// Items of the stage done so far, and in all; both null at a stage's start and in events
    /// upcast from v1.
    pub done: Option<u64>,
    pub total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub summary: Summary,
    pub contacts: Vec<DeliveredContact>,
}

/// `job.chunk_completed` v1: one chunk of a chunked job is done. `contacts` are the chunk's rows
/// as the stages left them, before finalisation (which runs once, over every chunk, when the
/// last one lands); the counts are the chunk's share of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkCompleted {
    pub chunk: ChunkOf,
    pub contacts: Vec<DeliveredContact>,
    /// Companies of the chunk that passed qualification.
    pub companies_kept: u64,
    pub companies_disqualified: u64,
    pub contacts_discovered: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub error: String,
    #[serde(default)]
    pub stage: Option<Capability>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    pub reason: String,
    /// What the job had done when it stopped, when a worker stopped it mid-run: delivered as
    /// partial assets. Absent when the job was cancelled before any work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Completed>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Created(Created),
    Started(Started),
    Progress(Progress),
    Warning(Warning),
    Completed(Completed),
    ChunkCompleted(ChunkCompleted),
    Failed(Failed),
    Cancelled(Cancelled),
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Created(_) => kinds::CREATED,
            Event::Started(_) => kinds::STARTED,
            Event::Progress(_) => kinds::PROGRESS,
            Event::Warning(_) => kinds::WARNING,
            Event::Completed(_) => kinds::COMPLETED,
            Event::ChunkCompleted(_) => kinds::CHUNK_COMPLETED,
            Event::Failed(_) => kinds::FAILED,
            Event::Cancelled(_) => kinds::CANCELLED,
        }
    }

    /// The version producers emit: always the newest this build knows.
    pub fn version(&self) -> u32 {
        match self {
            Event::Progress(_) => 2,
            _ => 1,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::Completed(_) | Event::Failed(_) | Event::Cancelled(_)
        )
    }

    fn payload(&self) -> serde_json::Value {
        let v = match self {
            Event::Created(p) => serde_json::to_value(p),
            Event::Started(p) => serde_json::to_value(p),
            Event::Progress(p) => serde_json::to_value(p),
            Event::Warning(p) => serde_json::to_value(p),
            Event::Completed(p) => serde_json::to_value(p),
            Event::ChunkCompleted(p) => serde_json::to_value(p),
            Event::Failed(p) => serde_json::to_value(p),
            Event::Cancelled(p) => serde_json::to_value(p),
        };
        v.expect("events serialise")
    }

    pub fn into_envelope(self, job: &JobRef, at: Position, now: DateTime<Utc>) -> RawEnvelope {
        envelope(job, self.kind(), self.version(), at, now, self.payload())
    }
}

/// A decoded event with the envelope fields the read model needs.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub message_id: MessageId,
    pub job_id: JobId,
    pub tenant: TenantId,
    pub occurred_at: DateTime<Utc>,
    pub position: Position,
    pub event: Event,
}

impl EventRecord {
    pub fn from_raw(raw: &RawEnvelope) -> Result<Self, DecodeError> {
        Ok(Self {
            message_id: raw.message_id,
            job_id: raw.job_id,
            tenant: raw.tenant.clone(),
            occurred_at: raw.occurred_at,
            position: raw.position(),
            event: raw.decode_event()?,
        })
    }
}

#[cfg(test)]
impl JobRef {
    /// A fresh job of tenant `acme`, for unit tests.
    pub(crate) fn sample() -> Self {
        JobRef {
            job_id: JobId::new(),
            tenant: TenantId::parse("acme").unwrap(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobRef {
        JobRef::sample()
    }

    #[test]
    fn an_event_survives_the_round_trip_through_json() {
        let j = job();
        let raw = Event::Warning(Warning {
            message: "x".into(),
        })
        .into_envelope(&j, Position { attempt: 1, seq: 3 }, Utc::now());
        let bytes = serde_json::to_vec(&raw).unwrap();
        let back = RawEnvelope::from_slice(&bytes).unwrap();
        assert_eq!(back, raw);
        let rec = EventRecord::from_raw(&back).unwrap();
        assert_eq!(rec.position, Position { attempt: 1, seq: 3 });
        assert!(matches!(rec.event, Event::Warning(w) if w.message == "x"));
    }

    #[test]
    fn an_unknown_version_is_reported_not_guessed() {
        let j = job();
        let mut raw = Event::Started(Started { worker: "w".into() }).into_envelope(
            &j,
            Position::ORIGIN,
            Utc::now(),
        );
        raw.version = 9;
        let err = raw.decode_event().unwrap_err();
        assert!(
            err.to_string().contains("\"job.started\" version 9"),
            "{err}"
        );
    }

    #[test]
    fn progress_is_emitted_as_v2() {
        let raw = Event::Progress(Progress {
            stage: Capability::EmailVerify,
            percent: 40,
            message: "Verifying emails (4/10)...".into(),
            done: Some(4),
            total: Some(10),
        })
        .into_envelope(&job(), Position { attempt: 1, seq: 2 }, Utc::now());
        assert_eq!(raw.version, 2);
        assert_eq!(raw.payload["done"], 4);
        assert!(matches!(
            raw.decode_event().unwrap(),
            Event::Progress(Progress {
                done: Some(4),
                total: Some(10),
                ..
            })
        ));
    }

    #[test]
    fn a_v1_progress_event_is_upcast_with_unknown_counts() {
        let mut raw = Event::Started(Started { worker: "w".into() }).into_envelope(
            &job(),
            Position { attempt: 1, seq: 2 },
            Utc::now(),
        );
        raw.kind = "job.progress".into();
        raw.version = 1;
        raw.payload = serde_json::json!({"stage": "email_verify", "percent": 40, "message": "m"});
        let Event::Progress(p) = raw.decode_event().unwrap() else {
            panic!("not a progress event");
        };
        assert_eq!(
            p,
            Progress {
                stage: Capability::EmailVerify,
                percent: 40,
                message: "m".into(),
                done: None,
                total: None,
            }
        );
        // The stored envelope keeps what was recorded: upcasting happens on every read.
        assert_eq!(raw.version, 1);
    }

    #[test]
    fn a_checked_out_payload_comes_back_only_from_the_bytes_that_were_stored() {
        let mut raw = Event::Warning(Warning {
            message: "x".repeat(1000),
        })
        .into_envelope(&job(), Position { attempt: 1, seq: 1 }, Utc::now());
        let original = raw.clone();
        let (key, bytes) = raw.check_out();
        assert_eq!(raw.payload, serde_json::Value::Null);
        assert!(key.starts_with("tenants/acme/claims/"), "{key}");
        let on_the_wire = serde_json::to_vec(&raw).unwrap();
        assert!(on_the_wire.len() < 600, "{} bytes", on_the_wire.len());
        let mut back = RawEnvelope::from_slice(&on_the_wire).unwrap();
        let mut tampered = bytes.clone();
        tampered[5] ^= 1;
        assert!(matches!(
            back.clone().check_in(&tampered),
            Err(ClaimError::Mismatch { .. })
        ));
        back.check_in(&bytes).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn an_envelope_without_a_claim_check_serialises_as_before() {
        let raw = Event::Started(Started { worker: "w".into() }).into_envelope(
            &job(),
            Position::ORIGIN,
            Utc::now(),
        );
        let text = serde_json::to_string(&raw).unwrap();
        assert!(!text.contains("payload_ref"), "{text}");
    }

    #[test]
    fn a_chunk_command_round_trips_with_its_place_in_the_job() {
        let run = RunChunk {
            run: RunJob {
                plan: crate::domain::plan::plan(crate::domain::plan::Request::Preset(
                    "verify_existing_emails",
                ))
                .unwrap(),
                input: JobInput::default(),
                icp_config: Default::default(),
                execution_options: Default::default(),
            },
            chunk: ChunkOf { index: 2, count: 5 },
        };
        let raw = run_chunk_command(&job(), &run, Utc::now());
        assert_eq!(raw.kind, "job.run_chunk");
        assert_eq!(raw.payload["chunk"]["index"], 2);
        assert_eq!(raw.decode_command().unwrap(), Command::RunChunk(run));
    }

    #[test]
    fn garbage_is_an_envelope_error() {
        assert!(matches!(
            RawEnvelope::from_slice(b"{not json"),
            Err(DecodeError::Envelope(_))
        ));
    }

    #[test]
    fn positions_order_by_attempt_then_sequence() {
        let a = Position { attempt: 1, seq: 9 };
        let b = Position { attempt: 2, seq: 1 };
        assert!(a < b);
        assert!(Position::ORIGIN < a);
    }
}
