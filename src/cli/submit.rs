//! `bdjobs submit FILE --preset P [--wait] [--out FILE]`: posts a CSV or JSON Lines file as a
//! job through the API (`multipart/form-data`, the same request the web console sends), then
//! optionally follows it with `watch`'s progress bar and saves its CSV deliverable.

use super::watch::{self, Outcome};
use crate::domain::table::{self, Format, Kind};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// What to submit and what to do after (`bdjobs submit`'s arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct SubmitArgs {
    /// The file: .csv, .jsonl or .ndjson.
    pub file: PathBuf,
    /// The preset to run (full_pipeline, verify_existing_emails,
    /// company_size_and_email_verify, enrich_contacts_from_companies).
    #[arg(long, required_unless_present = "capabilities")]
    pub preset: Option<String>,
    /// The capabilities to run instead of a preset, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "preset")]
    pub capabilities: Vec<String>,
    /// What the file holds; guessed from its columns when not given.
    #[arg(long = "as", value_enum)]
    pub kind: Option<RecordKind>,
    /// A chat id (UUID) to associate the job with.
    #[arg(long)]
    pub chat_id: Option<uuid::Uuid>,
    /// Follow the job until it ends.
    #[arg(long)]
    pub wait: bool,
    /// Save the completed job's CSV deliverable to this file (implies --wait).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Base URL of the API.
    #[arg(long, env = "BDJOBS_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// API key (dc_...). Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "BDJOBS_API_KEY", hide_env_values = true)]
    pub key: String,
}

/// `--as`: what the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordKind {
    Contacts,
    Companies,
}

impl From<RecordKind> for Kind {
    fn from(k: RecordKind) -> Self {
        match k {
            RecordKind::Contacts => Kind::Contacts,
            RecordKind::Companies => Kind::Companies,
        }
    }
}

/// How a submission ended: the process exit code (as `watch`'s: 0 completed or merely
/// submitted, 1 failed, 2 cancelled) and, for a completed job with `--out`, the bytes written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: String,
    pub outcome: Option<Outcome>,
    pub written: Option<u64>,
}

fn client(api: &str) -> anyhow::Result<reqwest::Client> {
    let loopback = url::Url::parse(api)
        .with_context(|| format!("--api {api:?} is not a URL"))?
        .host_str()
        .is_some_and(|h| matches!(h, "127.0.0.1" | "localhost" | "[::1]"));
    let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if loopback {
        // A proxy configured for the outside world has no business relaying loopback traffic.
        http = http.no_proxy();
    }
    http.build().context("cannot build an HTTP client")
}

fn job_part(s: &SubmitArgs) -> anyhow::Result<Value> {
    let mut job = match (&s.preset, s.capabilities.is_empty()) {
        (Some(p), true) => json!({ "preset": p }),
        (None, false) => json!({ "requested_capabilities": s.capabilities }),
        (Some(_), false) => bail!("give --preset or --capabilities, not both"),
        (None, true) => bail!("give --preset NAME or --capabilities a,b,..."),
    };
    if let Some(chat) = s.chat_id {
        job["chat_id"] = json!(chat);
    }
    Ok(job)
}

/// Which list the file fills: as told, else guessed from its columns.
pub fn kind_of(path: &Path, data: &str, told: Option<Kind>) -> Kind {
    told.unwrap_or_else(|| {
        let name = path.file_name().and_then(|n| n.to_str());
        let format = Format::detect(name, None, data);
        table::parse(format, data)
            .map(|rows| Kind::guess(&rows))
            .unwrap_or(Kind::Contacts)
    })
}

/// The message of an error answer: `detail`, then each of `problems` on its own line.
fn refusal(status: reqwest::StatusCode, body: &Value) -> String {
    let mut msg = format!(
        "the API refused the job ({status}): {}",
        body["detail"].as_str().unwrap_or("no detail")
    );
    if let Some(problems) = body["problems"].as_array() {
        msg = format!("the API refused the job ({status}):");
        for p in problems {
            msg.push_str("\n  ");
            msg.push_str(p.as_str().unwrap_or_default());
        }
    }
    msg
}

