//! Webhooks end to end (issue 16): the API, a worker and a projector run in this process; the
//! dispatcher runs as a child process of the built binary, so that it can be killed with
//! SIGKILL mid-delivery. A receiver on loopback fails each delivery on its first attempt (500),
//! lets the second time out, answers the third 429 with `Retry-After`, and accepts the fourth;
//! it goes down for a while in the middle. Every terminal job must end up accepted exactly once
//! by webhook-id, in order per job, with signatures that Python's `hmac` accepts.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bdjobs::domain::ids::{JobId, TenantId};
use bdjobs::domain::messages::{Cancelled, Event, Failed, JobRef, Position, Progress};
use bdjobs::domain::plan::Capability;
use common::Resources;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One attempt as the receiver saw it.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    /// What the receiver answered: a status, or 0 for "held until the sender gave up".
    answered: u16,
}

#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    /// Whether `/gone` has come back (it answers 410 until then).
    gone_is_back: bool,
}

type Shared = Arc<Mutex<Log>>;

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn seen(headers: &HeaderMap, body: String, answered: u16) -> Seen {
    Seen {
        id: header(headers, "webhook-id"),
        timestamp: header(headers, "webhook-timestamp"),
        signature: header(headers, "webhook-signature"),
        body,
        answered,
    }
}

/// The scripted receiver: by the number of times it has seen a webhook-id, 500, a timeout, 429
/// with `Retry-After: 1`, then 200.
async fn hook(State(log): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let id = header(&headers, "webhook-id");
    let n = {
        let log = log.lock().unwrap();
        log.seen.iter().filter(|s| s.id == id).count() + 1
    };
    let answer = match n {
        1 => StatusCode::INTERNAL_SERVER_ERROR,
        2 => {
            // Longer than the dispatcher's timeout: it gives up and retries.
            log.lock().unwrap().seen.push(seen(&headers, body, 0));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        3 => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    };
    log.lock()
        .unwrap()
        .seen
        .push(seen(&headers, body, answer.as_u16()));
    if answer == StatusCode::TOO_MANY_REQUESTS {
        return (answer, [("retry-after", "1")]).into_response();
    }
    answer.into_response()
}

/// A receiver that refuses the message (410) until it is told it is back.
async fn gone(State(log): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut log = log.lock().unwrap();
    let answer = if log.gone_is_back {
        StatusCode::OK
    } else {
        StatusCode::GONE
    };
    log.seen.push(seen(&headers, body, answer.as_u16()));
    answer.into_response()
}

/// A receiver that accepts every delivery at once.
async fn accept(State(log): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    log.lock().unwrap().seen.push(seen(&headers, body, 200));
    StatusCode::OK
}

struct Receiver {
    log: Shared,
    port: u16,
    stop: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Receiver {
    async fn start() -> Self {
        let mut r = Self {
            log: Shared::default(),
            port: 0,
            stop: None,
        };
        r.up().await;
        r
    }

    /// Listens (again, on the same port after an outage).
    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .route("/gone", axum::routing::post(gone))
            .route("/ok", axum::routing::post(accept))
            .with_state(self.log.clone());
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { t.cancelled().await })
                .await
                .unwrap();
        });
        self.stop = Some((token, task));
    }

    /// Stops listening and closes every connection: senders get "connection refused".
    async fn down(&mut self) {
        if let Some((token, task)) = self.stop.take() {
            token.cancel();
            task.await.unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }
}

/// `bdjobs ARGS` against the test's database, with fast webhook retries.
fn bdjobs(res: &Resources, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bdjobs"));
    cmd.args(args)
        .env_remove("BDJOBS_CONFIG")
        .env("DATABASE_URL", &res.config.database_url)
        .env("AMQP_URL", &res.config.amqp_url)
        .env("BDJOBS_NAMESPACE", &res.config.namespace)
        .env("BDJOBS_ASSETS", res.config.assets_location())
        .env("BDJOBS_DB_POOL_SIZE", "4")
        .env("BDJOBS_WEBHOOK_ALLOW_PRIVATE", "on")
        .env("BDJOBS_WEBHOOK_TIMEOUT_MS", "400")
        .env("BDJOBS_WEBHOOK_RETRY_BASE_MS", "50")
        .env("BDJOBS_WEBHOOK_MAX_ATTEMPTS", "30")
        .env("RUST_LOG", "warn,bdjobs=info");
    cmd
}

