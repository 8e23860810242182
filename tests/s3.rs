//! The asset path against a real S3 server on loopback: `s3s-fs` (crates.io), run as a
//! subprocess with its own root folder and access key. A job runs through the API, the projector
//! writes its assets to the bucket with signed requests, and the API serves them back.
//!
//! The server is a required tool, not an optional one. The tests use an installed copy when
//! there is one (`.ci/run` installs it into Cargo's bin folder) and otherwise build one into
//! `target/tools` first (`cargo install`, about two minutes, once), so that `cargo test` alone
//! works on a fresh machine; if that fails, they fail and say how to install it.

mod common;

use bdjobs::adapters::storage::{self, S3Credentials};
use common::{demo_job, demo_zone, Resources, TestApp};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "bdjobs-assets";
const INSTALL: &str = "cargo install s3s-fs@0.14.1 --features binary --locked";

/// Where the s3s-fs binary is: `$S3S_FS`, else Cargo's bin folder, else the PATH, else the
/// copy these tests install under `target/tools` (installing it first if need be).
fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("S3S_FS") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "S3S_FS names {}, which does not exist; install s3s-fs with `{INSTALL}`",
            path.display()
        );
        return path;
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut candidates: Vec<PathBuf> = cargo_home
        .map(|home| home.join("bin").join("s3s-fs"))
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("s3s-fs")));
    }
    candidates.push(local_install().join("bin").join("s3s-fs"));
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return found;
    }
    install()
}

/// Where the tests install s3s-fs themselves when no copy is found: beside the build, so a
/// fresh machine needs nothing but `cargo test`.
fn local_install() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("tools")
}

/// Builds s3s-fs from crates.io into `local_install()` (about two minutes, once per machine).
/// The tests of this file share one attempt.
fn install() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let root = local_install();
            eprintln!(
                "s3s-fs is not installed: building it into {} (about two minutes)",
                root.display()
            );
            let status = std::process::Command::new(env!("CARGO"))
                .args([
                    "install",
                    "--locked",
                    "s3s-fs@0.14.1",
                    "--features",
                    "binary",
                    "--root",
                ])
                .arg(&root)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            let bin = root.join("bin").join("s3s-fs");
            if status.success() && bin.is_file() {
                Ok(bin)
            } else {
                Err(format!(
                    "`cargo install` of s3s-fs failed ({status}); install it with `{INSTALL}`"
                ))
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("the S3 tests need the s3s-fs server: {e}"))
}

/// One s3s-fs process serving a temporary folder; killed (and the folder removed) on drop.
struct S3Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
    credentials: S3Credentials,
}

impl S3Server {
    fn start() -> Self {
        let binary = s3s_fs_binary();
        let root = tempfile::tempdir().unwrap();
        // s3s-fs serves each folder under its root as a bucket.
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let credentials = S3Credentials {
            access_key_id: "bdjobs-test".to_owned(),
            secret_access_key: format!("secret-{}", uuid::Uuid::new_v4().simple()),
        };
        // A free port from the kernel; s3s-fs takes a port number, not a listener.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &credentials.access_key_id])
            .args(["--secret-key", &credentials.secret_access_key])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = Self {
            child,
            port,
            root,
            credentials,
        };
        server.wait_until_listening();
        server
    }

    fn wait_until_listening(&mut self) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("s3s-fs exited before listening on {}: {status}", self.port);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "s3s-fs did not listen on 127.0.0.1:{} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The BDJOBS_ASSETS value for the bucket.
    fn location(&self) -> String {
        format!(
            "s3://{BUCKET}?endpoint=http://127.0.0.1:{}&region=us-east-1",
            self.port
        )
    }

