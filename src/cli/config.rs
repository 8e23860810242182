//! `bdjobs config`: the effective configuration, each setting with its source, secrets masked.

use crate::config::{self, Config, Setting};
use std::path::Path;
use std::process::ExitCode;

pub fn run(config: &Config, file: Option<&Path>, settings: &[Setting]) -> anyhow::Result<ExitCode> {
    print!("{}", config::render(config, file, settings));
    Ok(ExitCode::SUCCESS)
}
