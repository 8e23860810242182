//! The OpenAPI 3.1 document of the API, generated from the code: every operation from its
//! handler's `#[utoipa::path]` (the router is built from the same `routes!` table, in
//! [`super::documented`], so a route cannot be served undocumented), every body's schema from
//! the type that is serialised or parsed (`ToSchema`). What a type cannot say is added here,
//! in one place, as rules over the generated document ([`refine`]): the limits every input
//! text field shares, the rules that tie fields together, the shared headers, and that public
//! operations need no key. `GET /api/v1/openapi.json` serves it, built once.

use super::error::ErrorBody;
use crate::domain::input::{MAX_FIELD_CHARS, MAX_LIST_ITEMS, MAX_RECORDS};
use axum::body::Bytes;
use serde_json::{json, Map, Value};
use std::sync::LazyLock;
use utoipa::openapi::response::Response;
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{PartialSchema, ToResponse, ToSchema};

/// The document's overview (`info.description`).
const OVERVIEW: &str = "Business-development (BD) jobs: post a list of companies and/or contacts with a preset or an explicit list of capabilities; a worker pipeline qualifies companies, discovers contacts, finds and verifies e-mail addresses, and publishes the deliverable as downloadable assets.

Flow: `POST /api/v1/bd/jobs` answers `202 Accepted` with the new job's id (and a `Location` header); follow it with the event stream `GET /api/v1/bd/jobs/{job_id}/events` (or poll `GET /api/v1/bd/jobs/{job_id}`) until `status` is `completed`, `failed` or `cancelled`; read `GET /api/v1/bd/jobs/{job_id}/result` (available at any status) and download each listed asset from its `download_url`.

Authentication: every `/api/v1/bd/...` endpoint needs `Authorization: Bearer <api key>`; keys start with `dc_`. A missing, malformed or unknown key gets `401` with `WWW-Authenticate: Bearer`. `/healthz`, `/readyz`, `/metrics` and `/api/v1/openapi.json` need no key.

Errors: every error body is `{\"detail\": \"<human-readable text>\"}`. 400: the body is not JSON or not sent as `Content-Type: application/json`; 401: authentication failed; 404: the job or asset does not exist **or belongs to another account** (the two are indistinguishable, by design), also for an unknown path; 405: a known path with another method; 422: JSON of the wrong shape or invalid values (the detail names each problem with its JSON path); 413: the body is larger than the limit (16 MiB by default); 416: a `Range` past the end of an asset; 429: the key's rate limit (with `Retry-After`); 500: an internal error (the detail never carries internals); 503: not ready, at capacity or past the request deadline (with `Retry-After`).

Timestamps are RFC 3339 strings in UTC with seconds precision and a `Z` suffix (`2026-04-08T12:08:12Z`).";

/// The description of the `job_id` path parameter, shared by every operation on a job.
pub const JOB_ID: &str = "UUID of the BD job. A value that is not a UUID names no job and gets the same 404 as an unknown job.";
/// An example job id.
pub const JOB_ID_EXAMPLE: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";
/// The description of the `asset_id` path parameter.
pub const ASSET_ID: &str = "Id of one result asset, as listed in the result's `result_assets[].asset_id` (today `verified_contacts` or `verified_contacts_csv`). 1 to 64 characters of a-z, 0-9, `_` or `-`, not starting with `-`; any other value gets 404.";
/// What an `X-Correlation-Id` or `X-Request-Id` may be.
pub const ANY_CORRELATION: &str = "Any value is accepted: one that is not 1 to 128 visible ASCII characters is replaced by a fresh UUID.";

/// The seed's result example, shown as the result's example (kept beside the body it shows).
pub use crate::domain::render::{seed_result_example, SEED_RESULT_EXAMPLE};

/// The document as served, built on first use.
pub fn document() -> &'static Bytes {
    static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
        Bytes::from(serde_json::to_vec(&generate()).expect("the OpenAPI document serialises"))
    });
    &DOCUMENT
}

/// The document as JSON: the router's documented routes, refined.
pub fn generate() -> Value {
    let (_, api) = super::documented(super::bd_routes()).split_for_parts();
    let mut doc = serde_json::to_value(&api).expect("the OpenAPI document serialises");
    refine(&mut doc);
    doc
}

