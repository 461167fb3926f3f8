use std::process::ExitCode;

use clap::Parser;

mod allocator;
mod cli;

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
