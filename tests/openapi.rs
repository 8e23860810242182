//! The OpenAPI document generated from the code (`bdjobs::api::openapi`) against what the code
//! does: the routes the router serves, who needs a key, and the JSON the handlers build,
//! validated with a JSON Schema validator against the document's own schemas; and the seed's
//! result example. Needs no database or broker.

use bdjobs::api::jobs::CreateJob;
use bdjobs::api::openapi;
use bdjobs::api::render::{job_json, result_json, WebhookDeliveries};
use bdjobs::domain::email::{Check, EmailChecks, EmailStatus};
use bdjobs::domain::ids::{JobId, MessageId, TenantId};
use bdjobs::domain::job::JobView;
use bdjobs::domain::messages::{
    Completed, Created, Event, EventRecord, Failed, Position, Progress, Started,
};
use bdjobs::domain::plan::{Capability, Preset};
use bdjobs::domain::stages::deliverable::render_json;
use bdjobs::domain::stages::{DeliveredContact, Summary};
use chrono::{Duration, TimeZone, Utc};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Every route `bdjobs::api::router` serves, as (method, full path). The router and the document
/// come from one table (`api::documented`), so this list pins what that table holds: a route
/// added or removed there fails
/// `the_documented_operations_are_exactly_the_routes_the_router_serves` until it is listed.
const ROUTES: [(&str, &str); 13] = [
    ("get", "/api/v1/bd/jobs"),
    ("post", "/api/v1/bd/jobs"),
    ("post", "/api/v1/bd/jobs/{job_id}/cancel"),
    ("get", "/api/v1/bd/jobs/{job_id}"),
    ("get", "/api/v1/bd/jobs/{job_id}/result"),
    ("get", "/api/v1/bd/jobs/{job_id}/events"),
    ("get", "/api/v1/bd/jobs/{job_id}/webhooks"),
    ("get", "/api/v1/bd/jobs/{job_id}/assets/{asset_id}"),
    ("head", "/api/v1/bd/jobs/{job_id}/assets/{asset_id}"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// The routes that need no bearer token.
const PUBLIC_ROUTES: [&str; 4] = ["/api/v1/openapi.json", "/healthz", "/readyz", "/metrics"];

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The example of `seed-result-endpoint.txt`, verbatim: its shape is binding.
const SEED_RESULT_EXAMPLE: &str = r#"{
  "result_id": "f9e8d7c6-b5a4-3210-fedc-ba9876543210",
  "job_id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
  "status": "completed",
  "progress_percent": 100,
  "progress_message": "Job complete.",
  "summary": {
    "delivered_contacts": 18,
    "verified_emails": 14,
    "companies_processed": 2
  },
  "warnings": [],
  "result_assets": [
    {
      "asset_id": "verified_contacts",
      "label": "Verified Contacts",
      "kind": "contacts",
      "mime_type": "application/json",
      "availability": "inline",
      "download_url": "/api/v1/bd/jobs/a1b2c3d4-e5f6-7890-abcd-ef1234567890/assets/verified_contacts"
    }
  ],
  "created_at": "2026-04-08T12:08:12Z",
  "completed_at": "2026-04-08T12:08:12Z"
}"#;

fn doc() -> Value {
    serde_json::from_slice(openapi::document()).expect("the served document is JSON")
}

fn seed() -> Value {
    serde_json::from_str(SEED_RESULT_EXAMPLE).expect("the seed example is JSON")
}

/// A validator for `schema`, a JSON Schema that may `$ref` into `#/components/schemas/...`: the
/// document's components ride along at the root, where the references point. OpenAPI 3.1
/// schemas are JSON Schema 2020-12; formats (`uuid`, `date-time`, ...) are checked too.
fn validator_for(schema: Value) -> jsonschema::Validator {
    let mut root = schema;
    root["components"] = doc()["components"].clone();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the schema compiles: {e}"))
}

fn validator(name: &str) -> jsonschema::Validator {
    assert!(
        doc()["components"]["schemas"].get(name).is_some(),
        "components.schemas.{name} exists"
    );
    validator_for(json!({ "$ref": format!("#/components/schemas/{name}") }))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect()
}

#[track_caller]
fn assert_valid(name: &str, instance: &Value) {
    let problems = errors(&validator(name), instance);
    assert!(
        problems.is_empty(),
        "{name} refuses {instance:#}:\n{}",
        problems.join("\n")
    );
}

#[track_caller]
fn assert_invalid(name: &str, instance: &Value) {
    assert!(
        !validator(name).is_valid(instance),
        "{name} accepts what it must refuse: {instance:#}"
    );
}

/// Resolves a local reference (`#/components/...`) in the document.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, op) in item.as_object().expect("a path item is an object") {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    out
}

