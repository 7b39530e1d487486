//! Where the client connects and as whom: flags and environment (clap), over the client config
//! file, over the defaults (http://127.0.0.1:8080 as guest/guest, like rabbitmqadmin).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{CliError, CliResult, ClientOptions};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_USER: &str = "guest";
pub const DEFAULT_PASSWORD: &str = "guest";

/// The client config file: any of these keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfigFile {
    url: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub url: url::Url,
    pub user: String,
    pub password: String,
}

pub fn resolve(options: &ClientOptions) -> CliResult<Connection> {
    let file = match &options.cli_config {
        Some(path) => load(path)?,
        None => match default_config_path() {
            Some(path) if path.is_file() => load(&path)?,
            _ => ClientConfigFile::default(),
        },
    };
    let url = options
        .url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let user = options.user.clone().or(file.user);
    let password = options.password.clone().or(file.password);
    // One without the other is almost certainly a mistake: do not quietly mix in guest's.
    let (user, password) = match (user, password) {
        (Some(user), Some(password)) => (user, password),
        (None, None) => (DEFAULT_USER.to_string(), DEFAULT_PASSWORD.to_string()),
        (Some(_), None) => {
            return Err(CliError::Usage(
                "a user was given without a password: give --password (or SLUICE_PASSWORD)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "a password was given without a user: give --user (or SLUICE_USER)".into(),
            ))
        }
    };
    Ok(Connection {
        url: parse_url(&url)?,
        user,
        password,
    })
}

fn parse_url(text: &str) -> CliResult<url::Url> {
    let url = url::Url::parse(text)
        .map_err(|error| CliError::Usage(format!("invalid --url '{text}': {error}")))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(CliError::Usage(format!(
                "invalid --url '{text}': https is not supported by this client (the API listens on plain HTTP)"
            )))
        }
        other => {
            return Err(CliError::Usage(format!(
                "invalid --url '{text}': scheme '{other}', expected http://HOST:PORT"
            )))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CliError::Usage(format!("invalid --url '{text}': no host")));
    }
    Ok(url)
}

fn default_config_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("sluice").join("cli.toml"))
}

fn load(path: &Path) -> CliResult<ClientConfigFile> {
    let text = std::fs::read_to_string(path)
        .map_err(CliError::io(format!("reading {}", path.display())))?;
    toml::from_str(&text).map_err(|error| {
        CliError::Usage(format!("invalid config file {}: {error}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ClientOptions {
        ClientOptions {
            url: None,
            user: None,
            password: None,
            cli_config: Some(PathBuf::from("/dev/null")),
            json: false,
        }
    }

    #[test]
    fn no_credentials_mean_guest_on_loopback() {
        let connection = resolve(&options()).unwrap();
        assert_eq!(connection.url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(
            (connection.user.as_str(), connection.password.as_str()),
            ("guest", "guest")
        );
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli.toml");
        std::fs::write(
            &path,
            "url = \"http://10.0.0.1:9000\"\nuser = \"ops\"\npassword = \"file-pw\"\n",
        )
        .unwrap();
        let mut options = options();
        options.cli_config = Some(path);
        let from_file = resolve(&options).unwrap();
        assert_eq!(from_file.url.as_str(), "http://10.0.0.1:9000/");
        assert_eq!(from_file.user, "ops");
        options.url = Some("http://127.0.0.1:1".into());
        options.password = Some("flag-pw".into());
        let mixed = resolve(&options).unwrap();
        assert_eq!(mixed.url.as_str(), "http://127.0.0.1:1/");
        assert_eq!(
            (mixed.user.as_str(), mixed.password.as_str()),
            ("ops", "flag-pw")
        );
    }

    #[test]
    fn a_user_without_a_password_is_refused() {
        let mut options = options();
        options.user = Some("ops".into());
        assert!(matches!(resolve(&options), Err(CliError::Usage(_))));
    }

    #[test]
    fn only_plain_http_urls_with_a_host_are_accepted() {
        for bad in ["https://h:1", "ftp://h", "127.0.0.1:8080", "http://"] {
            assert!(matches!(parse_url(bad), Err(CliError::Usage(_))), "{bad}");
        }
        assert!(parse_url("http://broker.local:8080/prefix").is_ok());
    }

    #[test]
    fn unknown_keys_in_the_config_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli.toml");
        std::fs::write(&path, "usr = \"typo\"\n").unwrap();
        let mut options = options();
        options.cli_config = Some(path);
        assert!(matches!(resolve(&options), Err(CliError::Usage(_))));
    }
}
