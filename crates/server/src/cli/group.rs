//! `sluice group list|describe|reset-offsets|delete`.

use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;
use sluice_http::model::{
    GroupDetail, GroupSummary, ResetOffsetsRequest, ResetOffsetsResponse, ResetStrategy,
};

use super::api_client::{decode_value, ApiClient};
use super::output::{or_dash, table, Output};
use super::time_spec::parse_time_arg;
use super::{CliError, CliResult, ClientOptions};

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Consumer groups with their state and member count.
    List,
    /// A group's members and, per partition, committed offset, log end and lag.
    Describe { group: String },
    /// Move a group's committed offsets (refused while the group has members, as Kafka's tool).
    #[command(group(ArgGroup::new("target").required(true).args(
        ["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])))]
    ResetOffsets {
        group: String,
        /// Only this topic [default: every topic the group has committed offsets for]
        #[arg(long, short = 't')]
        topic: Option<String>,
        /// Only these partitions of --topic (repeatable, or comma-separated)
        #[arg(long, short = 'p', value_delimiter = ',', requires = "topic")]
        partition: Vec<i32>,
        /// To each partition's log start.
        #[arg(long)]
        to_earliest: bool,
        /// To each partition's end (high watermark).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped to the partition's range).
        #[arg(long, value_name = "OFFSET")]
        to_offset: Option<i64>,
        /// To the first message at or after this time: ms since the epoch, RFC 3339, or a time
        /// ago such as -1h
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg, allow_hyphen_values = true)]
        to_datetime: Option<i64>,
        /// By this many messages from the committed offset (negative goes back)
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a group and its committed offsets (refused while it has members).
    Delete { group: String },
}

pub fn run(client: &ApiClient, output: &mut Output, args: &GroupArgs) -> CliResult<()> {
    match &args.command {
        GroupCommand::List => list(client, output),
        GroupCommand::Describe { group } => describe(client, output, group),
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            shift_by,
            dry_run,
        } => {
            let mut request = ResetOffsetsRequest {
                topic: topic.clone(),
                partitions: (!partition.is_empty()).then(|| partition.clone()),
                strategy: ResetStrategy::Earliest,
                timestamp_ms: None,
                offset: None,
                shift: None,
                dry_run: *dry_run,
            };
            if *to_earliest {
                request.strategy = ResetStrategy::Earliest;
            } else if *to_latest {
                request.strategy = ResetStrategy::Latest;
            } else if let Some(offset) = to_offset {
                request.strategy = ResetStrategy::Offset;
                request.offset = Some(*offset);
            } else if let Some(timestamp) = to_datetime {
                request.strategy = ResetStrategy::Timestamp;
                request.timestamp_ms = Some(*timestamp);
            } else if let Some(shift) = shift_by {
                request.strategy = ResetStrategy::Shift;
                request.shift = Some(*shift);
            } else {
                return Err(CliError::Usage(
                    "give a --to-... or --shift-by target".into(),
                ));
            }
            reset_offsets(client, output, group, &request)
        }
        GroupCommand::Delete { group } => {
            client.delete(&["api", "groups", group])?;
            if output.json {
                output.document(&json!({"deleted": group}))
            } else {
                output.line(&format!("deleted group {group}"))
            }
        }
    }
}

fn list(client: &ApiClient, output: &mut Output) -> CliResult<()> {
    let value = client.get_value(&["api", "groups"], &[])?;
    if output.json {
        return output.document(&value);
    }
    let groups: Vec<GroupSummary> = decode_value(value)?;
    let mut rows = table(&["group", "state", "protocol", "members"], &[3]);
    for group in groups {
        rows.add_row(vec![
            group.group_id,
            group.state,
            if group.protocol.is_empty() {
                group.protocol_type
            } else {
                format!("{}/{}", group.protocol_type, group.protocol)
            },
            group.members.to_string(),
        ]);
    }
    output.table(&rows)
}

fn describe(client: &ApiClient, output: &mut Output, group: &str) -> CliResult<()> {
    let value = client.get_value(&["api", "groups", group], &[])?;
    if output.json {
        return output.document(&value);
    }
    let detail: GroupDetail = decode_value(value)?;
    output.line(&format!(
        "group {}  state {}  protocol {}  members {}  total lag {}",
        detail.group_id,
        detail.state,
        if detail.protocol.is_empty() {
            "-"
        } else {
            &detail.protocol
        },
        detail.members.len(),
        detail.total_lag
    ))?;
    output.line("")?;
    let mut offsets = table(
        &[
            "topic",
            "partition",
            "committed",
            "log end",
            "lag",
            "member",
        ],
        &[1, 2, 3, 4],
    );
    for offset in &detail.offsets {
        let member = offset.member_id.as_ref().map(|id| {
            detail
                .members
                .iter()
                .find(|m| &m.member_id == id)
                .map_or_else(
                    || id.clone(),
                    |m| format!("{} {}", m.client_id, m.client_host),
                )
        });
        offsets.add_row(vec![
            offset.topic.clone(),
            offset.partition.to_string(),
            or_dash(offset.committed_offset),
            offset.high_watermark.to_string(),
            or_dash(offset.lag),
            or_dash(member),
        ]);
    }
    output.table(&offsets)?;
    if detail.members.is_empty() {
        return Ok(());
    }
    output.line("")?;
    let mut members = table(&["member", "client", "host", "assignments"], &[]);
    for member in &detail.members {
        members.add_row(vec![
            member.member_id.clone(),
            member.client_id.clone(),
            member.client_host.clone(),
            member
                .assignments
                .iter()
                .map(|a| format!("{}:{}", a.topic, a.partition))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    output.table(&members)
}

fn reset_offsets(
    client: &ApiClient,
    output: &mut Output,
    group: &str,
    request: &ResetOffsetsRequest,
) -> CliResult<()> {
    let value = client.post(&["api", "groups", group, "reset-offsets"], request)?;
    if output.json {
        return output.document(&value);
    }
    let response: ResetOffsetsResponse = decode_value(value)?;
    let mut rows = table(&["topic", "partition", "previous", "new"], &[1, 2, 3]);
    for plan in &response.partitions {
        rows.add_row(vec![
            plan.topic.clone(),
            plan.partition.to_string(),
            or_dash(plan.previous_offset),
            plan.new_offset.to_string(),
        ]);
    }
    output.table(&rows)?;
    if response.dry_run {
        output.line("dry run: nothing changed")
    } else {
        output.line(&format!(
            "group {group}: {} partition offsets reset",
            response.partitions.len()
        ))
    }
}
