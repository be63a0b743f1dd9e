//! `dispatchd publish`: events from JSON to their domain topics. All input is checked before
//! anything is produced, so a bad event means nothing was sent.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;
use dispatch_core::event_input::{EventInput, PublishableEvent};
use dispatch_kafka::publish::EventPublisher;

use crate::EXIT_INVALID;
use crate::config::ValidConfig;

/// Flags of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The event(s) as JSON. Without it, `--file` or standard input is read.
    json: Option<String>,
    /// Read the event(s) from this file (`-` for standard input).
    #[arg(long, short = 'f', conflicts_with = "json")]
    file: Option<PathBuf>,
}

/// Splits the input into one JSON text per event: an object, an array of objects, or JSON
/// Lines. Returns (label for errors, JSON text).
fn split_events(text: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| (format!("event #{}", index + 1), item.to_string()))
            .collect(),
        Ok(_) => vec![("event".to_owned(), text.to_owned())],
        // Not one JSON value: JSON Lines (blank lines skipped), or malformed input that the
        // event parser will describe.
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| (format!("line {}", index + 1), line.to_owned()))
            .collect(),
    }
}

fn read_input(args: &PublishArgs) -> anyhow::Result<String> {
    if let Some(json) = &args.json {
        return Ok(json.clone());
    }
    let mut text = String::new();
    match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
        }
    }
    Ok(text)
}

/// Builds every event, then produces them in order and prints where each landed (JSON Lines on
/// standard output).
pub async fn publish(config: &ValidConfig, args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let text = read_input(args)?;
    let now = SystemTime::now();
    let mut rng = rand::rng();
    let mut events: Vec<PublishableEvent> = Vec::new();
    let mut errors = Vec::new();
    let inputs = split_events(&text);
    if inputs.is_empty() {
        eprintln!("error: no event in the input");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    for (label, json) in inputs {
        match EventInput::parse(&json).and_then(|input| input.into_event(now, &mut rng)) {
            Ok(event) => events.push(event),
            Err(error) => errors.push(format!("{label}: {error}")),
        }
    }
    if !errors.is_empty() {
        for error in &errors {
            eprintln!("error: {error}");
        }
        eprintln!("nothing was published");
        return Ok(ExitCode::from(EXIT_INVALID));
    }

    let publisher = EventPublisher::new(&config.config.kafka)?;
    for event in &events {
        let published = publisher.publish(event).await?;
        println!(
            "{}",
            serde_json::json!({
                "id": published.event_id,
                "type": published.event_type,
                "topic": published.topic,
                "partition": published.partition,
                "offset": published.offset,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_objects_arrays_and_json_lines() {
        assert_eq!(split_events(r#"{"a":1}"#).len(), 1);
        let array = split_events(r#"[{"a":1},{"b":2}]"#);
        assert_eq!(array[1], ("event #2".to_owned(), r#"{"b":2}"#.to_owned()));
        let lines = split_events("{\"a\":1}\n\n{\"b\":2}\n");
        assert_eq!(lines[1].0, "line 3");
        assert!(split_events("  \n").is_empty());
    }
}
