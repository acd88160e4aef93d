//! Where the keys come from, later wins: `config/default.toml` → the system
//! file → `--config FILE` → `OPENCLAW_BRIDGE__SECTION__KEY` →
//! `OPENCLAW_GATEWAY_URL`.

use std::collections::HashMap;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};

use super::errors::{build_error, one};
use super::{ConfigError, ConfigErrors, DEFAULT_TOML, SYSTEM_CONFIG};

/// Where the layers come from; tests build one by hand.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `/etc/openclaw-bridge/config.toml` (used only if it exists).
    pub system_file: Option<PathBuf>,
    /// `--config FILE` (must exist).
    pub file: Option<PathBuf>,
    /// The process environment.
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The real process: system file, the given file, the real environment.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Sources {
            system_file: Some(PathBuf::from(SYSTEM_CONFIG)),
            file,
            env: std::env::vars().collect(),
        }
    }

    /// Every layer merged into one [`Config`], not validated yet.
    pub(super) fn layered(&self) -> Result<Config, ConfigErrors> {
        let mut b = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(sys) = &self.system_file {
            if sys.exists() {
                b = b.add_source(
                    File::from(sys.clone())
                        .format(FileFormat::Toml)
                        .required(true),
                );
            }
        }
        if let Some(f) = &self.file {
            if !f.exists() {
                return Err(ConfigErrors(vec![ConfigError {
                    key: "--config".into(),
                    problem: format!("{} does not exist", f.display()),
                }]));
            }
            b = b.add_source(
                File::from(f.clone())
                    .format(FileFormat::Toml)
                    .required(true),
            );
        }
        let bridge_env: HashMap<String, String> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("OPENCLAW_BRIDGE__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        b = b.add_source(
            Environment::with_prefix("OPENCLAW_BRIDGE")
                .prefix_separator("__")
                .separator("__")
                .source(Some(bridge_env)),
        );
        if let Some(url) = self
            .env
            .get("OPENCLAW_GATEWAY_URL")
            .filter(|u| !u.is_empty())
        {
            b = b
                .set_override("gateway.url", url.clone())
                .map_err(|e| one("OPENCLAW_GATEWAY_URL", e.to_string()))?;
        }
        let cfg = b.build().map_err(|e| build_error(self, &e))?;
        Ok(cfg)
    }
}
