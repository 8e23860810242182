//! Optional SMTP mailbox probe: asks a domain's mail server whether it would
//! accept mail for an address (RCPT TO) without ever sending a message, and
//! detects catch-all servers that accept any address.
//!
//! The prober takes already-resolved IPs (see
//! [`crate::adapters::dns::smtp_targets`]) so that name resolution goes
//! through the same, possibly loopback, resolver as the MX check.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use rand::distr::{Alphanumeric, SampleString};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::domain::email::Check;

/// What the mail server said about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Accepted,
    /// The address was accepted, but so was a random address at the same
    /// domain, so acceptance proves nothing.
    AcceptedCatchAll,
    /// Permanent (5xx) rejection of the recipient: code and server text.
    Rejected(u16, String),
    /// Connect failure, timeout, 4xx, policy block, protocol error.
    Unknown(String),
}

impl ProbeOutcome {
    /// The `smtp` field of [`crate::domain::email::EmailChecks`].
    pub fn to_check(&self) -> Check {
        match self {
            ProbeOutcome::Accepted => Check::Pass,
            ProbeOutcome::AcceptedCatchAll => Check::Warn,
            ProbeOutcome::Rejected(..) => Check::Fail,
            ProbeOutcome::Unknown(_) => Check::Unknown,
        }
    }
}

#[async_trait]
pub trait SmtpProber: Send + Sync {
    /// Probes `address` at the given mail-server IPs, in order, stopping at
    /// the first definite answer.
    async fn probe(&self, targets: &[IpAddr], address: &str) -> ProbeOutcome;
}

/// Probes over plain TCP (no STARTTLS: RCPT answers do not need it).
#[derive(Debug, Clone)]
pub struct TcpSmtpProber {
    /// 25 in production; tests use their stub's port.
    pub port: u16,
    /// Name sent in EHLO/HELO.
    pub helo_name: String,
    /// Envelope sender for MAIL FROM.
    pub mail_from: String,
    /// Bound on the whole conversation with one server.
    pub timeout: Duration,
    /// How many of the targets to try at most, so a domain with many dead
    /// MX hosts cannot stall a job.
    pub max_targets: usize,
}

impl TcpSmtpProber {
    pub fn new(port: u16, helo_name: &str, mail_from: &str, timeout: Duration) -> Self {
        Self {
            port,
            helo_name: helo_name.to_string(),
            mail_from: mail_from.to_string(),
            timeout,
            max_targets: 3,
        }
    }

    async fn probe_one(&self, ip: IpAddr, address: &str, domain: &str) -> ProbeOutcome {
        let addr = SocketAddr::new(ip, self.port);
        let conversation = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let mut session = Session::new(stream);
            let outcome = self.converse(&mut session, address, domain).await;
            // Politeness only; the verdict is already known.
            let _ = session.command("QUIT").await;
            outcome
        };
        match tokio::time::timeout(self.timeout, conversation).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(reason)) => ProbeOutcome::Unknown(reason),
            Err(_) => ProbeOutcome::Unknown(format!("{addr} did not answer in time")),
        }
    }

    async fn converse(
        &self,
        s: &mut Session,
        address: &str,
        domain: &str,
    ) -> Result<ProbeOutcome, String> {
        let greeting = s.read_reply().await?;
        if greeting.code != 220 {
            return Err(format!("server refused the session: {greeting}"));
        }
        let ehlo = s.command(&format!("EHLO {}", self.helo_name)).await?;
        if !ehlo.is_positive() {
            let helo = s.command(&format!("HELO {}", self.helo_name)).await?;
            if !helo.is_positive() {
                return Err(format!("server refused HELO: {helo}"));
            }
        }
        let from = s
            .command(&format!("MAIL FROM:<{}>", self.mail_from))
            .await?;
        if !from.is_positive() {
            // A refused sender says nothing about the recipient.
            return Err(format!("server refused the sender: {from}"));
        }
        let rcpt = s.command(&format!("RCPT TO:<{address}>")).await?;
        match rcpt.code / 100 {
            2 => {}
            5 if rcpt.is_policy_block() => {
                return Err(format!("server blocked the probe by policy: {rcpt}"))
            }
            5 => return Ok(ProbeOutcome::Rejected(rcpt.code, rcpt.text)),
            _ => return Err(format!("server deferred the recipient: {rcpt}")),
        }
        let canary = format!("{}@{domain}", random_local_part());
        let catch_all = s.command(&format!("RCPT TO:<{canary}>")).await?;
        Ok(if catch_all.is_positive() {
            ProbeOutcome::AcceptedCatchAll
        } else {
            ProbeOutcome::Accepted
        })
    }
}

