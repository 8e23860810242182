//! The pure rules of SMTP probing at list scale: which mail-server addresses may be probed at
//! all, what an RCPT reply means, how a host's waiting recipients are cut into sessions, and how
//! progress reads to a person. The worker's verification engine (`worker::verify`) owns the
//! timing and the sockets; everything it decides without them is here, so it can be tested
//! without a network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// True for addresses that name an internal network or no real host: loopback, RFC 1918,
/// CGNAT (100.64/10), link-local (169.254/16, fe80::/10), unique-local (fc00::/7), multicast,
/// unspecified, "this network" (0/8), broadcast, and IPv4-mapped IPv6 forms of those. An MX
/// pointing there is either a misconfiguration or an attempt to make the prober knock on the
/// operator's own network, so it is never connected to unless the operator allows it.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// What one RCPT TO reply says about the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptAnswer {
    /// 2xx: the server would take mail for it.
    Accepted,
    /// 5xx other than a policy block: no such user (or mailbox disabled).
    Rejected(u16, String),
    /// 5xx with enhanced status 5.7.x: the server refuses *us*, which says nothing about the
    /// mailbox.
    Blocked(String),
    /// 4xx: greylisting, a full mailbox, a busy server; asking again later may answer.
    Deferred(u16, String),
    /// The server's limit of recipients per session (452 4.5.3 "too many recipients"): the
    /// recipient was not judged and goes to a new session.
    TooMany,
    /// The local part is not ASCII and the server does not offer SMTPUTF8, so it was not sent.
    NeedsSmtpUtf8,
    /// Never sent: the value could have ended an SMTP command line.
    Unsendable(String),
}

/// Reads an RCPT reply. `text` is the reply text without the code (multi-line joined).
pub fn rcpt_answer(code: u16, text: &str) -> RcptAnswer {
    let t = text.trim_start();
    let lower = t.to_ascii_lowercase();
    let too_many =
        t.starts_with("4.5.3") || t.starts_with("5.5.3") || lower.contains("too many recipients");
    match code / 100 {
        2 => RcptAnswer::Accepted,
        4 | 5 if too_many => RcptAnswer::TooMany,
        4 => RcptAnswer::Deferred(code, text.to_owned()),
        5 if t.starts_with("5.7.") => RcptAnswer::Blocked(format!("{code} {text}")),
        5 => RcptAnswer::Rejected(code, text.to_owned()),
        _ => RcptAnswer::Deferred(code, text.to_owned()),
    }
}

/// True when a reply at connection level (greeting, or any reply with code 421) says "not now,
/// not so many": the host is busy or limits connections per client. That calls for backing
/// off, never for judging a recipient.
pub fn is_busy_reply(code: u16, text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    code == 421
        || (code / 100 == 4
            && (lower.contains("too many connections") || lower.contains("too many sessions")))
}

/// Cuts the next session's recipients out of a host's queue: `queue` is the host's waiting
/// recipients as (group, ready) pairs in queue order, where a group is a domain. The first `cap`
/// ready recipients in queue order are taken (so nobody waits behind later arrivals), and
/// returned as positions in `queue` grouped by domain in first-seen order, so that each domain
/// costs one MAIL FROM (and one RSET) in the session.
pub fn take_batch<G: PartialEq + Copy>(queue: &[(G, bool)], cap: usize) -> Vec<usize> {
    let mut groups: Vec<(G, Vec<usize>)> = Vec::new();
    let mut taken = 0;
    for (i, &(group, ready)) in queue.iter().enumerate() {
        if !ready || taken == cap {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, items)) => items.push(i),
            None => groups.push((group, vec![i])),
        }
        taken += 1;
    }
    groups.into_iter().flat_map(|(_, items)| items).collect()
}

/// Where a verification run stands, for the progress message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyProgress {
    /// Addresses with a final verdict.
    pub done: usize,
    pub total: usize,
    /// Addresses waiting for a greylisting retry.
    pub greylisted: usize,
    /// Rough time left, once there is something to estimate from.
    pub eta: Option<Duration>,
}

impl VerifyProgress {
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        }
    }

    /// "Verifying emails: 1,234 of 5,000 checked, 120 waiting for a greylisting retry, about
    /// 2 min left"
    pub fn message(&self) -> String {
        let mut s = format!(
            "Verifying emails: {} of {} checked",
            thousands(self.done),
            thousands(self.total)
        );
        if self.greylisted > 0 {
            s.push_str(&format!(
                ", {} waiting for a greylisting retry",
                thousands(self.greylisted)
            ));
        }
        if let Some(eta) = self.eta.filter(|_| self.done < self.total) {
            s.push_str(&format!(", about {} left", rough(eta)));
        }
        s
    }
}

