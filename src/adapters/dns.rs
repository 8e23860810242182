//! DNS side of e-mail verification: which hosts accept mail for a domain
//! (MX records, RFC 5321 implicit MX, RFC 7505 null MX) and what addresses a
//! host name has, behind the [`MailDomainResolver`] trait so that jobs can be
//! tested against a loopback stub and share a per-job cache.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::domain::email::Check;

/// One MX target: lower preference is tried first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailHost {
    pub preference: u16,
    /// Lowercase host name without the trailing dot.
    pub exchange: String,
}

/// Where mail for a domain would be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailHosts {
    /// MX records, sorted by preference.
    Found(Vec<MailHost>),
    /// RFC 5321 §5.1 implicit MX: no MX but an A/AAAA.
    Implicit(Vec<IpAddr>),
    /// NXDOMAIN, or no MX and no address, or a null MX (RFC 7505 "0 .").
    NoMailServer,
    /// Timeout/SERVFAIL/network — a check that could not finish.
    Unknown(String),
}

impl MailHosts {
    /// The `mx` field of [`crate::domain::email::EmailChecks`]; an implicit
    /// MX is only a warning because many such hosts are web servers that
    /// never accept mail.
    pub fn to_check(&self) -> Check {
        match self {
            MailHosts::Found(_) => Check::Pass,
            MailHosts::Implicit(_) => Check::Warn,
            MailHosts::NoMailServer => Check::Fail,
            MailHosts::Unknown(_) => Check::Unknown,
        }
    }
}

#[async_trait]
pub trait MailDomainResolver: Send + Sync {
    /// Never fails: failures are reported as [`MailHosts::Unknown`].
    async fn mail_hosts(&self, domain: &str) -> MailHosts;
    /// A and AAAA addresses of a host (typically an MX exchange), IPv4
    /// first; empty when the name has none or the lookup failed.
    async fn resolve_host(&self, name: &str) -> Vec<IpAddr>;
}

#[async_trait]
impl<T: MailDomainResolver + ?Sized> MailDomainResolver for Arc<T> {
    async fn mail_hosts(&self, domain: &str) -> MailHosts {
        (**self).mail_hosts(domain).await
    }
    async fn resolve_host(&self, name: &str) -> Vec<IpAddr> {
        (**self).resolve_host(name).await
    }
}

/// Addresses to try for SMTP, in delivery order: MX exchanges by preference
/// (each resolved through the same resolver), or the implicit-MX addresses.
pub async fn smtp_targets(resolver: &dyn MailDomainResolver, hosts: &MailHosts) -> Vec<IpAddr> {
    match hosts {
        MailHosts::Found(mx) => {
            let mut ips = Vec::new();
            for host in mx {
                for ip in resolver.resolve_host(&host.exchange).await {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
            ips
        }
        MailHosts::Implicit(ips) => ips.clone(),
        MailHosts::NoMailServer | MailHosts::Unknown(_) => Vec::new(),
    }
}

/// Why a DNS operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DnsError {
    #[error("could not read the system DNS configuration: {0}")]
    Config(String),
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
    #[error("the domain does not exist (NXDOMAIN)")]
    NxDomain,
    #[error("the name exists but has no records of the requested type")]
    NoRecords,
    #[error("the DNS query timed out")]
    Timeout,
    #[error("the DNS server answered {0}")]
    ServerFailure(String),
    #[error("DNS network error: {0}")]
    Network(String),
}

impl DnsError {
    fn from_net(err: &NetError) -> Self {
        match err {
            _ if err.is_nx_domain() => DnsError::NxDomain,
            NetError::Dns(HickoryDnsError::NoRecordsFound(nr))
                if nr.response_code == ResponseCode::NoError =>
            {
                DnsError::NoRecords
            }
            NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => {
                DnsError::ServerFailure(nr.response_code.to_string())
            }
            NetError::Dns(HickoryDnsError::ResponseCode(code)) => {
                DnsError::ServerFailure(code.to_string())
            }
            NetError::Timeout => DnsError::Timeout,
            other => DnsError::Network(other.to_string()),
        }
    }
}

impl crate::adapters::Retryable for DnsError {
    /// True when asking again later may give a different answer; negative
    /// answers and bad input are final.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            DnsError::Timeout | DnsError::ServerFailure(_) | DnsError::Network(_)
        )
    }
}

/// Production resolver on hickory.
pub struct HickoryMailResolver {
    resolver: TokioResolver,
    timeout: Duration,
}

