//! `deliverable_finalize`: de-duplicate, drop what cannot be delivered, rank, count, and render
//! the `verified_contacts` assets (JSON and CSV).

use super::{DeliveredContact, Summary};
use crate::domain::email::EmailStatus;
use std::collections::HashSet;

/// What finalisation dropped, for warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    pub duplicates: usize,
    pub invalid: usize,
    pub without_email: usize,
}

fn status_rank(s: Option<EmailStatus>) -> u8 {
    match s {
        Some(EmailStatus::Verified) => 0,
        Some(EmailStatus::Risky) => 1,
        Some(EmailStatus::Unknown) => 2,
        None => 3,
        Some(EmailStatus::Invalid) => 4,
    }
}

fn lower(s: &Option<String>) -> String {
    s.as_deref().unwrap_or_default().trim().to_lowercase()
}

/// Dedupes (same email ignoring case; the same person at the same company), drops invalid and
/// address-less contacts, and ranks: best status first, then confidence, company and name. The
/// first occurrence of a duplicate wins, so the client's own record beats a discovered one.
pub fn finalize(contacts: Vec<DeliveredContact>) -> (Vec<DeliveredContact>, Dropped) {
    let mut dropped = Dropped::default();
    let mut emails = HashSet::new();
    let mut people = HashSet::new();
    let mut kept = Vec::with_capacity(contacts.len());
    for c in contacts {
        if c.email.is_none() {
            dropped.without_email += 1;
            continue;
        }
        if c.email_status == Some(EmailStatus::Invalid) {
            dropped.invalid += 1;
            continue;
        }
        let email_key = lower(&c.email);
        let person_key = (lower(&c.full_name), lower(&c.company_domain));
        let person_known = !person_key.0.is_empty() && people.contains(&person_key);
        if emails.contains(&email_key) || person_known {
            dropped.duplicates += 1;
            continue;
        }
        emails.insert(email_key);
        if !person_key.0.is_empty() {
            people.insert(person_key);
        }
        kept.push(c);
    }
    kept.sort_by(|a, b| {
        status_rank(a.email_status)
            .cmp(&status_rank(b.email_status))
            .then_with(|| {
                b.email_confidence
                    .unwrap_or(0.0)
                    .total_cmp(&a.email_confidence.unwrap_or(0.0))
            })
            .then_with(|| lower(&a.company_domain).cmp(&lower(&b.company_domain)))
            .then_with(|| lower(&a.full_name).cmp(&lower(&b.full_name)))
            .then_with(|| lower(&a.email).cmp(&lower(&b.email)))
    });
    (kept, dropped)
}

/// Fills the per-status counts of a summary from the delivered rows.
pub fn count_statuses(rows: &[DeliveredContact], summary: &mut Summary) {
    summary.delivered_contacts = rows.len() as u64;
    let count = |s: Option<EmailStatus>| rows.iter().filter(|r| r.email_status == s).count() as u64;
    summary.verified_emails = count(Some(EmailStatus::Verified));
    summary.risky_emails = count(Some(EmailStatus::Risky));
    summary.unknown_emails = count(Some(EmailStatus::Unknown));
    summary.unverified_emails = count(None);
}

pub fn render_json(rows: &[DeliveredContact]) -> Vec<u8> {
    let mut out = Vec::new();
    write_json(rows, &mut out);
    out
}

/// [`render_json`], appended to `out`.
pub fn write_json(rows: &[DeliveredContact], out: &mut Vec<u8>) {
    serde_json::to_writer_pretty(&mut *out, rows).expect("contacts serialise");
    out.push(b'\n');
}

pub const CSV_COLUMNS: [&str; 21] = [
    "first_name",
    "last_name",
    "full_name",
    "title",
    "company_name",
    "company_domain",
    "email",
    "email_status",
    "email_confidence",
    "email_pattern",
    "check_syntax",
    "check_disposable",
    "check_role",
    "check_mx",
    "check_smtp",
    "linkedin_url",
    "headline",
    "location",
    "company_size_band",
    "source",
    "delivered_rank",
];

