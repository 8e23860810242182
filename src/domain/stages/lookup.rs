//! `email_lookup`: an address for a contact who has none, from the company's address pattern.

use super::{DeliveredContact, DirectoryPerson};
use crate::domain::email::{
    infer_pattern, KnownAddress, PatternGuess, FALLBACK, FALLBACK_CONFIDENCE,
};

/// Every address at `domain` whose owner's name we know: the directory's and the client's.
pub fn known_addresses(
    domain: &str,
    contacts: &[DeliveredContact],
    people: &[DirectoryPerson],
) -> Vec<KnownAddress> {
    let at = format!("@{domain}");
    let from_people = people.iter().filter_map(|p| {
        let email = p.email.as_ref()?;
        email.to_lowercase().ends_with(&at).then(|| KnownAddress {
            first_name: p.first_name.clone(),
            last_name: p.last_name.clone(),
            email: email.clone(),
        })
    });
    let from_contacts = contacts.iter().filter_map(|c| {
        let email = c.email.as_ref()?;
        let (first, last) = (c.first_name.as_ref()?, c.last_name.as_ref()?);
        email.to_lowercase().ends_with(&at).then(|| KnownAddress {
            first_name: first.clone(),
            last_name: last.clone(),
            email: email.clone(),
        })
    });
    let mut all: Vec<KnownAddress> = from_people.chain(from_contacts).collect();
    all.sort_by_key(|a| a.email.to_lowercase());
    all.dedup_by(|a, b| a.email.eq_ignore_ascii_case(&b.email));
    all
}

/// Fills `email`, `email_confidence` and `email_pattern` for a contact without an address.
/// `guess` is the domain's inferred pattern; without one the common `first.last` is used at a
/// low confidence. Returns whether an address was produced.
pub fn lookup(contact: &mut DeliveredContact, guess: Option<&PatternGuess>) -> bool {
    if contact.email.is_some() {
        return false;
    }
    let (Some(first), Some(last), Some(domain)) = (
        contact.first_name.as_deref(),
        contact.last_name.as_deref(),
        contact.company_domain.as_deref(),
    ) else {
        return false;
    };
    let (pattern, confidence) = match guess {
        Some(g) => (g.pattern, g.confidence),
        None => (FALLBACK, FALLBACK_CONFIDENCE),
    };
    let Some(address) = pattern.render(first, last, domain) else {
        return false;
    };
    contact.email = Some(address);
    contact.email_confidence = Some((confidence * 100.0).round() / 100.0);
    contact.email_pattern = Some(pattern.name().to_owned());
    true
}

/// The pattern guess for one domain.
pub fn guess_for(
    domain: &str,
    contacts: &[DeliveredContact],
    people: &[DirectoryPerson],
) -> Option<PatternGuess> {
    infer_pattern(&known_addresses(domain, contacts, people))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(first: &str, last: &str, email: &str) -> DirectoryPerson {
        DirectoryPerson {
            company_domain: "acme.example".into(),
            first_name: first.into(),
            last_name: last.into(),
            title: None,
            seniority: None,
            email: Some(email.into()),
            linkedin_url: None,
            headline: None,
            location: None,
        }
    }

    fn nameless_contact() -> DeliveredContact {
        DeliveredContact {
            first_name: Some("Grace".into()),
            last_name: Some("Hopper".into()),
            company_domain: Some("acme.example".into()),
            source: "input".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_domain_pattern_is_learned_from_known_addresses() {
        let people = vec![
            person("Ada", "Lovelace", "alovelace@acme.example"),
            person("Alan", "Turing", "aturing@acme.example"),
        ];
        let guess = guess_for("acme.example", &[], &people).unwrap();
        let mut c = nameless_contact();
        assert!(lookup(&mut c, Some(&guess)));
        assert_eq!(c.email.as_deref(), Some("ghopper@acme.example"));
        assert_eq!(c.email_pattern.as_deref(), Some("flast"));
        assert!(c.email_confidence.unwrap() > 0.5);
    }

    #[test]
    fn without_known_addresses_first_dot_last_is_guessed_at_low_confidence() {
        let mut c = nameless_contact();
        assert!(lookup(&mut c, None));
        assert_eq!(c.email.as_deref(), Some("grace.hopper@acme.example"));
        assert!(c.email_confidence.unwrap() < 0.5);
    }

    #[test]
    fn a_contact_that_has_an_address_keeps_it() {
        let mut c = nameless_contact();
        c.email = Some("grace@acme.example".into());
        assert!(!lookup(&mut c, None));
        assert_eq!(c.email.as_deref(), Some("grace@acme.example"));
    }
}
