//! The pure core of bdjobs: identifiers, the job plan, the messages that cross the broker, the
//! read model and how events fold into it, and the BD stages. Nothing here does I/O; the
//! adapters, roles and tests all build on these types.

pub mod chunks;
pub mod email;
pub mod ids;
pub mod input;
pub mod job;
pub mod messages;
pub mod plan;
pub mod probe;
pub mod render;
pub mod retention;
pub mod stages;
pub mod table;
pub mod webhooks;
