//! SMTP mailbox probing: asks a domain's mail server whether it would accept mail for
//! addresses (RCPT TO) without ever sending a message.
//!
//! The unit of work is a *session* ([`SmtpProber::session`]): one connection to one mail-server
//! IP, one EHLO, then for each domain segment a MAIL FROM and many RCPT TO (pipelined when the
//! server offers PIPELINING), with RSET between segments, and QUIT. What each reply means is
//! decided by the pure rules in [`crate::domain::probe`]; how sessions are planned, limited and
//! retried is the worker's verification engine (`worker::verify`). [`SmtpProber::probe`] is the
//! one-address form (address plus a catch-all canary in one session).
//!
//! The prober takes already-resolved IPs (see [`crate::adapters::dns::smtp_targets`]) so that
//! name resolution goes through the same, possibly loopback, resolver as the MX check.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::distr::{Alphanumeric, SampleString};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::domain::email::Check;
pub use crate::domain::probe::RcptAnswer;
use crate::domain::probe::{is_busy_reply, rcpt_answer};

/// What the mail server said about one address probed on its own.
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

/// The recipients of one domain within a session: one MAIL FROM transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub domain: String,
    pub recipients: Vec<String>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Every recipient got an answer.
    Done,
    /// The host said "not now, not so many" (421, connection refused, "too many connections",
    /// a close before the greeting): back off and try later; nothing was judged.
    Busy(String),
    /// A timeout or a reset mid-session: worth one more try.
    Transient(String),
    /// The server refused the session or the sender (5xx greeting, HELO or MAIL), or spoke
    /// something that is not SMTP: retrying the same host will not help.
    Refused(String),
}

/// What a session found: `answers[i][j]` answers `segments[i].recipients[j]`. A segment's list
/// is shorter than its recipients when the session ended first; the rest were not judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    pub answers: Vec<Vec<RcptAnswer>>,
    /// When each answer arrived, in the same shape: a greylisting server starts its clock at
    /// the recipient's first attempt, not at the end of a session of fifty.
    pub answered_at: Vec<Vec<Instant>>,
    pub end: SessionEnd,
}

#[async_trait]
pub trait SmtpProber: Send + Sync {
    /// One session with the server at `ip`: MAIL FROM once per segment, the segment's RCPTs,
    /// RSET between segments. Never fails: how it ended is in the report.
    async fn session(&self, ip: IpAddr, segments: &[Segment]) -> SessionReport;

    /// Probes one address at the given mail-server IPs, in order (at most three), stopping at
    /// the first definite answer; a random canary at the same domain detects catch-all servers.
    async fn probe(&self, targets: &[IpAddr], address: &str) -> ProbeOutcome {
        if let Some(why) = unsendable(address) {
            return ProbeOutcome::Unknown(why);
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            return ProbeOutcome::Unknown(format!("{address:?} has no domain"));
        };
        let segment = [Segment {
            domain: domain.to_owned(),
            recipients: vec![address.to_owned(), canary_address(domain)],
        }];
        let mut last = ProbeOutcome::Unknown("no mail server address to probe".into());
        for ip in targets.iter().take(3) {
            let report = self.session(*ip, &segment).await;
            let answers = &report.answers[0];
            last = match answers.first() {
                Some(RcptAnswer::Accepted) if answers.get(1) == Some(&RcptAnswer::Accepted) => {
                    ProbeOutcome::AcceptedCatchAll
                }
                Some(RcptAnswer::Accepted) => ProbeOutcome::Accepted,
                Some(RcptAnswer::Rejected(code, text)) => {
                    ProbeOutcome::Rejected(*code, text.clone())
                }
                Some(RcptAnswer::Deferred(code, text)) => {
                    ProbeOutcome::Unknown(format!("server deferred the recipient: {code} {text}"))
                }
                Some(RcptAnswer::Blocked(text)) => {
                    ProbeOutcome::Unknown(format!("server blocked the probe by policy: {text}"))
                }
                Some(other) => ProbeOutcome::Unknown(format!("not probed: {other:?}")),
                None => ProbeOutcome::Unknown(match report.end {
                    SessionEnd::Busy(why)
                    | SessionEnd::Transient(why)
                    | SessionEnd::Refused(why) => why,
                    SessionEnd::Done => "the server did not answer".into(),
                }),
            };
            if !matches!(last, ProbeOutcome::Unknown(_)) {
                break;
            }
            tracing::debug!(%ip, outcome = ?last, "SMTP probe inconclusive, trying next host");
        }
        last
    }
}

