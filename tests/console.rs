//! The web console in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver, started here on a free loopback port, through the fantoccini client) against
//! every role running in this process. One browser walks through what a person does: sign in,
//! check and upload a CSV, follow the job to its end, download the CSV (compared byte for byte
//! with the API's asset), search the list, cancel a running job, open another tenant's job,
//! and load hostile names, which must stay text. The browser's console must hold no error but
//! the network errors the scenarios cause on purpose (the wrong key's 401, the bad file's 422,
//! the other tenant's 404). A screenshot of each page is kept
//! under `target/console-screenshots/`.
//!
//! Needs `chromium` and `chromedriver`: when they are missing the test installs Debian's
//! packages itself (as root, with apt-get; `.ci/run` does it beforehand); `CHROMIUM` and
//! `CHROMEDRIVER` override where they are.

mod common;

use common::{Resources, TestApp};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const XSS_IMG: &str = "<img src=x onerror=alert(1)>";
const XSS_SCRIPT: &str = "<script>document.title='x'</script>";

fn find_program(var: &str, names: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let search = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = search() {
        return found;
    }
    // As tests/s3.rs builds its S3 server, this test installs its browser on a fresh machine,
    // so that `cargo test` alone works there: Debian's packages, when we may install them.
    if install_browser() {
        if let Some(found) = search() {
            return found;
        }
    }
    panic!(
        "{} not found: install Chromium and its driver (apt-get install -y chromium chromium-driver; \
         .ci/run does) or set {var}",
        names[0]
    );
}

