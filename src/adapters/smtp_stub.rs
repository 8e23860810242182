//! A loopback SMTP responder that answers RCPT TO according to a policy and behaves like a
//! real mail host under load: a reply latency, per-domain catch-all, greylisting, a limit of
//! sessions per client (421) and of recipients per session (452), SMTPUTF8 on request. The demo
//! and the tests exercise the prober against it without touching a real mail server. It never
//! accepts message data: DATA is refused, because a probe that reached DATA would be a bug.
//!
//! Several stubs can share one port on different loopback addresses (127.0.0.2, 127.0.0.3, ...:
//! any 127/8 address binds on Linux), so a stub DNS zone can send each domain's MX to its own
//! "host" while the prober keeps one SMTP port ([`StubSmtp::start_fleet`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How the stub answers RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpPolicy {
    /// 250 for every recipient (a catch-all domain).
    AcceptAll,
    /// 250 for the listed (lowercase) addresses, 550 5.1.1 for the rest.
    AcceptOnly(HashSet<String>),
    /// 550 5.1.1 for every recipient.
    RejectAll,
    /// 450 4.2.0 for every recipient (overload).
    TempFail,
    /// 550 5.7.1 for every recipient: the *client* is blocked.
    PolicyBlock,
    /// Accepts connections but never says anything.
    Silent,
}

impl SmtpPolicy {
    pub fn accept_only<I, S>(addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        SmtpPolicy::AcceptOnly(
            addresses
                .into_iter()
                .map(|a| a.as_ref().to_lowercase())
                .collect(),
        )
    }
}

/// How a stub host behaves beyond its policy. `Default` is an idealised server: instant
/// replies, no limits, no greylisting, PIPELINING but no SMTPUTF8.
#[derive(Debug, Clone)]
pub struct HostBehaviour {
    pub policy: SmtpPolicy,
    /// Answers EHLO; `false` answers 502, as very old servers do.
    pub ehlo: bool,
    pub pipelining: bool,
    pub smtputf8: bool,
    /// Added before every reply, the greeting included.
    pub latency: Duration,
    /// Domains (lowercase) whose every address is accepted.
    pub catch_all_domains: HashSet<String>,
    /// Greylisting: a recipient is deferred (450 4.7.1) until this long after it was first
    /// asked for.
    pub greylist: Option<Duration>,
    /// The greylisted domains; `None` greylists every domain.
    pub greylist_domains: Option<HashSet<String>>,
    /// Sessions one client address may hold at once; one more gets `421` and a close.
    pub max_sessions: Option<usize>,
    /// RCPTs one session may send; the next get `452 4.5.3 too many recipients`.
    pub max_rcpt: Option<usize>,
}

impl HostBehaviour {
    pub fn new(policy: SmtpPolicy) -> Self {
        Self {
            policy,
            ehlo: true,
            pipelining: true,
            smtputf8: false,
            latency: Duration::ZERO,
            catch_all_domains: HashSet::new(),
            greylist: None,
            greylist_domains: None,
            max_sessions: None,
            max_rcpt: None,
        }
    }

    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    pub fn greylist(mut self, d: Duration) -> Self {
        self.greylist = Some(d);
        self
    }

    pub fn greylist_only<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, domains: I) -> Self {
        self.greylist_domains = Some(lower_set(domains));
        self
    }

    pub fn catch_all<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, domains: I) -> Self {
        self.catch_all_domains = lower_set(domains);
        self
    }

    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = Some(n);
        self
    }

    pub fn max_rcpt(mut self, n: usize) -> Self {
        self.max_rcpt = Some(n);
        self
    }

    pub fn smtputf8(mut self, on: bool) -> Self {
        self.smtputf8 = on;
        self
    }

    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }

    /// What this host would finally answer for `address`, greylisting aside: the ground truth
    /// a benchmark scores a verifier against. `true` = accepted.
    pub fn accepts(&self, address: &str) -> bool {
        let address = address.to_lowercase();
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        if self.catch_all_domains.contains(domain) {
            return true;
        }
        match &self.policy {
            SmtpPolicy::AcceptAll => true,
            SmtpPolicy::AcceptOnly(list) => list.contains(&address),
            _ => false,
        }
    }

    fn greylists(&self, address: &str) -> Option<Duration> {
        let wait = self.greylist?;
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        match &self.greylist_domains {
            Some(set) if !set.contains(domain) => None,
            _ => Some(wait),
        }
    }
}

