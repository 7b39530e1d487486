//! One security document (the users, the ACLs, the quotas or the vhost limits): held in
//! memory, written whole to its file, and, in a cluster, changed only through the metadata
//! group so that every node holds the same one.
//!
//! A change is computed on a copy of the current document and committed as the next version
//! of it only if the version it was computed from is still the latest (compare-and-set):
//! concurrent changes on different nodes never overwrite each other, the loser computes its
//! change again on the winner's document. Every node, the proposer included, installs a
//! committed version when its metadata state machine applies it.
//!
//! The file records the version it holds and whether it holds changes the cluster has not
//! seen (`sluice user add --data-dir` on a stopped node, or any change on a single node):
//! those are proposed when the node joins its cluster, and kept only if the cluster's
//! document has not changed since the version they were made on.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::persist::{read_json, write_json_atomically};
use crate::AuthError;

/// How long a proposer waits for its own node to install what it committed, or, after losing
/// a race, for the winner's version to arrive.
const INSTALL_WAIT: Duration = Duration::from_secs(10);
/// Attempts of one change against concurrent changes before giving up.
const ATTEMPTS: usize = 20;

/// Which document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocumentKind {
    Users,
    Acls,
    Quotas,
    VhostLimits,
}

impl DocumentKind {
    pub const ALL: [DocumentKind; 4] = [
        DocumentKind::Users,
        DocumentKind::Acls,
        DocumentKind::Quotas,
        DocumentKind::VhostLimits,
    ];

    /// The name the metadata group keeps it under.
    pub fn name(self) -> &'static str {
        match self {
            DocumentKind::Users => "users",
            DocumentKind::Acls => "acls",
            DocumentKind::Quotas => "quotas",
            DocumentKind::VhostLimits => "vhost_limits",
        }
    }

    pub fn from_name(name: &str) -> Option<DocumentKind> {
        DocumentKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

impl std::fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The document changed since the version the change was computed on.
    #[error("the {kind} document is no longer at version {base_version}")]
    Stale {
        kind: DocumentKind,
        base_version: u64,
    },
    /// Not committed (no metadata leader, a timeout); it may still commit later.
    #[error("the cluster did not commit the change: {0}")]
    Unavailable(String),
}

pub type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, CommitError>> + Send + 'a>>;

/// Where a changed document goes before it takes effect: the cluster's metadata group.
pub trait DocumentReplicator: Send + Sync {
    /// Commits `document` as the version after `base_version` of `kind`, unless the latest
    /// version is no longer `base_version`; returns the committed version.
    fn commit(&self, kind: DocumentKind, base_version: u64, document: String) -> CommitFuture<'_>;
}

/// What the file says about its document's place in the cluster's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationMark {
    /// The cluster's version this document is (or, with local changes, was made from);
    /// 0: never replicated.
    #[serde(default)]
    pub version: u64,
    /// Changes made here that the cluster has not committed.
    #[serde(default)]
    pub local_changes: bool,
}

#[derive(Serialize)]
struct FileOut<'a, T> {
    #[serde(flatten)]
    body: &'a T,
    replication: ReplicationMark,
}

#[derive(Deserialize)]
struct FileIn<T> {
    #[serde(flatten)]
    body: T,
    #[serde(default)]
    replication: ReplicationMark,
}

/// A document as the stores use it: what the cluster code needs of each store.
pub trait ReplicatedDocument: Send + Sync {
    fn kind(&self) -> DocumentKind;
    fn mark(&self) -> ReplicationMark;
    /// The document as the metadata group carries it.
    fn to_text(&self) -> Result<String, AuthError>;
    /// Makes a committed version current (and writes it), unless it is the one held.
    /// Returns whether it changed anything.
    fn install(&self, version: u64, document: &str) -> Result<bool, AuthError>;
    /// From now on changes are committed through `replicator`.
    fn replicate_through(&self, replicator: Arc<dyn DocumentReplicator>);
    /// Proposes the local changes (if any) made on `cluster_version`, the latest version this
    /// node knows; returns whether the cluster took them.
    fn publish_local_changes(
        &self,
        cluster_version: u64,
    ) -> Pin<Box<dyn Future<Output = Result<bool, AuthError>> + Send + '_>>;
}

