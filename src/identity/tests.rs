use super::*;
use std::os::unix::fs::PermissionsExt;

fn params(token: Option<&str>, device_token: Option<&str>) -> ConnectParams {
    // An untidy platform string: the v3 payload normalizes it.
    ConnectParams::sample(" Linux ", token, device_token)
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_documented_example_payload_is_reproduced_from_its_parts() {
    let scopes = vec!["operator.read".to_string(), "operator.write".to_string()];
    let p = PayloadV3 {
        device_id: "0cef938cd655cfc9049281375f3b5af43dbdbb746e13b33b4dedd7b333727607",
        client_id: "cli",
        client_mode: "cli",
        role: "operator",
        scopes: &scopes,
        signed_at: 1_795_577_919_329,
        token: "tokZ",
        nonce: "97b6fb42-b2e7-4bf9-93b1-0bbe933c5c70",
        platform: Some("Linux"),
        device_family: Some("Linux"),
    };
    assert_eq!(
        p.render(),
        "v3|0cef938cd655cfc9049281375f3b5af43dbdbb746e13b33b4dedd7b333727607|cli|cli|operator|operator.read,operator.write|1795577919329|tokZ|97b6fb42-b2e7-4bf9-93b1-0bbe933c5c70|linux|linux"
    );
    // Empty scopes give an empty field; missing metadata is empty.
    let none = PayloadV3 {
        scopes: &[],
        platform: None,
        device_family: None,
        token: "",
        ..p
    };
    assert!(none
        .render()
        .ends_with("|operator||1795577919329||97b6fb42-b2e7-4bf9-93b1-0bbe933c5c70||"));
}

#[test]
fn metadata_is_trimmed_and_only_ascii_is_lowercased() {
    assert_eq!(normalize_device_metadata(Some("  MacOS\t")), "macos");
    assert_eq!(normalize_device_metadata(Some("\u{feff}ÉTÉ X")), "ÉtÉ x");
    assert_eq!(normalize_device_metadata(Some("   ")), "");
    assert_eq!(normalize_device_metadata(None), "");
}

#[test]
fn the_signed_token_is_auth_token_else_device_token_else_empty() {
    let id = "d";
    let tok = |a, b| {
        let p = params(a, b);
        let s = PayloadV3::from_params(id, &p, "n", 1).render();
        s.split('|').nth(7).unwrap().to_owned()
    };
    assert_eq!(tok(Some("shared"), Some("dev")), "shared");
    assert_eq!(tok(None, Some("dev")), "dev");
    assert_eq!(tok(None, None), "");
    // `??` semantics: an empty shared token is still the one signed.
    assert_eq!(tok(Some(""), Some("dev")), "");
}

#[test]
fn device_id_is_the_hex_sha256_of_the_raw_public_key() {
    let id = DeviceIdentity::from_seed([7; 32], PathBuf::from("/nowhere"));
    let raw = URL_SAFE_NO_PAD.decode(id.public_key_b64url()).unwrap();
    assert_eq!(raw.len(), 32);
    assert_eq!(id.public_key_b64url().len(), 43);
    assert_eq!(id.device_id().len(), 64);
    assert!(id
        .device_id()
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    // Independent SHA-256 (ring's) of the same bytes.
    let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(id.device_id(), hex);
    // RFC 8032 test 1: a known seed gives a known public key.
    let hex_seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex_seed[2 * i..2 * i + 2], 16).unwrap();
    }
    let rfc = DeviceIdentity::from_seed(seed, PathBuf::new());
    let pk = URL_SAFE_NO_PAD.decode(rfc.public_key_b64url()).unwrap();
    let hexpk: String = pk.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hexpk,
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
}

