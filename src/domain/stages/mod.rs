//! The BD stages as pure functions over plain data. The worker's pipeline fetches what a stage
//! needs (directory rows, DNS answers, SMTP replies) through small traits and hands it in here,
//! so every rule below is tested without a network or a database.

pub mod deliverable;
pub mod discovery;
pub mod lookup;
pub mod qualification;
pub mod verify;

use super::email::{EmailChecks, EmailStatus};
use super::input::check_list;
use serde::{Deserialize, Serialize};

/// `icp_config` as posted. Criteria apply only when `icp_gate` is `"apply"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "Ideal-customer-profile criteria for `qualification`. They apply only when `icp_gate` is `apply`; otherwise every company passes. Unknown fields are ignored."
)]
pub struct IcpConfig {
    /// `apply` to disqualify companies that miss the criteria; `skip` or absent to let every
    /// company pass.
    #[serde(default)]
    #[schema(value_type = Option<IcpGate>, inline)]
    pub icp_gate: Option<String>,
    /// Accepted industries (empty: any). At most 100 items.
    #[serde(default)]
    pub industries: Vec<String>,
    /// Accepted countries (empty: any). At most 100 items.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Smallest accepted head count. Greater than `max_employees` is accepted, with a warning:
    /// no company with a known head count can pass.
    #[serde(default, deserialize_with = "crate::domain::input::lenient_opt_u32")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub min_employees: Option<u32>,
    /// Largest accepted head count.
    #[serde(default, deserialize_with = "crate::domain::input::lenient_opt_u32")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub max_employees: Option<u32>,
    /// Keywords the company should match (empty: any). At most 100 items.
    #[serde(default)]
    pub keywords: Vec<String>,
}

// The values `icp_config.icp_gate` takes, for the OpenAPI document (the field stays a string,
// so that `IcpConfig::validate` words the refusal of any other value).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum IcpGate {
    Apply,
    Skip,
}

// One of `execution_options.seniorities`, for the OpenAPI document: the names
// `discovery::seniority_rank` knows, in any case, with spaces around.
#[derive(utoipa::ToSchema)]
#[schema(
    examples("c_level", "vp", "director", "manager", "senior", "entry"),
    pattern = "^ *([Cc]_[Ll][Ee][Vv][Ee][Ll]|[Vv][Pp]|[Dd][Ii][Rr][Ee][Cc][Tt][Oo][Rr]|[Mm][Aa][Nn][Aa][Gg][Ee][Rr]|[Ss][Ee][Nn][Ii][Oo][Rr]|[Ee][Nn][Tt][Rr][Yy]) *$"
)]
pub struct Seniority(pub String);

impl IcpConfig {
    pub fn applies(&self) -> bool {
        self.icp_gate.as_deref() == Some("apply")
    }

    pub fn validate(&self) -> Result<(), String> {
        match self.icp_gate.as_deref() {
            None | Some("apply") | Some("skip") => {}
            Some(other) => {
                return Err(format!(
                    "icp_config.icp_gate must be \"apply\" or \"skip\" (got {other:?})"
                ))
            }
        }
        check_list("icp_config.industries", &self.industries)?;
        check_list("icp_config.countries", &self.countries)?;
        check_list("icp_config.keywords", &self.keywords)?;
        Ok(())
    }

    /// An empty head-count range is legal (JSON Schema cannot refuse it, so the API does not
    /// either) but surely a mistake: the job says so in a warning.
    pub fn range_warning(&self) -> Option<String> {
        match (self.applies(), self.min_employees, self.max_employees) {
            (true, Some(lo), Some(hi)) if lo > hi => Some(format!(
                "icp_config.min_employees ({lo}) is greater than max_employees ({hi}): no company with a known head count can pass qualification"
            )),
            _ => None,
        }
    }
}

