//! Device identity (PROTOCOL.md §3.3, §3.4): the Ed25519 key a remote gateway
//! pairs with, the v3 signature it verifies, and the device tokens it issues.
//!
//! **Files** (both in `state.dir`, both mode 0600, both written atomically:
//! temp file in the same directory, `fsync`, then link/rename):
//! - [`KEY_FILE`] (`device-key`): the private key as a PKCS#8 PEM block
//!   (RFC 8410, the format `openssl genpkey -algorithm ed25519` and Node's
//!   `crypto` write), preceded by a few lines of explanatory text that parsers
//!   skip. `openssl pkey -in device-key -noout -text` reads it. Created on the
//!   first start; losing it means pairing again.
//! - [`TOKEN_FILE`] (`device-token.json`): the device tokens the gateway issued,
//!   per gateway URL and role, with the granted scopes (see [`DeviceTokenStore`]).
//!
//! A key or token file that group or others can read or write is refused, with
//! the `chmod 600` that fixes it. Nothing secret is ever in a `Debug` or
//! `Display` output of this module.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::protocol::{ConnectParams, DeviceProof};

mod token;
pub use token::{DeviceTokenStore, StoredDeviceToken};

/// Signs the connect challenge for a device identity. Implemented by
/// [`DeviceIdentity`]; a `GatewayConnection` holds one as `dyn DeviceSigner`
/// (tests substitute their own).
pub trait DeviceSigner: std::fmt::Debug + std::marker::Send + Sync {
    fn sign(&self, params: &ConnectParams, nonce: &str, signed_at: u64) -> DeviceProof;
}

/// The private key file in the state directory.
pub const KEY_FILE: &str = "device-key";
/// The device token file in the state directory.
pub const TOKEN_FILE: &str = "device-token.json";

/// DER prefix of a PKCS#8 v1 `PrivateKeyInfo` holding an Ed25519 key (RFC 8410
/// §7): SEQUENCE, version 0, AlgorithmIdentifier 1.3.101.112, OCTET STRING
/// wrapping the 32-byte seed. The whole document is this prefix + the seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why the identity or its token file cannot be used. Each message names the
/// file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create the state directory {path}: {source}; create it (mode 0700) for the user the bridge runs as, or set state.dir")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}; check that the bridge's user owns it")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}; check that the state directory is writable by the bridge's user and the disk is not full")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} has mode {mode:04o}: group or others can read or write it, and it holds a secret; fix: chmod 600 {path}")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not a regular file; move it away (a new device key is then created and the gateway asks for pairing again)")]
    NotAFile { path: PathBuf },
    #[error("{path} is not a device key ({reason}); restore it from a backup, or move it away to create a new identity (the gateway then asks for pairing again)")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path} does not parse ({reason}); delete it: the gateway hands the device token out again on the next connect with the shared token")]
    BadTokenFile { path: PathBuf, reason: String },
    #[error("the operating system gave no random bytes for a new device key: {0}")]
    Random(String),
}

