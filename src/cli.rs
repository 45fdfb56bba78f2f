//! Subcommand dispatch.

use crate::config::{BenchCommand, Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => crate::server::run(cli.serve),
        Some(Command::Serve(cfg)) => crate::server::run(cfg),
        Some(Command::Info) => {
            let info = crate::torch_info::TorchInfo::probe();
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Some(Command::Bench(BenchCommand::Preprocess(args))) => crate::imaging::bench::run(args),
        Some(Command::Predict(args)) => crate::predict_local::run(args),
        Some(Command::Openapi) => {
            print!("{}", crate::http::openapi::document_json());
            Ok(())
        }
    }
}
