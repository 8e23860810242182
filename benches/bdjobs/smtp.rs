//! Verification at list scale: `worker::verify::verify_addresses` (the `email_verify` engine)
//! on 5,000 addresses over 500 domains, with SMTP probing on, against 20 stub mail hosts on
//! 127.0.0.2–21 that behave like loaded real ones: 80 ms per reply, at most 5 sessions per
//! client (421 beyond), at most 50 RCPT per session (452 beyond), 10% of domains greylisting
//! for 3 s, 5% catch-all. DNS is a stub nameserver on 127.0.0.1 mapping each domain's MX to its
//! host.
//!
//! Baseline: the time a perfect polite verifier needs under the same limits, computed from the
//! parameters (see [`bound`]). Accuracy: every verdict against the stubs' ground truth
//! (`HostBehaviour::accepts`, catch-all domains). Peak RSS: this process's `VmHWM`, stubs
//! included (run `-- smtp` alone for a figure of this benchmark only).

use crate::report::{Report, Row};
use crate::Scale;
use bdjobs::adapters::dns::HickoryMailResolver;
use bdjobs::adapters::dns_stub::{StubDns, StubZone};
use bdjobs::adapters::smtp::TcpSmtpProber;
use bdjobs::adapters::smtp_stub::{HostBehaviour, SmtpPolicy, StubSmtp, StubStats};
use bdjobs::domain::email::EmailStatus;
use bdjobs::worker::verify::{verify_addresses, Probing, VerifySettings};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: usize = 20;
const LATENCY: Duration = Duration::from_millis(80);
const PER_HOST: usize = 5;
const RCPT_PER_SESSION: usize = 50;
const GREYLIST: Duration = Duration::from_secs(3);
/// Of every 10 addresses at a domain, this many have a mailbox.
const REAL_OF_10: usize = 7;

fn domain_name(d: usize) -> String {
    format!("d{d}.bench.test")
}

/// Domain `d` is on host `d % HOSTS`; mixing in `d / HOSTS` spreads the greylisting (10%) and
/// catch-all (5%) domains over every host, as on the internet.
fn greylisting(d: usize) -> bool {
    (d / HOSTS + d % HOSTS) % 10 == 3
}

fn catch_all(d: usize) -> bool {
    (d / HOSTS + d % HOSTS) % 20 == 7
}

/// Replies a session needs beyond its RCPTs: the greeting, EHLO, MAIL FROM; and RSET + MAIL
/// for each further domain in it.
fn replies(recipients: usize, domains: usize, cap: usize) -> usize {
    if recipients == 0 {
        return 0;
    }
    let sessions = recipients.div_ceil(cap);
    sessions * 3 + domains.saturating_sub(sessions) * 2 + recipients
}

/// The least time any verifier keeping the same limits needs: for each host, its replies
/// (every address and one canary per domain, in sessions of at most `cap` RCPTs) spread
/// perfectly over `per_host` connections at `latency` each; and for its greylisted recipients,
/// the first RCPT's round trips, the greylisting wait, then their replies again. The slowest
/// host sets the bound.
fn bound(
    hosts: &[(usize, usize, usize, usize)],
    per_host: usize,
    cap: usize,
    latency: Duration,
) -> Duration {
    hosts
        .iter()
        .map(|&(recipients, domains, grey_recipients, grey_domains)| {
            let first = latency * replies(recipients, domains, cap).div_ceil(per_host) as u32;
            let retry = if grey_recipients == 0 {
                Duration::ZERO
            } else {
                LATENCY * 4
                    + GREYLIST
                    + LATENCY
                        * replies(grey_recipients, grey_domains, cap).div_ceil(per_host) as u32
            };
            first.max(retry)
        })
        .max()
        .unwrap_or_default()
}

