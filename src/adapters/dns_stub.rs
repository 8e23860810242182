//! A tiny authoritative DNS server for loopback use: the demo points the
//! resolver at it so that no real DNS is ever queried, and the tests use it
//! to produce every answer the MX check must handle (MX, implicit A, NXDOMAIN,
//! null MX, SERVFAIL, silence).
//!
//! It answers over UDP and TCP on the same port. A name that is not in the
//! zone gets NXDOMAIN; a name that is in the zone but lacks the asked type
//! gets NOERROR with an empty answer (NODATA).
//!
//! # Zone text format
//!
//! One record per line; `#` starts a comment anywhere, lines starting with
//! `;` and blank lines are ignored; names are case-insensitive and a trailing
//! dot is optional.
//!
//! ```text
//! example.test     MX 10 mx.example.test   # preference, exchange
//! mx.example.test  A  127.0.0.1
//! mx.example.test  AAAA ::1
//! web.test         TXT v=spf1 -all         # rest of the line is the text
//! nomail.test      NULLMX                  # RFC 7505 "MX 0 ."
//! broken.test      SERVFAIL                # every query answered SERVFAIL
//! hang.test        SLOW                    # queries are never answered
//! ```

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, PartialEq, Eq)]
enum StubRecord {
    Mx(u16, String),
    NullMx,
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
}

/// The records the stub serves.
#[derive(Debug, Clone, Default)]
pub struct StubZone {
    records: HashMap<String, Vec<StubRecord>>,
    servfail: HashSet<String>,
    slow: HashSet<String>,
}

/// A line of zone text that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("zone line {line}: {reason}")]
pub struct ZoneParseError {
    pub line: usize,
    pub reason: String,
}

fn key(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl StubZone {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        self.push(domain, StubRecord::Mx(preference, key(exchange)));
        self
    }

    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.push(name, StubRecord::A(ip));
        self
    }

    pub fn aaaa(mut self, name: &str, ip: Ipv6Addr) -> Self {
        self.push(name, StubRecord::Aaaa(ip));
        self
    }

    /// Makes a name exist without MX or address records.
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        self.push(name, StubRecord::Txt(text.to_string()));
        self
    }

    /// RFC 7505: the domain explicitly accepts no mail.
    pub fn null_mx(mut self, domain: &str) -> Self {
        self.push(domain, StubRecord::NullMx);
        self
    }

    pub fn servfail(mut self, domain: &str) -> Self {
        self.servfail.insert(key(domain));
        self
    }

    /// Queries for this name are swallowed, to exercise client timeouts.
    pub fn slow(mut self, domain: &str) -> Self {
        self.slow.insert(key(domain));
        self
    }

    fn push(&mut self, name: &str, record: StubRecord) {
        self.records.entry(key(name)).or_default().push(record);
    }

    /// Parses the line format described in the module documentation.
    pub fn from_text(text: &str) -> Result<Self, ZoneParseError> {
        let mut zone = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() || line.starts_with(';') {
                continue;
            }
            let err = |reason: &str| ZoneParseError {
                line: i + 1,
                reason: format!("{reason}: {line:?}"),
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, kind, rest @ ..] = fields.as_slice() else {
                return Err(err("expected NAME TYPE [DATA]"));
            };
            zone = match (kind.to_ascii_uppercase().as_str(), rest) {
                ("MX", [pref, exchange]) => {
                    let pref = pref.parse().map_err(|_| err("bad MX preference"))?;
                    zone.mx(name, pref, exchange)
                }
                ("A", [ip]) => zone.a(name, ip.parse().map_err(|_| err("bad IPv4 address"))?),
                ("AAAA", [ip]) => zone.aaaa(name, ip.parse().map_err(|_| err("bad IPv6 address"))?),
                ("TXT", [first, more @ ..]) => {
                    let text = std::iter::once(*first).chain(more.iter().copied());
                    zone.txt(name, &text.collect::<Vec<_>>().join(" "))
                }
                ("NULLMX", []) => zone.null_mx(name),
                ("SERVFAIL", []) => zone.servfail(name),
                ("SLOW", []) => zone.slow(name),
                _ => return Err(err("unknown record type or wrong number of fields")),
            };
        }
        Ok(zone)
    }

    /// Builds the reply, or `None` when the query must go unanswered.
    fn answer(&self, request: &Message) -> Option<Message> {
        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.metadata.message_type = MessageType::Response;
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        let Some(query) = request.queries.first() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Some(reply);
        };
        reply.add_query(query.clone());
        if request.metadata.op_code != OpCode::Query {
            reply.metadata.response_code = ResponseCode::NotImp;
            return Some(reply);
        }
        let name = key(&query.name.to_ascii());
        if self.slow.contains(&name) {
            return None;
        }
        if self.servfail.contains(&name) {
            reply.metadata.response_code = ResponseCode::ServFail;
            return Some(reply);
        }
        let Some(records) = self.records.get(&name) else {
            reply.metadata.response_code = ResponseCode::NXDomain;
            return Some(reply);
        };
        for r in records {
            let rdata = match (r, query.query_type) {
                (StubRecord::Mx(pref, exchange), RecordType::MX) => {
                    // Zone data was validated as text only; a name hickory
                    // cannot encode is skipped rather than crashing the stub.
                    let Ok(exchange) = Name::from_str(&format!("{exchange}.")) else {
                        continue;
                    };
                    RData::MX(MX::new(*pref, exchange))
                }
                (StubRecord::NullMx, RecordType::MX) => RData::MX(MX::new(0, Name::root())),
                (StubRecord::A(ip), RecordType::A) => RData::A(A(*ip)),
                (StubRecord::Aaaa(ip), RecordType::AAAA) => RData::AAAA(AAAA(*ip)),
                (StubRecord::Txt(text), RecordType::TXT) => {
                    RData::TXT(TXT::new(vec![text.clone()]))
                }
                _ => continue,
            };
            reply.add_answer(Record::from_rdata(query.name.clone(), 0, rdata));
        }
        Some(reply)
    }
}