impl HickoryMailResolver {
    /// With `Some(addr)` every query goes to that one server (UDP, TCP on
    /// truncation) and nothing of the system configuration is read — no
    /// resolv.conf, no hosts file — so tests and the demo can never leak to
    /// real DNS. With `None` the system configuration is used.
    ///
    /// `timeout` bounds each whole [`MailDomainResolver`] call, not just one
    /// packet, so a silent server costs at most `timeout` per domain.
    pub fn new(nameserver: Option<SocketAddr>, timeout: Duration) -> Result<Self, DnsError> {
        let mut builder = match nameserver {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let mut b = Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                );
                let opts = b.options_mut();
                opts.use_hosts_file = ResolveHosts::Never;
                // An explicit server is a stub whose answers the caller
                // controls (and counts); hickory's cache would hide them.
                opts.cache_size = 0;
                b
            }
            None => TokioResolver::builder_tokio().map_err(|e| DnsError::Config(e.to_string()))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 1;
        // A name given to us is already fully qualified; search domains
        // would only add bogus queries.
        opts.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Config(e.to_string()))?;
        Ok(Self { resolver, timeout })
    }

    async fn mail_hosts_inner(&self, domain: &str) -> MailHosts {
        let Ok(name) = fqdn(domain) else {
            // Something that cannot be a DNS name cannot receive mail.
            return MailHosts::NoMailServer;
        };
        let lookup = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => lookup,
            Err(e) => {
                return match DnsError::from_net(&e) {
                    DnsError::NxDomain => MailHosts::NoMailServer,
                    DnsError::NoRecords => self.implicit_mx(name).await,
                    other => MailHosts::Unknown(other.to_string()),
                }
            }
        };
        let mut saw_null = false;
        let mut hosts: Vec<MailHost> = Vec::new();
        for record in lookup.answers() {
            let RData::MX(mx) = &record.data else {
                continue;
            };
            if mx.exchange.is_root() {
                saw_null = true;
                continue;
            }
            hosts.push(MailHost {
                preference: mx.preference,
                exchange: host_string(&mx.exchange),
            });
        }
        if hosts.is_empty() {
            return if saw_null {
                MailHosts::NoMailServer
            } else {
                // MX answer carrying only other types (e.g. a CNAME chain end).
                self.implicit_mx(name).await
            };
        }
        hosts.sort_by(|a, b| {
            a.preference
                .cmp(&b.preference)
                .then_with(|| a.exchange.cmp(&b.exchange))
        });
        hosts.dedup();
        MailHosts::Found(hosts)
    }

    async fn implicit_mx(&self, name: Name) -> MailHosts {
        match self.addresses(name).await {
            Ok(ips) if !ips.is_empty() => MailHosts::Implicit(ips),
            Ok(_) => MailHosts::NoMailServer,
            Err(e) => MailHosts::Unknown(e.to_string()),
        }
    }

    /// A and AAAA together; only a definite "none" from both is `Ok(empty)`.
    async fn addresses(&self, name: Name) -> Result<Vec<IpAddr>, DnsError> {
        let (v4, v6) = tokio::join!(
            self.resolver.ipv4_lookup(name.clone()),
            self.resolver.ipv6_lookup(name)
        );
        let mut ips = Vec::new();
        let mut failure = None;
        for result in [v4, v6] {
            match result {
                Ok(lookup) => ips.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => match DnsError::from_net(&e) {
                    DnsError::NxDomain | DnsError::NoRecords => {}
                    other => failure = Some(other),
                },
            }
        }
        match failure {
            // Half an answer is still an answer: mail can go to what we have.
            Some(e) if ips.is_empty() => Err(e),
            _ => Ok(ips),
        }
    }
}

#[async_trait]
impl MailDomainResolver for HickoryMailResolver {
    async fn mail_hosts(&self, domain: &str) -> MailHosts {
        match tokio::time::timeout(self.timeout, self.mail_hosts_inner(domain)).await {
            Ok(hosts) => hosts,
            Err(_) => MailHosts::Unknown(DnsError::Timeout.to_string()),
        }
    }