/// `apt-get install chromium chromium-driver`, once per test process, when running as root on a
/// machine with apt-get; whether it succeeded.
fn install_browser() -> bool {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root || !Path::new("/usr/bin/apt-get").exists() {
            return false;
        }
        eprintln!("installing chromium and chromium-driver (apt-get), once per machine");
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "chromium", "chromium-driver"])
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver and the browser it starts; both end with it.
struct Browser {
    driver: Child,
    port: u16,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn start_browser(downloads: &Path) -> Browser {
    let chromium = find_program(
        "CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]);
    let port = free_port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    while http
        .get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("cannot start a Chromium session");
    Browser {
        driver,
        port,
        client,
        _profile: profile,
    }
}

impl Browser {
    /// The browser console's entries since the last call (chromedriver's log endpoint).
    async fn console_log(&self) -> Vec<Value> {
        let session = self.client.session_id().await.unwrap().unwrap();
        let resp: Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!(
                "http://127.0.0.1:{}/session/{session}/se/log",
                self.port
            ))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["value"].as_array().cloned().unwrap_or_default()
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns true.
    async fn until(&self, what: &str, script: &str) {
        let started = Instant::now();
        loop {
            if self.js(script).await == json!(true) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "waited 30 s for {what}; page text: {}",
                self.js("return document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, id: &str) -> String {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn screenshot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn goto(&self, base: &str, hash: &str) {
        self.client.goto(&format!("{base}/{hash}")).await.unwrap();
    }

    async fn upload(&self, file: &Path) {
        self.client
            .find(Locator::Id("file"))
            .await
            .unwrap()
            .send_keys(&file.display().to_string())
            .await
            .unwrap();
    }
}

async fn job_status_is(b: &Browser, status: &str) {
    b.until(
        &format!("the job page to show {status}"),
        &format!(
            "return document.getElementById('job-status').textContent === '{status}' \
             && !document.getElementById('view-job').hidden"
        ),
    )
    .await;
}

/// The one downloaded file of `dir`, once complete.
async fn downloaded(dir: &Path) -> (String, Vec<u8>) {
    let started = Instant::now();
    loop {
        let done: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| !p.to_string_lossy().ends_with(".crdownload"))
            .collect();
        if let [file] = done.as_slice() {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            return (name, std::fs::read(file).unwrap());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no download in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_a_job_from_the_web_console_and_hostile_names_stay_text() {
    // Three domains whose nameserver never answers keep one job running long enough to cancel.
    let zone = common::demo_zone()
        .slow("slow-a.test")
        .slow("slow-b.test")
        .slow("slow-c.test");
    let app = TestApp::start_with(Resources::new("console").await, zone).await;
    let key = app.res.key("acme").await;
    let other = app.res.key("globex").await;
    let files = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let b = start_browser(downloads.path()).await;
    let base = app.base.clone();

    // The page's own headers.
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "default-src 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");

    // Sign in: a wrong key is refused on the page, the right one opens the jobs list.
    b.goto(&base, "").await;
    b.until(
        "the sign-in form",
        "return !document.getElementById('view-signin').hidden",
    )
    .await;
    b.screenshot("1-sign-in").await;
    let key_input = b.client.find(Locator::Id("key")).await.unwrap();
    key_input.send_keys("dc_not_a_key").await.unwrap();
    b.click("#signin").await;
    b.until(
        "the refusal",
        "return document.getElementById('signin-error').textContent.includes('not valid')",
    )
    .await;
    assert!(b.js("return sessionStorage.length").await == json!(0));
    key_input.clear().await.unwrap();
    key_input.send_keys(&key).await.unwrap();
    b.click("#signin").await;
    b.until(
        "the jobs list",
        "return !document.getElementById('view-jobs').hidden",
    )
    .await;
    assert_eq!(
        b.js("return document.cookie + location.href.includes('dc_')")
            .await,
        json!("false"),
        "the key is in no cookie and no URL"
    );

    // New job: a file with problems shows them with their lines, and cannot be submitted.
    b.goto(&base, "#/new").await;
    let bad = files.path().join("bad.csv");
    std::fs::write(
        &bad,
        "first_name,email,company_domain\nAda,ada@lumen.example,lumen.example\n,,lumen.example\nBob,,not a domain\n",
    )
    .unwrap();
    b.upload(&bad).await;
    b.until(
        "the problems of bad.csv",
        "return document.getElementById('problems').children.length === 2",
    )
    .await;
    let problems = b.text("problems").await;
    assert!(
        problems.contains("bad.csv line 3: needs an email or a name"),
        "{problems}"
    );
    assert!(
        problems.contains("bad.csv line 4, column company_domain"),
        "{problems}"
    );
    assert_eq!(
        b.js("return document.getElementById('submit').disabled")
            .await,
        json!(true)
    );
    b.screenshot("2-new-job-problems").await;

    // The example contacts: previewed, checked, submitted, followed to the end.
    let contacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/contacts.csv");
    b.upload(&contacts).await;
    b.until(
        "the check of contacts.csv",
        "return document.getElementById('check').textContent.includes('Ready: 5 contacts')",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelectorAll('#preview tbody tr').length")
            .await,
        json!(5)
    );
    b.screenshot("3-new-job").await;
    b.click("#submit").await;
    b.until(
        "the job page",
        "return location.hash.startsWith('#/jobs/') && location.hash.length > 20",
    )
    .await;
    let job_id = b
        .js("return location.hash.slice('#/jobs/'.length)")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    job_status_is(&b, "completed").await;
    b.until(
        "the summary and the download buttons",
        "return document.querySelectorAll('#assets button').length === 2 \
         && document.querySelector('#job-summary [data-key=delivered_contacts]') !== null",
    )
    .await;
    let api_result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}/result"))
        .await;
    assert_eq!(
        b.js("return document.querySelector('#job-summary [data-key=delivered_contacts]').textContent")
            .await,
        json!(api_result["summary"]["delivered_contacts"].to_string())
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#chart rect').length")
            .await,
        json!(5),
        "one bar per email status"
    );
    b.screenshot("4-job").await;

    // The CSV the browser saves is the API's asset, byte for byte.
    b.click("#assets button[data-asset=verified_contacts_csv]")
        .await;
    let (name, bytes) = downloaded(downloads.path()).await;
    assert!(name.ends_with(".csv"), "{name}");
    let asset = app
        .get(
            &key,
            &format!("/api/v1/bd/jobs/{job_id}/assets/verified_contacts_csv"),
        )
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes, asset.to_vec());
    assert!(String::from_utf8_lossy(&bytes).contains("ada@lumen.example"));

    // A running job, cancelled from its page.
    let slow = app
        .post_job(
            &key,
            &json!({
                "requested_capabilities": ["email_verify", "linkedin_enrich"],
                "input_assets": {"contacts": [
                    {"full_name": "A", "email": "a@slow-a.test"},
                    {"full_name": "B", "email": "b@slow-b.test"},
                    {"full_name": "C", "email": "c@slow-c.test"}
                ]}
            }),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let slow_id = slow["job_id"].as_str().unwrap();
    b.goto(&base, &format!("#/jobs/{slow_id}")).await;
    job_status_is(&b, "running").await;
    b.click("#cancel").await;
    job_status_is(&b, "cancelled").await;
    b.until(
        "the partial downloads",
        "return document.querySelectorAll('#assets button').length === 2",
    )
    .await;
    assert!(b.text("assets").await.contains("partial"));

    // The list: newest first, live, searchable by part of a job id.
    b.goto(&base, "#/jobs").await;
    b.until(
        "both jobs in the list",
        "return document.querySelectorAll('#jobs tr').length === 2",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#jobs tr').dataset.job")
            .await,
        json!(slow_id),
        "newest first"
    );
    b.screenshot("5-jobs").await;
    let q = b.client.find(Locator::Id("q")).await.unwrap();
    q.send_keys(&job_id[24..]).await.unwrap();
    b.click("#search").await;
    b.until(
        "the search result",
        &format!(
            "return document.querySelectorAll('#jobs tr').length === 1 \
             && document.querySelector('#jobs tr').dataset.job === '{job_id}'"
        ),
    )
    .await;

    // Another tenant's job is not found, like a job that does not exist.
    let foreign = app
        .post_job(
            &other,
            &json!({"preset": "verify_existing_emails",
                    "input_assets": {"contacts": [{"email": "ada@lumen.example"}]}}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let foreign_id = foreign["job_id"].as_str().unwrap();
    b.goto(&base, &format!("#/jobs/{foreign_id}")).await;
    b.until(
        "the not-found message",
        "return !document.getElementById('job-missing').hidden",
    )
    .await;
    assert!(b.text("job-missing").await.contains("not found"));

    // Hostile names in a file, and a hostile column name (which comes back as a job warning):
    // all shown as text; nothing runs, no element is made from them.
    b.goto(&base, "#/new").await;
    let hostile = files.path().join("hostile.csv");
    let mut w = csv::Writer::from_path(&hostile).unwrap();
    w.write_record(["first_name", "last_name", "email", XSS_IMG])
        .unwrap();
    w.write_record([XSS_IMG, XSS_SCRIPT, "ada@lumen.example", "x"])
        .unwrap();
    w.write_record([XSS_SCRIPT, XSS_IMG, "info@lumen.example", "y"])
        .unwrap();
    w.flush().unwrap();
    b.upload(&hostile).await;
    b.until(
        "the check of hostile.csv",
        "return document.getElementById('check').textContent.includes('Ready: 2 contacts')",
    )
    .await;
    let cells = b
        .js("return Array.from(document.querySelectorAll('#preview td')).map(td => td.textContent)")
        .await;
    for name in [XSS_IMG, XSS_SCRIPT] {
        assert!(
            cells.as_array().unwrap().contains(&json!(name)),
            "{name} shown as text in the preview: {cells}"
        );
    }
    b.click("#submit").await;
    b.until("the hostile job's page", "return location.hash.length > 20")
        .await;
    job_status_is(&b, "completed").await;
    b.until(
        "the warning naming the hostile column",
        &format!(
            "return document.getElementById('job-warnings').textContent.includes({})",
            json!(XSS_IMG)
        ),
    )
    .await;
    b.screenshot("6-hostile-job").await;
    let hostile_id = b
        .js("return location.hash.slice('#/jobs/'.length)")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    let hostile_csv = app
        .get(
            &key,
            &format!("/api/v1/bd/jobs/{hostile_id}/assets/verified_contacts_csv"),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(hostile_csv.contains(XSS_IMG), "{hostile_csv}");
    assert!(
        b.client.get_alert_text().await.is_err(),
        "no alert was opened"
    );
    assert_eq!(
        b.js("return [document.title, document.images.length, document.scripts.length]")
            .await,
        json!(["Job …".to_owned() + &hostile_id[24..] + " · bdjobs", 0, 1]),
        "the title is untouched, no image was made and the one script is the console's"
    );

    // A phone's width: the job page still reads.
    b.client.set_window_size(390, 844).await.unwrap();
    b.goto(&base, &format!("#/jobs/{job_id}")).await;
    job_status_is(&b, "completed").await;
    let overflow = b
        .js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    assert_eq!(overflow, json!(true), "no sideways scrolling at 390 px");
    b.screenshot("7-job-phone").await;

    // The browser's console: nothing but the 401, 404 and 422 the scenarios asked for (the log
    // is read for real: the 404 is in it).
    let log = b.console_log().await;
    assert!(
        log.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains(foreign_id) && m.contains("404"))),
        "{log:#?}"
    );
    let unexpected: Vec<&Value> = log
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .filter(|e| {
            let msg = e["message"].as_str().unwrap_or_default();
            let expected_404 = msg.contains(foreign_id) && msg.contains("status of 404");
            let expected_422 = msg.contains("dry_run=true") && msg.contains("status of 422");
            let expected_401 = msg.contains("limit=1") && msg.contains("status of 401");
            !(e["source"] == "network" && (expected_404 || expected_422 || expected_401))
        })
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:#?}");

    b.client.clone().close().await.unwrap();
    drop(b);
    app.stop().await;
}
