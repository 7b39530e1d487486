//! `sluice cluster nodes` and `sluice cluster remove-node`.

use clap::{Args, Subcommand};
use serde_json::json;
use sluice_http::model::ClusterInfo;

use super::api_client::{decode_value, ApiClient};
use super::output::{or_dash, table, Output};
use super::{CliResult, ClientOptions};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The cluster's nodes with their addresses and the metadata leader.
    Nodes,
    /// Remove a node from the metadata group and the broker list; refused while partitions
    /// have replicas on it (reassign them first). Stop the node's process afterwards.
    RemoveNode {
        /// The node's --node-id.
        #[arg(long)]
        node_id: u64,
    },
}

pub fn run(client: &ApiClient, output: &mut Output, args: &ClusterArgs) -> CliResult<()> {
    match &args.command {
        ClusterCommand::Nodes => {
            let value = client.get_value(&["api", "cluster"], &[])?;
            if output.json {
                return output.document(&value);
            }
            let cluster: ClusterInfo = decode_value(value)?;
            let mut rows = table(
                &[
                    "id",
                    "cluster address",
                    "kafka address",
                    "connected",
                    "role",
                ],
                &[0],
            );
            for node in cluster.nodes {
                let mut role = Vec::new();
                if node.is_metadata_leader {
                    role.push("metadata leader");
                }
                if node.is_self {
                    role.push("answering");
                }
                rows.add_row(vec![
                    node.node_id.to_string(),
                    or_dash(node.cluster_address),
                    node.kafka_address,
                    if node.connected { "yes" } else { "no" }.to_string(),
                    role.join(", "),
                ]);
            }
            output.table(&rows)
        }
        ClusterCommand::RemoveNode { node_id } => {
            client.delete(&["api", "cluster", "nodes", &node_id.to_string()])?;
            if output.json {
                output.document(&json!({"removed": node_id}))
            } else {
                output.line(&format!("removed node {node_id}"))
            }
        }
    }
}