fn cli(res: &Resources, args: &[&str]) -> String {
    let out = bdjobs(res, args).output().unwrap();
    assert!(
        out.status.success(),
        "bdjobs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A dispatcher process, killed (SIGKILL) when dropped.
struct Dispatcher(Child);

impl Dispatcher {
    fn start(res: &Resources) -> Self {
        let log = res.assets.path().join("dispatcher.log");
        let child = bdjobs(res, &["webhooks"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(res: &Resources, sql: &str) -> i64 {
    let client = res.pool.get().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn status(res: &Resources, job: &str) -> Option<String> {
    bdjobs::adapters::db::jobs::status(&res.pool, JobId(job.parse().unwrap()))
        .await
        .unwrap()
        .map(|s| s.as_str().to_owned())
}

async fn wait_terminal(res: &Resources, jobs: &[String]) {
    for job in jobs {
        until("a job to end", Duration::from_secs(60), || async move {
            matches!(
                status(res, job).await.as_deref(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await;
    }
}

/// Checks every (id, timestamp, signature, body) with Python's own `hmac`, not ours.
fn python_verifies(secret: &str, seen: &[Seen]) -> usize {
    let script = r#"
import base64, hashlib, hmac, json, sys
key = base64.b64decode(sys.argv[1].removeprefix("whsec_"))
ok = 0
for line in sys.stdin:
    m = json.loads(line)
    signed = f"{m['id']}.{m['ts']}.{m['body']}".encode()
    want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if hmac.compare_digest(want, m["sig"]):
        ok += 1
print(ok)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for s in seen {
            let line = json!({"id": s.id, "ts": s.timestamp, "sig": s.signature, "body": s.body});
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn the_spec_example_signs_the_same_in_rust_and_in_pythons_hmac() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (id, ts, body) = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        r#"{"test": 2432232314}"#,
    );
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let key = bdjobs::domain::webhooks::secret_key(secret).unwrap();
    assert_eq!(
        bdjobs::domain::webhooks::sign(&key, id, ts, body.as_bytes()),
        expected
    );
    let vector = Seen {
        id: id.to_owned(),
        timestamp: ts.to_string(),
        signature: expected.to_owned(),
        body: body.to_owned(),
        answered: 200,
    };
    assert_eq!(python_verifies(secret, std::slice::from_ref(&vector)), 1);
    let tampered = Seen {
        body: r#"{"test": 2432232315}"#.to_owned(),
        ..vector
    };
    assert_eq!(python_verifies(secret, &[tampered]), 0);
}

fn envelope(job: &str, event: Event, seq: u64) -> bdjobs::domain::messages::RawEnvelope {
    let job = JobRef {
        job_id: JobId(job.parse().unwrap()),
        tenant: TenantId::parse("acme").unwrap(),
    };
    event.into_envelope(&job, Position { attempt: 1, seq }, chrono::Utc::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_terminal_job_is_delivered_once_by_id_in_order_across_a_sigkill_and_an_outage() {
    let mut res = Resources::new("webhooks").await;
    res.config.webhook_allow_private = bdjobs::config::Switch::On;
    let (_dns, config) = common::with_demo_dns(&res).await;
    let storage = res.config.storage().unwrap();
    let res = &res;
    let key = res.key("acme").await;
    let other_key = res.key("other").await;
    let mut receiver = Receiver::start().await;

    let out = cli(
        res,
        &[
            "webhooks",
            "set",
            "--tenant",
            "acme",
            &receiver.url("/hook"),
        ],
    );
    let secret = out.lines().last().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{out}");
    let listed = cli(res, &["webhooks", "list"]);
    assert!(listed.contains(&receiver.url("/hook")) && !listed.contains(&secret));

    // The API and the projector in this process; the worker comes later.
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut roles = Vec::new();
    {
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        roles.push(tokio::spawn(async move {
            bdjobs::app::run_api(&c, p, listener, s).await
        }));
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        roles.push(tokio::spawn(async move {
            bdjobs::app::run_projector(&c, p, s).await
        }));
    }
    let first = Dispatcher::start(res);
    let demo = common::demo_job();

    // Another account has no endpoint, so nothing to sign with: its job runs unannounced, and
    // says why.
    let mut with_url = demo.clone();
    with_url["webhook_url"] = json!(receiver.url("/hook"));
    let unannounced = common::create_job(&base, &other_key, &with_url).await;
    assert!(
        unannounced["warnings"]
            .as_array()
            .unwrap()
            .contains(&json!(bdjobs::api::jobs::NO_ENDPOINT_WARNING)),
        "{unannounced}"
    );
    // A URL that is not https is refused (private targets allow http, so this one is ftp).
    let mut not_https = demo.clone();
    not_https["webhook_url"] = json!("ftp://127.0.0.1/hook");
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/bd/jobs"))
        .bearer_auth(&key)
        .json(&not_https)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);

    // Cancelled by the API before any worker runs: queued by the API's own transaction.
    let cancelled = common::create_job(&base, &key, &demo).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/bd/jobs/{cancelled}/cancel"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // A late failure, then an earlier cancellation that overturns it: two outcomes of one job,
    // which must reach the receiver in that order.
    let overturned = common::create_job(&base, &key, &demo).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = Event::Failed(Failed {
        error: "a late failure".to_owned(),
        stage: None,
    });
    bdjobs::read_model::apply(&res.pool, &storage, &envelope(&overturned, failed, 900))
        .await
        .unwrap();
    let earlier = Event::Cancelled(Cancelled {
        reason: "an earlier cancellation".to_owned(),
        partial: None,
    });
    bdjobs::read_model::apply(&res.pool, &storage, &envelope(&overturned, earlier, 10))
        .await
        .unwrap();
    assert_eq!(status(res, &overturned).await.as_deref(), Some("cancelled"));

    {
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        roles.push(tokio::spawn(async move {
            bdjobs::app::run_worker(&c, p, s).await
        }));
    }
    let mut jobs = vec![cancelled.clone(), overturned.clone()];
    for _ in 0..3 {
        jobs.push(
            common::create_job(&base, &key, &demo).await["job_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // Kill the dispatcher once deliveries are under way, then take the receiver down and
    // start another dispatcher while more jobs end.
    let r = &receiver;
    until(
        "the receiver to see attempts",
        Duration::from_secs(60),
        || async move { r.seen().len() >= 3 },
    )
    .await;
    first.kill();
    receiver.down().await;
    let _second = Dispatcher::start(res);
    for _ in 0..2 {
        jobs.push(
            common::create_job(&base, &key, &demo).await["job_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    wait_terminal(res, &jobs).await;
    // Ended too, and queued nothing (checked by the count of deliveries below).
    let unannounced = unannounced["job_id"].as_str().unwrap().to_owned();
    wait_terminal(res, std::slice::from_ref(&unannounced)).await;
    until(
        "an attempt to fail on the outage",
        Duration::from_secs(60),
        || async move {
            count(
                res,
                "SELECT count(*) FROM webhook_attempts
                 WHERE status_code IS NULL AND error <> 'timed out'",
            )
            .await
                > 0
        },
    )
    .await;
    receiver.up().await;
    // One more job, delivered with the receiver up and the dispatcher left alone.
    let fresh = common::create_job(&base, &key, &demo).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    jobs.push(fresh.clone());
    wait_terminal(res, std::slice::from_ref(&fresh)).await;

    // Every outcome: one per job, two for the overturned one.
    let outcomes = jobs.len() as i64 + 1;
    until(
        "every delivery to be delivered",
        Duration::from_secs(120),
        || async move {
            count(
                res,
                "SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'",
            )
            .await
                == outcomes
        },
    )
    .await;
    assert_eq!(
        count(res, "SELECT count(*) FROM webhook_deliveries").await,
        outcomes
    );

    let seen = receiver.seen();
    let accepted: Vec<&Seen> = seen.iter().filter(|s| s.answered == 200).collect();
    // By id, each outcome was accepted at least once (twice only if the first dispatcher died
    // between sending and recording), and all of one id's copies are the same bytes.
    let mut by_id: BTreeMap<&str, Vec<&Seen>> = BTreeMap::new();
    for s in &accepted {
        by_id.entry(s.id.as_str()).or_default().push(s);
    }
    assert_eq!(by_id.len() as i64, outcomes, "distinct ids accepted");
    let mut per_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, copies) in &by_id {
        assert!(copies.iter().all(|c| c.body == copies[0].body), "{id}");
        let body: Value = serde_json::from_str(&copies[0].body).unwrap();
        let job = body["data"]["job_id"].as_str().unwrap().to_owned();
        assert_eq!(
            body["type"].as_str().unwrap(),
            format!("job.{}", body["data"]["status"].as_str().unwrap())
        );
        assert!(body["data"]["summary"].is_object(), "{body}");
        per_job.entry(job).or_default().push((*id).to_owned());
    }
    let expected: BTreeSet<&String> = jobs.iter().collect();
    assert_eq!(per_job.keys().collect::<BTreeSet<_>>(), expected);
    for job in &jobs {
        let n = per_job[job].len();
        assert_eq!(n, if *job == overturned { 2 } else { 1 }, "{job}");
        // What a client polling the job sees is what its last webhook said.
        let view = common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{job}")).await;
        let last = seen
            .iter()
            .rev()
            .find(|s| s.answered == 200 && s.body.contains(job.as_str()))
            .unwrap();
        let body: Value = serde_json::from_str(&last.body).unwrap();
        assert_eq!(body["data"]["status"], view["status"], "{job}");
    }
    // Every scripted failure happened before acceptance, retries included, for every id.
    for id in by_id.keys() {
        let answers: Vec<u16> = seen
            .iter()
            .filter(|s| s.id == *id)
            .map(|s| s.answered)
            .collect();
        assert_eq!(&answers[..4], &[500, 0, 429, 200], "{id}: {answers:?}");
    }
    // In order per job: the overturned job's failure was accepted before its cancellation was
    // first tried.
    let first_of = |kind: &str| {
        seen.iter()
            .position(|s| s.body.contains(overturned.as_str()) && s.body.contains(kind))
            .unwrap()
    };
    let failed_accepted = seen
        .iter()
        .position(|s| {
            s.answered == 200
                && s.body.contains(overturned.as_str())
                && s.body.contains("\"job.failed\"")
        })
        .unwrap();
    assert!(first_of("\"job.failed\"") < first_of("\"job.cancelled\""));
    assert!(failed_accepted < first_of("\"job.cancelled\""));
    // Signed with the tenant's secret, as an independent implementation checks it.
    assert_eq!(python_verifies(&secret, &seen), seen.len());

    // The listing: each delivery's attempts, ending in the 200.
    for job in &jobs {
        let listing =
            common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{job}/webhooks")).await;
        for delivery in listing["deliveries"].as_array().unwrap() {
            assert_eq!(delivery["state"], "delivered");
            assert!(by_id.contains_key(delivery["webhook_id"].as_str().unwrap()));
            let last = delivery["attempts"].as_array().unwrap().last().unwrap();
            assert_eq!(last["status_code"], 200, "{delivery}");
        }
    }
    // The job that ended after the outage shows the script attempt by attempt, and after the
    // 429 the wait its Retry-After asked for (longer than the schedule's own third wait).
    let listing = common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{fresh}/webhooks")).await;
    let attempts = listing["deliveries"][0]["attempts"].as_array().unwrap();
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &Value::Null, &json!(429), &json!(200)]);
    assert_eq!(attempts[1]["error"], "timed out");
    assert_eq!(attempts[3]["next_attempt_at"], Value::Null);
    let time = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(attempts[2][field].as_str().unwrap()).unwrap()
    };
    assert!(
        time("next_attempt_at") - time("attempted_at") >= chrono::Duration::seconds(1),
        "{}",
        attempts[2]
    );
    // Another tenant's job is nobody's business.
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/v1/bd/jobs/{}/webhooks", jobs[2]))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // A job's own URL that refuses the message: given up at once (no retry on a 4xx), kept,
    // and sent again with the same id by `webhooks redeliver`.
    let mut refused = demo.clone();
    refused["webhook_url"] = json!(receiver.url("/gone"));
    let gone_job = common::create_job(&base, &key, &refused).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_terminal(res, std::slice::from_ref(&gone_job)).await;
    let path = format!("/api/v1/bd/jobs/{gone_job}/webhooks");
    let (b, k, p) = (&base, &key, &path);
    until(
        "the 410 to be given up",
        Duration::from_secs(60),
        || async move { common::get_json(b, k, p).await["deliveries"][0]["state"] == "failed" },
    )
    .await;
    let given_up = common::get_json(&base, &key, &path).await["deliveries"][0].clone();
    assert_eq!(given_up["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(given_up["attempts"][0]["status_code"], 410);
    receiver.log.lock().unwrap().gone_is_back = true;
    let out = cli(res, &["webhooks", "redeliver", "--job", &gone_job]);
    assert!(out.contains("1 deliveries"), "{out}");
    until("the redelivery", Duration::from_secs(60), || async move {
        common::get_json(b, k, p).await["deliveries"][0]["state"] == "delivered"
    })
    .await;
    let gone_seen: Vec<Seen> = receiver
        .seen()
        .into_iter()
        .filter(|s| s.body.contains(gone_job.as_str()))
        .collect();
    assert_eq!(gone_seen.len(), 2);
    assert_eq!(gone_seen[0].id, gone_seen[1].id);
    assert_eq!(gone_seen[1].answered, 200);

    // A replay rebuilds every view and queues nothing.
    let before = count(res, "SELECT count(*) FROM webhook_deliveries").await;
    bdjobs::read_model::replay::replay(&res.pool, &storage, Default::default(), false)
        .await
        .unwrap();
    assert_eq!(
        count(res, "SELECT count(*) FROM webhook_deliveries").await,
        before
    );
    assert_eq!(
        count(
            res,
            "SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'"
        )
        .await,
        0
    );

    // A new secret signs what is sent from then on; the old one no longer verifies.
    let out = cli(res, &["webhooks", "rotate-secret", "--tenant", "acme"]);
    let rotated = out.lines().last().unwrap().to_owned();
    assert!(rotated.starts_with("whsec_") && rotated != secret, "{out}");
    let after = common::create_job(&base, &key, &demo).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = &receiver;
    let a = after.as_str();
    until(
        "the delivery after the rotation",
        Duration::from_secs(60),
        || async move {
            r.seen()
                .iter()
                .any(|s| s.answered == 200 && s.body.contains(a))
        },
    )
    .await;
    let signed_after: Vec<Seen> = receiver
        .seen()
        .into_iter()
        .filter(|s| s.body.contains(a))
        .collect();
    assert_eq!(python_verifies(&rotated, &signed_after), signed_after.len());
    assert_eq!(python_verifies(&secret, &signed_after), 0);

    shutdown.cancel();
    for role in roles {
        tokio::time::timeout(Duration::from_secs(30), role)
            .await
            .expect("roles stop")
            .unwrap()
            .unwrap();
    }
    receiver.down().await;
}

fn progress(
    job: &str,
    stage: Capability,
    attempt: u32,
    seq: u64,
) -> bdjobs::domain::messages::RawEnvelope {
    let job = JobRef {
        job_id: JobId(job.parse().unwrap()),
        tenant: TenantId::parse("acme").unwrap(),
    };
    Event::Progress(Progress {
        stage,
        percent: 10,
        message: format!("{stage}..."),
        done: None,
        total: None,
    })
    .into_envelope(&job, Position { attempt, seq }, chrono::Utc::now())
}

/// What the receiver accepted for `job`, in the order it accepted them: (type, stage).
fn accepted_for(receiver: &Receiver, job: &str) -> Vec<(String, Option<String>)> {
    receiver
        .seen()
        .iter()
        .filter(|s| s.answered == 200 && s.body.contains(job))
        .map(|s| {
            let body: Value = serde_json::from_str(&s.body).unwrap();
            let stage = body["data"]["stage"].as_str().map(str::to_owned);
            (body["type"].as_str().unwrap().to_owned(), stage)
        })
        .collect()
}

fn stage(name: Capability) -> (String, Option<String>) {
    ("job.stage".to_owned(), Some(name.as_str().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_asks_for_its_stages_gets_each_new_one_in_plan_order_before_its_outcome() {
    let mut res = Resources::new("webhook_stages").await;
    res.config.webhook_allow_private = bdjobs::config::Switch::On;
    let (_dns, mut config) = common::with_demo_dns(&res).await;
    // Every progress report is sent, so the projector sees every stage the worker enters.
    config.progress_every_ms = 0;
    let storage = res.config.storage().unwrap();
    let res = &res;
    let key = res.key("acme").await;
    let receiver = Receiver::start().await;
    let out = cli(
        res,
        &["webhooks", "set", "--tenant", "acme", &receiver.url("/ok")],
    );
    let secret = out.lines().last().unwrap().to_owned();

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut roles = Vec::new();
    {
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        roles.push(tokio::spawn(async move {
            bdjobs::app::run_api(&c, p, listener, s).await
        }));
    }
    let _dispatcher = Dispatcher::start(res);
    let demo = common::demo_job();
    let mut staged = demo.clone();
    staged["webhook_stages"] = json!(true);

    // First the projector's step by hand, before any worker or projector runs, with reports
    // duplicated and out of order: each stage is announced once, never one older than a stage
    // already announced, none after the outcome, and one reached in the outcome's own batch
    // goes first.
    let by_hand = common::create_job(&base, &key, &staged).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j = by_hand.as_str();
    let apply = |raws: Vec<bdjobs::domain::messages::RawEnvelope>| {
        let (pool, storage) = (res.pool.clone(), storage.clone());
        async move {
            bdjobs::read_model::apply_batch(&pool, &storage, &raws)
                .await
                .unwrap();
        }
    };
    let discovery = progress(j, Capability::ContactDiscovery, 1, 6);
    apply(vec![progress(j, Capability::Qualification, 1, 2)]).await;
    apply(vec![
        discovery.clone(),
        progress(j, Capability::CompanySize, 1, 4),
        discovery.clone(),
    ])
    .await;
    // A duplicated run reporting the same stage again.
    apply(vec![progress(j, Capability::ContactDiscovery, 2, 6)]).await;
    let failed = Event::Failed(Failed {
        error: "a failure".to_owned(),
        stage: None,
    });
    apply(vec![
        progress(j, Capability::EmailVerify, 1, 10),
        envelope(j, failed, 11),
    ])
    .await;
    apply(vec![progress(j, Capability::DeliverableFinalize, 1, 12)]).await;
    let listing = common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{j}/webhooks")).await;
    let queued: Vec<(String, Option<String>)> = listing["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["event"].as_str().unwrap().to_owned(),
                d["stage"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let expected = vec![
        stage(Capability::Qualification),
        stage(Capability::ContactDiscovery),
        stage(Capability::EmailVerify),
        ("job.failed".to_owned(), None),
    ];
    assert_eq!(queued, expected, "{listing}");
    let r = &receiver;
    until(
        "the hand-made deliveries",
        Duration::from_secs(60),
        || async move { accepted_for(r, j).len() == 4 },
    )
    .await;
    assert_eq!(accepted_for(&receiver, j), expected);

    // Then a real run: a job that asked for its stages and one that did not.
    {
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        roles.push(tokio::spawn(async move {
            bdjobs::app::run_projector(&c, p, s).await
        }));
        let (c, p, s) = (config.clone(), res.pool.clone(), shutdown.clone());
        roles.push(tokio::spawn(async move {
            bdjobs::app::run_worker(&c, p, s).await
        }));
    }
    let announced = common::create_job(&base, &key, &staged).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = common::create_job(&base, &key, &demo).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_terminal(res, &[announced.clone(), plain.clone()]).await;
    let (a, p) = (announced.as_str(), plain.as_str());
    until("the outcomes", Duration::from_secs(60), || async move {
        [a, p].iter().all(|job| {
            accepted_for(r, job)
                .last()
                .is_some_and(|(kind, _)| kind != "job.stage")
        })
    })
    .await;
    let plan: Vec<String> = common::get_json(&base, &key, &format!("/api/v1/bd/jobs/{a}")).await
        ["requested_capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let got = accepted_for(&receiver, a);
    let (outcome, stages) = got.split_last().unwrap();
    assert_eq!(outcome.0, "job.completed", "{got:?}");
    assert!(!stages.is_empty(), "{got:?}");
    let at: Vec<usize> = stages
        .iter()
        .map(|(kind, name)| {
            assert_eq!(kind, "job.stage");
            plan.iter()
                .position(|c| Some(c) == name.as_ref())
                .unwrap_or_else(|| panic!("{name:?} is not in the plan {plan:?}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    // Every stage announced is one the worker reported.
    let client = res.pool.get().await.unwrap();
    let reported: Vec<String> = client
        .query(
            "SELECT DISTINCT envelope->'payload'->>'stage' FROM events
             WHERE job_id = $1 AND type = 'job.progress'",
            &[&uuid::Uuid::parse_str(a).unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (_, name) in stages {
        assert!(
            reported.contains(name.as_ref().unwrap()),
            "{name:?}: {reported:?}"
        );
    }
    assert_eq!(
        accepted_for(&receiver, p),
        [("job.completed".to_owned(), None)]
    );
    assert_eq!(
        python_verifies(&secret, &receiver.seen()),
        receiver.seen().len()
    );

    shutdown.cancel();
    for role in roles {
        tokio::time::timeout(Duration::from_secs(30), role)
            .await
            .expect("roles stop")
            .unwrap()
            .unwrap();
    }
}
