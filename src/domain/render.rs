//! The JSON of a job (`GET /bd/jobs/{id}`) and of its result (`GET .../result`), in the seed's
//! shape, from its view. Pure; the API (`api::render`) serves them and the webhook payload
//! (`domain::webhooks::payload`) carries the first with the result's summary.

use super::job::{JobView, ResultView};
use super::stages::Summary;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// With milliseconds: webhook attempts and retries can be closer together than a second.
pub fn ts_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn opt_ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

pub fn job_json(v: &JobView) -> serde_json::Value {
    json!({
        "job_id": v.job_id,
        "status": v.status.as_str(),
        "progress_percent": v.progress_percent,
        "progress_message": v.progress_message,
        "preset": v.preset.map(|p| p.as_str()),
        "requested_capabilities": v.requested_capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "warnings": v.warnings,
        "error_message": v.error_message,
        "created_at": ts(v.created_at),
        "updated_at": ts(v.updated_at),
        "started_at": opt_ts(v.started_at),
        "completed_at": opt_ts(v.completed_at),
    })
}

/// The seed's shape, field for field.
pub fn result_json(v: &JobView) -> serde_json::Value {
    let empty = Summary::default();
    let (result_id, summary, assets, created_at) = match &v.result {
        Some(ResultView {
            result_id,
            summary,
            assets,
            created_at,
        }) => (
            Some(*result_id),
            summary,
            assets.as_slice(),
            Some(*created_at),
        ),
        None => (None, &empty, &[][..], None),
    };
    let assets: Vec<_> = assets
        .iter()
        .map(|a| {
            json!({
                "asset_id": a.asset_id,
                "label": a.label,
                "kind": a.kind,
                "mime_type": a.mime_type,
                "availability": a.availability,
                "download_url": format!("/api/v1/bd/jobs/{}/assets/{}", v.job_id, a.asset_id),
            })
        })
        .collect();
    json!({
        "result_id": result_id,
        "job_id": v.job_id,
        "status": v.status.as_str(),
        "progress_percent": v.progress_percent,
        "progress_message": v.progress_message,
        "summary": summary,
        "warnings": v.warnings,
        "result_assets": assets,
        "created_at": opt_ts(created_at),
        "completed_at": opt_ts(v.completed_at),
    })
}
