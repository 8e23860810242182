//! The container setup checked against the code, without Docker: docker-compose.yml, the
//! Dockerfile, .dockerignore and docker/rabbitmq.conf must agree with the settings, subcommands
//! and ports the binary actually has, so that the two cannot drift apart unnoticed.

use clap::ValueEnum;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one-shot services: they run to completion and exit, so they need no health check.
const ONE_SHOTS: [&str; 2] = ["migrate", "minio-init"];

/// The subcommands the compose file must run, one service each.
const ROLE_COMMANDS: [&str; 4] = ["api", "worker", "projector", "migrate"];

/// RabbitMQ's own consumer_timeout default (30 minutes), in milliseconds.
const RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 1_800_000;

// ---- reading the files -------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// docker-compose.yml with its anchors resolved and its `<<` merge keys applied, as Compose
/// itself reads it.
fn compose() -> Value {
    let mut doc: Value = serde_yaml::from_str(&read("docker-compose.yml"))
        .expect("docker-compose.yml is not valid YAML");
    doc.apply_merge()
        .expect("docker-compose.yml has a bad merge key");
    doc
}

fn services(doc: &Value) -> BTreeMap<String, Value> {
    doc["services"]
        .as_mapping()
        .expect("docker-compose.yml has no services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v.clone()))
        .collect()
}

fn service<'a>(services: &'a BTreeMap<String, Value>, name: &str) -> &'a Value {
    services
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no `{name}` service"))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's environment, from either the mapping or the `KEY=value` list form.
fn env_of(svc: &Value) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("unexpected environment {other:?}"),
    }
}

/// A service's `command` (or `entrypoint`) as words.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("unexpected command {other:?}"),
    }
}

/// The services built from this repository's Dockerfile, by name, with the subcommand each runs.
fn bdjobs_services(services: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    services
        .iter()
        .filter(|(_, svc)| !svc["build"].is_null())
        .map(|(name, svc)| {
            let command = words(&svc["command"]);
            let first = command
                .first()
                .unwrap_or_else(|| panic!("service `{name}` runs no subcommand"));
            (name.clone(), first.clone())
        })
        .collect()
}

/// The bdjobs services that stay up (everything but `migrate`).
fn long_running_roles(services: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    bdjobs_services(services)
        .into_iter()
        .filter(|(name, _)| !ONE_SHOTS.contains(&name.as_str()))
        .collect()
}

/// `(published host port, container port)` of each `ports` entry, short or long syntax.
fn ports_of(svc: &Value) -> Vec<(Option<String>, String)> {
    let Some(entries) = svc["ports"].as_sequence() else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|entry| match entry {
            Value::Mapping(_) => {
                let published = match &entry["published"] {
                    Value::Null => None,
                    v => Some(scalar(v)),
                };
                (published, scalar(&entry["target"]))
            }
            v => {
                let text = scalar(v);
                let text = text.split('/').next().unwrap().to_owned();
                let parts: Vec<&str> = text.rsplitn(3, ':').collect();
                match parts.as_slice() {
                    [target] => (None, target.to_string()),
                    [target, published, ..] => (Some(published.to_string()), target.to_string()),
                    [] => unreachable!(),
                }
            }
        })
        .collect()
}

/// A health check's command line as one string, or None when there is none (or it is disabled).
fn healthcheck_of(svc: &Value) -> Option<String> {
    let hc = &svc["healthcheck"];
    if hc.is_null() || hc["disable"].as_bool() == Some(true) {
        return None;
    }
    let test = words(&hc["test"]);
    match test.first().map(String::as_str) {
        None | Some("NONE") => None,
        Some("CMD") | Some("CMD-SHELL") => Some(test[1..].join(" ")),
        Some(_) => Some(test.join(" ")),
    }
}

