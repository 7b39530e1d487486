//! `sluice user add|delete|passwd|list|permissions`: the one user store of every protocol.
//! With `--data-dir` it edits a stopped node's `users.json` directly (how the first
//! administrator is made); without, it goes through a running node's HTTP API
//! (`/api/users`, `/api/permissions`), as an administrator.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;
use sluice_auth::{UserStore, VhostPermissions};

use super::api_client::ApiClient;
use super::{connection, CliError, CliResult, ClientOptions, EXIT_ERROR, EXIT_OK};

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,

    /// A stopped node's data directory: edit its users.json directly, without the HTTP API
    #[arg(long, global = true, env = "SLUICE_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,

    /// The HTTP API's base URL, when --data-dir is not given [default: http://127.0.0.1:8080]
    #[arg(
        long,
        global = true,
        env = "SLUICE_URL",
        value_name = "http://HOST:PORT"
    )]
    pub url: Option<String>,

    /// The administrator the HTTP API is called as [default: guest]
    #[arg(long, global = true, env = "SLUICE_USER", value_name = "NAME")]
    pub admin_user: Option<String>,

    /// Password of --admin-user [default: guest]
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADMIN_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub admin_password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user, with SCRAM-SHA-256 and SCRAM-SHA-512 keys for the password.
    Add {
        name: String,
        #[arg(long)]
        password: String,
        /// Comma-separated tags: administrator (super user for Kafka, may change things
        /// through the HTTP API), management, monitoring
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Delete a user.
    Delete { name: String },
    /// Change a user's password.
    Passwd {
        name: String,
        #[arg(long)]
        password: String,
    },
    /// List users and their tags.
    List,
    /// Set a user's AMQP permissions on a virtual host (RabbitMQ's regular expressions).
    Permissions {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long)]
        configure: String,
        #[arg(long)]
        write: String,
        #[arg(long)]
        read: String,
    },
}

pub fn run(args: UserArgs) -> ExitCode {
    let outcome = match &args.data_dir {
        Some(dir) => offline(dir, &args.command),
        None => online(&args),
    };
    match outcome {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn tags(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn offline(dir: &std::path::Path, command: &UserCommand) -> CliResult<()> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let store = UserStore::open(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    // The store's changes are async (in a cluster they wait for the metadata group); offline
    // they only write the file.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| CliError::Usage(format!("starting a runtime: {e}")))?;
    let fail = |e: sluice_auth::AuthError| CliError::Usage(e.to_string());
    runtime.block_on(async {
        match command {
            UserCommand::Add {
                name,
                password,
                tags: list,
            } => store.add(name, password, tags(list)).await.map_err(fail)?,
            UserCommand::Delete { name } => store.delete(name).await.map_err(fail)?,
            UserCommand::Passwd { name, password } => {
                store.set_password(name, password).await.map_err(fail)?
            }
            UserCommand::List => {
                for user in store.list() {
                    println!("{}\t[{}]", user.name, user.tags.join(","));
                }
            }
            UserCommand::Permissions {
                name,
                vhost,
                configure,
                write,
                read,
            } => {
                let permissions = VhostPermissions::new(configure, write, read)
                    .map_err(|e| CliError::Usage(format!("invalid pattern: {e}")))?;
                store
                    .set_permissions(name, vhost, permissions)
                    .await
                    .map_err(fail)?
            }
        }
        Ok(())
    })
}

fn online(args: &UserArgs) -> CliResult<()> {
    let options = ClientOptions {
        url: args.url.clone(),
        user: args.admin_user.clone(),
        password: args.admin_password.clone(),
        cli_config: None,
        json: false,
    };
    let client = ApiClient::new(connection::resolve(&options)?);
    match &args.command {
        UserCommand::Add {
            name,
            password,
            tags,
        } => {
            if client.get_value(&["api", "users", name], &[]).is_ok() {
                return Err(CliError::Usage(format!("user '{name}' already exists")));
            }
            client.put(
                &["api", "users", name],
                &json!({"password": password, "tags": tags}),
            )?;
        }
        UserCommand::Delete { name } => client.delete(&["api", "users", name])?,
        UserCommand::Passwd { name, password } => {
            client.put(&["api", "users", name], &json!({"password": password}))?;
        }
        UserCommand::List => {
            let users = client.get_value(&["api", "users"], &[])?;
            for user in users.as_array().into_iter().flatten() {
                println!(
                    "{}\t[{}]",
                    user["name"].as_str().unwrap_or(""),
                    user["tags"].as_str().unwrap_or("")
                );
            }
        }
        UserCommand::Permissions {
            name,
            vhost,
            configure,
            write,
            read,
        } => {
            client.put(
                &["api", "permissions", vhost, name],
                &json!({"configure": configure, "write": write, "read": read}),
            )?;
        }
    }
    Ok(())
}
