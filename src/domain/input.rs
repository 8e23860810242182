//! The records a job works on, as the client sends them and as the pipeline sees them after
//! validation and normalisation (domains lower-cased, IDNA-encoded, stripped of scheme/`www.`).

use super::email::{display_domain, normalize_domain};
use serde::{Deserialize, Serialize};

/// At most this many companies, and this many contacts, in one job: beyond it a request is
/// refused with 422 rather than left to exhaust a worker (big jobs run in chunks).
pub const MAX_RECORDS: usize = 10_000;
/// Longest accepted text field, in characters.
pub const MAX_FIELD_CHARS: usize = 512;
/// Most items a list option (`icp_config.industries`, `execution_options.target_titles`, ...)
/// may hold: each item is matched against every company or person, so an unbounded list makes
/// a job quadratic.
pub const MAX_LIST_ITEMS: usize = 100;

/// The first control character in `s` other than tab: C0 (NUL, line breaks, escape ...), DEL or
/// C1. Text fields refuse them: Postgres cannot store NUL in `jsonb` or `text`, and the rest
/// break CSV cells, logs and terminals downstream while no name or title needs them.
pub fn control_character(s: &str) -> Option<char> {
    s.chars().find(|&c| c.is_control() && c != '\t')
}

/// What is wrong with one text value at `path`, if anything: too long, or a control character.
pub fn text_problem(path: &str, value: &str) -> Option<String> {
    if let Some(c) = control_character(value) {
        return Some(format!(
            "{path}: contains the control character U+{:04X}; text may hold no control characters but tab",
            c as u32
        ));
    }
    if value.chars().count() > MAX_FIELD_CHARS {
        return Some(format!("{path}: longer than {MAX_FIELD_CHARS} characters"));
    }
    None
}

/// Checks a list option: at most [`MAX_LIST_ITEMS`] items, each a valid text value. The first
/// problem is the answer (a 422 names the list and, for an item, its index).
pub fn check_list(path: &str, items: &[String]) -> Result<(), String> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(format!(
            "{path}: {} items; at most {MAX_LIST_ITEMS} are accepted",
            items.len()
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if let Some(problem) = text_problem(&format!("{path}[{i}]"), item) {
            return Err(problem);
        }
    }
    Ok(())
}

/// Reads an optional count that JSON may spell `12` or `12.0`: JSON (and JSON Schema's
/// `integer`) does not tell the two apart, so neither may the API. A fraction, a negative or a
/// value past `u32` is refused.
pub fn lenient_opt_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => {
            if let Some(u) = n.as_u64() {
                return u32::try_from(u).map(Some).map_err(|_| {
                    D::Error::custom(format!("{n} is out of range (0 to 4294967295)"))
                });
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f) => {
                    Ok(Some(f as u32))
                }
                _ => Err(D::Error::custom(format!(
                    "expected a whole number from 0 to 4294967295, got {n}"
                ))),
            }
        }
    }
}

/// A company as posted. Its schema in the OpenAPI document is derived from this type; the
/// rules every text field shares (length, control characters) are added by
/// `api::openapi`, which applies them to every string field of the input types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "A company to process. `domain` is required (a bare domain or a URL: it is lower-cased, IDNA-encoded and stripped of scheme, path, port and `www.`); `name` defaults to the domain. Blank strings count as absent. Unknown fields are ignored."
)]
pub struct RawCompany {
    /// Company name.
    #[serde(default)]
    pub name: Option<String>,
    /// Company domain or website URL: host names of letters, digits and hyphens, optionally
    /// with `http(s)://`, a port and a path (which are dropped). The server also accepts
    /// internationalised names (IDNA), which this pattern does not describe.
    #[serde(default)]
    #[schema(
        required = true,
        value_type = String,
        min_length = 1,
        example = "https://www.acme.example/",
        pattern = r"^([Hh][Tt][Tt][Pp][Ss]?://)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,3}[A-Za-z]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?\.?(:[0-9]{1,5})?([/?#][!-~]{0,200})?$"
    )]
    pub domain: Option<String>,
    /// Known head count.
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub employee_count: Option<u32>,
    /// Industry, matched against `icp_config.industries`.
    #[serde(default)]
    pub industry: Option<String>,
    /// Country, matched against `icp_config.countries`.
    #[serde(default)]
    pub country: Option<String>,
    /// LinkedIn company page.
    #[serde(default)]
    pub linkedin_url: Option<String>,
}