/// Every `"NAME"` that follows `marker` in `text`.
fn quoted_after(text: &str, marker: &str) -> Vec<String> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The environment variables the binary reads: the `env = "..."` of every clap option
/// (src/config.rs), the `std::env::var("...")` calls (the AWS_* credentials of the S3 backend),
/// and RUST_LOG when the log filter is taken from the environment.
fn env_vars_the_binary_reads() -> BTreeSet<String> {
    let config = read("src/config.rs");
    let mut names: BTreeSet<String> = quoted_after(&config, "env = \"").into_iter().collect();
    assert!(
        names.contains("DATABASE_URL") && names.contains("AMQP_URL"),
        "the scan of src/config.rs found no settings; has its format changed? found {names:?}"
    );
    let mut files = Vec::new();
    rust_sources(&repo().join("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        names.extend(quoted_after(&text, "env = \""));
        names.extend(quoted_after(&text, "env::var(\""));
        if text.contains("EnvFilter::try_from_default_env")
            || text.contains("EnvFilter::from_default_env")
        {
            names.insert("RUST_LOG".to_owned());
        }
    }
    assert!(
        names.contains("AWS_ACCESS_KEY_ID") && names.contains("AWS_SECRET_ACCESS_KEY"),
        "the S3 backend no longer reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: {names:?}"
    );
    names
}

/// The settings a role cannot do without (the rest have working defaults).
fn required_env(subcommand: &str) -> &'static [&'static str] {
    match subcommand {
        "migrate" => &["DATABASE_URL"],
        "api" => &[
            "DATABASE_URL",
            "AMQP_URL",
            "BDJOBS_NAMESPACE",
            "BDJOBS_LISTEN",
            "BDJOBS_ASSETS",
        ],
        "worker" => &["DATABASE_URL", "AMQP_URL", "BDJOBS_NAMESPACE"],
        "projector" => &[
            "DATABASE_URL",
            "AMQP_URL",
            "BDJOBS_NAMESPACE",
            "BDJOBS_ASSETS",
        ],
        other => panic!("no list of required settings for `{other}`"),
    }
}

/// `bdjobs ARGS --help` succeeds, i.e. ARGS name a real subcommand.
fn is_a_subcommand(args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_bdjobs"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .expect("cannot run the bdjobs binary")
        .status
        .success()
}

fn url(text: &str) -> url::Url {
    url::Url::parse(text).unwrap_or_else(|e| panic!("{text:?} is not a URL: {e}"))
}

fn port_of_listen(listen: &str) -> u16 {
    listen
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("BDJOBS_LISTEN {listen:?} is not ip:port: {e}"))
        .port()
}

/// `key = value` pairs of a rabbitmq.conf (sysctl format).
fn rabbitmq_conf(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The config file mounted into the broker: (path in the repository, path in the container).
fn rabbitmq_conf_mount(services: &BTreeMap<String, Value>) -> (String, String) {
    let volumes = service(services, "rabbitmq")["volumes"]
        .as_sequence()
        .expect("the rabbitmq service mounts nothing");
    volumes
        .iter()
        .filter_map(|v| match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            }
            Value::Mapping(_) => Some((scalar(&v["source"]), scalar(&v["target"]))),
            _ => None,
        })
        .find(|(_, target)| target.starts_with("/etc/rabbitmq/"))
        .expect("no file is mounted under /etc/rabbitmq/ in the rabbitmq service")
}

// ---- the Dockerfile ----------------------------------------------------------------------------

/// The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined and comments
/// dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let line = current.trim();
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        out.push((keyword.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The instructions of each stage, in order.
fn stages(instructions: &[(String, String)]) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for instruction in instructions {
        if instruction.0 == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(instruction.clone());
        }
    }
    stages
}

/// Words of an instruction's arguments, from either the JSON or the shell form.
fn instruction_words(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        serde_json::from_str(args).unwrap_or_else(|e| panic!("bad JSON form {args:?}: {e}"))
    } else {
        args.split_whitespace().map(str::to_owned).collect()
    }
}

// ---- .dockerignore -----------------------------------------------------------------------------

