//! Adapters to the world outside the domain: the database, the broker, object storage, DNS and
//! SMTP. Each has its own error type that says whether retrying can help.

pub mod broker;
pub mod claims;
pub mod db;
pub mod dns;
pub mod dns_stub;
pub mod smtp;
pub mod smtp_stub;
pub mod storage;
