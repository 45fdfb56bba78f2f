use clap::Parser;

fn main() -> anyhow::Result<()> {
    vitrine::cli::run(vitrine::config::Cli::parse())
}