/// Glob match of one path against one pattern, segment by segment: `*` and `?` within a segment,
/// `**` across any number of segments (the subset of Docker's syntax a .dockerignore needs).
fn glob(pattern: &[&str], path: &[&str]) -> bool {
    fn segment(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => segment(&p[1..], s) || (!s.is_empty() && segment(p, &s[1..])),
            (Some(b'?'), Some(_)) => segment(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => segment(&p[1..], &s[1..]),
            _ => false,
        }
    }
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            glob(&pattern[1..], path) || (!path.is_empty() && glob(pattern, &path[1..]))
        }
        (Some(p), Some(s)) => {
            segment(p.as_bytes(), s.as_bytes()) && glob(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

/// Whether .dockerignore keeps `path` (relative, `/`-separated) out of the build context: the last
/// rule matching it or one of its parent folders decides, `!` rules putting things back.
fn is_ignored(rules: &[String], path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for rule in rules {
        let (negated, pattern) = match rule.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, rule.as_str()),
        };
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        if (1..=segments.len()).any(|n| glob(&pattern, &segments[..n])) {
            ignored = !negated;
        }
    }
    ignored
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

// ---- the compose file and the binary -----------------------------------------------------------

#[test]
fn every_variable_the_roles_set_is_one_the_binary_reads() {
    let doc = compose();
    let services = services(&doc);
    let known = env_vars_the_binary_reads();
    for name in bdjobs_services(&services).keys() {
        for var in env_of(service(&services, name)).keys() {
            assert!(
                known.contains(var),
                "service `{name}` sets {var}, which bdjobs never reads (a typo?); it reads {known:?}"
            );
        }
    }
}

#[test]
fn each_role_is_given_the_settings_it_cannot_run_without() {
    let doc = compose();
    let services = services(&doc);
    for (name, subcommand) in bdjobs_services(&services) {
        let env = env_of(service(&services, &name));
        for var in required_env(&subcommand) {
            assert!(
                env.get(*var).is_some_and(|v| !v.is_empty()),
                "service `{name}` (bdjobs {subcommand}) needs {var}"
            );
        }
        if env
            .get("BDJOBS_ASSETS")
            .is_some_and(|a| a.starts_with("s3://"))
        {
            for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                assert!(
                    env.get(var).is_some_and(|v| !v.is_empty()),
                    "service `{name}` stores assets in S3 but has no {var}"
                );
            }
        }
    }
}

#[test]
fn the_settings_given_to_the_roles_are_values_the_binary_accepts() {
    let doc = compose();
    let services = services(&doc);
    for name in bdjobs_services(&services).keys() {
        let env = env_of(service(&services, name));
        if let Some(format) = env.get("BDJOBS_LOG_FORMAT") {
            assert!(
                bdjobs::config::LogFormat::from_str(format, false).is_ok(),
                "service `{name}`: BDJOBS_LOG_FORMAT={format:?} is neither text nor json"
            );
        }
        if let Some(listen) = env.get("BDJOBS_LISTEN") {
            let addr: SocketAddr = listen
                .parse()
                .unwrap_or_else(|e| panic!("service `{name}`: BDJOBS_LISTEN={listen:?}: {e}"));
            assert!(
                addr.ip().is_unspecified(),
                "service `{name}` listens on {addr}, which nothing outside its container can reach; \
                 use 0.0.0.0"
            );
        }
        if let Some(assets) = env.get("BDJOBS_ASSETS") {
            if let Err(e) = bdjobs::adapters::storage::operator(assets) {
                panic!("service `{name}`: the binary rejects BDJOBS_ASSETS={assets:?}: {e}");
            }
        }
        for var in ["DATABASE_URL", "AMQP_URL"] {
            if let Some(v) = env.get(var) {
                url(v);
            }
        }
    }
}

