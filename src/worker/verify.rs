//! The verification engine of `email_verify`: takes a list of addresses and returns a verdict
//! for each, the job's aggregated warnings, and progress along the way. It owns the timing:
//! DNS lookups run concurrently; with probing on, addresses are grouped by domain and by mail
//! host into batched SMTP sessions (one MAIL FROM per domain, many RCPTs, RSET between
//! domains, a catch-all canary once per domain), run concurrently within the worker's limits
//! ([`Politeness`]: sessions per worker, sessions per mail-server IP, lowered on 421 and
//! backed off), with greylisting retried later and timeouts retried once. The rules it applies
//! are pure and live in `domain::probe` and `domain::stages::verify`; the sockets are the
//! adapters'.
//!
//! [`verify_addresses`] works on any slice of addresses, so a caller may run it over a whole
//! job or over one chunk of one.

use crate::adapters::dns::{smtp_targets, CachedResolver, MailDomainResolver, MailHosts};
use crate::adapters::smtp::{canary_address, RcptAnswer, Segment, SessionEnd, SmtpProber};
use crate::domain::email::{EmailChecks, EmailStatus};
use crate::domain::probe::{estimate_left, is_internal, take_batch, VerifyProgress};
use crate::domain::stages::verify::{offline_checks, verdict, MxVerdict, SmtpVerdict};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How probing behaves; `Default` is production's.
#[derive(Debug, Clone)]
pub struct VerifySettings {
    /// SMTP sessions open at once per worker (`BDJOBS_SMTP_CONCURRENCY`).
    pub concurrency: usize,
    /// Sessions open at once per mail-server IP (`BDJOBS_SMTP_PER_HOST`); lowered for a host
    /// that answers 421.
    pub per_host: usize,
    /// RCPTs per session before the rest go to another session.
    pub rcpt_per_session: usize,
    /// Wait before asking again for a greylisted recipient (`BDJOBS_SMTP_GREYLIST_SECS`).
    pub greylist_wait: Duration,
    /// Retries of a greylisted recipient before it is `unknown`.
    pub greylist_retries: u32,
    /// First back-off after a host says it is busy; doubles on each further refusal.
    pub backoff: Duration,
    /// Refusals in a row after which a host is given up for this run.
    pub max_busy: u32,
    /// Probe MX targets on internal networks (`BDJOBS_SMTP_ALLOW_PRIVATE`).
    pub allow_private: bool,
    /// DNS lookups in flight at once per run.
    pub dns_concurrency: usize,
    /// How long definite verdicts are remembered across jobs (`BDJOBS_SMTP_CACHE_SECS`); zero
    /// turns the cache off.
    pub cache_ttl: Duration,
    /// Most verdicts remembered across jobs.
    pub cache_entries: usize,
}

impl Default for VerifySettings {
    fn default() -> Self {
        Self {
            concurrency: 50,
            per_host: 5,
            rcpt_per_session: 50,
            greylist_wait: Duration::from_secs(300),
            greylist_retries: 3,
            backoff: Duration::from_secs(2),
            max_busy: 4,
            allow_private: false,
            dns_concurrency: 64,
            cache_ttl: Duration::from_secs(3600),
            cache_entries: 100_000,
        }
    }
}

/// What one worker shares between its jobs' probing: the session limits (per worker and per
/// mail-server IP, with each host's back-off) and the verdict cache.
pub struct Probing {
    pub prober: Arc<dyn SmtpProber>,
    pub settings: VerifySettings,
    politeness: Politeness,
    cache: VerdictCache,
}

impl Probing {
    pub fn new(prober: Arc<dyn SmtpProber>, settings: VerifySettings) -> Self {
        Self {
            prober,
            politeness: Politeness::new(settings.concurrency, settings.per_host),
            cache: VerdictCache::new(settings.cache_ttl, settings.cache_entries),
            settings,
        }
    }
}

// --- politeness -------------------------------------------------------------------------------

struct HostGate {
    limit: usize,
    active: usize,
    backoff_until: Option<Instant>,
    /// Refusals since the last session that went through.
    busy_in_a_row: u32,
    /// Sessions that went through since the limit was last lowered.
    good_since_lowered: u32,
    /// When the last refusal was counted: refusals of sessions started before it are the same
    /// episode and are not counted again.
    last_busy_at: Option<Instant>,
}

struct Gates {
    active: usize,
    hosts: HashMap<IpAddr, HostGate>,
}

/// Session slots, per worker and per mail-server IP.
struct Politeness {
    concurrency: usize,
    per_host: usize,
    gates: Mutex<Gates>,
}

/// A session's slot; freed when dropped.
struct Permit<'a> {
    politeness: &'a Politeness,
    ip: IpAddr,
    started: Instant,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut g = self.politeness.gates.lock().expect("politeness lock");
        g.active = g.active.saturating_sub(1);
        if let Some(h) = g.hosts.get_mut(&self.ip) {
            h.active = h.active.saturating_sub(1);
        }
    }
}

/// After how many good sessions a lowered host limit is raised by one again.
const RAISE_AFTER: u32 = 10;
/// Longest back-off from one host.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Politeness {
    fn new(concurrency: usize, per_host: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            per_host: per_host.max(1),
            gates: Mutex::new(Gates {
                active: 0,
                hosts: HashMap::new(),
            }),
        }
    }

    /// A slot for a session with `ip`, or `Err(when to ask again)` (None: when a slot frees).
    fn try_acquire(&self, ip: IpAddr, now: Instant) -> Result<Permit<'_>, Option<Instant>> {
        let mut g = self.gates.lock().expect("politeness lock");
        if g.active >= self.concurrency {
            return Err(None);
        }
        if g.hosts.len() > 4096 {
            // Forget hosts with nothing to remember, so the map stays bounded.
            let per_host = self.per_host;
            g.hosts.retain(|_, h| {
                h.active > 0 || h.limit < per_host || h.backoff_until.is_some_and(|t| t > now)
            });
        }
        let per_host = self.per_host;
        let h = g.hosts.entry(ip).or_insert_with(|| HostGate {
            limit: per_host,
            active: 0,
            backoff_until: None,
            busy_in_a_row: 0,
            good_since_lowered: 0,
            last_busy_at: None,
        });
        if let Some(until) = h.backoff_until.filter(|t| *t > now) {
            return Err(Some(until));
        }
        if h.active >= h.limit {
            return Err(None);
        }
        h.active += 1;
        g.active += 1;
        Ok(Permit {
            politeness: self,
            ip,
            started: now,
        })
    }

    fn went_through(&self, ip: IpAddr) {
        let mut g = self.gates.lock().expect("politeness lock");
        if let Some(h) = g.hosts.get_mut(&ip) {
            h.busy_in_a_row = 0;
            if h.limit < self.per_host {
                h.good_since_lowered += 1;
                if h.good_since_lowered >= RAISE_AFTER {
                    h.limit += 1;
                    h.good_since_lowered = 0;
                }
            }
        }
    }

    /// The host refused a session that started at `started`: lower its limit to what it
    /// bears, back off, and say whether it has refused too often to keep trying.
    fn refused(&self, ip: IpAddr, started: Instant, base: Duration, max_busy: u32) -> bool {
        let now = Instant::now();
        let mut g = self.gates.lock().expect("politeness lock");
        let Some(h) = g.hosts.get_mut(&ip) else {
            return false;
        };
        // Sessions still open here are the ones the host accepted.
        h.limit = h.limit.min(h.active.saturating_sub(1)).max(1);
        h.good_since_lowered = 0;
        if h.last_busy_at.is_some_and(|t| started <= t) {
            // Same episode as a refusal already counted.
            return h.busy_in_a_row >= max_busy;
        }
        h.last_busy_at = Some(now);
        h.busy_in_a_row += 1;
        let wait = base
            .saturating_mul(1 << (h.busy_in_a_row - 1).min(16))
            .min(MAX_BACKOFF);
        h.backoff_until = Some(now + wait);
        h.busy_in_a_row >= max_busy
    }
}

