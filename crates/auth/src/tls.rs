//! TLS for the listeners (rustls): certificate and key from PEM files, optionally client
//! certificates verified against a CA file. The files are looked at again (their modification
//! times) at every new connection, and a changed set is loaded for the connections after it:
//! a renewed certificate needs no restart. A set that fails to load is logged and the previous
//! one stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a loaded configuration is used before the files' times are looked at again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where a listener's certificate material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// CA certificates client certificates are verified against; None: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate (Kafka's ssl.client.auth=required, RabbitMQ's
    /// fail_if_no_peer_cert); otherwise a certificate is verified if sent.
    pub client_certificate_required: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// A listener's TLS acceptor, reloaded when its files change.
pub struct ReloadingTls {
    files: TlsFiles,
    state: Mutex<Loaded>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish()
    }
}

struct Loaded {
    acceptor: TlsAcceptor,
    /// With a CA: this side's certificate presented as a client, servers verified against
    /// the CA (node-to-node mutual TLS).
    connector: Option<TlsConnector>,
    /// Modification times of the files loaded.
    stamps: Vec<Option<SystemTime>>,
    /// Those of files that did not load (reported once; tried again every interval, since a
    /// certificate and its key are rarely replaced at the same instant).
    failed_stamps: Option<Vec<Option<SystemTime>>>,
    checked: Instant,
}

impl ReloadingTls {
    /// Loads the files now: a listener with bad files does not start.
    pub fn load(files: TlsFiles) -> Result<Arc<ReloadingTls>, TlsError> {
        let config = server_config(&files)?;
        let state = Loaded {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            connector: client_config(&files)?.map(|c| TlsConnector::from(Arc::new(c))),
            stamps: stamps(&files),
            failed_stamps: None,
            checked: Instant::now(),
        };
        Ok(Arc::new(ReloadingTls {
            files,
            state: Mutex::new(state),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The acceptor for a new connection, reloading the files first if they changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.reloaded().acceptor.clone()
    }

    /// The connector for a new outgoing connection (None without a CA to verify servers
    /// against), reloading the files first if they changed.
    pub fn connector(&self) -> Option<TlsConnector> {
        self.reloaded().connector.clone()
    }

    fn reloaded(&self) -> parking_lot::MutexGuard<'_, Loaded> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RECHECK_INTERVAL {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                match server_config(&self.files)
                    .and_then(|server| Ok((server, client_config(&self.files)?)))
                {
                    Ok((server, client)) => {
                        tracing::info!(certificate = %self.files.certificate.display(), "TLS certificate reloaded");
                        state.acceptor = TlsAcceptor::from(Arc::new(server));
                        state.connector = client.map(|c| TlsConnector::from(Arc::new(c)));
                        state.stamps = now;
                        state.failed_stamps = None;
                    }
                    Err(error) => {
                        if state.failed_stamps.as_ref() != Some(&now) {
                            tracing::error!(%error, "TLS files changed but do not load; keeping the previous ones");
                            state.failed_stamps = Some(now);
                        }
                    }
                }
            }
        }
        state
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.certificate),
        Some(&files.private_key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
    .collect()
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| TlsError::Read(path.to_path_buf(), error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Read(path.to_path_buf(), error.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certificates)
}

fn read_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::Read(ca.to_path_buf(), error.to_string()))?;
    }
    Ok(roots)
}

/// With a CA: a client presenting this side's certificate and trusting only that CA.
fn client_config(files: &TlsFiles) -> Result<Option<ClientConfig>, TlsError> {
    let Some(ca) = &files.client_ca else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(&files.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&files.private_key)
        .map_err(|error| TlsError::Read(files.private_key.clone(), error.to_string()))?;
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(chain, key)
        .map(Some)
        .map_err(|error| TlsError::Config(error.to_string()))
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(&files.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&files.private_key)
        .map_err(|error| TlsError::Read(files.private_key.clone(), error.to_string()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider);
            let verifier = if files.client_certificate_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|error| TlsError::Config(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Config(error.to_string()))
}

/// A verified client certificate's subject, as Kafka names an SSL principal: the distinguished
/// name in RFC 2253 order (most specific first), e.g. `CN=client,OU=eng,O=Acme`.
pub fn subject_distinguished_name(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in parsed.subject().iter_rdn() {
        let attributes: Vec<String> = rdn
            .iter()
            .filter_map(|attribute| {
                let name = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                    .map(str::to_string)
                    .unwrap_or_else(|_| attribute.attr_type().to_id_string());
                let value = attribute.as_str().ok()?;
                Some(format!("{name}={}", escape_rfc2253(value)))
            })
            .collect();
        parts.push(attributes.join("+"));
    }
    parts.reverse();
    Some(parts.join(","))
}

/// A verified client certificate's common name (RabbitMQ's EXTERNAL with
/// `ssl_cert_login_from = common_name`).
pub fn subject_common_name(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let common_name = parsed.subject().iter_common_name().next()?;
    common_name.as_str().ok().map(str::to_string)
}

fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (index == 0 && (c == '#' || c == ' '))
            || (index + 1 == value.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