pub(crate) struct Document<T> {
    kind: DocumentKind,
    /// None: in memory only (tests).
    path: Option<PathBuf>,
    current: RwLock<(Arc<T>, ReplicationMark)>,
    /// Counts replacements (local or installed): equal numbers mean nothing changed between.
    revision: AtomicU64,
    /// The version last installed, for proposers waiting on it.
    installed: watch::Sender<u64>,
    /// One local change at a time: a node does not race itself.
    proposers: tokio::sync::Mutex<()>,
    /// Serializes file writes with the replacement they belong to.
    writer: Mutex<()>,
    replicator: RwLock<Option<Arc<dyn DocumentReplicator>>>,
}

impl<T> Document<T>
where
    T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reads the document from `path`; a missing file starts from `initial`, written at once
    /// when `write_initial` (as a version-0 document without local changes: a default every
    /// node has, which the cluster need not hear of).
    pub(crate) fn open(
        kind: DocumentKind,
        path: Option<PathBuf>,
        initial: impl FnOnce() -> T,
        write_initial: bool,
    ) -> Result<Document<T>, AuthError> {
        let stored = match &path {
            Some(path) => read_json::<FileIn<T>>(path)?,
            None => None,
        };
        let fresh = stored.is_none();
        let (body, mark) = match stored {
            Some(file) => (file.body, file.replication),
            None => (initial(), ReplicationMark::default()),
        };
        let document = Document {
            kind,
            path,
            installed: watch::channel(mark.version).0,
            current: RwLock::new((Arc::new(body), mark)),
            revision: AtomicU64::new(1),
            proposers: tokio::sync::Mutex::new(()),
            writer: Mutex::new(()),
            replicator: RwLock::new(None),
        };
        if fresh && write_initial {
            let (body, mark) = document.current.read().clone();
            document.write(&body, mark)?;
        }
        Ok(document)
    }

    pub(crate) fn get(&self) -> Arc<T> {
        Arc::clone(&self.current.read().0)
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Applies `change` to a copy of the document and makes the result current: written to
    /// the file on a single node, committed through the metadata group in a cluster. An error
    /// from `change` changes nothing. `change` may run more than once (after losing a race
    /// with another node's change, on that node's document).
    pub(crate) async fn change<R, E>(
        &self,
        mut change: impl FnMut(&mut T) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<AuthError>,
    {
        let _proposer = self.proposers.lock().await;
        for _ in 0..ATTEMPTS {
            let (body, mark) = self.current.read().clone();
            let mut copy = body.as_ref().clone();
            let result = change(&mut copy)?;
            let replicator = self.replicator.read().clone();
            let Some(replicator) = replicator else {
                self.replace(
                    copy,
                    ReplicationMark {
                        version: mark.version,
                        local_changes: true,
                    },
                )?;
                return Ok(result);
            };
            let text = serde_json::to_string(&copy)
                .map_err(|error| AuthError::Corrupt(self.kind.to_string(), error.to_string()))?;
            match replicator.commit(self.kind, mark.version, text).await {
                Ok(version) => {
                    if !self
                        .wait_for_version(|installed| installed >= version)
                        .await
                    {
                        tracing::warn!(kind = %self.kind, version,
                            "committed, but not yet installed on this node");
                    }
                    return Ok(result);
                }
                Err(CommitError::Stale { .. }) => {
                    // Another node's change won: compute ours again on its document.
                    self.wait_for_version(|installed| installed != mark.version)
                        .await;
                }
                Err(CommitError::Unavailable(reason)) => {
                    return Err(AuthError::Replication(reason).into())
                }
            }
        }
        Err(AuthError::Replication(format!(
            "the {} document kept changing under {ATTEMPTS} attempts",
            self.kind
        ))
        .into())
    }

    async fn wait_for_version(&self, reached: impl Fn(u64) -> bool) -> bool {
        let mut installed = self.installed.subscribe();
        tokio::time::timeout(INSTALL_WAIT, installed.wait_for(|&v| reached(v)))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    fn replace(&self, body: T, mark: ReplicationMark) -> Result<(), AuthError> {
        let _writer = self.writer.lock();
        self.write(&body, mark)?;
        *self.current.write() = (Arc::new(body), mark);
        self.revision.fetch_add(1, Ordering::AcqRel);
        self.installed.send_replace(mark.version);
        Ok(())
    }

    fn write(&self, body: &T, mark: ReplicationMark) -> Result<(), AuthError> {
        match &self.path {
            Some(path) => write_json_atomically(
                path,
                &FileOut {
                    body,
                    replication: mark,
                },
            ),
            None => Ok(()),
        }
    }
}

impl<T> ReplicatedDocument for Document<T>
where
    T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn kind(&self) -> DocumentKind {
        self.kind
    }

    fn mark(&self) -> ReplicationMark {
        self.current.read().1
    }

    fn to_text(&self) -> Result<String, AuthError> {
        serde_json::to_string(self.get().as_ref())
            .map_err(|error| AuthError::Corrupt(self.kind.to_string(), error.to_string()))
    }

    fn install(&self, version: u64, document: &str) -> Result<bool, AuthError> {
        let mark = self.mark();
        // The version held, or the one this node's uncommitted changes were made on (those
        // are proposed, not overwritten, while the cluster is still at that version).
        if mark.version == version {
            return Ok(false);
        }
        let body: T = serde_json::from_str(document)
            .map_err(|error| AuthError::Corrupt(self.kind.to_string(), error.to_string()))?;
        if mark.local_changes {
            tracing::warn!(kind = %self.kind, local_version = mark.version, version,
                "this node's uncommitted changes are replaced by the cluster's document");
        }
        self.replace(
            body,
            ReplicationMark {
                version,
                local_changes: false,
            },
        )?;
        Ok(true)
    }

    fn replicate_through(&self, replicator: Arc<dyn DocumentReplicator>) {
        *self.replicator.write() = Some(replicator);
    }

    fn publish_local_changes(
        &self,
        cluster_version: u64,
    ) -> Pin<Box<dyn Future<Output = Result<bool, AuthError>> + Send + '_>> {
        Box::pin(async move {
            let _proposer = self.proposers.lock().await;
            let mark = self.mark();
            // Made on the cluster's latest version, or the cluster has none yet.
            if !mark.local_changes || (mark.version != cluster_version && cluster_version != 0) {
                return Ok(false);
            }
            let replicator = self.replicator.read().clone();
            let Some(replicator) = replicator else {
                return Ok(false);
            };
            match replicator
                .commit(self.kind, cluster_version, self.to_text()?)
                .await
            {
                Ok(version) => {
                    self.wait_for_version(|installed| installed >= version)
                        .await;
                    tracing::info!(kind = %self.kind, version,
                        "this node's local changes are now the cluster's document");
                    Ok(true)
                }
                Err(CommitError::Stale { .. }) => Ok(false),
                Err(CommitError::Unavailable(reason)) => Err(AuthError::Replication(reason)),
            }
        })
    }
}

