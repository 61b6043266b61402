//! `flashcast-storm`: thin CLI over the library. Exit codes: 0 pass,
//! 1 a pass criterion failed, 2 bad usage or the run could not be carried out.

use std::process::ExitCode;

use clap::Parser;
use flashcast_storm::{chat, run_chat, Cli, Command, RunOptions};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => flashcast_storm::storm::main(args).await,
        Command::Check { file } => flashcast_storm::storm::check_main(&file),
        Command::ScenarioWorker { plan } => {
            match flashcast_storm::storm::worker_main(&plan).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("worker error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Chat(args) => {
            if let Err(e) = args.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let opts = RunOptions {
                worker_exe: std::env::current_exe().ok(),
            };
            let report = match run_chat(&args, &opts).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            println!("\nflashcast-storm chat, run {}", report.run_id);
            print!("{}", report.table());
            if let Some(path) = &args.out {
                if let Err(e) = report.write_json(path) {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
                println!("  report written to {}", path.display());
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Nchan(args) => flashcast_storm::nchan::main(args).await,
        Command::NchanWorker { plan } => flashcast_storm::nchan::worker_exit(&plan).await,
        Command::Worker { plan } => match chat::worker_main(&plan).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
