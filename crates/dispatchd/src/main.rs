//! `dispatchd`: the one binary of Posternity Dispatch. It parses configuration and wires the
//! library crates together; the work itself lives in those crates.

mod config;
mod publish_cmd;
mod receiver_cmd;
mod roles;
mod topics_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's allocator: a profile of the sender flat out spent ~17 % of its
/// samples in glibc malloc/free (per-delivery records, tasks, requests). Used by every role.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Posternity Dispatch: delivers Posternity's domain events from Kafka to customers' webhooks.
#[derive(Debug, Parser)]
#[command(name = "dispatchd", version, about)]
struct Cli {
    /// TOML configuration file (environment `DISPATCH_*` variables and flags override it).
    #[arg(long, short = 'c', global = true, env = "DISPATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `kafka.bootstrap_servers`.
    #[arg(long, global = true)]
    bootstrap_servers: Option<String>,
    /// Overrides `kafka.topic_prefix`.
    #[arg(long, global = true)]
    topic_prefix: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the topics of the design.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Build events from JSON and produce them to their domain topics, as pipelines do.
    ///
    /// Input: one JSON object, a JSON array of objects, or JSON Lines, from the argument, a
    /// file, or standard input. Every event is checked before anything is produced: one bad
    /// event and nothing is sent.
    Publish(publish_cmd::PublishArgs),
    /// Check the configuration and print it as the process sees it.
    CheckConfig,
    /// Run the fan-out role: domain events → delivery tasks, exactly once.
    Fanout,
    /// Run the sender role: delivery tasks → signed webhooks, retries, dead letters.
    Sender,
    /// Run the admin API: subscriptions, secrets, test events, delivery status, the DLQ.
    Api,
    /// Run the fan-out, the sender and the admin API in one process (development, small sites).
    All,
    /// A development webhook endpoint: verifies signatures and prints each webhook.
    Receiver(receiver_cmd::ReceiverArgs),
}

impl Command {
    /// Long-running roles (as opposed to one-shot tools).
    fn is_role(&self) -> bool {
        matches!(
            self,
            Command::Fanout | Command::Sender | Command::Api | Command::All
        )
    }
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every missing topic with its configs; report topics that drift from the spec.
    Ensure(topics_cmd::EnsureArgs),
}

/// Exit code of invalid configuration or input: nothing was done.
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // Roles log at info; the tools report on stdout and log only trouble. RUST_LOG
            // overrides both.
            EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                EnvFilter::new(if cli.command.is_role() {
                    "info"
                } else {
                    "warn"
                })
            }),
        )
        .with_writer(std::io::stderr)
        .init();

    let flags = config::FlagOverrides {
        bootstrap_servers: cli.bootstrap_servers.clone(),
        topic_prefix: cli.topic_prefix.clone(),
    };
    let config = match config::load(cli.config.as_deref(), &flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_INVALID);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Topics {
                command: TopicsCommand::Ensure(args),
            } => topics_cmd::ensure(&config, &args).await,
            Command::Publish(args) => publish_cmd::publish(&config, &args).await,
            Command::Fanout => roles::fanout(&config).await,
            Command::Sender => roles::sender(&config).await,
            Command::Api => roles::api(&config).await,
            Command::All => roles::all(&config).await,
            Command::Receiver(args) => receiver_cmd::run(&args).await,
            Command::CheckConfig => {
                // SASL/SSL credentials travel in the pass-through table: never print them.
                let mut shown = config.config.clone();
                for (key, value) in shown.kafka.librdkafka.iter_mut() {
                    if ["password", "secret", "key"]
                        .iter()
                        .any(|word| key.contains(word))
                    {
                        *value = "<redacted>".to_owned();
                    }
                }
                println!("{shown:#?}");
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
