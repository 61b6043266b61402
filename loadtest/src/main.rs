//! `flashcast-storm`: thin CLI over the library. Exit codes: 0 pass,
//! 1 a pass criterion failed, 2 bad usage or the run could not be carried out.

use std::process::ExitCode;

use clap::Parser;
use flashcast_storm::{Cli, Command};

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
        Command::Nchan(args) => flashcast_storm::nchan::main(args).await,
        Command::Video(args) => flashcast_storm::video::main(args).await,
        Command::NchanWorker { plan } => flashcast_storm::nchan::worker_exit(&plan).await,
    }
}