/// This bridge's Ed25519 device identity. `Debug` shows the device id and the
/// key file, never the key.
pub struct DeviceIdentity {
    key: SigningKey,
    device_id: String,
    public_key: String,
    path: PathBuf,
    created: bool,
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id)
            .field("public_key", &self.public_key)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// Load the key from `dir`/[`KEY_FILE`], or create it (and `dir`, mode
    /// 0700) on the first start. A key file others can read is refused.
    pub fn load_or_create(dir: &Path) -> Result<DeviceIdentity, IdentityError> {
        ensure_dir(dir)?;
        let path = dir.join(KEY_FILE);
        if let Some(id) = Self::load(dir)? {
            return Ok(id);
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        let mut identity = Self::from_seed(seed, path.clone());
        seed.fill(0);
        let text = identity.key_file_text();
        match write_private(dir, &path, text.as_bytes(), Replace::No)? {
            Written::Yes => {
                identity.created = true;
                Ok(identity)
            }
            // Another process created it first: use theirs, so both agree.
            Written::AlreadyThere => Self::load(dir)?.ok_or_else(|| IdentityError::BadKey {
                path,
                reason: "it vanished while being created".into(),
            }),
        }
    }

    /// Load the key from `dir`/[`KEY_FILE`] if it exists (for `identity show`,
    /// which must not create one).
    pub fn load(dir: &Path) -> Result<Option<DeviceIdentity>, IdentityError> {
        let path = dir.join(KEY_FILE);
        let Some(text) = read_private(&path)? else {
            return Ok(None);
        };
        let seed = parse_key_file(&text).map_err(|reason| IdentityError::BadKey {
            path: path.clone(),
            reason,
        })?;
        Ok(Some(Self::from_seed(seed, path)))
    }

    /// An identity from a known seed, not stored anywhere (tests, tools).
    pub fn from_seed(seed: [u8; 32], path: PathBuf) -> DeviceIdentity {
        let key = SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        DeviceIdentity {
            device_id: device_id_of(&public),
            public_key: URL_SAFE_NO_PAD.encode(public),
            key,
            path,
            created: false,
        }
    }

    /// Lower-case hex SHA-256 of the raw public key (64 chars).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The raw 32-byte public key, base64url without padding (43 chars).
    pub fn public_key_b64url(&self) -> &str {
        &self.public_key
    }

    /// Where the key lives.
    pub fn key_path(&self) -> &Path {
        &self.path
    }

    /// True when [`load_or_create`](Self::load_or_create) made a new key (log
    /// it: the gateway will ask for pairing).
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// Pure Ed25519 over the UTF-8 bytes of `payload`, base64url without
    /// padding (86 chars).
    pub fn sign_payload(&self, payload: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.key.sign(payload.as_bytes()).to_bytes())
    }

    /// The `device` object for these connect params on this socket (§3.3).
    pub fn proof(&self, params: &ConnectParams, nonce: &str, signed_at: u64) -> DeviceProof {
        let payload = PayloadV3::from_params(&self.device_id, params, nonce, signed_at).render();
        DeviceProof {
            id: self.device_id.clone(),
            public_key: self.public_key.clone(),
            signature: self.sign_payload(&payload),
            signed_at,
            nonce: nonce.to_owned(),
        }
    }

    fn key_file_text(&self) -> String {
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(self.key.as_bytes());
        let body = STANDARD.encode(&der);
        der.fill(0);
        format!(
            "openclaw-bridge device identity: Ed25519 private key, PKCS#8 PEM (RFC 8410).\n\
             Secret: keep this file mode 0600 and never share it. Losing it means pairing\n\
             this bridge with the gateway again.\n\
             device-id: {}\n\
             public-key: {}\n\
             {PEM_BEGIN}\n{body}\n{PEM_END}\n",
            self.device_id, self.public_key
        )
    }
}

impl DeviceSigner for DeviceIdentity {
    fn sign(&self, params: &ConnectParams, nonce: &str, signed_at: u64) -> DeviceProof {
        self.proof(params, nonce, signed_at)
    }
}

