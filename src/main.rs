use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = vitrine::cli::Cli::parse();
    if cli.runs_the_service() {
        // Before any thread starts: it may replace this process.
        vitrine::torch_info::threads::reexec_with_openmp_wait_policy();
    }
    vitrine::cli::run(cli)
}
