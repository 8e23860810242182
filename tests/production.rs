//! The API's production features against the real Postgres and RabbitMQ: key listing and
//! revocation (through the binary), the paginated job list, ranged and conditional downloads,
//! the event stream and `watch`, idempotency keys, the limits, health and metrics.

mod common;

use bdjobs::cli::watch::{self, Outcome};
use common::{demo_job, demo_zone, Resources, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn small_job(email: &str) -> Value {
    json!({
        "requested_capabilities": ["email_verify"],
        "input_assets": {"contacts": [{"email": email, "full_name": "Ada Lovelace"}]}
    })
}

async fn create(app: &TestApp, key: &str, body: &Value) -> String {
    let resp = app.post_job(key, body).await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    v["job_id"].as_str().unwrap().to_owned()
}

fn bdjobs(res: &Resources, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bdjobs"))
        .args(args)
        .env("DATABASE_URL", &res.config.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_without_their_secret_and_a_revoked_key_gets_401() {
    let app = TestApp::start("keys").await;
    let key = app.res.key("acme").await;
    let _other = app.res.key("globex").await;
    assert_eq!(app.get(&key, "/api/v1/bd/jobs").await.status(), 200);

    let out = bdjobs(&app.res, &["keys", "list", "--tenant", "acme"]);
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        !listing.contains(&key),
        "the secret is never shown:\n{listing}"
    );
    assert!(
        listing.contains(&key[..9]),
        "the prefix is shown:\n{listing}"
    );
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "one key of acme, none of globex:\n{listing}");
    let key_id = rows[0].split_whitespace().next().unwrap().to_owned();
    assert!(
        rows[0].trim_end().ends_with('-'),
        "not revoked yet:\n{listing}"
    );

    let out = bdjobs(&app.res, &["keys", "revoke", &key_id]);
    assert!(out.status.success(), "{out:?}");
    // The API trusts a checked key for BDJOBS_KEY_CACHE_SECS (5 s by default): within that, the
    // revoked key stops working.
    let revoked = std::time::Instant::now();
    let resp = loop {
        let resp = app.get(&key, "/api/v1/bd/jobs").await;
        if resp.status() != 200 {
            break resp;
        }
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(10),
            "the revoked key still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    let listing =
        String::from_utf8(bdjobs(&app.res, &["keys", "list", "--tenant", "acme"]).stdout).unwrap();
    assert!(
        !listing.lines().nth(1).unwrap().trim_end().ends_with('-'),
        "{listing}"
    );
    let again = bdjobs(&app.res, &["keys", "revoke", &key_id]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already revoked"));
    let unknown = bdjobs(
        &app.res,
        &["keys", "revoke", &uuid::Uuid::new_v4().to_string()],
    );
    assert!(!unknown.status.success());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_pages_newest_first_filters_by_status_and_shows_only_the_callers_jobs() {
    let app = TestApp::start("list").await;
    let key = app.res.key("acme").await;
    let other = app.res.key("globex").await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create(&app, &key, &small_job(&format!("p{i}@acme.example"))).await);
    }
    let theirs = create(&app, &other, &small_job("x@globex.example")).await;

    let mut seen = Vec::new();
    let mut url = "/api/v1/bd/jobs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = app.get_json(&key, &url).await;
        pages += 1;
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(
            jobs.iter()
                .map(|j| j["job_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/api/v1/bd/jobs?limit=2&cursor={c}"),
            None => {
                assert!(page["next_cursor"].is_null());
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert!(!seen.contains(&theirs));

    let default_page = app.get_json(&key, "/api/v1/bd/jobs").await;
    assert_eq!(default_page["jobs"].as_array().unwrap().len(), 5);
    assert!(default_page["next_cursor"].is_null());

    for id in &created {
        app.wait(&key, id).await;
    }
    let done = app.get_json(&key, "/api/v1/bd/jobs?status=completed").await;
    assert_eq!(done["jobs"].as_array().unwrap().len(), 5);
    let pending = app.get_json(&key, "/api/v1/bd/jobs?status=pending").await;
    assert_eq!(pending["jobs"], json!([]));

    for bad in [
        "limit=0",
        "limit=101",
        "limit=ten",
        "status=done",
        "cursor=abc",
        "cursor=zz2734b9f0662dca9693b521426bdd8b0984e022fc119165",
    ] {
        let resp = app.get(&key, &format!("/api/v1/bd/jobs?{bad}")).await;
        assert_eq!(resp.status(), 422, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().len() > 5, "{bad}: {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_answer_ranges_conditions_and_head() {
    let app = TestApp::start("ranges").await;
    let key = app.res.key("acme").await;
    let job = create(&app, &key, &demo_job()).await;
    assert_eq!(
        app.wait(&key, &job).await.last().unwrap()["status"],
        "completed"
    );
    let path = format!("/api/v1/bd/jobs/{job}/assets/verified_contacts_csv");
    let full = app.get(&key, &path).await;
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.headers()["x-content-type-options"], "nosniff");
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    let len: u64 = full.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = full.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, len);
    assert!(len > 20);

    let ranged = |range: &str| {
        app.http
            .get(app.url(&path))
            .bearer_auth(&key)
            .header("range", range)
    };
    let part = ranged("bytes=0-9").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-9/{len}").as_str()
    );
    assert_eq!(part.headers()["content-length"], "10");
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(0..10));

    let tail = ranged("bytes=-5").send().await.unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), bytes.slice(bytes.len() - 5..));

    let from = ranged("bytes=7-").send().await.unwrap();
    assert_eq!(from.status(), 206);
    assert_eq!(from.bytes().await.unwrap(), bytes.slice(7..));

    let past = ranged(&format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    let body: Value = past.json().await.unwrap();
    assert!(body["detail"].is_string());

    let several = ranged("bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(several.status(), 200, "several ranges get the whole asset");
    let stale = ranged("bytes=0-1")
        .header("if-range", "\"old\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        stale.status(),
        200,
        "an If-Range of another version gets the whole asset"
    );

    let cached = app
        .http
        .get(app.url(&path))
        .bearer_auth(&key)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"], etag.as_str());
    assert!(cached.bytes().await.unwrap().is_empty());
    let changed = app
        .http
        .get(app.url(&path))
        .bearer_auth(&key)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);

    let head = app
        .http
        .head(app.url(&path))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], len.to_string().as_str());
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert!(head.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"verified_contacts_csv-"));
    assert!(head.bytes().await.unwrap().is_empty());

    // The JSON asset is always whole: a slice of it would not be JSON.
    let json_path = format!("/api/v1/bd/jobs/{job}/assets/verified_contacts");
    let whole = app
        .http
        .get(app.url(&json_path))
        .bearer_auth(&key)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["accept-ranges"], "none");
    assert!(whole.json::<Value>().await.unwrap().is_array());

    let other = app.res.key("globex").await;
    assert_eq!(app.get(&other, &path).await.status(), 404);
    app.stop().await;
}

