//! The command line: its grammar (subcommands around [`ServeConfig`]) and
//! their dispatch.

use clap::{Parser, Subcommand};

use crate::config::ServeConfig;

/// Fine-tune Vision Transformers and serve their predictions over HTTP.
#[derive(Debug, Parser)]
#[command(name = "vitrine", version, long_version = crate::torch_info::LONG_VERSION)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options for `serve`, which runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeConfig,
}

// Parsed once per process: the size of `Serve` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service and its workers (the default).
    Serve(ServeConfig),
    /// Claim and train jobs on this node's devices, from the database that
    /// API nodes (`serve --no-workers`) share; no API, only `/healthz`,
    /// `/readyz` and `/metrics` on `--health-listen`.
    Worker(crate::config::WorkerConfig),
    /// Print the libtorch version, the devices it sees, the NVIDIA driver
    /// and CUDA versions, and why no GPU is usable when one is present.
    Info,
    /// Print the OpenAPI document generated from the code.
    Openapi,
    /// Classify local image files with a model, no server; prints JSON.
    Predict(crate::predict_local::PredictArgs),
    /// Heat maps of why a model scores an image's labels (overlay PNGs and
    /// `.npy`), no server; prints JSON.
    Explain(crate::explain_local::ExplainArgs),
    /// Write a model as an ONNX file (`OUT.onnx`) with its metadata (`OUT.json`).
    Export(crate::export::command::ExportArgs),
    /// Measure preprocessing throughput against Pillow + `ViTImageProcessor`.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decode, resize to 224 and normalise generated JPEGs with vitrine and,
    /// in the same run, with Pillow + `ViTImageProcessorPil` on as many processes.
    Preprocess(crate::imaging::bench::BenchArgs),
}

impl Cli {
    /// Whether this command line runs `serve` (the default) or `worker`,
    /// the commands whose libgomp wait policy `main` settles before it starts.
    pub fn runs_the_service(&self) -> bool {
        matches!(
            self.command,
            None | Some(Command::Serve(_)) | Some(Command::Worker(_))
        )
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => crate::server::run(cli.serve),
        Some(Command::Serve(cfg)) => crate::server::run(cfg),
        Some(Command::Worker(cfg)) => crate::server::run_worker(cfg),
        Some(Command::Info) => {
            let info = crate::torch_info::TorchInfo::probe();
            println!("{}", serde_json::to_string_pretty(&info)?);
            if let Some(warning) = &info.warning {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
        Some(Command::Bench(BenchCommand::Preprocess(args))) => crate::imaging::bench::run(args),
        Some(Command::Predict(args)) => crate::predict_local::run(args),
        Some(Command::Explain(args)) => crate::explain_local::run(args),
        Some(Command::Export(args)) => crate::export::command::run(args),
        Some(Command::Openapi) => {
            print!("{}", crate::http::openapi::document_json());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;
    use crate::config::SECRET_FLAGS;

    /// Every argument of every subcommand (and the top level), with the
    /// path of subcommands that reach it.
    fn all_args() -> Vec<(String, clap::Arg)> {
        fn walk(cmd: &clap::Command, at: String, out: &mut Vec<(String, clap::Arg)>) {
            out.extend(cmd.get_arguments().map(|a| (at.clone(), a.clone())));
            for sub in cmd.get_subcommands() {
                walk(sub, format!("{at} {}", sub.get_name()), out);
            }
        }
        let mut out = vec![];
        walk(&Cli::command(), "vitrine".into(), &mut out);
        out
    }

    /// A flag whose name suggests a secret must be listed in
    /// `SECRET_FLAGS`, so a new `--s3-secret` cannot slip past the rule.
    #[test]
    fn flags_named_like_secrets_are_listed() {
        for (at, arg) in all_args() {
            let id = arg.get_id().as_str();
            let looks_secret = [
                "token",
                "password",
                "secret",
                "key",
                "database_url",
                "credential",
            ]
            .iter()
            .any(|w| id.contains(w));
            assert!(
                !looks_secret || SECRET_FLAGS.contains(&id),
                "`{at} --{id}` looks like it carries a secret: add it to config::SECRET_FLAGS"
            );
        }
    }

    /// `--help` shows no environment value of a secret-bearing flag.
    #[test]
    fn secret_flags_hide_their_environment_values() {
        let mut seen = 0;
        for (at, arg) in all_args() {
            if SECRET_FLAGS.contains(&arg.get_id().as_str()) {
                seen += 1;
                assert!(
                    arg.is_hide_env_values_set(),
                    "`{at} --{}` shows its environment value in --help",
                    arg.get_id()
                );
            }
        }
        // Top level, `serve` and `worker` each have every one.
        assert_eq!(seen, 3 * SECRET_FLAGS.len());
    }

    #[test]
    fn cors_origins_are_checked_when_parsed() {
        use crate::config::parse_origin;
        assert_eq!(
            parse_origin("https://app.example.com/").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            parse_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert!(parse_origin("https://app.example.com/path").is_err());
        assert!(parse_origin("app.example.com").is_err());
        assert_eq!(parse_origin("*").unwrap(), "*");
    }
}
