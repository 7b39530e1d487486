//! `sluice exchange list` and `sluice binding list`.

use clap::{Args, Subcommand};
use sluice_http::model::{BindingInfo, ExchangeInfo};

use super::api_client::{decode_value, ApiClient};
use super::output::{table, Output};
use super::{CliResult, ClientOptions};

#[derive(Debug, Args)]
pub struct ExchangeArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    #[command(subcommand)]
    pub command: ExchangeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ExchangeCommand {
    /// Exchanges with their type and flags.
    List,
}

#[derive(Debug, Args)]
pub struct BindingArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    #[command(subcommand)]
    pub command: BindingCommand,
}

#[derive(Debug, Subcommand)]
pub enum BindingCommand {
    /// Bindings from exchanges to queues and exchanges.
    List,
}

pub fn run_exchange(client: &ApiClient, output: &mut Output, args: &ExchangeArgs) -> CliResult<()> {
    match args.command {
        ExchangeCommand::List => {
            let value = client.get_value(&["api", "exchanges"], &[])?;
            if output.json {
                return output.document(&value);
            }
            let exchanges: Vec<ExchangeInfo> = decode_value(value)?;
            let mut rows = table(&["name", "type", "durable", "auto delete", "internal"], &[]);
            for exchange in exchanges {
                rows.add_row(vec![
                    if exchange.name.is_empty() {
                        "(default)".to_string()
                    } else {
                        exchange.name
                    },
                    exchange.kind,
                    exchange.durable.to_string(),
                    exchange.auto_delete.to_string(),
                    exchange.internal.to_string(),
                ]);
            }
            output.table(&rows)
        }
    }
}

pub fn run_binding(client: &ApiClient, output: &mut Output, args: &BindingArgs) -> CliResult<()> {
    match args.command {
        BindingCommand::List => {
            let value = client.get_value(&["api", "bindings"], &[])?;
            if output.json {
                return output.document(&value);
            }
            let bindings: Vec<BindingInfo> = decode_value(value)?;
            let mut rows = table(
                &[
                    "source",
                    "destination",
                    "destination type",
                    "routing key",
                    "arguments",
                ],
                &[],
            );
            for binding in bindings {
                let arguments = match &binding.arguments {
                    serde_json::Value::Object(map) if map.is_empty() => String::new(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                };
                rows.add_row(vec![
                    if binding.source.is_empty() {
                        "(default)".to_string()
                    } else {
                        binding.source
                    },
                    binding.destination,
                    binding.destination_type,
                    binding.routing_key,
                    arguments,
                ]);
            }
            output.table(&rows)
        }
    }
}
