//! Records from a spreadsheet-shaped file: CSV with a header row, or JSON Lines (one object a
//! line), each record a map of field name to text (or to a list, for a JSON array) with the line
//! it starts on. Shared by `bdjobs directory import` and job input sent as a file (the API's
//! multipart upload, `bdjobs submit`); pure, so the same rules hold everywhere.

use super::input::{RawCompany, RawContact};
use std::collections::BTreeMap;

/// One raw record: field name to text, or to a list (a JSON array).
pub type Fields = BTreeMap<String, FieldValue>;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Text(String),
    List(Vec<String>),
}

/// A record, or what is wrong with it, with the line it starts on (a CSV header is line 1).
pub type Row = (usize, Result<Fields, String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
    /// One JSON array of records, as in a JSON body's `input_assets` (read by the API with the
    /// JSON body's own rules, not by [`parse`]).
    JsonArray,
}

impl Format {
    /// The format a file name says (`.csv`, `.jsonl`, `.ndjson`), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            _ => None,
        }
    }

    /// The format a media type says (`text/csv`, `application/jsonl`, `application/x-ndjson`).
    pub fn from_media_type(mime: &str) -> Option<Self> {
        let essence = mime.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "text/csv" | "application/csv" => Some(Format::Csv),
            "application/jsonl"
            | "application/x-ndjson"
            | "application/x-jsonlines"
            | "application/jsonlines"
            | "application/ndjson" => Some(Format::JsonLines),
            _ => None,
        }
    }

    /// The name, else the media type, else the content: a JSON array starts with `[`, JSON
    /// Lines with `{`. Browsers send spreadsheets' CSV as `application/vnd.ms-excel` and
    /// unknown files as `application/octet-stream`, so the content has the last word.
    pub fn detect(name: Option<&str>, mime: Option<&str>, data: &str) -> Self {
        name.and_then(Self::from_name)
            .or_else(|| mime.and_then(Self::from_media_type))
            .unwrap_or_else(|| {
                let start = data.trim_start_matches('\u{feff}').trim_start();
                if start.starts_with('[') {
                    Format::JsonArray
                } else if start.starts_with('{') {
                    Format::JsonLines
                } else {
                    Format::Csv
                }
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("the CSV header row cannot be read: {0}")]
    Header(String),
    #[error("not a JSON array of objects: {0}")]
    Array(String),
}

/// Parses a whole file into numbered records (or numbered problems). A leading byte-order mark
/// (spreadsheets write one) is ignored; blank JSON lines are skipped.
pub fn parse(format: Format, data: &str) -> Result<Vec<Row>, TableError> {
    let data = data.strip_prefix('\u{feff}').unwrap_or(data);
    match format {
        Format::JsonArray => {
            let records: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(data).map_err(|e| TableError::Array(e.to_string()))?;
            Ok(records
                .into_iter()
                .enumerate()
                .map(|(i, obj)| (i + 1, Ok(object_fields(obj))))
                .collect())
        }
        Format::JsonLines => Ok(data
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| (i + 1, json_fields(line)))
            .collect()),
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_reader(data.as_bytes());
            let headers = reader
                .headers()
                .map_err(|e| TableError::Header(e.to_string()))?
                .clone();
            let mut out = Vec::new();
            for (i, rec) in reader.records().enumerate() {
                // Line numbers count the header as line 1 (multi-line quoted fields aside).
                let line = rec
                    .as_ref()
                    .ok()
                    .and_then(|r| r.position().map(|p| p.line() as usize))
                    .unwrap_or(i + 2);
                let parsed = rec
                    .map_err(|e| format!("unreadable CSV row: {e}"))
                    .map(|r| {
                        headers
                            .iter()
                            .zip(r.iter())
                            .map(|(h, v)| (h.trim().to_owned(), FieldValue::Text(v.to_owned())))
                            .collect()
                    });
                out.push((line, parsed));
            }
            Ok(out)
        }
    }
}

fn json_fields(line: &str) -> Result<Fields, String> {
    let obj = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line)
        .map_err(|e| format!("not a JSON object: {e}"))?;
    Ok(object_fields(obj))
}

fn object_fields(obj: serde_json::Map<String, serde_json::Value>) -> Fields {
    obj.into_iter()
        .filter_map(|(k, v)| {
            let value = match v {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => FieldValue::Text(s),
                serde_json::Value::Array(a) => FieldValue::List(
                    a.into_iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect(),
                ),
                other => FieldValue::Text(other.to_string()),
            };
            Some((k, value))
        })
        .collect()
}

/// A field's text, trimmed; `None` when absent, blank or a list.
pub fn text(f: &Fields, key: &str) -> Option<String> {
    match f.get(key)? {
        FieldValue::Text(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        FieldValue::List(_) => None,
    }
}

/// Which list of a job a file fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Contacts,
    Companies,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Contacts => "contacts",
            Kind::Companies => "companies",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "contacts" => Some(Kind::Contacts),
            "companies" => Some(Kind::Companies),
            _ => None,
        }
    }

    /// The columns a job's records of this kind have (those of `input_assets`).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Contacts => &[
                "first_name",
                "last_name",
                "full_name",
                "title",
                "email",
                "company_name",
                "company_domain",
                "linkedin_url",
            ],
            Kind::Companies => &[
                "name",
                "domain",
                "employee_count",
                "industry",
                "country",
                "linkedin_url",
            ],
        }
    }

    /// Contacts unless the records name no person but a company `domain`: a list of companies.
    pub fn guess(rows: &[Row]) -> Self {
        let person = ["first_name", "last_name", "full_name", "email"];
        let mut companies = false;
        for (_, fields) in rows.iter().take(20) {
            let Ok(f) = fields else { continue };
            if person.iter().any(|c| f.contains_key(*c)) {
                return Kind::Contacts;
            }
            companies |= f.contains_key("domain");
        }
        if companies {
            Kind::Companies
        } else {
            Kind::Contacts
        }
    }
}

