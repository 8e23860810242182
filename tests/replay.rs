//! Event-replay tests. Each recorded stream in `tests/fixtures/*.jsonl` is imported into a fresh
//! database through the projector's step, and the API's answers (`GET job`, `GET result`, and
//! the CSV asset of a completed job) are compared with the golden files beside it. The same
//! answers must then survive a second import, a rebuild of the read model from the log, and
//! compaction followed by a rebuild.
//!
//! When behaviour changes on purpose, regenerate the goldens and review their diff:
//!
//! ```sh
//! BDJOBS_BLESS=1 cargo test --test replay
//! git diff tests/fixtures/
//! ```

mod common;

use bdjobs::adapters::db;
use bdjobs::adapters::db::events::Scope;
use bdjobs::adapters::storage;
use bdjobs::api::render::{job_json, result_json};
use bdjobs::domain::ids::{JobId, TenantId};
use bdjobs::domain::job::{JobStatus, JobView};
use bdjobs::domain::messages::RawEnvelope;
use bdjobs::read_model;
use bdjobs::read_model::event_log::{self, ImportReport};
use bdjobs::read_model::replay::{self, Rebuild};
use chrono::Utc;
use common::Resources;
use indicatif::ProgressBar;
use opendal::Operator;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn blessing() -> bool {
    std::env::var("BDJOBS_BLESS").is_ok_and(|v| v == "1")
}

/// Every recorded stream, by name (the file name without `.jsonl`).
fn streams() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".jsonl").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

