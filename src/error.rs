//! Showing errors: every module has its own `thiserror` enum whose Display names the step
//! that failed and keeps the cause in `source()`; this renders such a chain on one line for
//! logs and status fields (`main` prints it one cause per line instead).

/// Renders an error and its whole `source()` chain on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        // Some errors repeat their source's text; skip exact repeats.
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
