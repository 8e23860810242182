//! The binary as an operator meets it: settings from flags, environment and bdjobs.toml with
//! their precedence, `bdjobs config` (sources shown, secrets masked), the two log formats,
//! `bdjobs openapi`, and `bdjobs submit` against every role running in the test.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::PG;

/// `bdjobs ARGS` in `dir`, with exactly the environment `env` (nothing inherited).
fn bdjobs(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdjobs"))
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("cannot run the bdjobs binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The line of `bdjobs config` output for `key`: (value as TOML, source comment).
fn line_of<'a>(text: &'a str, key: &str) -> (&'a str, &'a str) {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} ")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{text}"));
    let (value, source) = line.rsplit_once("  # ").unwrap();
    (value.trim_end(), source)
}

#[test]
fn bdjobs_openapi_prints_the_document_the_api_serves_without_any_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = bdjobs(dir.path(), &[], &["openapi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let served: serde_json::Value =
        serde_json::from_slice(bdjobs::api::openapi::document()).unwrap();
    assert_eq!(printed, served);
    assert_eq!(printed["openapi"], "3.1.0");
}

#[test]
fn bdjobs_config_shows_every_setting_with_its_source_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bdjobs.toml"),
        "namespace = \"from-file\"\n\
         worker_concurrency = 7\n\
         projector_prefetch = 5\n\
         aws_access_key_id = \"AKIDFILE\"\n",
    )
    .unwrap();
    let out = bdjobs(
        dir.path(),
        &[
            (
                "DATABASE_URL",
                "postgres://app:pg-pass-123@db.internal:5432/bdjobs",
            ),
            ("AMQP_URL", "amqp://bdjobs:mq-pass-456@rabbit:5672/%2f"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-789"),
            ("BDJOBS_WORKER_CONCURRENCY", "3"),
            ("BDJOBS_PROJECTOR_PREFETCH", "9"),
        ],
        &["config", "--projector-prefetch", "11"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for secret in ["pg-pass-123", "mq-pass-456", "aws-secret-789"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert_eq!(
        line_of(&text, "database_url"),
        (
            "database_url = \"postgres://app:********@db.internal:5432/bdjobs\"",
            "env DATABASE_URL"
        )
    );
    assert_eq!(
        line_of(&text, "amqp_url"),
        (
            "amqp_url = \"amqp://bdjobs:********@rabbit:5672/%2f\"",
            "env AMQP_URL"
        )
    );
    assert_eq!(
        line_of(&text, "aws_secret_access_key"),
        (
            "aws_secret_access_key = \"********\"",
            "env AWS_SECRET_ACCESS_KEY"
        )
    );
    // flag > env > file > default, one setting at each level.
    assert_eq!(
        line_of(&text, "projector_prefetch"),
        ("projector_prefetch = 11", "flag")
    );
    assert_eq!(
        line_of(&text, "worker_concurrency"),
        ("worker_concurrency = 3", "env BDJOBS_WORKER_CONCURRENCY")
    );
    assert_eq!(
        line_of(&text, "namespace"),
        ("namespace = \"from-file\"", "file bdjobs.toml")
    );
    assert_eq!(
        line_of(&text, "aws_access_key_id"),
        ("aws_access_key_id = \"AKIDFILE\"", "file bdjobs.toml")
    );
    assert_eq!(
        line_of(&text, "dns_timeout_ms"),
        ("dns_timeout_ms = 2000", "default")
    );
    assert_eq!(
        line_of(&text, "dns_nameserver"),
        ("# dns_nameserver is not set", "default")
    );
    let assets = format!("fs://{}", dir.path().join("var/assets").display());
    assert_eq!(
        line_of(&text, "assets"),
        (format!("assets = \"{assets}\"").as_str(), "default")
    );
    assert!(text.contains("# Config file: bdjobs.toml"), "{text}");
}

#[test]
fn the_config_file_can_be_named_by_flag_or_environment_and_must_then_exist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), "namespace = \"aaa\"\n").unwrap();
    std::fs::write(dir.path().join("b.toml"), "namespace = \"bbb\"\n").unwrap();

    let by_env = bdjobs(dir.path(), &[("BDJOBS_CONFIG", "b.toml")], &["config"]);
    assert!(by_env.status.success(), "{}", stderr(&by_env));
    assert_eq!(
        line_of(&stdout(&by_env), "namespace"),
        ("namespace = \"bbb\"", "file b.toml")
    );

    // The flag beats the variable.
    let by_flag = bdjobs(
        dir.path(),
        &[("BDJOBS_CONFIG", "b.toml")],
        &["config", "--config", "a.toml"],
    );
    assert!(by_flag.status.success(), "{}", stderr(&by_flag));
    assert_eq!(
        line_of(&stdout(&by_flag), "namespace"),
        ("namespace = \"aaa\"", "file a.toml")
    );

    let missing = bdjobs(dir.path(), &[], &["--config", "nope.toml", "config"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("cannot read the config file nope.toml"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn an_unknown_key_in_the_config_file_stops_the_binary_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bdjobs.toml"),
        "namespace = \"x\"\nworkers = 3\n",
    )
    .unwrap();
    let out = bdjobs(dir.path(), &[], &["config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unknown key `workers`"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn the_example_config_file_documents_every_setting_and_is_accepted() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("bdjobs.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = bdjobs(dir.path(), &[], &["config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Every key `bdjobs config` knows appears in the example (commented out or not).
    for line in stdout(&out).lines().filter(|l| !l.starts_with("# ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            text.contains(&format!("{key} = ")),
            "bdjobs.example.toml does not document {key}"
        );
    }
    for line in stdout(&out).lines().filter_map(|l| l.strip_prefix("# ")) {
        if let Some(key) = line
            .strip_suffix(" is not set")
            .map(|l| l.split(' ').next().unwrap())
        {
            assert!(
                text.contains(&format!("{key} = ")),
                "bdjobs.example.toml does not document {key}"
            );
        }
    }
    // Uncommented, it is a valid configuration.
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| r.contains(" = "))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("bdjobs.toml"), uncommented).unwrap();
    let out = bdjobs(dir.path(), &[], &["config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("# file bdjobs.toml"));
}

/// Runs `bdjobs migrate` on a fresh database in the given log format; returns stderr.
fn migrate_logs(format: &str) -> String {
    let url = format!(
        "{PG}/bdjobs_t_logs_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let dir = tempfile::tempdir().unwrap();
    let out = bdjobs(
        dir.path(),
        &[("DATABASE_URL", &url), ("BDJOBS_LOG_FORMAT", format)],
        &["migrate"],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bdjobs::adapters::db::drop_database(&url))
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn logs_are_one_json_object_per_line_with_bdjobs_log_format_json() {
    let logs = migrate_logs("json");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{logs}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["fields"]["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"created the database"), "{messages:?}");
    assert!(messages.contains(&"database is up to date"), "{messages:?}");
    assert!(lines
        .iter()
        .any(|l| l["fields"]["migration"] == "0001_init"));
}

#[test]
fn logs_are_human_readable_text_by_default() {
    let logs = migrate_logs("text");
    assert!(logs.lines().count() >= 2, "{logs}");
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "{line}"
        );
        assert!(line.contains(" INFO "), "{line}");
    }
    assert!(logs.contains("database is up to date"), "{logs}");
}

/// A database of its own for one CLI test, dropped at the end.
struct Db(String);

impl Db {
    fn new(tag: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Db(format!("{PG}/bdjobs_t_{tag}_{}", &id[..12]))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let url = self.0.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(bdjobs::adapters::db::drop_database(&url))
        })
        .join()
        .unwrap()
        .unwrap();
    }
}

#[test]
fn keys_create_prints_the_key_once_as_the_last_line_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::new("keys");
    let env = [("DATABASE_URL", db.0.as_str())];
    assert!(bdjobs(dir.path(), &env, &["migrate"]).status.success());
    let out = bdjobs(dir.path(), &env, &["keys", "create", "--tenant", "acme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let key = text.lines().last().unwrap();
    assert!(key.starts_with("dc_") && key.len() >= 3 + 32, "{key}");
    assert!(
        !stderr(&out).contains(key),
        "the key is printed once, on stdout"
    );
    let bad = bdjobs(
        dir.path(),
        &env,
        &["keys", "create", "--tenant", "Not Valid"],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("tenant"), "{}", stderr(&bad));
    // The database holds a hash, never the key.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored: Vec<u8> = rt.block_on(async {
        let pool = bdjobs::adapters::db::pool(&db.0, 1).unwrap();
        let client = pool.get().await.unwrap();
        let row = client
            .query_one("SELECT key_hash FROM api_keys", &[])
            .await
            .unwrap();
        row.get(0)
    });
    assert_eq!(stored, bdjobs::adapters::db::keys::hash_key(key));
}

#[test]
fn directory_import_reports_bad_lines_and_importing_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::new("import");
    let env = [("DATABASE_URL", db.0.as_str())];
    assert!(bdjobs(dir.path(), &env, &["migrate"]).status.success());
    let file = dir.path().join("people.csv");
    std::fs::write(
        &file,
        "type,domain,name,company_domain,first_name,last_name,email,seniority\n\
         company,acme.example,Acme,,,,,\n\
         person,,,acme.example,Ada,Lovelace,ada@acme.example,vp\n\
         person,,,acme.example,NoLast,,x@acme.example,\n\
         person,,,acme.example,Bad,Mail,not-an-email,\n\
         robot,,,,,,,\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let first = bdjobs(dir.path(), &env, &["directory", "import", path]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("imported 1 companies and 1 people; skipped 3"),
        "{}",
        stdout(&first)
    );
    let err = stderr(&first);
    for line in [":4: skipped", ":5: skipped", ":6: skipped"] {
        assert!(err.contains(line), "{line} missing from:\n{err}");
    }
    let again = bdjobs(dir.path(), &env, &["directory", "import", path]);
    assert!(stdout(&again).contains("imported 1 companies and 1 people"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (companies, people) = rt.block_on(async {
        let pool = bdjobs::adapters::db::pool(&db.0, 1).unwrap();
        bdjobs::adapters::db::directory::counts(&pool)
            .await
            .unwrap()
    });
    assert_eq!((companies, people), (1, 1), "upserts, not duplicates");

    let missing = bdjobs(dir.path(), &env, &["directory", "import", "nope.jsonl"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nope.jsonl"));
}

#[test]
fn every_command_explains_itself_with_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["demo", "--help"],
        vec!["all", "--help"],
        vec!["api", "--help"],
        vec!["worker", "--help"],
        vec!["projector", "--help"],
        vec!["migrate", "--help"],
        vec!["keys", "create", "--help"],
        vec!["directory", "import", "--help"],
        vec!["dlq", "redrive", "--help"],
        vec!["replay", "--help"],
        vec!["events", "export", "--help"],
    ] {
        let out = bdjobs(dir.path(), &[], &args);
        assert!(out.status.success(), "{args:?}");
        let text = stdout(&out);
        assert!(
            text.contains("Usage:") && text.lines().count() > 3,
            "{args:?}:\n{text}"
        );
    }
}

/// `bdjobs submit` against every role running in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdjobs_submit_posts_a_csv_follows_the_job_and_saves_its_csv() {
    // A domain whose nameserver never answers keeps the second job running until cancelled.
    let zone = common::demo_zone().slow("slow-a.test").slow("slow-b.test");
    let app = common::TestApp::start_with(common::Resources::new("submit").await, zone).await;
    let key = app.res.key("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let contacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/contacts.csv");
    let env = [("BDJOBS_API_KEY", key.as_str()), ("RUST_LOG", "warn")];
    let run = |args: &[&str]| {
        let mut all = vec!["submit", "--api", app.base.as_str()];
        all.extend_from_slice(args);
        let args: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        let dir = dir.path().to_owned();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bdjobs(&dir, &env, &args)
        })
    };

    // --out waits for the end and saves the CSV deliverable, the API's asset byte for byte.
    let out_file = dir.path().join("verified.csv");
    let out = run(&[
        contacts.to_str().unwrap(),
        "--preset",
        "verify_existing_emails",
        "--out",
        out_file.to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = stdout(&out);
    let job_id = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(line.contains("completed; wrote"), "{line}");
    let asset = app
        .get(
            &key,
            &format!("/api/v1/bd/jobs/{job_id}/assets/verified_contacts_csv"),
        )
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out_file).unwrap(), asset.to_vec());

    // A file with problems: each printed with its line, nothing submitted, exit 1.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "email,company_domain\n,\nbob@x.example,not a domain\n",
    )
    .unwrap();
    let out = run(&[bad.to_str().unwrap(), "--preset", "verify_existing_emails"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("422"), "{err}");
    assert!(
        err.contains("\n  bad.csv line 2: needs an email or a name"),
        "{err}"
    );
    assert!(
        err.contains("\n  bad.csv line 3, column company_domain"),
        "{err}"
    );
    let listed = app.get_json(&key, "/api/v1/bd/jobs").await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);

    // Without --wait: the id, at once. With --wait, a job cancelled meanwhile exits 2.
    let slow = dir.path().join("slow.jsonl");
    std::fs::write(
        &slow,
        "{\"full_name\": \"A\", \"email\": \"a@slow-a.test\"}\n{\"full_name\": \"B\", \"email\": \"b@slow-b.test\"}\n",
    )
    .unwrap();
    let waiting = run(&[
        slow.to_str().unwrap(),
        "--capabilities",
        "email_verify,linkedin_enrich",
        "--wait",
    ]);
    let started = std::time::Instant::now();
    let slow_id = loop {
        let running = app.get_json(&key, "/api/v1/bd/jobs?status=running").await;
        if let Some(id) = running["jobs"][0]["job_id"].as_str() {
            break id.to_owned();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/bd/jobs/{slow_id}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let out = waiting.await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("job {slow_id} was cancelled")));

    let out = run(&[
        contacts.to_str().unwrap(),
        "--preset",
        "verify_existing_emails",
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    app.stop().await;
}
