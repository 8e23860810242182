//! The body of `POST /bd/jobs` in either of its two forms: a JSON document, or
//! `multipart/form-data` with a `job` part (the same JSON without `input_assets`) and a
//! `contacts` or a `companies` part holding a CSV or JSON Lines file, as a spreadsheet exports
//! it. Files are read with the rules of `bdjobs directory import` (`domain::table`), and their
//! problems name the file's lines.

use super::error::ApiError;
use super::jobs::{ApiJson, BodyLimit, CreateJob};
use crate::domain::input::{Origin, Origins, RawCompany, RawContact};
use crate::domain::table::{self, Format, Kind};
use axum::extract::{FromRequest, Multipart};
use axum::http::{header, StatusCode};
use sha2::{Digest, Sha256};

/// The `job` part of a multipart job, for the OpenAPI document: `CreateJobRequest` without
/// `input_assets`, derived from [`CreateJob`]'s schema so that the two cannot drift apart.
pub struct MultipartJob;

impl utoipa::PartialSchema for MultipartJob {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut schema = serde_json::to_value(CreateJob::schema()).expect("a schema serialises");
        if let Some(properties) = schema["properties"].as_object_mut() {
            properties.shift_remove("input_assets");
        }
        if let Some(required) = schema["required"].as_array_mut() {
            required.retain(|r| r != "input_assets");
        }
        schema["description"] = serde_json::json!("The `job` part of a `multipart/form-data` job: the fields of `CreateJobRequest` but `input_assets`, which is refused here (the records come in the `contacts` and `companies` parts). Send exactly one of `preset` and `requested_capabilities`. Unknown fields are ignored.");
        serde_json::from_value(schema).expect("a schema deserialises")
    }
}

impl utoipa::ToSchema for MultipartJob {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <CreateJob as utoipa::ToSchema>::schemas(schemas);
    }
}

/// A `multipart/form-data` job, for the OpenAPI document: the parts [`JobRequest`] reads.
#[derive(utoipa::ToSchema)]
#[schema(
    description = "A job with its records as a file, as a spreadsheet exports it: the `job` part, and either a `contacts` part or a `companies` part (one file a job; both get 422). Any other part is refused (422): it is most likely a misnamed file. The same limits as a JSON body apply (body size, 10,000 records a list, 512 characters a field)."
)]
#[allow(dead_code)] // Never built: the parts are read one by one.
pub struct JobUpload {
    job: MultipartJob,
    /// The contacts as a file: CSV with a header row (columns as in `bdjobs directory import`:
    /// `first_name`, `last_name`, `full_name`, `title`, `email`, `company_name`,
    /// `company_domain`, `linkedin_url`), JSON Lines (one object a line), or one JSON array of
    /// `RawContact` objects (as in `input_assets.contacts`). The format is taken from the file
    /// name (`.csv`, `.jsonl`, `.ndjson`), else the part's `Content-Type` (`text/csv`,
    /// `application/x-ndjson`), else the content (`[` a JSON array, `{` JSON Lines, anything
    /// else CSV). UTF-8, a byte-order mark allowed. CSV and JSON Lines problems name the line
    /// (the header is line 1); columns no field has are ignored, and named in a warning.
    /// Documented here as the JSON array.
    #[schema(value_type = Vec<RawContact>, required = false)]
    contacts: Option<Vec<RawContact>>,
    /// The companies as a file: CSV with a header row (columns as in `bdjobs directory
    /// import`: `domain`, `name`, `employee_count`, `industry`, `country`, `linkedin_url`),
    /// JSON Lines (one object a line), or one JSON array of `RawCompany` objects (as in
    /// `input_assets.companies`). The format is taken as for `contacts`. Documented here as
    /// the JSON array.
    #[schema(value_type = Vec<RawCompany>, required = false)]
    companies: Option<Vec<RawCompany>>,
}

/// A file part, once read.
pub struct UploadedFile {
    pub kind: Kind,
    /// The name problems use: the part's file name, else the part's name.
    pub name: String,
    /// The line of each record; `None` for a JSON array (problems name its indexes).
    pub lines: Option<Vec<usize>>,
}

/// A job request with where its records came from.
pub struct JobRequest {
    pub body: CreateJob,
    /// SHA-256 of what the request means (an `Idempotency-Key` is bound to it): the JSON body
    /// as sent, or the parts of a multipart body (not the body itself, whose boundary a client
    /// picks anew for each request).
    pub hash: [u8; 32],
    pub files: Vec<UploadedFile>,
    /// Problems found reading the files (lines that are not records), reported before the
    /// records' own.
    pub file_problems: Vec<String>,
    /// Columns of the files that no record field has, for the job's warnings.
    pub ignored_columns: Vec<String>,
}

impl JobRequest {
    pub fn origins(&self) -> Origins<'_> {
        let mut o = Origins::default();
        for f in &self.files {
            let origin = match &f.lines {
                Some(lines) => Origin::File {
                    name: &f.name,
                    lines,
                },
                None => Origin::Part { name: &f.name },
            };
            match f.kind {
                Kind::Contacts => o.contacts = origin,
                Kind::Companies => o.companies = origin,
            }
        }
        o
    }
}