/// What the document starts from before the routes add their operations: the overview, the
/// security scheme and the shared error answers.
pub fn base() -> OpenApi {
    let mut api: OpenApi = serde_json::from_value(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "bdjobs BD jobs API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": OVERVIEW,
            "license": {"name": "MIT", "identifier": "MIT"}
        },
        "servers": [{"url": "/"}],
        "paths": {},
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "bd-jobs", "description": "Create BD jobs, follow them, fetch their results."},
            {"name": "meta", "description": "Health, readiness and this document."}
        ],
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "dc_ API key",
                    "description": "`Authorization: Bearer dc_...`: an API key of the caller's account (tenant). Keys start with `dc_`, are at most 256 characters, are shown once when created and do not expire unless rotated. Jobs and assets are visible only to the account that created them."
                }
            }
        }
    }))
    .expect("the document's base is an OpenAPI document");
    let components = api.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    for (name, response) in [
        BadRequest::response(),
        Unauthorized::response(),
        JobNotFound::response(),
        AssetNotFound::response(),
        Unprocessable::response(),
        Internal::response(),
        TooManyRequests::response(),
        Busy::response(),
        PayloadTooLarge::response(),
    ] {
        components.responses.insert(name.to_owned(), response);
    }
    api
}

/// Declares a response that operations share (`components.responses`), for
/// `#[utoipa::path(responses((status = 401, response = openapi::Unauthorized)))]`. Its headers
/// name entries of [`HEADERS`]; [`refine`] puts the entries in.
macro_rules! shared_response {
    ($name:ident, $description:expr, $example:expr $(, $header:literal)*) => {
        #[doc = concat!("The shared `", stringify!($name), "` answer.")]
        pub struct $name;

        impl<'s> ToResponse<'s> for $name {
            fn response() -> (&'s str, RefOr<Response>) {
                (stringify!($name), error_response($description, $example, &[$($header),*]).into())
            }
        }
    };
}

/// An error answer: the `Error` body with an example, and the named headers.
fn error_response(description: &str, detail: &str, headers: &[&str]) -> Response {
    let headers: Map<String, Value> = headers
        .iter()
        .map(|h| (h.to_string(), json!({"schema": {"type": "string"}})))
        .collect();
    serde_json::from_value(json!({
        "description": description,
        "headers": headers,
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"},
            "example": {"detail": detail}
        }}
    }))
    .expect("an error answer is an OpenAPI response")
}

shared_response!(
    BadRequest,
    "The body is not valid JSON, was not sent with `Content-Type: application/json`, or could not be read.",
    "expected a JSON body with Content-Type: application/json"
);
shared_response!(
    Unauthorized,
    "The `Authorization` header is missing or malformed, or the bearer token is not a known `dc_` key.",
    "missing Authorization header",
    "WWW-Authenticate"
);
shared_response!(
    JobNotFound,
    "No such job for the caller: the id is unknown, is not a UUID, or belongs to another account (indistinguishable by design).",
    "job not found"
);
shared_response!(
    AssetNotFound,
    "No such asset for the caller: the job is unknown, belongs to another account or has not published this asset (yet), or an id is malformed. All indistinguishable by design.",
    "asset not found"
);
shared_response!(
    Unprocessable,
    "The JSON has the wrong shape (wrong type, unknown enum value) or its values are invalid: both or neither of `preset` and `requested_capabilities`, an unknown preset or capability, no records, more than 10,000 companies or more than 10,000 contacts, a company without a domain, a contact with neither e-mail nor name, a text field over 512 characters or holding a control character other than tab (C0, DEL or C1; the path names the field and the record index), a list option (`industries`, `countries`, `keywords`, `target_titles`, `seniorities`, `requested_capabilities`) of more than 100 items, or invalid `icp_config`/`execution_options`. Input problems are reported together (up to 20), each with its JSON path, separated by `; `. A body sent as `multipart/form-data` names each uploaded file's lines instead (`contacts.csv line 5, column company_domain: ...`). Input problems are also listed one by one in `problems`.",
    "input_assets.companies[1].domain: required; input_assets.contacts[0]: needs an email or a name (first_name/last_name/full_name)"
);
shared_response!(
    Internal,
    "An internal error (database or storage failure). The detail is always `internal server error`; the cause goes to the server log. A handler that panics answers this too, never a dropped connection; the body carries no internals, and the `X-Correlation-Id` response header names the log line with the details.",
    "internal server error"
);
shared_response!(
    TooManyRequests,
    "The API key sent more requests than its rate allows (a token bucket per key: `BDJOBS_RATE_LIMIT_PER_SEC` sustained, `BDJOBS_RATE_LIMIT_BURST` at once). Retry after `Retry-After` seconds. On `GET .../events`, also when the key already holds `BDJOBS_MAX_EVENT_STREAMS_PER_KEY` open streams (32): close one or retry after 5 s. Also when too many unknown tokens are being tried at once (their database lookups share one budget per process).",
    "rate limit exceeded for this API key; retry after 1 s",
    "Retry-After"
);
shared_response!(
    Busy,
    "The server is at capacity (`BDJOBS_MAX_CONCURRENT_REQUESTS` requests in flight, or for event streams `BDJOBS_MAX_EVENT_STREAMS` open) or the request outlived `BDJOBS_REQUEST_TIMEOUT_SECS`. Retry after `Retry-After` seconds.",
    "too many requests in flight; retry shortly",
    "Retry-After"
);
shared_response!(
    PayloadTooLarge,
    "The body is larger than `BDJOBS_MAX_BODY_BYTES` (16 MiB by default).",
    "request body too large (at most 16777216 bytes)"
);

