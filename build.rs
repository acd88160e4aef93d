//! Release builds of the daemon link the code it runs from start-up to idle
//! together, at the start of `.text` (README "Performance", idle RSS).
//!
//! The kernel maps a binary's text in 64 KiB windows around each page it
//! faults in, so idle RSS is the number of windows the start-up code touches,
//! not the size of that code: about 2 MB of functions, spread over the whole
//! 8 MB of text, kept about 6 MB of it resident. `src/link-order.txt` lists those
//! functions (their mangled names, in the order they first run), recorded by
//! `scripts/link-order.sh` from a run of the release binary; the linker places
//! them first. A name that no longer exists (changed code, another compiler)
//! is skipped silently: the build never fails over it, the binary only gets
//! less compact until the list is recorded again.
//!
//! Only where the linker is rustc's default LLD (x86_64 Linux GNU, Rust ≥
//! 1.90) and nothing overrides it: `--symbol-ordering-file` is an LLD flag.
//! `OPENCLAW_BRIDGE_LINK_ORDER=0` turns it off.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/link-order.txt");
    println!("cargo:rerun-if-env-changed=OPENCLAW_BRIDGE_LINK_ORDER");
    if let Some(reason) = skip_reason() {
        println!("cargo:rustc-env=OPENCLAW_BRIDGE_LINK_ORDER_STATE=off: {reason}");
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("src").join("link-order.txt");
    // -Xlinker passes each argument to LLD as it is (a path may hold commas).
    println!("cargo:rustc-link-arg-bins=-Xlinker");
    println!(
        "cargo:rustc-link-arg-bins=--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Xlinker");
    println!("cargo:rustc-link-arg-bins=--no-warn-symbol-ordering");
    println!("cargo:rustc-env=OPENCLAW_BRIDGE_LINK_ORDER_STATE=on");
}

/// Why the ordering is not applied, if it is not.
fn skip_reason() -> Option<String> {
    let var = |k: &str| env::var(k).unwrap_or_default();
    if var("OPENCLAW_BRIDGE_LINK_ORDER") == "0" {
        return Some("OPENCLAW_BRIDGE_LINK_ORDER=0".into());
    }
    if var("PROFILE") != "release" {
        return Some("not a release build".into());
    }
    let dir = var("CARGO_MANIFEST_DIR");
    if !Path::new(&dir).join("src").join("link-order.txt").is_file() {
        return Some("no src/link-order.txt".into());
    }
    if var("TARGET") != "x86_64-unknown-linux-gnu" {
        return Some("the target's default linker is not LLD".into());
    }
    // A linker chosen by the user (config, RUSTFLAGS, target env) may not
    // know the flag.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if ["linker", "fuse-ld", "link-self-contained"]
        .iter()
        .any(|k| flags.contains(k))
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
    {
        return Some("a linker is configured".into());
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    // "rustc 1.95.0 (…)": LLD is the default linker from 1.90 on.
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 90 => None,
        _ => Some(format!("rustc older than 1.90 ({})", version.trim())),
    }
}