/// A random address at `domain` that no one has: if the server accepts it, it accepts anything.
pub fn canary_address(domain: &str) -> String {
    format!("{}@{domain}", random_local_part())
}

/// Values go verbatim into SMTP command lines: anything that could end a line or the
/// angle-bracket path would let input inject commands.
fn unsendable(value: &str) -> Option<String> {
    (value.is_empty() || value.chars().any(|c| c.is_control() || "<> ".contains(c)))
        .then(|| format!("refusing to send {value:?} over SMTP"))
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
    /// Bound on connecting and on waiting for each reply.
    pub timeout: Duration,
}

impl TcpSmtpProber {
    pub fn new(port: u16, helo_name: &str, mail_from: &str, timeout: Duration) -> Self {
        Self {
            port,
            helo_name: helo_name.to_string(),
            mail_from: mail_from.to_string(),
            timeout,
        }
    }

    async fn converse(
        &self,
        s: &mut Session,
        segments: &[Segment],
        answers: &mut [Vec<RcptAnswer>],
        answered_at: &mut [Vec<Instant>],
    ) -> SessionEnd {
        let greeting = match s.read_reply().await {
            Ok(r) => r,
            // Servers at their connection limit often just close.
            Err(SessionError::Closed) => {
                return SessionEnd::Busy("server closed the connection before its greeting".into())
            }
            Err(e) => return e.end(),
        };
        if greeting.code != 220 {
            return if greeting.code / 100 == 4 || is_busy_reply(greeting.code, &greeting.text) {
                SessionEnd::Busy(format!("server is busy: {greeting}"))
            } else {
                SessionEnd::Refused(format!("server refused the session: {greeting}"))
            };
        }
        let ehlo = match s.command(&format!("EHLO {}", self.helo_name)).await {
            Ok(r) => r,
            Err(e) => return e.end(),
        };
        let caps = if ehlo.is_positive() {
            Capabilities::from_ehlo(&ehlo.text)
        } else if ehlo.code == 421 {
            return SessionEnd::Busy(format!("server is busy: {ehlo}"));
        } else {
            match s.command(&format!("HELO {}", self.helo_name)).await {
                Ok(helo) if helo.is_positive() => Capabilities::default(),
                Ok(helo) if helo.code == 421 => {
                    return SessionEnd::Busy(format!("server is busy: {helo}"))
                }
                Ok(helo) => return SessionEnd::Refused(format!("server refused HELO: {helo}")),
                Err(e) => return e.end(),
            }
        };
        let mut in_transaction = false;
        for ((segment, found), at) in segments
            .iter()
            .zip(answers.iter_mut())
            .zip(answered_at.iter_mut())
        {
            // Recipients answered without asking the server, by position.
            let mut answered: Vec<Option<RcptAnswer>> = Vec::new();
            let mut to_send = Vec::new();
            for r in &segment.recipients {
                if let Some(why) = unsendable(r) {
                    answered.push(Some(RcptAnswer::Unsendable(why)));
                } else if !r.is_ascii() && !caps.smtputf8 {
                    answered.push(Some(RcptAnswer::NeedsSmtpUtf8));
                } else {
                    answered.push(None);
                    to_send.push(r.as_str());
                }
            }
            if to_send.is_empty() {
                fill(found, at, answered, Vec::new());
                continue;
            }
            let utf8 = if to_send.iter().any(|r| !r.is_ascii()) {
                " SMTPUTF8"
            } else {
                ""
            };
            let mut lines = Vec::with_capacity(to_send.len() + 2);
            if in_transaction {
                lines.push("RSET".to_owned());
            }
            lines.push(format!("MAIL FROM:<{}>{utf8}", self.mail_from));
            lines.extend(to_send.iter().map(|r| format!("RCPT TO:<{r}>")));
            let first_rcpt = lines.len() - to_send.len();
            if caps.pipelining {
                if let Err(e) = s.send_all(&lines).await {
                    return e.end();
                }
            }
            let mut replies = Vec::with_capacity(to_send.len());
            for (i, line) in lines.iter().enumerate() {
                let reply = if caps.pipelining {
                    s.read_reply().await
                } else {
                    s.command(line).await
                };
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        fill(found, at, answered, replies);
                        return e.end();
                    }
                };
                if reply.code == 421 {
                    fill(found, at, answered, replies);
                    return SessionEnd::Busy(format!("server is busy: {reply}"));
                }
                if i < first_rcpt {
                    if !reply.is_positive() {
                        // A refused sender says nothing about the recipients.
                        fill(found, at, answered, replies);
                        let what = if line == "RSET" { "RSET" } else { "the sender" };
                        return SessionEnd::Refused(format!("server refused {what}: {reply}"));
                    }
                    continue;
                }
                replies.push((rcpt_answer(reply.code, &reply.text), Instant::now()));
            }
            in_transaction = true;
            fill(found, at, answered, replies);
        }
        SessionEnd::Done
    }
}

