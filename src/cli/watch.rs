//! `bdjobs watch JOB_ID`: follows a job through the API's event stream
//! (`GET /api/v1/bd/jobs/{job_id}/events`), draws a progress bar, and reports how the job ended.

use crate::adapters::progress;
use anyhow::{bail, Context};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// One Server-Sent Event: its `event` name (`message` when unnamed) and its `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// An incremental parser of the `text/event-stream` format (the WHATWG rules this API's server
/// uses: `event:`, `data:` lines, comments, blank line ends an event; `id` and `retry` ignored).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes as they arrive; returns the events they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push(SseEvent {
                        name: self.name.take().unwrap_or_else(|| "message".to_owned()),
                        data,
                    });
                }
                self.name = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        out
    }
}

/// How a watched job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed(String),
    Cancelled,
}

impl Outcome {
    /// The process exit code `bdjobs watch` ends with: 0, 1 (failed) or 2 (cancelled).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Completed => 0,
            Outcome::Failed(_) => 1,
            Outcome::Cancelled => 2,
        }
    }
}

/// Follows `job_id` at `api` (the server's base URL) until it ends. Reconnects when the stream
/// drops before the end (a restarting server), up to 10 times in a row. Warnings go to stderr.
pub async fn watch(api: &str, key: &str, job_id: &str, show_bar: bool) -> anyhow::Result<Outcome> {
    let url = format!(
        "{}/api/v1/bd/jobs/{}/events",
        api.trim_end_matches('/'),
        job_id
    );
    let loopback = url::Url::parse(api)
        .with_context(|| format!("--api {api:?} is not a URL"))?
        .host_str()
        .is_some_and(|h| matches!(h, "127.0.0.1" | "localhost" | "[::1]"));
    let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if loopback {
        // A proxy configured for the outside world has no business relaying loopback traffic.
        http = http.no_proxy();
    }
    let http = http.build().context("cannot build an HTTP client")?;
    let bar = progress::percent(show_bar);
    let mut failures = 0u32;
    let mut warnings_seen = 0usize;
    loop {
        let resp = match http
            .get(&url)
            .bearer_auth(key)
            .header("accept", "text/event-stream")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if failures < 10 => {
                failures += 1;
                bar.set_message(format!("reconnecting ({e})"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot reach {url}")),
        };
        let status = resp.status();
        if !status.is_success() {
            let detail = resp
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if (status.as_u16() == 503 || status.as_u16() == 429) && failures < 10 {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            bar.abandon();
            bail!("GET {url}: {status}: {detail}");
        }
        let mut resp = resp;
        let mut parser = SseParser::default();
        // Each connection replays the warnings so far: print only the ones not printed yet.
        let mut warnings_here = 0usize;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            failures = 0;
            for ev in parser.feed(&chunk) {
                let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                match ev.name.as_str() {
                    "progress" => {
                        bar.set_position(data["progress_percent"].as_u64().unwrap_or(0));
                        bar.set_message(
                            data["progress_message"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        );
                    }
                    "warning" => {
                        warnings_here += 1;
                        if warnings_here > warnings_seen {
                            warnings_seen = warnings_here;
                            let msg = data["message"].as_str().unwrap_or_default();
                            bar.suspend(|| eprintln!("warning: {msg}"));
                        }
                    }
                    "completed" => {
                        bar.set_position(100);
                        bar.finish_with_message("completed");
                        return Ok(Outcome::Completed);
                    }
                    "failed" => {
                        bar.abandon_with_message("failed");
                        let why = data["error_message"]
                            .as_str()
                            .unwrap_or("no error message")
                            .to_owned();
                        return Ok(Outcome::Failed(why));
                    }
                    "cancelled" => {
                        bar.abandon_with_message("cancelled");
                        return Ok(Outcome::Cancelled);
                    }
                    _ => {}
                }
            }
        }
        if failures >= 10 {
            bar.abandon();
            bail!("the event stream of job {job_id} kept closing before the job ended");
        }
        failures += 1;
        bar.set_message("stream closed; reconnecting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(clap::Args)]
pub struct WatchArgs {
    /// The job's id (from POST /api/v1/bd/jobs).
    job_id: String,
    /// Base URL of the API.
    #[arg(long, env = "BDJOBS_API_URL", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// API key (dc_...). Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "BDJOBS_API_KEY", hide_env_values = true)]
    key: String,
}

/// Follows the job and exits with its outcome's code.
pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let WatchArgs { job_id, api, key } = args;
    let outcome = watch(&api, &key, &job_id, super::show_progress()).await?;
    match &outcome {
        Outcome::Completed => println!("job {job_id} completed"),
        Outcome::Failed(why) => eprintln!("job {job_id} failed: {why}"),
        Outcome::Cancelled => eprintln!("job {job_id} was cancelled"),
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_put_back_together() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: progress\ndata: {\"a\"").is_empty());
        let evs = p.feed(b":1}\n\n: keep-alive\n\nevent: completed\r\ndata: {}\r\n\r\n");
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    name: "progress".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    name: "completed".into(),
                    data: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn an_unnamed_event_is_a_message_and_data_lines_join_with_newlines() {
        let mut p = SseParser::default();
        let evs = p.feed(b"data: a\ndata: b\n\n");
        assert_eq!(
            evs,
            vec![SseEvent {
                name: "message".into(),
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn each_outcome_has_its_exit_code() {
        assert_eq!(Outcome::Completed.exit_code(), 0);
        assert_eq!(Outcome::Failed("x".into()).exit_code(), 1);
        assert_eq!(Outcome::Cancelled.exit_code(), 2);
    }
}