/// The headers answers carry, by name: shared ones become `components.headers` and are
/// referenced; the asset download's are written out where they occur. `Content-Range` differs
/// between a 206 and a 416. A header an operation declares that is missing here fails
/// [`refine`] (and so the test suite).
fn header(name: &str, status: &str) -> Option<(bool, Value)> {
    let etag = json!({
        "description": "Strong validator: the quoted lower-case hex SHA-256 of the bytes.",
        "schema": {"type": "string", "pattern": "^\"[0-9a-f]{64}\"$"}
    });
    let shared = |v: Value| Some((true, v));
    let inline = |v: Value| Some((false, v));
    match name {
        "WWW-Authenticate" => shared(json!({
            "description": "Always `Bearer` (RFC 6750).",
            "schema": {"type": "string", "enum": ["Bearer"]}
        })),
        "Retry-After" => shared(json!({
            "description": "Seconds to wait before retrying (1 for 503; for 429, until the key's bucket holds a token again).",
            "schema": {"type": "integer", "minimum": 1}
        })),
        "Location" => shared(json!({
            "description": "Relative URL of the new job's status endpoint, `/api/v1/bd/jobs/{job_id}`.",
            "schema": {"type": "string", "format": "uri-reference", "pattern": "^/api/v1/bd/jobs/[0-9a-f-]{36}$"},
            "example": "/api/v1/bd/jobs/a1b2c3d4-e5f6-7890-abcd-ef1234567890"
        })),
        "Idempotent-Replayed" => shared(json!({
            "description": "`true` when this answer repeats the one given to an earlier request with the same `Idempotency-Key`.",
            "schema": {"type": "string", "enum": ["true"]}
        })),
        "X-Correlation-Id" => shared(json!({
            "description": "The job's correlation id: the request's `X-Correlation-Id` (or `X-Request-Id`) when usable, else a new UUID. Every message of the job carries it in the `x-correlation-id` AMQP header, and every log line about it in the `correlation_id` field.",
            "schema": {"type": "string"}
        })),
        "Content-Length" => inline(json!({
            "description": "Size in bytes of the body sent.",
            "schema": {"type": "integer", "minimum": 0}
        })),
        "ETag" => inline(etag),
        "Content-Disposition" => inline(json!({
            "description": "`attachment; filename=\"{asset_id}-{job_id}.{ext}\"`, where ext is `json`, `csv` or `bin` by content type.",
            "schema": {"type": "string"},
            "example": "attachment; filename=\"verified_contacts-a1b2c3d4-e5f6-7890-abcd-ef1234567890.json\""
        })),
        "X-Content-Type-Options" => inline(json!({
            "description": "Always `nosniff`.",
            "schema": {"type": "string", "enum": ["nosniff"]}
        })),
        "Accept-Ranges" => inline(json!({
            "description": "`bytes` on assets that serve ranges; `none` on JSON assets, which are always sent whole.",
            "schema": {"type": "string", "enum": ["bytes", "none"]}
        })),
        "Content-Range" if status == "206" => inline(json!({
            "description": "`bytes FIRST-LAST/SIZE`.",
            "schema": {"type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"}
        })),
        "Content-Range" if status == "416" => inline(json!({
            "description": "`bytes */SIZE`.",
            "schema": {"type": "string", "pattern": "^bytes \\*/[0-9]+$"}
        })),
        _ => None,
    }
}

