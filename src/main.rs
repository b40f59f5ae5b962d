//! The `bucketfs` command: parse the arguments, run the chosen mode.

use std::process::ExitCode;

use clap::Parser;

use bucketfs::cli::{Cli, Command};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Mount(args) => bucketfs::mount::run(args),
        Command::Api(args) => bucketfs::control::run_api_command(args),
    }
}