#[test]
fn each_role_reads_its_whole_environment_as_the_binary_parses_it() {
    // `bdjobs config` runs the binary's own parser over the role's environment, exactly as the
    // container would, and says where each setting came from.
    let doc = compose();
    let services = services(&doc);
    let dir = tempfile::tempdir().unwrap();
    for name in bdjobs_services(&services).keys() {
        let env = env_of(service(&services, name));
        let out = Command::new(env!("CARGO_BIN_EXE_bdjobs"))
            .current_dir(dir.path())
            .env_clear()
            .envs(&env)
            .arg("config")
            .output()
            .expect("cannot run the bdjobs binary");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "service `{name}`: the binary refuses its environment: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for var in env.keys().filter(|v| v.as_str() != "RUST_LOG") {
            assert!(
                text.lines().any(|l| l.ends_with(&format!("# env {var}"))),
                "service `{name}`: {var} is not taken from the environment:\n{text}"
            );
        }
        if let Some(secret) = env.get("AWS_SECRET_ACCESS_KEY") {
            assert!(!text.contains(secret.as_str()), "the secret is printed");
        }
    }
}

#[test]
fn the_roles_share_one_database_broker_namespace_and_asset_store() {
    let doc = compose();
    let services = services(&doc);
    let shared = [
        "DATABASE_URL",
        "AMQP_URL",
        "BDJOBS_NAMESPACE",
        "BDJOBS_ASSETS",
    ];
    let mut seen: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for name in bdjobs_services(&services).keys() {
        let env = env_of(service(&services, name));
        for var in shared {
            let Some(value) = env.get(var) else { continue };
            match seen.get(var) {
                None => {
                    seen.insert(var, (name.clone(), value.clone()));
                }
                Some((other, first)) => assert_eq!(
                    value, first,
                    "`{name}` and `{other}` disagree on {var}, so they would not see each other's work"
                ),
            }
        }
    }
}

#[test]
fn each_role_runs_a_subcommand_the_binary_has() {
    let doc = compose();
    let services = services(&doc);
    let roles = bdjobs_services(&services);
    let commands: BTreeSet<&str> = roles.values().map(String::as_str).collect();
    assert_eq!(
        commands,
        ROLE_COMMANDS.into_iter().collect::<BTreeSet<_>>(),
        "expected one service per role: {roles:?}"
    );
    for (name, svc) in &services {
        if svc["build"].is_null() {
            continue;
        }
        let command = words(&svc["command"]);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        assert!(
            is_a_subcommand(&args),
            "service `{name}` runs `bdjobs {}`, which does not exist",
            args.join(" ")
        );
    }
    // The key creation the header comment shows.
    assert!(
        is_a_subcommand(&["keys", "create"]),
        "`bdjobs keys create` is gone"
    );
    assert!(
        !is_a_subcommand(&["no-such-subcommand"]),
        "the subcommand check accepts anything"
    );
}

#[test]
fn every_long_running_service_has_a_health_check() {
    let doc = compose();
    let services = services(&doc);
    for (name, svc) in &services {
        if ONE_SHOTS.contains(&name.as_str()) {
            assert_eq!(
                scalar(&svc["restart"]),
                "no",
                "the one-shot `{name}` must not be restarted once it has exited"
            );
            continue;
        }
        assert!(
            healthcheck_of(svc).is_some(),
            "service `{name}` has no health check"
        );
    }
    for (name, subcommand) in long_running_roles(&services) {
        let svc = service(&services, &name);
        let check = healthcheck_of(svc).unwrap();
        let env = env_of(svc);
        if subcommand == "api" {
            let port = port_of_listen(&env["BDJOBS_LISTEN"]);
            assert!(
                check.contains("/healthz") && check.contains(&port.to_string()),
                "the api's health check should GET /healthz on port {port}: {check}"
            );
        } else if check.contains("/proc/net/tcp") {
            let port = url(&env["AMQP_URL"]).port().unwrap_or(5672);
            let pattern = format!(":{port:04X} 01 ");
            assert!(
                check.contains(&pattern),
                "`{name}`'s health check should look for an established connection to the broker's \
                 port {port} ({pattern:?} in /proc/net/tcp): {check}"
            );
        }
    }
}

