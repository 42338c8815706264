//! Test-only helpers shared by the agent's unit tests (`src/`) and its integration tests
//! (`tests/`): the skip-or-fail guard [`require!`].
//!
//! A test that needs something the machine may lack (root, a PKCS#11 module, libfaketime,
//! a Mosquitto broker) skips with a notice on a developer's machine, but fails where an
//! `ASSET_AGENT_REQUIRE_*` variable says the thing must be there: `.ci/run` sets them all,
//! so nothing is skipped in CI without anyone noticing.
//!
//! The agent lists this crate only under `[dev-dependencies]`: the shipped binary never
//! links it (`.ci/run`'s layering step checks).

/// Set in CI: tests that need root (chown, other uids, mounts) fail instead of skipping.
pub const ROOT: &str = "ASSET_AGENT_REQUIRE_ROOT";
/// Set in CI: the PKCS#11 tests (SoftHSM2, swtpm with tpm2-pkcs11) fail instead of skipping.
pub const PKCS11: &str = "ASSET_AGENT_REQUIRE_PKCS11";
/// Set in CI: the wrong-system-clock test (libfaketime) fails instead of skipping.
pub const FAKETIME: &str = "ASSET_AGENT_REQUIRE_FAKETIME";
/// Set in CI: the Mosquitto interop test fails instead of skipping.
pub const MOSQUITTO: &str = "ASSET_AGENT_REQUIRE_MOSQUITTO";

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What a guard checks: a `bool` (present or not) or an `Option` (the thing, if found).
pub trait Found {
    /// What the guard hands to the test when the thing is there.
    type Value;
    /// The thing, or `None` when it is missing.
    fn found(self) -> Option<Self::Value>;
}

impl Found for bool {
    type Value = ();
    fn found(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Found for Option<T> {
    type Value = T;
    fn found(self) -> Option<T> {
        self
    }
}

/// Skips the rest of the test (returns from the enclosing function) when `found` is
/// `false` or `None`, printing a notice that names the test and `var`; but fails the test
/// when the environment variable `var` is set (as CI sets it). Otherwise evaluates to what
/// was found (`()` for a `bool`).
///
/// `missing` (format arguments) says what is missing and how to get it, e.g.
/// `"libfaketime (apt-get install faketime)"`: both messages carry it.
///
/// ```
/// # fn module() -> Option<std::path::PathBuf> { None }
/// # fn test() {
/// use asset_agent_testkit::{ROOT, is_root, require};
/// require!(ROOT, is_root(), "root, to chown files to another user: run the tests as root");
/// let module = require!(asset_agent_testkit::PKCS11, module(), "SoftHSM2 (apt-get install softhsm2)");
/// # let _ = module;
/// # }
/// ```
///
/// In a function that does not return `()`, use [`available`] instead.
#[macro_export]
macro_rules! require {
    ($var:expr, $found:expr, $($missing:tt)+) => {
        match $crate::available($var, $found, &::std::format!($($missing)+)) {
            ::std::option::Option::Some(found) => found,
            ::std::option::Option::None => return,
        }
    };
}

/// What [`require!`] does, for a caller that decides itself how to skip: `Some` with what
/// was found; `None` (after the notice) when it is missing and `var` is not set.
///
/// # Panics
///
/// When it is missing and `var` is set: that fails the test, which is the point.
pub fn available<F: Found>(var: &str, found: F, missing: &str) -> Option<F::Value> {
    decide(var, std::env::var_os(var).is_some(), found.found(), missing)
}

#[allow(clippy::panic)] // failing the test that calls it is this function's job
fn decide<T>(var: &str, required: bool, found: Option<T>, missing: &str) -> Option<T> {
    if found.is_some() {
        return found;
    }
    if required {
        panic!("{var} is set, so this test may not skip, but it needs {missing}");
    }
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    eprintln!("NOTICE: {test}: skipped what needs {missing} (set {var}=1 to make this a failure)");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEVER_SET: &str = "ASSET_AGENT_REQUIRE_TESTKIT_SELF_TEST";

    /// Runs `require!` on `found` under `var`; whether the code after it ran.
    fn guarded(var: &str, found: bool) -> bool {
        let mut ran = false;
        (|| {
            require!(var, found, "a {} thing (install it)", "test");
            ran = true;
        })();
        ran
    }

    #[test]
    fn present_runs_the_test_and_hands_over_what_was_found() {
        assert!(guarded(NEVER_SET, true));
        fn value(out: &mut u32) {
            let v = require!(NEVER_SET, Some(7_u32), "seven");
            *out = v + 1;
        }
        let mut out = 0;
        value(&mut out);
        assert_eq!(out, 8);
    }

    #[test]
    fn missing_and_not_required_skips() {
        assert!(std::env::var_os(NEVER_SET).is_none());
        assert!(!guarded(NEVER_SET, false));
        assert_eq!(available(NEVER_SET, None::<u32>, "nothing"), None);
    }

    #[test]
    fn missing_and_required_fails_naming_the_variable_and_the_fix() {
        // Cargo sets CARGO_MANIFEST_DIR for the tests it runs: a variable that is set.
        const SET: &str = "CARGO_MANIFEST_DIR";
        assert!(std::env::var_os(SET).is_some());
        let err = std::panic::catch_unwind(|| guarded(SET, false)).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert_eq!(
            msg,
            "CARGO_MANIFEST_DIR is set, so this test may not skip, but it needs a test thing \
             (install it)"
        );
        // The same decision without the environment.
        assert!(std::panic::catch_unwind(|| decide(ROOT, true, None::<()>, "root")).is_err());
        assert_eq!(decide(ROOT, true, Some(1), "root"), Some(1));
        assert_eq!(decide(ROOT, false, None::<()>, "root"), None);
    }
}
