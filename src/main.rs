//! The `floor33` command: generate a video, manage weights, benchmark, (later) serve Discord.

use clap::Parser;

fn main() -> std::process::ExitCode {
    floor33::cli::init_logging();
    let cli = floor33::cli::Cli::parse();
    match floor33::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The chain may quote a URL or payload; it gets the logs' redaction.
            eprintln!("error: {}", floor33::redact::redact(&format!("{err:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
