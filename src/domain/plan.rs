//! What a job will do: presets, capabilities, and the planner that turns a request into an
//! ordered list of stages plus planning warnings.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One unit of BD work. The declaration order is the canonical execution order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[schema(description = "One unit of BD work. The listed order is the execution order.")]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Qualification,
    CompanySize,
    ContactDiscovery,
    EmailLookup,
    EmailVerify,
    LinkedinEnrich,
    DeliverableFinalize,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Qualification,
        Capability::CompanySize,
        Capability::ContactDiscovery,
        Capability::EmailLookup,
        Capability::EmailVerify,
        Capability::LinkedinEnrich,
        Capability::DeliverableFinalize,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Qualification => "qualification",
            Capability::CompanySize => "company_size",
            Capability::ContactDiscovery => "contact_discovery",
            Capability::EmailLookup => "email_lookup",
            Capability::EmailVerify => "email_verify",
            Capability::LinkedinEnrich => "linkedin_enrich",
            Capability::DeliverableFinalize => "deliverable_finalize",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(
    description = "A named set of capabilities (`deliverable_finalize` is always appended):\n- `full_pipeline`: qualification, company_size, contact_discovery, email_lookup, email_verify;\n- `verify_existing_emails`: email_verify;\n- `company_size_and_email_verify`: company_size, email_verify;\n- `enrich_contacts_from_companies`: contact_discovery, email_lookup, linkedin_enrich."
)]
pub enum Preset {
    FullPipeline,
    VerifyExistingEmails,
    CompanySizeAndEmailVerify,
    EnrichContactsFromCompanies,
}

