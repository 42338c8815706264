//! The command line of the bench binaries that take `--flag value` arguments.

/// The `--flag value` pairs after `--bench`, in order; `None` when `--bench` is not on the
/// command line, as under `cargo test`, which runs a `test = true` bench to test itself.
///
/// # Panics
/// A flag without a value: these are tools run by `scripts/bench.sh`, where that is a bug.
pub fn bench_flags() -> Option<Vec<(String, String)>> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let mut pairs = Vec::new();
    let mut it = argv.into_iter().filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        pairs.push((flag, value));
    }
    Some(pairs)
}
