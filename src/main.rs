//! The `asset-agent` binary: parse the command line, run the command on a single-threaded
//! tokio runtime (a device agent has little to do concurrently, and one thread keeps memory
//! small), print the whole cause chain on failure and exit with the documented code.
//!
//! Blocking work (RSA signing for `POST /v1/sign`, name lookups) runs on at most
//! [`MAX_BLOCKING_THREADS`] extra threads: it is CPU-bound, so more threads than a board's
//! cores buy nothing, while every thread that ever ran keeps its touched stack (glibc caches
//! it) and its malloc arena for the rest of the process's life. With tokio's default (512),
//! 16 concurrent signing clients left ~25 threads' worth behind, +1.4 MiB RSS for good.

use std::process::ExitCode;

use asset_agent::cli::Cli;
use asset_agent::commands::{self, EXIT_FAILURE};

/// Threads for blocking work, besides the runtime's one.
const MAX_BLOCKING_THREADS: usize = 2;

fn main() -> ExitCode {
    let cli = match Cli::from_env() {
        Ok(cli) => cli,
        // Help, version, or a usage mistake (exit 2).
        Err(stop) => return stop.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
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