#[test]
fn the_roles_start_only_once_postgres_and_rabbitmq_are_healthy_and_setup_has_run() {
    let doc = compose();
    let services = services(&doc);
    let condition = |svc: &Value, on: &str| scalar(&svc["depends_on"][on]["condition"]);
    for name in long_running_roles(&services).keys() {
        let svc = service(&services, name);
        for (on, wanted) in [
            ("postgres", "service_healthy"),
            ("rabbitmq", "service_healthy"),
            ("minio-init", "service_completed_successfully"),
            ("migrate", "service_completed_successfully"),
        ] {
            assert_eq!(
                condition(svc, on),
                wanted,
                "`{name}` should depend on `{on}` with condition {wanted}"
            );
        }
        assert_eq!(
            scalar(&svc["restart"]),
            "unless-stopped",
            "`{name}` should be restarted"
        );
    }
    assert_eq!(
        condition(service(&services, "migrate"), "postgres"),
        "service_healthy"
    );
    assert_eq!(
        condition(service(&services, "minio-init"), "minio"),
        "service_healthy"
    );
}

#[test]
fn the_worker_can_be_scaled_to_several_containers() {
    let doc = compose();
    let services = services(&doc);
    let worker = service(&services, "worker");
    assert!(
        worker["container_name"].is_null(),
        "a container_name allows only one worker"
    );
    for (published, target) in ports_of(worker) {
        assert!(
            published.is_none(),
            "the worker publishes host port {published:?} (for {target}); a second worker could not bind it"
        );
    }
}

#[test]
fn the_api_publishes_the_port_it_listens_on() {
    let doc = compose();
    let services = services(&doc);
    let api = service(&services, "api");
    let port = port_of_listen(&env_of(api)["BDJOBS_LISTEN"]).to_string();
    let ports = ports_of(api);
    assert!(
        ports
            .iter()
            .any(|(published, target)| *target == port && published.is_some()),
        "the api listens on {port} but publishes {ports:?}"
    );
}

#[test]
fn the_database_and_broker_urls_name_the_compose_services_and_their_credentials() {
    let doc = compose();
    let services = services(&doc);
    let env = env_of(service(&services, "api"));

    let db = url(&env["DATABASE_URL"]);
    assert_eq!(
        db.host_str(),
        Some("postgres"),
        "DATABASE_URL should point at the `postgres` service"
    );
    let postgres = service(&services, "postgres");
    assert!(scalar(&postgres["image"]).starts_with("postgres:"));
    let pg_env = env_of(postgres);
    let pg_user = pg_env
        .get("POSTGRES_USER")
        .map_or("postgres", String::as_str);
    assert_eq!(
        db.username(),
        pg_user,
        "DATABASE_URL's user is not Postgres' user"
    );
    match pg_env.get("POSTGRES_PASSWORD") {
        Some(password) => assert_eq!(
            db.password(),
            Some(password.as_str()),
            "DATABASE_URL's password"
        ),
        None => assert_eq!(
            pg_env.get("POSTGRES_HOST_AUTH_METHOD").map(String::as_str),
            Some("trust"),
            "Postgres has neither a password nor trust authentication"
        ),
    }
    assert_eq!(db.port().unwrap_or(5432), 5432);

    let amqp = url(&env["AMQP_URL"]);
    assert_eq!(
        amqp.host_str(),
        Some("rabbitmq"),
        "AMQP_URL should point at the `rabbitmq` service"
    );
    assert_eq!(amqp.port().unwrap_or(5672), 5672);
    let (source, _) = rabbitmq_conf_mount(&services);
    let conf = rabbitmq_conf(&read(&source));
    let user = conf.get("default_user").map_or("guest", String::as_str);
    let pass = conf.get("default_pass").map_or("guest", String::as_str);
    assert_ne!(
        user, "guest",
        "RabbitMQ lets guest in from localhost only; the roles are elsewhere"
    );
    assert_eq!(
        amqp.username(),
        user,
        "AMQP_URL's user is not the broker's default_user"
    );
    assert_eq!(
        amqp.password(),
        Some(pass),
        "AMQP_URL's password is not the broker's default_pass"
    );
}