/// Lower-case hex SHA-256 of a raw public key: the gateway's device id.
pub fn device_id_of(public_key: &[u8; 32]) -> String {
    Sha256::digest(public_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `platform` / `deviceFamily` as the gateway signs them: trimmed, ASCII A–Z
/// lower-cased, other characters as they are; missing is empty.
pub fn normalize_device_metadata(value: Option<&str>) -> String {
    // JavaScript's trim() also strips U+FEFF, which Rust's does not.
    value
        .unwrap_or("")
        .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .to_ascii_lowercase()
}

/// The fields of the v3 signed string (§3.3), joined by `|` without escaping:
/// `v3|id|client.id|client.mode|role|scopes|signedAt|token|nonce|platform|deviceFamily`.
#[derive(Clone, Copy)]
pub struct PayloadV3<'a> {
    pub device_id: &'a str,
    pub client_id: &'a str,
    pub client_mode: &'a str,
    pub role: &'a str,
    pub scopes: &'a [String],
    pub signed_at: u64,
    /// Secret: `PayloadV3` has no `Debug` for this reason.
    pub token: &'a str,
    pub nonce: &'a str,
    /// Raw; normalised by [`render`](Self::render).
    pub platform: Option<&'a str>,
    pub device_family: Option<&'a str>,
}

impl<'a> PayloadV3<'a> {
    /// The fields exactly as these params send them. `<token>` is
    /// `auth.token`, else `auth.deviceToken`, else empty (the gateway uses
    /// `??`, so an empty `auth.token` is still the one signed).
    pub fn from_params(
        device_id: &'a str,
        params: &'a ConnectParams,
        nonce: &'a str,
        signed_at: u64,
    ) -> PayloadV3<'a> {
        PayloadV3 {
            device_id,
            client_id: &params.client.id,
            client_mode: &params.client.mode,
            role: &params.role,
            scopes: &params.scopes,
            signed_at,
            token: params
                .auth
                .token
                .as_deref()
                .or(params.auth.device_token.as_deref())
                .unwrap_or(""),
            nonce,
            platform: Some(params.client.platform.as_str()),
            device_family: params.client.device_family.as_deref(),
        }
    }

    /// The string that is signed.
    pub fn render(&self) -> String {
        let signed_at = self.signed_at.to_string();
        let scopes = self.scopes.join(",");
        let platform = normalize_device_metadata(self.platform);
        let family = normalize_device_metadata(self.device_family);
        [
            "v3",
            self.device_id,
            self.client_id,
            self.client_mode,
            self.role,
            &scopes,
            &signed_at,
            self.token,
            self.nonce,
            &platform,
            &family,
        ]
        .join("|")
    }
}

fn parse_key_file(text: &str) -> Result<[u8; 32], String> {
    let mut lines = text.lines().map(str::trim);
    if !lines.any(|l| l == PEM_BEGIN) {
        return Err(format!("no {PEM_BEGIN} line"));
    }
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == PEM_END {
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended {
        return Err(format!("no {PEM_END} line"));
    }
    let der = STANDARD
        .decode(body.as_bytes())
        .map_err(|e| format!("the PEM body is not base64: {e}"))?;
    if der.len() != PKCS8_ED25519_PREFIX.len() + 32 || der[..16] != PKCS8_ED25519_PREFIX {
        return Err("the PEM block is not an Ed25519 PKCS#8 private key".into());
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&der[16..]);
    Ok(seed)
}

/// Create `dir` (mode 0700, parents too) if it is missing.
fn ensure_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IdentityError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Read a secret file: `None` when missing; refused when not a regular file or
/// when group/others have any access. Mode is checked on the open handle.
fn read_private(path: &Path) -> Result<Option<String>, IdentityError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let read_err = |source| IdentityError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = f.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(IdentityError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(read_err)?;
    Ok(Some(text))
}

enum Replace {
    Yes,
    /// Keep an existing file (two processes creating a key at once agree).
    No,
}

enum Written {
    Yes,
    AlreadyThere,
}

/// Write `contents` to `path` atomically with mode 0600: a temp file in `dir`,
/// fsync, then rename (or hard link when an existing file must win), then
/// fsync the directory so the new name survives a crash.
fn write_private(
    dir: &Path,
    path: &Path,
    contents: &[u8],
    replace: Replace,
) -> Result<Written, IdentityError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let write_err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        match replace {
            Replace::Yes => fs::rename(&tmp, path).map(|()| Written::Yes),
            Replace::No => match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(Written::Yes),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Written::AlreadyThere),
                // Filesystems without hard links: plain rename.
                Err(_) => fs::rename(&tmp, path).map(|()| Written::Yes),
            },
        }
    })();
    // Gone already after a rename; after a hard link or a failure, remove it.
    let _ = fs::remove_file(&tmp);
    let written = result.map_err(write_err)?;
    // Some filesystems refuse fsync on a directory; the file itself is synced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(written)
}

#[cfg(test)]
mod tests;