// --- verdict cache ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cached {
    Accepted,
    Rejected,
    /// Keyed by "@domain": whether the domain's server accepts any address.
    CatchAll(bool),
}

struct CacheInner {
    map: HashMap<String, (Instant, Cached)>,
    order: VecDeque<String>,
}

/// Definite verdicts, kept across jobs for a while and bounded in size (oldest out first).
struct VerdictCache {
    ttl: Duration,
    max: usize,
    inner: Mutex<CacheInner>,
}

impl VerdictCache {
    fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            inner: Mutex::new(CacheInner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn get(&self, key: &str) -> Option<Cached> {
        if self.ttl.is_zero() {
            return None;
        }
        let inner = self.inner.lock().expect("cache lock");
        inner
            .map
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| *v)
    }

    fn put(&self, key: String, value: Cached) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("cache lock");
        if inner
            .map
            .insert(key.clone(), (Instant::now(), value))
            .is_none()
        {
            inner.order.push_back(key);
        }
        while inner.map.len() > self.max {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

// --- the run ------------------------------------------------------------------------------------

/// The verdict on one input address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressVerdict {
    /// The address in canonical form (`None` when its syntax is invalid).
    pub address: Option<String>,
    pub status: EmailStatus,
    pub checks: EmailChecks,
}

/// What a run found: one verdict per input address, in input order, and the warnings to show.
#[derive(Debug, Clone)]
pub struct Verification {
    pub verdicts: Vec<AddressVerdict>,
    pub warnings: Vec<String>,
}

/// Why an address ended `unknown`, for the aggregated warnings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    Greylisted,
    Unreachable,
    TimedOut,
    Blocked,
    NoSmtpUtf8,
    CatchAllUnsure,
    OutOfTime,
}

/// The SMTP finding on one address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Accepted,
    CatchAll,
    Rejected,
    Unknown(Why),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Canary {
    Pending,
    Known(bool),
    Failed(Why),
}

struct Domain {
    name: String,
    targets: Vec<IpAddr>,
    target: usize,
    canary: Canary,
    /// Accepted addresses waiting for the canary's answer.
    accepted: Vec<usize>,
}

struct Rcpt {
    /// Index into the unique addresses; `None` for the canary.
    address: Option<usize>,
    text: String,
    domain: usize,
    greylist_tries: u32,
    transient_tries: u32,
    due: Instant,
}

struct Engine<'a> {
    probing: &'a Probing,
    deadline: Instant,
    /// The unique addresses' text.
    unique: Vec<String>,
    domains: Vec<Domain>,
    rcpts: Vec<Rcpt>,
    queues: BTreeMap<IpAddr, Vec<usize>>,
    /// A host's RCPT limit, learnt from a 452.
    caps: HashMap<IpAddr, usize>,
    /// The session size chosen for a host when its queue filled, kept until the queue runs
    /// dry: recomputed at each session's end it would shrink, because the host's other sessions
    /// still running are about to take their share too.
    batch: HashMap<IpAddr, usize>,
    found: Vec<Option<Found>>,
    /// How many input addresses each unique address stands for.
    weight: Vec<usize>,
    done: usize,
}