/// A job's records read from a file: each with its line, and the problems that stopped a line
/// from becoming a record. Columns the job does not know are listed (once each), not refused: a
/// spreadsheet often carries notes beside the data, and the directory-import `type` column is
/// expected here too.
#[derive(Debug, Default, PartialEq)]
pub struct JobRecords {
    pub contacts: Vec<RawContact>,
    pub companies: Vec<RawCompany>,
    /// The line each record came from, in order (contacts or companies, per `kind`).
    pub lines: Vec<usize>,
    pub problems: Vec<String>,
    pub ignored_columns: Vec<String>,
}

/// Turns parsed rows into a job's contacts or companies. `source` names the file in problems
/// (`contacts.csv line 4: ...`).
pub fn job_records(kind: Kind, source: &str, rows: Vec<Row>) -> JobRecords {
    let mut out = JobRecords::default();
    for (line, fields) in rows {
        let fields = match fields {
            Ok(f) => f,
            Err(e) => {
                out.problems.push(format!("{source} line {line}: {e}"));
                continue;
            }
        };
        for key in fields.keys() {
            if !kind.columns().contains(&key.as_str())
                && key != "type"
                && !out.ignored_columns.contains(key)
            {
                out.ignored_columns.push(key.clone());
            }
        }
        let t = |k: &str| text(&fields, k);
        match kind {
            Kind::Contacts => out.contacts.push(RawContact {
                first_name: t("first_name"),
                last_name: t("last_name"),
                full_name: t("full_name"),
                title: t("title"),
                email: t("email"),
                company_name: t("company_name"),
                company_domain: t("company_domain"),
                linkedin_url: t("linkedin_url"),
            }),
            Kind::Companies => {
                let employee_count = match t("employee_count") {
                    None => None,
                    Some(s) => match s.parse::<f64>() {
                        Ok(n) if n.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&n) => {
                            Some(n as u32)
                        }
                        _ => {
                            out.problems.push(format!(
                                "{source} line {line}, column employee_count: {s:?} is not a whole number"
                            ));
                            continue;
                        }
                    },
                };
                out.companies.push(RawCompany {
                    name: t("name"),
                    domain: t("domain"),
                    employee_count,
                    industry: t("industry"),
                    country: t("country"),
                    linkedin_url: t("linkedin_url"),
                })
            }
        }
        out.lines.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_comes_from_the_name_then_the_media_type_then_the_content() {
        assert_eq!(Format::detect(Some("a.CSV"), None, "{"), Format::Csv);
        assert_eq!(
            Format::detect(Some("blob"), Some("application/x-ndjson"), "a,b"),
            Format::JsonLines
        );
        assert_eq!(
            Format::detect(None, Some("application/octet-stream"), "\u{feff} {\"a\":1}"),
            Format::JsonLines
        );
        assert_eq!(
            Format::detect(None, None, "email\nx@y.example"),
            Format::Csv
        );
    }

    #[test]
    fn a_byte_order_mark_does_not_become_part_of_the_first_column() {
        let rows = parse(Format::Csv, "\u{feff}email\nada@acme.example\n").unwrap();
        assert_eq!(
            text(rows[0].1.as_ref().unwrap(), "email").as_deref(),
            Some("ada@acme.example")
        );
    }

    #[test]
    fn csv_contacts_keep_their_line_numbers_and_unknown_columns_are_listed_once() {
        let data = "first_name,last_name,email,notes\nAda,Lovelace,ada@acme.example,x\n\"Al\nan\",Turing,,y\nGrace,Hopper,,z\n";
        let recs = job_records(Kind::Contacts, "c.csv", parse(Format::Csv, data).unwrap());
        assert_eq!(recs.contacts.len(), 3);
        assert_eq!(recs.lines, [2, 3, 5]);
        assert_eq!(recs.contacts[1].first_name.as_deref(), Some("Al\nan"));
        assert_eq!(recs.ignored_columns, ["notes"]);
        assert!(recs.problems.is_empty());
    }

    #[test]
    fn a_bad_jsonl_line_and_a_bad_employee_count_are_problems_with_their_line_numbers() {
        let data = "{\"domain\":\"a.example\",\"employee_count\":12}\n\nnot json\n{\"domain\":\"b.example\",\"employee_count\":\"many\"}\n";
        let recs = job_records(
            Kind::Companies,
            "c.jsonl",
            parse(Format::JsonLines, data).unwrap(),
        );
        assert_eq!(recs.companies.len(), 1);
        assert_eq!(recs.companies[0].employee_count, Some(12));
        assert_eq!(recs.problems.len(), 2, "{:?}", recs.problems);
        assert!(recs.problems[0].starts_with("c.jsonl line 3: not a JSON object"));
        assert!(recs.problems[1].starts_with("c.jsonl line 4, column employee_count"));
    }

    #[test]
    fn a_list_of_domains_is_taken_for_companies_and_anything_with_a_name_for_contacts() {
        let rows = |d: &str| parse(Format::Csv, d).unwrap();
        assert_eq!(
            Kind::guess(&rows("domain,name\na.example,A\n")),
            Kind::Companies
        );
        assert_eq!(
            Kind::guess(&rows("email,company_domain\nx@a.example,a.example\n")),
            Kind::Contacts
        );
        assert_eq!(Kind::guess(&rows("title\nCTO\n")), Kind::Contacts);
    }
}