/// The one table of what each preset runs (the README repeats it). `deliverable_finalize` is
/// appended by the planner, so it is not listed here.
pub const PRESETS: [(Preset, &[Capability]); 4] = {
    use Capability::*;
    [
        (
            Preset::FullPipeline,
            &[
                Qualification,
                CompanySize,
                ContactDiscovery,
                EmailLookup,
                EmailVerify,
            ],
        ),
        (Preset::VerifyExistingEmails, &[EmailVerify]),
        (
            Preset::CompanySizeAndEmailVerify,
            &[CompanySize, EmailVerify],
        ),
        (
            Preset::EnrichContactsFromCompanies,
            &[ContactDiscovery, EmailLookup, LinkedinEnrich],
        ),
    ]
};

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::FullPipeline,
        Preset::VerifyExistingEmails,
        Preset::CompanySizeAndEmailVerify,
        Preset::EnrichContactsFromCompanies,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::FullPipeline => "full_pipeline",
            Preset::VerifyExistingEmails => "verify_existing_emails",
            Preset::CompanySizeAndEmailVerify => "company_size_and_email_verify",
            Preset::EnrichContactsFromCompanies => "enrich_contacts_from_companies",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn capabilities(self) -> &'static [Capability] {
        PRESETS
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, caps)| *caps)
            .unwrap_or(&[])
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the client asked for, before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Preset(&'a str),
    Capabilities(&'a [String]),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown preset {0:?}; expected one of: full_pipeline, verify_existing_emails, company_size_and_email_verify, enrich_contacts_from_companies")]
    UnknownPreset(String),
    #[error("unknown capability {0:?}; expected any of: qualification, company_size, contact_discovery, email_lookup, email_verify, linkedin_enrich, deliverable_finalize")]
    UnknownCapability(String),
    #[error("requested_capabilities must not be empty")]
    NoCapabilities,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub preset: Option<Preset>,
    /// Canonical order, no duplicates, always ending with `deliverable_finalize`.
    pub capabilities: Vec<Capability>,
}

impl Plan {
    pub fn has(&self, c: Capability) -> bool {
        self.capabilities.contains(&c)
    }
}

pub fn plan(request: Request<'_>) -> Result<Plan, PlanError> {
    let (preset, mut caps) = match request {
        Request::Preset(name) => {
            let preset =
                Preset::parse(name).ok_or_else(|| PlanError::UnknownPreset(name.to_owned()))?;
            (Some(preset), preset.capabilities().to_vec())
        }
        Request::Capabilities(names) => {
            if names.is_empty() {
                return Err(PlanError::NoCapabilities);
            }
            let caps = names
                .iter()
                .map(|n| {
                    Capability::parse(n).ok_or_else(|| PlanError::UnknownCapability(n.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (None, caps)
        }
    };
    caps.push(Capability::DeliverableFinalize);
    caps.sort();
    caps.dedup();
    Ok(Plan {
        preset,
        capabilities: caps,
    })
}

/// The facts about the input that planning warnings depend on.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputShape {
    pub companies: usize,
    pub contacts: usize,
    pub contacts_without_email: usize,
    pub icp_gate_applied: bool,
}

/// Non-fatal observations about a plan: things that will make part of the request do nothing.
pub fn planning_warnings(plan: &Plan, shape: InputShape) -> Vec<String> {
    use Capability::*;
    let mut w = Vec::new();
    let company_stages = [Qualification, CompanySize, ContactDiscovery];
    for c in company_stages {
        if plan.has(c) && shape.companies == 0 {
            w.push(format!(
                "{c} was requested but input_assets.companies is empty; it will have nothing to do"
            ));
        }
    }
    if plan.has(Qualification) && !shape.icp_gate_applied {
        w.push(
            "qualification was requested without icp_config.icp_gate = \"apply\"; every company passes"
                .to_owned(),
        );
    }
    let contacts_come_later = plan.has(ContactDiscovery);
    if plan.has(EmailVerify) && !plan.has(EmailLookup) && shape.contacts_without_email > 0 {
        w.push(format!(
            "email_verify was requested for {} contact(s) with no email and email_lookup is not planned; they will not be delivered",
            shape.contacts_without_email
        ));
    }
    if (plan.has(EmailLookup) || plan.has(EmailVerify) || plan.has(LinkedinEnrich))
        && shape.contacts == 0
        && !contacts_come_later
    {
        w.push(
            "contact stages were requested but input_assets.contacts is empty and contact_discovery is not planned"
                .to_owned(),
        );
    }
    if !plan.has(EmailVerify) {
        w.push("email_verify is not planned; delivered emails are unverified".to_owned());
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_pipeline_expands_in_order_and_ends_with_finalize() {
        let p = plan(Request::Preset("full_pipeline")).unwrap();
        let names: Vec<_> = p.capabilities.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "qualification",
                "company_size",
                "contact_discovery",
                "email_lookup",
                "email_verify",
                "deliverable_finalize"
            ]
        );
        assert_eq!(p.preset, Some(Preset::FullPipeline));
    }

    #[test]
    fn requested_capabilities_are_put_in_canonical_order_without_duplicates() {
        let req = vec![
            "email_verify".to_string(),
            "company_size".to_string(),
            "email_verify".to_string(),
        ];
        let p = plan(Request::Capabilities(&req)).unwrap();
        assert_eq!(
            p.capabilities,
            [
                Capability::CompanySize,
                Capability::EmailVerify,
                Capability::DeliverableFinalize
            ]
        );
        assert_eq!(p.preset, None);
    }

    #[test]
    fn an_unknown_preset_or_capability_is_an_error_that_names_it() {
        let e = plan(Request::Preset("everything")).unwrap_err();
        assert!(e.to_string().contains("everything"));
        let req = vec!["teleport".to_string()];
        let e = plan(Request::Capabilities(&req)).unwrap_err();
        assert!(e.to_string().contains("teleport"));
        assert_eq!(
            plan(Request::Capabilities(&[])).unwrap_err(),
            PlanError::NoCapabilities
        );
    }

    #[test]
    fn every_preset_is_in_the_table() {
        for p in Preset::ALL {
            assert!(!p.capabilities().is_empty(), "{p}");
            assert_eq!(Preset::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn verifying_contacts_without_email_and_no_lookup_warns() {
        let p = plan(Request::Preset("verify_existing_emails")).unwrap();
        let w = planning_warnings(
            &p,
            InputShape {
                contacts: 3,
                contacts_without_email: 2,
                ..Default::default()
            },
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("2 contact(s) with no email"));
    }

    #[test]
    fn a_well_formed_full_pipeline_request_has_no_warnings() {
        let p = plan(Request::Preset("full_pipeline")).unwrap();
        let w = planning_warnings(
            &p,
            InputShape {
                companies: 2,
                icp_gate_applied: true,
                ..Default::default()
            },
        );
        assert!(w.is_empty(), "{w:?}");
    }
}