/// A `Vm*` field of this process's status, in MB (the stubs run in it too).
fn vm_mb(field: &str) -> anyhow::Result<f64> {
    crate::rss::vm_mb(std::process::id(), field)
}

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let contacts = scale.n(5000, 200);
    let domains = (contacts / 10).max(HOSTS);
    let rss_before = vm_mb("VmRSS:")?;

    // The world: who has a mailbox where.
    let mut zone = StubZone::new();
    let mut mailboxes: Vec<Vec<String>> = vec![Vec::new(); HOSTS];
    let mut catch_alls: Vec<Vec<String>> = vec![Vec::new(); HOSTS];
    let mut greys: Vec<Vec<String>> = vec![Vec::new(); HOSTS];
    let mut emails = Vec::with_capacity(contacts);
    let mut shape = vec![(0, 0, 0, 0); HOSTS];
    for h in 0..HOSTS {
        zone = zone.a(
            &format!("mx{h}.bench.test"),
            Ipv4Addr::new(127, 0, 0, 2 + h as u8),
        );
    }
    for d in 0..domains {
        let h = d % HOSTS;
        let name = domain_name(d);
        zone = zone.mx(&name, 10, &format!("mx{h}.bench.test"));
        let here = contacts / domains + usize::from(d < contacts % domains);
        for j in 0..here {
            let address = format!("person{j}@{name}");
            if j % 10 < REAL_OF_10 {
                mailboxes[h].push(address.clone());
            }
            emails.push(address);
        }
        if catch_all(d) {
            catch_alls[h].push(name.clone());
        }
        let s = &mut shape[h];
        s.0 += here + 1;
        s.1 += 1;
        if greylisting(d) {
            greys[h].push(name.clone());
            s.2 += here + 1;
            s.3 += 1;
        }
    }
    let fleet: Vec<(IpAddr, HostBehaviour)> = (0..HOSTS)
        .map(|h| {
            let b = HostBehaviour::new(SmtpPolicy::accept_only(&mailboxes[h]))
                .catch_all(&catch_alls[h])
                .greylist(GREYLIST)
                .greylist_only(&greys[h])
                .latency(LATENCY)
                .max_sessions(PER_HOST)
                .max_rcpt(RCPT_PER_SESSION);
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + h as u8)), b)
        })
        .collect();
    let (port, stubs) = StubSmtp::start_fleet(fleet).await?;
    let dns = StubDns::start("127.0.0.1:0".parse()?, zone).await?;
    let resolver = HickoryMailResolver::new(Some(dns.addr()), Duration::from_secs(2))?;
    let probing = Probing::new(
        Arc::new(TcpSmtpProber::new(
            port,
            "probe.bench.test",
            "verify@bench.test",
            Duration::from_secs(10),
        )),
        VerifySettings {
            // The bound is about the servers' limits, so the worker's own cap must not bind:
            // every host may have its 5 sessions at once.
            concurrency: HOSTS * PER_HOST,
            per_host: PER_HOST,
            rcpt_per_session: RCPT_PER_SESSION,
            greylist_wait: GREYLIST,
            allow_private: true,
            cache_ttl: Duration::ZERO,
            ..VerifySettings::default()
        },
    );
    // What one reply really costs on this machine now (timer wake-ups are late on a loaded
    // machine): one session of 50 RCPTs, alone, against host 0.
    let calibration = {
        use bdjobs::adapters::smtp::{Segment, SmtpProber};
        let prober = TcpSmtpProber::new(
            port,
            "probe.bench.test",
            "verify@bench.test",
            Duration::from_secs(10),
        );
        let recipients: Vec<String> = (0..RCPT_PER_SESSION)
            .map(|i| format!("c{i}@calibration.test"))
            .collect();
        let t = Instant::now();
        prober
            .session(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                &[Segment {
                    domain: "calibration.test".into(),
                    recipients,
                }],
            )
            .await;
        // Greeting, EHLO, MAIL, the RCPTs, QUIT.
        t.elapsed() / (RCPT_PER_SESSION as u32 + 4)
    };
    eprintln!(
        "   one reply takes {:.1} ms here (nominal {} ms)",
        calibration.as_secs_f64() * 1000.0,
        LATENCY.as_millis()
    );
    eprintln!(
        "   {contacts} addresses over {domains} domains on {HOSTS} hosts (port {port}), \
         {} ms a reply...",
        LATENCY.as_millis()
    );
    let started = Instant::now();
    let timeline = std::sync::Mutex::new(Vec::new());
    let found = verify_addresses(
        &emails,
        Arc::new(resolver),
        Some(&probing),
        Duration::from_secs(1200),
        &|p| {
            if let Ok(mut t) = timeline.lock() {
                t.push((started.elapsed(), p.done, p.greylisted));
            }
        },
    )
    .await;
    let wall = started.elapsed();
    // Where the time went: addresses done and waiting for greylisting, each second.
    let mut next = Duration::ZERO;
    let mut line = String::from("   timeline (s: done/greylisted):");
    for (at, done, grey) in timeline.into_inner().unwrap_or_default() {
        if at >= next {
            line.push_str(&format!(" {:.0}: {done}/{grey}", at.as_secs_f64()));
            next = at + Duration::from_secs(1);
        }
    }
    eprintln!("{line}");
    let peak = vm_mb("VmHWM:")?;

    let catch_all_set: HashSet<String> = catch_alls.iter().flatten().cloned().collect();
    let mut right = 0;
    let mut wrong = Vec::new();
    for (e, v) in emails.iter().zip(&found.verdicts) {
        let d = e.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let accepted = stubs.iter().any(|s| s.behaviour().accepts(e));
        let expected = if catch_all_set.contains(d) {
            EmailStatus::Risky
        } else if accepted {
            EmailStatus::Verified
        } else {
            EmailStatus::Invalid
        };
        if v.status == expected {
            right += 1;
        } else {
            wrong.push(format!("{e}: {:?}, expected {expected:?}", v.status));
        }
    }
    for w in wrong.iter().take(5) {
        eprintln!("   wrong: {w}");
    }
    let perfect = bound(&shape, PER_HOST, RCPT_PER_SESSION, LATENCY);
    let perfect_here = bound(&shape, PER_HOST, RCPT_PER_SESSION, calibration);
    let sum = |f: fn(&StubStats) -> &std::sync::atomic::AtomicUsize| -> usize {
        stubs.iter().map(|s| StubStats::get(f(s.stats()))).sum()
    };
    let sessions = sum(|s| &s.sessions);
    let rcpts = sum(|s| &s.rcpts);
    let max_open = stubs
        .iter()
        .map(|s| StubStats::get(&s.stats().max_concurrent))
        .max()
        .unwrap_or(0);
    let ratio = wall.as_secs_f64() / perfect.as_secs_f64();
    report.add(
        Row::new(
            "smtp",
            format!(
                "wall time, {contacts} addresses / {domains} domains / {HOSTS} hosts, 80 ms a \
                 reply, 5 sessions & 50 RCPT per session, 10% greylisting 3 s, worker cap {} sessions",
                HOSTS * PER_HOST
            ),
            format!("{:.1} s", wall.as_secs_f64()),
        )
        .baseline(
            format!("perfect polite verifier: {:.1} s", perfect.as_secs_f64()),
            ratio,
        )
        .target("≤ 2× the bound", ratio <= 2.0),
    );
    let ratio_here = wall.as_secs_f64() / perfect_here.as_secs_f64();
    report.add(
        Row::new(
            "smtp",
            format!(
                "the same wall time, against the bound at the reply time measured in this run ({:.1} ms, one session alone)",
                calibration.as_secs_f64() * 1000.0
            ),
            format!("{:.1} s", wall.as_secs_f64()),
        )
        .baseline(
            format!("perfect polite verifier: {:.1} s", perfect_here.as_secs_f64()),
            ratio_here,
        ),
    );
    let accuracy = right as f64 / emails.len().max(1) as f64;
    report.add(
        Row::new(
            "smtp",
            "accuracy against the stubs' ground truth",
            format!("{:.2}% ({right}/{})", accuracy * 100.0, emails.len()),
        )
        .target("100%", right == emails.len()),
    );
    report.add(
        Row::new(
            "smtp",
            "sessions, RCPT per session, most sessions open on one host, 421s, 452s, greylist deferrals",
            format!(
                "{sessions}, {:.1}, {max_open}, {}, {}, {}",
                rcpts as f64 / sessions.max(1) as f64,
                sum(|s| &s.turned_away),
                sum(|s| &s.too_many),
                sum(|s| &s.greylisted)
            ),
        ),
    );
    report.add(
        Row::new(
            "smtp",
            "peak RSS of the process (stubs included), MB",
            format!("{peak:.1}"),
        )
        .baseline(
            format!("before the run: {rss_before:.1} MB"),
            peak / rss_before,
        )
        .target("≤ 150 MB", peak <= 150.0),
    );
    Ok(())
}