    /// An object's bytes as the server stored them on disk.
    fn object_on_disk(&self, key: &str) -> Vec<u8> {
        let path = self.root.path().join(BUCKET).join(key);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{} not in the bucket: {e}", path.display()))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_s3_backend_signs_its_requests_with_the_credentials_it_is_given() {
    let s3 = S3Server::start();
    let good = storage::operator_with(&s3.location(), Some(&s3.credentials)).unwrap();
    storage::put(&good, "probe/hello.txt", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(
        storage::get(&good, "probe/hello.txt").await.unwrap(),
        b"hello"
    );
    assert_eq!(s3.object_on_disk("probe/hello.txt"), b"hello");
    assert!(storage::get(&good, "probe/missing")
        .await
        .unwrap_err()
        .is_not_found());

    let wrong = S3Credentials {
        secret_access_key: "not-the-secret".to_owned(),
        ..s3.credentials.clone()
    };
    let bad = storage::operator_with(&s3.location(), Some(&wrong)).unwrap();
    assert!(
        storage::put(&bad, "probe/forged.txt", b"x".to_vec())
            .await
            .is_err(),
        "a wrong secret must be refused, or the server is not checking signatures"
    );
    let anonymous = storage::operator_with(&s3.location(), None).unwrap();
    assert!(storage::put(&anonymous, "probe/anon.txt", b"x".to_vec())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stores_its_assets_in_s3_and_the_api_serves_them_back() {
    let s3 = S3Server::start();
    let mut res = Resources::new("s3").await;
    res.config.assets = Some(s3.location());
    res.config.aws_access_key_id = Some(s3.credentials.access_key_id.clone());
    res.config.aws_secret_access_key = Some(s3.credentials.secret_access_key.clone());
    let app = TestApp::start_with(res, demo_zone()).await;
    let key = app.res.key("acme").await;

    let resp = app.post_job(&key, &demo_job()).await;
    assert_eq!(resp.status(), 202);
    let job_id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = app.wait(&key, &job_id).await.pop().unwrap();
    assert_eq!(last["status"], "completed", "{last}");

    let result = app
        .get_json(&key, &format!("/api/v1/bd/jobs/{job_id}/result"))
        .await;
    let delivered = result["summary"]["delivered_contacts"].as_u64().unwrap();
    assert_eq!(delivered, 18, "the demo job's numbers");
    let assets = result["result_assets"].as_array().unwrap();
    assert_eq!(assets.len(), 2, "{result}");

    let mut seen = Vec::new();
    for asset in assets {
        let url = asset["download_url"].as_str().unwrap();
        let resp = app.get(&key, url).await;
        assert_eq!(resp.status(), 200, "GET {url}");
        let mime = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(mime, asset["mime_type"].as_str().unwrap());
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        let bytes = resp.bytes().await.unwrap().to_vec();
        assert_eq!(etag, format!("\"{}\"", hex::encode(Sha256::digest(&bytes))));

        // The bytes came from the bucket: the asset's slice of the object the projector wrote
        // for the job, byte for byte.
        let row = app
            .res
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT storage_key, byte_offset, size_bytes FROM assets
                 WHERE job_id = $1::text::uuid AND asset_id = $2",
                &[&job_id, &asset["asset_id"].as_str().unwrap()],
            )
            .await
            .unwrap();
        let (storage_key, at, size): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let object = s3.object_on_disk(&storage_key);
        assert_eq!(
            bytes,
            object[at as usize..(at + size) as usize],
            "{storage_key}"
        );

        match mime.as_str() {
            "application/json" => {
                let rows: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(rows.len() as u64, delivered);
            }
            "text/csv" => {
                let text = String::from_utf8(bytes).unwrap();
                let records = csv::Reader::from_reader(text.as_bytes()).records().count();
                assert_eq!(records as u64, delivered);
            }
            other => panic!("unexpected asset type {other}"),
        }
        seen.push(mime);
    }
    seen.sort();
    assert_eq!(seen, ["application/json", "text/csv"]);
    app.stop().await;
}

/// `bdjobs ARGS` against the test's database, with no AWS variable and no `./bdjobs.toml`:
/// whatever credentials it uses come from its flags or the file it is given.
fn bdjobs(res: &Resources, args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_bdjobs"))
        .args(args)
        .current_dir(cwd.path())
        .env("DATABASE_URL", &res.config.database_url)
        .env("RUST_LOG", "warn")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("BDJOBS_CONFIG")
        .env_remove("BDJOBS_ASSETS")
        .output()
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_events_import_sign_with_credentials_from_flags_or_the_file() {
    let s3 = S3Server::start();
    let mut res = Resources::new("s3cli").await;
    res.config.assets = Some(s3.location());
    res.config.aws_access_key_id = Some(s3.credentials.access_key_id.clone());
    res.config.aws_secret_access_key = Some(s3.credentials.secret_access_key.clone());
    let app = TestApp::start_with(res, demo_zone()).await;
    let key = app.res.key("acme").await;
    let resp = app.post_job(&key, &demo_job()).await;
    assert_eq!(resp.status(), 202);
    let job_id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = app.wait(&key, &job_id).await.pop().unwrap();
    assert_eq!(last["status"], "completed", "{last}");
    let storage_keys: Vec<String> = app
        .res
        .pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT DISTINCT storage_key FROM assets WHERE job_id = $1::text::uuid",
            &[&job_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Both assets of the job are slices of one object.
    assert_eq!(storage_keys.len(), 1);
    let lose_objects = || {
        for k in &storage_keys {
            std::fs::remove_file(s3.root.path().join(BUCKET).join(k)).unwrap();
        }
    };

    // replay, credentials as flags.
    lose_objects();
    let location = s3.location();
    let out = bdjobs(
        &app.res,
        &[
            "replay",
            "--job",
            &job_id,
            "--assets",
            &location,
            "--aws-access-key-id",
            &s3.credentials.access_key_id,
            "--aws-secret-access-key",
            &s3.credentials.secret_access_key,
        ],
    );
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for k in &storage_keys {
        assert!(!s3.object_on_disk(k).is_empty(), "{k} written back");
    }

    // events import into a fresh database, credentials in the file.
    let exported = bdjobs(&app.res, &["events", "export", "--job", &job_id]);
    assert!(exported.status.success());
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("job.jsonl");
    std::fs::write(&stream, &exported.stdout).unwrap();
    let file = dir.path().join("bdjobs.toml");
    std::fs::write(
        &file,
        format!(
            "assets = {:?}\naws_access_key_id = {:?}\naws_secret_access_key = {:?}\n",
            location, s3.credentials.access_key_id, s3.credentials.secret_access_key
        ),
    )
    .unwrap();
    let fresh = Resources::new("s3cli2").await;
    lose_objects();
    let out = bdjobs(
        &fresh,
        &[
            "events",
            "import",
            stream.to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "events import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for k in &storage_keys {
        assert!(!s3.object_on_disk(k).is_empty(), "{k} written back");
    }
    app.stop().await;
}