/// Verifies `emails` (as given by users). `probing` is `None` when SMTP probing is off.
/// `budget` bounds the run: greylisting retries are only scheduled within it, and whatever is
/// still waiting when it runs out ends `unknown`. `progress` is called as addresses resolve.
pub async fn verify_addresses(
    emails: &[String],
    dns: Arc<dyn MailDomainResolver>,
    probing: Option<&Probing>,
    budget: Duration,
    progress: &(dyn Fn(VerifyProgress) + Send + Sync),
) -> Verification {
    let started = Instant::now();
    let total = emails.len();
    let mut warnings = Vec::new();
    // Unique canonical addresses, so that a repeated address is probed once.
    let mut unique: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut parsed = Vec::with_capacity(total);
    for e in emails {
        parsed.push(match offline_checks(e) {
            Err(checks) => Err(checks),
            Ok((p, checks)) => {
                let i = *index.entry(p.address.clone()).or_insert_with(|| {
                    unique.push(p.address.clone());
                    unique.len() - 1
                });
                Ok((p, checks, i))
            }
        });
    }
    let mut weight = vec![0; unique.len()];
    let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (p, _, i) in parsed.iter().flatten() {
        weight[*i] += 1;
        if weight[*i] == 1 {
            by_domain.entry(p.domain.clone()).or_default().push(*i);
        }
    }
    let mut done = parsed.iter().filter(|p| p.is_err()).count();
    let report = |done: usize, greylisted: usize, next_retry: Option<Duration>| {
        progress(VerifyProgress {
            done,
            total,
            greylisted,
            eta: estimate_left(started.elapsed(), done, total, next_retry),
        })
    };
    report(done, 0, None);

    // DNS, concurrently; one cache for the run.
    let resolver = CachedResolver::new(dns);
    let resolver = &resolver;
    let probe_on = probing.is_some();
    let mut lookups = futures::stream::iter(by_domain.keys().cloned())
        .map(|domain| async move {
            let hosts = resolver.mail_hosts(&domain).await;
            let ips = match (&hosts, probe_on) {
                (MailHosts::Found(_) | MailHosts::Implicit(_), true) => {
                    smtp_targets(resolver, &hosts).await
                }
                _ => Vec::new(),
            };
            (domain, hosts, ips)
        })
        .buffer_unordered(probing.map_or(64, |p| p.settings.dns_concurrency.max(1)));
    let mut mx: HashMap<String, MxVerdict> = HashMap::new();
    let mut targets: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut found: Vec<Option<Found>> = vec![None; unique.len()];
    let mut no_mail = BTreeMap::new();
    let mut dns_unknown = BTreeMap::new();
    let mut private = BTreeSet::new();
    let mut unresolvable = BTreeSet::new();
    while let Some((domain, hosts, ips)) = lookups.next().await {
        let addresses = &by_domain[&domain];
        let count: usize = addresses.iter().map(|&i| weight[i]).sum();
        let verdict = match hosts {
            MailHosts::Found(_) => MxVerdict::MailServer,
            MailHosts::Implicit(_) => MxVerdict::ImplicitMx,
            MailHosts::NoMailServer => {
                no_mail.insert(domain.clone(), count);
                MxVerdict::NoMailServer
            }
            MailHosts::Unknown(_) => {
                dns_unknown.insert(domain.clone(), count);
                MxVerdict::Unknown
            }
        };
        mx.insert(domain.clone(), verdict);
        let probe = probe_on && matches!(verdict, MxVerdict::MailServer | MxVerdict::ImplicitMx);
        if probe {
            let allow = probing.is_some_and(|p| p.settings.allow_private);
            let allowed: Vec<IpAddr> = ips
                .iter()
                .copied()
                .filter(|ip| allow || !is_internal(*ip))
                .take(3)
                .collect();
            if allowed.is_empty() {
                if ips.is_empty() {
                    unresolvable.insert(domain.clone());
                } else {
                    private.insert(domain.clone());
                }
                for &i in addresses {
                    found[i] = Some(Found::Unknown(Why::Unreachable));
                }
            } else {
                targets.insert(domain.clone(), allowed);
                continue;
            }
        }
        done += count;
        report(done, 0, None);
    }
    drop(lookups);
    // One warning per kind, however many domains: a warning per domain made a job with
    // thousands of dead domains thousands of events, each folded into the view.
    warnings.extend(domains_warning(
        &no_mail,
        |d, n| format!("{d} has no mail server; {n} contact(s) dropped"),
        "have no mail server",
        "dropped",
    ));
    warnings.extend(domains_warning(
        &dns_unknown,
        |d, n| format!("the DNS lookup for {d} did not finish; {n} contact(s) marked unknown"),
        "did not finish their DNS lookups",
        "marked unknown",
    ));
    if !private.is_empty() {
        let names: Vec<String> = private.into_iter().collect();
        warnings.push(format!(
            "the mail servers of {} are on internal or reserved networks and were not probed \
             (BDJOBS_SMTP_ALLOW_PRIVATE=on allows it); their addresses are unknown",
            list_some(&names)
        ));
    }
    if !unresolvable.is_empty() {
        let names: Vec<String> = unresolvable.into_iter().collect();
        warnings.push(format!(
            "the mail servers of {} have no address; their addresses are unknown",
            list_some(&names)
        ));
    }

    if let Some(probing) = probing.filter(|_| !targets.is_empty()) {
        let mut engine = Engine {
            probing,
            deadline: started + budget,
            unique: unique.clone(),
            domains: Vec::new(),
            rcpts: Vec::new(),
            queues: BTreeMap::new(),
            caps: HashMap::new(),
            batch: HashMap::new(),
            found,
            weight,
            done,
        };
        engine.plan(&targets, &by_domain);
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            domains = targets.len(),
            "DNS done; probing starts"
        );
        engine.run(&report).await;
        warnings.extend(engine.warnings());
        found = engine.found;
    }

    let verdicts = parsed
        .into_iter()
        .map(|p| match p {
            Err(checks) => AddressVerdict {
                address: None,
                status: crate::domain::email::classify(&checks),
                checks,
            },
            Ok((p, checks, i)) => {
                let mxv = mx.get(&p.domain).copied().unwrap_or(MxVerdict::Unknown);
                let smtp = match (&found[i], probe_on) {
                    (_, false) => SmtpVerdict::NotProbed,
                    (Some(Found::Accepted), _) => SmtpVerdict::Accepted,
                    (Some(Found::CatchAll), _) => SmtpVerdict::CatchAll,
                    (Some(Found::Rejected), _) => SmtpVerdict::Rejected,
                    (Some(Found::Unknown(_)), _) => SmtpVerdict::Unknown,
                    (None, _) => SmtpVerdict::NotProbed,
                };
                let (status, checks) = verdict(checks, mxv, smtp);
                AddressVerdict {
                    address: Some(p.address),
                    status,
                    checks,
                }
            }
        })
        .collect();
    Verification { verdicts, warnings }
}

