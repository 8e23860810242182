//! Runs a job's planned stages in order over one in-memory working set, reporting progress as
//! it goes. The rules live in `domain::stages`; this module fetches what they need and keeps
//! score.

use super::sources::{CancelSignal, Directory, NeverCancel};
use super::{Reporter, WorkerError};
use crate::adapters::dns::{smtp_targets, CachedResolver, MailDomainResolver, MailHosts};
use crate::adapters::smtp::{ProbeOutcome, SmtpProber};
use crate::domain::email::EmailStatus;
use crate::domain::input::Company;
use crate::domain::messages::{Completed, RunJob};
use crate::domain::plan::Capability;
use crate::domain::stages::verify::{offline_checks, verdict, MxVerdict, SmtpVerdict};
use crate::domain::stages::{
    deliverable, discovery, lookup, qualification, size_band, DeliveredContact, DirectoryCompany,
    DirectoryPerson, Summary,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// What the stages reach outside the process through, and the limits a run keeps to.
#[derive(Clone)]
pub struct Sources {
    pub directory: Arc<dyn Directory>,
    pub dns: Arc<dyn MailDomainResolver>,
    /// `Some` only when `BDJOBS_SMTP_PROBE=on`.
    pub smtp: Option<Arc<dyn SmtpProber>>,
    pub cancel: Arc<dyn CancelSignal>,
    /// A run that takes longer fails. Kept below RabbitMQ's consumer timeout (30 min by
    /// default), so that the broker never takes a job away from a worker still running it.
    pub job_timeout: Duration,
    /// The least time between two progress events of one run (see `Reporter::sampling`).
    pub progress_every: Duration,
}

impl Sources {
    pub fn new(directory: Arc<dyn Directory>, dns: Arc<dyn MailDomainResolver>) -> Self {
        Self {
            directory,
            dns,
            smtp: None,
            cancel: Arc::new(NeverCancel),
            job_timeout: DEFAULT_JOB_TIMEOUT,
            progress_every: DEFAULT_PROGRESS_EVERY,
        }
    }

    pub fn with_smtp(mut self, smtp: Arc<dyn SmtpProber>) -> Self {
        self.smtp = Some(smtp);
        self
    }

    pub fn with_cancel(mut self, cancel: Arc<dyn CancelSignal>) -> Self {
        self.cancel = cancel;
        self
    }

    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// `Duration::ZERO` sends every progress report.
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every;
        self
    }
}

/// Four progress updates a second at most: smooth enough for a person watching, and a job done
/// sooner sends none.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// 20 minutes: well inside RabbitMQ's default 30-minute consumer timeout.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// How a run ended, short of an error.
#[derive(Debug)]
pub enum Ending {
    Completed(Completed),
    /// Stopped at a stage boundary because a client cancelled; carries the partial deliverable.
    Cancelled(Completed),
}

struct Work<'a> {
    run: &'a RunJob,
    sources: &'a Sources,
    companies: Vec<Company>,
    contacts: Vec<DeliveredContact>,
    directory_companies: HashMap<String, DirectoryCompany>,
    people: HashMap<String, Vec<DirectoryPerson>>,
    summary: Summary,
}

fn from_input(c: &crate::domain::input::Contact) -> DeliveredContact {
    DeliveredContact {
        first_name: c.first_name.clone(),
        last_name: c.last_name.clone(),
        full_name: c.full_name.clone(),
        title: c.title.clone(),
        company_name: c.company_name.clone(),
        company_domain: c.company_domain.clone(),
        email: c.email.clone(),
        email_confidence: c.email.as_ref().map(|_| 1.0),
        linkedin_url: c.linkedin_url.clone(),
        source: "input".to_owned(),
        ..Default::default()
    }
}

