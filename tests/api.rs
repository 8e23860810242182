//! The full path over HTTP against the real Postgres and RabbitMQ: submit → worker → events →
//! projector → read model → API, plus every row of the error contract and tenant isolation.

mod common;

use common::{demo_job, TestApp};
use serde_json::{json, Value};

const RESULT_KEYS: [&str; 10] = [
    "result_id",
    "job_id",
    "status",
    "progress_percent",
    "progress_message",
    "summary",
    "warnings",
    "result_assets",
    "created_at",
    "completed_at",
];

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_job_runs_end_to_end_and_reproduces_the_seed_numbers() {
    let app = TestApp::start("e2e").await;
    let key = app.res.key("acme").await;

    let resp = app.post_job(&key, &demo_job()).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = resp.json().await.unwrap();
    let job_id = created["job_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/bd/jobs/{job_id}"));
    assert_eq!(created["status"], "pending");
    assert_eq!(created["progress_percent"], 0);
    assert_eq!(created["preset"], "full_pipeline");
    assert_eq!(
        created["requested_capabilities"],
        json!([
            "qualification",
            "company_size",
            "contact_discovery",
            "email_lookup",
            "email_verify",
            "deliverable_finalize"
        ])
    );

    let polls = app.wait(&key, &job_id).await;
    let percents: Vec<u64> = polls
        .iter()
        .map(|p| p["progress_percent"].as_u64().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    let last = polls.last().unwrap();
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["progress_percent"], 100);
    assert_eq!(last["progress_message"], "Job complete.");
    assert!(last["error_message"].is_null());
    assert!(last["started_at"].is_string());
    assert!(last["completed_at"].is_string());

    let result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}/result"))
        .await;
    assert_eq!(
        keys(&result),
        RESULT_KEYS,
        "exactly the seed's fields, in its order"
    );
    assert_eq!(result["summary"]["delivered_contacts"], 18);
    assert_eq!(result["summary"]["verified_emails"], 14);
    assert_eq!(result["summary"]["companies_processed"], 2);
    assert_eq!(result["summary"]["companies_disqualified"], 1);
    assert!(result["result_id"].is_string());
    assert!(result["created_at"].as_str().unwrap().ends_with('Z'));
    let warnings: Vec<&str> = result["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.contains(&"quietharbor.test has no mail server; 1 contact(s) dropped"),
        "{warnings:?}"
    );

    let assets = result["result_assets"].as_array().unwrap();
    let json_asset = &assets[0];
    assert_eq!(
        keys(json_asset),
        [
            "asset_id",
            "label",
            "kind",
            "mime_type",
            "availability",
            "download_url"
        ]
    );
    assert_eq!(json_asset["asset_id"], "verified_contacts");
    assert_eq!(json_asset["availability"], "inline");
    assert_eq!(
        json_asset["download_url"],
        format!("/api/v1/bd/jobs/{job_id}/assets/verified_contacts")
    );

    let resp = app
        .get(&key, json_asset["download_url"].as_str().unwrap())
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment;"));
    let rows: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(rows.len(), 18);
    let verified = rows
        .iter()
        .filter(|r| r["email_status"] == "verified")
        .count();
    assert_eq!(verified, 14);
    for r in &rows {
        for field in [
            "first_name",
            "last_name",
            "full_name",
            "title",
            "company_name",
            "company_domain",
            "email",
            "email_status",
            "email_checks",
            "email_confidence",
            "linkedin_url",
            "source",
        ] {
            assert!(r.get(field).is_some(), "row lacks {field}: {r}");
        }
    }
    assert!(rows.iter().any(|r| r["email_pattern"] == "first.last"));
    assert!(rows.iter().any(|r| r["email_pattern"] == "flast"));

    let csv = app
        .get(
            &key,
            &format!("/api/v1/bd/jobs/{job_id}/assets/verified_contacts_csv"),
        )
        .await;
    assert_eq!(csv.headers()["content-type"], "text/csv");
    let text = csv.text().await.unwrap();
    assert_eq!(
        text.trim_end().split("\r\n").count(),
        19,
        "header plus 18 rows"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_supplied_emails_delivers_them_with_statuses() {
    let app = TestApp::start("verify").await;
    let key = app.res.key("acme").await;
    let body = json!({
        "preset": "verify_existing_emails",
        "input_assets": {"contacts": [
            {"full_name": "Ada Lovelace", "email": "ada@lumen.example", "company_domain": "lumen.example"},
            {"full_name": "Info Desk", "email": "info@lumen.example"},
            {"full_name": "Nobody", "email": "nobody@quietharbor.test"},
            {"full_name": "Broken", "email": "broken@@lumen.example"}
        ]}
    });
    let created: Value = app.post_job(&key, &body).await.json().await.unwrap();
    let job_id = created["job_id"].as_str().unwrap();
    let last = app.wait(&key, job_id).await.pop().unwrap();
    assert_eq!(last["status"], "completed", "{last}");
    let result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}/result"))
        .await;
    assert_eq!(result["summary"]["delivered_contacts"], 2);
    assert_eq!(result["summary"]["verified_emails"], 1);
    assert_eq!(result["summary"]["risky_emails"], 1);
    assert_eq!(result["summary"]["invalid_emails"], 2);
    app.stop().await;
}