impl Engine<'_> {
    fn settings(&self) -> &VerifySettings {
        &self.probing.settings
    }

    /// Queues every address (and each domain's canary) at its domain's first mail host,
    /// answering from the cache what it can.
    fn plan(
        &mut self,
        targets: &BTreeMap<String, Vec<IpAddr>>,
        by_domain: &BTreeMap<String, Vec<usize>>,
    ) {
        let now = Instant::now();
        let probing = self.probing;
        let cache = &probing.cache;
        for (name, ips) in targets {
            let canary = match cache.get(&format!("@{name}")) {
                Some(Cached::CatchAll(yes)) => Canary::Known(yes),
                _ => Canary::Pending,
            };
            let d = self.domains.len();
            let mut queued = Vec::new();
            for &i in &by_domain[name] {
                match (&canary, cache.get(&self.unique[i])) {
                    (Canary::Known(true), _) => self.finish(i, Found::CatchAll),
                    (_, Some(Cached::Accepted)) => self.finish(i, Found::Accepted),
                    (_, Some(Cached::Rejected)) => self.finish(i, Found::Rejected),
                    _ => queued.push(i),
                }
            }
            let needs_canary = canary == Canary::Pending && !queued.is_empty();
            self.domains.push(Domain {
                name: name.clone(),
                targets: ips.clone(),
                target: 0,
                canary,
                accepted: Vec::new(),
            });
            let queue = self.queues.entry(ips[0]).or_default();
            if needs_canary {
                queue.push(self.rcpts.len());
                self.rcpts.push(Rcpt {
                    address: None,
                    text: canary_address(name),
                    domain: d,
                    greylist_tries: 0,
                    transient_tries: 0,
                    due: now,
                });
            }
            for i in queued {
                queue.push(self.rcpts.len());
                self.rcpts.push(Rcpt {
                    address: Some(i),
                    text: self.unique[i].clone(),
                    domain: d,
                    greylist_tries: 0,
                    transient_tries: 0,
                    due: now,
                });
            }
        }
    }

    fn finish(&mut self, i: usize, f: Found) {
        if self.found[i].is_none() {
            self.done += self.weight[i];
        }
        self.found[i] = Some(f);
    }

    fn waiting_for_greylist(&self, now: Instant) -> (usize, Option<Duration>) {
        let mut n = 0;
        let mut next: Option<Instant> = None;
        for q in self.queues.values() {
            for &r in q {
                let rc = &self.rcpts[r];
                if rc.greylist_tries > 0 && rc.due > now {
                    n += rc.address.map_or(0, |i| self.weight[i]);
                    next = Some(next.map_or(rc.due, |t| t.min(rc.due)));
                }
            }
        }
        (n, next.map(|t| t - now))
    }

    async fn run(&mut self, report: &(dyn Fn(usize, usize, Option<Duration>) + Send + Sync)) {
        let probing: &Probing = self.probing;
        let prober = probing.prober.clone();
        let mut inflight = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                self.give_up_all();
                break;
            }
            let mut wake = self.deadline;
            let ips: Vec<IpAddr> = self.queues.keys().copied().collect();
            // Breadth first: one session per host per round, so that a worker-wide cap
            // smaller than hosts x per-host limit is shared fairly rather than by address order.
            let mut blocked: BTreeSet<IpAddr> = BTreeSet::new();
            loop {
                let mut dispatched = false;
                for &ip in &ips {
                    if blocked.contains(&ip) {
                        continue;
                    }
                    #[allow(clippy::never_loop)]
                    loop {
                        let queue = &self.queues[&ip];
                        if queue.is_empty() {
                            self.batch.remove(&ip);
                            blocked.insert(ip);
                            break;
                        }
                        // Greylisting retries fall due one by one, a reply's time apart; held
                        // for a tenth of the wait after the first is due, they share a session
                        // instead of taking one each.
                        let hold = self.settings().greylist_wait / 10;
                        let retries_from = queue
                            .iter()
                            .map(|&r| &self.rcpts[r])
                            .filter(|rc| rc.greylist_tries > 0)
                            .map(|rc| rc.due)
                            .min()
                            .map(|first| first + hold);
                        let held = |rc: &Rcpt| {
                            rc.greylist_tries > 0 && retries_from.is_some_and(|t| t > now)
                        };
                        let ready: Vec<(usize, bool)> = queue
                            .iter()
                            .map(|&r| &self.rcpts[r])
                            .map(|rc| (rc.domain, rc.due <= now && !held(rc)))
                            .collect();
                        if let Some(due) = queue
                            .iter()
                            .map(|&r| &self.rcpts[r])
                            .map(|rc| {
                                if held(rc) {
                                    rc.due.max(retries_from.unwrap_or(now))
                                } else {
                                    rc.due
                                }
                            })
                            .filter(|d| *d > now)
                            .min()
                        {
                            wake = wake.min(due);
                        }
                        if !ready.iter().any(|(_, r)| *r) {
                            blocked.insert(ip);
                            break;
                        }
                        let permit = match probing.politeness.try_acquire(ip, now) {
                            Ok(p) => p,
                            Err(until) => {
                                // A slot frees when a session ends (ours wake the loop; another
                                // job's do not), so look again soon.
                                wake = wake.min(until.unwrap_or(now + Duration::from_millis(50)));
                                {
                                    blocked.insert(ip);
                                    break;
                                }
                            }
                        };
                        let cap = self
                            .caps
                            .get(&ip)
                            .copied()
                            .unwrap_or(self.settings().rcpt_per_session)
                            .max(1);
                        // Spread the host's waiting recipients evenly over the sessions it
                        // allows at once: 275 recipients make ten sessions of 28 (two rounds of
                        // five), not five of 50 and a sixth that runs alone.
                        let size = *self.batch.entry(ip).or_insert_with(|| {
                            let waiting = ready.iter().filter(|(_, r)| *r).count();
                            let per_host = probing.settings.per_host.max(1);
                            let rounds = waiting.div_ceil(per_host * cap).max(1);
                            // Never below half the cap: a session's greeting, EHLO and MAIL cost
                            // the same for 3 recipients as for 30.
                            waiting
                                .div_ceil(per_host * rounds)
                                .max(cap / 2)
                                .clamp(1, cap)
                        });
                        let size = size.min(cap);
                        let picks = take_batch(&ready, size);
                        let queue = self.queues.get_mut(&ip).expect("queue");
                        let ids: Vec<usize> = picks.iter().map(|&p| queue[p]).collect();
                        let mut k = 0;
                        queue.retain(|_| {
                            let keep = !picks.contains(&k);
                            k += 1;
                            keep
                        });
                        let mut segments: Vec<Segment> = Vec::new();
                        let mut members: Vec<Vec<usize>> = Vec::new();
                        for r in ids {
                            let rc = &self.rcpts[r];
                            let name = &self.domains[rc.domain].name;
                            match segments.last_mut() {
                                Some(s) if &s.domain == name => {
                                    s.recipients.push(rc.text.clone());
                                    members.last_mut().expect("members").push(r);
                                }
                                _ => {
                                    segments.push(Segment {
                                        domain: name.clone(),
                                        recipients: vec![rc.text.clone()],
                                    });
                                    members.push(vec![r]);
                                }
                            }
                        }
                        let prober = prober.clone();
                        inflight.push(async move {
                            let began = Instant::now();
                            let report = prober.session(ip, &segments).await;
                            tracing::trace!(
                                %ip,
                                    took_ms = began.elapsed().as_millis() as u64,
                                segments = segments.len(),
                                rcpts = segments.iter().map(|s| s.recipients.len()).sum::<usize>(),
                                "session"
                            );
                            (ip, members, report, permit)
                        });
                        dispatched = true;
                        break;
                    }
                }
                if !dispatched {
                    break;
                }
            }
            if inflight.is_empty() && self.queues.values().all(Vec::is_empty) {
                break;
            }
            tokio::select! {
                Some((ip, members, session, permit)) = inflight.next() => {
                    let started = permit.started;
                    drop(permit);
                    self.settle(ip, members, session, started);
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            let (waiting, next) = self.waiting_for_greylist(now);
            report(self.done, waiting, next);
        }
        // Sessions still in flight (the budget ran out) are dropped, closing their sockets.
    }

    /// Every address still waiting (queued or in a session) ends unknown: the run is out of
    /// time.
    fn give_up_all(&mut self) {
        for q in self.queues.values_mut() {
            q.clear();
        }
        for r in 0..self.rcpts.len() {
            let d = self.rcpts[r].domain;
            if self.rcpts[r].address.is_none() && self.domains[d].canary == Canary::Pending {
                self.conclude(r, Found::Unknown(Why::OutOfTime));
            }
        }
        for r in 0..self.rcpts.len() {
            if let Some(i) = self.rcpts[r].address {
                if self.found[i].is_none()
                    && !self.domains[self.rcpts[r].domain].accepted.contains(&i)
                {
                    self.finish(i, Found::Unknown(Why::OutOfTime));
                }
            }
        }
    }

    /// The domain of `r` greylists: its recipients not yet asked go to the front of their
    /// host's queue, so that their clocks start in the next session rather than rounds later.
    fn hurry_domain(&mut self, r: usize) {
        let d = self.rcpts[r].domain;
        let ip = self.domains[d].targets[self.domains[d].target];
        let rcpts = &self.rcpts;
        if let Some(q) = self.queues.get_mut(&ip) {
            let (first, rest): (Vec<usize>, Vec<usize>) = q
                .iter()
                .partition(|&&x| rcpts[x].domain == d && rcpts[x].greylist_tries == 0);
            *q = first;
            q.extend(rest);
        }
    }

    fn requeue(&mut self, r: usize, due: Instant) {
        self.rcpts[r].due = due;
        let d = self.rcpts[r].domain;
        let ip = self.domains[d].targets[self.domains[d].target];
        self.queues.entry(ip).or_default().push(r);
    }

    fn settle(
        &mut self,
        ip: IpAddr,
        members: Vec<Vec<usize>>,
        session: crate::adapters::smtp::SessionReport,
        started: Instant,
    ) {
        let now = Instant::now();
        let mut unjudged = Vec::new();
        let mut answered_before_limit = 0;
        let mut hit_limit = false;
        for ((ids, answers), at) in members
            .iter()
            .zip(&session.answers)
            .zip(&session.answered_at)
        {
            for (k, &r) in ids.iter().enumerate() {
                let when = at.get(k).copied().unwrap_or(now);
                match answers.get(k) {
                    None => unjudged.push(r),
                    Some(RcptAnswer::TooMany) => {
                        hit_limit = true;
                        self.requeue(r, now);
                    }
                    Some(a) => {
                        if !hit_limit {
                            answered_before_limit += 1;
                        }
                        self.answer(r, a.clone(), when);
                    }
                }
            }
        }
        for ids in members.iter().skip(session.answers.len()) {
            unjudged.extend(ids);
        }
        if hit_limit {
            let cap = self
                .caps
                .entry(ip)
                .or_insert(self.probing.settings.rcpt_per_session);
            *cap = (*cap).min(answered_before_limit.max(1));
        }
        let settings = self.probing.settings.clone();
        match session.end {
            SessionEnd::Done => self.probing.politeness.went_through(ip),
            SessionEnd::Busy(why) => {
                tracing::debug!(%ip, %why, "mail host busy; backing off");
                let dead = self.probing.politeness.refused(
                    ip,
                    started,
                    settings.backoff,
                    settings.max_busy,
                );
                for r in unjudged {
                    self.requeue(r, now);
                }
                if dead {
                    self.fail_over_host(ip);
                }
            }
            SessionEnd::Transient(why) => {
                tracing::debug!(%ip, %why, "SMTP session cut short");
                for r in unjudged {
                    self.rcpts[r].transient_tries += 1;
                    if self.rcpts[r].transient_tries > 1 {
                        self.fail_over(r, Why::TimedOut);
                    } else {
                        self.requeue(r, now);
                    }
                }
            }
            SessionEnd::Refused(why) => {
                tracing::debug!(%ip, %why, "mail host refused the probe");
                for r in unjudged {
                    self.fail_over(r, Why::Blocked);
                }
            }
        }
    }

    /// Moves a recipient to its domain's next mail host, or concludes it.
    fn fail_over(&mut self, r: usize, why: Why) {
        let d = self.rcpts[r].domain;
        let dom = &mut self.domains[d];
        let here = dom.targets[dom.target];
        if dom.target + 1 < dom.targets.len() {
            dom.target += 1;
            // The domain's other recipients waiting at the old host move too.
            if let Some(q) = self.queues.get_mut(&here) {
                let (moving, staying): (Vec<usize>, Vec<usize>) =
                    q.iter().partition(|&&x| self.rcpts[x].domain == d);
                *q = staying;
                let next = self.domains[d].targets[self.domains[d].target];
                self.queues.entry(next).or_default().extend(moving);
            }
            self.rcpts[r].transient_tries = 0;
            self.requeue(r, Instant::now());
        } else {
            self.conclude(r, Found::Unknown(why));
        }
    }

    /// A host refused too often: its domains go to their next host, or end unknown.
    fn fail_over_host(&mut self, ip: IpAddr) {
        let waiting = self
            .queues
            .get_mut(&ip)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut moved_domains = BTreeSet::new();
        for r in waiting {
            let d = self.rcpts[r].domain;
            let dom = &mut self.domains[d];
            if dom.targets[dom.target] == ip && !moved_domains.contains(&d) {
                if dom.target + 1 < dom.targets.len() {
                    dom.target += 1;
                    moved_domains.insert(d);
                } else {
                    self.conclude(r, Found::Unknown(Why::Unreachable));
                    continue;
                }
            }
            if moved_domains.contains(&d) {
                self.requeue(r, Instant::now());
            } else {
                self.conclude(r, Found::Unknown(Why::Unreachable));
            }
        }
    }

    /// `at` is when the server answered: a greylisting clock runs from then.
    fn answer(&mut self, r: usize, a: RcptAnswer, at: Instant) {
        let probing = self.probing;
        let s = &probing.settings;
        match a {
            RcptAnswer::Accepted => self.conclude(r, Found::Accepted),
            RcptAnswer::Rejected(..) => self.conclude(r, Found::Rejected),
            RcptAnswer::Deferred(..) => {
                let due = at + s.greylist_wait;
                if self.rcpts[r].greylist_tries < s.greylist_retries && due < self.deadline {
                    if self.rcpts[r].greylist_tries == 0 {
                        self.hurry_domain(r);
                    }
                    self.rcpts[r].greylist_tries += 1;
                    self.requeue(r, due);
                } else {
                    self.conclude(r, Found::Unknown(Why::Greylisted));
                }
            }
            RcptAnswer::Blocked(_) | RcptAnswer::Unsendable(_) => {
                self.conclude(r, Found::Unknown(Why::Blocked))
            }
            RcptAnswer::NeedsSmtpUtf8 => self.conclude(r, Found::Unknown(Why::NoSmtpUtf8)),
            RcptAnswer::TooMany => self.requeue(r, at),
        }
    }

    /// Records a recipient's final finding; a canary's settles its domain's accepted addresses.
    fn conclude(&mut self, r: usize, f: Found) {
        let d = self.rcpts[r].domain;
        let probing = self.probing;
        let cache = &probing.cache;
        match self.rcpts[r].address {
            None => {
                let canary = match f {
                    Found::Accepted => Canary::Known(true),
                    Found::Rejected => Canary::Known(false),
                    Found::Unknown(why) => Canary::Failed(why),
                    Found::CatchAll => Canary::Known(true),
                };
                if let Canary::Known(yes) = canary {
                    cache.put(format!("@{}", self.domains[d].name), Cached::CatchAll(yes));
                }
                self.domains[d].canary = canary;
                for i in std::mem::take(&mut self.domains[d].accepted) {
                    self.accept(d, i);
                }
                if self.domains[d].canary == Canary::Known(true) {
                    // Nothing more to learn from this domain's server.
                    for q in self.queues.values_mut() {
                        let rcpts = &self.rcpts;
                        let mut settled = Vec::new();
                        q.retain(|&x| {
                            let same = rcpts[x].domain == d;
                            if same {
                                settled.extend(rcpts[x].address);
                            }
                            !same
                        });
                        for i in settled {
                            if self.found[i].is_none() {
                                self.done += self.weight[i];
                            }
                            self.found[i] = Some(Found::CatchAll);
                        }
                    }
                }
            }
            Some(i) => match f {
                Found::Accepted => self.accept(d, i),
                Found::Rejected => {
                    cache.put(self.rcpts[r].text.clone(), Cached::Rejected);
                    self.finish(i, Found::Rejected);
                }
                other => self.finish(i, other),
            },
        }
    }

    fn accept(&mut self, d: usize, i: usize) {
        match &self.domains[d].canary {
            Canary::Pending => self.domains[d].accepted.push(i),
            Canary::Known(true) => self.finish(i, Found::CatchAll),
            Canary::Known(false) => {
                self.probing
                    .cache
                    .put(self.unique[i].clone(), Cached::Accepted);
                self.finish(i, Found::Accepted)
            }
            Canary::Failed(_) => self.finish(i, Found::Unknown(Why::CatchAllUnsure)),
        }
    }

    /// One warning per reason an address ended unknown, naming the domains.
    fn warnings(&self) -> Vec<String> {
        let mut by_why: BTreeMap<Why, (usize, BTreeSet<String>)> = BTreeMap::new();
        for r in &self.rcpts {
            let Some(i) = r.address else { continue };
            if let Some(Found::Unknown(why)) = &self.found[i] {
                let e = by_why.entry(why.clone()).or_default();
                if e.1
                    .insert(format!("{}\u{0}{}", self.domains[r.domain].name, i))
                {
                    e.0 += self.weight[i];
                }
            }
        }
        let s = &self.probing.settings;
        by_why
            .into_iter()
            .map(|(why, (count, keys))| {
                let domains: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.split('\u{0}').next().map(str::to_owned))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let at = list_some(&domains);
                match why {
                    Why::Greylisted => format!(
                        "{count} address(es) at {at} were still greylisted after {} retr{} \
                         {} s apart and are unknown",
                        s.greylist_retries,
                        if s.greylist_retries == 1 { "y" } else { "ies" },
                        s.greylist_wait.as_secs()
                    ),
                    Why::Unreachable => format!(
                        "the mail servers of {at} kept refusing connections; {count} address(es) unknown"
                    ),
                    Why::TimedOut => format!(
                        "the mail servers of {at} stopped answering (twice); {count} address(es) unknown"
                    ),
                    Why::Blocked => format!(
                        "the mail servers of {at} refused to be probed; {count} address(es) unknown"
                    ),
                    Why::NoSmtpUtf8 => format!(
                        "{count} address(es) at {at} have a non-ASCII local part and their mail \
                         server does not offer SMTPUTF8; they are unknown"
                    ),
                    Why::CatchAllUnsure => format!(
                        "whether {at} accept(s) any address could not be told; {count} accepted \
                         address(es) unknown"
                    ),
                    Why::OutOfTime => format!(
                        "the job's time ran out before {count} address(es) at {at} were checked; \
                         they are unknown"
                    ),
                }
            })
            .collect()
    }
}