/// A contact as posted (its schema: see [`RawCompany`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "A contact to process. Needs an `email` or a name (`first_name`/`last_name`/`full_name`); blank strings count as absent. A `full_name` alone is split into first and last name; parts alone are joined into `full_name`. Unknown fields are ignored. Blank means empty or only white space."
)]
pub struct RawContact {
    /// Given name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Full name.
    #[serde(default)]
    pub full_name: Option<String>,
    /// Job title.
    #[serde(default)]
    pub title: Option<String>,
    /// E-mail address, if known.
    #[serde(default)]
    pub email: Option<String>,
    /// Employer's name.
    #[serde(default)]
    pub company_name: Option<String>,
    /// Employer's domain or website URL (normalised like `RawCompany.domain`).
    #[serde(default)]
    #[schema(
        pattern = r"^ *$|^([Hh][Tt][Tt][Pp][Ss]?://)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,3}[A-Za-z]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?\.?(:[0-9]{1,5})?([/?#][!-~]{0,200})?$"
    )]
    pub company_domain: Option<String>,
    /// LinkedIn profile.
    #[serde(default)]
    pub linkedin_url: Option<String>,
}

/// `input_assets` as posted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    as = InputAssets,
    description = "The records to process: at least one and at most 10000 in `companies` and `contacts` together."
)]
pub struct RawInput {
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub companies: Vec<RawCompany>,
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub contacts: Vec<RawContact>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Company {
    pub name: String,
    pub domain: String,
    pub employee_count: Option<u32>,
    pub industry: Option<String>,
    pub country: Option<String>,
    pub linkedin_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
    pub title: Option<String>,
    pub email: Option<String>,
    pub company_name: Option<String>,
    pub company_domain: Option<String>,
    pub linkedin_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    pub companies: Vec<Company>,
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct InputError {
    pub problems: Vec<String>,
}

fn clean(field: &Option<String>) -> Option<String> {
    field
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Where a list of records came from, so that a problem names the place a person can fix:
/// a JSON path (`input_assets.contacts[3].email`) or a file's line and column
/// (`contacts.csv line 5, column email`).
#[derive(Debug, Clone, Copy, Default)]
pub enum Origin<'a> {
    #[default]
    Json,
    File {
        name: &'a str,
        /// The line of each record, in order.
        lines: &'a [usize],
    },
    /// A multipart part holding a JSON array: `contacts[3].email`.
    Part { name: &'a str },
}

impl Origin<'_> {
    fn record(&self, list: &str, i: usize) -> String {
        match self {
            Origin::Json => format!("input_assets.{list}[{i}]"),
            Origin::Part { name } => format!("{name}[{i}]"),
            Origin::File { name, lines } => match lines.get(i) {
                Some(line) => format!("{name} line {line}"),
                None => format!("{name} record {}", i + 1),
            },
        }
    }

    fn field(&self, list: &str, i: usize, field: &str) -> String {
        match self {
            Origin::Json => format!("input_assets.{list}[{i}].{field}"),
            Origin::Part { name } => format!("{name}[{i}].{field}"),
            Origin::File { .. } => format!("{}, column {field}", self.record(list, i)),
        }
    }
}

/// Where each list of a job's input came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origins<'a> {
    pub companies: Origin<'a>,
    pub contacts: Origin<'a>,
}

fn check_fields(
    problems: &mut Vec<String>,
    at: impl Fn(&str) -> String,
    fields: &[(&str, &Option<String>)],
) {
    for (name, value) in fields {
        if let Some(problem) = value.as_deref().and_then(|v| text_problem(&at(name), v)) {
            problems.push(problem);
        }
    }
}

/// Splits "Ada King Lovelace" into ("Ada", "King Lovelace"): good enough for pattern rendering,
/// and only used when the client gave no explicit parts.
fn split_full_name(full: &str) -> (Option<String>, Option<String>) {
    let mut parts = full.split_whitespace();
    let first = parts.next().map(str::to_owned);
    let rest: Vec<&str> = parts.collect();
    let last = (!rest.is_empty()).then(|| rest.join(" "));
    (first, last)
}

impl RawInput {
    /// Validates and normalises. Reports up to 20 problems at once, each with its JSON path, so a
    /// client can fix a whole batch in one round trip.
    pub fn validate(&self) -> Result<JobInput, InputError> {
        self.validate_from(Origins::default(), Vec::new())
    }

