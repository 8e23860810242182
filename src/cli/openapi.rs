//! `bdjobs openapi`: the API's OpenAPI document, as `GET /api/v1/openapi.json` serves it, without
//! a server (for client generators and reviews of a contract change).

use std::io::Write;
use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(crate::api::openapi::document())?;
    out.write_all(b"\n")?;
    Ok(ExitCode::SUCCESS)
}
