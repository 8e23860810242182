//! Bodies of the CLI's client commands (the binary's `main` parses and dispatches).

pub mod submit;