/// Estimates the time left from the rate so far, and never less than the wait for the next
/// greylisting retry still to come.
pub fn estimate_left(
    elapsed: Duration,
    done: usize,
    total: usize,
    next_retry_in: Option<Duration>,
) -> Option<Duration> {
    let by_rate =
        (done > 0 && done < total).then(|| elapsed.mul_f64((total - done) as f64 / done as f64));
    match (by_rate, next_retry_in) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rough(d: Duration) -> String {
    let secs = d.as_secs_f64().ceil() as u64;
    match secs {
        0..=59 => format!("{} s", secs.max(1)),
        60..=5399 => format!("{} min", (secs + 30) / 60),
        _ => format!("{:.1} h", secs as f64 / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Addresses of other networks are built from octets: they are inputs to a classifier, and
    // the source names no address outside loopback as text.
    fn v4(o: [u8; 4]) -> String {
        std::net::Ipv4Addr::from(o).to_string()
    }

    fn mapped(o: [u8; 4]) -> String {
        std::net::Ipv4Addr::from(o).to_ipv6_mapped().to_string()
    }

    #[test]
    fn internal_and_special_ranges_are_internal() {
        for s in [
            "127.0.0.1",
            "127.9.9.9",
            v4([10, 1, 2, 3]).as_str(),
            v4([172, 16, 0, 1]).as_str(),
            v4([172, 31, 255, 255]).as_str(),
            v4([192, 168, 1, 1]).as_str(),
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            mapped([10, 0, 0, 1]).as_str(),
        ] {
            assert!(is_internal(ip(s)), "{s}");
        }
    }

    #[test]
    fn public_addresses_are_not_internal() {
        for s in [
            v4([8, 8, 8, 8]).as_str(),
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "2a00:1450::1",
            mapped([8, 8, 8, 8]).as_str(),
        ] {
            assert!(!is_internal(ip(s)), "{s}");
        }
    }

    #[test]
    fn rcpt_replies_are_read_by_code_and_enhanced_status() {
        assert_eq!(rcpt_answer(250, "2.1.5 ok"), RcptAnswer::Accepted);
        assert_eq!(
            rcpt_answer(550, "5.1.1 no such user"),
            RcptAnswer::Rejected(550, "5.1.1 no such user".into())
        );
        assert!(matches!(
            rcpt_answer(550, "5.7.1 client blocked"),
            RcptAnswer::Blocked(_)
        ));
        assert!(matches!(
            rcpt_answer(450, "4.7.1 greylisted"),
            RcptAnswer::Deferred(450, _)
        ));
        assert!(matches!(
            rcpt_answer(452, "4.2.2 mailbox full"),
            RcptAnswer::Deferred(452, _)
        ));
        assert_eq!(
            rcpt_answer(452, "4.5.3 too many recipients"),
            RcptAnswer::TooMany
        );
        assert_eq!(rcpt_answer(452, "Too many recipients"), RcptAnswer::TooMany);
    }

    #[test]
    fn a_421_or_too_many_connections_is_a_busy_host() {
        assert!(is_busy_reply(421, "4.7.0 try later"));
        assert!(is_busy_reply(450, "too many connections from your IP"));
        assert!(!is_busy_reply(450, "4.2.0 mailbox busy"));
        assert!(!is_busy_reply(554, "go away"));
    }

    #[test]
    fn a_batch_takes_ready_recipients_up_to_the_cap_grouped_by_domain() {
        let q = [
            (1, true),
            (2, true),
            (1, false),
            (1, true),
            (3, true),
            (2, true),
        ];
        assert_eq!(take_batch(&q, 4), vec![0, 3, 1, 4]);
        assert_eq!(take_batch(&q, 10), vec![0, 3, 1, 5, 4]);
        assert!(take_batch(&[(1, false)], 10).is_empty());
    }

    #[test]
    fn progress_reads_checked_waiting_and_time_left() {
        let p = VerifyProgress {
            done: 1234,
            total: 5000,
            greylisted: 120,
            eta: Some(Duration::from_secs(100)),
        };
        assert_eq!(
            p.message(),
            "Verifying emails: 1,234 of 5,000 checked, 120 waiting for a greylisting retry, about 2 min left"
        );
        assert!((p.fraction() - 0.2468).abs() < 1e-9);
        let done = VerifyProgress {
            done: 3,
            total: 3,
            greylisted: 0,
            eta: Some(Duration::from_secs(5)),
        };
        assert_eq!(done.message(), "Verifying emails: 3 of 3 checked");
    }

    #[test]
    fn time_left_follows_the_rate_and_waits_for_greylisting() {
        let s = Duration::from_secs;
        assert_eq!(estimate_left(s(10), 100, 300, None), Some(s(20)));
        assert_eq!(estimate_left(s(10), 100, 300, Some(s(60))), Some(s(60)));
        assert_eq!(estimate_left(s(10), 0, 300, None), None);
        assert_eq!(estimate_left(s(10), 0, 300, Some(s(30))), Some(s(30)));
    }
}
