//! Big jobs in chunks: how a job's input is split so that any worker may run any part of it, and
//! how the parts' results become one deliverable again. Pure; the worker does the messaging.
//!
//! A chunk holds whole domains where it can: a company travels with the input contacts at its
//! domain, and contacts of one domain stay together unless they are more than a chunk. The rules
//! of the stages that look across records (qualification dropping a disqualified company's
//! contacts, discovery per company, the address pattern `email_lookup` infers from a domain's
//! known addresses, the DNS answer per domain) look within a domain, so a chunk computes what the
//! whole job would have for its records (a domain cut into pieces has its pattern inferred per
//! piece). What looks across domains (dedupe, ranking, the summary) runs once, in [`assemble`],
//! over every chunk's rows.

use super::ids::MessageId;
use super::input::{Company, Contact, JobInput};
use super::messages::{ChunkCompleted, Completed, Position};
use super::stages::deliverable::{self, Dropped};
use super::stages::Summary;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Default `BDJOBS_CHUNK_SIZE`: records (companies and contacts) per chunk. At about half a
/// second per address for a naive SMTP probe, a chunk takes minutes, far inside RabbitMQ's
/// 30-minute consumer timeout, and a crash costs at most that.
pub const DEFAULT_CHUNK_SIZE: usize = 500;

/// Records of a job: what its size is counted in.
pub fn records(input: &JobInput) -> usize {
    input.companies.len() + input.contacts.len()
}

/// Splits `input` into chunks of at most `size` records, keeping each domain's records in one
/// chunk when they fit; a bigger domain's contacts are cut into pieces of `size`, except that a
/// company in the job keeps all its input contacts (a chunk of its own). Deterministic: the
/// same input always gives the same chunks, in the same order, so that a split redone after a
/// crash publishes the same chunks again.
pub fn split(input: &JobInput, size: usize) -> Vec<JobInput> {
    let size = size.max(1);
    // Groups in order of first appearance; a contact without a company domain is a group alone.
    let mut groups: Vec<(Vec<&Company>, Vec<&Contact>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for c in &input.companies {
        let g = *at.entry(c.domain.to_ascii_lowercase()).or_insert_with(|| {
            groups.push(Default::default());
            groups.len() - 1
        });
        groups[g].0.push(c);
    }
    for c in &input.contacts {
        let g = match &c.company_domain {
            Some(d) => *at.entry(d.to_ascii_lowercase()).or_insert_with(|| {
                groups.push(Default::default());
                groups.len() - 1
            }),
            None => {
                groups.push(Default::default());
                groups.len() - 1
            }
        };
        groups[g].1.push(c);
    }
    // A domain's contacts without their company in the job may be cut into pieces: nothing
    // but `email_lookup`'s pattern inference looks across them (it then infers per piece). A
    // company keeps all its contacts, since qualification decides for them together.
    let pieces = groups.into_iter().flat_map(|(companies, contacts)| {
        if companies.is_empty() && contacts.len() > size {
            contacts
                .chunks(size)
                .map(|piece| (Vec::new(), piece.to_vec()))
                .collect::<Vec<_>>()
        } else {
            vec![(companies, contacts)]
        }
    });
    let mut chunks: Vec<JobInput> = Vec::new();
    let mut current = JobInput::default();
    for (companies, contacts) in pieces {
        let n = companies.len() + contacts.len();
        if records(&current) > 0 && records(&current) + n > size {
            chunks.push(std::mem::take(&mut current));
        }
        current.companies.extend(companies.into_iter().cloned());
        current.contacts.extend(contacts.into_iter().cloned());
    }
    if records(&current) > 0 || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// One recorded `job.chunk_completed`, with what orders it among reports of the same chunk.
pub struct ChunkReport<'a> {
    pub position: Position,
    pub message_id: MessageId,
    pub done: &'a ChunkCompleted,
}

/// The chunks to assemble, in chunk order, once every one of `count` has reported; `None`
/// while some are missing. A chunk run twice (a crash after its report was sent, a duplicated
/// command) may have two reports: the one at the earliest position is taken, the rule the fold
/// applies to outcomes, so that every worker that assembles picks the same rows.
pub fn complete_set<'a>(
    reports: &[ChunkReport<'a>],
    count: u32,
) -> Option<Vec<&'a ChunkCompleted>> {
    let best = earliest_each(reports);
    (0..count)
        .map(|i| best.get(&i).filter(|d| d.chunk.count == count).copied())
        .collect()
}

