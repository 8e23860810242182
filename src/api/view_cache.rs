//! Finished jobs' responses, kept for a moment so that clients polling a result (or many clients
//! fetching the same one) cost no database round trip each. Only terminal views are kept: a
//! running job's progress must show at once. A finished view changes rarely (an earlier failure
//! overtaking a completion, which the fold allows), so an entry lives `ttl` and a change shows
//! within that time, the same bargain as the key cache.
//!
//! Entries hold the two bodies already rendered: a hit is a hash lookup and a reference count.

pub use super::render::Rendered;
use crate::domain::ids::{JobId, TenantId};
use crate::domain::job::JobView;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ViewCache {
    ttl: Duration,
    /// By job id alone (ids are unique across tenants), so that a lookup allocates nothing; the
    /// tenant is checked on the way out.
    entries: Mutex<HashMap<JobId, (TenantId, Rendered, Instant)>>,
}

/// Past this many jobs the cache starts over rather than grow (about 2 KB each).
const VIEW_CACHE_MAX: usize = 20_000;

impl ViewCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, tenant: &TenantId, job: JobId, now: Instant) -> Option<Rendered> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&job)
            .filter(|(owner, _, at)| owner == tenant && now.duration_since(*at) < self.ttl)
            .map(|(_, r, _)| r.clone())
    }

    /// Keeps the rendering of a finished view; running ones are not kept.
    pub fn put(&self, view: &JobView, rendered: &Rendered, now: Instant) {
        if self.ttl.is_zero() || !view.status.is_terminal() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= VIEW_CACHE_MAX {
            entries.retain(|_, (_, _, at)| now.duration_since(*at) < self.ttl);
            if entries.len() >= VIEW_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(view.job_id, (view.tenant.clone(), rendered.clone(), now));
    }

    /// Forgets a job this process just changed, so that its own answer is never stale.
    pub fn forget(&self, job: JobId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::MessageId;
    use crate::domain::job::{fold, JobStatus};
    use crate::domain::messages::{Created, Event, EventRecord, Position};
    use crate::domain::plan::{Capability, Preset};

    fn view(status: JobStatus) -> JobView {
        let created = EventRecord {
            message_id: MessageId::new(),
            job_id: JobId::new(),
            tenant: TenantId::parse("acme").unwrap(),
            occurred_at: chrono::Utc::now(),
            position: Position::ORIGIN,
            event: Event::Created(Created {
                webhook_url: None,
                webhook_stages: false,
                preset: Some(Preset::VerifyExistingEmails),
                requested_capabilities: vec![Capability::EmailVerify],
                warnings: vec![],
                chat_id: None,
                companies: 0,
                contacts: 1,
            }),
        };
        let mut v = fold(&[created]).unwrap();
        v.status = status;
        v
    }

    #[test]
    fn a_finished_job_is_served_from_the_cache_until_its_time_to_live_ends() {
        let cache = ViewCache::new(Duration::from_secs(1));
        let v = view(JobStatus::Completed);
        let t0 = Instant::now();
        cache.put(&v, &Rendered::of(&v), t0);
        let hit = cache.get(&v.tenant, v.job_id, t0 + Duration::from_millis(999));
        assert_eq!(hit.unwrap().result, Rendered::of(&v).result);
        assert!(cache
            .get(&v.tenant, v.job_id, t0 + Duration::from_secs(1))
            .is_none());
    }

    #[test]
    fn a_running_job_is_never_cached() {
        let cache = ViewCache::new(Duration::from_secs(60));
        let v = view(JobStatus::Running);
        let t0 = Instant::now();
        cache.put(&v, &Rendered::of(&v), t0);
        assert!(cache.get(&v.tenant, v.job_id, t0).is_none());
    }

    #[test]
    fn another_tenant_never_sees_a_cached_job() {
        let cache = ViewCache::new(Duration::from_secs(60));
        let v = view(JobStatus::Completed);
        let t0 = Instant::now();
        cache.put(&v, &Rendered::of(&v), t0);
        let stranger = TenantId::parse("someone-else").unwrap();
        assert!(cache.get(&stranger, v.job_id, t0).is_none());
    }

    #[test]
    fn a_forgotten_job_is_read_again() {
        let cache = ViewCache::new(Duration::from_secs(60));
        let v = view(JobStatus::Cancelled);
        let t0 = Instant::now();
        cache.put(&v, &Rendered::of(&v), t0);
        cache.forget(v.job_id);
        assert!(cache.get(&v.tenant, v.job_id, t0).is_none());
    }

    #[test]
    fn a_zero_time_to_live_caches_nothing() {
        let cache = ViewCache::new(Duration::ZERO);
        let v = view(JobStatus::Completed);
        let t0 = Instant::now();
        cache.put(&v, &Rendered::of(&v), t0);
        assert!(cache.get(&v.tenant, v.job_id, t0).is_none());
    }
}