/// The CSV asset, described.
const CSV_ASSET: &str = "The same rows as CSV (RFC 4180): UTF-8 with a byte-order mark, CRLF line ends, a header row `first_name,last_name,full_name,title,company_name,company_domain,email,email_status,email_confidence,email_pattern,check_syntax,check_disposable,check_role,check_mx,check_smtp,linkedin_url,headline,location,company_size_band,source,delivered_rank`, then one row per contact (`delivered_rank` from 1). Empty cells for nulls; text starting with `=`, `+`, `-`, `@`, tab or CR is prefixed with `'` against formula injection.";

/// A control character other than tab (C0, DEL, C1) is refused in every input text field.
const NO_CONTROLS: &str = "^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F-\\u009F]*$";

/// The schemas of what clients send: every text field in them obeys `domain::input`'s rules.
const INPUT_SCHEMAS: [&str; 4] = ["RawCompany", "RawContact", "IcpConfig", "ExecutionOptions"];

/// The schemas of what the API answers with: serialised from structs, so every property is
/// always present (null when it has no value), and nothing else is.
const BODY_SCHEMAS: [&str; 14] = [
    "Job",
    "JobResult",
    "ResultAsset",
    "WebhookDeliveries",
    "WebhookDelivery",
    "WebhookAttempt",
    "JobCreated",
    "JobCheck",
    "JobList",
    "DeliveredContact",
    "EmailChecks",
    "Health",
    "Ready",
    "Error",
];

/// The fields of answers that are left out, rather than null, when they have no value: an
/// error's `problems`, and a webhook delivery's `stage` (only `job.stage` has one; outcomes are
/// listed byte for byte as before stages could be announced).
const ABSENT_WHEN_UNSET: [(&str, &str); 2] = [("Error", "problems"), ("WebhookDelivery", "stage")];

fn schema_mut<'a>(doc: &'a mut Value, name: &str) -> &'a mut Map<String, Value> {
    doc["components"]["schemas"][name]
        .as_object_mut()
        .unwrap_or_else(|| panic!("the document has no schema {name}"))
}

