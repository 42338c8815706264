//! The `asset-agent` binary: parse the command line, run the command on a single-threaded
//! tokio runtime (a device agent has little to do concurrently, and one thread keeps memory
//! small), print the whole cause chain on failure and exit with the documented code.

use std::process::ExitCode;

use asset_agent::cli::Cli;
use asset_agent::commands::{self, EXIT_FAILURE};
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `exec` passes its child's status on; the child has said what it had to say.
        Err(commands::Error::Exit(code)) => ExitCode::from(code),
        Err(err) => {
            wire::report::eprint_chain(&err);
            ExitCode::from(err.exit_code())
        }
    }
}