/// Each reported chunk's earliest report, by chunk index.
pub fn earliest_each<'a>(reports: &[ChunkReport<'a>]) -> BTreeMap<u32, &'a ChunkCompleted> {
    let mut best: BTreeMap<u32, (Position, MessageId, &'a ChunkCompleted)> = BTreeMap::new();
    for r in reports {
        let key = (r.position, r.message_id);
        let entry = best
            .entry(r.done.chunk.index)
            .or_insert((r.position, r.message_id, r.done));
        if key < (entry.0, entry.1) {
            *entry = (r.position, r.message_id, r.done);
        }
    }
    best.into_iter().map(|(i, (_, _, d))| (i, d)).collect()
}

/// The chunk indices among `reports` (for progress and for skipping work already done).
pub fn done_indices(reports: &[ChunkReport<'_>]) -> BTreeSet<u32> {
    reports.iter().map(|r| r.done.chunk.index).collect()
}

/// `deliverable_finalize` over the rows of every chunk, in chunk order: dedupe across chunks
/// (the earlier chunk's row wins, as the earlier record does within one), drop what cannot be
/// delivered, rank, and sum the chunks' counts into the summary. A job run in one piece is
/// assembled from its single chunk, so both paths give the same deliverable.
pub fn assemble(chunks: &[&ChunkCompleted]) -> (Completed, Dropped) {
    let contacts = chunks
        .iter()
        .flat_map(|c| c.contacts.iter().cloned())
        .collect();
    let (rows, dropped) = deliverable::finalize(contacts);
    let mut summary = Summary {
        companies_disqualified: chunks.iter().map(|c| c.companies_disqualified).sum(),
        contacts_discovered: chunks.iter().map(|c| c.contacts_discovered).sum(),
        invalid_emails: dropped.invalid as u64,
        ..Default::default()
    };
    deliverable::count_statuses(&rows, &mut summary);
    let kept: u64 = chunks.iter().map(|c| c.companies_kept).sum();
    // Contact-only jobs (or jobs whose companies were all disqualified) count the distinct
    // company domains delivered instead.
    summary.companies_processed = if kept == 0 {
        rows.iter()
            .filter_map(|c| c.company_domain.as_deref())
            .collect::<BTreeSet<_>>()
            .len() as u64
    } else {
        kept
    };
    (
        Completed {
            summary,
            contacts: rows,
        },
        dropped,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::email::EmailStatus;
    use crate::domain::messages::ChunkOf;
    use crate::domain::stages::DeliveredContact;

    fn contact(domain: &str, email: &str) -> Contact {
        Contact {
            first_name: Some("A".into()),
            last_name: Some(email.into()),
            full_name: Some(format!("A {email}")),
            title: None,
            email: Some(format!("{email}@{domain}")),
            company_name: None,
            company_domain: Some(domain.into()),
            linkedin_url: None,
        }
    }

    fn company(domain: &str) -> Company {
        Company {
            name: domain.into(),
            domain: domain.into(),
            employee_count: None,
            industry: None,
            country: None,
            linkedin_url: None,
        }
    }

    #[test]
    fn a_split_keeps_every_record_once_and_each_domain_in_one_chunk() {
        let mut input = JobInput::default();
        for d in 0..30 {
            input.companies.push(company(&format!("d{d}.example")));
            for i in 0..(d % 4) {
                input
                    .contacts
                    .push(contact(&format!("d{d}.example"), &format!("p{i}")));
            }
        }
        let chunks = split(&input, 10);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(records).sum::<usize>(), records(&input));
        for c in &chunks {
            assert!(records(c) <= 10, "{}", records(c));
            for contact in &c.contacts {
                let d = contact.company_domain.as_deref().unwrap();
                assert!(c.companies.iter().any(|co| co.domain == d), "{d} split off");
            }
        }
        assert_eq!(
            split(&input, 10),
            chunks,
            "the same input splits the same way"
        );
    }

    #[test]
    fn a_domain_bigger_than_a_chunk_is_cut_unless_its_company_is_in_the_job() {
        let mut input = JobInput::default();
        input.contacts.push(contact("small.example", "a"));
        for i in 0..7 {
            input
                .contacts
                .push(contact("big.example", &format!("p{i}")));
        }
        input.contacts.push(contact("other.example", "b"));
        input.companies.push(company("firm.example"));
        for i in 0..4 {
            input
                .contacts
                .push(contact("firm.example", &format!("q{i}")));
        }
        let chunks = split(&input, 3);
        let sizes: Vec<usize> = chunks.iter().map(records).collect();
        // firm.example (seen first, with its company) stays whole: 5 records.
        assert_eq!(sizes, [5, 1, 3, 3, 2]);
        assert_eq!(chunks[0].companies.len(), 1);
    }

    #[test]
    fn an_empty_job_is_one_empty_chunk() {
        assert_eq!(split(&JobInput::default(), 5), [JobInput::default()]);
    }

    fn row(email: &str, status: EmailStatus) -> DeliveredContact {
        DeliveredContact {
            full_name: Some(email.into()),
            email: Some(email.into()),
            company_domain: email.split('@').nth(1).map(str::to_owned),
            email_status: Some(status),
            source: "input".into(),
            ..Default::default()
        }
    }

    fn chunk(index: u32, count: u32, rows: Vec<DeliveredContact>) -> ChunkCompleted {
        ChunkCompleted {
            chunk: ChunkOf { index, count },
            contacts: rows,
            companies_kept: 0,
            companies_disqualified: index as u64,
            contacts_discovered: 1,
        }
    }

    #[test]
    fn assembly_dedupes_across_chunks_ranks_and_sums_the_counts() {
        let a = chunk(
            0,
            2,
            vec![
                row("x@a.example", EmailStatus::Unknown),
                row("bad@a.example", EmailStatus::Invalid),
            ],
        );
        let b = chunk(
            1,
            2,
            vec![
                row("X@a.example", EmailStatus::Verified),
                row("y@b.example", EmailStatus::Verified),
            ],
        );
        let (done, dropped) = assemble(&[&a, &b]);
        let emails: Vec<_> = done
            .contacts
            .iter()
            .map(|c| c.email.clone().unwrap())
            .collect();
        // The earlier chunk's x@ wins the dedupe; ranking puts the verified row first.
        assert_eq!(emails, ["y@b.example", "x@a.example"]);
        assert_eq!(dropped.duplicates, 1);
        assert_eq!(done.summary.delivered_contacts, 2);
        assert_eq!(done.summary.verified_emails, 1);
        assert_eq!(done.summary.unknown_emails, 1);
        assert_eq!(done.summary.invalid_emails, 1);
        assert_eq!(done.summary.companies_disqualified, 1);
        assert_eq!(done.summary.contacts_discovered, 2);
        assert_eq!(done.summary.companies_processed, 2, "distinct domains");
    }

    #[test]
    fn the_set_is_complete_only_with_every_chunk_and_takes_the_earliest_report_of_each() {
        let first = chunk(0, 2, vec![row("a@a.example", EmailStatus::Verified)]);
        let rerun = chunk(0, 2, vec![row("a@a.example", EmailStatus::Unknown)]);
        let second = chunk(1, 2, vec![]);
        let at = |attempt, seq| Position { attempt, seq };
        let (m1, m2, m3) = (MessageId::new(), MessageId::new(), MessageId::new());
        let partial = [ChunkReport {
            position: at(2, 1),
            message_id: m2,
            done: &rerun,
        }];
        assert!(complete_set(&partial, 2).is_none());
        let all = [
            ChunkReport {
                position: at(2, 1),
                message_id: m2,
                done: &rerun,
            },
            ChunkReport {
                position: at(1, 9),
                message_id: m1,
                done: &first,
            },
            ChunkReport {
                position: at(1, 1),
                message_id: m3,
                done: &second,
            },
        ];
        let set = complete_set(&all, 2).unwrap();
        assert_eq!(set[0], &first, "attempt 1 beats the rerun");
        assert_eq!(set[1], &second);
        assert_eq!(done_indices(&all), BTreeSet::from([0, 1]));
    }
}