    async fn resolve_host(&self, name: &str) -> Vec<IpAddr> {
        let Ok(name) = fqdn(name) else {
            return Vec::new();
        };
        match tokio::time::timeout(self.timeout, self.addresses(name)).await {
            Ok(Ok(ips)) => ips,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "host lookup failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }
}

fn fqdn(domain: &str) -> Result<Name, DnsError> {
    let trimmed = domain.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(DnsError::InvalidName(domain.to_string()));
    }
    Name::from_ascii(format!("{trimmed}.")).map_err(|_| DnsError::InvalidName(domain.to_string()))
}

fn host_string(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// One memo slot per key. The slot's own lock is held during the lookup so
/// concurrent callers for the same key wait for the first answer instead of
/// querying again, while different keys proceed in parallel.
type Slots<V> = Mutex<HashMap<String, Arc<Mutex<Option<V>>>>>;

/// Per-job memo in front of another resolver: each domain (and host) is asked
/// once per job. Results that may change on retry (`Unknown`, or an empty host
/// lookup) are not kept, so a later call tries again.
pub struct CachedResolver<R> {
    inner: R,
    mail_hosts: Slots<MailHosts>,
    hosts: Slots<Vec<IpAddr>>,
}

impl<R: MailDomainResolver> CachedResolver<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            mail_hosts: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn inner(&self) -> &R {
        &self.inner
    }
}

async fn slot<V>(slots: &Slots<V>, key: &str) -> Arc<Mutex<Option<V>>> {
    let key = key.trim().trim_end_matches('.').to_ascii_lowercase();
    slots.lock().await.entry(key).or_default().clone()
}

#[async_trait]
impl<R: MailDomainResolver> MailDomainResolver for CachedResolver<R> {
    async fn mail_hosts(&self, domain: &str) -> MailHosts {
        let slot = slot(&self.mail_hosts, domain).await;
        let mut cached = slot.lock().await;
        if let Some(hit) = cached.as_ref() {
            return hit.clone();
        }
        let fresh = self.inner.mail_hosts(domain).await;
        if !matches!(fresh, MailHosts::Unknown(_)) {
            *cached = Some(fresh.clone());
        }
        fresh
    }

