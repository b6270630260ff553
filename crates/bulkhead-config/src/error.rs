//! Config errors: one per mistake, each with a position and a fix.

use crate::yaml::Pos;
use std::fmt;

/// One thing wrong with a config, printed as `file:line:col: what is wrong — how to fix it`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (as given by the operator).
    pub file: String,
    /// Where the offending key or value was written.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
    /// How to fix it (may be empty).
    pub hint: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, " — {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in one config, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects errors while a config is walked, so all of them are reported at once.
#[derive(Debug)]
pub struct Collector {
    file: String,
    errors: std::cell::RefCell<Vec<ConfigError>>,
}

impl Collector {
    /// A collector for errors of `file`.
    pub fn new(file: impl Into<String>) -> Self {
        Collector {
            file: file.into(),
            errors: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Record an error at `pos`.
    pub fn error(&self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.errors.borrow_mut().push(ConfigError {
            file: self.file.clone(),
            pos,
            message: message.into(),
            hint: hint.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.borrow().is_empty()
    }

    /// The errors, sorted by position (stable for errors at one position).
    pub fn finish(self) -> Result<(), ConfigErrors> {
        let mut errors = self.errors.into_inner();
        if errors.is_empty() {
            return Ok(());
        }
        errors.sort_by_key(|e| e.pos);
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}
