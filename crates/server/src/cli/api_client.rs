//! A blocking HTTP client of the API (ureq): basic authentication, JSON in and out, and the
//! API's `{"error", "reason"}` answers turned into [`CliError::Api`].

use std::time::Duration;

use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::connection::Connection;
use super::{CliError, CliResult};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for the slowest call (moving 100,000 queue messages).
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ApiClient {
    agent: ureq::Agent,
    base: url::Url,
    authorization: String,
}

impl ApiClient {
    pub fn new(connection: Connection) -> ApiClient {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .timeout_write(WRITE_TIMEOUT)
            .user_agent(concat!("sluice-cli/", env!("CARGO_PKG_VERSION")))
            .build();
        let credentials = format!("{}:{}", connection.user, connection.password);
        ApiClient {
            agent,
            base: connection.url,
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
        }
    }

    /// The URL of `segments` under the base (each segment percent-encoded, so queue names
    /// with `/` or spaces stay one segment), with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        url
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> CliResult<T> {
        let value = self.call("GET", segments, query, None)?;
        decode(value)
    }

    /// The raw JSON of a GET, for `--json` output that keeps every field the server sent.
    pub fn get_value(&self, segments: &[&str], query: &[(&str, String)]) -> CliResult<Value> {
        self.call("GET", segments, query, None)
    }

    pub fn post<B: Serialize>(&self, segments: &[&str], body: &B) -> CliResult<Value> {
        let body = serde_json::to_vec(body)
            .map_err(|error| CliError::Usage(format!("encoding the request: {error}")))?;
        self.call("POST", segments, &[], Some(&body))
    }

    /// POST with query parameters (an AMQP route's `vhost`).
    pub fn post_with_query<B: Serialize>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        body: &B,
    ) -> CliResult<Value> {
        let body = serde_json::to_vec(body)
            .map_err(|error| CliError::Usage(format!("encoding the request: {error}")))?;
        self.call("POST", segments, query, Some(&body))
    }

    /// POST without a body (actions such as purge), with query parameters.
    pub fn post_empty_with_query(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> CliResult<Value> {
        self.call("POST", segments, query, None)
    }

    /// POST of a body already encoded as JSON.
    pub fn post_encoded(&self, segments: &[&str], body: &[u8]) -> CliResult<Value> {
        self.call("POST", segments, &[], Some(body))
    }

    pub fn put<B: Serialize>(&self, segments: &[&str], body: &B) -> CliResult<Value> {
        let body = serde_json::to_vec(body)
            .map_err(|error| CliError::Usage(format!("encoding the request: {error}")))?;
        self.call("PUT", segments, &[], Some(&body))
    }

    pub fn delete(&self, segments: &[&str]) -> CliResult<()> {
        self.call("DELETE", segments, &[], None).map(|_| ())
    }

    /// One request; the answer's JSON (null for an empty body, as 204).
    fn call(
        &self,
        method: &str,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> CliResult<Value> {
        let url = self.url(segments, query);
        tracing::debug!(%method, %url, "HTTP API request");
        let request = self
            .agent
            .request_url(method, &url)
            .set("Authorization", &self.authorization)
            .set("Accept", "application/json");
        let sent = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_bytes(body),
            None => request.call(),
        };
        match sent {
            Ok(response) => read_json(response, &url),
            Err(ureq::Error::Status(status, response)) => Err(api_error(status, response)),
            Err(ureq::Error::Transport(transport)) => Err(CliError::Connection {
                url: self.base.to_string(),
                detail: transport_detail(&transport),
            }),
        }
    }
}

fn decode<T: DeserializeOwned>(value: Value) -> CliResult<T> {
    serde_json::from_value(value).map_err(|error| CliError::Protocol(error.to_string()))
}

pub fn decode_value<T: DeserializeOwned>(value: Value) -> CliResult<T> {
    decode(value)
}

fn read_json(response: ureq::Response, url: &url::Url) -> CliResult<Value> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut response.into_reader(), &mut text).map_err(|error| {
        CliError::Connection {
            url: url.to_string(),
            detail: format!("reading the answer: {error}"),
        }
    })?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .map_err(|error| CliError::Protocol(format!("{error} in {text:.200}")))
}

/// The API's reason when the body is its error JSON, else the status line and body text.
fn api_error(status: u16, response: ureq::Response) -> CliError {
    let status_text = response.status_text().to_string();
    let text = response.into_string().unwrap_or_default();
    match serde_json::from_str::<sluice_http::model::ErrorBody>(&text) {
        Ok(body) => CliError::Api {
            status,
            kind: body.error,
            reason: body.reason,
        },
        Err(_) => CliError::Api {
            status,
            kind: status_text,
            reason: if text.trim().is_empty() {
                format!("the server answered HTTP {status}")
            } else {
                text.chars().take(500).collect()
            },
        },
    }
}

fn transport_detail(transport: &ureq::Transport) -> String {
    let hint = match transport.kind() {
        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
            " (is `sluice serve` running, with its HTTP API on this address? see --url)"
        }
        _ => "",
    };
    // The transport's own text repeats the URL; the cause is what helps.
    let cause = match std::error::Error::source(transport) {
        Some(source) => source.to_string(),
        None => transport.message().unwrap_or_default().to_string(),
    };
    format!("{}: {cause}{hint}", transport.kind())
}
