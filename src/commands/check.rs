//! `asset-agent check [--json] [--exchange]`: prints the findings of `crate::diagnose`, and
//! fails (exit 1) when any is an error. Warnings alone exit 0.

use std::path::PathBuf;

use super::Error;
use crate::cli::CheckArgs;
use crate::diagnose::{self, Options, Report, Severity};
use wire::clock::Clock;

pub async fn run(config: Option<PathBuf>, args: CheckArgs) -> Result<(), Error> {
    let report = diagnose::run(&Options {
        config,
        exchange: args.exchange,
        clock: Clock::system(),
    })
    .await;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Failed(format!("could not encode the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", human(&report));
    }
    if report.ok {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "check found {} error{}",
            report.errors,
            if report.errors == 1 { "" } else { "s" }
        )))
    }
}

fn human(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in &report.findings {
        let label = match f.severity {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        };
        let _ = writeln!(out, "{label:<8} {:<12} {}", f.check, f.message);
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "{:<8} {:<12} fix: {fix}", "", "");
        }
    }
    let _ = writeln!(
        out,
        "\n{} error(s), {} warning(s)",
        report.errors, report.warnings
    );
    out
}
