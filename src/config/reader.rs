//! Reading keys out of the layered configuration, every problem collected.

use std::path::{Path, PathBuf};

use config::Config;

use super::{ConfigError, Secret};

pub(super) struct Reader {
    pub(super) cfg: Config,
    pub(super) errors: Vec<ConfigError>,
}

impl Reader {
    pub(super) fn err(&mut self, key: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.to_owned(),
            problem: problem.into(),
        });
    }

    pub(super) fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.cfg.get_string(key) {
            Ok(s) => Some(s),
            Err(config::ConfigError::NotFound(_)) => None,
            Err(e) => {
                self.err(key, format!("must be a string ({e})"));
                None
            }
        }
    }

    pub(super) fn string(&mut self, key: &str) -> String {
        self.opt_string(key).unwrap_or_default()
    }

    pub(super) fn one_of(&mut self, key: &str, allowed: &[&str]) -> String {
        let v = self.string(key);
        if !allowed.contains(&v.as_str()) {
            self.err(
                key,
                format!("{v:?} is not allowed; use one of: {}", allowed.join(", ")),
            );
        }
        v
    }

    pub(super) fn number(&mut self, key: &str, min: u64, max: u64) -> u64 {
        let raw = self.string(key);
        match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.err(
                    key,
                    format!("{raw:?} is not allowed; use a whole number from {min} to {max}"),
                );
                min
            }
        }
    }

    pub(super) fn list(&mut self, key: &str) -> Vec<String> {
        match self.cfg.get_array(key) {
            Ok(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.into_string() {
                        Ok(s) => out.push(s.trim().to_owned()),
                        Err(e) => self.err(key, format!("every entry must be a string ({e})")),
                    }
                }
                out
            }
            Err(config::ConfigError::NotFound(_)) => Vec::new(),
            Err(_) => {
                // A single string from the environment: comma-separated.
                let s = self.string(key);
                s.split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect()
            }
        }
    }

    /// `token` or `token_file` (first line), never both; empty is an error.
    pub(super) fn secret(
        &mut self,
        section: &str,
        env_override: Option<&str>,
    ) -> (Option<Secret>, Option<PathBuf>) {
        let tkey = format!("{section}.token");
        let fkey = format!("{section}.token_file");
        let file = self.opt_string(&fkey).map(PathBuf::from);
        if let Some(t) = env_override {
            if t.trim().is_empty() {
                self.err(
                    "OPENCLAW_GATEWAY_TOKEN",
                    "is set but empty; unset it or give the token",
                );
                return (None, file);
            }
            return (Some(Secret::new(t.trim())), file);
        }
        let inline = self.opt_string(&tkey);
        match (inline, &file) {
            (Some(_), Some(_)) => {
                self.err(&tkey, format!("set {tkey} or {fkey}, not both"));
                (None, file)
            }
            (Some(t), None) => {
                if t.trim().is_empty() {
                    self.err(&tkey, "is empty; remove the key or give the token");
                    (None, None)
                } else {
                    (Some(Secret::new(t.trim())), None)
                }
            }
            (None, Some(path)) => match read_token_file(path) {
                Ok(t) => (Some(t), file),
                Err(problem) => {
                    self.err(&fkey, problem);
                    (None, file)
                }
            },
            (None, None) => (None, None),
        }
    }
}

/// Read a token file: its first line, trimmed. A file group or others can
/// read is refused, like the device key: anyone on the host could use it.
pub fn read_token_file(path: &Path) -> Result<Secret, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o044 != 0 {
            return Err(format!(
                "{} has mode {mode:04o}: group or others can read it, and it holds a secret; fix: chmod 600 {} (Docker/Kubernetes secrets: mode 0400)",
                path.display(),
                path.display()
            ));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(format!(
            "{} is empty; its first line must be the token",
            path.display()
        ));
    }
    Ok(Secret::new(first))
}