/// Submits the file; with `wait` (implied by `out`) follows the job to its end, drawing a bar on
/// stderr when `show_bar`.
pub async fn submit(s: &SubmitArgs, show_bar: bool) -> anyhow::Result<Submitted> {
    let base = s.api.trim_end_matches('/');
    let job = job_part(s)?;
    let data =
        std::fs::read(&s.file).with_context(|| format!("cannot read {}", s.file.display()))?;
    let text = String::from_utf8(data).with_context(|| {
        format!(
            "{} is not UTF-8 text; save it as UTF-8 CSV",
            s.file.display()
        )
    })?;
    let kind = kind_of(&s.file, &text, s.kind.map(Kind::from));
    let file_name = s
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("records.csv")
        .to_owned();
    let http = client(&s.api)?;
    let form = reqwest::multipart::Form::new()
        .part(
            "job",
            reqwest::multipart::Part::text(job.to_string())
                .file_name("job.json")
                .mime_str("application/json")?,
        )
        .part(
            kind.as_str(),
            reqwest::multipart::Part::text(text).file_name(file_name),
        );
    let resp = http
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(&s.key)
        .multipart(form)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.as_u16() != 202 {
        bail!(refusal(status, &body));
    }
    let job_id = body["job_id"]
        .as_str()
        .context("the API's answer has no job_id")?
        .to_owned();
    for w in body["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    let mut done = Submitted {
        job_id: job_id.clone(),
        outcome: None,
        written: None,
    };
    if !s.wait && s.out.is_none() {
        return Ok(done);
    }
    let outcome = watch::watch(&s.api, &s.key, &job_id, show_bar).await?;
    if let (Outcome::Completed, Some(out)) = (&outcome, &s.out) {
        done.written = Some(save_csv(&http, base, &s.key, &job_id, out).await?);
    }
    done.outcome = Some(outcome);
    Ok(done)
}

/// Submits, prints what happened (the job id, or how it ended and what was written) and
/// returns the exit code: 0 submitted or completed, 1 failed, 2 cancelled.
pub async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let done = submit(&args, super::show_progress()).await?;
    let id = &done.job_id;
    match &done.outcome {
        None => println!("{id}"),
        Some(Outcome::Completed) => match (&args.out, done.written) {
            (Some(out), Some(n)) => {
                println!("job {id} completed; wrote {n} bytes to {}", out.display())
            }
            _ => println!("job {id} completed"),
        },
        Some(Outcome::Failed(why)) => eprintln!("job {id} failed: {why}"),
        Some(Outcome::Cancelled) => eprintln!("job {id} was cancelled"),
    }
    Ok(ExitCode::from(done.outcome.map_or(0, |o| o.exit_code())))
}

/// Saves the job's CSV asset to `out` (through a temporary file beside it, so that a failed
/// download never leaves half a file under the name asked for).
async fn save_csv(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    job_id: &str,
    out: &Path,
) -> anyhow::Result<u64> {
    let result: Value = http
        .get(format!("{base}/api/v1/bd/jobs/{job_id}/result"))
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let url = result["result_assets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| {
            a["mime_type"]
                .as_str()
                .is_some_and(|m| m.starts_with("text/csv"))
        })
        .and_then(|a| a["download_url"].as_str())
        .context("the completed job has no CSV asset")?
        .to_owned();
    let mut resp = http
        .get(format!("{base}{url}"))
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()
        .context("downloading the CSV asset")?;
    let tmp = out.with_extension("part");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut written = 0u64;
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = resp.chunk().await.context("downloading the CSV asset")? {
        file.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    file.flush().await?;
    drop(file);
    tokio::fs::rename(&tmp, out)
        .await
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SubmitArgs {
        SubmitArgs {
            file: "x.csv".into(),
            preset: None,
            capabilities: vec![],
            kind: None,
            chat_id: None,
            wait: false,
            out: None,
            api: "http://127.0.0.1:8080".into(),
            key: "dc_x".into(),
        }
    }

    #[test]
    fn a_job_needs_exactly_one_of_a_preset_and_capabilities() {
        assert!(job_part(&args()).is_err());
        let with_both = SubmitArgs {
            preset: Some("full_pipeline".into()),
            capabilities: vec!["email_verify".into()],
            ..args()
        };
        assert!(job_part(&with_both).is_err());
        let preset = SubmitArgs {
            preset: Some("verify_existing_emails".into()),
            ..args()
        };
        assert_eq!(
            job_part(&preset).unwrap(),
            json!({"preset": "verify_existing_emails"})
        );
    }

    #[test]
    fn a_refusal_lists_each_problem_on_its_own_line() {
        let body = json!({"detail": "a; b", "problems": ["x.csv line 2: a", "x.csv line 3: b"]});
        let msg = refusal(reqwest::StatusCode::UNPROCESSABLE_ENTITY, &body);
        assert!(
            msg.ends_with(":\n  x.csv line 2: a\n  x.csv line 3: b"),
            "{msg}"
        );
    }

    #[test]
    fn the_kind_is_guessed_from_the_columns_unless_told() {
        let companies = "domain,name\nacme.example,Acme\n";
        assert_eq!(
            kind_of(Path::new("a.csv"), companies, None),
            Kind::Companies
        );
        assert_eq!(
            kind_of(Path::new("a.csv"), companies, Some(Kind::Contacts)),
            Kind::Contacts
        );
    }
}