/// The `job` part: a job's JSON without `input_assets` (the records come in their own parts).
fn job_part(bytes: &[u8]) -> Result<CreateJob, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("job part: not JSON: {e}")))?;
    if value.get("input_assets").is_some() {
        return Err(ApiError::Unprocessable(
            "job part: input_assets is not allowed here; send the records as a contacts or companies part"
                .into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Unprocessable(format!("job part: {e}")))
}

/// A file part must hold at least one record (or one line that tried to be one): an empty
/// file is a mistake, not a request to process nothing.
fn no_records(name: &str) -> ApiError {
    ApiError::Unprocessable(format!("{name}: the file holds no records"))
}

fn is_multipart(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

impl<S: Send + Sync> FromRequest<S> for JobRequest {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_multipart(req.headers()) {
            let ApiJson(body, hash) = ApiJson::<CreateJob>::from_request(req, state).await?;
            return Ok(JobRequest {
                body,
                hash,
                files: Vec::new(),
                file_problems: Vec::new(),
                ignored_columns: Vec::new(),
            });
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(super::MAX_BODY_BYTES);
        let too_large_or_bad = |e: axum::extract::multipart::MultipartError| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadRequest(format!("unreadable multipart body: {}", e.body_text()))
            }
        };
        let mut multipart = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut hasher = Sha256::new();
        let mut job: Option<CreateJob> = None;
        let mut files: Vec<(Kind, String, Format, String)> = Vec::new();
        while let Some(field) = multipart.next_field().await.map_err(too_large_or_bad)? {
            let part = field.name().unwrap_or_default().to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let mime = field.content_type().map(str::to_owned);
            let bytes = field.bytes().await.map_err(too_large_or_bad)?;
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(&bytes);
            if part == "job" {
                if job.is_some() {
                    return Err(ApiError::Unprocessable(
                        "the job part is given twice".into(),
                    ));
                }
                job = Some(job_part(&bytes)?);
                continue;
            }
            // Unlike a JSON body's unknown fields, an unknown part is refused: it is most likely
            // a misnamed file (`contact`, `file`), whose records would otherwise be lost.
            let Some(kind) = Kind::parse(&part) else {
                return Err(ApiError::Unprocessable(format!(
                    "unknown part {part:?}: expected job, contacts or companies"
                )));
            };
            // One file a job: the limits (10,000 records) then hold for the file alone, which a
            // schema can state and a person can check in the spreadsheet.
            if !files.is_empty() {
                return Err(ApiError::Unprocessable(
                    "send one file part, contacts or companies, not two".into(),
                ));
            }
            let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
                ApiError::Unprocessable(format!(
                    "{part} part: not UTF-8 text (byte {}); save the file as UTF-8 CSV",
                    e.utf8_error().valid_up_to()
                ))
            })?;
            let format = Format::detect(file_name.as_deref(), mime.as_deref(), &text);
            let name = file_name
                .filter(|n| !n.is_empty() && n.len() <= 128 && !n.chars().any(char::is_control))
                .unwrap_or_else(|| part.clone());
            files.push((kind, name, format, text));
        }
        let mut body: CreateJob = job.ok_or_else(|| {
            ApiError::Unprocessable(
                "a multipart job needs a job part (the job's JSON: preset or requested_capabilities, ...)"
                    .into(),
            )
        })?;
        if files.is_empty() {
            return Err(ApiError::Unprocessable(
                "a multipart job needs a contacts or companies file part".into(),
            ));
        }
        let (mut read, mut file_problems, mut ignored_columns) =
            (Vec::new(), Vec::new(), Vec::new());
        for (kind, name, format, text) in files {
            if format == Format::JsonArray {
                // The JSON body's own records, with its rules (and its 422s).
                let bad = |e: serde_json::Error| {
                    ApiError::Unprocessable(format!(
                        "{name}: not a JSON array of {}: {e}",
                        kind.as_str()
                    ))
                };
                match kind {
                    Kind::Contacts => {
                        body.input_assets.contacts = serde_json::from_str(&text).map_err(bad)?
                    }
                    Kind::Companies => {
                        body.input_assets.companies = serde_json::from_str(&text).map_err(bad)?
                    }
                }
                let records = match kind {
                    Kind::Contacts => body.input_assets.contacts.len(),
                    Kind::Companies => body.input_assets.companies.len(),
                };
                if records == 0 {
                    return Err(no_records(&name));
                }
                read.push(UploadedFile {
                    kind,
                    name,
                    lines: None,
                });
                continue;
            }
            let rows = table::parse(format, &text)
                .map_err(|e| ApiError::Unprocessable(format!("{name}: {e}")))?;
            if rows.is_empty() {
                return Err(no_records(&name));
            }
            let records = table::job_records(kind, &name, rows);
            match kind {
                Kind::Contacts => body.input_assets.contacts = records.contacts,
                Kind::Companies => body.input_assets.companies = records.companies,
            }
            file_problems.extend(records.problems);
            for c in records.ignored_columns {
                ignored_columns.push(format!("{name}: {c}"));
            }
            read.push(UploadedFile {
                kind,
                name,
                lines: Some(records.lines),
            });
        }
        Ok(JobRequest {
            body,
            hash: hasher.finalize().into(),
            files: read,
            file_problems,
            ignored_columns,
        })
    }
}