// --- building views the way the API and the projector do ---

fn record(job: JobId, position: Position, at: chrono::DateTime<Utc>, event: Event) -> EventRecord {
    EventRecord {
        message_id: MessageId::new(),
        job_id: job,
        tenant: TenantId::parse("acme").unwrap(),
        occurred_at: at,
        position,
        event,
    }
}

fn created_view(preset: Option<Preset>) -> JobView {
    let caps = match preset {
        Some(p) => p.capabilities().to_vec(),
        None => vec![Capability::EmailVerify],
    };
    let rec = record(
        JobId::new(),
        Position::ORIGIN,
        // Sub-second precision on purpose: the API must render seconds only.
        Utc::now(),
        Event::Created(Created {
            webhook_url: None,
            webhook_stages: false,
            preset,
            requested_capabilities: caps
                .into_iter()
                .chain([Capability::DeliverableFinalize])
                .collect(),
            warnings: vec!["email_verify is not planned; delivered emails are unverified".into()],
            chat_id: Some(uuid::Uuid::new_v4()),
            companies: 2,
            contacts: 1,
        }),
    );
    JobView::created(&rec).expect("job.created starts a view")
}

fn apply(view: &mut JobView, attempt: u32, seq: u64, event: Event) {
    let at = view.created_at + Duration::milliseconds(1500 * seq as i64);
    let rec = record(view.job_id, Position { attempt, seq }, at, event);
    view.apply(&rec);
}

fn running_view() -> JobView {
    let mut v = created_view(Some(Preset::FullPipeline));
    apply(
        &mut v,
        1,
        1,
        Event::Started(Started {
            worker: "w1".into(),
        }),
    );
    apply(
        &mut v,
        1,
        2,
        Event::Progress(Progress {
            stage: Capability::ContactDiscovery,
            percent: 40,
            message: "Discovering contacts at 2 companies...".into(),
            done: None,
            total: None,
        }),
    );
    v
}

fn contact() -> DeliveredContact {
    DeliveredContact {
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        full_name: Some("Ada Lovelace".into()),
        title: Some("CTO".into()),
        company_name: Some("Acme".into()),
        company_domain: Some("acme.example".into()),
        email: Some("ada.lovelace@acme.example".into()),
        email_status: Some(EmailStatus::Verified),
        email_checks: Some(EmailChecks {
            syntax: Check::Pass,
            disposable: Check::Pass,
            role: Check::Pass,
            mx: Check::Pass,
            smtp: Check::Skipped,
        }),
        email_confidence: Some(0.875),
        email_pattern: Some("first.last".into()),
        linkedin_url: None,
        headline: None,
        location: Some("London".into()),
        company_size_band: Some("51-200".into()),
        source: "directory".into(),
    }
}

fn completed_view() -> JobView {
    let mut v = running_view();
    apply(
        &mut v,
        1,
        3,
        Event::Completed(Completed {
            summary: Summary {
                delivered_contacts: 1,
                verified_emails: 1,
                companies_processed: 2,
                contacts_discovered: 3,
                ..Default::default()
            },
            contacts: vec![contact()],
        }),
    );
    v
}

fn failed_view() -> JobView {
    let mut v = running_view();
    apply(
        &mut v,
        1,
        3,
        Event::Failed(Failed {
            error: "directory unavailable".into(),
            stage: Some(Capability::ContactDiscovery),
        }),
    );
    v
}

// --- the document itself ---

#[test]
fn the_document_is_openapi_3_1_with_an_overview() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    let overview = d["info"]["description"].as_str().unwrap_or_default();
    assert!(
        overview.contains("{\"detail\""),
        "the error format is described"
    );
    assert!(
        overview.contains("another account"),
        "the 404-for-other-tenants rule is described"
    );
    assert!(d["info"]["title"].is_string() && d["info"]["version"].is_string());
}

