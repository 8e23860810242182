//! A loopback SMTP responder that answers RCPT TO according to a fixed
//! policy, so the demo and the tests can exercise the SMTP probe without
//! touching a real mail server. It never accepts message data: DATA is
//! refused, because a probe that reached DATA would be a bug.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
    /// 450 4.2.0 for every recipient (greylisting, overload).
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
                .map(|a| a.as_ref().to_ascii_lowercase())
                .collect(),
        )
    }
}

#[derive(Debug)]
struct Behaviour {
    policy: SmtpPolicy,
    ehlo: bool,
}

/// A running stub server; it stops when dropped.
pub struct StubSmtp {
    addr: SocketAddr,
    commands: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl StubSmtp {
    /// Listens on `bind` (port 0 for a free port).
    pub async fn start(bind: SocketAddr, policy: SmtpPolicy) -> io::Result<StubSmtp> {
        Self::spawn(bind, Behaviour { policy, ehlo: true }).await
    }

    /// Like [`StubSmtp::start`] but answers EHLO with 502, as very old
    /// servers do, to exercise the HELO fallback.
    pub async fn start_without_ehlo(bind: SocketAddr, policy: SmtpPolicy) -> io::Result<StubSmtp> {
        Self::spawn(
            bind,
            Behaviour {
                policy,
                ehlo: false,
            },
        )
        .await
    }

    async fn spawn(bind: SocketAddr, behaviour: Behaviour) -> io::Result<StubSmtp> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let commands = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, Arc::new(behaviour), commands.clone()));
        Ok(StubSmtp {
            addr,
            commands,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every command line received so far, across connections, in order.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
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

async fn serve(listener: TcpListener, behaviour: Arc<Behaviour>, log: Arc<Mutex<Vec<String>>>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    sessions.spawn(session(stream, behaviour.clone(), log.clone()));
                }
            }
            // Reap finished sessions; aborting `serve` drops the set and
            // with it every open session.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn session(stream: TcpStream, behaviour: Arc<Behaviour>, log: Arc<Mutex<Vec<String>>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if behaviour.policy == SmtpPolicy::Silent {
        // Hold the connection open without a greeting until the client quits.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink).await;
        return;
    }
    if write
        .write_all(b"220 stub.test ESMTP ready\r\n")
        .await
        .is_err()
    {
        return;
    }
    loop {
        let mut line = String::new();
        match (&mut reader).take(4096).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if let Ok(mut l) = log.lock() {
            l.push(line.clone());
        }
        let (reply, close) = respond(&behaviour, &line);
        if write.write_all(reply.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// The reply to one command line, and whether to close afterwards.
fn respond(behaviour: &Behaviour, line: &str) -> (String, bool) {
    let verb = line
        .split([' ', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let reply = match verb.as_str() {
        "EHLO" if behaviour.ehlo => "250-stub.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into(),
        "EHLO" => "502 5.5.1 command not implemented\r\n".into(),
        "HELO" => "250 stub.test\r\n".into(),
        "MAIL" => "250 2.1.0 sender ok\r\n".into(),
        "RCPT" => rcpt_reply(&behaviour.policy, line),
        "RSET" | "NOOP" => "250 2.0.0 ok\r\n".into(),
        "DATA" => "554 5.5.1 this stub never accepts messages\r\n".into(),
        "QUIT" => return ("221 2.0.0 bye\r\n".into(), true),
        _ => "500 5.5.2 command not recognized\r\n".into(),
    };
    (reply, false)
}

fn rcpt_reply(policy: &SmtpPolicy, line: &str) -> String {
    let address = line
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_ascii_lowercase())
        .unwrap_or_default();
    let accepted = match policy {
        SmtpPolicy::AcceptAll => true,
        SmtpPolicy::AcceptOnly(list) => list.contains(&address),
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

    fn behaviour(policy: SmtpPolicy) -> Behaviour {
        Behaviour { policy, ehlo: true }
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
        let b = Behaviour {
            policy: SmtpPolicy::AcceptAll,
            ehlo: false,
        };
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
