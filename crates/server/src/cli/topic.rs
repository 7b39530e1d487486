//! `sluice topic list|describe|create|delete|alter`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_http::model::{
    AlterTopicConfigsRequest, CreateTopicRequest, TopicConfigEntry, TopicDetail, TopicSummary,
};

use super::api_client::{decode_value, ApiClient};
use super::output::{human_bytes, table, Output};
use super::{CliError, CliResult, ClientOptions};

#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Topics with their partition and message counts and size.
    List {
        /// Also list internal topics (names starting with `__`).
        #[arg(long)]
        internal: bool,
    },
    /// A topic's partitions (log start, end, high watermark, size) and config overrides.
    Describe {
        name: String,
        /// Show every config with its value and source, not only the overrides.
        #[arg(long)]
        all_configs: bool,
    },
    /// Create a topic.
    Create {
        name: String,
        /// Partition count [default: the broker's --default-partitions]
        #[arg(long, short = 'p', value_name = "N")]
        partitions: Option<i32>,
        /// A config override, e.g. `retention.ms=3600000` (repeatable)
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Succeed when the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        /// Succeed when there is no such topic.
        #[arg(long)]
        if_exists: bool,
    },
    /// Change a topic's config overrides.
    Alter {
        name: String,
        /// Set an override, e.g. `retention.ms=3600000` (repeatable)
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Remove an override, back to the broker's value (repeatable)
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// Make the overrides exactly the --set ones (others are removed).
        #[arg(long)]
        replace: bool,
    },
}

/// `KEY=VALUE` (the value may contain `=`).
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{text}'")),
    }
}

pub fn run(client: &ApiClient, output: &mut Output, args: &TopicArgs) -> CliResult<()> {
    match &args.command {
        TopicCommand::List { internal } => list(client, output, *internal),
        TopicCommand::Describe { name, all_configs } => {
            describe(client, output, name, *all_configs)
        }
        TopicCommand::Create {
            name,
            partitions,
            configs,
            if_not_exists,
        } => create(client, output, name, *partitions, configs, *if_not_exists),
        TopicCommand::Delete { name, if_exists } => {
            match client.delete(&["api", "topics", name]) {
                Ok(()) => {}
                Err(CliError::Api { status: 404, .. }) if *if_exists => {}
                Err(error) => return Err(error),
            }
            if output.json {
                output.document(&json!({"deleted": name}))
            } else {
                output.line(&format!("deleted topic {name}"))
            }
        }
        TopicCommand::Alter {
            name,
            set,
            delete,
            replace,
        } => alter(client, output, name, set, delete, *replace),
    }
}

fn list(client: &ApiClient, output: &mut Output, internal: bool) -> CliResult<()> {
    let value = client.get_value(&["api", "topics"], &[])?;
    let topics: Vec<TopicSummary> = decode_value(value.clone())?;
    if output.json {
        let shown: Vec<&Value> = value
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|t| internal || t["internal"] != Value::Bool(true))
                    .collect()
            })
            .unwrap_or_default();
        return output.document(&json!(shown));
    }
    let mut rows = table(&["name", "partitions", "messages", "size"], &[1, 2, 3]);
    for topic in topics.iter().filter(|t| internal || !t.internal) {
        rows.add_row(vec![
            topic.name.clone(),
            topic.partitions.to_string(),
            topic.messages.to_string(),
            human_bytes(topic.size_bytes),
        ]);
    }
    output.table(&rows)
}