#[test]
fn the_documented_operations_are_exactly_the_routes_the_router_serves() {
    let documented: BTreeSet<(String, String)> = operations(&doc())
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn every_operation_has_an_id_a_summary_a_description_and_responses() {
    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc()) {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{method} {path}: operationId");
        assert!(
            ids.insert(id.to_owned()),
            "{method} {path}: operationId {id} is unique"
        );
        for field in ["summary", "description"] {
            assert!(
                !op[field].as_str().unwrap_or_default().is_empty(),
                "{method} {path}: {field}"
            );
        }
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}: responses"
        );
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        for name in ["job_id", "asset_id"] {
            assert_eq!(
                path.contains(&format!("{{{name}}}")),
                params.contains(&name),
                "{method} {path}: the {name} parameter is documented iff it is in the path"
            );
        }
    }
}

#[test]
fn the_bd_operations_document_the_statuses_their_handlers_return() {
    let d = doc();
    for (method, path, op) in operations(&d) {
        if PUBLIC_ROUTES.contains(&path.as_str()) {
            continue;
        }
        let codes: BTreeSet<&str> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // Every BD operation can meet authentication, the rate limit, the capacity limits and
        // an internal error; then each its own.
        let own: &[&str] = match (method.as_str(), path.as_str()) {
            ("post", p) if p.ends_with("/cancel") => &["202", "404", "409"],
            // 200: a dry run (`?dry_run=true`).
            ("post", _) => &["200", "202", "400", "409", "413", "422"],
            ("get", "/api/v1/bd/jobs") => &["200", "422"],
            (_, p) if p.ends_with("{asset_id}") => &["200", "206", "304", "404", "416"],
            _ => &["200", "404"],
        };
        let expected: BTreeSet<&str> = ["401", "429", "500", "503"]
            .into_iter()
            .chain(own.iter().copied())
            .collect();
        assert_eq!(codes, expected, "{method} {path}");
    }
    let post = &d["paths"]["/api/v1/bd/jobs"]["post"];
    assert!(post["responses"]["202"]["headers"]["Location"].is_object());
    assert!(post["requestBody"]["required"].as_bool().unwrap_or(false));
    let readyz = &d["paths"]["/readyz"]["get"]["responses"];
    assert!(readyz["503"]["headers"]["Retry-After"].is_object());
}

#[test]
fn every_error_response_has_the_error_schema_and_401_says_www_authenticate() {
    let d = doc();
    for (method, path, op) in operations(&d) {
        for (code, response) in op["responses"].as_object().unwrap() {
            let response = match response["$ref"].as_str() {
                Some(r) => resolve(&d, r).unwrap_or_else(|| panic!("{r} resolves")),
                None => response,
            };
            if code.starts_with('4') || code.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{method} {path} {code}"
                );
            }
            if code == "401" {
                assert!(
                    response["headers"]["WWW-Authenticate"].is_object(),
                    "{method} {path} 401"
                );
            }
        }
    }
    assert_valid("Error", &json!({"detail": "job not found"}));
    assert_invalid("Error", &json!({}));
    assert_invalid("Error", &json!({"detail": 4}));
}

#[test]
fn bearer_auth_applies_everywhere_but_the_public_endpoints() {
    let d = doc();
    let scheme = &d["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(d["security"], json!([{"bearerAuth": []}]));
    for (method, path, op) in operations(&d) {
        if PUBLIC_ROUTES.contains(&path.as_str()) {
            assert_eq!(op["security"], json!([]), "{method} {path} is public");
        } else {
            assert!(
                op.get("security").is_none(),
                "{method} {path} keeps the global bearer auth"
            );
        }
    }
}

#[test]
fn every_reference_in_the_document_resolves() {
    fn walk(doc: &Value, v: &Value, at: &str) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    assert!(resolve(doc, r).is_some(), "{at}: {r} does not resolve");
                }
                for (k, child) in m {
                    walk(doc, child, &format!("{at}/{k}"));
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(doc, child, &format!("{at}/{i}"));
                }
            }
            _ => {}
        }
    }
    let d = doc();
    walk(&d, &d, "#");
}

