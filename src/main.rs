//! The `asset-agent` binary: parse the command line, run the command on a single-threaded
//! tokio runtime (a device agent has little to do concurrently, and one thread keeps memory
//! small), print the whole cause chain on failure and exit with the documented code.
//!
//! Blocking work runs on tokio's blocking pool, sized [`SIGNING_THREADS`] +
//! [`FILE_THREADS`]:
//! - RSA signing (actor tokens, `POST /v1/sign`) and name lookups are CPU-bound, so more
//!   threads than a board's cores buy nothing, while every thread that ever ran keeps its
//!   touched stack (glibc caches it) and its malloc arena for the rest of the process's
//!   life. With tokio's default (512), 16 concurrent signing clients left ~25 threads'
//!   worth behind, +1.4 MiB RSS for good.
//! - File work (sink and state writes with their fsyncs, hooks' PID files, sweeps) goes
//!   through [`asset_agent::filework`], which never holds more than [`FILE_THREADS`] of
//!   them: a filesystem that stops answering holds at most those, never the runtime thread
//!   nor the signing threads.
//!
//! At the end the runtime is given [`STOP_GRACE`] to finish blocking work: a write stuck on
//! a frozen filesystem does not keep the process from exiting.

use std::process::ExitCode;

use asset_agent::cli::Cli;
use asset_agent::commands::{self, EXIT_FAILURE};
use asset_agent::filework::FILE_THREADS;

/// Threads for signing, besides the runtime's one and the file-work ones.
const SIGNING_THREADS: usize = 2;
/// What the process waits for blocking work at exit.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    // exec's guard process (src/commands/exec.rs): no runtime, no parser.
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == commands::exec::GUARD_ARG) {
        return ExitCode::from(commands::exec::guard_main(argv.next().map(Into::into)));
    }
    let cli = match Cli::from_env() {
        Ok(cli) => cli,
        // Help, version, or a usage mistake (exit 2).
        Err(stop) => return stop.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(SIGNING_THREADS + FILE_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let outcome = runtime.block_on(commands::dispatch(cli));
    runtime.shutdown_timeout(STOP_GRACE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // `exec` passes its child's status on; the child has said what it had to say.
        Err(commands::Error::Exit(code)) => ExitCode::from(code),
        Err(err) => {
            wire::report::eprint_chain(&err);
            ExitCode::from(err.exit_code())
        }
    }
}
