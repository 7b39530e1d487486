//! `sluice vhost list|add|delete`: AMQP virtual hosts, as `rabbitmqctl list_vhosts|add_vhost|
//! delete_vhost`, through the HTTP API.

use clap::{Args, Subcommand};
use sluice_http::model::VhostInfo;

use super::api_client::{decode_value, ApiClient};
use super::output::{table, Output};
use super::{CliResult, ClientOptions};

#[derive(Debug, Args)]
pub struct VhostArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    #[command(subcommand)]
    pub command: VhostCommand,
}

#[derive(Debug, Subcommand)]
pub enum VhostCommand {
    /// Virtual hosts with their queues, connections and messages.
    List,
    /// Create a virtual host (nothing happens if it exists); grant permissions on it with
    /// `sluice user permissions NAME --vhost VHOST`.
    Add { name: String },
    /// Delete a virtual host with its exchanges, queues and messages; its connections close.
    Delete { name: String },
}

pub fn run(client: &ApiClient, output: &mut Output, args: &VhostArgs) -> CliResult<()> {
    match &args.command {
        VhostCommand::List => {
            let value = client.get_value(&["api", "vhosts"], &[])?;
            if output.json {
                return output.document(&value);
            }
            let vhosts: Vec<VhostInfo> = decode_value(value)?;
            let mut rows = table(
                &["name", "queues", "exchanges", "connections", "messages"],
                &[1, 2, 3, 4],
            );
            for vhost in vhosts {
                rows.add_row(vec![
                    vhost.name,
                    vhost.queues.to_string(),
                    vhost.exchanges.to_string(),
                    vhost.connections.to_string(),
                    vhost.messages.to_string(),
                ]);
            }
            output.table(&rows)
        }
        VhostCommand::Add { name } => {
            client.put(&["api", "vhosts", name], &serde_json::json!({}))?;
            output.line(&format!("vhost '{name}' exists"))
        }
        VhostCommand::Delete { name } => {
            client.delete(&["api", "vhosts", name])?;
            output.line(&format!("deleted vhost '{name}'"))
        }
    }
}