#[test]
fn the_parameters_accept_real_ids_and_the_asset_pattern_refuses_path_tricks() {
    let d = doc();
    let asset = &d["paths"]["/api/v1/bd/jobs/{job_id}/assets/{asset_id}"]["get"];
    let params = asset["parameters"].as_array().unwrap();
    let schema_of = |name: &str| {
        params
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["schema"].clone())
            .unwrap()
    };
    assert_eq!(
        schema_of("job_id"),
        json!({"type": "string", "format": "uuid"})
    );
    let job_id = validator_for(schema_of("job_id"));
    assert!(job_id.is_valid(&json!(JobId::new().to_string())));
    assert!(!job_id.is_valid(&json!("not-a-uuid")));
    let asset_id = validator_for(schema_of("asset_id"));
    for ok in ["verified_contacts", "verified_contacts_csv", "_x", "a-1"] {
        assert!(asset_id.is_valid(&json!(ok)), "{ok}");
    }
    for bad in ["", "-x", "../etc/passwd", "a/b", "Upper", &"a".repeat(65)] {
        assert!(!asset_id.is_valid(&json!(bad)), "{bad}");
    }
}

// --- the result endpoint ---

#[test]
fn the_seed_example_matches_the_result_schema() {
    assert_valid("JobResult", &seed());
}

#[test]
fn the_documented_result_example_is_the_seed_example() {
    let d = doc();
    let result = &d["paths"]["/api/v1/bd/jobs/{job_id}/result"]["get"]["responses"]["200"];
    assert_eq!(result["content"]["application/json"]["example"], seed());
}

#[test]
fn the_result_schema_has_exactly_the_seed_fields_all_required() {
    let d = doc();
    let schema = &d["components"]["schemas"]["JobResult"];
    let seed_fields: BTreeSet<String> = seed().as_object().unwrap().keys().cloned().collect();
    let properties: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(properties, seed_fields);
    assert_eq!(required, seed_fields);
}

#[test]
fn a_result_that_breaks_the_contract_does_not_validate() {
    let mut bad = seed();
    bad["status"] = json!("bogus");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["progress_percent"] = json!(101);
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["summary"]
        .as_object_mut()
        .unwrap()
        .remove("verified_emails");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["summary"]["extra_count"] = json!("many");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["result_assets"][0]["availability"] = json!("later");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["result_assets"][0]["download_url"] = json!("https://elsewhere.example/x");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["created_at"] = json!("2026-04-08T12:08:12.123+00:00");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["result_id"] = json!("not-a-uuid");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad.as_object_mut().unwrap().remove("completed_at");
    assert_invalid("JobResult", &bad);

    let mut bad = seed();
    bad["unexpected"] = json!(true);
    assert_invalid("JobResult", &bad);
}

#[test]
fn the_result_of_a_pending_job_matches_the_result_schema() {
    let v = created_view(Some(Preset::VerifyExistingEmails));
    let out = result_json(&v);
    assert_valid("JobResult", &out);
    assert_eq!(out["status"], "pending");
    assert!(out["result_id"].is_null() && out["created_at"].is_null());
    assert_eq!(out["result_assets"], json!([]));
}

#[test]
fn the_result_of_a_completed_job_matches_the_result_schema() {
    let v = completed_view();
    let out = result_json(&v);
    assert_valid("JobResult", &out);
    assert_eq!(out["status"], "completed");
    assert_eq!(out["progress_percent"], 100);
    assert_eq!(out["result_assets"].as_array().unwrap().len(), 2);
}

#[test]
fn the_result_of_a_running_or_failed_job_matches_the_result_schema() {
    assert_valid("JobResult", &result_json(&running_view()));
    assert_valid("JobResult", &result_json(&failed_view()));
}

// --- the status endpoint ---

#[test]
fn a_pending_job_matches_the_job_schema() {
    let out = job_json(&created_view(Some(Preset::VerifyExistingEmails)));
    assert_valid("Job", &out);
    assert!(out["started_at"].is_null() && out["completed_at"].is_null());
}

#[test]
fn a_job_listed_by_capabilities_has_a_null_preset_and_matches_the_job_schema() {
    let out = job_json(&created_view(None));
    assert_valid("Job", &out);
    assert!(out["preset"].is_null());
}

