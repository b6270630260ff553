//! # bulkhead-config
//!
//! The YAML config of bulkhead (DESIGN §3) as a typed [`Config`], with every
//! mistake reported at once as `file:line:col: what is wrong — how to fix it`.
//!
//! Loading has two passes so that one run finds every error: [`yaml`] turns
//! the text into a tree of nodes that remember their position; `parse` walks
//! it into the model (unknown keys, bad durations, sizes, CIDRs, missing
//! keys), and `validate` checks the references between sections (zones,
//! listeners, groups, grants, services, profiles, hosts, binds). Checks that
//! need the reachability graph — invariants, weighted-split consistency —
//! belong to `bulkhead-core`, which reports them through the same
//! [`ConfigError`].
//!
//! ```
//! let cfg = bulkhead_config::from_str(
//!     "version: 1\nzones: { public: {} }\n",
//!     "inline.yaml",
//!     std::path::Path::new("."),
//! ).expect("valid");
//! assert_eq!(cfg.zones[0].name.value, "public");
//! ```
#![deny(missing_docs)]

pub mod cases;
mod error;
pub mod model;
mod parse;
mod read;
pub mod tls;
mod validate;
pub mod yaml;

pub use error::{Collector, ConfigError, ConfigErrors};
pub use model::*;
pub use read::{parse_duration, parse_size};
pub use validate::{GroupIdx, GroupRefError};
pub use yaml::Pos;

use std::path::Path;

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            pos: Pos { line: 1, col: 1 },
            message: format!("cannot read the config: {e}"),
            hint: "check the path given with -c".into(),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_str(&text, &file, base)
}

/// Parse and validate config text; `file` names it in errors and `base_dir`
/// resolves the relative paths it contains.
pub fn from_str(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let cx = Collector::new(file);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            cx.error(
                e.pos,
                format!("invalid YAML: {}", e.message),
                "fix the syntax",
            );
            cx.finish()?;
            unreachable!("a collector with an error fails");
        }
    };
    let cfg = parse::config(&cx, &root, file, base_dir);
    validate::references(&cx, &cfg);
    cx.finish()?;
    Ok(cfg)
}