/// One warning for a set of domains (ASCII form, with their contact counts): the sentence `one`
/// makes for a single domain, else "N domains {many}: the first few (count) and M more; C
/// contact(s) {outcome}". Domains are shown in their Unicode form, for people.
fn domains_warning(
    domains: &BTreeMap<String, usize>,
    one: impl Fn(&str, usize) -> String,
    many: &str,
    outcome: &str,
) -> Option<String> {
    let contacts: usize = domains.values().sum();
    match domains.len() {
        0 => None,
        1 => {
            let (d, n) = domains.iter().next()?;
            Some(one(&crate::domain::email::display_domain(d), *n))
        }
        n => {
            let named: Vec<String> = domains
                .iter()
                .map(|(d, c)| format!("{} ({c})", crate::domain::email::display_domain(d)))
                .take(LISTED)
                .collect();
            let mut s = named.join(", ");
            if n > LISTED {
                s.push_str(&format!(" and {} more", n - LISTED));
            }
            Some(format!(
                "{n} domains {many}: {s}; {contacts} contact(s) {outcome}"
            ))
        }
    }
}

/// How many names a warning lists before it counts the rest.
const LISTED: usize = 5;

/// "a.example, b.example and 3 more": keeps warnings readable for big jobs.
pub fn list_some(items: &[String]) -> String {
    const SHOWN: usize = LISTED;
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

#[cfg(test)]
mod tests {
    //! The engine against stub mail hosts on several loopback addresses and a stub nameserver.
    use super::*;
    use crate::adapters::dns::HickoryMailResolver;
    use crate::adapters::dns_stub::{StubDns, StubZone};
    use crate::adapters::smtp::TcpSmtpProber;
    use crate::adapters::smtp_stub::{HostBehaviour, SmtpPolicy, StubSmtp, StubStats};
    use std::net::Ipv4Addr;

    struct World {
        stubs: Vec<StubSmtp>,
        port: u16,
        dns: StubDns,
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    /// Mail hosts on 127.0.0.N; `mx` maps each domain to the hosts (by N) its MX names.
    async fn world(hosts: Vec<(u8, HostBehaviour)>, mx: &[(&str, &[u8])], zone: StubZone) -> World {
        let mut zone = zone;
        for (n, _) in &hosts {
            zone = zone.a(&format!("mx{n}.mail.test"), Ipv4Addr::new(127, 0, 0, *n));
        }
        for (domain, ns) in mx {
            for (k, n) in ns.iter().enumerate() {
                zone = zone.mx(domain, 10 * (k as u16 + 1), &format!("mx{n}.mail.test"));
                if !hosts.iter().any(|(h, _)| h == n) {
                    zone = zone.a(&format!("mx{n}.mail.test"), Ipv4Addr::new(127, 0, 0, *n));
                }
            }
        }
        let fleet = hosts.into_iter().map(|(n, b)| (ip(n), b)).collect();
        let (port, stubs) = StubSmtp::start_fleet(fleet).await.unwrap();
        let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
            .await
            .unwrap();
        World { stubs, port, dns }
    }

    fn settings() -> VerifySettings {
        VerifySettings {
            allow_private: true,
            greylist_wait: Duration::from_millis(300),
            backoff: Duration::from_millis(20),
            ..VerifySettings::default()
        }
    }

    fn probing(w: &World, settings: VerifySettings) -> Probing {
        Probing::new(
            Arc::new(TcpSmtpProber::new(
                w.port,
                "probe.bdjobs.test",
                "verify@bdjobs.test",
                Duration::from_millis(500),
            )),
            settings,
        )
    }

    async fn verify(w: &World, p: &Probing, emails: &[&str]) -> Verification {
        let dns = HickoryMailResolver::new(Some(w.dns.addr()), Duration::from_millis(800)).unwrap();
        let emails: Vec<String> = emails.iter().map(|e| e.to_string()).collect();
        verify_addresses(
            &emails,
            Arc::new(dns),
            Some(p),
            Duration::from_secs(60),
            &|_| {},
        )
        .await
    }

    fn statuses(v: &Verification) -> Vec<EmailStatus> {
        v.verdicts.iter().map(|v| v.status).collect()
    }

    fn stat(s: &StubSmtp, f: fn(&StubStats) -> &std::sync::atomic::AtomicUsize) -> usize {
        StubStats::get(f(s.stats()))
    }

    use EmailStatus::{Invalid, Risky, Unknown, Verified};

    #[tokio::test]
    async fn one_session_probes_several_domains_with_one_canary_each_and_rset_between() {
        let host = HostBehaviour::new(SmtpPolicy::accept_only([
            "ada@a.test",
            "bob@a.test",
            "cy@b.test",
        ]))
        .catch_all(["c.test"]);
        let w = world(
            vec![(2, host)],
            &[("a.test", &[2]), ("b.test", &[2]), ("c.test", &[2])],
            StubZone::new(),
        )
        .await;
        let p = probing(&w, settings());
        let emails = [
            "ada@a.test",
            "bob@a.test",
            "nobody@a.test",
            "cy@b.test",
            "ghost@b.test",
            "any@c.test",
        ];
        let v = verify(&w, &p, &emails).await;
        assert_eq!(
            statuses(&v),
            [Verified, Verified, Invalid, Verified, Invalid, Risky]
        );
        let s = &w.stubs[0];
        assert_eq!(stat(s, |s| &s.sessions), 1, "{:?}", s.commands());
        assert_eq!(stat(s, |s| &s.mails), 3, "MAIL FROM once per domain");
        assert_eq!(stat(s, |s| &s.rsets), 2, "RSET between domains");
        assert_eq!(
            stat(s, |s| &s.rcpts),
            emails.len() + 3,
            "one canary per domain"
        );
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        assert!(!s.commands().iter().any(|c| c.starts_with("DATA")));
    }

    #[tokio::test]
    async fn recipients_over_the_servers_limit_go_to_new_sessions() {
        let mailboxes: Vec<String> = (0..12).map(|i| format!("p{i}@a.test")).collect();
        let host = HostBehaviour::new(SmtpPolicy::accept_only(&mailboxes)).max_rcpt(5);
        let w = world(vec![(2, host)], &[("a.test", &[2])], StubZone::new()).await;
        let p = probing(&w, settings());
        let mut emails: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
        emails.push("ghost@a.test");
        let v = verify(&w, &p, &emails).await;
        let mut expected = vec![Verified; 12];
        expected.push(Invalid);
        assert_eq!(statuses(&v), expected);
        let s = &w.stubs[0];
        assert!(stat(s, |s| &s.too_many) > 0, "the limit was reached");
        assert!(stat(s, |s| &s.sessions) >= 3);
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    }

    #[tokio::test]
    async fn a_host_limiting_sessions_is_backed_off_and_never_counted_as_a_rejection() {
        let domains: Vec<String> = (0..8).map(|d| format!("d{d}.test")).collect();
        let mailboxes: Vec<String> = domains
            .iter()
            .flat_map(|d| (0..4).map(move |i| format!("p{i}@{d}")))
            .collect();
        let host = HostBehaviour::new(SmtpPolicy::accept_only(&mailboxes))
            .latency(Duration::from_millis(15))
            .max_sessions(2);
        let mx: Vec<(&str, &[u8])> = domains.iter().map(|d| (d.as_str(), &[2u8][..])).collect();
        let w = world(vec![(2, host)], &mx, StubZone::new()).await;
        let p = probing(
            &w,
            VerifySettings {
                rcpt_per_session: 5,
                ..settings()
            },
        );
        let emails: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
        let v = verify(&w, &p, &emails).await;
        assert_eq!(statuses(&v), vec![Verified; emails.len()]);
        let s = &w.stubs[0];
        assert!(stat(s, |s| &s.turned_away) > 0, "the host's limit was hit");
        assert!(stat(s, |s| &s.max_concurrent) <= 2);
    }

    #[tokio::test]
    async fn sessions_per_host_never_exceed_the_setting() {
        let domains: Vec<String> = (0..10).map(|d| format!("d{d}.test")).collect();
        let mailboxes: Vec<String> = domains
            .iter()
            .flat_map(|d| (0..3).map(move |i| format!("p{i}@{d}")))
            .collect();
        let host = HostBehaviour::new(SmtpPolicy::accept_only(&mailboxes))
            .latency(Duration::from_millis(10));
        let mx: Vec<(&str, &[u8])> = domains.iter().map(|d| (d.as_str(), &[3u8][..])).collect();
        let w = world(vec![(3, host)], &mx, StubZone::new()).await;
        let p = probing(
            &w,
            VerifySettings {
                rcpt_per_session: 4,
                per_host: 3,
                ..settings()
            },
        );
        let emails: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
        let v = verify(&w, &p, &emails).await;
        assert_eq!(statuses(&v), vec![Verified; emails.len()]);
        let s = &w.stubs[0];
        assert!(stat(s, |s| &s.max_concurrent) <= 3);
        assert!(
            stat(s, |s| &s.max_concurrent) >= 2,
            "sessions ran in parallel"
        );
    }

    #[tokio::test]
    async fn a_hosts_recipients_are_shared_evenly_by_its_sessions_round_after_round() {
        // 274 addresses and the canary: two rounds of five sessions of 28 (the last 23). Sizing
        // each new session by what is left when one ends would make the second round's
        // sessions smaller (the others still running are not counted) and need an eleventh.
        let mailboxes: Vec<String> = (0..274).map(|i| format!("p{i}@even.test")).collect();
        let host = HostBehaviour::new(SmtpPolicy::accept_only(&mailboxes))
            .latency(Duration::from_millis(2));
        let w = world(vec![(3, host)], &[("even.test", &[3])], StubZone::new()).await;
        let p = probing(
            &w,
            VerifySettings {
                rcpt_per_session: 50,
                per_host: 5,
                ..settings()
            },
        );
        let emails: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
        let v = verify(&w, &p, &emails).await;
        assert_eq!(statuses(&v), vec![Verified; emails.len()]);
        assert_eq!(stat(&w.stubs[0], |s| &s.sessions), 10);
        assert_eq!(stat(&w.stubs[0], |s| &s.rcpts), 275);
    }

    #[tokio::test]
    async fn greylisted_recipients_are_retried_after_the_wait() {
        let host = HostBehaviour::new(SmtpPolicy::accept_only(["ada@grey.test", "bo@plain.test"]))
            .greylist(Duration::from_millis(200))
            .greylist_only(["grey.test"]);
        let w = world(
            vec![(4, host)],
            &[("grey.test", &[4]), ("plain.test", &[4])],
            StubZone::new(),
        )
        .await;
        let p = probing(&w, settings());
        let v = verify(&w, &p, &["ada@grey.test", "x@grey.test", "bo@plain.test"]).await;
        assert_eq!(statuses(&v), [Verified, Invalid, Verified]);
        assert!(stat(&w.stubs[0], |s| &s.greylisted) > 0);
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    }

    #[tokio::test]
    async fn greylisting_that_outlasts_the_retries_is_unknown_with_one_warning() {
        let host = HostBehaviour::new(SmtpPolicy::accept_only(["ada@grey.test"]))
            .greylist(Duration::from_secs(60));
        let w = world(vec![(5, host)], &[("grey.test", &[5])], StubZone::new()).await;
        let p = probing(
            &w,
            VerifySettings {
                greylist_wait: Duration::from_millis(50),
                greylist_retries: 2,
                ..settings()
            },
        );
        let v = verify(&w, &p, &["ada@grey.test", "bo@grey.test"]).await;
        assert_eq!(statuses(&v), [Unknown, Unknown]);
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert!(
            v.warnings[0].contains("grey.test") && v.warnings[0].contains("greylisted"),
            "{}",
            v.warnings[0]
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_tried_twice_then_unknown() {
        let w = world(
            vec![(6, HostBehaviour::new(SmtpPolicy::Silent))],
            &[("quiet.test", &[6])],
            StubZone::new(),
        )
        .await;
        let p = probing(&w, settings());
        let v = verify(&w, &p, &["ada@quiet.test"]).await;
        assert_eq!(statuses(&v), [Unknown]);
        assert!(
            v.warnings[0].contains("stopped answering"),
            "{:?}",
            v.warnings
        );
    }

    #[tokio::test]
    async fn a_refusing_first_mx_hands_over_to_the_next() {
        // Nothing listens on 127.0.0.7: connections are refused.
        let host = HostBehaviour::new(SmtpPolicy::accept_only(["ada@two.test"]));
        let w = world(vec![(8, host)], &[("two.test", &[7, 8])], StubZone::new()).await;
        let p = probing(
            &w,
            VerifySettings {
                max_busy: 2,
                ..settings()
            },
        );
        let v = verify(&w, &p, &["ada@two.test", "bo@two.test"]).await;
        assert_eq!(statuses(&v), [Verified, Invalid]);
    }

    #[tokio::test]
    async fn internal_mail_servers_are_not_probed_unless_allowed() {
        let host = HostBehaviour::new(SmtpPolicy::AcceptAll);
        let w = world(vec![(9, host)], &[("inside.test", &[9])], StubZone::new()).await;
        let p = probing(
            &w,
            VerifySettings {
                allow_private: false,
                ..settings()
            },
        );
        let v = verify(&w, &p, &["ada@inside.test"]).await;
        assert_eq!(statuses(&v), [Unknown]);
        assert!(w.stubs[0].commands().is_empty(), "never connected");
        assert!(
            v.warnings[0].contains("BDJOBS_SMTP_ALLOW_PRIVATE"),
            "{:?}",
            v.warnings
        );
    }

    #[tokio::test]
    async fn utf8_local_parts_are_probed_only_where_smtputf8_is_offered() {
        let idn = idna::domain_to_ascii("郵件.商務").unwrap();
        let with = HostBehaviour::new(SmtpPolicy::accept_only([
            "êjness@utf8.test".to_owned(),
            format!("伊昭傑@{idn}"),
        ]))
        .smtputf8(true);
        let without = HostBehaviour::new(SmtpPolicy::AcceptAll);
        let w = world(
            vec![(10, with), (11, without)],
            &[
                ("utf8.test", &[10]),
                (idn.as_str(), &[10]),
                ("ascii.test", &[11]),
            ],
            StubZone::new(),
        )
        .await;
        let p = probing(&w, settings());
        let v = verify(
            &w,
            &p,
            &["êjness@utf8.test", "伊昭傑@郵件.商務", "êjness@ascii.test"],
        )
        .await;
        assert_eq!(statuses(&v), [Verified, Verified, Unknown]);
        assert_eq!(
            v.verdicts[1].address.as_deref(),
            Some(format!("伊昭傑@{idn}").as_str())
        );
        assert!(w.stubs[0]
            .commands()
            .iter()
            .any(|c| c.starts_with("MAIL FROM:") && c.ends_with(" SMTPUTF8")));
        assert!(!w.stubs[1].commands().iter().any(|c| c.contains('ê')));
        assert!(
            v.warnings.iter().any(|w| w.contains("SMTPUTF8")),
            "{:?}",
            v.warnings
        );
    }

    #[tokio::test]
    async fn role_and_disposable_addresses_are_risky_even_when_dns_fails() {
        let zone = StubZone::new()
            .servfail("broken.test")
            .servfail("mailinator.com");
        let w = world(vec![], &[], zone).await;
        let p = probing(&w, settings());
        let v = verify(
            &w,
            &p,
            &[
                "info@broken.test",
                "ada@mailinator.com",
                "ada@broken.test",
                "bad@@x",
            ],
        )
        .await;
        assert_eq!(statuses(&v), [Risky, Risky, Unknown, Invalid]);
    }

    #[tokio::test]
    async fn a_second_job_is_answered_from_the_cache() {
        let host = HostBehaviour::new(SmtpPolicy::accept_only(["ada@a.test"]));
        let w = world(vec![(12, host)], &[("a.test", &[12])], StubZone::new()).await;
        let p = probing(&w, settings());
        let first = verify(&w, &p, &["ada@a.test", "bo@a.test"]).await;
        let sessions = stat(&w.stubs[0], |s| &s.sessions);
        let second = verify(&w, &p, &["ada@a.test", "bo@a.test"]).await;
        assert_eq!(statuses(&first), statuses(&second));
        assert_eq!(
            stat(&w.stubs[0], |s| &s.sessions),
            sessions,
            "no new session"
        );
        let off = probing(
            &w,
            VerifySettings {
                cache_ttl: Duration::ZERO,
                ..settings()
            },
        );
        verify(&w, &off, &["ada@a.test"]).await;
        verify(&w, &off, &["ada@a.test"]).await;
        assert_eq!(stat(&w.stubs[0], |s| &s.sessions), sessions + 2);
    }

    #[tokio::test]
    async fn progress_counts_every_address_up_to_the_total() {
        let host = HostBehaviour::new(SmtpPolicy::accept_only(["ada@a.test"]));
        let w = world(vec![(13, host)], &[("a.test", &[13])], StubZone::new()).await;
        let p = probing(&w, settings());
        let seen = Mutex::new(Vec::new());
        let dns = HickoryMailResolver::new(Some(w.dns.addr()), Duration::from_millis(800)).unwrap();
        let emails: Vec<String> = ["ada@a.test", "ada@a.test", "bo@a.test", "@bad"]
            .iter()
            .map(|e| e.to_string())
            .collect();
        verify_addresses(
            &emails,
            Arc::new(dns),
            Some(&p),
            Duration::from_secs(60),
            &|pr| seen.lock().unwrap().push(pr),
        )
        .await;
        let seen = seen.into_inner().unwrap();
        let done: Vec<usize> = seen.iter().map(|p| p.done).collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
        assert_eq!(seen.last().unwrap().done, 4);
        assert!(seen.iter().all(|p| p.total == 4));
    }

    #[test]
    fn the_cache_forgets_the_oldest_beyond_its_size() {
        let c = VerdictCache::new(Duration::from_secs(60), 2);
        c.put("a".into(), Cached::Accepted);
        c.put("b".into(), Cached::Rejected);
        c.put("c".into(), Cached::Accepted);
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(Cached::Rejected));
        assert_eq!(c.get("c"), Some(Cached::Accepted));
    }

    #[test]
    fn a_refusing_host_gets_a_lower_limit_and_a_back_off() {
        let p = Politeness::new(10, 5);
        let host = ip(2);
        let now = Instant::now();
        let permits: Vec<_> = (0..3).map(|_| p.try_acquire(host, now).unwrap()).collect();
        let started = permits[0].started;
        drop(permits);
        let a = p.try_acquire(host, now).unwrap();
        let _b = p.try_acquire(host, now).unwrap();
        drop(a);
        assert!(!p.refused(host, started, Duration::from_secs(5), 3));
        assert!(matches!(p.try_acquire(host, Instant::now()), Err(Some(_))));
        let g = p.gates.lock().unwrap();
        assert_eq!(g.hosts[&host].limit, 1, "one session was still open");
    }

    fn no_mail_one(d: &str, n: usize) -> String {
        format!("{d} has no mail server; {n} contact(s) dropped")
    }

    #[test]
    fn one_dead_domain_reads_as_before() {
        let one = BTreeMap::from([("quietharbor.test".to_owned(), 1)]);
        assert_eq!(
            domains_warning(&one, no_mail_one, "have no mail server", "dropped").unwrap(),
            "quietharbor.test has no mail server; 1 contact(s) dropped"
        );
        assert_eq!(
            domains_warning(&BTreeMap::new(), no_mail_one, "y", "z"),
            None
        );
    }

    #[test]
    fn thousands_of_dead_domains_make_one_short_warning() {
        let domains: BTreeMap<String, usize> = (0..5000)
            .map(|i| (format!("d{i:04}.example"), 2))
            .chain([("xn--wgv71a119e.jp".to_owned(), 1)])
            .collect();
        let w = domains_warning(&domains, no_mail_one, "have no mail server", "dropped").unwrap();
        assert_eq!(
            w,
            "5001 domains have no mail server: d0000.example (2), d0001.example (2), \
d0002.example (2), d0003.example (2), d0004.example (2) and 4996 more; 10001 contact(s) dropped"
        );
        let idn = BTreeMap::from([("xn--wgv71a119e.jp".to_owned(), 3)]);
        assert!(domains_warning(&idn, no_mail_one, "-", "dropped")
            .unwrap()
            .starts_with("日本語.jp has no mail server"));
    }
}