/// Default and upper bound of contacts discovered per company.
pub const DEFAULT_CONTACTS_PER_COMPANY: u32 = 10;
pub const MAX_CONTACTS_PER_COMPANY: u32 = 100;

/// `execution_options` as posted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(description = "Fine-grained controls of contact discovery. Unknown fields are ignored.")]
pub struct ExecutionOptions {
    /// Keep discovered people whose title contains one of these (case-insensitive); empty:
    /// any title. At most 100 items.
    #[serde(default)]
    pub target_titles: Vec<String>,
    /// Keep discovered people at one of these seniorities: `c_level`, `vp`, `director`,
    /// `manager`, `senior`, `entry` (case-insensitive; anything else is refused with 422);
    /// empty: any seniority. At most 100 items.
    #[serde(default)]
    #[schema(value_type = Vec<Seniority>, inline)]
    pub seniorities: Vec<String>,
    /// Contacts discovered per company, 1 to 100 (default 10).
    #[serde(default, deserialize_with = "crate::domain::input::lenient_opt_u32")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 100, default = 10)]
    pub max_contacts_per_company: Option<u32>,
}

impl ExecutionOptions {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(n) = self.max_contacts_per_company {
            if n == 0 || n > MAX_CONTACTS_PER_COMPANY {
                return Err(format!(
                    "execution_options.max_contacts_per_company must be 1 to {MAX_CONTACTS_PER_COMPANY} (got {n})"
                ));
            }
        }
        check_list("execution_options.target_titles", &self.target_titles)?;
        check_list("execution_options.seniorities", &self.seniorities)?;
        for s in &self.seniorities {
            if discovery::seniority_rank(s).is_none() {
                return Err(format!(
                    "execution_options.seniorities: unknown seniority {s:?}; expected c_level, vp, director, manager, senior or entry"
                ));
            }
        }
        Ok(())
    }

    pub fn contacts_per_company(&self) -> usize {
        self.max_contacts_per_company
            .unwrap_or(DEFAULT_CONTACTS_PER_COMPANY)
            .min(MAX_CONTACTS_PER_COMPANY) as usize
    }
}

/// A company as the directory knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryCompany {
    pub domain: String,
    pub name: String,
    pub employee_count: Option<u32>,
    pub industry: Option<String>,
    pub country: Option<String>,
    pub linkedin_url: Option<String>,
    pub keywords: Vec<String>,
}

/// A person as the directory knows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryPerson {
    pub company_domain: String,
    pub first_name: String,
    pub last_name: String,
    pub title: Option<String>,
    pub seniority: Option<String>,
    pub email: Option<String>,
    pub linkedin_url: Option<String>,
    pub headline: Option<String>,
    pub location: Option<String>,
}

/// One row of the deliverable, and the shape every contact has while it moves through the stages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "One row of the `verified_contacts` deliverable. Rows are de-duplicated, without `invalid` or missing e-mails, best status first."
)]
pub struct DeliveredContact {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
    pub title: Option<String>,
    pub company_name: Option<String>,
    /// Normalised ASCII domain.
    pub company_domain: Option<String>,
    pub email: Option<String>,
    /// Null when `email_verify` did not run.
    pub email_status: Option<EmailStatus>,
    /// Null when `email_verify` did not run.
    pub email_checks: Option<EmailChecks>,
    /// 1.0 for an address the client or directory supplied; the pattern's confidence for one
    /// `email_lookup` inferred.
    #[schema(minimum = 0, maximum = 1)]
    pub email_confidence: Option<f64>,
    /// The pattern `email_lookup` used (`first.last`, `flast`, ...) when it produced the
    /// address.
    #[serde(default)]
    pub email_pattern: Option<String>,
    pub linkedin_url: Option<String>,
    #[serde(default)]
    pub headline: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    /// Employee-count band from `company_size`.
    #[serde(default)]
    #[schema(value_type = Option<SizeBand>, inline)]
    pub company_size_band: Option<String>,
    /// `input` for contacts the client sent, `directory` for discovered ones.
    #[schema(examples("input", "directory"))]
    pub source: String,
}