fn lower_set<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> HashSet<String> {
    items
        .into_iter()
        .map(|s| s.as_ref().to_lowercase())
        .collect()
}

/// What a stub saw, for tests and benchmarks to check politeness against.
#[derive(Debug, Default)]
pub struct StubStats {
    /// Sessions greeted with 220.
    pub sessions: AtomicUsize,
    /// Sessions turned away with 421 for exceeding the per-client limit.
    pub turned_away: AtomicUsize,
    /// Most sessions open at once from one client.
    pub max_concurrent: AtomicUsize,
    pub rcpts: AtomicUsize,
    /// RCPTs answered 450 by greylisting.
    pub greylisted: AtomicUsize,
    /// RCPTs answered 452 for exceeding the per-session limit.
    pub too_many: AtomicUsize,
    pub rsets: AtomicUsize,
    pub mails: AtomicUsize,
}

impl StubStats {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

struct Shared {
    behaviour: HostBehaviour,
    log: Mutex<Vec<String>>,
    stats: StubStats,
    /// Open sessions per client address.
    open: Mutex<HashMap<IpAddr, usize>>,
    /// When each greylisted recipient was first asked for.
    first_seen: Mutex<HashMap<String, Instant>>,
}

/// A running stub server; it stops when dropped.
pub struct StubSmtp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl StubSmtp {
    /// Listens on `bind` (port 0 for a free port).
    pub async fn start(bind: SocketAddr, policy: SmtpPolicy) -> io::Result<StubSmtp> {
        Self::start_with(bind, HostBehaviour::new(policy)).await
    }

    /// Like [`StubSmtp::start`] but answers EHLO with 502, as very old
    /// servers do, to exercise the HELO fallback.
    pub async fn start_without_ehlo(bind: SocketAddr, policy: SmtpPolicy) -> io::Result<StubSmtp> {
        let mut b = HostBehaviour::new(policy);
        b.ehlo = false;
        Self::start_with(bind, b).await
    }

    pub async fn start_with(bind: SocketAddr, behaviour: HostBehaviour) -> io::Result<StubSmtp> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behaviour,
            log: Mutex::new(Vec::new()),
            stats: StubStats::default(),
            open: Mutex::new(HashMap::new()),
            first_seen: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(StubSmtp { addr, shared, task })
    }

