//! `tripline lab`: the pressure lab's command line (the lab itself is the `tripline-lab`
//! crate). `list` names the scenarios; `run` runs them against this very binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Name the scenarios and say what each checks.
    List,
    /// Run scenarios (all, or those named) and write a report; exit status 1 when a check fails.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Scenarios to run, by name (see `tripline lab list`) [default: all; with --short, the CI suite].
    names: Vec<String>,
    /// Proxies to run each scenario through, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tripline", value_name = "LIST")]
    peers: Vec<String>,
    /// Where the report goes: report.md, report.json, and a plot per scenario and proxy.
    #[arg(long, default_value = "lab-report", value_name = "DIR")]
    out: PathBuf,
    /// The CI version: a fifth of the rate (200 requests a second) and shorter phases.
    #[arg(long)]
    short: bool,
}

pub fn run(args: LabArgs) -> ExitCode {
    let args = match args.command {
        LabCommand::List => {
            print!("{}", tripline_lab::list());
            return ExitCode::SUCCESS;
        }
        LabCommand::Run(r) => r,
    };
    let tripline = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tripline lab: cannot find this binary to run it: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = tripline_lab::Options {
        names: args.names,
        peers: args.peers,
        out: args.out,
        short: args.short,
        tripline,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tripline lab: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(tripline_lab::run(&opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tripline lab: {e}");
            ExitCode::from(2)
        }
    }
}
