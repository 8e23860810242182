//! Adapters to the world outside the domain: the database, the broker, object storage, DNS,
//! SMTP, webhook receivers (HTTP), and the terminal's progress bars. Each has its own error type that says whether
//! retrying can help ([`Retryable`]).

pub mod broker;
pub mod claims;
pub mod db;
pub mod dns;
pub mod dns_stub;
pub mod progress;
pub mod smtp;
pub mod smtp_stub;
pub mod storage;
pub mod webhook_http;

/// Whether an error may go away if the same operation is tried again (a connection broke, a
/// server restarts, a lock timed out), as opposed to one that will fail the same way each time.
/// Loops retry the first kind with backoff and give up on the second at once.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}
