//! `strata`: query and rewind the versioned tables of any Strata instance
//! over gRPC (`strata.v1.Query` and `strata.v1.Admin`). See docs/cli.md.
//!
//! The binary parses the command line (`cli.rs`), connects (`conn.rs`), runs
//! one command (`cmd/`), renders replies (`output.rs`) and ends with an exit
//! code that says what went wrong (`error.rs`).

// A command-line tool: printing is its output.
#![allow(clippy::print_stdout)]

mod cli;
mod cmd;
mod conn;
mod error;
mod key;
mod output;
mod point;
mod positions;

use std::process::ExitCode;

use clap::Parser;

use crate::error::Exit;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Other as u8);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit() as u8)
        }
    }
}