#[test]
fn the_signature_verifies_with_an_independent_implementation() {
    let dir = tempfile::tempdir().unwrap();
    let id = DeviceIdentity::load_or_create(dir.path()).unwrap();
    let p = params(Some("tokZ"), None);
    let proof = id.sign(
        &p,
        "97b6fb42-b2e7-4bf9-93b1-0bbe933c5c70",
        1_795_577_919_329,
    );
    assert_eq!(proof.id, id.device_id());
    assert_eq!(proof.public_key, id.public_key_b64url());
    assert_eq!(proof.signature.len(), 86);
    assert_eq!(proof.signed_at, 1_795_577_919_329);
    assert_eq!(proof.nonce, "97b6fb42-b2e7-4bf9-93b1-0bbe933c5c70");

    // The exact string, written out by hand (not by PayloadV3).
    let exact = format!(
        "v3|{}|gateway-client|backend|operator|operator.read,operator.write|1795577919329|tokZ|97b6fb42-b2e7-4bf9-93b1-0bbe933c5c70|linux|",
        id.device_id()
    );
    let pk = URL_SAFE_NO_PAD.decode(&proof.public_key).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(&proof.signature).unwrap();
    let verifier = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &pk);
    verifier
        .verify(exact.as_bytes(), &sig)
        .expect("ring verifies the signature over the exact v3 string");
    // The un-normalised platform (" Linux ") must not verify (§3.3).
    let raw = exact.replace("|linux|", "| Linux |");
    assert!(verifier.verify(raw.as_bytes(), &sig).is_err());
    // Nor the v2 form.
    let v2 = exact.trim_end_matches("|linux|").replacen("v3|", "v2|", 1);
    assert!(verifier.verify(v2.as_bytes(), &sig).is_err());

    // ring can also load the key file itself: it is standard PKCS#8.
    let text = fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
    let seed = parse_key_file(&text).unwrap();
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap();
    use ring::signature::KeyPair;
    assert_eq!(kp.public_key().as_ref(), &pk[..]);
}

#[test]
fn the_key_is_created_0600_in_a_0700_dir_and_persists() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("state").join("nested");
    let a = DeviceIdentity::load_or_create(&dir).unwrap();
    assert!(a.was_created());
    assert_eq!(mode_of(&dir), 0o700);
    let key = dir.join(KEY_FILE);
    assert_eq!(mode_of(&key), 0o600);
    let b = DeviceIdentity::load_or_create(&dir).unwrap();
    assert!(!b.was_created());
    assert_eq!(a.device_id(), b.device_id());
    assert_eq!(a.public_key_b64url(), b.public_key_b64url());
    // Same key: same signature (Ed25519 is deterministic).
    assert_eq!(a.sign_payload("x"), b.sign_payload("x"));
    let text = fs::read_to_string(&key).unwrap();
    assert!(text.contains(a.device_id()));
    assert!(text.contains(PEM_BEGIN));
    // No temp files left behind.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
    assert!(DeviceIdentity::load(base.path()).unwrap().is_none());
}

#[test]
fn a_0644_key_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let id = DeviceIdentity::load_or_create(dir.path()).unwrap();
    let key = dir.path().join(KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = DeviceIdentity::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::TooOpen { mode: 0o644, .. }));
    let msg = err.to_string();
    assert!(msg.contains(&key.display().to_string()), "{msg}");
    assert!(msg.contains("0644"), "{msg}");
    assert!(
        msg.contains(&format!("chmod 600 {}", key.display())),
        "{msg}"
    );
    // Writable by group is refused too; fixing the mode fixes it.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o620)).unwrap();
    assert!(DeviceIdentity::load(dir.path()).is_err());
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let again = DeviceIdentity::load_or_create(dir.path()).unwrap();
    assert_eq!(again.device_id(), id.device_id());
}

#[test]
fn a_broken_key_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join(KEY_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .unwrap();
    f.write_all(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        .unwrap();
    let err = DeviceIdentity::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::BadKey { .. }), "{err}");
    assert!(err.to_string().contains("move it away"));
    assert!(fs::read_to_string(&key).unwrap().contains("AAAA"));
    fs::remove_file(&key).unwrap();
    fs::create_dir(&key).unwrap();
    assert!(matches!(
        DeviceIdentity::load(dir.path()).unwrap_err(),
        IdentityError::NotAFile { .. }
    ));
}