/// A running stub server; it stops when dropped.
pub struct StubDns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl StubDns {
    /// Binds UDP and TCP on `bind` (use port 0 for a free port) and serves
    /// `zone` until dropped.
    pub async fn start(bind: SocketAddr, zone: StubZone) -> io::Result<StubDns> {
        let (udp, tcp) = bind_pair(bind).await?;
        let addr = udp.local_addr()?;
        let zone = Arc::new(zone);
        let queries = Arc::new(AtomicUsize::new(0));
        let udp_task = tokio::spawn(serve_udp(udp, zone.clone(), queries.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, zone, queries.clone()));
        Ok(StubDns {
            addr,
            queries,
            tasks: vec![udp_task, tcp_task],
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of well-formed queries received so far (answered or not).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for StubDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// UDP and TCP must share a port because a resolver is configured with one
/// address; with port 0 the UDP port the OS picks may be taken for TCP, so
/// a few fresh picks are tried.
async fn bind_pair(bind: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if bind.port() == 0 { 10 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(bind).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not bind DNS stub")))
}

fn respond(zone: &StubZone, queries: &AtomicUsize, packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    queries.fetch_add(1, Ordering::SeqCst);
    let reply = zone.answer(&request)?;
    match reply.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "DNS stub could not encode a reply");
            None
        }
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<StubZone>, queries: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = respond(&zone, &queries, &buf[..len]) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<StubZone>, queries: Arc<AtomicUsize>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_tcp_connection(stream, zone.clone(), queries.clone()));
                }
            }
            // Reap finished connections so the set does not grow forever;
            // aborting this task drops the set and with it every connection.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_tcp_connection(
    mut stream: TcpStream,
    zone: Arc<StubZone>,
    queries: Arc<AtomicUsize>,
) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut packet = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut packet).await.is_err() {
            return;
        }
        let Some(reply) = respond(&zone, &queries, &packet) else {
            continue;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            continue;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::Query;

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
        m
    }

    fn zone() -> StubZone {
        StubZone::from_text(
            "# demo zone\n\
             Example.Test.  MX 10 mx.example.test\n\
             mx.example.test A 127.0.0.1   # the exchange\n\
             ; another comment\n\
             \n\
             nomail.test NULLMX\n\
             broken.test SERVFAIL\n\
             hang.test SLOW\n\
             web.test TXT v=spf1 -all\n",
        )
        .unwrap()
    }

    #[test]
    fn a_txt_record_keeps_the_rest_of_its_line_and_makes_the_name_exist() {
        let z = zone();
        let reply = z.answer(&query("web.test.", RecordType::TXT)).unwrap();
        assert_eq!(
            reply.answers[0].data,
            RData::TXT(TXT::new(vec!["v=spf1 -all".into()]))
        );
        let reply = z.answer(&query("web.test.", RecordType::MX)).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn zone_text_with_trailing_garbage_is_rejected_with_its_line_number() {
        let err = StubZone::from_text("a.test A 127.0.0.1\nb.test SLOW extra\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(StubZone::from_text("a.test MX x y").is_err());
        assert!(StubZone::from_text("a.test A ::1").is_err());
        assert!(StubZone::from_text("a.test").is_err());
    }

    #[test]
    fn an_mx_question_is_answered_from_the_zone() {
        let reply = zone()
            .answer(&query("example.test.", RecordType::MX))
            .unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
        let RData::MX(mx) = &reply.answers[0].data else {
            panic!("not MX");
        };
        assert_eq!(mx.preference, 10);
        assert_eq!(mx.exchange.to_ascii(), "mx.example.test.");
    }

    #[test]
    fn an_unknown_name_is_nxdomain() {
        let reply = zone().answer(&query("nope.test.", RecordType::MX)).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn a_known_name_without_the_type_is_nodata() {
        let reply = zone()
            .answer(&query("mx.example.test.", RecordType::MX))
            .unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn a_null_mx_is_served_as_preference_zero_root() {
        let reply = zone()
            .answer(&query("nomail.test.", RecordType::MX))
            .unwrap();
        let RData::MX(mx) = &reply.answers[0].data else {
            panic!("not MX");
        };
        assert_eq!((mx.preference, mx.exchange.is_root()), (0, true));
    }

    #[test]
    fn servfail_and_slow_names_misbehave_as_asked() {
        let z = zone();
        let reply = z.answer(&query("broken.test.", RecordType::MX)).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(z.answer(&query("hang.test.", RecordType::A)).is_none());
    }

    #[tokio::test]
    async fn the_server_answers_over_udp_and_tcp_and_counts_queries() {
        let stub = StubDns::start("127.0.0.1:0".parse().unwrap(), zone())
            .await
            .unwrap();
        let bytes = query("mx.example.test.", RecordType::A).to_vec().unwrap();

        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        udp.send_to(&bytes, stub.addr()).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = udp.recv_from(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.answers[0].data, RData::A(A(Ipv4Addr::LOCALHOST)));

        let mut tcp = TcpStream::connect(stub.addr()).await.unwrap();
        tcp.write_u16(bytes.len() as u16).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        let len = tcp.read_u16().await.unwrap();
        let mut reply = vec![0u8; len as usize];
        tcp.read_exact(&mut reply).await.unwrap();
        assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 1);

        assert_eq!(stub.queries(), 2);
    }

    #[tokio::test]
    async fn a_shut_down_server_stops_answering() {
        let stub = StubDns::start("127.0.0.1:0".parse().unwrap(), zone())
            .await
            .unwrap();
        let addr = stub.addr();
        stub.shutdown();
        tokio::task::yield_now().await;
        // The listener is gone once the aborted task has been dropped.
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(refused);
    }
}