    /// One stub per (address, behaviour), all on the same free port: the port a prober must
    /// use to reach any of them.
    pub async fn start_fleet(
        hosts: Vec<(IpAddr, HostBehaviour)>,
    ) -> io::Result<(u16, Vec<StubSmtp>)> {
        let mut last_error = None;
        // The port is free on the first address; another process may hold it on the others,
        // so a few ports are tried.
        for _ in 0..20 {
            let Some((first_ip, _)) = hosts.first() else {
                return Ok((0, Vec::new()));
            };
            let port = std::net::TcpListener::bind((*first_ip, 0))?
                .local_addr()?
                .port();
            let mut stubs = Vec::with_capacity(hosts.len());
            let mut failed = false;
            for (ip, b) in &hosts {
                match Self::start_with(SocketAddr::new(*ip, port), b.clone()).await {
                    Ok(s) => stubs.push(s),
                    Err(e) => {
                        last_error = Some(e);
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                return Ok((port, stubs));
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no common free port")))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn behaviour(&self) -> &HostBehaviour {
        &self.shared.behaviour
    }

    pub fn stats(&self) -> &StubStats {
        &self.shared.stats
    }

    /// Every command line received so far, across connections, in order.
    pub fn commands(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for StubSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    sessions.spawn(session(stream, peer.ip(), shared.clone()));
                }
            }
            // Reap finished sessions; aborting `serve` drops the set and
            // with it every open session.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Releases a client's session slot however the session ends.
struct Slot<'a>(&'a Shared, IpAddr);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.0.open.lock() {
            if let Some(n) = open.get_mut(&self.1) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

async fn session(stream: TcpStream, client: IpAddr, shared: Arc<Shared>) {
    let b = &shared.behaviour;
    let stats = &shared.stats;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if b.policy == SmtpPolicy::Silent {
        // Hold the connection open without a greeting until the client quits.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink).await;
        return;
    }
    let open_now = {
        let mut open = shared.open.lock().expect("stub lock");
        let n = open.entry(client).or_default();
        *n += 1;
        *n
    };
    let mut slot = Some(Slot(&shared, client));
    tokio::time::sleep(b.latency).await;
    if b.max_sessions.is_some_and(|max| open_now > max) {
        stats.turned_away.fetch_add(1, Ordering::SeqCst);
        let _ = write
            .write_all(b"421 4.7.0 too many connections from your host, try again later\r\n")
            .await;
        return;
    }
    stats.sessions.fetch_add(1, Ordering::SeqCst);
    stats.max_concurrent.fetch_max(open_now, Ordering::SeqCst);
    if write
        .write_all(b"220 stub.test ESMTP ready\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut rcpts_this_session = 0;
    let mut utf8_transaction = false;
    loop {
        let mut line = String::new();
        match (&mut reader).take(4096).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if let Ok(mut l) = shared.log.lock() {
            l.push(line.clone());
        }
        let (reply, close) = match verb(&line).as_str() {
            "RCPT" => {
                rcpts_this_session += 1;
                stats.rcpts.fetch_add(1, Ordering::SeqCst);
                (
                    rcpt(&shared, &line, rcpts_this_session, utf8_transaction),
                    false,
                )
            }
            "RSET" => {
                stats.rsets.fetch_add(1, Ordering::SeqCst);
                respond(b, &line)
            }
            "MAIL" => {
                stats.mails.fetch_add(1, Ordering::SeqCst);
                utf8_transaction = b.smtputf8 && line.to_ascii_uppercase().ends_with(" SMTPUTF8");
                respond(b, &line)
            }
            "QUIT" => {
                // The session is over once QUIT arrives: a client that reads the 221 and
                // connects again at once must find its slot free.
                slot.take();
                respond(b, &line)
            }
            _ => respond(b, &line),
        };
        tokio::time::sleep(b.latency).await;
        if write.write_all(reply.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

fn verb(line: &str) -> String {
    line.split([' ', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

fn rcpt(shared: &Shared, line: &str, nth: usize, utf8_transaction: bool) -> String {
    let b = &shared.behaviour;
    if b.max_rcpt.is_some_and(|max| nth > max) {
        shared.stats.too_many.fetch_add(1, Ordering::SeqCst);
        return "452 4.5.3 too many recipients\r\n".into();
    }
    let address = line
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_lowercase())
        .unwrap_or_default();
    if !address.is_ascii() && !utf8_transaction {
        return "553 5.6.7 non-ASCII addresses need SMTPUTF8\r\n".into();
    }
    if let Some(wait) = b.greylists(&address) {
        let now = Instant::now();
        let first = *shared
            .first_seen
            .lock()
            .expect("stub lock")
            .entry(address.clone())
            .or_insert(now);
        if now.duration_since(first) < wait {
            shared.stats.greylisted.fetch_add(1, Ordering::SeqCst);
            return "450 4.7.1 greylisted, please try again later\r\n".into();
        }
    }
    if !b.catch_all_domains.is_empty() || matches!(b.policy, SmtpPolicy::AcceptOnly(_)) {
        return if b.accepts(&address) {
            "250 2.1.5 recipient ok\r\n".into()
        } else {
            format!("550 5.1.1 <{address}>: no such user\r\n")
        };
    }
    rcpt_reply(&b.policy, &address)
}

/// The reply to one command line other than RCPT, and whether to close afterwards.
fn respond(b: &HostBehaviour, line: &str) -> (String, bool) {
    let reply = match verb(line).as_str() {
        "EHLO" if b.ehlo => {
            let mut r = String::from("250-stub.test\r\n");
            if b.pipelining {
                r.push_str("250-PIPELINING\r\n");
            }
            if b.smtputf8 {
                r.push_str("250-SMTPUTF8\r\n");
            }
            r.push_str("250 8BITMIME\r\n");
            r
        }
        "EHLO" => "502 5.5.1 command not implemented\r\n".into(),
        "HELO" => "250 stub.test\r\n".into(),
        "MAIL" => "250 2.1.0 sender ok\r\n".into(),
        "RCPT" => rcpt_reply(
            &b.policy,
            &line
                .split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(a, _)| a.to_lowercase())
                .unwrap_or_default(),
        ),
        "RSET" | "NOOP" => "250 2.0.0 ok\r\n".into(),
        "DATA" => "554 5.5.1 this stub never accepts messages\r\n".into(),
        "QUIT" => return ("221 2.0.0 bye\r\n".into(), true),
        _ => "500 5.5.2 command not recognized\r\n".into(),
    };
    (reply, false)
}

fn rcpt_reply(policy: &SmtpPolicy, address: &str) -> String {
    let accepted = match policy {
        SmtpPolicy::AcceptAll => true,
        SmtpPolicy::AcceptOnly(list) => list.contains(address),
        SmtpPolicy::RejectAll => false,
        SmtpPolicy::TempFail => return "450 4.2.0 mailbox busy, try again later\r\n".into(),
        SmtpPolicy::PolicyBlock => return "550 5.7.1 client host blocked\r\n".into(),
        SmtpPolicy::Silent => unreachable!("silent sessions never read commands"),
    };
    if accepted {
        "250 2.1.5 recipient ok\r\n".into()
    } else {
        format!("550 5.1.1 <{address}>: no such user\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behaviour(policy: SmtpPolicy) -> HostBehaviour {
        HostBehaviour::new(policy)
    }

    #[test]
    fn recipients_are_matched_case_insensitively() {
        let b = behaviour(SmtpPolicy::accept_only(["Jane@Acme.test"]));
        assert!(respond(&b, "RCPT TO:<JANE@acme.test>")
            .0
            .starts_with("250 "));
        assert!(respond(&b, "rcpt to:<bob@acme.test>")
            .0
            .starts_with("550 5.1.1"));
    }

    #[test]
    fn data_is_always_refused() {
        let b = behaviour(SmtpPolicy::AcceptAll);
        assert!(respond(&b, "DATA").0.starts_with("554 "));
    }

    #[test]
    fn quit_closes_the_session() {
        let b = behaviour(SmtpPolicy::AcceptAll);
        assert_eq!(respond(&b, "QUIT"), ("221 2.0.0 bye\r\n".into(), true));
    }

    #[test]
    fn ehlo_can_be_disabled() {
        let mut b = behaviour(SmtpPolicy::AcceptAll);
        b.ehlo = false;
        assert!(respond(&b, "EHLO me").0.starts_with("502 "));
        assert!(respond(&b, "HELO me").0.starts_with("250 "));
    }

    #[tokio::test]
    async fn the_stub_greets_and_answers_multi_line_ehlo() {
        let stub = StubSmtp::start("127.0.0.1:0".parse().unwrap(), SmtpPolicy::RejectAll)
            .await
            .unwrap();
        let mut conn = TcpStream::connect(stub.addr()).await.unwrap();
        conn.write_all(b"EHLO client.test\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut all = String::new();
        conn.read_to_string(&mut all).await.unwrap();
        assert_eq!(
            all,
            "220 stub.test ESMTP ready\r\n250-stub.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n221 2.0.0 bye\r\n"
        );
        assert_eq!(stub.commands(), vec!["EHLO client.test", "QUIT"]);
    }
}