/// Reads a whole event stream (the server closes it after the terminal event).
async fn read_events(app: &TestApp, key: &str, job: &str) -> Vec<(String, Value)> {
    let mut resp = app.get(key, &format!("/api/v1/bd/jobs/{job}/events")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut parser = watch::SseParser::default();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            for e in parser.feed(&chunk) {
                events.push((e.name, serde_json::from_str(&e.data).unwrap()));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stream ends after the terminal event");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_reports_progress_and_warnings_and_ends_with_the_outcome() {
    let app = TestApp::start("sse").await;
    let key = app.res.key("acme").await;
    let job = create(&app, &key, &demo_job()).await;
    let events = read_events(&app, &key, &job).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"progress"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "completed").count(), 1);
    let percents: Vec<u64> = events
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, j)| j["progress_percent"].as_u64().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    let (_, last) = events.last().unwrap();
    assert_eq!(last["job_id"], job.as_str());
    assert_eq!(last["progress_percent"], 100);
    // The demo job disqualifies a company: its warning arrives as a warning event, once.
    let warnings: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "warning")
        .map(|(_, d)| d)
        .collect();
    let expected: Vec<Value> = last["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| json!({"message": w}))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(warnings.into_iter().cloned().collect::<Vec<_>>(), expected);

    // A finished job's stream tells its outcome at once.
    let again = read_events(&app, &key, &job).await;
    assert_eq!(again.last().unwrap().0, "completed");

    // `bdjobs watch` follows the same stream to the same outcome.
    let outcome = watch::watch(&app.base, &key, &job, false).await.unwrap();
    assert_eq!(outcome, Outcome::Completed);

    let other = app.res.key("globex").await;
    assert_eq!(
        app.get(&other, &format!("/api/v1/bd/jobs/{job}/events"))
            .await
            .status(),
        404
    );
    assert!(watch::watch(&app.base, &other, &job, false).await.is_err());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_command_exits_with_the_jobs_outcome() {
    let app = TestApp::start("watchcli").await;
    let key = app.res.key("acme").await;
    let job = create(&app, &key, &small_job("ada@acme.example")).await;
    let out = Command::new(env!("CARGO_BIN_EXE_bdjobs"))
        .args(["watch", &job, "--api", &app.base])
        .env("BDJOBS_API_KEY", &key)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));
    let missing = Command::new(env!("CARGO_BIN_EXE_bdjobs"))
        .args([
            "watch",
            &uuid::Uuid::new_v4().to_string(),
            "--api",
            &app.base,
        ])
        .env("BDJOBS_API_KEY", &key)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("job not found"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job_for_a_repeated_request() {
    let app = TestApp::start("idem").await;
    let key = app.res.key("acme").await;
    let other = app.res.key("globex").await;
    let body = small_job("ada@acme.example");
    let post = |k: &str, idem: &str, body: &Value| {
        app.http
            .post(app.url("/api/v1/bd/jobs"))
            .bearer_auth(k)
            .header("idempotency-key", idem)
            .json(body)
            .send()
    };
    let first = post(&key, "order-1", &body).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = post(&key, "order-1", &body).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.headers()["location"],
        format!("/api/v1/bd/jobs/{}", first["job_id"].as_str().unwrap()).as_str()
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the same 202 body");

    let changed = post(&key, "order-1", &small_job("bob@acme.example"))
        .await
        .unwrap();
    assert_eq!(changed.status(), 409);
    let detail: Value = changed.json().await.unwrap();
    assert!(detail["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));

    let theirs: Value = post(&other, "order-1", &body)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(theirs["job_id"], first["job_id"], "keys are per tenant");

    // Racing requests with one new key still make one job.
    let racing = futures::future::join_all((0..6).map(|_| post(&key, "order-2", &body))).await;
    let ids: BTreeSet<String> = futures::future::join_all(racing.into_iter().map(|r| async {
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }))
    .await
    .into_iter()
    .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let listed = app.get_json(&key, "/api/v1/bd/jobs").await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2);

    let bad = app
        .http
        .post(app.url("/api/v1/bd/jobs"))
        .bearer_auth(&key)
        .header("idempotency-key", "x".repeat(256))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    app.stop().await;
}

async fn start_with_limits(tag: &str, set: impl FnOnce(&mut bdjobs::config::ApiLimits)) -> TestApp {
    let mut res = Resources::new(tag).await;
    set(&mut res.config.api);
    TestApp::start_with(res, demo_zone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_with_a_detail() {
    let app = start_with_limits("body", |l| l.max_body_bytes = 1024).await;
    let key = app.res.key("acme").await;
    let contacts: Vec<Value> = (0..100)
        .map(|i| json!({"email": format!("person{i}@acme.example")}))
        .collect();
    let big =
        json!({"requested_capabilities": ["email_verify"], "input_assets": {"contacts": contacts}});
    let resp = app.post_job(&key, &big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "request body too large (at most 1024 bytes)"
    );
    assert_eq!(
        app.post_job(&key, &small_job("a@acme.example"))
            .await
            .status(),
        202
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let app = start_with_limits("rate", |l| {
        l.rate_limit_per_sec = 0.01;
        l.rate_limit_burst = 3;
    })
    .await;
    let key = app.res.key("acme").await;
    let other = app.res.key("globex").await;
    for _ in 0..3 {
        assert_eq!(app.get(&key, "/api/v1/bd/jobs").await.status(), 200);
    }
    let limited = app.get(&key, "/api/v1/bd/jobs").await;
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = limited.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("rate limit"));
    assert_eq!(app.get(&other, "/api/v1/bd/jobs").await.status(), 200);
    assert_eq!(
        app.get(&key, "/healthz").await.status(),
        200,
        "health is not rate limited"
    );
    app.stop().await;
}

/// A POST whose body arrives only when `release` is sent: it holds a request slot meanwhile.
fn slow_post(
    app: &TestApp,
    key: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<reqwest::Response>,
) {
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let body = serde_json::to_vec(&small_job("slow@acme.example")).unwrap();
    let stream = futures::stream::once(async move {
        let _ = wait.await;
        Ok::<_, std::io::Error>(body)
    });
    let req = app
        .http
        .post(app.url("/api/v1/bd/jobs"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream));
    (
        release,
        tokio::spawn(async move { req.send().await.unwrap() }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_limit_get_503_with_retry_after() {
    let app = start_with_limits("busy", |l| l.max_concurrent_requests = 1).await;
    let key = app.res.key("acme").await;
    let (mut release, mut slow) = slow_post(&app, &key);
    // The slow request holds the only slot once the server has its headers.
    let mut refused = None;
    for _ in 0..200 {
        if slow.is_finished() {
            // It lost the race for the slot to one of our probes (and got 503 itself): again.
            assert_eq!(slow.await.unwrap().status(), 503);
            (release, slow) = slow_post(&app, &key);
        }
        let resp = app.get(&key, "/api/v1/bd/jobs").await;
        if resp.status() == 503 {
            refused = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a second request is refused while the first holds the slot");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("in flight"));
    assert_eq!(
        app.get(&key, "/healthz").await.status(),
        200,
        "health is not limited"
    );
    release.send(()).unwrap();
    assert_eq!(slow.await.unwrap().status(), 202);
    assert_eq!(app.get(&key, "/api/v1/bd/jobs").await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_503_and_a_slow_header_writer_is_disconnected() {
    let app = start_with_limits("slow", |l| {
        l.request_timeout_secs = 1;
        l.header_read_timeout_secs = 1;
    })
    .await;
    let key = app.res.key("acme").await;
    let (_release, slow) = slow_post(&app, &key);
    let resp = tokio::time::timeout(Duration::from_secs(30), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("too long"));

    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server gives up on the unfinished headers and closes the connection.
    let read = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_describe_the_running_system() {
    let app = TestApp::start("metrics").await;
    let key = app.res.key("acme").await;
    assert_eq!(app.get_json("", "/healthz").await, json!({"status": "ok"}));
    assert_eq!(
        app.get_json("", "/readyz").await,
        json!({"status": "ready"})
    );
    let job = create(&app, &key, &small_job("ada@acme.example")).await;
    app.wait(&key, &job).await;
    assert_eq!(
        app.get(&key, "/api/v1/bd/jobs/not-a-job").await.status(),
        404
    );
    assert_eq!(app.get(&key, "/no/such/path").await.status(), 404);

    let resp = app.get("", "/metrics").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let ns = &app.res.config.namespace;
    for needle in [
        "bdjobs_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/bd/jobs/{job_id}\",status=\"200\",le=\"+Inf\"}".to_owned(),
        "bdjobs_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/bd/jobs\",status=\"202\"} 1".to_owned(),
        "route=\"unmatched\",status=\"404\"".to_owned(),
        "bdjobs_jobs{status=\"completed\"} 1".to_owned(),
        "bdjobs_jobs{status=\"pending\"} 0".to_owned(),
        format!("bdjobs_queue_messages{{queue=\"{ns}.jobs\"}} 0"),
        format!("bdjobs_queue_messages{{queue=\"{ns}.dead\"}} 0"),
        "bdjobs_projector_lag_seconds ".to_owned(),
        "bdjobs_scrape_error{source=\"queues\"} 0".to_owned(),
    ] {
        assert!(text.contains(&needle), "missing {needle} in:\n{text}");
    }
    assert!(!text.contains(&job), "raw paths never become labels");
    assert!(!text.contains("not-a-job"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_at_its_maximum_age_and_watch_reconnects() {
    // The API alone: no worker runs, so the job stays pending.
    let mut res = Resources::new("sseage").await;
    res.config.api.event_stream_max_secs = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let api = {
        let (config, pool, token) = (res.config.clone(), res.pool.clone(), shutdown.clone());
        tokio::spawn(async move { bdjobs::app::run_api(&config, pool, listener, token).await })
    };
    let key = res.key("acme").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let created = common::create_job(&base, &key, &small_job("ada@acme.example")).await;
    let job = created["job_id"].as_str().unwrap();
    let mut resp = http
        .get(format!("{base}/api/v1/bd/jobs/{job}/events"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let mut parser = watch::SseParser::default();
    let mut names = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            names.extend(parser.feed(&chunk).into_iter().map(|e| e.name));
        }
    })
    .await
    .expect("the stream ends at its maximum age");
    assert_eq!(
        names,
        ["progress"],
        "no terminal event: the job is still pending"
    );
    // `watch` keeps reconnecting to such a stream; it is still waiting when we stop looking.
    let watching = tokio::time::timeout(
        Duration::from_secs(3),
        watch::watch(&base, &key, job, false),
    )
    .await;
    assert!(watching.is_err(), "watch outlives a stream that ends early");
    shutdown.cancel();
    api.await.unwrap().unwrap();
}
