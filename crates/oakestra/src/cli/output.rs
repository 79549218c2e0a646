//! Writing results to stdout: tables for people, pretty JSON for scripts.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

/// Writes `text` to stdout. A closed pipe (`oakestra app list | head -1`) is not an error worth
/// reporting, so write failures are ignored rather than panicking as `print!` would.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The answer as indented JSON, as the root sent it (the wire types round-trip every field).
pub fn emit_json<T: Serialize>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text);
    Ok(())
}