fn read_stream(name: &str) -> Vec<RawEnvelope> {
    std::fs::read_to_string(fixture(&format!("{name}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The differences between two JSON values, one line per differing path.
fn json_diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (e.get(k), a.get(k)) {
                    (Some(x), Some(y)) => json_diff(&p, x, y, out),
                    (Some(x), None) => out.push(format!("{p}: expected {x}, missing")),
                    (None, Some(y)) => out.push(format!("{p}: unexpected {y}")),
                    (None, None) => unreachable!(),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                json_diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if expected != actual => out.push(format!("{path}: expected {expected}, got {actual}")),
        _ => {}
    }
}

/// Compares `actual` with a golden file, or rewrites the file when blessing.
fn golden_json(file: &str, actual: &Value) {
    let path = fixture(file);
    if blessing() {
        std::fs::write(&path, serde_json::to_string_pretty(actual).unwrap() + "\n").unwrap();
        return;
    }
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; create it with BDJOBS_BLESS=1", path.display())),
    )
    .unwrap();
    let mut diff = Vec::new();
    json_diff("$", &expected, actual, &mut diff);
    assert!(
        diff.is_empty(),
        "{file} differs from the replayed answer:\n  {}\nIf the change is intended, run \
         `BDJOBS_BLESS=1 cargo test --test replay` and review `git diff tests/fixtures/`.",
        diff.join("\n  ")
    );
}

/// Compares bytes with a golden file (absent when `actual` is `None`), or rewrites it.
fn golden_bytes(file: &str, actual: Option<&[u8]>) {
    let path = fixture(file);
    if blessing() {
        match actual {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        return;
    }
    let expected = std::fs::read(&path).ok();
    assert!(
        expected.as_deref() == actual,
        "{file} differs from the replayed asset (expected {} bytes, got {} bytes); if intended, \
         run `BDJOBS_BLESS=1 cargo test --test replay`",
        expected.map_or(0, |b| b.len()),
        actual.map_or(0, |b| b.len())
    );
}

/// What the API answers about one job: the stored view (for exact comparisons), the two JSON
/// bodies and every listed asset's bytes.
#[derive(Debug, PartialEq)]
struct Answers {
    view: JobView,
    job: Value,
    result: Value,
    assets: BTreeMap<String, Vec<u8>>,
}

async fn answers(pool: &deadpool_postgres::Pool, store: &Operator, job: &RawEnvelope) -> Answers {
    let view = db::jobs::get_view(pool, &job.tenant, job.job_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {} has no view", job.job_id));
    let mut assets = BTreeMap::new();
    for a in view.result.iter().flat_map(|r| &r.assets) {
        let row = db::jobs::get_asset(pool, &job.tenant, job.job_id, &a.asset_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("asset {} is listed but not indexed", a.asset_id));
        let at = row.byte_offset as u64;
        let bytes = storage::get_range(store, &row.storage_key, at..at + row.size_bytes as u64)
            .await
            .unwrap();
        assert_eq!(bytes.len() as i64, row.size_bytes);
        assets.insert(a.asset_id.as_str().to_owned(), bytes);
    }
    Answers {
        job: job_json(&view),
        result: result_json(&view),
        view,
        assets,
    }
}

async fn import(pool: &deadpool_postgres::Pool, store: &Operator, path: &Path) -> ImportReport {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    event_log::import(pool, store, file, &path.display().to_string(), false)
        .await
        .unwrap()
}

async fn execute(pool: &deadpool_postgres::Pool, sql: &str) -> u64 {
    pool.get().await.unwrap().execute(sql, &[]).await.unwrap()
}

/// Forgets the whole read model: views, asset index and asset objects.
async fn wipe_read_model(res: &Resources, store: &Operator) {
    let client = res.pool.get().await.unwrap();
    for row in client
        .query("SELECT DISTINCT storage_key FROM assets", &[])
        .await
        .unwrap()
    {
        store.delete(row.get::<_, &str>(0)).await.unwrap();
    }
    client
        .batch_execute("DELETE FROM assets; DELETE FROM jobs")
        .await
        .unwrap();
}

/// The whole life of one recorded stream; see the module documentation.
async fn check_stream(name: &str) {
    let res = Resources::new(&format!("rp_{}", &name[..name.len().min(20)])).await;
    let store = storage::operator(&res.config.assets_location()).unwrap();
    let path = fixture(&format!("{name}.jsonl"));
    let stream = read_stream(name);
    let job = stream[0].clone();

    let first = import(&res.pool, &store, &path).await;
    assert!(first.skipped.is_empty(), "{name}: {:?}", first.skipped);
    let unique: HashSet<_> = stream.iter().map(|e| e.message_id).collect();
    assert_eq!(
        first.duplicates,
        (stream.len() - unique.len()) as u64,
        "{name}"
    );

    let got = answers(&res.pool, &store, &job).await;
    golden_json(&format!("{name}.job.json"), &got.job);
    golden_json(&format!("{name}.result.json"), &got.result);
    golden_bytes(
        &format!("{name}.verified_contacts.csv"),
        got.assets.get("verified_contacts_csv").map(Vec::as_slice),
    );

    // Importing again changes nothing.
    let second = import(&res.pool, &store, &path).await;
    assert_eq!(
        (
            second.changed,
            second.unchanged,
            second.orphans,
            second.duplicates
        ),
        (0, 0, 0, stream.len() as u64),
        "{name}: second import"
    );
    assert_eq!(answers(&res.pool, &store, &job).await, got, "{name}");

    // The export holds each event once, in the order the log first recorded it.
    let mut out = Vec::new();
    let n = event_log::export(&res.pool, &store, &Scope::default(), &mut out, false)
        .await
        .unwrap();
    let exported: Vec<RawEnvelope> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(n as usize, exported.len());
    let mut seen = HashSet::new();
    let first_seen: Vec<&RawEnvelope> = stream
        .iter()
        .filter(|e| seen.insert(e.message_id))
        .collect();
    assert_eq!(
        exported.iter().collect::<Vec<_>>(),
        first_seen,
        "{name}: export"
    );

    // A rebuild from the log alone gives the same answers, and a second one changes nothing.
    wipe_read_model(&res, &store).await;
    let report = replay::replay(&res.pool, &store, Scope::default(), false)
        .await
        .unwrap();
    assert_eq!(
        (report.jobs, report.swapped.views_changed),
        (1, 1),
        "{name}"
    );
    assert_eq!(
        answers(&res.pool, &store, &job).await,
        got,
        "{name}: replay"
    );
    let again = replay::replay(&res.pool, &store, Scope::default(), false)
        .await
        .unwrap();
    assert_eq!(
        (again.swapped.views_changed, again.swapped.assets_changed),
        (0, 0),
        "{name}: a second replay"
    );

    // Compaction keeps what the answers need.
    let compacted = event_log::compact(&res.pool, Utc::now(), false)
        .await
        .unwrap();
    if got.view.status.is_terminal() {
        assert!(compacted.deleted > 0, "{name}: nothing compacted");
    }
    let left = event_log::export(&res.pool, &store, &Scope::default(), &mut Vec::new(), false)
        .await
        .unwrap();
    assert_eq!(left, unique.len() as u64 - compacted.deleted, "{name}");
    wipe_read_model(&res, &store).await;
    replay::replay(&res.pool, &store, Scope::default(), false)
        .await
        .unwrap();
    assert_eq!(
        answers(&res.pool, &store, &job).await,
        got,
        "{name}: replay after compaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recorded_stream_replays_to_its_golden_answers() {
    let names = streams();
    for expected in [
        "cancelled",
        "completed",
        "completed_shuffled",
        "completed_v1",
        "failed",
        "retried",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing fixture {expected}"
        );
    }
    futures::future::join_all(names.iter().map(|n| check_stream(n))).await;
}

#[test]
fn the_fixtures_cover_each_outcome_and_the_old_and_shuffled_recordings_agree() {
    let status = |name: &str| -> String {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{name}.job.json"))).unwrap(),
        )
        .unwrap();
        v["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status("completed"), "completed");
    assert_eq!(status("failed"), "failed");
    assert_eq!(status("cancelled"), "cancelled");
    assert_eq!(status("retried"), "completed");

    // The v1 recording really is old, and the shuffled one really is shuffled and duplicated.
    let v1 = read_stream("completed_v1");
    let progress: Vec<_> = v1.iter().filter(|e| e.kind == "job.progress").collect();
    assert!(!progress.is_empty() && progress.iter().all(|e| e.version == 1));
    let ordered = read_stream("completed");
    let shuffled = read_stream("completed_shuffled");
    assert!(shuffled.len() > ordered.len());
    assert_ne!(shuffled[0].kind, "job.created");
    let retried = read_stream("retried");
    assert!(retried.iter().any(|e| e.attempt == 1) && retried.iter().any(|e| e.attempt == 2));
    assert!(!retried
        .iter()
        .any(|e| e.attempt == 1 && e.kind == "job.completed"));

    // Same job, same events: the same answers, byte for byte.
    for variant in ["completed_v1", "completed_shuffled"] {
        for suffix in ["job.json", "result.json", "verified_contacts.csv"] {
            assert_eq!(
                std::fs::read(fixture(&format!("completed.{suffix}"))).unwrap(),
                std::fs::read(fixture(&format!("{variant}.{suffix}"))).unwrap(),
                "{variant}.{suffix}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_reported_with_their_numbers_and_the_rest_imported() {
    let res = Resources::new("rp_bad").await;
    let store = storage::operator("memory://").unwrap();
    let good = std::fs::read_to_string(fixture("cancelled.jsonl")).unwrap();
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let mut unknown: Value = serde_json::from_str(&lines[1]).unwrap();
    unknown["type"] = "job.exploded".into();
    unknown["message_id"] = uuid::Uuid::new_v4().to_string().into();
    lines.insert(2, "{not json".into());
    lines.insert(3, String::new());
    lines.insert(4, unknown.to_string());
    let report = event_log::import(
        &res.pool,
        &store,
        std::io::Cursor::new(lines.join("\n")),
        "mixed",
        false,
    )
    .await
    .unwrap();
    let numbers: Vec<usize> = report.skipped.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [3, 5]);
    assert!(
        report.skipped[1].1.contains("job.exploded"),
        "{:?}",
        report.skipped
    );
    let job = read_stream("cancelled")[0].clone();
    let view = db::jobs::get_view(&res.pool, &job.tenant, job.job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status, JobStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_loses_no_event_applied_while_it_runs() {
    let res = Resources::new("rp_live").await;
    let store = storage::operator(&res.config.assets_location()).unwrap();
    let completed = read_stream("completed");
    let (last, before) = completed.split_last().unwrap();
    assert_eq!(last.kind, "job.completed");
    for e in before {
        read_model::apply(&res.pool, &store, e).await.unwrap();
    }
    import(&res.pool, &store, &fixture("failed.jsonl")).await;

    let rebuild = Rebuild::start(&res.pool, Scope::default()).await.unwrap();
    assert_eq!(rebuild.jobs(), 2);
    rebuild
        .build(&res.pool, &store, &ProgressBar::hidden())
        .await
        .unwrap();
    // A live projector applies events while the shadow waits: the running job completes, and
    // a new job arrives.
    read_model::apply(&res.pool, &store, last).await.unwrap();
    import(&res.pool, &store, &fixture("cancelled.jsonl")).await;
    let report = rebuild.swap(&res.pool, &store).await.unwrap();
    assert_eq!((report.jobs, report.caught_up), (3, 2));

    let got = answers(&res.pool, &store, &completed[0]).await;
    golden_json("completed.job.json", &got.job);
    golden_json("completed.result.json", &got.result);
    golden_bytes(
        "completed.verified_contacts.csv",
        got.assets.get("verified_contacts_csv").map(Vec::as_slice),
    );
    let cancelled = read_stream("cancelled");
    golden_json(
        "cancelled.job.json",
        &answers(&res.pool, &store, &cancelled[0]).await.job,
    );
    let shadow = execute(&res.pool, "SELECT 1 FROM jobs_rebuild").await;
    assert_eq!(shadow, 0, "the run leaves no shadow rows behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_replay_leaves_other_jobs_alone() {
    let res = Resources::new("rp_scope").await;
    let store = storage::operator(&res.config.assets_location()).unwrap();
    import(&res.pool, &store, &fixture("completed.jsonl")).await;
    import(&res.pool, &store, &fixture("failed.jsonl")).await;
    let (done, failed) = (
        read_stream("completed")[0].clone(),
        read_stream("failed")[0].clone(),
    );
    let before_done = answers(&res.pool, &store, &done).await;
    let before_failed = answers(&res.pool, &store, &failed).await;
    let tamper = "UPDATE jobs SET view = jsonb_set(view, '{progress_message}', '\"tampered\"')";
    assert_eq!(execute(&res.pool, tamper).await, 2);

    let one = Scope {
        tenant: None,
        job: Some(done.job_id),
    };
    let report = replay::replay(&res.pool, &store, one, false).await.unwrap();
    assert_eq!((report.jobs, report.swapped.views_changed), (1, 1));
    assert_eq!(answers(&res.pool, &store, &done).await, before_done);
    assert_eq!(
        answers(&res.pool, &store, &failed).await.job["progress_message"],
        "tampered"
    );

    let other = Scope {
        tenant: Some(TenantId::parse("someone-else").unwrap()),
        job: None,
    };
    let report = replay::replay(&res.pool, &store, other, false)
        .await
        .unwrap();
    assert_eq!(
        (
            report.jobs,
            report.swapped.views_changed,
            report.swapped.views_removed
        ),
        (0, 0, 0)
    );

    let tenant = Scope {
        tenant: Some(failed.tenant.clone()),
        job: None,
    };
    let report = replay::replay(&res.pool, &store, tenant, false)
        .await
        .unwrap();
    assert_eq!((report.jobs, report.swapped.views_changed), (2, 1));
    assert_eq!(answers(&res.pool, &store, &failed).await, before_failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_spares_running_jobs_and_recent_events() {
    let res = Resources::new("rp_compact").await;
    let store = storage::operator("memory://").unwrap();
    let completed = read_stream("completed");
    let (_, running) = completed.split_last().unwrap();
    for e in running {
        read_model::apply(&res.pool, &store, e).await.unwrap();
    }
    import(&res.pool, &store, &fixture("failed.jsonl")).await;
    let progress_of = |job: JobId| {
        let pool = res.pool.clone();
        async move {
            pool.get()
                .await
                .unwrap()
                .query_one(
                    "SELECT count(*) FROM events WHERE job_id = $1 AND type = 'job.progress'",
                    &[&job.0],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let failed = read_stream("failed");
    let failed_progress = failed.iter().filter(|e| e.kind == "job.progress").count() as i64;
    let running_progress = progress_of(completed[0].job_id).await;

    // Every recorded event occurred at or after the stream's first: nothing is that old.
    let report = event_log::compact(&res.pool, failed[0].occurred_at, false)
        .await
        .unwrap();
    assert_eq!(report.deleted, 0);
    assert_eq!(progress_of(failed[0].job_id).await, failed_progress);

    let report = event_log::compact(&res.pool, Utc::now(), false)
        .await
        .unwrap();
    assert_eq!(report.jobs, 1, "only the finished job is a candidate");
    assert!(report.deleted > 0);
    let kept = progress_of(failed[0].job_id).await;
    assert_eq!(kept, failed_progress - report.deleted as i64);
    assert!((1..=3).contains(&kept), "{kept} progress events kept");
    assert_eq!(progress_of(completed[0].job_id).await, running_progress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_holding_a_claim_check_instead_of_a_payload_replays_and_exports_the_same() {
    let res = Resources::new("rp_claim").await;
    let store = storage::operator(&res.config.assets_location()).unwrap();
    let stream = read_stream("completed");
    let job = stream[0].clone();
    import(&res.pool, &store, &fixture("completed.jsonl")).await;
    let expected = answers(&res.pool, &store, &job).await;

    // The log keeps payloads inline; rewrite the completion as a log written otherwise would
    // hold it: a reference to the payload in the asset store.
    let original = stream
        .iter()
        .find(|e| e.kind == "job.completed")
        .unwrap()
        .clone();
    let mut checked = original.clone();
    let (key, bytes) = checked.check_out();
    storage::put(&store, &key, bytes).await.unwrap();
    let client = res.pool.get().await.unwrap();
    let rewritten = client
        .execute(
            "UPDATE events SET envelope = $1 WHERE message_id = $2",
            &[
                &serde_json::to_value(&checked).unwrap(),
                &checked.message_id.0,
            ],
        )
        .await
        .unwrap();
    assert_eq!(rewritten, 1);

    wipe_read_model(&res, &store).await;
    replay::replay(&res.pool, &store, Scope::default(), false)
        .await
        .unwrap();
    assert_eq!(answers(&res.pool, &store, &job).await, expected);

    let mut out = Vec::new();
    event_log::export(&res.pool, &store, &Scope::default(), &mut out, false)
        .await
        .unwrap();
    let exported: Vec<RawEnvelope> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let completion = exported
        .iter()
        .find(|e| e.message_id == original.message_id)
        .unwrap();
    assert_eq!(
        completion, &original,
        "the export carries the payload itself"
    );
}