#[test]
fn a_running_completed_or_failed_job_matches_the_job_schema() {
    assert_valid("Job", &job_json(&running_view()));
    let done = job_json(&completed_view());
    assert_valid("Job", &done);
    assert!(done["completed_at"].is_string());
    let failed = job_json(&failed_view());
    assert_valid("Job", &failed);
    assert_eq!(failed["error_message"], "directory unavailable");
}

#[test]
fn a_jobs_webhook_deliveries_match_their_schema_and_a_wrong_state_does_not() {
    use bdjobs::adapters::db::webhooks::{AttemptInfo, DeliveryInfo};
    let at = Utc.with_ymd_and_hms(2026, 4, 8, 12, 7, 10).unwrap();
    let job = JobId(uuid::Uuid::from_u128(7));
    let attempt = |n: i32, code: Option<i32>, error: Option<&str>, next: bool| AttemptInfo {
        attempt: n,
        attempted_at: at,
        status_code: code,
        latency_ms: 12,
        error: error.map(str::to_owned),
        next_attempt_at: next.then_some(at),
    };
    let deliveries = [
        DeliveryInfo {
            delivery_id: bdjobs::domain::webhooks::delivery_id(job, "job.failed"),
            event: "job.failed".into(),
            stage: None,
            state: "delivered".into(),
            created_at: at,
            next_attempt_at: None,
            attempts: vec![
                attempt(1, None, Some("timed out"), true),
                attempt(2, Some(429), None, true),
                attempt(3, Some(200), None, false),
            ],
        },
        DeliveryInfo {
            delivery_id: bdjobs::domain::webhooks::delivery_id(job, "job.cancelled"),
            event: "job.cancelled".into(),
            stage: None,
            state: "pending".into(),
            created_at: at,
            next_attempt_at: Some(at),
            attempts: vec![],
        },
        DeliveryInfo {
            delivery_id: bdjobs::domain::webhooks::stage_delivery_id(
                job,
                bdjobs::domain::plan::Capability::EmailVerify,
            ),
            event: "job.stage".into(),
            stage: Some("email_verify".into()),
            state: "delivered".into(),
            created_at: at,
            next_attempt_at: None,
            attempts: vec![attempt(1, Some(200), None, false)],
        },
    ];
    let out = serde_json::to_value(WebhookDeliveries::of(job, &deliveries)).unwrap();
    assert_valid("WebhookDeliveries", &out);
    assert!(out["deliveries"][0]["webhook_id"]
        .as_str()
        .unwrap()
        .starts_with("msg_"));
    let mut bad = out.clone();
    bad["deliveries"][1]["state"] = json!("sent");
    assert_invalid("WebhookDeliveries", &bad);
    assert!(out["deliveries"][0].get("stage").is_none());
    let mut bad = out.clone();
    bad["deliveries"][2]["stage"] = json!("teleport");
    assert_invalid("WebhookDeliveries", &bad);
}

#[test]
fn a_job_that_breaks_the_contract_does_not_validate() {
    let good = job_json(&completed_view());
    let mut bad = good.clone();
    bad["status"] = json!("bogus");
    assert_invalid("Job", &bad);
    let mut bad = good.clone();
    bad["preset"] = json!("everything");
    assert_invalid("Job", &bad);
    let mut bad = good.clone();
    bad["requested_capabilities"] = json!(["teleport"]);
    assert_invalid("Job", &bad);
    let mut bad = good;
    bad.as_object_mut().unwrap().remove("updated_at");
    assert_invalid("Job", &bad);
}

// --- the create endpoint ---

fn request_examples() -> Vec<Value> {
    let d = doc();
    let examples = &d["paths"]["/api/v1/bd/jobs"]["post"]["requestBody"]["content"]
        ["application/json"]["examples"];
    examples
        .as_object()
        .expect("the request has examples")
        .values()
        .map(|e| e["value"].clone())
        .collect()
}

#[test]
fn the_request_examples_match_the_request_schema_and_the_handler_reads_them() {
    for example in request_examples() {
        assert_valid("CreateJobRequest", &example);
        let parsed: CreateJob = serde_json::from_value(example.clone())
            .unwrap_or_else(|e| panic!("the handler's CreateJob reads {example}: {e}"));
        assert!(parsed.preset.is_some() != parsed.requested_capabilities.is_some());
        assert!(parsed.input_assets.validate().is_ok());
    }
}

