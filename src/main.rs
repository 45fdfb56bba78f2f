use clap::Parser;

fn main() -> anyhow::Result<()> {
    vitrine::cli::run(vitrine::cli::Cli::parse())
}