#[async_trait]
impl SmtpProber for TcpSmtpProber {
    async fn probe(&self, targets: &[IpAddr], address: &str) -> ProbeOutcome {
        // Values go verbatim into SMTP command lines: anything that could end
        // a line or the angle-bracket path would let input inject commands.
        for value in [address, &self.helo_name, &self.mail_from] {
            if value.is_empty() || value.chars().any(|c| c.is_control() || "<> ".contains(c)) {
                return ProbeOutcome::Unknown(format!("refusing to send {value:?} over SMTP"));
            }
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            return ProbeOutcome::Unknown(format!("{address:?} has no domain"));
        };
        let mut last = ProbeOutcome::Unknown("no mail server address to probe".into());
        for ip in targets.iter().take(self.max_targets.max(1)) {
            last = self.probe_one(*ip, address, domain).await;
            if !matches!(last, ProbeOutcome::Unknown(_)) {
                break;
            }
            tracing::debug!(%ip, outcome = ?last, "SMTP probe inconclusive, trying next host");
        }
        last
    }
}

fn random_local_part() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 20)
        .to_ascii_lowercase()
}

/// A complete (possibly multi-line) server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    /// Text of all lines, joined with `\n`.
    text: String,
}

impl Reply {
    fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// RFC 3463 class 5.7.x means "security or policy", i.e. the server
    /// refuses *us* (blocklists, reputation), not the mailbox.
    fn is_policy_block(&self) -> bool {
        self.text.trim_start().starts_with("5.7.")
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
    }
}