/// Merges the answers given without the server with the server's, in recipient order, up to
/// the first recipient that got neither.
fn fill(
    found: &mut Vec<RcptAnswer>,
    at: &mut Vec<Instant>,
    answered: Vec<Option<RcptAnswer>>,
    replies: Vec<(RcptAnswer, Instant)>,
) {
    let now = Instant::now();
    let mut replies = replies.into_iter();
    for a in answered {
        match a.map(|a| (a, now)).or_else(|| replies.next()) {
            Some((a, when)) => {
                found.push(a);
                at.push(when);
            }
            None => break,
        }
    }
}

#[async_trait]
impl SmtpProber for TcpSmtpProber {
    async fn session(&self, ip: IpAddr, segments: &[Segment]) -> SessionReport {
        let mut answers: Vec<Vec<RcptAnswer>> = segments.iter().map(|_| Vec::new()).collect();
        let mut answered_at: Vec<Vec<Instant>> = segments.iter().map(|_| Vec::new()).collect();
        let report = |answers, answered_at, end| SessionReport {
            answers,
            answered_at,
            end,
        };
        for value in [&self.helo_name, &self.mail_from] {
            if let Some(why) = unsendable(value) {
                return report(answers, answered_at, SessionEnd::Refused(why));
            }
        }
        let addr = SocketAddr::new(ip, self.port);
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                let why = format!("{addr} did not accept a connection in time");
                return report(answers, answered_at, SessionEnd::Transient(why));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let why = format!("{addr} refused the connection");
                return report(answers, answered_at, SessionEnd::Busy(why));
            }
            Ok(Err(e)) => {
                let why = format!("cannot connect to {addr}: {e}");
                return report(answers, answered_at, SessionEnd::Transient(why));
            }
            Ok(Ok(stream)) => stream,
        };
        let mut session = Session::new(stream, self.timeout);
        let end = self
            .converse(&mut session, segments, &mut answers, &mut answered_at)
            .await;
        if end == SessionEnd::Done {
            // Politeness only; the verdicts are already known.
            let _ = session.command("QUIT").await;
        }
        report(answers, answered_at, end)
    }
}

/// The EHLO keywords the prober uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Capabilities {
    pipelining: bool,
    smtputf8: bool,
}

