//! bdjobs: business-development jobs over RabbitMQ, Postgres and object storage.
//!
//! - [`domain`]: the pure core (plan, messages, read model, BD stages);
//! - [`adapters`]: Postgres, RabbitMQ, OpenDAL, DNS and SMTP;
//! - [`worker`], [`projector`], [`api`]: the three roles, each a step plus a loop;
//! - [`app`]: wiring roles to configuration; [`config`]: the settings;
//! - [`demo`], [`import`], [`dlq`] and [`watch`]: the CLI's longer commands;
//! - [`replay`] and [`event_log`]: rebuilding the read model from the event log, exporting,
//!   importing and compacting the log.

pub mod adapters;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod domain;
pub mod event_log;
pub mod import;
pub mod projector;
pub mod replay;
pub mod watch;
pub mod worker;
