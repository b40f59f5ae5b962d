//! The `bucketfs` command: parse the arguments, run the chosen mode.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use bucketfs::cli::{helper_arguments, Cli, Command};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // mount(8) runs `bucketfs SOURCE MOUNTPOINT -o OPTIONS` for `mount -t fuse.bucketfs`.
    let cli = if args.get(1).is_some_and(|a| a.starts_with("s3://")) {
        match helper_arguments(&args[1..]) {
            Ok(mount_args) => Cli::parse_from(mount_args),
            Err(message) => {
                eprintln!("bucketfs: {message}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        Cli::parse()
    };
    match cli.command {
        Command::Mount(args) => bucketfs::mount::run(args),
        Command::Api(args) => bucketfs::control::run_api_command(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "bucketfs", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bucketfs: cannot write the manual page: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