/// Bounds that keep a hostile server from making us buffer without limit.
const MAX_LINE: u64 = 4096;
const MAX_LINES: usize = 64;

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Session {
    fn new(stream: TcpStream) -> Self {
        let (r, w) = stream.into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("connection lost while sending: {e}"))?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<Reply, String> {
        let mut code = None;
        let mut text = Vec::new();
        for _ in 0..MAX_LINES {
            let mut line = String::new();
            let n = (&mut self.reader)
                .take(MAX_LINE)
                .read_line(&mut line)
                .await
                .map_err(|e| format!("connection lost while reading: {e}"))?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            if !line.ends_with('\n') {
                return Err("server sent an overlong line".into());
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let (this_code, last, rest) = parse_reply_line(line)
                .ok_or_else(|| format!("malformed SMTP reply line {line:?}"))?;
            if *code.get_or_insert(this_code) != this_code {
                return Err(format!("inconsistent codes in multi-line reply: {line:?}"));
            }
            text.push(rest.to_string());
            if last {
                return Ok(Reply {
                    code: this_code,
                    text: text.join("\n"),
                });
            }
        }
        Err("server sent an overlong reply".into())
    }
}

/// Splits `250-text` / `250 text` / `250` into (code, is-last-line, text).
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let digits = line.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = digits.parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    match line.as_bytes().get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::smtp_stub::{SmtpPolicy, StubSmtp};
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn prober(port: u16) -> TcpSmtpProber {
        TcpSmtpProber::new(
            port,
            "probe.bdjobs.test",
            "verify@bdjobs.test",
            Duration::from_millis(500),
        )
    }

    async fn stub(policy: SmtpPolicy) -> StubSmtp {
        StubSmtp::start("127.0.0.1:0".parse().unwrap(), policy)
            .await
            .unwrap()
    }

    #[test]
    fn reply_lines_are_split_into_code_continuation_and_text() {
        assert_eq!(
            parse_reply_line("250-PIPELINING"),
            Some((250, false, "PIPELINING"))
        );
        assert_eq!(parse_reply_line("250 OK"), Some((250, true, "OK")));
        assert_eq!(parse_reply_line("250"), Some((250, true, "")));
        assert_eq!(parse_reply_line("25"), None);
        assert_eq!(parse_reply_line("abc OK"), None);
        assert_eq!(parse_reply_line("250xOK"), None);
        assert_eq!(parse_reply_line("999 OK"), None);
    }

    #[test]
    fn enhanced_status_5_7_is_a_policy_block() {
        let r = Reply {
            code: 550,
            text: "5.7.1 blocked by RBL".into(),
        };
        assert!(r.is_policy_block());
        let r = Reply {
            code: 550,
            text: "5.1.1 no such user".into(),
        };
        assert!(!r.is_policy_block());
    }

    #[test]
    fn outcomes_map_to_smtp_checks() {
        assert_eq!(ProbeOutcome::Accepted.to_check(), Check::Pass);
        assert_eq!(ProbeOutcome::AcceptedCatchAll.to_check(), Check::Warn);
        assert_eq!(
            ProbeOutcome::Rejected(550, String::new()).to_check(),
            Check::Fail
        );
        assert_eq!(
            ProbeOutcome::Unknown(String::new()).to_check(),
            Check::Unknown
        );
    }

    #[test]
    fn canary_local_parts_are_random_lowercase() {
        let (a, b) = (random_local_part(), random_local_part());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[tokio::test]
    async fn a_listed_mailbox_is_accepted() {
        let s = stub(SmtpPolicy::accept_only(["jane@acme.test"])).await;
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "Jane@acme.test")
            .await;
        assert_eq!(out, ProbeOutcome::Accepted);
        let log = s.commands();
        assert!(log.iter().any(|c| c.starts_with("EHLO ")), "{log:?}");
        assert!(
            log.iter().any(|c| c == "RCPT TO:<Jane@acme.test>"),
            "{log:?}"
        );
        assert_eq!(log.last().map(String::as_str), Some("QUIT"));
        assert!(
            !log.iter().any(|c| c.eq_ignore_ascii_case("DATA")),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn an_unlisted_mailbox_is_rejected_with_the_server_text() {
        let s = stub(SmtpPolicy::accept_only(["jane@acme.test"])).await;
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "bob@acme.test")
            .await;
        let ProbeOutcome::Rejected(code, text) = out else {
            panic!("{out:?}");
        };
        assert_eq!(code, 550);
        assert!(text.contains("5.1.1"), "{text}");
    }

    #[tokio::test]
    async fn a_server_rejecting_everything_rejects() {
        let s = stub(SmtpPolicy::RejectAll).await;
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "jane@acme.test")
            .await;
        assert!(matches!(out, ProbeOutcome::Rejected(550, _)), "{out:?}");
    }

    #[tokio::test]
    async fn a_catch_all_server_is_detected() {
        let s = stub(SmtpPolicy::AcceptAll).await;
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "jane@acme.test")
            .await;
        assert_eq!(out, ProbeOutcome::AcceptedCatchAll);
        let rcpts: Vec<_> = s
            .commands()
            .into_iter()
            .filter(|c| c.starts_with("RCPT TO:"))
            .collect();
        assert_eq!(rcpts.len(), 2);
        assert!(rcpts[1].ends_with("@acme.test>"), "{rcpts:?}");
    }

    #[tokio::test]
    async fn a_tempfail_is_unknown() {
        let s = stub(SmtpPolicy::TempFail).await;
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "jane@acme.test")
            .await;
        assert!(
            matches!(&out, ProbeOutcome::Unknown(r) if r.contains("450")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_policy_block_is_unknown_not_rejected() {
        let s = stub(SmtpPolicy::PolicyBlock).await;
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "jane@acme.test")
            .await;
        assert!(matches!(out, ProbeOutcome::Unknown(_)), "{out:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unknown() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let out = prober(port).probe(&[LOCAL], "jane@acme.test").await;
        assert!(matches!(out, ProbeOutcome::Unknown(_)), "{out:?}");
    }

    #[tokio::test]
    async fn a_silent_server_is_unknown_within_the_timeout() {
        let s = stub(SmtpPolicy::Silent).await;
        let started = std::time::Instant::now();
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "jane@acme.test")
            .await;
        assert!(matches!(out, ProbeOutcome::Unknown(_)), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_server_without_ehlo_is_greeted_with_helo() {
        let s = StubSmtp::start_without_ehlo(
            "127.0.0.1:0".parse().unwrap(),
            SmtpPolicy::accept_only(["jane@acme.test"]),
        )
        .await
        .unwrap();
        let out = prober(s.addr().port())
            .probe(&[LOCAL], "jane@acme.test")
            .await;
        assert_eq!(out, ProbeOutcome::Accepted);
        assert!(s.commands().iter().any(|c| c.starts_with("HELO ")));
    }

    #[tokio::test]
    async fn a_mailbox_is_probed_at_the_host_its_mx_names() {
        use crate::adapters::dns::{smtp_targets, HickoryMailResolver, MailDomainResolver};
        use crate::adapters::dns_stub::{StubDns, StubZone};
        let smtp = stub(SmtpPolicy::accept_only(["jane@acme.test"])).await;
        let zone = StubZone::new()
            .mx("acme.test", 10, "mx.acme.test")
            .a("mx.acme.test", Ipv4Addr::LOCALHOST);
        let dns = StubDns::start("127.0.0.1:0".parse().unwrap(), zone)
            .await
            .unwrap();
        let resolver =
            HickoryMailResolver::new(Some(dns.addr()), Duration::from_millis(500)).unwrap();
        let hosts = resolver.mail_hosts("acme.test").await;
        let targets = smtp_targets(&resolver, &hosts).await;
        assert_eq!(targets, vec![LOCAL]);
        let p = prober(smtp.addr().port());
        assert_eq!(
            p.probe(&targets, "jane@acme.test").await,
            ProbeOutcome::Accepted
        );
        assert!(matches!(
            p.probe(&targets, "bob@acme.test").await,
            ProbeOutcome::Rejected(550, _)
        ));
    }

    #[tokio::test]
    async fn no_targets_is_unknown() {
        let out = prober(25).probe(&[], "jane@acme.test").await;
        assert!(matches!(out, ProbeOutcome::Unknown(_)));
    }

    #[tokio::test]
    async fn an_address_that_could_inject_commands_is_never_sent() {
        let s = stub(SmtpPolicy::AcceptAll).await;
        let p = prober(s.addr().port());
        for bad in ["jane@acme.test>\r\nDATA", "jane@acme.test\n", "no-domain"] {
            let out = p.probe(&[LOCAL], bad).await;
            assert!(matches!(out, ProbeOutcome::Unknown(_)), "{bad:?}: {out:?}");
        }
        assert!(s.commands().is_empty());
    }
}