// The values of `company_size_band`, for the OpenAPI document: what `size_band` returns.
#[derive(utoipa::ToSchema)]
pub enum SizeBand {
    #[schema(rename = "1-10")]
    B1,
    #[schema(rename = "11-50")]
    B11,
    #[schema(rename = "51-200")]
    B51,
    #[schema(rename = "201-500")]
    B201,
    #[schema(rename = "501-1000")]
    B501,
    #[schema(rename = "1001-5000")]
    B1001,
    #[schema(rename = "5001-10000")]
    B5001,
    #[schema(rename = "10001+")]
    B10001,
}

/// The result summary. The first three keys are the public ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "Aggregated delivery counts. `delivered_contacts`, `verified_emails` and `companies_processed` are always present; the other keys are present in this implementation and more may be added, always as non-negative integers. All zero until the job completes."
)]
pub struct Summary {
    /// Rows in the deliverable.
    pub delivered_contacts: u64,
    /// Delivered rows whose e-mail is `verified`.
    pub verified_emails: u64,
    /// Companies the pipeline worked on.
    pub companies_processed: u64,
    /// Companies `qualification` dropped.
    #[serde(default)]
    pub companies_disqualified: u64,
    /// Contacts `contact_discovery` found.
    #[serde(default)]
    pub contacts_discovered: u64,
    /// Delivered rows whose e-mail is `risky`.
    #[serde(default)]
    pub risky_emails: u64,
    /// Contacts dropped because their e-mail is `invalid`.
    #[serde(default)]
    pub invalid_emails: u64,
    /// Delivered rows whose e-mail could not be verified either way.
    #[serde(default)]
    pub unknown_emails: u64,
    /// Delivered rows whose e-mail was not verified (`email_verify` not planned).
    #[serde(default)]
    pub unverified_emails: u64,
}

/// Employee-count bands, as sales teams usually segment them.
pub fn size_band(employees: u32) -> &'static str {
    match employees {
        0..=10 => "1-10",
        11..=50 => "11-50",
        51..=200 => "51-200",
        201..=500 => "201-500",
        501..=1000 => "501-1000",
        1001..=5000 => "1001-5000",
        5001..=10000 => "5001-10000",
        _ => "10001+",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_bands_have_inclusive_upper_edges() {
        assert_eq!(size_band(10), "1-10");
        assert_eq!(size_band(11), "11-50");
        assert_eq!(size_band(200), "51-200");
        assert_eq!(size_band(10_001), "10001+");
    }

    #[test]
    fn an_unknown_icp_gate_value_is_refused() {
        let icp = IcpConfig {
            icp_gate: Some("maybe".into()),
            ..Default::default()
        };
        assert!(icp.validate().unwrap_err().contains("maybe"));
    }

    #[test]
    fn list_options_past_their_count_limit_are_refused() {
        let many = vec!["saas".to_owned(); crate::domain::input::MAX_LIST_ITEMS + 1];
        let icp = IcpConfig {
            keywords: many.clone(),
            ..Default::default()
        };
        assert!(icp
            .validate()
            .unwrap_err()
            .starts_with("icp_config.keywords: 101 items"));
        let icp = IcpConfig {
            industries: many.clone(),
            ..Default::default()
        };
        assert!(icp
            .validate()
            .unwrap_err()
            .starts_with("icp_config.industries: 101 items"));
        let o = ExecutionOptions {
            target_titles: many,
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .starts_with("execution_options.target_titles: 101 items"));
    }

    #[test]
    fn execution_options_bound_the_contacts_per_company() {
        let o = ExecutionOptions {
            max_contacts_per_company: Some(0),
            ..Default::default()
        };
        assert!(o.validate().is_err());
        assert_eq!(ExecutionOptions::default().contacts_per_company(), 10);
    }
}