    async fn resolve_host(&self, name: &str) -> Vec<IpAddr> {
        let slot = slot(&self.hosts, name).await;
        let mut cached = slot.lock().await;
        if let Some(hit) = cached.as_ref() {
            return hit.clone();
        }
        let fresh = self.inner.resolve_host(name).await;
        if !fresh.is_empty() {
            *cached = Some(fresh.clone());
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::dns_stub::{StubDns, StubZone};
    use crate::adapters::Retryable;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    const TIMEOUT: Duration = Duration::from_millis(500);

    fn zone() -> StubZone {
        StubZone::new()
            .mx("example.test", 20, "mx2.example.test")
            .mx("example.test", 10, "MX1.example.test.")
            .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 1))
            .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 2))
            .a("implicit.test", Ipv4Addr::new(127, 0, 0, 3))
            .aaaa("implicit.test", Ipv6Addr::LOCALHOST)
            .null_mx("nomail.test")
            .aaaa("nomail.test", Ipv6Addr::LOCALHOST)
            .servfail("broken.test")
            .slow("hang.test")
            .txt("textonly.test", "v=spf1 -all")
    }

    async fn setup() -> (StubDns, HickoryMailResolver) {
        let stub = StubDns::start("127.0.0.1:0".parse().unwrap(), zone())
            .await
            .unwrap();
        let resolver = HickoryMailResolver::new(Some(stub.addr()), TIMEOUT).unwrap();
        (stub, resolver)
    }

    #[tokio::test]
    async fn mx_records_are_found_and_sorted_by_preference() {
        let (_stub, r) = setup().await;
        assert_eq!(
            r.mail_hosts("Example.Test").await,
            MailHosts::Found(vec![
                MailHost {
                    preference: 10,
                    exchange: "mx1.example.test".into()
                },
                MailHost {
                    preference: 20,
                    exchange: "mx2.example.test".into()
                },
            ])
        );
    }

    #[tokio::test]
    async fn a_domain_without_mx_falls_back_to_its_addresses() {
        let (_stub, r) = setup().await;
        assert_eq!(
            r.mail_hosts("implicit.test").await,
            MailHosts::Implicit(vec![
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ])
        );
    }

    #[tokio::test]
    async fn a_name_with_neither_mx_nor_address_has_no_mail_server() {
        let (_stub, r) = setup().await;
        assert_eq!(r.mail_hosts("textonly.test").await, MailHosts::NoMailServer);
    }

    #[tokio::test]
    async fn nxdomain_means_no_mail_server() {
        let (_stub, r) = setup().await;
        assert_eq!(r.mail_hosts("missing.test").await, MailHosts::NoMailServer);
        assert_eq!(MailHosts::NoMailServer.to_check(), Check::Fail);
    }

    #[tokio::test]
    async fn a_null_mx_means_no_mail_server_even_with_an_address() {
        let (_stub, r) = setup().await;
        assert_eq!(r.mail_hosts("nomail.test").await, MailHosts::NoMailServer);
    }

    #[tokio::test]
    async fn servfail_is_unknown() {
        let (_stub, r) = setup().await;
        let hosts = r.mail_hosts("broken.test").await;
        assert!(matches!(hosts, MailHosts::Unknown(_)), "{hosts:?}");
        assert_eq!(hosts.to_check(), Check::Unknown);
    }

    #[tokio::test]
    async fn a_silent_server_is_unknown_within_the_timeout() {
        let (_stub, r) = setup().await;
        let started = Instant::now();
        let hosts = r.mail_hosts("hang.test").await;
        assert!(matches!(hosts, MailHosts::Unknown(_)), "{hosts:?}");
        assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_server_that_is_not_running_is_unknown() {
        // Bind and drop to get a loopback port with nothing behind it.
        let addr = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let r = HickoryMailResolver::new(Some(addr), TIMEOUT).unwrap();
        let hosts = r.mail_hosts("example.test").await;
        assert!(matches!(hosts, MailHosts::Unknown(_)), "{hosts:?}");
    }

    #[tokio::test]
    async fn exchanges_resolve_through_the_same_server() {
        let (_stub, r) = setup().await;
        assert_eq!(
            r.resolve_host("mx1.example.test").await,
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert!(r.resolve_host("nowhere.test").await.is_empty());
        let hosts = r.mail_hosts("example.test").await;
        assert_eq!(
            smtp_targets(&r, &hosts).await,
            vec![
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
            ]
        );
    }

    #[tokio::test]
    async fn an_invalid_name_has_no_mail_server() {
        let (stub, r) = setup().await;
        assert_eq!(r.mail_hosts("").await, MailHosts::NoMailServer);
        assert_eq!(stub.queries(), 0);
    }

    #[tokio::test]
    async fn the_cache_asks_the_server_once_per_domain() {
        let (stub, r) = setup().await;
        let cached = CachedResolver::new(r);
        let first = cached.mail_hosts("example.test").await;
        let after_first = stub.queries();
        assert_eq!(after_first, 1);
        assert_eq!(cached.mail_hosts("EXAMPLE.test.").await, first);
        assert_eq!(stub.queries(), after_first);
        cached.resolve_host("mx1.example.test").await;
        let after_host = stub.queries();
        cached.resolve_host("mx1.example.test").await;
        assert_eq!(stub.queries(), after_host);
    }

    /// Counts calls and answers Unknown, to check what the cache keeps.
    struct Flaky(AtomicUsize);

    #[async_trait]
    impl MailDomainResolver for Flaky {
        async fn mail_hosts(&self, _: &str) -> MailHosts {
            self.0.fetch_add(1, Ordering::SeqCst);
            MailHosts::Unknown("timeout".into())
        }
        async fn resolve_host(&self, _: &str) -> Vec<IpAddr> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Vec::new()
        }
    }

    #[tokio::test]
    async fn unknown_results_are_not_cached() {
        let cached = CachedResolver::new(Flaky(AtomicUsize::new(0)));
        cached.mail_hosts("a.test").await;
        cached.mail_hosts("a.test").await;
        cached.resolve_host("mx.a.test").await;
        cached.resolve_host("mx.a.test").await;
        assert_eq!(cached.inner().0.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_domain_share_one_query() {
        let (stub, r) = setup().await;
        let cached = Arc::new(CachedResolver::new(r));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let c = cached.clone();
                tokio::spawn(async move { c.mail_hosts("example.test").await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap(), MailHosts::Found(_)));
        }
        assert_eq!(stub.queries(), 1);
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(DnsError::Timeout.is_retryable());
        assert!(DnsError::ServerFailure("SERVFAIL".into()).is_retryable());
        assert!(DnsError::Network("reset".into()).is_retryable());
        assert!(!DnsError::NxDomain.is_retryable());
        assert!(!DnsError::NoRecords.is_retryable());
        assert!(!DnsError::Config("x".into()).is_retryable());
        assert!(!DnsError::InvalidName("x".into()).is_retryable());
    }

    #[test]
    fn mail_hosts_map_to_mx_checks() {
        assert_eq!(MailHosts::Found(vec![]).to_check(), Check::Pass);
        assert_eq!(MailHosts::Implicit(vec![]).to_check(), Check::Warn);
    }
}
