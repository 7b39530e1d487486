//! The `sluice` client subcommands: what people reach for kcat and rabbitmqadmin for, over the
//! broker's HTTP API (docs/http-api.md) with a small blocking client, so no async runtime is
//! started for them.
//!
//! Exit codes (docs/cli.md): 0 success; 1 the server answered an error, or the input was
//! refused before sending; 2 a usage error found by clap; 3 the server could not be reached.

mod api_client;
mod cluster;
mod connection;
mod consume;
mod exchange;
mod group;
mod message_view;
mod output;
mod produce;
mod publish;
mod query;
mod queue;
mod time_spec;
mod topic;
pub mod user;
mod vhost;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use api_client::ApiClient;
use output::Output;

/// Exit code of a success.
pub const EXIT_OK: u8 = 0;
/// Exit code when the server answered an error, or the CLI refused the input before sending.
pub const EXIT_ERROR: u8 = 1;
/// Exit code when the server could not be reached (refused, timed out, cut off).
pub const EXIT_CONNECTION: u8 = 3;

const HELP_HEADING: &str = "Connection and output";

/// The address, credentials and output style of every client subcommand. Each may come from a
/// flag, then the environment, then the client config file; with none, guest/guest on
/// http://127.0.0.1:8080, as rabbitmqadmin.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// The HTTP API's base URL [default: http://127.0.0.1:8080]
    #[arg(
        long,
        global = true, help_heading = HELP_HEADING,
        env = "SLUICE_URL",
        value_name = "http://HOST:PORT"
    )]
    pub url: Option<String>,

    /// User for HTTP basic authentication [default: guest]
    #[arg(long, global = true, help_heading = HELP_HEADING, env = "SLUICE_USER", value_name = "NAME")]
    pub user: Option<String>,

    /// Password of --user [default: guest]
    #[arg(
        long,
        global = true, help_heading = HELP_HEADING,
        env = "SLUICE_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// Client config file (TOML with `url`, `user`, `password`)
    /// [default: $XDG_CONFIG_HOME/sluice/cli.toml or ~/.config/sluice/cli.toml, if present]
    #[arg(
        long = "cli-config",
        global = true, help_heading = HELP_HEADING,
        env = "SLUICE_CLI_CONFIG",
        value_name = "FILE"
    )]
    pub cli_config: Option<PathBuf>,

    /// Print JSON (one document, or one object per line for messages) instead of tables
    #[arg(long, global = true, help_heading = HELP_HEADING)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Kafka topics: list, describe, create, delete, alter configs.
    Topic(topic::TopicArgs),
    /// Kafka consumer groups: list, describe (lag), reset offsets, delete.
    Group(group::GroupArgs),
    /// Produce messages to a topic from stdin or a file, one per line.
    Produce(produce::ProduceArgs),
    /// Read a topic's messages from an offset, a time or the end; optionally follow.
    Consume(consume::ConsumeArgs),
    /// Find messages of a topic by key, message id, time or offset.
    Query(query::QueryArgs),
    /// AMQP queues: list, purge, get (peek), move (e.g. out of a dead-letter queue).
    Queue(queue::QueueArgs),
    /// Publish one AMQP message to an exchange.
    Publish(publish::PublishArgs),
    /// AMQP exchanges.
    Exchange(exchange::ExchangeArgs),
    /// AMQP bindings.
    Binding(exchange::BindingArgs),
    /// Cluster nodes: list, remove.
    Cluster(cluster::ClusterArgs),
    /// AMQP virtual hosts: list, add, delete.
    Vhost(vhost::VhostArgs),
}

/// Why a client subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server answered with an error status.
    #[error("{reason} (HTTP {status} {kind})")]
    Api {
        status: u16,
        kind: String,
        reason: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach {url}: {detail}")]
    Connection { url: String, detail: String },
    /// Input refused before anything was sent (a bad flag value, an unreadable file).
    #[error("{0}")]
    Usage(String),
    /// The server answered something that is not the API's JSON.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Connection { .. } => EXIT_CONNECTION,
            _ => EXIT_ERROR,
        }
    }

    /// Writing to a closed pipe (`sluice consume ... | head`) ends the command quietly.
    fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Io { context, source }
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// Runs a client subcommand; the exit code says how it went.
pub fn run(command: ClientCommand) -> ExitCode {
    let outcome = dispatch(command);
    match outcome {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(error) if error.is_broken_pipe() => ExitCode::from(EXIT_OK),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

impl ClientCommand {
    fn options(&self) -> &ClientOptions {
        match self {
            ClientCommand::Topic(args) => &args.options,
            ClientCommand::Group(args) => &args.options,
            ClientCommand::Produce(args) => &args.options,
            ClientCommand::Consume(args) => &args.options,
            ClientCommand::Query(args) => &args.options,
            ClientCommand::Queue(args) => &args.options,
            ClientCommand::Publish(args) => &args.options,
            ClientCommand::Exchange(args) => &args.options,
            ClientCommand::Binding(args) => &args.options,
            ClientCommand::Cluster(args) => &args.options,
            ClientCommand::Vhost(args) => &args.options,
        }
    }
}

fn dispatch(command: ClientCommand) -> CliResult<()> {
    let options = command.options();
    let client = ApiClient::new(connection::resolve(options)?);
    let mut output = Output::new(options.json);
    match &command {
        ClientCommand::Topic(args) => topic::run(&client, &mut output, args),
        ClientCommand::Group(args) => group::run(&client, &mut output, args),
        ClientCommand::Produce(args) => produce::run(&client, &mut output, args),
        ClientCommand::Consume(args) => consume::run(&client, &mut output, args),
        ClientCommand::Query(args) => query::run(&client, &mut output, args),
        ClientCommand::Queue(args) => queue::run(&client, &mut output, args),
        ClientCommand::Publish(args) => publish::run(&client, &mut output, args),
        ClientCommand::Exchange(args) => exchange::run_exchange(&client, &mut output, args),
        ClientCommand::Binding(args) => exchange::run_binding(&client, &mut output, args),
        ClientCommand::Cluster(args) => cluster::run(&client, &mut output, args),
        ClientCommand::Vhost(args) => vhost::run(&client, &mut output, args),
    }?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::ClientCommand;
    use crate::config::{Cli, Command};

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn client_command(args: &[&str]) -> ClientCommand {
        match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Command::Client(command)) => command,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn connection_flags_are_accepted_after_nested_subcommands() {
        let command = client_command(&[
            "sluice",
            "topic",
            "list",
            "--url",
            "http://127.0.0.1:1",
            "--json",
        ]);
        let options = command.options();
        assert_eq!(options.url.as_deref(), Some("http://127.0.0.1:1"));
        assert!(options.json);
        assert!(matches!(command, ClientCommand::Topic(_)));
    }

    #[test]
    fn the_fixed_query_command_line_parses() {
        let command = client_command(&[
            "sluice",
            "query",
            "--url",
            "http://127.0.0.1:8080",
            "--topic",
            "T",
            "--key",
            "K",
            "--json",
        ]);
        match command {
            ClientCommand::Query(args) => {
                assert_eq!(args.topic, "T");
                assert_eq!(args.key.as_deref(), Some("K"));
                assert!(args.options.json);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
