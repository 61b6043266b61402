//! `flashcast-storm`: thin CLI over the library. Exit codes: 0 pass,
//! 1 a pass criterion failed, 2 bad usage or the run could not be carried out.

use std::process::ExitCode;

use clap::Parser;
use flashcast_storm::nchan::NchanPlan;
use flashcast_storm::storm::WorkerPlan;
use flashcast_storm::workers::worker_main;
use flashcast_storm::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => flashcast_storm::storm::main(args).await,
        Command::Check { file, scale } => flashcast_storm::storm::check_main(&file, scale),
        Command::Diff(args) => flashcast_storm::diff::main(args),
        Command::ScenarioWorker { plan } => worker_main::<WorkerPlan>(&plan).await,
        Command::Nchan(args) => flashcast_storm::nchan::main(args).await,
        Command::Video(args) => flashcast_storm::video::main(args).await,
        Command::NchanWorker { plan } => worker_main::<NchanPlan>(&plan).await,
    }
}
