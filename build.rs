//! Link settings for the shipped build: no unwind tables in a `panic = "abort"` binary.
//!
//! With `panic = "abort"` nothing ever unwinds, yet `.eh_frame` (and its index
//! `.eh_frame_hdr`) was ~0.5 MB of the binary: the prebuilt standard library carries
//! unwind tables into LTO whatever `-C force-unwind-tables` says. A linker-script fragment
//! (`INSERT`, so the default script stays in charge of everything else) discards them.
//! What is lost: debuggers and `perf --call-graph dwarf` cannot walk the stack of the
//! stripped binary; a panic still prints its message and aborts. Builds that unwind
//! (tests, `panic = "unwind"`) are untouched. Needs a GNU-compatible linker (ld.bfd, gold,
//! lld), as every Linux target here uses.

use std::env;
use std::path::PathBuf;

const DISCARD_UNWIND_TABLES: &str =
    "SECTIONS { /DISCARD/ : { *(.eh_frame) *(.eh_frame.*) } } INSERT AFTER .text;\n";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let abort = env::var("CARGO_CFG_PANIC").is_ok_and(|p| p == "abort");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
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
}
