//! `contact_discovery` and `linkedin_enrich`: people at a company, chosen and described from the
//! directory.

use super::{DeliveredContact, DirectoryPerson, ExecutionOptions};

const SENIORITIES: [&str; 6] = ["c_level", "vp", "director", "manager", "senior", "entry"];

/// 0 is the most senior. `None` for a value outside the documented list.
pub fn seniority_rank(s: &str) -> Option<usize> {
    SENIORITIES
        .iter()
        .position(|x| x.eq_ignore_ascii_case(s.trim()))
}

fn matches_filters(p: &DirectoryPerson, opts: &ExecutionOptions) -> bool {
    let title_ok = opts.target_titles.is_empty()
        || p.title.as_deref().is_some_and(|t| {
            let t = t.to_lowercase();
            opts.target_titles
                .iter()
                .any(|want| t.contains(&want.trim().to_lowercase()))
        });
    let seniority_ok = opts.seniorities.is_empty()
        || p.seniority.as_deref().is_some_and(|s| {
            opts.seniorities
                .iter()
                .any(|want| want.trim().eq_ignore_ascii_case(s))
        });
    title_ok && seniority_ok
}

/// The people to deliver for one company: filtered by the options, most senior first, capped.
pub fn select_people(
    mut people: Vec<DirectoryPerson>,
    opts: &ExecutionOptions,
) -> Vec<DirectoryPerson> {
    people.retain(|p| matches_filters(p, opts));
    people.sort_by(|a, b| {
        let rank = |p: &DirectoryPerson| {
            p.seniority
                .as_deref()
                .and_then(seniority_rank)
                .unwrap_or(SENIORITIES.len())
        };
        rank(a)
            .cmp(&rank(b))
            .then_with(|| a.last_name.cmp(&b.last_name))
            .then_with(|| a.first_name.cmp(&b.first_name))
    });
    people.truncate(opts.contacts_per_company());
    people
}

/// A discovered person as a contact. The directory's email, when it has one, is carried over: it
/// is still verified like any other.
pub fn person_to_contact(p: &DirectoryPerson, company_name: &str) -> DeliveredContact {
    DeliveredContact {
        first_name: Some(p.first_name.clone()),
        last_name: Some(p.last_name.clone()),
        full_name: Some(format!("{} {}", p.first_name, p.last_name)),
        title: p.title.clone(),
        company_name: Some(company_name.to_owned()),
        company_domain: Some(p.company_domain.clone()),
        email: p.email.clone(),
        email_confidence: p.email.as_ref().map(|_| 1.0),
        linkedin_url: p.linkedin_url.clone(),
        headline: p.headline.clone(),
        location: p.location.clone(),
        source: "directory".to_owned(),
        ..Default::default()
    }
}

fn same_person(p: &DirectoryPerson, c: &DeliveredContact) -> bool {
    if let (Some(url), Some(purl)) = (&c.linkedin_url, &p.linkedin_url) {
        if url.eq_ignore_ascii_case(purl) {
            return true;
        }
    }
    if let (Some(e), Some(pe)) = (&c.email, &p.email) {
        if e.eq_ignore_ascii_case(pe) {
            return true;
        }
    }
    let full = format!("{} {}", p.first_name, p.last_name);
    c.company_domain.as_deref() == Some(p.company_domain.as_str())
        && c.full_name
            .as_deref()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(&full))
}

/// `linkedin_enrich`: fills profile URL, headline and location from the matching directory person.
/// Returns whether a match was found.
pub fn enrich(contact: &mut DeliveredContact, people: &[DirectoryPerson]) -> bool {
    let Some(p) = people.iter().find(|p| same_person(p, contact)) else {
        return false;
    };
    contact.linkedin_url = contact
        .linkedin_url
        .take()
        .or_else(|| p.linkedin_url.clone());
    contact.headline = contact.headline.take().or_else(|| p.headline.clone());
    contact.location = contact.location.take().or_else(|| p.location.clone());
    contact.title = contact.title.take().or_else(|| p.title.clone());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(first: &str, title: &str, seniority: &str) -> DirectoryPerson {
        DirectoryPerson {
            company_domain: "acme.example".into(),
            first_name: first.into(),
            last_name: "Doe".into(),
            title: Some(title.into()),
            seniority: Some(seniority.into()),
            email: None,
            linkedin_url: Some(format!("https://linkedin.example/in/{first}")),
            headline: Some(format!("{title} at Acme")),
            location: Some("Berlin".into()),
        }
    }

    #[test]
    fn the_most_senior_people_come_first_and_the_cap_holds() {
        let people = vec![
            person("Eve", "Engineer", "entry"),
            person("Cy", "CEO", "c_level"),
            person("Vi", "VP Sales", "vp"),
        ];
        let opts = ExecutionOptions {
            max_contacts_per_company: Some(2),
            ..Default::default()
        };
        let chosen: Vec<_> = select_people(people, &opts)
            .into_iter()
            .map(|p| p.first_name)
            .collect();
        assert_eq!(chosen, ["Cy", "Vi"]);
    }

    #[test]
    fn target_titles_filter_by_substring_ignoring_case() {
        let people = vec![
            person("Eve", "Engineer", "entry"),
            person("Vi", "VP Sales", "vp"),
        ];
        let opts = ExecutionOptions {
            target_titles: vec!["sales".into()],
            ..Default::default()
        };
        let chosen = select_people(people, &opts);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].first_name, "Vi");
    }

    #[test]
    fn enrichment_matches_by_name_at_the_same_company_and_keeps_what_the_client_gave() {
        let people = vec![person("Vi", "VP Sales", "vp")];
        let mut c = DeliveredContact {
            full_name: Some("vi doe".into()),
            company_domain: Some("acme.example".into()),
            location: Some("Paris".into()),
            ..Default::default()
        };
        assert!(enrich(&mut c, &people));
        assert_eq!(c.headline.as_deref(), Some("VP Sales at Acme"));
        assert_eq!(c.location.as_deref(), Some("Paris"));
        assert!(c.linkedin_url.is_some());
    }

    #[test]
    fn an_unknown_seniority_has_no_rank() {
        assert_eq!(seniority_rank("VP"), Some(1));
        assert_eq!(seniority_rank("overlord"), None);
    }
}