async fn assert_error(resp: reqwest::Response, status: u16, detail_has: &str) {
    assert_eq!(resp.status().as_u16(), status);
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.expect("error bodies are JSON");
    let detail = body["detail"].as_str().unwrap();
    match body.get("problems") {
        // Invalid input also lists its problems one by one; `detail` joins them.
        Some(problems) => {
            assert_eq!(status, 422, "{body}");
            assert_eq!(keys(&body), ["detail", "problems"], "{body}");
            let joined: Vec<&str> = problems
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(joined.join("; "), detail);
        }
        None => assert_eq!(keys(&body), ["detail"], "{body}"),
    }
    assert!(
        detail.contains(detail_has),
        "{detail:?} lacks {detail_has:?}"
    );
    if status == 401 {
        assert_eq!(www.as_deref(), Some("Bearer"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_error_contract_holds() {
    let app = TestApp::start("errors").await;
    let key = app.res.key("acme").await;
    let jobs = app.url("/api/v1/bd/jobs");

    // 401: missing, malformed, wrong scheme, unknown.
    let resp = app.http.post(&jobs).json(&demo_job()).send().await.unwrap();
    assert_error(resp, 401, "missing").await;
    let resp = app
        .http
        .get(app.url("/api/v1/bd/jobs/x"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "missing").await;
    for header in [
        "Bearer",
        "dc_nope",
        "Basic dXNlcjpwYXNz",
        "Bearer dc_0000",
        "Bearer  ",
    ] {
        let resp = app
            .http
            .post(&jobs)
            .header("authorization", header)
            .json(&demo_job())
            .send()
            .await
            .unwrap();
        assert_error(resp, 401, "").await;
    }

    // 400: not JSON.
    let resp = app
        .http
        .post(&jobs)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"preset\": ")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "").await;

    // 422: schema and semantic validation.
    let cases = [
        (
            json!({"preset": "full_pipeline", "requested_capabilities": ["email_verify"], "input_assets": {"contacts": [{"email": "a@b.example"}]}}),
            "mutually exclusive",
        ),
        (
            json!({"preset": "everything", "input_assets": {"contacts": [{"email": "a@b.example"}]}}),
            "unknown preset",
        ),
        (
            json!({"requested_capabilities": ["teleport"], "input_assets": {"contacts": [{"email": "a@b.example"}]}}),
            "unknown capability",
        ),
        (
            json!({"preset": "verify_existing_emails", "input_assets": {}}),
            "at least one record",
        ),
        (
            json!({"preset": "verify_existing_emails"}),
            "at least one record",
        ),
        (
            json!({"input_assets": {"contacts": [{"email": "a@b.example"}]}}),
            "required",
        ),
        (
            json!({"preset": "full_pipeline", "input_assets": {"companies": [{"name": "x"}]}}),
            "companies[0].domain",
        ),
        (json!({"preset": 7, "input_assets": {}}), "preset"),
        (
            json!({"preset": "full_pipeline", "input_assets": {"companies": [{"domain": "a.example"}]}, "icp_config": {"icp_gate": "sometimes"}}),
            "icp_gate",
        ),
    ];
    for (body, detail) in cases {
        let resp = app.post_job(&key, &body).await;
        assert_error(resp, 422, detail).await;
    }
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"domain": format!("c{i}.example")}))
        .collect();
    let resp = app
        .post_job(
            &key,
            &json!({"preset": "full_pipeline", "input_assets": {"companies": too_many}}),
        )
        .await;
    assert_error(resp, 422, "at most 10000").await;

    // 404: no such job, not a UUID, no such asset, no such route.
    let missing = uuid::Uuid::new_v4();
    assert_error(
        app.get(&key, &format!("/api/v1/bd/jobs/{missing}")).await,
        404,
        "not found",
    )
    .await;
    assert_error(
        app.get(&key, &format!("/api/v1/bd/jobs/{missing}/result"))
            .await,
        404,
        "not found",
    )
    .await;
    assert_error(
        app.get(&key, "/api/v1/bd/jobs/not-a-uuid").await,
        404,
        "not found",
    )
    .await;
    assert_error(app.get(&key, "/api/v1/nothing").await, 404, "").await;
    let created: Value = app.post_job(&key, &demo_job()).await.json().await.unwrap();
    let job_id = created["job_id"].as_str().unwrap();
    assert_error(
        app.get(&key, &format!("/api/v1/bd/jobs/{job_id}/assets/nope"))
            .await,
        404,
        "not found",
    )
    .await;
    assert_error(
        app.get(
            &key,
            &format!("/api/v1/bd/jobs/{job_id}/assets/..%2F..%2Fetc"),
        )
        .await,
        404,
        "not found",
    )
    .await;
    app.wait(&key, job_id).await;

    // The API survived all of it.
    let resp = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_job_is_indistinguishable_from_a_missing_one() {
    let app = TestApp::start("tenants").await;
    let (a, b) = (app.res.key("tenant-a").await, app.res.key("tenant-b").await);
    let created: Value = app.post_job(&a, &demo_job()).await.json().await.unwrap();
    let job_id = created["job_id"].as_str().unwrap();
    app.wait(&a, job_id).await;
    let missing = uuid::Uuid::new_v4();
    for suffix in ["", "/result", "/assets/verified_contacts"] {
        let theirs = app
            .get(&b, &format!("/api/v1/bd/jobs/{job_id}{suffix}"))
            .await;
        let none = app
            .get(&b, &format!("/api/v1/bd/jobs/{missing}{suffix}"))
            .await;
        assert_eq!(theirs.status(), 404);
        assert_eq!(none.status(), 404);
        let (t, n): (Value, Value) = (theirs.json().await.unwrap(), none.json().await.unwrap());
        assert_eq!(t, n, "the two 404s must not differ");
        // The owner still sees it.
        assert_eq!(
            app.get(&a, &format!("/api/v1/bd/jobs/{job_id}{suffix}"))
                .await
                .status(),
            200
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_openapi_document_is_served_without_a_key_and_every_operation_in_it_is_routed(
) {
    let app = TestApp::start("openapi").await;
    let resp = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(
        doc,
        serde_json::from_slice::<Value>(bdjobs::api::openapi::document()).unwrap()
    );
    // Every documented operation is served: without a key, a BD one answers 401 (the key is
    // checked first) and a public one 200; none meets the fallback's 404 or a 405.
    let job = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let url = app.url(
                &path
                    .replace("{job_id}", job)
                    .replace("{asset_id}", "verified_contacts"),
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = app.http.request(method.clone(), &url).send().await.unwrap();
            let public = op["security"] == serde_json::json!([]);
            let expected = if public { 200 } else { 401 };
            assert_eq!(resp.status(), expected, "{method} {path}");
        }
    }
    app.stop().await;
}

/// A finished job's answers come from the API's memory for `BDJOBS_VIEW_CACHE_MS`: a change
/// made behind the API's back (here, by hand in the read model) shows only after that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_jobs_answers_are_served_from_memory_for_the_view_cache_time() {
    let mut res = common::Resources::new("vcache").await;
    res.config.api.view_cache_ms = 1_500;
    let app = TestApp::start_with(res, common::demo_zone()).await;
    let key = app.res.key("acme").await;
    let created: Value = app.post_job(&key, &demo_job()).await.json().await.unwrap();
    let job_id = created["job_id"].as_str().unwrap().to_owned();
    let last = app.wait(&key, &job_id).await.pop().unwrap();
    assert_eq!(last["status"], "completed");
    let result_path = format!("/api/v1/bd/jobs/{job_id}/result");
    let result = app.get_json(&key, &result_path).await;

    let changed_at = std::time::Instant::now();
    app.res
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE jobs SET view = jsonb_set(view, '{progress_message}', '\"changed\"') \
             WHERE job_id = $1::text::uuid",
            &[&job_id],
        )
        .await
        .unwrap();
    let job_path = format!("/api/v1/bd/jobs/{job_id}");
    let (job_now, result_now) = (
        app.get_json(&key, &job_path).await,
        app.get_json(&key, &result_path).await,
    );
    if changed_at.elapsed() < std::time::Duration::from_millis(1_000) {
        assert_eq!(result_now, result, "served from memory");
        assert_eq!(job_now["progress_message"], "Job complete.");
    }
    // Another tenant's key never gets the cached answer.
    let stranger = app.res.key("globex").await;
    assert_eq!(app.get(&stranger, &result_path).await.status(), 404);

    tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
    let after = app.get_json(&key, &result_path).await;
    assert_eq!(
        after["progress_message"], "changed",
        "read again once the time is up"
    );
    assert_eq!(
        app.get_json(&key, &job_path).await["progress_message"],
        "changed"
    );
}

fn upload_form(job: &Value, part: &str, file_name: &str, data: &str) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            "job",
            reqwest::multipart::Part::text(job.to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            part.to_owned(),
            reqwest::multipart::Part::text(data.to_owned()).file_name(file_name.to_owned()),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_upload_runs_like_the_same_records_sent_as_json_and_bad_lines_are_named() {
    let app = TestApp::start("upload").await;
    let key = app.res.key("acme").await;
    let jobs = app.url("/api/v1/bd/jobs");
    let post = |form: reqwest::multipart::Form, query: &'static str| {
        app.http
            .post(format!("{jobs}{query}"))
            .bearer_auth(&key)
            .multipart(form)
            .send()
    };
    let preset = json!({"preset": "verify_existing_emails"});
    let csv = "first_name,last_name,email,company_domain,notes\n\
               Ada,Lovelace,ada@lumen.example,lumen.example,met at a fair\n\
               Info,Desk,info@lumen.example,,\n";

    // Problems name the file's lines and columns; a dry run and a real request agree.
    let bad =
        "email,company_domain\nada@lumen.example,lumen.example\n,\nbob@x.example,not a domain\n";
    for query in ["?dry_run=true", ""] {
        let resp = post(upload_form(&preset, "contacts", "people.csv", bad), query)
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{query}");
        let body: Value = resp.json().await.unwrap();
        let problems = body["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 2, "{body}");
        assert!(problems[0]
            .as_str()
            .unwrap()
            .starts_with("people.csv line 3: needs an email or a name"));
        assert!(problems[1]
            .as_str()
            .unwrap()
            .starts_with("people.csv line 4, column company_domain: "));
    }
    let listed = app.get_json(&key, "/api/v1/bd/jobs").await;
    assert_eq!(listed["jobs"], json!([]), "nothing was created");

    // A dry run plans and warns, and creates nothing.
    let resp = post(
        upload_form(&preset, "contacts", "people.csv", csv),
        "?dry_run=true",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let check: Value = resp.json().await.unwrap();
    assert_eq!(check["contacts"], 2);
    assert_eq!(
        check["requested_capabilities"],
        json!(["email_verify", "deliverable_finalize"])
    );
    assert!(
        check["warnings"][0]
            .as_str()
            .unwrap()
            .contains("people.csv: notes"),
        "{check}"
    );
    assert_eq!(
        app.get_json(&key, "/api/v1/bd/jobs").await["jobs"],
        json!([])
    );

    // The upload and the same records as JSON deliver the same CSV.
    let resp = post(upload_form(&preset, "contacts", "people.csv", csv), "")
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let uploaded: Value = resp.json().await.unwrap();
    let as_json = app
        .post_job(
            &key,
            &json!({"preset": "verify_existing_emails", "input_assets": {"contacts": [
                {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@lumen.example", "company_domain": "lumen.example"},
                {"first_name": "Info", "last_name": "Desk", "email": "info@lumen.example"}
            ]}}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let mut csvs = Vec::new();
    for created in [&uploaded, &as_json] {
        let id = created["job_id"].as_str().unwrap();
        assert_eq!(
            app.wait(&key, id).await.pop().unwrap()["status"],
            "completed"
        );
        csvs.push(
            app.get(
                &key,
                &format!("/api/v1/bd/jobs/{id}/assets/verified_contacts_csv"),
            )
            .await
            .text()
            .await
            .unwrap(),
        );
    }
    assert_eq!(csvs[0], csvs[1]);
    assert!(csvs[0].contains("ada@lumen.example"));

    // JSON Lines companies, and the JSON array the OpenAPI document shows.
    let jsonl = "{\"domain\": \"lumen.example\", \"employee_count\": 40}\n\n{\"domain\": \"\"}\n";
    let resp = post(
        upload_form(
            &json!({"preset": "full_pipeline"}),
            "companies",
            "c.jsonl",
            jsonl,
        ),
        "?dry_run=true",
    )
    .await
    .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["problems"],
        json!(["c.jsonl line 3, column domain: required"])
    );
    let array = "[{\"email\": \"ada@lumen.example\"}, {\"email\": 7}]";
    let resp = post(upload_form(&preset, "contacts", "", array), "?dry_run=true")
        .await
        .unwrap();
    assert_error(resp, 422, "not a JSON array of contacts").await;

    // The job part carries no records, and a file part is needed.
    let with_records =
        json!({"preset": "verify_existing_emails", "input_assets": {"contacts": []}});
    let resp = post(upload_form(&with_records, "contacts", "a.csv", csv), "")
        .await
        .unwrap();
    assert_error(resp, 422, "input_assets is not allowed here").await;
    let resp = post(upload_form(&preset, "contact", "a.csv", csv), "")
        .await
        .unwrap();
    assert_error(resp, 422, "unknown part \"contact\"").await;
    let two_files = upload_form(&preset, "contacts", "a.csv", csv).part(
        "companies",
        reqwest::multipart::Part::text("domain\nlumen.example\n").file_name("b.csv"),
    );
    assert_error(post(two_files, "").await.unwrap(), 422, "one file part").await;
    let only_job = reqwest::multipart::Form::new().text("job", preset.to_string());
    assert_error(
        post(only_job, "").await.unwrap(),
        422,
        "contacts or companies file part",
    )
    .await;
    let resp = post(upload_form(&preset, "contacts", "a.csv", "email\n"), "")
        .await
        .unwrap();
    assert_error(resp, 422, "a.csv: the file holds no records").await;
    let resp = post(
        upload_form(&preset, "contacts", "a.csv", csv),
        "?dry_run=maybe",
    )
    .await
    .unwrap();
    assert_error(resp, 422, "dry_run").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_found_by_id_or_part_of_it_by_chat_id_and_by_preset() {
    let res = common::Resources::new("search").await;
    let (base, shutdown) = common::api_only(&res).await;
    let key = res.key("acme").await;
    let chat = uuid::Uuid::new_v4();
    let contact = json!({"contacts": [{"email": "ada@lumen.example"}]});
    let a = common::create_job(
        &base,
        &key,
        &json!({"preset": "verify_existing_emails", "input_assets": contact, "chat_id": chat}),
    )
    .await;
    let b = common::create_job(
        &base,
        &key,
        &json!({"requested_capabilities": ["email_verify"], "input_assets": contact}),
    )
    .await;
    // Another tenant's job of the same preset is never found.
    let other = res.key("globex").await;
    common::create_job(
        &base,
        &other,
        &json!({"preset": "verify_existing_emails", "input_assets": contact}),
    )
    .await;
    let ids = |q: &str| {
        let (base, key) = (base.clone(), key.clone());
        let q = q.to_owned();
        async move {
            let body = common::get_json(&base, &key, &format!("/api/v1/bd/jobs?q={q}")).await;
            body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["job_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let (a_id, b_id) = (a["job_id"].as_str().unwrap(), b["job_id"].as_str().unwrap());
    assert_eq!(ids(a_id).await, [a_id]);
    // v7 ids of jobs made together share their start: their ends tell them apart.
    assert_eq!(ids(&a_id[24..].to_uppercase()).await, [a_id]);
    assert_eq!(ids(&chat.to_string()).await, [a_id]);
    assert_eq!(ids("verify_existing_emails").await, [a_id]);
    assert_eq!(ids("full_pipeline").await, Vec::<String>::new());
    assert_eq!(ids(&b_id[20..]).await, [b_id]);
    let http = reqwest::Client::new();
    for bad in ["abc", "zzzz", "full", "a%20b", &"a".repeat(37)] {
        let resp = http
            .get(format!("{base}/api/v1/bd/jobs?q={bad}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_error(resp, 422, "q: expected").await;
    }
    shutdown.cancel();
}