impl Capabilities {
    fn from_ehlo(text: &str) -> Self {
        let mut caps = Capabilities::default();
        // The first line is the server's name; keywords follow, one a line.
        for line in text.lines().skip(1) {
            let keyword = line.split_whitespace().next().unwrap_or_default();
            if keyword.eq_ignore_ascii_case("PIPELINING") {
                caps.pipelining = true;
            } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
                caps.smtputf8 = true;
            }
        }
        caps
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
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
    }
}

/// Bounds that keep a hostile server from making us buffer without limit.
const MAX_LINE: u64 = 4096;
const MAX_LINES: usize = 64;

/// Why a session's I/O stopped.
#[derive(Debug)]
enum SessionError {
    Timeout,
    Closed,
    Io(String),
    Protocol(String),
}

impl SessionError {
    fn end(self) -> SessionEnd {
        match self {
            SessionError::Timeout => {
                SessionEnd::Transient("the server did not answer in time".into())
            }
            SessionError::Closed => SessionEnd::Transient("server closed the connection".into()),
            SessionError::Io(e) => SessionEnd::Transient(format!("connection lost: {e}")),
            SessionError::Protocol(e) => SessionEnd::Refused(e),
        }
    }
}

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Session {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        let (r, w) = stream.into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
            timeout,
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SessionError> {
        self.send_all(std::slice::from_ref(&line.to_owned()))
            .await?;
        self.read_reply().await
    }

    /// Writes the lines in one go (RFC 2920 pipelining when more than one).
    async fn send_all(&mut self, lines: &[String]) -> Result<(), SessionError> {
        let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
        for l in lines {
            buf.push_str(l);
            buf.push_str("\r\n");
        }
        match tokio::time::timeout(self.timeout, self.writer.write_all(buf.as_bytes())).await {
            Err(_) => Err(SessionError::Timeout),
            Ok(Err(e)) => Err(SessionError::Io(e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, SessionError> {
        match tokio::time::timeout(self.timeout, self.read_reply_inner()).await {
            Err(_) => Err(SessionError::Timeout),
            Ok(r) => r,
        }
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, SessionError> {
        let mut code = None;
        let mut text = Vec::new();
        for _ in 0..MAX_LINES {
            let mut line = String::new();
            let n = (&mut self.reader)
                .take(MAX_LINE)
                .read_line(&mut line)
                .await
                .map_err(|e| SessionError::Io(e.to_string()))?;
            if n == 0 {
                return Err(SessionError::Closed);
            }
            if !line.ends_with('\n') {
                return Err(SessionError::Protocol(
                    "server sent an overlong line".into(),
                ));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let (this_code, last, rest) = parse_reply_line(line).ok_or_else(|| {
                SessionError::Protocol(format!("malformed SMTP reply line {line:?}"))
            })?;
            if *code.get_or_insert(this_code) != this_code {
                return Err(SessionError::Protocol(format!(
                    "inconsistent codes in multi-line reply: {line:?}"
                )));
            }
            text.push(rest.to_string());
            if last {
                return Ok(Reply {
                    code: this_code,
                    text: text.join("\n"),
                });
            }
        }
        Err(SessionError::Protocol(
            "server sent an overlong reply".into(),
        ))
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

    fn segment(domain: &str, recipients: &[&str]) -> Segment {
        Segment {
            domain: domain.into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_session_sends_mail_from_once_per_domain_with_rset_between() {
        let s = stub(SmtpPolicy::accept_only(["a@one.test", "b@two.test"])).await;
        let report = prober(s.addr().port())
            .session(
                LOCAL,
                &[
                    segment("one.test", &["a@one.test", "x@one.test"]),
                    segment("two.test", &["b@two.test"]),
                ],
            )
            .await;
        assert_eq!(report.end, SessionEnd::Done);
        assert_eq!(report.answers[0][0], RcptAnswer::Accepted);
        assert!(matches!(report.answers[0][1], RcptAnswer::Rejected(550, _)));
        assert_eq!(report.answers[1], vec![RcptAnswer::Accepted]);
        let log = s.commands();
        let verbs: Vec<&str> = log.iter().map(|c| &c[..4]).collect();
        assert_eq!(
            verbs,
            ["EHLO", "MAIL", "RCPT", "RCPT", "RSET", "MAIL", "RCPT", "QUIT"]
        );
    }

    #[tokio::test]
    async fn a_utf8_recipient_is_sent_only_with_smtputf8() {
        use crate::adapters::smtp_stub::HostBehaviour;
        let with = StubSmtp::start_with(
            "127.0.0.1:0".parse().unwrap(),
            HostBehaviour::new(SmtpPolicy::accept_only(["êjness@iana.org"])).smtputf8(true),
        )
        .await
        .unwrap();
        let report = prober(with.addr().port())
            .session(LOCAL, &[segment("iana.org", &["êjness@iana.org"])])
            .await;
        assert_eq!(report.answers[0], vec![RcptAnswer::Accepted]);
        assert!(with
            .commands()
            .contains(&"MAIL FROM:<verify@bdjobs.test> SMTPUTF8".to_owned()));
        let without = stub(SmtpPolicy::AcceptAll).await;
        let report = prober(without.addr().port())
            .session(
                LOCAL,
                &[segment("iana.org", &["êjness@iana.org", "plain@iana.org"])],
            )
            .await;
        assert_eq!(
            report.answers[0],
            vec![RcptAnswer::NeedsSmtpUtf8, RcptAnswer::Accepted]
        );
        assert!(!without.commands().iter().any(|c| !c.is_ascii()));
    }

    #[tokio::test]
    async fn a_server_over_its_session_limit_is_busy_not_a_rejection() {
        use crate::adapters::smtp_stub::HostBehaviour;
        let s = StubSmtp::start_with(
            "127.0.0.1:0".parse().unwrap(),
            HostBehaviour::new(SmtpPolicy::AcceptAll).max_sessions(1),
        )
        .await
        .unwrap();
        let _held = TcpStream::connect(s.addr()).await.unwrap();
        // Let the stub count the first connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let report = prober(s.addr().port())
            .session(LOCAL, &[segment("a.test", &["x@a.test"])])
            .await;
        assert!(matches!(report.end, SessionEnd::Busy(_)), "{report:?}");
        assert!(report.answers[0].is_empty());
    }

    #[tokio::test]
    async fn recipients_past_the_per_session_limit_are_too_many() {
        use crate::adapters::smtp_stub::HostBehaviour;
        let s = StubSmtp::start_with(
            "127.0.0.1:0".parse().unwrap(),
            HostBehaviour::new(SmtpPolicy::AcceptAll).max_rcpt(2),
        )
        .await
        .unwrap();
        let report = prober(s.addr().port())
            .session(
                LOCAL,
                &[segment("a.test", &["x@a.test", "y@a.test", "z@a.test"])],
            )
            .await;
        assert_eq!(
            report.answers[0],
            vec![
                RcptAnswer::Accepted,
                RcptAnswer::Accepted,
                RcptAnswer::TooMany
            ]
        );
        // Each answer carries its own arrival time, in order: greylisting clocks start there.
        let at = &report.answered_at[0];
        assert_eq!(at.len(), 3);
        assert!(at.windows(2).all(|w| w[0] <= w[1]), "{at:?}");
    }

    #[test]
    fn ehlo_keywords_are_read_after_the_server_name() {
        let caps = Capabilities::from_ehlo("mx.test greets you\nPIPELINING\nSIZE 100\nSMTPUTF8");
        assert!(caps.pipelining && caps.smtputf8);
        assert_eq!(
            Capabilities::from_ehlo("PIPELINING"),
            Capabilities::default()
        );
    }
}