#[test]
fn a_request_that_breaks_the_contract_does_not_validate() {
    let base = json!({
        "preset": "verify_existing_emails",
        "input_assets": {"contacts": [{"email": "ada@acme.example"}]}
    });
    assert_valid("CreateJobRequest", &base);

    let mut bad = base.clone();
    bad["preset"] = json!("everything");
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base.clone();
    bad.as_object_mut().unwrap().remove("input_assets");
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base.clone();
    bad["input_assets"]["companies"] = json!([{"name": "no domain"}]);
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base.clone();
    bad["input_assets"]["contacts"] = json!([{"title": "CTO"}]);
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base.clone();
    bad["input_assets"]["contacts"][0]["title"] = json!("x".repeat(513));
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base.clone();
    bad["input_assets"]["companies"] = json!(vec![json!({"domain": "a.example"}); 10_001]);
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base.clone();
    bad["chat_id"] = json!("not-a-uuid");
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base.clone();
    bad["execution_options"] = json!({"max_contacts_per_company": 0});
    assert_invalid("CreateJobRequest", &bad);

    let mut bad = base;
    bad["icp_config"] = json!({"icp_gate": "maybe"});
    assert_invalid("CreateJobRequest", &bad);
}

#[test]
fn nulls_the_handler_accepts_are_accepted_by_the_request_schema() {
    let body = json!({
        "preset": null,
        "requested_capabilities": ["company_size", "email_verify"],
        "input_assets": {"companies": [{"domain": "acme.example", "name": null, "employee_count": null}]},
        "icp_config": null,
        "execution_options": null,
        "chat_id": null
    });
    assert_valid("CreateJobRequest", &body);
    let parsed: CreateJob = serde_json::from_value(body).expect("the handler reads it");
    assert!(parsed.preset.is_none() && parsed.requested_capabilities.is_some());
}

#[test]
fn the_created_example_matches_the_created_schema() {
    let d = doc();
    let example = &d["paths"]["/api/v1/bd/jobs"]["post"]["responses"]["202"]["content"]
        ["application/json"]["example"];
    assert_valid("JobCreated", example);
    let mut bad = example.clone();
    bad["status"] = json!("running");
    assert_invalid("JobCreated", &bad);
}

// --- the asset download ---

#[test]
fn the_json_deliverable_matches_the_asset_download_schema() {
    let d = doc();
    let content = &d["paths"]["/api/v1/bd/jobs/{job_id}/assets/{asset_id}"]["get"]["responses"]
        ["200"]["content"];
    assert!(content["text/csv"]["schema"]["type"] == "string");
    let v = validator_for(content["application/json"]["schema"].clone());
    let unverified = DeliveredContact {
        email: Some("info@acme.example".into()),
        source: "input".into(),
        ..Default::default()
    };
    let bytes = render_json(&[contact(), unverified]);
    let rows: Value = serde_json::from_slice(&bytes).expect("the deliverable is JSON");
    let problems = errors(&v, &rows);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut bad = rows;
    bad[0]["email_status"] = json!("great");
    assert!(!v.is_valid(&bad));
}

#[test]
fn the_asset_download_documents_its_headers() {
    let d = doc();
    let headers = &d["paths"]["/api/v1/bd/jobs/{job_id}/assets/{asset_id}"]["get"]["responses"]
        ["200"]["headers"];
    for h in [
        "Content-Length",
        "ETag",
        "Content-Disposition",
        "X-Content-Type-Options",
    ] {
        assert!(headers[h]["schema"].is_object(), "{h}");
    }
}

// --- the public endpoints ---

#[test]
fn the_health_and_readiness_bodies_match_their_schemas() {
    assert_valid("Health", &json!({"status": "ok"}));
    assert_valid("Ready", &json!({"status": "ready"}));
    assert_invalid("Ready", &json!({"status": "ok"}));
}