fn describe(
    client: &ApiClient,
    output: &mut Output,
    name: &str,
    all_configs: bool,
) -> CliResult<()> {
    let value = client.get_value(&["api", "topics", name], &[])?;
    let detail: TopicDetail = decode_value(value.clone())?;
    let configs: Option<Value> = if all_configs {
        Some(client.get_value(&["api", "topics", name, "configs"], &[])?)
    } else {
        None
    };
    if output.json {
        let mut document = value;
        if let (Some(object), Some(configs)) = (document.as_object_mut(), configs) {
            object.insert("config_entries".into(), configs);
        }
        return output.document(&document);
    }
    output.line(&format!(
        "topic {}  id {}  partitions {}{}",
        detail.name,
        detail.id,
        detail.partitions.len(),
        if detail.internal { "  (internal)" } else { "" }
    ))?;
    output.line("")?;
    let mut partitions = table(
        &[
            "partition",
            "log start",
            "log end",
            "high watermark",
            "messages",
            "size",
            "segments",
            "leader",
            "replicas",
        ],
        &[0, 1, 2, 3, 4, 5, 6, 7],
    );
    for partition in &detail.partitions {
        partitions.add_row(vec![
            partition.partition.to_string(),
            partition.log_start_offset.to_string(),
            partition.log_end_offset.to_string(),
            partition.high_watermark.to_string(),
            (partition.high_watermark - partition.log_start_offset)
                .max(0)
                .to_string(),
            human_bytes(partition.size_bytes),
            partition.segments.to_string(),
            partition.leader.to_string(),
            partition
                .replicas
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    output.table(&partitions)?;
    output.line("")?;
    match configs {
        Some(configs) => {
            let entries: Vec<TopicConfigEntry> = decode_value(configs)?;
            config_table(output, &entries)
        }
        None if detail.configs.is_empty() => output.line("configs: no overrides"),
        None => {
            output.line("configs (overrides):")?;
            for (key, value) in &detail.configs {
                output.line(&format!("  {key}={value}"))?;
            }
            Ok(())
        }
    }
}

fn config_table(output: &mut Output, entries: &[TopicConfigEntry]) -> CliResult<()> {
    let mut configs = table(&["config", "value", "source"], &[]);
    for entry in entries {
        configs.add_row(vec![
            entry.name.clone(),
            entry.value.clone(),
            entry.source.clone(),
        ]);
    }
    output.table(&configs)
}

fn create(
    client: &ApiClient,
    output: &mut Output,
    name: &str,
    partitions: Option<i32>,
    configs: &[(String, String)],
    if_not_exists: bool,
) -> CliResult<()> {
    let request = CreateTopicRequest {
        name: name.to_string(),
        partitions,
        configs: configs.iter().cloned().collect(),
    };
    let created = match client.post(&["api", "topics"], &request) {
        Ok(created) => created,
        Err(CliError::Api { status: 409, .. }) if if_not_exists => {
            client.get_value(&["api", "topics", name], &[])?
        }
        Err(error) => return Err(error),
    };
    if output.json {
        return output.document(&created);
    }
    let detail: TopicDetail = decode_value(created)?;
    output.line(&format!(
        "topic {} has {} partitions",
        detail.name,
        detail.partitions.len()
    ))
}

fn alter(
    client: &ApiClient,
    output: &mut Output,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
    replace: bool,
) -> CliResult<()> {
    if set.is_empty() && delete.is_empty() && !replace {
        return Err(CliError::Usage(
            "nothing to change: give --set KEY=VALUE, --delete KEY or --replace".into(),
        ));
    }
    let mut configs: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (key, value) in set {
        configs.insert(key.clone(), Some(value.clone()));
    }
    for key in delete {
        if configs.contains_key(key) {
            return Err(CliError::Usage(format!("'{key}' is both set and deleted")));
        }
        configs.insert(key.clone(), None);
    }
    let request = AlterTopicConfigsRequest { configs, replace };
    let after = client.put(&["api", "topics", name, "configs"], &request)?;
    if output.json {
        return output.document(&after);
    }
    let entries: Vec<TopicConfigEntry> = decode_value(after)?;
    let overrides: Vec<TopicConfigEntry> = entries
        .into_iter()
        .filter(|e| e.source == "topic_override")
        .collect();
    if overrides.is_empty() {
        return output.line(&format!("topic {name}: no overrides"));
    }
    output.line(&format!("topic {name}: overrides now"))?;
    config_table(output, &overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_splits_at_the_first_equals() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_key_value("a="), Ok(("a".to_string(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }
}