/// Serde for maps kept as lists in the files (`users`: a list of users; `quotas`: a list of
/// entity and quotas pairs, whose keys JSON objects cannot have).
pub(crate) mod map_as_list {
    use std::collections::BTreeMap;

    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<K, V, S>(map: &BTreeMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize,
        V: Serialize,
        S: Serializer,
    {
        serializer.collect_seq(map.iter())
    }

    pub(crate) fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: DeserializeOwned + Ord,
        V: DeserializeOwned,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document as the files hold them: an object (its fields sit beside the mark).
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Notes {
        notes: Vec<String>,
    }

    fn notes(texts: &[&str]) -> Notes {
        Notes {
            notes: texts.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// The metadata group in miniature: a compare-and-set register, installing each committed
    /// version at once into the proposer and, when `deliver` is called, into the others.
    #[derive(Default)]
    struct Register {
        latest: Mutex<(u64, String)>,
        nodes: Mutex<Vec<Arc<Document<Notes>>>>,
    }

    impl Register {
        fn deliver(&self) {
            let (version, text) = self.latest.lock().clone();
            for node in self.nodes.lock().iter() {
                node.install(version, &text).unwrap();
            }
        }
    }

    struct Proposer {
        register: Arc<Register>,
        node: usize,
    }

    impl DocumentReplicator for Proposer {
        fn commit(
            &self,
            kind: DocumentKind,
            base_version: u64,
            document: String,
        ) -> CommitFuture<'_> {
            Box::pin(async move {
                let version = {
                    let mut latest = self.register.latest.lock();
                    if latest.0 != base_version {
                        return Err(CommitError::Stale { kind, base_version });
                    }
                    *latest = (base_version + 1, document.clone());
                    latest.0
                };
                let node = Arc::clone(&self.register.nodes.lock()[self.node]);
                node.install(version, &document).unwrap();
                Ok(version)
            })
        }
    }

    fn node(register: &Arc<Register>) -> Arc<Document<Notes>> {
        let document =
            Arc::new(Document::open(DocumentKind::Acls, None, Notes::default, false).unwrap());
        let mut nodes = register.nodes.lock();
        document.replicate_through(Arc::new(Proposer {
            register: Arc::clone(register),
            node: nodes.len(),
        }));
        nodes.push(Arc::clone(&document));
        document
    }

    fn push(note: &str) -> impl FnMut(&mut Notes) -> Result<(), AuthError> + '_ {
        move |notes: &mut Notes| {
            notes.notes.push(note.to_string());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_change_that_lost_a_race_is_made_again_on_the_winners_document() {
        let register = Arc::new(Register::default());
        let first = node(&register);
        let second = node(&register);
        first.change(push("a")).await.unwrap();
        assert_eq!(first.mark().version, 1);
        assert_eq!(second.mark().version, 0, "not delivered yet");
        // The second node still holds version 0: its commit is stale until the first
        // change arrives, and then it is made again on top of it.
        let delivering = Arc::clone(&register);
        let delivery = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            delivering.deliver();
        });
        second.change(push("b")).await.unwrap();
        delivery.await.unwrap();
        register.deliver();
        for node in [&first, &second] {
            assert_eq!(node.get().as_ref(), &notes(&["a", "b"]));
            assert_eq!(
                node.mark(),
                ReplicationMark {
                    version: 2,
                    local_changes: false
                }
            );
        }
    }

    #[tokio::test]
    async fn local_changes_are_published_only_on_the_version_they_were_made_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.json");
        let offline = Document::<Notes>::open(
            DocumentKind::Acls,
            Some(path.clone()),
            Notes::default,
            false,
        )
        .unwrap();
        offline.change(push("offline")).await.unwrap();
        drop(offline);

        // Reopened as a cluster node whose cluster has no document yet: published.
        let register = Arc::new(Register::default());
        let reopened = Arc::new(
            Document::<Notes>::open(
                DocumentKind::Acls,
                Some(path.clone()),
                Notes::default,
                false,
            )
            .unwrap(),
        );
        assert_eq!(
            reopened.mark(),
            ReplicationMark {
                version: 0,
                local_changes: true
            }
        );
        reopened.replicate_through(Arc::new(Proposer {
            register: Arc::clone(&register),
            node: 0,
        }));
        register.nodes.lock().push(Arc::clone(&reopened));
        assert!(reopened.publish_local_changes(0).await.unwrap());
        assert_eq!(
            reopened.mark(),
            ReplicationMark {
                version: 1,
                local_changes: false
            }
        );

        // Offline changes made on version 1 while the cluster moved to version 2: the
        // cluster's document wins.
        let other = node(&register);
        register.deliver();
        other.change(push("online")).await.unwrap();
        let stale =
            Document::<Notes>::open(DocumentKind::Acls, Some(path), Notes::default, false).unwrap();
        stale.change(push("stale")).await.unwrap();
        let stale = Arc::new(stale);
        stale.replicate_through(Arc::new(Proposer {
            register: Arc::clone(&register),
            node: 0,
        }));
        assert!(!stale.publish_local_changes(2).await.unwrap());
        let (version, text) = register.latest.lock().clone();
        assert!(stale.install(version, &text).unwrap());
        assert_eq!(stale.get().as_ref(), &notes(&["offline", "online"]));
        assert_eq!(
            stale.mark(),
            ReplicationMark {
                version: 2,
                local_changes: false
            }
        );
    }
}
