//! Link settings for the shipped build (`panic = "abort"`, Linux): no unwind tables, and
//! packed relative relocations on glibc.
//!
//! With `panic = "abort"` nothing ever unwinds, yet `.eh_frame` (and its index
//! `.eh_frame_hdr`) was ~0.5 MB of the binary: the prebuilt standard library carries
//! unwind tables into LTO whatever `-C force-unwind-tables` says. A linker-script fragment
//! (`INSERT`, so the default script stays in charge of everything else) discards them.
//! What is lost: debuggers and `perf --call-graph dwarf` cannot walk the stack of the
//! stripped binary; a panic still prints its message and aborts. Builds that unwind
//! (tests, debug builds) are untouched. Needs a GNU-compatible linker (ld.bfd, gold,
//! lld), as every Linux target here uses.
//!
//! Packed relative relocations (`-z pack-relative-relocs`, DT_RELR): a position-independent
//! binary carries one 24-byte relocation per pointer in its data (~180 KB here); DT_RELR
//! stores the same as a bitmap of a few KB. The loader must know DT_RELR: glibc 2.36 or
//! later (Debian 12, Raspberry Pi OS bookworm, Ubuntu 22.10); the linker records that as a
//! `GLIBC_ABI_DT_RELR` version need, so an older glibc refuses to start the binary with a
//! clear message instead of misbehaving. (Linked on Debian 12, the binary already needs
//! glibc 2.34.)
//!
//! Code layout (x86_64 glibc, where rustc links with its own lld): the functions the agent
//! runs from start to serving tokens, listed in `packaging/x86_64-unknown-linux-gnu.order`
//! by `scripts/order-file.sh`, are placed first and together. The kernel maps code 64 KiB
//! at a time around each page touched, so scattered startup code kept all of `.text`
//! resident; placed together, the code that runs is ~1 MiB of it. A name the list has and
//! the build lacks (a stale list) is skipped; the memory budget in `.ci/run` notices when
//! the list stops helping. Skipped before rustc 1.90 (which linked with the system's
//! linker) and when a linker is chosen for the target, in the environment or in the
//! flags (it may not be lld).

use std::env;
use std::path::PathBuf;

const DISCARD_UNWIND_TABLES: &str =
    "SECTIONS { /DISCARD/ : { *(.eh_frame) *(.eh_frame.*) } } INSERT AFTER .text;\n";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // The release profile is the panic=abort one (Cargo.toml). Build scripts cannot ask:
    // CARGO_CFG_PANIC says "unwind" whatever the profile sets.
    let abort = env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let glibc = env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "gnu");
    let Some(out) = env::var_os("OUT_DIR") else {
        return;
    };
    if !(abort && linux) {
        return;
    }
    let script = PathBuf::from(out).join("discard-unwind-tables.ld");
    if let Err(e) = std::fs::write(&script, DISCARD_UNWIND_TABLES) {
        // The binary still links, with its unwind tables; the size check reports it.
        println!("cargo:warning=could not write {}: {e}", script.display());
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
    if glibc {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    order_code();
}

/// The linker's symbol ordering file, where the linker is rustc's own lld.
fn order_code() {
    let Ok(target) = env::var("TARGET") else {
        return;
    };
    let order = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("packaging")
        .join(format!("{target}.order"));
    println!("cargo:rerun-if-changed={}", order.display());
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    println!("cargo:rerun-if-env-changed={linker_var}");
    // Any linker choice in the flags (`-C linker=`, `-C linker-features=-lld`,
    // `-C link-self-contained=`) may mean GNU ld, which refuses the option.
    let flags_pick_linker = env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    let own_lld = target == "x86_64-unknown-linux-gnu"
        && rustc_minor().is_some_and(|minor| minor >= 90)
        && env::var_os(&linker_var).is_none()
        && env::var_os("RUSTC_LINKER").is_none()
        && !flags_pick_linker;
    if own_lld && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The minor version of the compiler cargo runs (`rustc 1.95.0 (...)` is 95).
fn rustc_minor() -> Option<u32> {
    let out = std::process::Command::new(env::var_os("RUSTC")?)
        .arg("--version")
        .output()
        .ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    version
        .split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}