/// Spreadsheets execute a cell that starts with one of these as a formula (CSV injection), so
/// such text is prefixed with an apostrophe, which they display as plain text.
fn cell(s: Option<&str>) -> String {
    let s = s.unwrap_or_default();
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

fn json_word<T: serde::Serialize>(v: &Option<T>) -> String {
    v.as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The same rows as CSV: UTF-8 with a byte-order mark (so Excel picks the right encoding), CRLF
/// line ends as RFC 4180 says, and a header row.
pub fn render_csv(rows: &[DeliveredContact]) -> Vec<u8> {
    let mut out = Vec::new();
    write_csv(rows, &mut out);
    out
}

/// [`render_csv`], appended to `out`.
pub fn write_csv(rows: &[DeliveredContact], out: &mut Vec<u8>) {
    out.extend_from_slice(b"\xEF\xBB\xBF");
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    w.write_record(CSV_COLUMNS).expect("in-memory write");
    for (i, r) in rows.iter().enumerate() {
        let checks = r.email_checks.as_ref();
        let check = |f: fn(&crate::domain::email::EmailChecks) -> crate::domain::email::Check| {
            json_word(&checks.map(f))
        };
        let record = [
            cell(r.first_name.as_deref()),
            cell(r.last_name.as_deref()),
            cell(r.full_name.as_deref()),
            cell(r.title.as_deref()),
            cell(r.company_name.as_deref()),
            cell(r.company_domain.as_deref()),
            cell(r.email.as_deref()),
            json_word(&r.email_status),
            r.email_confidence
                .map(|c| c.to_string())
                .unwrap_or_default(),
            cell(r.email_pattern.as_deref()),
            check(|c| c.syntax),
            check(|c| c.disposable),
            check(|c| c.role),
            check(|c| c.mx),
            check(|c| c.smtp),
            cell(r.linkedin_url.as_deref()),
            cell(r.headline.as_deref()),
            cell(r.location.as_deref()),
            cell(r.company_size_band.as_deref()),
            cell(Some(&r.source)),
            (i + 1).to_string(),
        ];
        w.write_record(&record).expect("in-memory write");
    }
    w.flush().expect("in-memory flush");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(email: &str, name: &str, status: Option<EmailStatus>) -> DeliveredContact {
        DeliveredContact {
            full_name: Some(name.into()),
            company_domain: Some("acme.example".into()),
            email: Some(email.into()),
            email_status: status,
            source: "input".into(),
            ..Default::default()
        }
    }

    #[test]
    fn duplicates_by_email_or_by_person_are_dropped_and_the_first_wins() {
        let (rows, dropped) = finalize(vec![
            contact("ada@acme.example", "Ada L", Some(EmailStatus::Verified)),
            contact(
                "ADA@acme.example",
                "Ada Lovelace",
                Some(EmailStatus::Verified),
            ),
            contact("lovelace@acme.example", "ada l", Some(EmailStatus::Risky)),
        ]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].full_name.as_deref(), Some("Ada L"));
        assert_eq!(dropped.duplicates, 2);
    }

    #[test]
    fn invalid_and_address_less_contacts_are_not_delivered() {
        let mut nomail = contact("x@acme.example", "No Mail", None);
        nomail.email = None;
        let (rows, dropped) = finalize(vec![
            contact("bad@acme.example", "Bad", Some(EmailStatus::Invalid)),
            nomail,
            contact("ok@acme.example", "Ok", Some(EmailStatus::Unknown)),
        ]);
        assert_eq!(rows.len(), 1);
        assert_eq!(dropped.invalid, 1);
        assert_eq!(dropped.without_email, 1);
    }

    #[test]
    fn verified_contacts_rank_before_risky_and_unknown_ones() {
        let (rows, _) = finalize(vec![
            contact("u@acme.example", "U", Some(EmailStatus::Unknown)),
            contact("r@acme.example", "R", Some(EmailStatus::Risky)),
            contact("v@acme.example", "V", Some(EmailStatus::Verified)),
        ]);
        let order: Vec<_> = rows.iter().map(|r| r.full_name.clone().unwrap()).collect();
        assert_eq!(order, ["V", "R", "U"]);
        let mut s = Summary::default();
        count_statuses(&rows, &mut s);
        assert_eq!(
            (s.delivered_contacts, s.verified_emails, s.risky_emails),
            (3, 1, 1)
        );
    }

    #[test]
    fn csv_has_a_header_one_line_per_row_and_defuses_formulas() {
        let mut c = contact(
            "v@acme.example",
            "=HYPERLINK(\"x\")",
            Some(EmailStatus::Verified),
        );
        c.title = Some("Head of Sales, EMEA".into());
        let csv = String::from_utf8(render_csv(&[c])).unwrap();
        let csv = csv.trim_start_matches('\u{feff}');
        let lines: Vec<_> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("first_name,last_name"));
        assert!(
            lines[1].contains("\"'=HYPERLINK(\"\"x\"\")\""),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("\"Head of Sales, EMEA\""));
        assert!(lines[1].contains(",verified,"));
    }

    #[test]
    fn the_json_asset_is_an_array_with_one_object_per_row() {
        let rows = vec![contact("v@acme.example", "V", Some(EmailStatus::Verified))];
        let v: serde_json::Value = serde_json::from_slice(&render_json(&rows)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["email_status"], "verified");
    }
}
