//! `bdjobs directory import FILE`: loads companies and people into the directory.
//!
//! Files are CSV (with a header row) or JSON Lines (`.jsonl`/`.ndjson`, one object a line).
//! Every record has a `type` of `company` or `person`:
//! - company: `domain` (required), `name`, `employee_count`, `industry`, `country`,
//!   `linkedin_url`, `keywords` (a JSON array, or `;`-separated in CSV);
//! - person: `company_domain`, `first_name`, `last_name` (required), `title`, `seniority`
//!   (`c_level`, `vp`, `director`, `manager`, `senior`, `entry`), `email`, `linkedin_url`,
//!   `headline`, `location`.
//!
//! Re-importing a file updates records in place (companies by domain; people by domain and
//! name). A bad record is skipped and reported with its line number; the rest still load.

use crate::adapters::db::{self, DbError};
use crate::adapters::progress;
use crate::domain::email::{display_domain, normalize_domain, parse_email};
use crate::domain::input::control_character;
use crate::domain::stages::discovery::seniority_rank;
use crate::domain::stages::{DirectoryCompany, DirectoryPerson};
use crate::domain::table::{self, text, FieldValue, Fields, Format};
use anyhow::Context;
use deadpool_postgres::Pool;
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Company(DirectoryCompany),
    Person(DirectoryPerson),
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub companies: usize,
    pub people: usize,
    /// (line number, reason)
    pub skipped: Vec<(usize, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: unsupported file type; use .csv, .jsonl or .ndjson")]
    Format(String),
    #[error("{0}: {1}")]
    Table(String, table::TableError),
    #[error(transparent)]
    Database(#[from] DbError),
}

/// Turns one raw record into a directory record, or says what is wrong with it.
fn to_record(f: &Fields) -> Result<Record, String> {
    // Postgres refuses NUL in text, which would fail the whole import's transaction; the other
    // controls break the CSV and logs the directory feeds. The record is skipped and named.
    for (name, value) in f {
        let texts = match value {
            FieldValue::Text(t) => std::slice::from_ref(t),
            FieldValue::List(l) => l.as_slice(),
        };
        if let Some(c) = texts.iter().find_map(|t| control_character(t)) {
            return Err(format!(
                "{name}: contains the control character U+{:04X}; text may hold no control characters but tab",
                c as u32
            ));
        }
    }
    match text(f, "type").as_deref() {
        Some("company") => {
            let domain = text(f, "domain").ok_or("company without a domain")?;
            let domain = normalize_domain(&domain).map_err(|e| format!("domain: {e}"))?;
            let employee_count = match text(f, "employee_count") {
                None => None,
                Some(s) => Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("employee_count {s:?} is not a whole number"))?,
                ),
            };
            let keywords = match f.get("keywords") {
                Some(FieldValue::List(l)) => l.clone(),
                Some(FieldValue::Text(s)) => s
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                None => Vec::new(),
            };
            Ok(Record::Company(DirectoryCompany {
                name: text(f, "name").unwrap_or_else(|| display_domain(&domain)),
                domain,
                employee_count,
                industry: text(f, "industry"),
                country: text(f, "country"),
                linkedin_url: text(f, "linkedin_url"),
                keywords,
            }))
        }
        Some("person") => {
            let domain = text(f, "company_domain").ok_or("person without a company_domain")?;
            let company_domain =
                normalize_domain(&domain).map_err(|e| format!("company_domain: {e}"))?;
            let first_name = text(f, "first_name").ok_or("person without a first_name")?;
            let last_name = text(f, "last_name").ok_or("person without a last_name")?;
            let email = match text(f, "email") {
                None => None,
                Some(e) => Some(
                    parse_email(&e)
                        .map_err(|err| format!("email {e:?}: {err}"))?
                        .address,
                ),
            };
            let seniority = text(f, "seniority");
            if let Some(s) = &seniority {
                if seniority_rank(s).is_none() {
                    return Err(format!("unknown seniority {s:?}"));
                }
            }
            Ok(Record::Person(DirectoryPerson {
                company_domain,
                first_name,
                last_name,
                title: text(f, "title"),
                seniority: seniority.map(|s| s.to_lowercase()),
                email,
                linkedin_url: text(f, "linkedin_url"),
                headline: text(f, "headline"),
                location: text(f, "location"),
            }))
        }
        Some(other) => Err(format!("type {other:?} is neither company nor person")),
        None => Err("record without a type (company or person)".to_owned()),
    }
}

/// A record, or what is wrong with it, with its line number.
pub type Numbered = (usize, Result<Record, String>);

/// Parses a whole file into numbered records (or numbered problems).
pub fn parse(path: &Path, data: &str) -> Result<Vec<Numbered>, ImportError> {
    let name = path.display().to_string();
    let format = Format::from_name(&name).ok_or_else(|| ImportError::Format(name.clone()))?;
    let rows = table::parse(format, data).map_err(|e| ImportError::Table(name, e))?;
    Ok(rows
        .into_iter()
        .map(|(line, fields)| (line, fields.and_then(|f| to_record(&f))))
        .collect())
}

