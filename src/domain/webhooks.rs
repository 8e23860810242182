//! The pure rules of webhooks (issue 16): which URLs a job may name, how a delivery is signed
//! (the Standard Webhooks spec: `webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), what an answer means, how long to wait
//! before the next attempt, and the body. The dispatcher role (`src/webhooks/`) owns the sockets
//! and the clock; everything it decides without them is here.

use super::ids::JobId;
use super::job::JobView;
use super::plan::Capability;
use super::probe::is_internal;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::IpAddr;
use std::time::Duration;

/// The prefix of a secret as the spec writes it: `whsec_` + base64 of the key's bytes.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of a generated key (the spec asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// The longest URL a job or endpoint may name.
pub const MAX_URL_LEN: usize = 2048;

/// A secret in the spec's text form, from `bytes` of random key.
pub fn format_secret(bytes: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", B64.encode(bytes))
}

/// The key bytes of a secret in the spec's text form (`whsec_` optional, as the libraries read it).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    B64.decode(b64)
        .map_err(|e| format!("a webhook secret is `whsec_` and base64: {e}"))
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, the `webhook-signature` value.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-id` of a job's delivery for one outcome: derived from the job and the event
/// kind, so every retry, every dispatcher and every projector that inserts it agree on it, and a
/// receiver can deduplicate by it.
pub fn delivery_id(job: JobId, event: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&job.0, format!("bdjobs webhook {event}").as_bytes())
}

/// The event of a stage announcement, which a job asks for with `webhook_stages`.
pub const STAGE_EVENT: &str = "job.stage";

/// The `webhook-id` of a job's announcement of one stage: one per (job, stage), so a stage
/// reported twice (a redelivered or duplicated event, a retried run) is announced once.
pub fn stage_delivery_id(job: JobId, stage: Capability) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &job.0,
        format!("bdjobs webhook {STAGE_EVENT} {stage}").as_bytes(),
    )
}

/// The stage to announce after an event moved a job's view from `reached_before` (its
/// [`JobView::stage_reached`] before the event) to `view`: the stage it has just reached, when
/// the job asked for its stages, that stage is later in the plan than any reached before (so
/// never one older than a stage already announced, whatever order the reports arrive in), and
/// the job has not ended (an outcome is the last thing announced).
pub fn stage_to_announce(reached_before: Option<Capability>, view: &JobView) -> Option<Capability> {
    let reached = view.stage_reached?;
    (view.webhook_stages && !view.status.is_terminal() && Some(reached) > reached_before)
        .then_some(reached)
}

/// The `webhook-id` header for a delivery id.
pub fn msg_id(delivery: uuid::Uuid) -> String {
    format!("msg_{}", delivery.simple())
}

/// The body: Standard Webhooks' envelope (`type`, `timestamp`, `data`) around the job's
/// `GET /bd/jobs/{id}` body with its result's `summary` beside the fields.
pub fn payload(event: &str, view: &JobView) -> serde_json::Value {
    let mut data = super::render::job_json(view);
    let summary = view
        .result
        .as_ref()
        .map(|r| serde_json::to_value(&r.summary))
        .unwrap_or_else(|| serde_json::to_value(super::stages::Summary::default()))
        .unwrap_or_default();
    if let Some(map) = data.as_object_mut() {
        map.insert("summary".to_owned(), summary);
    }
    serde_json::json!({
        "type": event,
        "timestamp": super::render::ts(view.updated_at),
        "data": data,
    })
}

/// The body of a stage announcement: [`payload`]'s, with the stage reached named in `data`.
pub fn stage_payload(view: &JobView, stage: Capability) -> serde_json::Value {
    let mut body = payload(STAGE_EVENT, view);
    if let Some(map) = body["data"].as_object_mut() {
        map.insert("stage".to_owned(), serde_json::json!(stage.as_str()));
    }
    body
}

/// Checks a webhook URL: `https`, or `http` only when private targets are allowed (a test or a
/// demo on loopback); a host, no credentials, at most [`MAX_URL_LEN`] bytes; a literal address
/// on an internal network only when allowed. A name is checked again when it is resolved, at
/// each connection.
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("webhook_url: longer than {MAX_URL_LEN} characters"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("webhook_url: not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err("webhook_url: must be https".to_owned()),
        _ => return Err("webhook_url: must be https".to_owned()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("webhook_url: must not carry credentials".to_owned());
    }
    let forbidden = match url.host() {
        None => return Err("webhook_url: has no host".to_owned()),
        Some(url::Host::Ipv4(ip)) => is_internal(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_internal(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    if forbidden && !allow_private {
        return Err("webhook_url: names an internal address".to_owned());
    }
    Ok(url)
}

/// What one attempt's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx: delivered.
    Delivered,
    /// A timeout, a connection failure, a 5xx, a 429, a 408 or a redirect (never followed): try
    /// again later.
    Retry,
    /// Any other 4xx: the receiver refuses this message; trying again would not change that.
    GiveUp,
}

/// The verdict for an HTTP status, or for no status at all (the attempt failed before an answer).
pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(408 | 429) => Verdict::Retry,
        Some(400..=499) => Verdict::GiveUp,
        _ => Verdict::Retry,
    }
}

/// The retry schedule: the wait before attempt `n + 1` after `n` failed attempts is `base`
/// times 4^(n-1), at most [`Schedule::max_wait`], each stretched or shrunk by up to 20 % at
/// random (`jitter` in [0, 1)) so that a receiver coming back is not hit by every delivery at
/// once. With the defaults (5 s, 10 attempts) the waits are about 5 s, 20 s, 80 s, 5 min,
/// 21 min, 85 min, 5.7 h, 8 h, 8 h: about a day from the first attempt to the last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub base: Duration,
    pub max_wait: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            max_wait: Duration::from_secs(8 * 3600),
            max_attempts: 10,
        }
    }
}

impl Schedule {
    /// The wait after `failed` attempts (1 or more), or `None` when none is left. A
    /// `Retry-After` the receiver sent is honoured when longer (up to `max_wait`).
    pub fn next_wait(
        &self,
        failed: u32,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if failed >= self.max_attempts {
            return None;
        }
        let exp = failed.saturating_sub(1).min(30);
        let plain = self
            .base
            .saturating_mul(4u32.saturating_pow(exp))
            .min(self.max_wait);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let jittered = plain.mul_f64(factor).min(self.max_wait);
        Some(match retry_after {
            Some(asked) if asked > jittered => asked.min(self.max_wait),
            _ => jittered,
        })
    }
}

/// A `Retry-After` header: delay-seconds, or an HTTP date (read against `now`; one in the past
/// means now).
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification (and of its libraries' tests).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specs_example_signs_to_the_published_signature() {
        let key = secret_key(SPEC_SECRET).unwrap();
        assert_eq!(sign(&key, SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()), SPEC_SIG);
    }

    #[test]
    fn a_different_body_timestamp_or_id_changes_the_signature() {
        let key = secret_key(SPEC_SECRET).unwrap();
        assert_ne!(sign(&key, SPEC_ID, SPEC_TS, b"{\"test\": 1}"), SPEC_SIG);
        assert_ne!(
            sign(&key, SPEC_ID, SPEC_TS + 1, SPEC_BODY.as_bytes()),
            SPEC_SIG
        );
        assert_ne!(
            sign(&key, "msg_other", SPEC_TS, SPEC_BODY.as_bytes()),
            SPEC_SIG
        );
    }

    #[test]
    fn a_formatted_secret_reads_back_to_its_key() {
        let key = [7u8; SECRET_BYTES];
        let text = format_secret(&key);
        assert!(text.starts_with("whsec_"));
        assert_eq!(secret_key(&text).unwrap(), key);
        assert!(secret_key("whsec_not base64!").is_err());
    }

    #[test]
    fn a_delivery_keeps_its_id_and_each_outcome_has_its_own() {
        let job = JobId(uuid::Uuid::from_u128(42));
        assert_eq!(
            delivery_id(job, "job.completed"),
            delivery_id(job, "job.completed")
        );
        assert_ne!(
            delivery_id(job, "job.completed"),
            delivery_id(job, "job.failed")
        );
        assert!(msg_id(delivery_id(job, "job.failed")).starts_with("msg_"));
    }

    fn stage_view(webhook_stages: bool) -> JobView {
        use crate::domain::ids::{MessageId, TenantId};
        use crate::domain::messages::{Created, Event, EventRecord, Position};
        let created = EventRecord {
            message_id: MessageId::new(),
            job_id: JobId(uuid::Uuid::from_u128(42)),
            tenant: TenantId::parse("acme").unwrap(),
            occurred_at: chrono::Utc::now(),
            position: Position::ORIGIN,
            event: Event::Created(Created {
                preset: None,
                requested_capabilities: vec![
                    Capability::CompanySize,
                    Capability::EmailVerify,
                    Capability::DeliverableFinalize,
                ],
                warnings: vec![],
                chat_id: None,
                companies: 1,
                contacts: 1,
                webhook_url: None,
                webhook_stages,
            }),
        };
        JobView::created(&created).unwrap()
    }

    fn progress(
        view: &JobView,
        seq: u64,
        stage: Capability,
    ) -> crate::domain::messages::EventRecord {
        use crate::domain::ids::MessageId;
        use crate::domain::messages::{Event, EventRecord, Position, Progress};
        EventRecord {
            message_id: MessageId::new(),
            job_id: view.job_id,
            tenant: view.tenant.clone(),
            occurred_at: view.created_at + chrono::Duration::seconds(seq as i64),
            position: Position { attempt: 1, seq },
            event: Event::Progress(Progress {
                stage,
                percent: 10,
                message: format!("{stage}..."),
                done: None,
                total: None,
            }),
        }
    }

    /// Applies `stages` in order and returns the stages announced, as the projector decides.
    fn announced(view: &mut JobView, stages: &[Capability]) -> Vec<Capability> {
        let mut out = Vec::new();
        for (i, &stage) in stages.iter().enumerate() {
            let before = view.stage_reached;
            view.apply(&progress(view, i as u64 + 1, stage));
            out.extend(stage_to_announce(before, view));
        }
        out
    }

    #[test]
    fn each_new_stage_of_an_opted_in_job_is_announced_once_in_plan_order() {
        let mut view = stage_view(true);
        let stages = [
            Capability::CompanySize,
            Capability::CompanySize,
            Capability::EmailVerify,
            Capability::EmailVerify,
            Capability::DeliverableFinalize,
        ];
        assert_eq!(
            announced(&mut view, &stages),
            [
                Capability::CompanySize,
                Capability::EmailVerify,
                Capability::DeliverableFinalize
            ]
        );
    }

    #[test]
    fn a_stage_older_than_one_already_announced_is_not_announced() {
        let mut view = stage_view(true);
        // Reports out of order, and a retried run starting the plan again.
        let stages = [
            Capability::EmailVerify,
            Capability::CompanySize,
            Capability::EmailVerify,
            Capability::DeliverableFinalize,
            Capability::CompanySize,
        ];
        assert_eq!(
            announced(&mut view, &stages),
            [Capability::EmailVerify, Capability::DeliverableFinalize]
        );
    }

    #[test]
    fn a_job_that_did_not_ask_for_its_stages_announces_none_and_keeps_its_view_as_before() {
        let mut view = stage_view(false);
        let stages = [Capability::CompanySize, Capability::EmailVerify];
        assert!(announced(&mut view, &stages).is_empty());
        assert_eq!(view.stage_reached, None);
        let stored = serde_json::to_value(&view).unwrap();
        assert!(stored.get("stage_reached").is_none());
        assert!(stored.get("webhook_stages").is_none());
    }

    #[test]
    fn no_stage_is_announced_after_the_outcome() {
        use crate::domain::ids::MessageId;
        use crate::domain::messages::{Event, EventRecord, Failed, Position};
        let mut view = stage_view(true);
        assert_eq!(
            announced(&mut view, &[Capability::CompanySize]),
            [Capability::CompanySize]
        );
        view.apply(&EventRecord {
            message_id: MessageId::new(),
            job_id: view.job_id,
            tenant: view.tenant.clone(),
            occurred_at: view.created_at,
            position: Position { attempt: 1, seq: 9 },
            event: Event::Failed(Failed {
                error: "boom".into(),
                stage: None,
            }),
        });
        assert!(announced(&mut view, &[Capability::EmailVerify]).is_empty());
    }

    #[test]
    fn a_stage_announcement_names_its_stage_and_has_an_id_per_job_and_stage() {
        let view = stage_view(true);
        let body = stage_payload(&view, Capability::EmailVerify);
        assert_eq!(body["type"], STAGE_EVENT);
        assert_eq!(body["data"]["stage"], "email_verify");
        assert_eq!(body["data"]["job_id"], view.job_id.0.to_string());
        assert_eq!(
            stage_delivery_id(view.job_id, Capability::EmailVerify),
            stage_delivery_id(view.job_id, Capability::EmailVerify)
        );
        assert_ne!(
            stage_delivery_id(view.job_id, Capability::EmailVerify),
            stage_delivery_id(view.job_id, Capability::CompanySize)
        );
        assert_ne!(
            stage_delivery_id(view.job_id, Capability::EmailVerify),
            delivery_id(view.job_id, STAGE_EVENT)
        );
    }

    #[test]
    fn only_https_is_accepted_unless_private_targets_are_allowed() {
        assert!(check_url("https://hooks.example/bd", false).is_ok());
        assert!(check_url("http://hooks.example/bd", false).is_err());
        assert!(check_url("ftp://hooks.example/bd", true).is_err());
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
    }

    #[test]
    fn an_internal_literal_address_or_localhost_is_refused_unless_allowed() {
        // A private network's address is built from octets: the source names no address
        // outside loopback as text.
        let private = std::net::Ipv4Addr::from([10, 0, 0, 1]);
        let mapped = format!("https://[{}]/h", private.to_ipv6_mapped());
        let plain = format!("https://{private}/h");
        for url in [
            "https://127.0.0.1/h",
            "https://[::1]/h",
            "https://169.254.169.254/latest",
            mapped.as_str(),
            plain.as_str(),
            "https://localhost/h",
            "https://api.localhost./h",
        ] {
            assert!(check_url(url, false).is_err(), "{url}");
            assert!(check_url(url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn credentials_in_a_webhook_url_are_refused() {
        assert!(check_url("https://user:pw@hooks.example/", false).is_err());
        assert!(check_url("not a url", false).is_err());
        let long = format!("https://hooks.example/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long, false).is_err());
    }

    #[test]
    fn success_is_delivered_other_client_errors_give_up_and_the_rest_retry() {
        assert_eq!(verdict(Some(200)), Verdict::Delivered);
        assert_eq!(verdict(Some(204)), Verdict::Delivered);
        assert_eq!(verdict(Some(400)), Verdict::GiveUp);
        assert_eq!(verdict(Some(410)), Verdict::GiveUp);
        assert_eq!(verdict(Some(429)), Verdict::Retry);
        assert_eq!(verdict(Some(408)), Verdict::Retry);
        assert_eq!(verdict(Some(503)), Verdict::Retry);
        assert_eq!(verdict(Some(302)), Verdict::Retry);
        assert_eq!(verdict(None), Verdict::Retry);
    }

    #[test]
    fn the_default_schedule_grows_fourfold_to_a_cap_and_spans_about_a_day() {
        let s = Schedule::default();
        let waits: Vec<Duration> = (1..s.max_attempts)
            .map(|n| s.next_wait(n, 0.5, None).unwrap())
            .collect();
        assert_eq!(waits[0], Duration::from_secs(5));
        assert_eq!(waits[1], Duration::from_secs(20));
        assert_eq!(waits[2], Duration::from_secs(80));
        assert_eq!(*waits.last().unwrap(), s.max_wait);
        let total: Duration = waits.iter().sum();
        assert!(
            total > Duration::from_secs(20 * 3600) && total < Duration::from_secs(28 * 3600),
            "{total:?}"
        );
        assert_eq!(s.next_wait(s.max_attempts, 0.5, None), None);
    }

    #[test]
    fn jitter_stays_within_a_fifth_either_way() {
        let s = Schedule::default();
        assert_eq!(s.next_wait(2, 0.0, None), Some(Duration::from_secs(16)));
        assert!(s.next_wait(2, 0.999_999, None).unwrap() < Duration::from_secs(24));
    }

    #[test]
    fn a_longer_retry_after_is_honoured_up_to_the_cap() {
        let s = Schedule::default();
        let asked = Duration::from_secs(120);
        assert_eq!(s.next_wait(1, 0.5, Some(asked)), Some(asked));
        assert_eq!(
            s.next_wait(1, 0.5, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            s.next_wait(1, 0.5, Some(Duration::from_secs(10 * 86400))),
            Some(s.max_wait)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(retry_after(" 30 ", now), Some(Duration::from_secs(30)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