#[test]
fn every_documented_response_example_matches_its_schema() {
    let d = doc();
    for (method, path, op) in operations(&d) {
        for (code, response) in op["responses"].as_object().unwrap() {
            let response = match response["$ref"].as_str() {
                Some(r) => resolve(&d, r).unwrap(),
                None => response,
            };
            let Some(content) = response["content"].as_object() else {
                continue;
            };
            for (mime, media) in content {
                if let Some(example) = media.get("example") {
                    let v = validator_for(media["schema"].clone());
                    let problems = errors(&v, example);
                    assert!(
                        problems.is_empty(),
                        "{method} {path} {code} {mime}: {}",
                        problems.join("\n")
                    );
                }
            }
        }
    }
}

// --- the generation ---

#[test]
fn the_served_document_is_the_generated_one() {
    assert_eq!(doc(), openapi::generate());
}

#[test]
fn the_seed_example_is_the_one_the_code_shows() {
    assert_eq!(openapi::seed_result_example(), seed());
    assert_eq!(
        doc()["components"]["schemas"]["JobResult"]["example"],
        seed()
    );
}

#[test]
fn the_multipart_job_part_has_every_field_of_a_json_job_but_its_records() {
    let d = doc();
    let fields = |name: &str| -> BTreeSet<String> {
        d["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has properties"))
            .keys()
            .cloned()
            .collect()
    };
    let mut json_job = fields("CreateJobRequest");
    assert!(json_job.remove("input_assets"));
    assert_eq!(fields("MultipartJob"), json_job);
    let part = validator("MultipartJob");
    assert!(part.is_valid(&json!({"preset": "verify_existing_emails"})));
    assert!(!part.is_valid(&json!({"preset": "verify_existing_emails", "input_assets": {}})));
    assert!(!part.is_valid(&json!({})));
}

#[test]
fn a_webhook_url_the_document_accepts_is_one_the_handler_checks_by_the_same_rules() {
    use bdjobs::domain::webhooks::{check_url, MAX_URL_LEN};
    let d = doc();
    for name in ["CreateJobRequest", "MultipartJob"] {
        let field = &d["components"]["schemas"][name]["properties"]["webhook_url"];
        assert_eq!(field["maxLength"], json!(MAX_URL_LEN), "{name}");
        let v = validator_for(field.clone());
        let longest = format!("https://hooks.example/{}", "a".repeat(MAX_URL_LEN - 22));
        assert_eq!(longest.len(), MAX_URL_LEN);
        assert!(v.is_valid(&json!(longest)) && check_url(&longest, false).is_ok());
        let longer = format!("{longest}a");
        assert!(!v.is_valid(&json!(longer)) && check_url(&longer, false).is_err());
        let plain = "http://hooks.example/in";
        assert!(!v.is_valid(&json!(plain)) && check_url(plain, false).is_err());
        assert!(v.is_valid(&Value::Null));
    }
}

#[test]
fn every_size_band_the_pipeline_writes_is_in_the_document() {
    let d = doc();
    let band = &d["components"]["schemas"]["DeliveredContact"]["properties"]["company_size_band"];
    let v = validator_for(band.clone());
    for employees in [
        0,
        10,
        11,
        50,
        51,
        200,
        201,
        500,
        501,
        1000,
        1001,
        5000,
        5001,
        10_000,
        10_001,
        u32::MAX,
    ] {
        let name = bdjobs::domain::stages::size_band(employees);
        assert!(v.is_valid(&json!(name)), "{name}");
    }
    assert!(v.is_valid(&Value::Null));
    assert!(!v.is_valid(&json!("huge")));
}

#[test]
fn every_input_text_field_is_limited_and_refuses_control_characters() {
    let d = doc();
    for name in ["RawCompany", "RawContact"] {
        for (field, schema) in d["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap()
        {
            if schema["type"].to_string().contains("string") {
                assert_eq!(schema["maxLength"], 512, "{name}.{field}");
                assert!(schema["pattern"].is_string(), "{name}.{field}");
            }
        }
    }
    let mut bad = json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [{"email": "ada@acme.example"}]}});
    bad["input_assets"]["contacts"][0]["title"] = json!("CTO\u{7}");
    assert_invalid("CreateJobRequest", &bad);
    let mut bad = json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [{"email": "ada@acme.example"}]}});
    bad["icp_config"] = json!({"industries": vec!["Retail"; 101]});
    assert_invalid("CreateJobRequest", &bad);
}