/// "a.example, b.example and 3 more": keeps warnings readable for big jobs.
fn list_some(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

impl<'a> Work<'a> {
    /// Loads directory people for the domains not fetched yet.
    async fn ensure_people(&mut self, domains: Vec<String>) -> Result<(), WorkerError> {
        let missing: Vec<String> = domains
            .into_iter()
            .filter(|d| !self.people.contains_key(d))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let found = self.sources.directory.people(&missing).await?;
        for d in missing {
            self.people.entry(d).or_default();
        }
        for p in found {
            self.people
                .entry(p.company_domain.clone())
                .or_default()
                .push(p);
        }
        Ok(())
    }

    async fn ensure_companies(&mut self) -> Result<(), WorkerError> {
        let missing: Vec<String> = self
            .companies
            .iter()
            .map(|c| c.domain.clone())
            .filter(|d| !self.directory_companies.contains_key(d))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for c in self.sources.directory.companies(&missing).await? {
            self.directory_companies.insert(c.domain.clone(), c);
        }
        Ok(())
    }

    fn contact_domains(&self) -> Vec<String> {
        self.contacts
            .iter()
            .filter_map(|c| c.company_domain.clone())
            .collect()
    }

    async fn qualification(&mut self, r: &mut Reporter<'_>) -> Result<(), WorkerError> {
        self.ensure_companies().await?;
        let total = self.companies.len();
        r.stage(format!("Qualifying {total} companies...")).await?;
        let mut kept = Vec::with_capacity(total);
        let mut rejected = Vec::new();
        for c in std::mem::take(&mut self.companies) {
            match qualification::qualify(
                &c,
                self.directory_companies.get(&c.domain),
                &self.run.icp_config,
            ) {
                Ok(()) => kept.push(c),
                Err(reason) => rejected.push(format!("{} ({reason})", c.domain)),
            }
        }
        self.summary.companies_disqualified = rejected.len() as u64;
        if !rejected.is_empty() {
            r.warn(format!(
                "{} of {total} companies did not match the ideal-customer profile: {}",
                rejected.len(),
                list_some(&rejected)
            ))
            .await?;
        }
        // Contacts of a disqualified company go with it.
        let kept_domains: std::collections::HashSet<&str> =
            kept.iter().map(|c| c.domain.as_str()).collect();
        let all_domains: std::collections::HashSet<String> = self
            .run
            .input
            .companies
            .iter()
            .map(|c| c.domain.clone())
            .collect();
        self.contacts.retain(|c| {
            c.company_domain
                .as_deref()
                .is_none_or(|d| kept_domains.contains(d) || !all_domains.contains(d))
        });
        self.companies = kept;
        Ok(())
    }

    async fn company_size(&mut self, r: &mut Reporter<'_>) -> Result<(), WorkerError> {
        self.ensure_companies().await?;
        r.stage(format!("Sizing {} companies...", self.companies.len()))
            .await?;
        let mut unknown = Vec::new();
        let mut bands = HashMap::new();
        for c in &mut self.companies {
            let merged = qualification::merged_facts(c, self.directory_companies.get(&c.domain));
            c.employee_count = merged.employee_count;
            match c.employee_count {
                Some(n) => {
                    bands.insert(c.domain.clone(), size_band(n));
                }
                None => unknown.push(c.domain.clone()),
            }
        }
        for contact in &mut self.contacts {
            if let Some(band) = contact.company_domain.as_ref().and_then(|d| bands.get(d)) {
                contact.company_size_band = Some((*band).to_owned());
            }
        }
        if !unknown.is_empty() {
            r.warn(format!(
                "employee count unknown for {}",
                list_some(&unknown)
            ))
            .await?;
        }
        Ok(())
    }

    async fn contact_discovery(&mut self, r: &mut Reporter<'_>) -> Result<(), WorkerError> {
        let n = self.companies.len();
        r.stage(format!("Discovering contacts at {n} companies..."))
            .await?;
        let domains = self.companies.iter().map(|c| c.domain.clone()).collect();
        self.ensure_people(domains).await?;
        let mut none = Vec::new();
        for (i, c) in self.companies.iter().enumerate() {
            let people = self.people.get(&c.domain).cloned().unwrap_or_default();
            let chosen = discovery::select_people(people, &self.run.execution_options);
            if chosen.is_empty() {
                none.push(c.domain.clone());
            }
            self.summary.contacts_discovered += chosen.len() as u64;
            let band = c.employee_count.map(size_band);
            for p in &chosen {
                let mut contact = discovery::person_to_contact(p, &c.name);
                contact.company_size_band = band.map(str::to_owned);
                self.contacts.push(contact);
            }
            r.item(i + 1, n, "Discovering contacts").await?;
        }
        if !none.is_empty() {
            r.warn(format!(
                "no matching contacts found at {}",
                list_some(&none)
            ))
            .await?;
        }
        Ok(())
    }

    async fn email_lookup(&mut self, r: &mut Reporter<'_>) -> Result<(), WorkerError> {
        let wanting: Vec<usize> = (0..self.contacts.len())
            .filter(|&i| self.contacts[i].email.is_none())
            .collect();
        r.stage(format!(
            "Looking up emails for {} contacts...",
            wanting.len()
        ))
        .await?;
        self.ensure_people(self.contact_domains()).await?;
        let mut guesses = HashMap::new();
        let mut unresolved = 0;
        for (k, &i) in wanting.iter().enumerate() {
            let Some(domain) = self.contacts[i].company_domain.clone() else {
                unresolved += 1;
                continue;
            };
            let guess = guesses
                .entry(domain.clone())
                .or_insert_with(|| {
                    let people = self.people.get(&domain).map(Vec::as_slice).unwrap_or(&[]);
                    lookup::guess_for(&domain, &self.contacts, people)
                })
                .clone();
            if !lookup::lookup(&mut self.contacts[i], guess.as_ref()) {
                unresolved += 1;
            }
            r.item(k + 1, wanting.len(), "Looking up emails").await?;
        }
        if unresolved > 0 {
            r.warn(format!(
                "no email could be inferred for {unresolved} contact(s) (no name or company domain)"
            ))
            .await?;
        }
        Ok(())
    }

    async fn email_verify(&mut self, r: &mut Reporter<'_>) -> Result<(), WorkerError> {
        let with_email: Vec<usize> = (0..self.contacts.len())
            .filter(|&i| self.contacts[i].email.is_some())
            .collect();
        let n = with_email.len();
        r.stage(format!("Verifying emails (0/{n})...")).await?;
        // One cache per job: the same domain is asked once however many contacts share it.
        let dns = CachedResolver::new(self.sources.dns.clone());
        let mut no_mail: BTreeMap<String, usize> = BTreeMap::new();
        let mut dns_unknown: BTreeMap<String, usize> = BTreeMap::new();
        for (k, &i) in with_email.iter().enumerate() {
            let email = self.contacts[i].email.clone().unwrap_or_default();
            let (status, checks) = match offline_checks(&email) {
                Err(checks) => (EmailStatus::Invalid, checks),
                Ok((parsed, checks)) => {
                    let hosts = dns.mail_hosts(&parsed.domain).await;
                    let mx = match &hosts {
                        MailHosts::Found(_) => MxVerdict::MailServer,
                        MailHosts::Implicit(_) => MxVerdict::ImplicitMx,
                        MailHosts::NoMailServer => {
                            *no_mail.entry(parsed.domain.clone()).or_default() += 1;
                            MxVerdict::NoMailServer
                        }
                        MailHosts::Unknown(_) => {
                            *dns_unknown.entry(parsed.domain.clone()).or_default() += 1;
                            MxVerdict::Unknown
                        }
                    };
                    let smtp = match (&self.sources.smtp, mx) {
                        (Some(prober), MxVerdict::MailServer | MxVerdict::ImplicitMx) => {
                            let ips = smtp_targets(&dns, &hosts).await;
                            match prober.probe(&ips, &parsed.address).await {
                                ProbeOutcome::Accepted => SmtpVerdict::Accepted,
                                ProbeOutcome::AcceptedCatchAll => SmtpVerdict::CatchAll,
                                ProbeOutcome::Rejected(..) => SmtpVerdict::Rejected,
                                ProbeOutcome::Unknown(_) => SmtpVerdict::Unknown,
                            }
                        }
                        _ => SmtpVerdict::NotProbed,
                    };
                    let (status, checks) = verdict(checks, mx, smtp);
                    self.contacts[i].email = Some(parsed.address);
                    (status, checks)
                }
            };
            let c = &mut self.contacts[i];
            c.email_status = Some(status);
            c.email_checks = Some(checks);
            r.item(k + 1, n, "Verifying emails").await?;
        }
        // One warning per kind, however many domains: a warning per domain made a job with
        // thousands of dead domains thousands of events, each folded into the view.
        for warning in [
            domains_warning(
                &no_mail,
                "has no mail server",
                "have no mail server",
                "dropped",
            ),
            domains_warning(
                &dns_unknown,
                "did not finish its DNS lookup",
                "did not finish their DNS lookups",
                "marked unknown",
            ),
        ]
        .into_iter()
        .flatten()
        {
            r.warn(warning).await?;
        }
        Ok(())
    }

    async fn linkedin_enrich(&mut self, r: &mut Reporter<'_>) -> Result<(), WorkerError> {
        let n = self.contacts.len();
        r.stage(format!("Enriching {n} contacts...")).await?;
        self.ensure_people(self.contact_domains()).await?;
        let mut unmatched = 0;
        for i in 0..n {
            let domain = self.contacts[i].company_domain.clone().unwrap_or_default();
            let people = self.people.get(&domain).map(Vec::as_slice).unwrap_or(&[]);
            if !discovery::enrich(&mut self.contacts[i], people) {
                unmatched += 1;
            }
            r.item(i + 1, n, "Enriching contacts").await?;
        }
        if unmatched > 0 {
            r.warn(format!(
                "{unmatched} contact(s) had no directory profile to enrich from"
            ))
            .await?;
        }
        Ok(())
    }

    async fn finalize(mut self, r: &mut Reporter<'_>) -> Result<Completed, WorkerError> {
        r.stage("Finalising the deliverable...".to_owned()).await?;
        let (rows, dropped) = deliverable::finalize(std::mem::take(&mut self.contacts));
        if dropped.duplicates > 0 {
            r.warn(format!(
                "{} duplicate contact(s) removed",
                dropped.duplicates
            ))
            .await?;
        }
        if dropped.without_email > 0 {
            r.warn(format!(
                "{} contact(s) without an email were not delivered",
                dropped.without_email
            ))
            .await?;
        }
        self.summary.invalid_emails = dropped.invalid as u64;
        deliverable::count_statuses(&rows, &mut self.summary);
        self.summary.companies_processed = if self.companies.is_empty() {
            rows.iter()
                .filter_map(|c| c.company_domain.as_deref())
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64
        } else {
            self.companies.len() as u64
        };
        Ok(Completed {
            summary: self.summary,
            contacts: rows,
        })
    }
}

/// Runs every planned stage. Before each one it checks for a cancellation; on one it finalises
/// what it has as a partial deliverable. Errors are the worker's to classify.
pub async fn run_stages(
    run: &RunJob,
    job: crate::domain::ids::JobId,
    sources: &Sources,
    r: &mut Reporter<'_>,
) -> Result<Ending, WorkerError> {
    let mut w = Work {
        run,
        sources,
        companies: run.input.companies.clone(),
        contacts: run.input.contacts.iter().map(from_input).collect(),
        directory_companies: HashMap::new(),
        people: HashMap::new(),
        summary: Summary::default(),
    };
    let stages = &run.plan.capabilities;
    for (i, stage) in stages.iter().enumerate() {
        if sources.cancel.requested(job).await {
            r.enter(Capability::DeliverableFinalize, i, stages.len());
            return Ok(Ending::Cancelled(w.finalize(r).await?));
        }
        r.enter(*stage, i, stages.len());
        match stage {
            Capability::Qualification => w.qualification(r).await?,
            Capability::CompanySize => w.company_size(r).await?,
            Capability::ContactDiscovery => w.contact_discovery(r).await?,
            Capability::EmailLookup => w.email_lookup(r).await?,
            Capability::EmailVerify => w.email_verify(r).await?,
            Capability::LinkedinEnrich => w.linkedin_enrich(r).await?,
            Capability::DeliverableFinalize => return Ok(Ending::Completed(w.finalize(r).await?)),
        }
    }
    // The planner always ends a plan with finalisation; a command that does not is malformed.
    Err(WorkerError::Fatal(
        "the plan does not end with deliverable_finalize".to_owned(),
    ))
}

/// One warning about many domains and the contacts each affected: the first few named (in
/// Unicode, for people), the rest counted. `None` when there are none.
fn domains_warning(
    domains: &BTreeMap<String, usize>,
    one: &str,
    many: &str,
    outcome: &str,
) -> Option<String> {
    const NAMED: usize = 5;
    let contacts: usize = domains.values().sum();
    let mut named = domains
        .iter()
        .take(NAMED)
        .map(|(d, n)| format!("{} ({n})", crate::domain::email::display_domain(d)))
        .collect::<Vec<_>>()
        .join(", ");
    match domains.len() {
        0 => None,
        1 => {
            let domain = domains
                .keys()
                .next()
                .map(|d| crate::domain::email::display_domain(d))?;
            Some(format!("{domain} {one}; {contacts} contact(s) {outcome}"))
        }
        n => {
            if n > NAMED {
                named.push_str(&format!(" and {} more", n - NAMED));
            }
            Some(format!(
                "{n} domains {many}: {named}; {contacts} contact(s) {outcome}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dead_domain_reads_as_before() {
        let one = BTreeMap::from([("quietharbor.test".to_owned(), 1)]);
        assert_eq!(
            domains_warning(&one, "has no mail server", "have no mail server", "dropped").unwrap(),
            "quietharbor.test has no mail server; 1 contact(s) dropped"
        );
        assert_eq!(domains_warning(&BTreeMap::new(), "x", "y", "z"), None);
    }

    #[test]
    fn thousands_of_dead_domains_make_one_short_warning() {
        let domains: BTreeMap<String, usize> = (0..5000)
            .map(|i| (format!("d{i:04}.example"), 2))
            .chain([("xn--wgv71a119e.jp".to_owned(), 1)])
            .collect();
        let w = domains_warning(
            &domains,
            "has no mail server",
            "have no mail server",
            "dropped",
        )
        .unwrap();
        assert_eq!(
            w,
            "5001 domains have no mail server: d0000.example (2), d0001.example (2), \
d0002.example (2), d0003.example (2), d0004.example (2) and 4996 more; 10001 contact(s) dropped"
        );
        let idn = BTreeMap::from([("xn--wgv71a119e.jp".to_owned(), 3)]);
        assert!(domains_warning(&idn, "has no mail server", "-", "dropped")
            .unwrap()
            .starts_with("日本語.jp has no mail server"));
    }
}