#[test]
fn nothing_secret_in_debug() {
    let id = DeviceIdentity::from_seed([9; 32], PathBuf::from("/k"));
    let dbg = format!("{id:?}");
    let seed_b64 = STANDARD.encode([9u8; 32]);
    assert!(!dbg.contains(&seed_b64));
    assert!(!dbg.contains("[9, 9"));
    assert!(dbg.contains(id.device_id()));
    let t = StoredDeviceToken {
        token: "XCeysecret".into(),
        scopes: vec![],
        issued_at_ms: 1,
    };
    assert!(!format!("{t:?}").contains("XCeysecret"));
}

#[test]
fn token_store_round_trip_per_url_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceTokenStore::new(dir.path(), "dev1");
    let url = "wss://gw.example:18789/";
    assert_eq!(store.load(url, "operator").unwrap(), None);
    let scopes = vec!["operator.read".to_string(), "operator.write".to_string()];
    store.save(url, "operator", "XCey1", &scopes, 42).unwrap();
    assert_eq!(mode_of(store.path()), 0o600);
    // Trailing slash does not matter; another URL or role is separate.
    let got = store
        .load("wss://gw.example:18789", "operator")
        .unwrap()
        .unwrap();
    assert_eq!(got.token, "XCey1");
    assert_eq!(got.scopes, scopes);
    assert_eq!(got.issued_at_ms, 42);
    assert_eq!(store.load("wss://other:1/", "operator").unwrap(), None);
    assert_eq!(store.load(url, "node").unwrap(), None);
    store
        .save("wss://other:1/", "operator", "T2", &[], 7)
        .unwrap();
    // Replace keeps one entry.
    store
        .save(url, "operator", "XCey2", &scopes[..1], 43)
        .unwrap();
    let again = DeviceTokenStore::new(dir.path(), "dev1");
    assert_eq!(again.load(url, "operator").unwrap().unwrap().token, "XCey2");
    assert_eq!(
        again
            .load("wss://other:1", "operator")
            .unwrap()
            .unwrap()
            .token,
        "T2"
    );
    let text = fs::read_to_string(store.path()).unwrap();
    assert_eq!(text.matches("XCey").count(), 1);
    // A token issued to another key is never used.
    let other_key = DeviceTokenStore::new(dir.path(), "dev2");
    assert_eq!(other_key.load(url, "operator").unwrap(), None);
    // Clear.
    assert!(store.clear(url, "operator").unwrap());
    assert!(!store.clear(url, "operator").unwrap());
    assert_eq!(store.load(url, "operator").unwrap(), None);
    assert!(store.load("wss://other:1", "operator").unwrap().is_some());
    // Clearing with no file at all is fine and creates nothing.
    let empty = tempfile::tempdir().unwrap();
    let none = DeviceTokenStore::new(empty.path(), "d");
    assert!(!none.clear(url, "operator").unwrap());
    assert!(!none.path().exists());
}

#[test]
fn token_store_refuses_an_open_file_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceTokenStore::new(dir.path(), "dev1");
    store
        .save("ws://h/", "operator", "secret-tok", &[], 1)
        .unwrap();
    fs::set_permissions(store.path(), fs::Permissions::from_mode(0o640)).unwrap();
    let err = store.load("ws://h/", "operator").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(msg.contains(&store.path().display().to_string()), "{msg}");
    assert!(!msg.contains("secret-tok"));
    // Saving does not silently replace an open file either.
    assert!(store.save("ws://h/", "operator", "x", &[], 2).is_err());
    fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(store.path(), "{not json").unwrap();
    let err = store.load("ws://h/", "operator").unwrap_err();
    assert!(matches!(err, IdentityError::BadTokenFile { .. }));
    assert!(err.to_string().contains("delete it"));
}
