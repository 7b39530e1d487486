//! Keeps the security stores (users, ACLs, quotas, vhost limits) the same on every node of a
//! cluster: each store commits its changes through the metadata group
//! (`ReplaceSecurityDocument`, a compare-and-set on the document's version), and every node
//! installs each committed version when its metadata state machine applies it. A node's own
//! uncommitted changes (made with `sluice user add --data-dir` while it was stopped, or before
//! it was part of a cluster) are proposed when it starts, and kept only if the cluster's
//! document has not changed since the version they were made on.

use std::sync::Arc;
use std::time::Duration;

use sluice_auth::{
    AclStore, CommitError, CommitFuture, DocumentKind, DocumentReplicator, QuotaStore,
    ReplicatedDocument, UserStore, VhostLimits,
};
use sluice_cluster::metadata::{MetadataCommand, MetadataRejection, MetadataResponse};
use sluice_cluster::node::ClusterNode;

/// How long to wait between attempts to publish local changes while the cluster has no
/// metadata leader.
const PUBLISH_RETRY: Duration = Duration::from_secs(1);
/// How long declared users wait for the cluster's users document to be installed, and how
/// often they look.
const DECLARE_SETTLE_MAX: Duration = Duration::from_secs(30);
const DECLARE_SETTLE_POLL: Duration = Duration::from_millis(50);

/// Every store the cluster keeps in step.
#[derive(Clone)]
pub struct SecurityStores {
    pub users: Arc<UserStore>,
    pub acls: Arc<AclStore>,
    pub quotas: Arc<QuotaStore>,
    pub vhost_limits: Arc<VhostLimits>,
}

impl SecurityStores {
    fn documents(&self) -> [&dyn ReplicatedDocument; 4] {
        [
            self.users.replicated(),
            self.acls.replicated(),
            self.quotas.replicated(),
            self.vhost_limits.replicated(),
        ]
    }
}

/// Commits documents through the metadata group (from any node: followers forward).
struct MetadataReplicator {
    node: Arc<ClusterNode>,
}

impl DocumentReplicator for MetadataReplicator {
    fn commit(&self, kind: DocumentKind, base_version: u64, document: String) -> CommitFuture<'_> {
        Box::pin(async move {
            let command = MetadataCommand::ReplaceSecurityDocument {
                kind: kind.name().to_string(),
                base_version,
                change_id: rand::random(),
                document,
            };
            match self.node.propose(command).await {
                Ok(MetadataResponse::SecurityDocumentVersion { version }) => Ok(version),
                Ok(MetadataResponse::Rejected(MetadataRejection::StaleSecurityDocument {
                    ..
                })) => Err(CommitError::Stale { kind, base_version }),
                Ok(other) => Err(CommitError::Unavailable(format!(
                    "unexpected answer from the metadata group: {other:?}"
                ))),
                Err(error) => Err(CommitError::Unavailable(error.to_string())),
            }
        })
    }
}

/// A user `--amqp-users` declares: (name, password, tags, loopback only).
pub type DeclaredUser = (String, String, Vec<String>, bool);

/// Routes the stores' changes through the metadata group and starts installing its versions.
/// The users declared on the command line are declared again through the cluster once this
/// node has caught up, so that they survive a users document the cluster changed while the
/// node was down (declaring one that is there unchanged changes nothing).
pub fn start(node: Arc<ClusterNode>, stores: SecurityStores, declared_users: Vec<DeclaredUser>) {
    let replicator: Arc<dyn DocumentReplicator> = Arc::new(MetadataReplicator {
        node: Arc::clone(&node),
    });
    for document in stores.documents() {
        document.replicate_through(Arc::clone(&replicator));
    }
    tokio::spawn(async move {
        // Until this node has applied what the cluster committed before it started, its view
        // of the documents may be older than its own files: installing that view would undo
        // them, and publishing against it would be refused.
        while let Err(error) = node.catch_up().await {
            tracing::warn!(%error, "security documents wait for the metadata group");
            tokio::time::sleep(PUBLISH_RETRY).await;
        }
        tokio::spawn(install_committed_versions(
            Arc::clone(&node),
            stores.clone(),
        ));
        for document in stores.documents() {
            let kind = document.kind();
            loop {
                let cluster_version = node.security().get(kind.name()).map_or(0, |d| d.version);
                match document.publish_local_changes(cluster_version).await {
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%kind, %error, "local security changes not published yet; retrying");
                        tokio::time::sleep(PUBLISH_RETRY).await;
                    }
                }
            }
        }
        // The users document must be the cluster's before a declared user is looked for in
        // it: a local copy the cluster refused still has the user, about to be replaced.
        let users_kind = stores.users.replicated().kind();
        let settled = tokio::time::Instant::now() + DECLARE_SETTLE_MAX;
        loop {
            let cluster_version = node
                .security()
                .get(users_kind.name())
                .map_or(0, |d| d.version);
            let mark = stores.users.replicated().mark();
            if (!mark.local_changes && mark.version >= cluster_version)
                || tokio::time::Instant::now() >= settled
            {
                break;
            }
            tokio::time::sleep(DECLARE_SETTLE_POLL).await;
        }
        for (name, password, tags, loopback_only) in declared_users {
            while let Err(error) = stores
                .users
                .declare(&name, &password, tags.clone(), loopback_only)
                .await
            {
                tracing::warn!(user = %name, %error, "a declared user is not in the cluster's users yet; retrying");
                tokio::time::sleep(PUBLISH_RETRY).await;
            }
        }
    });
}

/// Installs every version the metadata group commits into this node's stores.
async fn install_committed_versions(node: Arc<ClusterNode>, stores: SecurityStores) {
    let mut documents = node.security().subscribe();
    loop {
        let latest = documents.borrow_and_update().clone();
        for document in stores.documents() {
            let kind = document.kind();
            let Some(replicated) = latest.get(kind.name()) else {
                continue;
            };
            match document.install(replicated.version, &replicated.document) {
                Ok(true) => {
                    tracing::info!(%kind, version = replicated.version, "security document installed")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(%kind, version = replicated.version, %error, "could not install a security document")
                }
            }
        }
        if documents.changed().await.is_err() {
            return;
        }
    }
}
