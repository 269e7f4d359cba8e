//! The `app-executor` binary: parse the command line, hand over to [`app_executor::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    app_executor::cli::main(app_executor::cli::Cli::parse())
}