/// Imports a file, drawing a progress bar on stderr when it is a terminal.
pub async fn import_file(
    pool: &Pool,
    path: &Path,
    show_progress: bool,
) -> Result<ImportReport, ImportError> {
    let data = std::fs::read_to_string(path)
        .map_err(|e| ImportError::Read(path.display().to_string(), e))?;
    let records = parse(path, &data)?;
    let bar = progress::bar(
        show_progress,
        records.len() as u64,
        "{spinner} importing [{bar:40}] {pos}/{len} records ({per_sec}, {eta} left)",
    );
    let mut report = ImportReport::default();
    let mut client = pool.get().await.map_err(DbError::from)?;
    // Batches keep each transaction short while avoiding one round trip of commit per record.
    for chunk in records.chunks(500) {
        let tx = client.transaction().await.map_err(DbError::from)?;
        for (line, rec) in chunk {
            match rec {
                Ok(Record::Company(c)) => {
                    db::directory::upsert_company(&tx, c).await?;
                    report.companies += 1;
                }
                Ok(Record::Person(p)) => {
                    db::directory::upsert_person(&tx, p).await?;
                    report.people += 1;
                }
                Err(reason) => report.skipped.push((*line, reason.clone())),
            }
        }
        tx.commit().await.map_err(DbError::from)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(report)
}

#[derive(clap::Subcommand)]
pub enum DirectoryCommand {
    /// Import companies and people from a CSV or JSON Lines file (see the README for columns).
    Import {
        /// The file: .csv, .jsonl or .ndjson.
        file: std::path::PathBuf,
    },
}

pub async fn run(
    config: &crate::config::Config,
    command: DirectoryCommand,
) -> anyhow::Result<ExitCode> {
    let DirectoryCommand::Import { file } = command;
    let pool = crate::app::connect_db(config)?;
    let report = import_file(&pool, &file, super::show_progress())
        .await
        .with_context(|| format!("import of {} failed", file.display()))?;
    for (line, reason) in &report.skipped {
        eprintln!("{}:{line}: skipped: {reason}", file.display());
    }
    println!(
        "imported {} companies and {} people; skipped {} record(s)",
        report.companies,
        report.people,
        report.skipped.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internationalised_domains_import_and_control_characters_are_skipped_by_line() {
        let data = concat!(
            "{\"type\":\"company\",\"domain\":\"日本語.jp\"}\n",
            "{\"type\":\"company\",\"domain\":\"https://éééé.example\",\"keywords\":[\"a\\u0000\"]}\n",
            "{\"type\":\"person\",\"company_domain\":\"日本語.jp\",\"first_name\":\"A\\u0000da\",\"last_name\":\"L\"}\n",
            "{\"type\":\"person\",\"company_domain\":\"日本語.jp\",\"first_name\":\"Ada\",\"last_name\":\"L\",\"email\":\"ada@日本語.jp\"}\n",
        );
        let recs = parse(Path::new("x.jsonl"), data).unwrap();
        match &recs[0] {
            (1, Ok(Record::Company(c))) => {
                assert_eq!(c.domain, "xn--wgv71a119e.jp");
                assert_eq!(c.name, "日本語.jp");
            }
            other => panic!("{other:?}"),
        }
        let e = recs[1].1.as_ref().unwrap_err();
        assert_eq!(recs[1].0, 2);
        assert!(
            e.starts_with("keywords: contains the control character U+0000"),
            "{e}"
        );
        assert_eq!(recs[2].0, 3);
        assert!(recs[2]
            .1
            .as_ref()
            .unwrap_err()
            .starts_with("first_name: contains the control character U+0000"));
        assert!(
            matches!(&recs[3], (4, Ok(Record::Person(p))) if p.email.as_deref() == Some("ada@xn--wgv71a119e.jp"))
        );
        let csv = "type,domain,name\ncompany,日本語.jp,\ncompany,\"ex\u{1b}[2Jample.com\",x\n";
        let recs = parse(Path::new("x.csv"), csv).unwrap();
        assert!(recs[0].1.is_ok(), "{:?}", recs[0]);
        assert!(recs[1].1.as_ref().unwrap_err().contains("U+001B"));
    }

    #[test]
    fn jsonl_records_parse_with_their_line_numbers_and_bad_ones_are_reported() {
        let data = concat!(
            "{\"type\":\"company\",\"domain\":\"WWW.Acme.example\",\"keywords\":[\"robots\"]}\n",
            "\n",
            "{\"type\":\"person\",\"company_domain\":\"acme.example\",\"first_name\":\"Ada\",\"last_name\":\"Lovelace\",\"email\":\"Ada@Acme.example\"}\n",
            "{\"type\":\"person\",\"company_domain\":\"acme.example\",\"first_name\":\"NoLast\"}\n",
            "not json\n",
        );
        let recs = parse(Path::new("x.jsonl"), data).unwrap();
        assert_eq!(recs.len(), 4);
        match &recs[0].1 {
            Ok(Record::Company(c)) => {
                assert_eq!(c.domain, "acme.example");
                assert_eq!(c.keywords, ["robots"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&recs[1], (3, Ok(Record::Person(p))) if p.email.as_deref() == Some("ada@acme.example"))
        );
        assert_eq!(recs[2].0, 4);
        assert!(recs[2].1.as_ref().unwrap_err().contains("last_name"));
        assert_eq!(recs[3].0, 5);
    }

    #[test]
    fn csv_records_split_keywords_on_semicolons() {
        let data = "type,domain,name,employee_count,keywords\ncompany,acme.example,Acme,120,a; b\ncompany,beta.example,Beta,lots,\n";
        let recs = parse(Path::new("x.csv"), data).unwrap();
        match &recs[0].1 {
            Ok(Record::Company(c)) => {
                assert_eq!(c.employee_count, Some(120));
                assert_eq!(c.keywords, ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(recs[1].0, 3);
        assert!(recs[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("not a whole number"));
    }

    #[test]
    fn an_unknown_extension_is_refused() {
        assert!(matches!(
            parse(Path::new("x.xlsx"), ""),
            Err(ImportError::Format(_))
        ));
    }
}
