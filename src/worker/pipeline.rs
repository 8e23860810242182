//! Runs a job's planned stages in order over one in-memory working set, reporting progress as
//! it goes. The rules live in `domain::stages`; this module fetches what they need and keeps
//! score.

use super::sources::{CancelSignal, ChunkLog, Directory, NeverCancel, NoChunkLog};
use super::verify::{list_some, verify_addresses, Probing, VerifySettings};
use super::{Reporter, WorkerError};
use crate::adapters::dns::MailDomainResolver;
use crate::adapters::smtp::SmtpProber;
use crate::domain::input::Company;
use crate::domain::messages::{ChunkCompleted, ChunkOf, Completed, RunJob};
use crate::domain::plan::Capability;
use crate::domain::probe::VerifyProgress;
use crate::domain::stages::{
    discovery, lookup, qualification, size_band, DeliveredContact, DirectoryCompany,
    DirectoryPerson, Summary,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the stages reach outside the process through, and the limits a run keeps to.
#[derive(Clone)]
pub struct Sources {
    pub directory: Arc<dyn Directory>,
    pub dns: Arc<dyn MailDomainResolver>,
    /// `Some` only when `BDJOBS_SMTP_PROBE=on`: the prober with the limits and verdict cache
    /// the worker's jobs share.
    pub smtp: Option<Arc<Probing>>,
    pub cancel: Arc<dyn CancelSignal>,
    /// A run that reports no progress for this long fails (a no-progress timeout: a long job
    /// that keeps moving is never failed for being long).
    pub job_timeout: Duration,
    /// Jobs with more records than this run in chunks (`BDJOBS_CHUNK_SIZE`); `usize::MAX`
    /// (the default here, for embedding and tests) never splits.
    pub chunk_size: usize,
    /// Where a chunk learns which chunks of its job are done (the event log in production).
    pub chunk_log: Arc<dyn ChunkLog>,
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
            chunk_size: usize::MAX,
            chunk_log: Arc::new(NoChunkLog),
            progress_every: DEFAULT_PROGRESS_EVERY,
        }
    }

    /// Probing with production's settings (internal networks never probed).
    pub fn with_smtp(self, smtp: Arc<dyn SmtpProber>) -> Self {
        self.with_probing(smtp, VerifySettings::default())
    }

    pub fn with_probing(mut self, smtp: Arc<dyn SmtpProber>, settings: VerifySettings) -> Self {
        self.smtp = Some(Arc::new(Probing::new(smtp, settings)));
        self
    }

    pub fn with_cancel(mut self, cancel: Arc<dyn CancelSignal>) -> Self {
        self.cancel = cancel;
        self
    }

    /// Splits jobs of more than `size` records into chunks, whose reports `log` reads back.
    pub fn with_chunks(mut self, size: usize, log: Arc<dyn ChunkLog>) -> Self {
        self.chunk_size = size.max(1);
        self.chunk_log = log;
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

/// 20 minutes without progress.
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
        let emails: Vec<String> = with_email
            .iter()
            .map(|&i| self.contacts[i].email.clone().unwrap_or_default())
            .collect();
        let n = emails.len();
        r.stage(format!("Verifying emails: 0 of {n} checked"))
            .await?;
        // The engine reports from inside its own loop; the latest report is sent from here,
        // where the reporter lives, at the reporter's own pace.
        let latest: Arc<Mutex<Option<VerifyProgress>>> = Arc::default();
        let slot = latest.clone();
        let on_progress = move |p: VerifyProgress| {
            if let Ok(mut l) = slot.lock() {
                *l = Some(p);
            }
        };
        // Leave a tenth of the job's time for the rest of the run.
        let budget = self.sources.job_timeout.mul_f64(0.9);
        let run = verify_addresses(
            &emails,
            self.sources.dns.clone(),
            self.sources.smtp.as_deref(),
            budget,
            &on_progress,
        );
        tokio::pin!(run);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let found = loop {
            tokio::select! {
                found = &mut run => break found,
                _ = tick.tick() => {
                    let p = latest.lock().ok().and_then(|mut l| l.take());
                    if let Some(p) = p {
                        r.progress(p.fraction(), p.message(), Some((p.done, p.total))).await?;
                    }
                }
            }
        };
        // The last word of the engine (everything checked), unless a tick already sent it.
        let last = latest.lock().ok().and_then(|mut l| l.take());
        if let Some(p) = last {
            r.progress(p.fraction(), p.message(), Some((p.done, p.total)))
                .await?;
        }
        for (k, v) in found.verdicts.into_iter().enumerate() {
            let c = &mut self.contacts[with_email[k]];
            if let Some(address) = v.address {
                c.email = Some(address);
            }
            c.email_status = Some(v.status);
            c.email_checks = Some(v.checks);
        }
        for w in found.warnings {
            r.warn(w).await?;
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

    /// What the stages made of this run's records, before finalisation.
    fn into_chunk(self, chunk: ChunkOf) -> ChunkCompleted {
        ChunkCompleted {
            chunk,
            companies_kept: self.companies.len() as u64,
            companies_disqualified: self.summary.companies_disqualified,
            contacts_discovered: self.summary.contacts_discovered,
            contacts: self.contacts,
        }
    }

    async fn run(&mut self, stage: Capability, r: &mut Reporter<'_>) -> Result<(), WorkerError> {
        match stage {
            Capability::Qualification => self.qualification(r).await,
            Capability::CompanySize => self.company_size(r).await,
            Capability::ContactDiscovery => self.contact_discovery(r).await,
            Capability::EmailLookup => self.email_lookup(r).await,
            Capability::EmailVerify => self.email_verify(r).await,
            Capability::LinkedinEnrich => self.linkedin_enrich(r).await,
            Capability::DeliverableFinalize => Ok(()),
        }
    }

    fn new(run: &'a RunJob, sources: &'a Sources) -> Self {
        Work {
            run,
            sources,
            companies: run.input.companies.clone(),
            contacts: run.input.contacts.iter().map(from_input).collect(),
            directory_companies: HashMap::new(),
            people: HashMap::new(),
            summary: Summary::default(),
        }
    }
}

/// `deliverable_finalize`: assembles the chunks' rows into the deliverable (one chunk for a job
/// run in one piece) and says what was dropped.
pub async fn finalize(
    chunks: &[&ChunkCompleted],
    r: &mut Reporter<'_>,
) -> Result<Completed, WorkerError> {
    r.stage("Finalising the deliverable...".to_owned()).await?;
    let (done, dropped) = crate::domain::chunks::assemble(chunks);
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
    Ok(done)
}

/// The whole job as one chunk.
const WHOLE: ChunkOf = ChunkOf { index: 0, count: 1 };

/// Runs every planned stage. Before each one it checks for a cancellation; on one it finalises
/// what it has as a partial deliverable. Errors are the worker's to classify.
pub async fn run_stages(
    run: &RunJob,
    job: crate::domain::ids::JobId,
    sources: &Sources,
    r: &mut Reporter<'_>,
) -> Result<Ending, WorkerError> {
    let mut w = Work::new(run, sources);
    let stages = &run.plan.capabilities;
    for (i, stage) in stages.iter().enumerate() {
        if sources.cancel.requested(job).await {
            r.enter(Capability::DeliverableFinalize, i, stages.len());
            let partial = w.into_chunk(WHOLE);
            return Ok(Ending::Cancelled(finalize(&[&partial], r).await?));
        }
        r.enter(*stage, i, stages.len());
        if *stage == Capability::DeliverableFinalize {
            let all = w.into_chunk(WHOLE);
            return Ok(Ending::Completed(finalize(&[&all], r).await?));
        }
        w.run(*stage, r).await?;
    }
    Err(no_finalisation())
}

/// Runs one chunk of a chunked job: every planned stage but finalisation, which runs once over
/// all chunks when the last one is done. Cancellation is watched by the caller, which stops the
/// chunk at once rather than at a stage boundary.
pub async fn run_chunk_stages(
    run: &RunJob,
    chunk: ChunkOf,
    sources: &Sources,
    r: &mut Reporter<'_>,
) -> Result<ChunkCompleted, WorkerError> {
    let mut w = Work::new(run, sources);
    let stages = &run.plan.capabilities;
    for (i, stage) in stages.iter().enumerate() {
        r.enter(*stage, i, stages.len());
        if *stage == Capability::DeliverableFinalize {
            return Ok(w.into_chunk(chunk));
        }
        w.run(*stage, r).await?;
    }
    Err(no_finalisation())
}

// The planner always ends a plan with finalisation; a command that does not is malformed.
fn no_finalisation() -> WorkerError {
    WorkerError::Fatal("the plan does not end with deliverable_finalize".to_owned())
}
