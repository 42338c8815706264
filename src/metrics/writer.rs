//! The Prometheus text exposition format (version 0.0.4): the one writer every part of the
//! agent renders its series with.

use std::fmt::{Display, Write as _};

/// Writes families and samples in the text format.
#[derive(Default)]
pub struct Writer {
    out: String,
}

// === impl Writer ===

impl Writer {
    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The exposition written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values escape backslash, double quote and newline.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
        let mut w = Writer::default();
        w.family("m", "counter", "help");
        w.sample("m", &[("a", "1"), ("b", "\"")], 2);
        w.sample("m", &[], 0.5);
        assert_eq!(
            w.out,
            "# HELP m help\n# TYPE m counter\nm{a=\"1\",b=\"\\\"\"} 2\nm 0.5\n"
        );
    }
}