#[test]
fn the_assets_bucket_is_the_one_minio_init_creates_with_minios_credentials() {
    let doc = compose();
    let services = services(&doc);
    let env = env_of(service(&services, "api"));
    let assets = url(&env["BDJOBS_ASSETS"]);
    assert_eq!(assets.scheme(), "s3");
    let bucket = assets.host_str().expect("BDJOBS_ASSETS names no bucket");
    let query: BTreeMap<_, _> = assets.query_pairs().collect();
    let endpoint = url(query
        .get("endpoint")
        .expect("BDJOBS_ASSETS has no endpoint"));
    assert_eq!(
        endpoint.host_str(),
        Some("minio"),
        "the S3 endpoint should be the `minio` service"
    );

    let minio = env_of(service(&services, "minio"));
    assert_eq!(
        env["AWS_ACCESS_KEY_ID"], minio["MINIO_ROOT_USER"],
        "AWS_ACCESS_KEY_ID is not MinIO's user"
    );
    assert_eq!(
        env["AWS_SECRET_ACCESS_KEY"], minio["MINIO_ROOT_PASSWORD"],
        "AWS_SECRET_ACCESS_KEY is not MinIO's password"
    );

    let init = service(&services, "minio-init");
    let mut command = words(&init["entrypoint"]);
    command.extend(words(&init["command"]));
    let mb = command
        .iter()
        .position(|w| w == "mb")
        .expect("minio-init does not run `mc mb`");
    let target = command[mb + 1..]
        .iter()
        .find(|w| !w.starts_with('-'))
        .expect("`mc mb` names no bucket");
    let (alias, created) = target.split_once('/').expect("`mc mb` wants ALIAS/BUCKET");
    assert_eq!(
        created, bucket,
        "minio-init creates {created:?} but the roles use {bucket:?}"
    );

    let init_env = env_of(init);
    let alias_url = url(init_env
        .get(&format!("MC_HOST_{alias}"))
        .unwrap_or_else(|| panic!("minio-init defines no MC_HOST_{alias}")));
    assert_eq!(alias_url.host_str(), Some("minio"));
    assert_eq!(alias_url.username(), minio["MINIO_ROOT_USER"]);
    assert_eq!(
        alias_url.password(),
        Some(minio["MINIO_ROOT_PASSWORD"].as_str())
    );
}

#[test]
fn the_rabbitmq_config_mounted_into_the_broker_exists_and_sets_consumer_timeout() {
    let doc = compose();
    let services = services(&doc);
    let (source, target) = rabbitmq_conf_mount(&services);
    assert!(
        target.starts_with("/etc/rabbitmq/conf.d/") && target.ends_with(".conf"),
        "mount the config into /etc/rabbitmq/conf.d/ so that the image's defaults still apply: {target}"
    );
    let path = repo().join(&source);
    assert!(
        path.is_file(),
        "{source} is mounted into the broker but is not in the repository"
    );
    let conf = rabbitmq_conf(&read(&source));
    let timeout: u64 = conf
        .get("consumer_timeout")
        .unwrap_or_else(|| panic!("{source} does not set consumer_timeout"))
        .parse()
        .expect("consumer_timeout is not a number of milliseconds");
    assert!(
        timeout >= RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_MS,
        "consumer_timeout {timeout} ms is below RabbitMQ's own default; jobs would be taken back sooner"
    );
    assert!(
        !service(&services, "rabbitmq")["hostname"].is_null(),
        "quorum queues keep their data under the node name: give the broker a fixed hostname"
    );
}

#[test]
fn the_compose_file_explains_itself_and_has_no_obsolete_version_key() {
    let text = read("docker-compose.yml");
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "docker compose up",
        "--scale worker=",
        "docker compose run --rm api keys create --tenant",
    ] {
        assert!(
            header.contains(needle),
            "the header comment should show `{needle}`"
        );
    }
    assert!(
        compose()["version"].is_null(),
        "the Compose spec has no `version:` key"
    );
}

