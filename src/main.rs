//! The `carerix-operator` command: wiring only; everything else lives in the library.

use std::process::ExitCode;

use carerix_operator::run::{RunArgs, init_tracing, run};
use clap::{Parser, Subcommand};

/// Kubernetes operator that connects recruitment platforms to Carerix.
#[derive(Parser, Debug)]
#[command(name = "carerix-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: reconcile CarerixConnections, sync data, receive webhook deliveries.
    Run(Box<RunArgs>),
    /// Print the CarerixConnection CustomResourceDefinition as YAML.
    Crd,
    /// Check a Carerix tenant before anything is applied (docs/carerix-setup.md).
    Preflight(Box<carerix_operator::preflight::PreflightArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match carerix_operator::crdgen::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Preflight(args) => carerix_operator::preflight::main(&args),
        Command::Run(args) => {
            init_tracing(args.log_format, &args.log_level);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("error: could not start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    let mut message = err.to_string();
                    let mut source = std::error::Error::source(&err);
                    while let Some(s) = source {
                        message.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    tracing::error!(error = %message, "carerix-operator stopped");
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
