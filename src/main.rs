use std::process::ExitCode;

use clap::Parser;

mod cli;

/// jemalloc instead of the system's malloc: under glibc the daemon's threads each took an
/// arena and kept what a large ingest freed (1 GB above idle after 100 000 keys, against
/// 475 MB with jemalloc), and Automerge's many small allocations run faster (docs/benchmarks.md,
/// Scale).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Freed pages go back to the system at once: documents evicted under the memory budget and
/// loaded again free and take about a megabyte each, and a decay of one second kept 40 to 70 MB
/// of such pages resident under a stream of writes on a million entries (docs/benchmarks.md,
/// Scale). Four arenas are enough for the daemon's few busy threads and hold less idle memory
/// than one per core times four.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0,narenas:4\0";

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`meshd id | head -1`) instead of panicking on the broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = cli::Cli::parse();
    cli::init_logging(args.default_log_level());
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshd: {}", report(&error));
            cli::exit_code(&error)
        }
    }
}

/// The error and its causes, each once: many of our errors already name their cause in their
/// own message, and anyhow's `{:#}` would print it again.
fn report(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}