    /// `validate` for records that came from files: problems name lines and columns. `earlier`
    /// are problems found while reading the files, reported first.
    pub fn validate_from(
        &self,
        origins: Origins<'_>,
        earlier: Vec<String>,
    ) -> Result<JobInput, InputError> {
        let mut problems = earlier;
        let total = self.companies.len() + self.contacts.len();
        if total == 0 {
            problems.push(
                "input_assets must hold at least one record in companies or contacts".to_owned(),
            );
        }
        // Each list on its own, as the OpenAPI document's `maxItems` says: a limit on the sum
        // is one no schema can state, so bodies valid by the document would be refused.
        let mut too_many = false;
        for (list, n) in [
            ("companies", self.companies.len()),
            ("contacts", self.contacts.len()),
        ] {
            if n > MAX_RECORDS {
                too_many = true;
                problems.push(format!(
                    "input_assets.{list} holds {n} records; at most {MAX_RECORDS} are accepted per list"
                ));
            }
        }
        if too_many {
            return Err(InputError { problems });
        }
        let mut companies = Vec::with_capacity(self.companies.len());
        for (i, c) in self.companies.iter().enumerate() {
            let o = origins.companies;
            let field = |f: &str| o.field("companies", i, f);
            let before = problems.len();
            check_fields(
                &mut problems,
                field,
                &[
                    ("name", &c.name),
                    ("domain", &c.domain),
                    ("industry", &c.industry),
                    ("country", &c.country),
                    ("linkedin_url", &c.linkedin_url),
                ],
            );
            if problems.len() > before {
                continue;
            }
            let domain = match clean(&c.domain) {
                None => {
                    problems.push(format!("{}: required", field("domain")));
                    continue;
                }
                Some(d) => match normalize_domain(&d) {
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(format!("{}: {e}", field("domain")));
                        continue;
                    }
                },
            };
            companies.push(Company {
                // The domain is stored in its ASCII (A-label) form, which DNS needs; a name made
                // from it is for people, so it reads in Unicode.
                name: clean(&c.name).unwrap_or_else(|| display_domain(&domain)),
                domain,
                employee_count: c.employee_count,
                industry: clean(&c.industry),
                country: clean(&c.country),
                linkedin_url: clean(&c.linkedin_url),
            });
        }
        let mut contacts = Vec::with_capacity(self.contacts.len());
        for (i, c) in self.contacts.iter().enumerate() {
            let o = origins.contacts;
            let field = |f: &str| o.field("contacts", i, f);
            let before = problems.len();
            check_fields(
                &mut problems,
                field,
                &[
                    ("first_name", &c.first_name),
                    ("last_name", &c.last_name),
                    ("full_name", &c.full_name),
                    ("title", &c.title),
                    ("email", &c.email),
                    ("company_name", &c.company_name),
                    ("company_domain", &c.company_domain),
                    ("linkedin_url", &c.linkedin_url),
                ],
            );
            if problems.len() > before {
                continue;
            }
            let company_domain = match clean(&c.company_domain) {
                None => None,
                Some(d) => match normalize_domain(&d) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        problems.push(format!("{}: {e}", field("company_domain")));
                        continue;
                    }
                },
            };
            let mut first_name = clean(&c.first_name);
            let mut last_name = clean(&c.last_name);
            let full_name = clean(&c.full_name).or_else(|| {
                let joined = [first_name.as_deref(), last_name.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                (!joined.is_empty()).then_some(joined)
            });
            if first_name.is_none() && last_name.is_none() {
                if let Some(full) = &full_name {
                    (first_name, last_name) = split_full_name(full);
                }
            }
            let email = clean(&c.email);
            if email.is_none() && full_name.is_none() {
                problems.push(format!(
                    "{}: needs an email or a name (first_name/last_name/full_name)",
                    o.record("contacts", i)
                ));
                continue;
            }
            contacts.push(Contact {
                first_name,
                last_name,
                full_name,
                title: clean(&c.title),
                email,
                company_name: clean(&c.company_name),
                company_domain,
                linkedin_url: clean(&c.linkedin_url),
            });
        }
        if problems.is_empty() {
            Ok(JobInput {
                companies,
                contacts,
            })
        } else {
            let more = problems.len().saturating_sub(20);
            problems.truncate(20);
            if more > 0 {
                problems.push(format!("and {more} more problem(s)"));
            }
            Err(InputError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_may_be_spelled_as_a_whole_float_but_not_as_a_fraction() {
        let read = |v: serde_json::Value| serde_json::from_value::<RawCompany>(v);
        let c = read(serde_json::json!({"domain": "a.example", "employee_count": 12.0})).unwrap();
        assert_eq!(c.employee_count, Some(12));
        let c = read(serde_json::json!({"domain": "a.example", "employee_count": null})).unwrap();
        assert_eq!(c.employee_count, None);
        for bad in [
            serde_json::json!(1.5),
            serde_json::json!(-1),
            serde_json::json!(4294967296u64),
        ] {
            assert!(
                read(serde_json::json!({"domain": "a.example", "employee_count": bad})).is_err()
            );
        }
    }

    fn company(domain: &str) -> RawCompany {
        RawCompany {
            domain: Some(domain.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn domains_are_normalised_and_names_default_to_the_domain() {
        let raw = RawInput {
            companies: vec![company("https://www.Acme.EXAMPLE/about")],
            contacts: vec![],
        };
        let input = raw.validate().unwrap();
        assert_eq!(input.companies[0].domain, "acme.example");
        assert_eq!(input.companies[0].name, "acme.example");
    }

    #[test]
    fn an_internationalised_domain_is_kept_in_ascii_and_named_in_unicode() {
        let raw = RawInput {
            companies: vec![company("日本語.jp"), company("https://éééé.example/")],
            contacts: vec![],
        };
        let input = raw.validate().unwrap();
        assert_eq!(input.companies[0].domain, "xn--wgv71a119e.jp");
        assert_eq!(input.companies[0].name, "日本語.jp");
        assert_eq!(input.companies[1].domain, "xn--9caaaa.example");
        assert_eq!(input.companies[1].name, "éééé.example");
    }

    fn named(first: &str) -> RawContact {
        RawContact {
            first_name: Some(first.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn a_nul_in_a_name_is_refused_naming_the_field_and_the_record() {
        let raw = RawInput {
            companies: vec![],
            contacts: vec![named("Ada"), named("A\u{0}da")],
        };
        let e = raw.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "input_assets.contacts[1].first_name: contains the control character U+0000; text may hold no control characters but tab"
        );
    }

    #[test]
    fn c0_c1_and_del_controls_are_refused_but_a_tab_is_kept() {
        for bad in [
            "a\nb",
            "a\rb",
            "\u{1b}[31m",
            "a\u{7f}",
            "a\u{85}b",
            "\u{9f}",
        ] {
            let raw = RawInput {
                companies: vec![RawCompany {
                    industry: Some(bad.to_owned()),
                    ..company("a.example")
                }],
                contacts: vec![],
            };
            let e = raw.validate().unwrap_err().to_string();
            assert!(
                e.starts_with("input_assets.companies[0].industry: contains the control character"),
                "{bad:?}: {e}"
            );
        }
        let raw = RawInput {
            companies: vec![],
            contacts: vec![named("Ada\tLovelace")],
        };
        assert_eq!(
            raw.validate().unwrap().contacts[0].first_name.as_deref(),
            Some("Ada\tLovelace")
        );
    }

    #[test]
    fn a_list_option_is_limited_in_count_and_checked_item_by_item() {
        let many = vec!["x".to_owned(); MAX_LIST_ITEMS + 1];
        assert_eq!(
            check_list("icp_config.keywords", &many).unwrap_err(),
            "icp_config.keywords: 101 items; at most 100 are accepted"
        );
        assert!(check_list("icp_config.keywords", &many[1..]).is_ok());
        let bad = vec!["ok".to_owned(), "n\u{0}".to_owned()];
        assert!(check_list("execution_options.target_titles", &bad)
            .unwrap_err()
            .starts_with(
                "execution_options.target_titles[1]: contains the control character U+0000"
            ));
    }

    #[test]
    fn empty_input_is_refused() {
        let e = RawInput::default().validate().unwrap_err();
        assert!(e.to_string().contains("at least one record"));
    }

    #[test]
    fn too_many_records_are_refused_with_the_limit_in_the_message() {
        let raw = RawInput {
            companies: vec![company("a.example"); MAX_RECORDS + 1],
            contacts: vec![],
        };
        let e = raw.validate().unwrap_err();
        assert!(e.to_string().contains("at most 10000"), "{e}");
        assert!(e.to_string().contains("input_assets.companies"), "{e}");
        // The limit is per list, as the document's maxItems says.
        let full = RawInput {
            companies: vec![company("a.example"); MAX_RECORDS],
            contacts: vec![RawContact {
                email: Some("ada@a.example".into()),
                ..RawContact::default()
            }],
        };
        assert!(full.validate().is_ok());
    }

    #[test]
    fn problems_name_the_json_path_of_the_bad_record() {
        let raw = RawInput {
            companies: vec![company("ok.example"), RawCompany::default()],
            contacts: vec![RawContact {
                title: Some("CTO".into()),
                ..Default::default()
            }],
        };
        let e = raw.validate().unwrap_err().to_string();
        assert!(
            e.contains("input_assets.companies[1].domain: required"),
            "{e}"
        );
        assert!(
            e.contains("input_assets.contacts[0]: needs an email or a name"),
            "{e}"
        );
    }

    #[test]
    fn a_full_name_is_split_when_parts_are_missing_and_joined_when_only_parts_are_given() {
        let raw = RawInput {
            companies: vec![],
            contacts: vec![
                RawContact {
                    full_name: Some("Ada King Lovelace".into()),
                    ..Default::default()
                },
                RawContact {
                    first_name: Some("Alan".into()),
                    last_name: Some("Turing".into()),
                    ..Default::default()
                },
            ],
        };
        let input = raw.validate().unwrap();
        assert_eq!(input.contacts[0].first_name.as_deref(), Some("Ada"));
        assert_eq!(
            input.contacts[0].last_name.as_deref(),
            Some("King Lovelace")
        );
        assert_eq!(input.contacts[1].full_name.as_deref(), Some("Alan Turing"));
    }

    /// Hostile and unusual text: every Unicode scalar, plus the ones that break naive code
    /// (multi-byte, right-to-left marks, combining marks, emoji with joiners, C0/C1 controls,
    /// look-alike dots) and the characters URL and address parsing splits on.
    fn nasty_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let special = prop::sample::select(vec![
            '\u{0}', '\t', '\n', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{200f}', '\u{202e}',
            '\u{200d}', '\u{301}', '\u{fe0f}', '\u{ff0e}', '\u{3002}', '\u{fffd}', '語', 'ש', 'é',
            'ß', '😀', '👩', '.', '/', ':', '@', '?', '#', '-', '_', '"', ' ', 'h', 't', 'p', 's',
            'w', 'x', 'n', '1',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..48)
            .prop_map(|cs| cs.into_iter().collect())
    }

    /// A JSON string literal of `text` with lone UTF-16 surrogates (`\uD800`) spliced in where
    /// `splice` says: what a client in JavaScript can send and Rust strings cannot hold.
    fn json_with_surrogates(text: &str, splice: &[bool]) -> String {
        let mut out = String::from("\"");
        for (c, lone) in text
            .chars()
            .zip(splice.iter().chain(std::iter::repeat(&false)))
        {
            if *lone {
                out.push_str("\\uD83D");
            }
            let escaped = serde_json::to_string(&c.to_string()).expect("a string serialises");
            out.push_str(&escaped[1..escaped.len() - 1]);
        }
        out.push('"');
        out
    }

    proptest::proptest! {
        #[test]
        fn the_validator_never_panics_on_any_text(
            domain in nasty_text(),
            name in nasty_text(),
            email in nasty_text(),
            splice in proptest::collection::vec(proptest::bool::weighted(0.05), 0..48),
        ) {
            let raw = RawInput {
                companies: vec![RawCompany {
                    domain: Some(domain.clone()),
                    name: Some(name.clone()),
                    ..Default::default()
                }],
                contacts: vec![RawContact {
                    first_name: Some(name.clone()),
                    email: Some(email.clone()),
                    company_domain: Some(domain.clone()),
                    ..Default::default()
                }],
            };
            let _ = raw.validate();
            let json = format!(
                r#"{{"companies":[{{"domain":{}}}],"contacts":[{{"full_name":{},"email":{}}}]}}"#,
                json_with_surrogates(&domain, &splice),
                json_with_surrogates(&name, &splice),
                json_with_surrogates(&email, &splice),
            );
            if let Ok(raw) = serde_json::from_str::<RawInput>(&json) {
                let _ = raw.validate();
            }
            let _ = check_list("icp_config.keywords", &[domain, name, email]);
        }

        #[test]
        fn the_email_and_domain_parsers_never_panic_on_any_text(
            text in nasty_text(),
            other in nasty_text(),
        ) {
            use crate::domain::email::*;
            if let Ok(ascii) = normalize_domain(&text) {
                // What comes out is ASCII and canonical: normalising it again changes nothing.
                proptest::prop_assert!(ascii.is_ascii(), "{:?}", ascii);
                let _ = display_domain(&ascii);
            }
            let _ = display_domain(&text);
            let address = format!("{text}@{other}");
            for candidate in [&text, &address] {
                let _ = parse_email(candidate);
                let _ = crate::domain::stages::verify::offline_checks(candidate);
            }
            let _ = is_role_account(&text);
            let _ = is_disposable(&text);
            let _ = clean_name(&text);
            for p in Pattern::ALL {
                let _ = p.render(&text, &other, &text);
            }
        }
    }
}
