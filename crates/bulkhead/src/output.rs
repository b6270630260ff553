//! Loading a config for a command and reporting its errors the same way everywhere.

use bulkhead_core::Snapshot;
use std::path::Path;

/// Load and compile `path`; on failure print every error (`file:line:col: …`)
/// to stderr and return `None` (the caller exits 1).
pub fn load_or_report(path: &Path) -> Option<Snapshot> {
    match Snapshot::load(path) {
        Ok(s) => Some(s),
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.0.len();
            eprintln!(
                "{}: {n} error{} — the config was not loaded",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            None
        }
    }
}