// ---- the image ---------------------------------------------------------------------------------

#[test]
fn the_dockerfile_is_a_multi_stage_build_that_runs_bdjobs_as_a_non_root_user() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    assert!(
        stages.len() >= 2,
        "expected a build stage and a runtime stage"
    );
    let build = &stages[0];
    let runtime = stages.last().unwrap();
    let stage_name = instruction_words(&build[0].1).last().cloned().unwrap();

    assert!(
        build
            .iter()
            .any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked")),
        "the build stage should run `cargo build --release --locked`"
    );
    assert!(
        runtime.iter().any(|(k, a)| k == "COPY"
            && a.contains(&format!("--from={stage_name}"))
            && a.contains("target/release/bdjobs")),
        "the runtime stage should copy target/release/bdjobs from the `{stage_name}` stage"
    );

    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.clone())
        .expect("the runtime stage has no USER, so it runs as root");
    let user = user.split(':').next().unwrap();
    assert!(
        user != "root" && user != "0",
        "the runtime stage runs as {user}"
    );

    let entrypoint = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| instruction_words(a))
        .expect("the runtime stage has no ENTRYPOINT");
    assert!(
        entrypoint.len() == 1 && Path::new(&entrypoint[0]).file_name().is_some_and(|f| f == "bdjobs"),
        "ENTRYPOINT should be [\"bdjobs\"], so that compose commands are subcommands: {entrypoint:?}"
    );
}

#[test]
fn the_image_exposes_the_port_it_listens_on() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    let runtime = stages.last().unwrap();
    let listen = runtime
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, a)| instruction_words(a))
        .find_map(|w| w.strip_prefix("BDJOBS_LISTEN=").map(str::to_owned))
        .expect("the image sets no BDJOBS_LISTEN, so the API would listen on 127.0.0.1 only");
    assert!(listen.parse::<SocketAddr>().unwrap().ip().is_unspecified());
    let port = port_of_listen(&listen).to_string();
    let exposed: Vec<String> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| instruction_words(a))
        .map(|p| p.split('/').next().unwrap().to_owned())
        .collect();
    assert!(
        exposed.contains(&port),
        "the image listens on {port} but exposes {exposed:?}"
    );
}

#[test]
fn the_build_context_holds_the_sources_and_not_target_or_git() {
    let text = read(".dockerignore");
    let rules: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for path in ["target/release/bdjobs", ".git/HEAD", "var/assets/x"] {
        assert!(
            is_ignored(&rules, path),
            ".dockerignore should keep {path} out of the build context"
        );
    }
    let mut needed = vec![repo().join("Cargo.toml"), repo().join("Cargo.lock")];
    for dir in ["src", "migrations", "examples"] {
        files_under(&repo().join(dir), &mut needed);
    }
    for file in needed {
        let relative = file
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        assert!(
            !is_ignored(&rules, &relative),
            ".dockerignore keeps {relative} out, but the build needs it"
        );
    }
    // Whatever the Dockerfile copies from the context must be there.
    for (keyword, args) in dockerfile() {
        if keyword != "COPY" && keyword != "ADD" {
            continue;
        }
        let words = instruction_words(&args);
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let sources: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
        for source in &sources[..sources.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "the Dockerfile copies {source}, which is not in the repository"
            );
        }
    }
}

// ---- docker-compose.cluster.yml: the three-node broker ---------------------------------------

/// docker-compose.cluster.yml with its anchors and merge keys applied.
fn cluster_compose() -> BTreeMap<String, Value> {
    let mut doc: Value = serde_yaml::from_str(&read("docker-compose.cluster.yml"))
        .expect("docker-compose.cluster.yml is not valid YAML");
    doc.apply_merge()
        .expect("docker-compose.cluster.yml has a bad merge key");
    services(&doc)
}

