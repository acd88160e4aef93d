//! Problems with keys, every one collected: [`ConfigErrors`]; a layer
//! (`--config FILE`, the system file) that did not load at all.

use std::fmt;

use super::Sources;

/// One bad key: which, and what is wrong or allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Every problem found, not only the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A layer that did not load. A TOML syntax error is reported by file, line
/// and column only: the parser's own message quotes the offending line, which
/// may hold a token.
pub(super) fn build_error(src: &Sources, e: &config::ConfigError) -> ConfigErrors {
    let files = src
        .system_file
        .iter()
        .filter(|f| f.exists())
        .chain(src.file.iter());
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        if let Err(te) = toml::from_str::<toml::Table>(&text) {
            let at = te.span().map(|sp| {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {col}")
            });
            return one(
                &f.display().to_string(),
                format!(
                    "TOML syntax error{}: {}",
                    at.unwrap_or_default(),
                    te.message()
                ),
            );
        }
    }
    // Not a syntax error: keep the first line only (quoted source lines,
    // if any, follow it).
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("unreadable configuration");
    one("configuration", first.to_owned())
}

pub(super) fn one(key: &str, problem: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        problem,
    }])
}
