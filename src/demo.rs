//! placeholder
pub async fn run(_c: crate::config::Config, _p: &std::path::Path) -> anyhow::Result<()> { Ok(()) }
