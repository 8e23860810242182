//! `qualification`: does a company fit the ideal-customer profile?

use super::{DirectoryCompany, IcpConfig};
use crate::domain::input::Company;

/// What qualification knows about a company: the client's record, completed from the directory.
pub fn merged_facts(company: &Company, dir: Option<&DirectoryCompany>) -> Company {
    let mut c = company.clone();
    if let Some(d) = dir {
        c.employee_count = c.employee_count.or(d.employee_count);
        c.industry = c.industry.clone().or_else(|| d.industry.clone());
        c.country = c.country.clone().or_else(|| d.country.clone());
        c.linkedin_url = c.linkedin_url.clone().or_else(|| d.linkedin_url.clone());
    }
    c
}

fn eq_any(value: Option<&str>, wanted: &[String]) -> bool {
    value.is_some_and(|v| {
        wanted
            .iter()
            .any(|w| w.trim().eq_ignore_ascii_case(v.trim()))
    })
}

/// `Ok` when the company passes, else the human reason it does not. A criterion whose fact is
/// unknown fails: a gate that lets unknowns through is not a gate.
pub fn qualify(
    company: &Company,
    dir: Option<&DirectoryCompany>,
    icp: &IcpConfig,
) -> Result<(), String> {
    if !icp.applies() {
        return Ok(());
    }
    let c = merged_facts(company, dir);
    if !icp.industries.is_empty() && !eq_any(c.industry.as_deref(), &icp.industries) {
        return Err(format!(
            "industry {} is not in the profile",
            c.industry.as_deref().unwrap_or("unknown")
        ));
    }
    if !icp.countries.is_empty() && !eq_any(c.country.as_deref(), &icp.countries) {
        return Err(format!(
            "country {} is not in the profile",
            c.country.as_deref().unwrap_or("unknown")
        ));
    }
    if icp.min_employees.is_some() || icp.max_employees.is_some() {
        let Some(n) = c.employee_count else {
            return Err("employee count unknown".to_owned());
        };
        if icp.min_employees.is_some_and(|lo| n < lo) || icp.max_employees.is_some_and(|hi| n > hi)
        {
            return Err(format!("{n} employees is outside the profile's range"));
        }
    }
    if !icp.keywords.is_empty() {
        let mut haystack = format!(
            "{} {} {}",
            c.name,
            c.domain,
            c.industry.as_deref().unwrap_or_default()
        );
        if let Some(d) = dir {
            haystack.push(' ');
            haystack.push_str(&d.keywords.join(" "));
        }
        let haystack = haystack.to_lowercase();
        if !icp
            .keywords
            .iter()
            .any(|k| haystack.contains(&k.trim().to_lowercase()))
        {
            return Err("no profile keyword matches".to_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn company() -> Company {
        Company {
            name: "Acme".into(),
            domain: "acme.example".into(),
            employee_count: None,
            industry: Some("Software".into()),
            country: None,
            linkedin_url: None,
        }
    }

    fn gate() -> IcpConfig {
        IcpConfig {
            icp_gate: Some("apply".into()),
            ..Default::default()
        }
    }

    #[test]
    fn without_the_gate_every_company_passes() {
        let icp = IcpConfig {
            industries: vec!["Mining".into()],
            ..Default::default()
        };
        assert!(qualify(&company(), None, &icp).is_ok());
    }

    #[test]
    fn industries_match_case_insensitively() {
        let icp = IcpConfig {
            industries: vec!["software".into()],
            ..gate()
        };
        assert!(qualify(&company(), None, &icp).is_ok());
    }

    #[test]
    fn the_directory_fills_facts_the_client_left_out() {
        let dir = DirectoryCompany {
            domain: "acme.example".into(),
            name: "Acme".into(),
            employee_count: Some(120),
            industry: None,
            country: Some("DE".into()),
            linkedin_url: None,
            keywords: vec!["robotics".into()],
        };
        let icp = IcpConfig {
            countries: vec!["de".into()],
            min_employees: Some(50),
            max_employees: Some(500),
            keywords: vec!["Robotics".into()],
            ..gate()
        };
        assert!(qualify(&company(), Some(&dir), &icp).is_ok());
        let small = IcpConfig {
            max_employees: Some(100),
            ..icp
        };
        assert!(qualify(&company(), Some(&dir), &small)
            .unwrap_err()
            .contains("120 employees"));
    }

    #[test]
    fn an_unknown_fact_fails_its_criterion() {
        let icp = IcpConfig {
            min_employees: Some(10),
            ..gate()
        };
        assert_eq!(
            qualify(&company(), None, &icp).unwrap_err(),
            "employee count unknown"
        );
    }
}
