//! [`DeviceTokenStore`]: the device tokens a gateway issued (§3.4 step 7).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{ensure_dir, read_private, write_private, IdentityError, Replace, TOKEN_FILE};

/// Version of the token file layout.
const TOKEN_FILE_VERSION: u32 = 1;

/// One stored device token. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredDeviceToken {
    pub token: String,
    /// The scopes the gateway granted with it.
    pub scopes: Vec<String>,
    /// Epoch ms: hello-ok's `auth.issuedAtMs`, or the time it was received.
    pub issued_at_ms: u64,
}

impl fmt::Debug for StoredDeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredDeviceToken")
            .field("token", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("issued_at_ms", &self.issued_at_ms)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenFile {
    version: u32,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenEntry {
    gateway_url: String,
    role: String,
    /// The key the token was issued to: a token is useless with another key.
    device_id: String,
    token: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    issued_at_ms: u64,
}

/// Device tokens per gateway URL and role, in `dir`/[`TOKEN_FILE`] (§3.4 step
/// 7). The file (mode 0600) is JSON:
///
/// ```json
/// {"version":1,"tokens":[{"gatewayUrl":"wss://gw.example:18789","role":"operator",
///   "deviceId":"<64 hex>","token":"<secret>","scopes":["operator.read"],"issuedAtMs":1795577919329}]}
/// ```
///
/// URLs are compared without trailing `/`. Entries for another device id (the
/// key was replaced) are never returned, and are overwritten by the next save
/// for the same URL and role. Every write rewrites the file atomically; calls
/// are serialised within the process.
pub struct DeviceTokenStore {
    dir: PathBuf,
    path: PathBuf,
    device_id: String,
    lock: Mutex<()>,
}

impl fmt::Debug for DeviceTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTokenStore")
            .field("path", &self.path)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl DeviceTokenStore {
    /// The store for tokens issued to `device_id`, in `dir`. No I/O yet.
    pub fn new(dir: &Path, device_id: &str) -> DeviceTokenStore {
        DeviceTokenStore {
            dir: dir.to_owned(),
            path: dir.join(TOKEN_FILE),
            device_id: device_id.to_owned(),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token for this gateway and role, if one was saved for this device.
    pub fn load(&self, url: &str, role: &str) -> Result<Option<StoredDeviceToken>, IdentityError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.read()?;
        let url = normalize_url(url);
        Ok(file
            .tokens
            .into_iter()
            .find(|e| {
                normalize_url(&e.gateway_url) == url
                    && e.role == role
                    && e.device_id == self.device_id
            })
            .map(|e| StoredDeviceToken {
                token: e.token,
                scopes: e.scopes,
                issued_at_ms: e.issued_at_ms,
            }))
    }

    /// Save (replace) the token for this gateway and role.
    pub fn save(
        &self,
        url: &str,
        role: &str,
        token: &str,
        scopes: &[String],
        issued_at_ms: u64,
    ) -> Result<(), IdentityError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.read()?;
        let key = normalize_url(url);
        file.tokens
            .retain(|e| !(normalize_url(&e.gateway_url) == key && e.role == role));
        file.tokens.push(TokenEntry {
            gateway_url: key.to_owned(),
            role: role.to_owned(),
            device_id: self.device_id.clone(),
            token: token.to_owned(),
            scopes: scopes.to_vec(),
            issued_at_ms,
        });
        self.write(&file)
    }

    /// Forget the token for this gateway and role (revoked or mismatched).
    /// True when there was one.
    pub fn clear(&self, url: &str, role: &str) -> Result<bool, IdentityError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.read()?;
        let key = normalize_url(url);
        let before = file.tokens.len();
        file.tokens
            .retain(|e| !(normalize_url(&e.gateway_url) == key && e.role == role));
        if file.tokens.len() == before {
            return Ok(false);
        }
        self.write(&file)?;
        Ok(true)
    }

    fn read(&self) -> Result<TokenFile, IdentityError> {
        let Some(text) = read_private(&self.path)? else {
            return Ok(TokenFile {
                version: TOKEN_FILE_VERSION,
                tokens: Vec::new(),
            });
        };
        let bad = |reason: String| IdentityError::BadTokenFile {
            path: self.path.clone(),
            reason,
        };
        // serde_json's messages can quote values ("invalid type: string …"),
        // and the values here are tokens: report the position only.
        let file: TokenFile = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "not valid JSON of the expected shape at line {}, column {} ({:?})",
                e.line(),
                e.column(),
                e.classify()
            ))
        })?;
        if file.version != TOKEN_FILE_VERSION {
            return Err(bad(format!(
                "version {} (this bridge writes {TOKEN_FILE_VERSION})",
                file.version
            )));
        }
        Ok(file)
    }

    fn write(&self, file: &TokenFile) -> Result<(), IdentityError> {
        ensure_dir(&self.dir)?;
        let mut text = serde_json::to_string_pretty(file).map_err(|e| IdentityError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        text.push('\n');
        write_private(&self.dir, &self.path, text.as_bytes(), Replace::Yes).map(|_| ())
    }
}

fn normalize_url(url: &str) -> &str {
    url.trim().trim_end_matches('/')
}
