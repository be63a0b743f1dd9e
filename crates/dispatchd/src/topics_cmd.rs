//! `dispatchd topics ensure`.

use std::process::ExitCode;

use clap::Args;
use dispatch_kafka::admin::TopicAdmin;
use dispatch_kafka::topics::{TopicNames, topic_specs};

use crate::EXIT_INVALID;
use crate::config::ValidConfig;

/// Flags of `topics ensure`.
#[derive(Debug, Args)]
pub struct EnsureArgs {
    /// Exit with status 3 when an existing topic drifted from its spec (for CI and deploy
    /// jobs that must not proceed on a mismatched cluster).
    #[arg(long)]
    strict: bool,
}

/// Exit code of `--strict` when drift was found.
const EXIT_DRIFT: u8 = 3;

/// Refuses settings below production durability unless allowed
/// (`TopicSettings::check_durability`), then creates what is missing, reports drift; prints one
/// line per topic.
pub async fn ensure(config: &ValidConfig, args: &EnsureArgs) -> anyhow::Result<ExitCode> {
    // Before any I/O: nothing is created with settings that could lose acknowledged records,
    // unless the configuration says so explicitly.
    if let Err(refusal) = config.config.topics.check_durability() {
        eprintln!("error: {refusal}");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let names = TopicNames::new(config.config.kafka.topic_prefix.clone());
    let specs = topic_specs(&names, &config.config.topics, &config.retry_tier_names());
    let admin = TopicAdmin::new(&config.config.kafka)?;
    let report = admin.ensure_topics(&specs).await?;
    for topic in &report.created {
        println!("created  {topic}");
    }
    for topic in &report.existing {
        println!("exists   {topic}");
    }
    for drift in &report.drift {
        println!("DRIFT    {drift}");
    }
    println!(
        "{} topics: {} created, {} already existed, {} drifted settings",
        specs.len(),
        report.created.len(),
        report.existing.len(),
        report.drift.len()
    );
    if args.strict && !report.drift.is_empty() {
        return Ok(ExitCode::from(EXIT_DRIFT));
    }
    Ok(ExitCode::SUCCESS)
}