fn types_of(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A text field of an input: at most `MAX_FIELD_CHARS` characters, no control character (a
/// field with its own pattern keeps it: the pattern already refuses them).
fn text_rule(field: &mut Value) {
    field["maxLength"] = json!(MAX_FIELD_CHARS);
    if field.get("pattern").is_none() {
        field["pattern"] = json!(NO_CONTROLS);
        let described = field["description"].as_str().unwrap_or_default().to_owned();
        let rule = "No control characters but tab (C0, DEL, C1: 422).";
        field["description"] = json!(if described.is_empty() {
            rule.to_owned()
        } else {
            format!("{described} {rule}")
        });
    }
}

/// "Not blank": a string with a character other than white space.
fn present(field: &str) -> Value {
    json!({"required": [field], "properties": {field: {"type": "string", "pattern": "\\S"}}})
}

/// One of `preset` and `requested_capabilities`, the other absent or null.
fn preset_or_capabilities() -> Value {
    json!([
        {
            "required": ["preset"],
            "properties": {
                "preset": {"$ref": "#/components/schemas/Preset"},
                "requested_capabilities": {"type": "null"}
            }
        },
        {
            "required": ["requested_capabilities"],
            "properties": {
                "requested_capabilities": {"type": "array"},
                "preset": {"type": "null"}
            }
        }
    ])
}

/// Adds to the generated document what the types cannot say. Panics when the document lacks
/// what a rule names (a renamed type, a header nobody described), which the tests catch.
pub fn refine(doc: &mut Value) {
    // Input text fields and lists: `domain::input::check_text` and `check_list`.
    for name in INPUT_SCHEMAS {
        let schema = schema_mut(doc, name);
        for field in schema
            .get_mut("properties")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|p| p.values_mut())
        {
            let types = types_of(field);
            if types.contains(&"string") {
                text_rule(field);
            } else if types.contains(&"array") {
                field["maxItems"] = json!(MAX_LIST_ITEMS);
                field["default"] = json!([]);
                let items = &mut field["items"];
                if types_of(items).contains(&"string") {
                    text_rule(items);
                    if let Some(d) = items.as_object_mut() {
                        d.remove("description");
                    }
                }
            }
        }
    }
    // What ties fields together (`domain::input::RawInput::validate`, `jobs::validate`).
    schema_mut(doc, "RawContact").insert(
        "anyOf".into(),
        json!([
            present("email"),
            present("full_name"),
            present("first_name"),
            present("last_name")
        ]),
    );
    let input = schema_mut(doc, "InputAssets");
    input.insert(
        "anyOf".into(),
        json!([
            {"required": ["companies"], "properties": {"companies": {"minItems": 1}}},
            {"required": ["contacts"], "properties": {"contacts": {"minItems": 1}}}
        ]),
    );
    for list in ["companies", "contacts"] {
        input["properties"][list]["maxItems"] = json!(MAX_RECORDS);
        input["properties"][list]["default"] = json!([]);
    }
    schema_mut(doc, "CreateJobRequest").insert("oneOf".into(), preset_or_capabilities());
    let multipart = schema_mut(doc, "MultipartJob");
    multipart.insert("oneOf".into(), preset_or_capabilities());
    multipart.insert("not".into(), json!({"required": ["input_assets"]}));
    // An upload carries one file, and no part but these.
    let upload = schema_mut(doc, "JobUpload");
    upload.insert(
        "oneOf".into(),
        json!([{"required": ["contacts"]}, {"required": ["companies"]}]),
    );
    upload.insert("additionalProperties".into(), json!(false));
    for list in ["companies", "contacts"] {
        upload["properties"][list]["minItems"] = json!(1);
        upload["properties"][list]["maxItems"] = json!(MAX_RECORDS);
    }

    // Answers: every field, always, and nothing else.
    for name in BODY_SCHEMAS {
        let schema = schema_mut(doc, name);
        let fields: Vec<Value> = schema["properties"]
            .as_object()
            .map(|p| {
                p.keys()
                    .filter(|k| !ABSENT_WHEN_UNSET.contains(&(name, k.as_str())))
                    .map(|k| json!(k))
                    .collect()
            })
            .unwrap_or_default();
        schema.insert("required".into(), Value::Array(fields));
        schema.insert("additionalProperties".into(), json!(false));
    }
    // More counters may come; all of them non-negative integers.
    schema_mut(doc, "Summary").insert(
        "additionalProperties".into(),
        json!({"type": "integer", "minimum": 0}),
    );
    schema_mut(doc, "JobCheck")["properties"]["valid"]["const"] = json!(true);
    tidy(&mut doc["components"]["schemas"]);

    refine_operations(doc);
}

/// Presentation only: a field's description sits beside its `oneOf` rather than inside the
/// non-null branch, a one-branch `oneOf` (an inlined enum with a description) is merged into
/// its field, and the line breaks of wrapped doc comments are undone (lists and paragraphs
/// kept).
fn tidy(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(branches)) = map.get_mut("oneOf") {
                if branches.len() == 1 && branches[0].get("$ref").is_none() {
                    if let Some(Value::Object(only)) = branches.pop() {
                        map.remove("oneOf");
                        for (k, x) in only {
                            map.entry(k).or_insert(x);
                        }
                    }
                } else if branches.len() == 2 && branches[0] == json!({"type": "null"}) {
                    if let Some(d) = branches[1]
                        .as_object_mut()
                        .and_then(|b| b.remove("description"))
                    {
                        map.entry("description").or_insert(d);
                    }
                }
            }
            if let Some(Value::String(d)) = map.get_mut("description") {
                *d = unwrap_lines(d);
            }
            for x in map.values_mut() {
                tidy(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// Joins the lines of a wrapped doc comment; a blank line or a list item starts a new line.
fn unwrap_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut previous = '\0';
    while let Some(c) = chars.next() {
        let joins =
            c == '\n' && previous != '\n' && !matches!(chars.peek(), Some('\n') | Some('-') | None);
        out.push(if joins { ' ' } else { c });
        previous = c;
    }
    out
}

/// Operations: public ones need no key, parameters are absent rather than null, shared headers
/// become references, and what the handlers parse by hand is described.
fn refine_operations(doc: &mut Value) {
    let mut shared_headers = Map::new();
    let paths = doc["paths"].as_object_mut().expect("paths is an object");
    for (path, item) in paths.iter_mut() {
        for (method, op) in item.as_object_mut().expect("a path item").iter_mut() {
            let params = op.get_mut("parameters").and_then(Value::as_array_mut);
            for param in params.into_iter().flatten() {
                let schema = &mut param["schema"];
                if let Some(Value::Array(types)) = schema.get_mut("type") {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        schema["type"] = types[0].take();
                    }
                }
                if let Some(Value::String(d)) = param.get_mut("description") {
                    *d = unwrap_lines(d);
                }
            }
            // `security(())` in a handler's annotation marks it public: no key at all (`[]`),
            // rather than the optional key `[{}]` says.
            if op["security"] == json!([{}]) {
                op["security"] = json!([]);
            }
            for (status, response) in op["responses"]
                .as_object_mut()
                .expect("responses")
                .iter_mut()
            {
                let at = format!("{method} {path} {status}");
                refine_headers(response, status, &at, &mut shared_headers);
            }
        }
    }
    let mut responses = std::mem::take(&mut doc["components"]["responses"]);
    for (name, response) in responses.as_object_mut().expect("responses").iter_mut() {
        refine_headers(response, "", name, &mut shared_headers);
    }
    doc["components"]["responses"] = responses;
    doc["components"]["headers"] = Value::Object(shared_headers);

    doc["paths"]["/api/v1/bd/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
        ["encoding"] = json!({
        "job": {"contentType": "application/json"},
        "contacts": {"contentType": "application/json"},
        "companies": {"contentType": "application/json"}
    });
    // The query parameters `jobs::list_jobs` and `jobs::dry_run` read by hand.
    let param = |doc: &mut Value, path: &str, method: &str, name: &str| -> Value {
        let params = doc["paths"][path][method]["parameters"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("{method} {path} has parameters"));
        let p = params
            .iter_mut()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has the parameter {name}"));
        p["schema"].take()
    };
    let set = |doc: &mut Value, path: &str, method: &str, name: &str, schema: Value| {
        for p in doc["paths"][path][method]["parameters"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if p["name"] == name {
                p["schema"] = schema.clone();
            }
        }
    };
    let mut limit = param(doc, "/api/v1/bd/jobs", "get", "limit");
    limit["default"] = json!(super::jobs::DEFAULT_PAGE);
    set(doc, "/api/v1/bd/jobs", "get", "limit", limit);
    param(doc, "/api/v1/bd/jobs", "get", "q");
    set(
        doc,
        "/api/v1/bd/jobs",
        "get",
        "q",
        json!({"anyOf": [
            {"type": "string", "pattern": "^[0-9A-Fa-f-]{4,36}$"},
            {"$ref": "#/components/schemas/Preset"}
        ]}),
    );
    let mut dry_run = param(doc, "/api/v1/bd/jobs", "post", "dry_run");
    dry_run["default"] = json!(false);
    set(doc, "/api/v1/bd/jobs", "post", "dry_run", dry_run);

    let asset = &mut doc["paths"]["/api/v1/bd/jobs/{job_id}/assets/{asset_id}"]["get"];
    let whole = &mut asset["responses"]["200"]["content"];
    whole["application/json"]["schema"]["description"] =
        json!("The delivered contacts, best first (pretty-printed JSON).");
    whole["text/csv"]["schema"]["description"] = json!(CSV_ASSET);
    asset["responses"]["206"]["content"] = json!({"*/*": {"schema": {
        "description": "A slice of the asset's bytes, with the asset's own `Content-Type` (not necessarily valid JSON or CSV on its own)."
    }}});
    let create = &mut doc["paths"]["/api/v1/bd/jobs"]["post"];
    create["responses"]["202"]["links"] = json!({
        "CancelJob": {
            "operationId": "cancelBdJob",
            "parameters": {"job_id": "$response.body#/job_id"},
            "description": "Cancel the job just created."
        }
    });
}

fn refine_headers(response: &mut Value, status: &str, at: &str, shared: &mut Map<String, Value>) {
    let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, value) in headers.iter_mut() {
        let (is_shared, described) = header(name, status).unwrap_or_else(|| {
            panic!("{at}: the header {name} is not described in openapi::header")
        });
        if is_shared {
            *value = json!({"$ref": format!("#/components/headers/{name}")});
            shared.insert(name.clone(), described);
        } else {
            *value = described;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_doc_comment_reads_as_one_line_but_lists_and_paragraphs_stay() {
        assert_eq!(unwrap_lines("one\ntwo"), "one two");
        assert_eq!(unwrap_lines("para\n\nnext"), "para\n\nnext");
        assert_eq!(unwrap_lines("list:\n- a\n- b"), "list:\n- a\n- b");
    }

    #[test]
    fn an_undescribed_header_stops_the_document_from_being_built() {
        let mut response = json!({"headers": {"X-Unknown": {"schema": {"type": "string"}}}});
        let refined = std::panic::catch_unwind(move || {
            refine_headers(&mut response, "200", "test", &mut Map::new())
        });
        assert!(refined.is_err());
    }
}