/// `(repository path, container path)` of every bind mount of a service.
fn mounts(svc: &Value) -> Vec<(String, String)> {
    svc["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let s = v.as_str()?;
            let mut parts = s.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .filter(|(source, _)| source.starts_with("./"))
        .collect()
}

#[test]
fn the_cluster_file_runs_three_clustered_brokers_that_find_each_other() {
    let cluster = cluster_compose();
    let brokers: BTreeMap<&String, &Value> = cluster
        .iter()
        .filter(|(_, svc)| {
            svc["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("rabbitmq:"))
        })
        .collect();
    assert_eq!(brokers.len(), 3, "three broker nodes");
    assert!(
        brokers.contains_key(&"rabbitmq".to_owned()),
        "docker-compose.yml's broker is one of them"
    );
    let cookies: BTreeSet<String> = brokers
        .values()
        .map(|svc| env_of(svc)["RABBITMQ_ERLANG_COOKIE"].clone())
        .collect();
    assert_eq!(cookies.len(), 1, "the nodes must share one Erlang cookie");
    let mut peers = BTreeSet::new();
    for (name, svc) in &brokers {
        assert_eq!(
            svc["hostname"].as_str(),
            Some(name.as_str()),
            "`{name}` needs a fixed hostname: its node name and data hang on it"
        );
        let mounted = mounts(svc);
        for file in ["./docker/rabbitmq.conf", "./docker/rabbitmq-cluster.conf"] {
            let (_, target) = mounted
                .iter()
                .find(|(source, _)| source == file)
                .unwrap_or_else(|| panic!("`{name}` does not mount {file}"));
            assert!(target.starts_with("/etc/rabbitmq/conf.d/"), "{target}");
            assert!(repo().join(file).exists(), "{file} is missing");
        }
        peers.insert(format!("rabbit@{name}"));
    }
    let conf = rabbitmq_conf(&read("docker/rabbitmq-cluster.conf"));
    assert_eq!(
        conf.get("cluster_formation.peer_discovery_backend")
            .map(String::as_str),
        Some("classic_config")
    );
    let listed: BTreeSet<String> = conf
        .iter()
        .filter(|(k, _)| k.starts_with("cluster_formation.classic_config.nodes."))
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(listed, peers, "the peers listed are the broker services");
}

#[test]
fn the_cluster_file_gives_every_role_all_three_nodes_in_a_url_the_binary_accepts() {
    let base = services(&compose());
    let cluster = cluster_compose();
    let hosts: BTreeSet<String> = cluster
        .iter()
        .filter(|(_, svc)| {
            svc["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("rabbitmq:"))
        })
        .map(|(name, _)| name.clone())
        .collect();
    let conf = rabbitmq_conf(&read("docker/rabbitmq.conf"));
    let dir = tempfile::tempdir().unwrap();
    for name in bdjobs_services(&base).keys() {
        let overridden = env_of(
            cluster
                .get(name)
                .unwrap_or_else(|| panic!("the cluster file leaves `{name}` on one node")),
        );
        let list = &overridden["AMQP_URL"];
        let nodes = bdjobs::adapters::broker::parse_urls(list)
            .unwrap_or_else(|e| panic!("`{name}`: the binary rejects AMQP_URL: {e}"));
        let named: BTreeSet<String> = nodes
            .iter()
            .map(|n| {
                let u = url(n);
                assert_eq!(u.username(), conf["default_user"], "{n}");
                assert_eq!(u.password(), Some(conf["default_pass"].as_str()), "{n}");
                assert_eq!(u.port().unwrap_or(5672), 5672, "{n}");
                u.host_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(named, hosts, "`{name}` should list every broker node once");
        // The role's whole environment, as Compose merges the two files, through the binary.
        let mut env = env_of(service(&base, name));
        env.extend(overridden);
        let out = Command::new(env!("CARGO_BIN_EXE_bdjobs"))
            .current_dir(dir.path())
            .env_clear()
            .envs(&env)
            .arg("config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{name}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("amqp_url")).unwrap();
        assert!(line.ends_with("# env AMQP_URL"), "{line}");
        assert_eq!(line.matches("********").count(), 3, "{line}");
    }
}
