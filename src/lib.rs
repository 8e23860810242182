//! bdjobs: business-development jobs over RabbitMQ, Postgres and object storage.
//!
//! Where things live:
//! - [`domain`]: the pure core, no I/O: events and commands (`domain::messages`), the fold into
//!   a job's view (`domain::job`), plans and presets (`domain::plan`), the BD stages
//!   (`domain::stages`);
//! - [`adapters`]: Postgres (every SQL statement, `adapters::db`), RabbitMQ, OpenDAL, DNS, SMTP;
//! - [`read_model`]: the one writer of the event log, the job views, the asset index with the
//!   asset objects, and the outbox;
//! - [`worker`], [`projector`], [`api`], [`webhooks`] (the dispatcher): the roles, each a step
//!   plus a loop. They depend on `read_model`, `adapters` and `domain`, never on each other (a
//!   test below holds them to it);
//! - [`app`]: wiring roles to configuration; [`config`]: the settings;
//! - [`cli`]: the body of each command of the binary, one file a command.

pub mod adapters;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod projector;
pub mod read_model;
pub mod webhooks;
pub mod worker;

#[cfg(test)]
mod layering {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("src is readable").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Paths in `module`'s files that name one of `forbidden` modules of this crate.
    fn imports_of(module: &str, forbidden: &[&str]) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root.join(module), &mut files);
        assert!(!files.is_empty(), "src/{module} has no sources");
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source is readable");
            for (n, line) in text.lines().enumerate() {
                for other in forbidden {
                    if line.contains(&format!("crate::{other}")) {
                        found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn no_role_imports_another_role() {
        let roles = ["api", "worker", "projector", "webhooks"];
        for role in roles {
            let others: Vec<&str> = roles.iter().copied().filter(|r| *r != role).collect();
            let found = imports_of(role, &others);
            assert!(
                found.is_empty(),
                "{role} imports another role:\n{}",
                found.join("\n")
            );
        }
    }

    #[test]
    fn the_read_model_and_the_adapters_import_no_role_and_no_command() {
        for module in ["read_model", "adapters"] {
            let found = imports_of(
                module,
                &["api", "worker", "projector", "webhooks", "cli", "app"],
            );
            assert!(
                found.is_empty(),
                "{module} imports upward:\n{}",
                found.join("\n")
            );
        }
    }

    #[test]
    fn the_domain_imports_nothing_but_itself() {
        let found = imports_of(
            "domain",
            &[
                "adapters",
                "read_model",
                "api",
                "worker",
                "projector",
                "webhooks",
                "app",
                "config",
            ],
        );
        assert!(
            found.is_empty(),
            "domain imports I/O:\n{}",
            found.join("\n")
        );
    }
}
