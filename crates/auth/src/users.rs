//! The one user store behind every protocol and the HTTP API: names, tags, salted SCRAM keys
//! (never a password) and AMQP permissions per virtual host, in `users.json` in the data
//! directory, rewritten whole (write, fsync, rename) on every change.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::permissions::VhostPermissions;
use crate::replication::{Document, DocumentKind, ReplicatedDocument};
use crate::scram::{ScramCredential, ScramMechanism, ITERATIONS_DEFAULT};
use crate::AuthError;

pub const USERS_FILE: &str = "users.json";
/// RabbitMQ's tag for users who may change things through the HTTP API.
pub const ADMINISTRATOR_TAG: &str = "administrator";
/// The user a fresh store starts with, as RabbitMQ's: guest/guest, loopback only.
pub const DEFAULT_USER: &str = "guest";

/// One user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Accepted only from 127.0.0.0/8 or ::1 (RabbitMQ's rule for guest).
    #[serde(default)]
    pub loopback_only: bool,
    /// At most one per mechanism. A user made from a password has both; one made through
    /// Kafka's AlterUserScramCredentials has those the client set.
    #[serde(default)]
    pub credentials: Vec<ScramCredential>,
    /// AMQP configure/write/read patterns by virtual host.
    #[serde(default)]
    pub permissions: BTreeMap<String, VhostPermissions>,
}

impl User {
    pub fn is_administrator(&self) -> bool {
        self.has_tag(ADMINISTRATOR_TAG)
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    pub fn credential(&self, mechanism: ScramMechanism) -> Option<&ScramCredential> {
        self.credentials.iter().find(|c| c.mechanism == mechanism)
    }
}

/// A user who proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub name: String,
    pub tags: Vec<String>,
}

impl Authenticated {
    pub fn is_administrator(&self) -> bool {
        self.tags.iter().any(|t| t == ADMINISTRATOR_TAG)
    }
}

/// The document kept in `users.json`: the users as a list, held by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Users {
    #[serde(with = "users_by_name")]
    users: BTreeMap<String, User>,
}

mod users_by_name {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::User;

    pub(super) fn serialize<S: Serializer>(
        users: &BTreeMap<String, User>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(users.values())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, User>, D::Error> {
        Ok(Vec::<User>::deserialize(deserializer)?
            .into_iter()
            .map(|user| (user.name.clone(), user))
            .collect())
    }
}

/// Users, kept in memory; every change is written through (or, in a cluster, committed by
/// the metadata group) before it returns.
pub struct UserStore {
    document: Document<Users>,
    /// Per-process key for the decoy salts of unknown users and the verified-password cache.
    secret: [u8; 32],
    /// name → keyed digest of the password last verified for it: a client that reconnects
    /// with the right password costs one HMAC, not PBKDF2's thousands. Memory only; cleared
    /// on any change to the users (it holds the document revision it was filled under).
    verified: Mutex<(u64, HashMap<String, [u8; 32]>)>,
}

impl std::fmt::Debug for UserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserStore")
            .field("users", &self.document.get().users.len())
            .finish_non_exhaustive()
    }
}

impl UserStore {
    /// Opens `users.json` in `data_dir`; a directory without one starts with guest/guest.
    pub fn open(data_dir: &Path) -> Result<Arc<UserStore>, AuthError> {
        let path = data_dir.join(USERS_FILE);
        Ok(Arc::new(UserStore::with(Some(path))?))
    }

    /// A store that lives in memory only, starting with guest/guest.
    pub fn in_memory() -> Arc<UserStore> {
        Arc::new(
            UserStore::with(None)
                .unwrap_or_else(|_| unreachable!("a store in memory reads and writes no file")),
        )
    }

    fn with(path: Option<PathBuf>) -> Result<UserStore, AuthError> {
        let initial = || Users {
            users: BTreeMap::from([(DEFAULT_USER.to_string(), default_user())]),
        };
        let document = Document::open(DocumentKind::Users, path, initial, true)?;
        let mut secret = [0; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        Ok(UserStore {
            document,
            secret,
            verified: Mutex::new((0, HashMap::new())),
        })
    }

    /// The store as the cluster replicates it.
    pub fn replicated(&self) -> &dyn ReplicatedDocument {
        &self.document
    }

    /// Changes made so far (starts at 1): equal numbers mean nothing changed in between.
    pub fn generation(&self) -> u64 {
        self.document.revision()
    }

    pub fn list(&self) -> Vec<User> {
        self.document.get().users.values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<User> {
        self.document.get().users.get(name).cloned()
    }

    /// Adds a user with both SCRAM credentials for `password`.
    pub async fn add(
        &self,
        name: &str,
        password: &str,
        tags: Vec<String>,
    ) -> Result<(), AuthError> {
        validate_name(name)?;
        let credentials = credentials_for(password);
        self.change(|users| {
            if users.contains_key(name) {
                return Err(AuthError::UserExists(name.to_string()));
            }
            users.insert(
                name.to_string(),
                User {
                    name: name.to_string(),
                    tags: tags.clone(),
                    loopback_only: false,
                    credentials: credentials.clone(),
                    permissions: BTreeMap::new(),
                },
            );
            Ok(())
        })
        .await
    }

    /// Creates or replaces a user declared in the configuration (`--amqp-users`), with full
    /// permissions on the default virtual host, as such users always had.
    pub async fn declare(
        &self,
        name: &str,
        password: &str,
        tags: Vec<String>,
        loopback_only: bool,
    ) -> Result<(), AuthError> {
        validate_name(name)?;
        if let Some(user) = self.get(name) {
            // Unchanged: no rewrite, no PBKDF2 beyond the check.
            if user.tags == tags
                && user.loopback_only == loopback_only
                && user.permissions.contains_key("/")
                && user.credentials.len() == ScramMechanism::ALL.len()
                && user.credentials.iter().all(|c| c.verify_password(password))
            {
                return Ok(());
            }
        }
        let credentials = credentials_for(password);
        self.change(|users| {
            let user = users.entry(name.to_string()).or_insert_with(|| User {
                name: name.to_string(),
                tags: Vec::new(),
                loopback_only,
                credentials: Vec::new(),
                permissions: BTreeMap::new(),
            });
            user.tags = tags.clone();
            user.loopback_only = loopback_only;
            user.credentials = credentials.clone();
            user.permissions
                .entry("/".to_string())
                .or_insert_with(VhostPermissions::full);
            Ok(())
        })
        .await
    }

    pub async fn delete(&self, name: &str) -> Result<(), AuthError> {
        self.change(|users| {
            users
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| AuthError::NoSuchUser(name.to_string()))
        })
        .await
    }

    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        let credentials = credentials_for(password);
        self.update(name, |user| {
            user.credentials = credentials.clone();
            Ok(())
        })
        .await
    }

    pub async fn set_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AuthError> {
        self.update(name, |user| {
            user.tags = tags.clone();
            Ok(())
        })
        .await
    }

    pub async fn set_permissions(
        &self,
        name: &str,
        vhost: &str,
        permissions: VhostPermissions,
    ) -> Result<(), AuthError> {
        self.update(name, |user| {
            user.permissions
                .insert(vhost.to_string(), permissions.clone());
            Ok(())
        })
        .await
    }

    pub async fn clear_permissions(&self, name: &str, vhost: &str) -> Result<(), AuthError> {
        self.update(name, |user| {
            user.permissions
                .remove(vhost)
                .map(|_| ())
                .ok_or_else(|| AuthError::NoPermissions(name.to_string(), vhost.to_string()))
        })
        .await
    }

    /// Removes every user's permissions on `vhost` (it was deleted, as RabbitMQ does).
    pub async fn forget_vhost(&self, vhost: &str) -> Result<(), AuthError> {
        self.change(|users| {
            for user in users.values_mut() {
                user.permissions.remove(vhost);
            }
            Ok(())
        })
        .await
    }

    /// Sets one SCRAM credential (Kafka's AlterUserScramCredentials upsertion); a user that
    /// does not exist yet is created, as Kafka's SCRAM users need nothing else.
    pub async fn upsert_scram(
        &self,
        name: &str,
        credential: ScramCredential,
    ) -> Result<(), AuthError> {
        validate_name(name)?;
        self.change(|users| {
            let user = users.entry(name.to_string()).or_insert_with(|| User {
                name: name.to_string(),
                tags: Vec::new(),
                loopback_only: false,
                credentials: Vec::new(),
                permissions: BTreeMap::new(),
            });
            user.credentials
                .retain(|c| c.mechanism != credential.mechanism);
            user.credentials.push(credential.clone());
            user.credentials.sort_by_key(|c| c.mechanism);
            Ok(())
        })
        .await
    }

    /// Removes one SCRAM credential (AlterUserScramCredentials deletion).
    pub async fn delete_scram(
        &self,
        name: &str,
        mechanism: ScramMechanism,
    ) -> Result<(), AuthError> {
        self.update(name, |user| {
            let before = user.credentials.len();
            user.credentials.retain(|c| c.mechanism != mechanism);
            if user.credentials.len() == before {
                return Err(AuthError::NoSuchCredential(name.to_string()));
            }
            Ok(())
        })
        .await
    }

    pub fn scram_credential(
        &self,
        name: &str,
        mechanism: ScramMechanism,
    ) -> Option<ScramCredential> {
        self.document
            .get()
            .users
            .get(name)
            .and_then(|user| user.credential(mechanism).cloned())
    }

    /// The salt shown to a SCRAM client for a user that does not exist: stable per name for
    /// this process, so asking twice does not give the absence away.
    pub fn decoy_salt(&self, name: &str) -> Vec<u8> {
        self.keyed_digest(&[b"decoy salt", name.as_bytes()])
            .to_vec()
    }

    /// Checks a user name and password (SASL PLAIN, AMQP PLAIN/AMQPLAIN, HTTP basic). A
    /// loopback-only user is refused from any other peer.
    pub fn verify_password(
        &self,
        name: &str,
        password: &str,
        peer_is_loopback: bool,
    ) -> Option<Authenticated> {
        let user = self.get(name)?;
        if user.loopback_only && !peer_is_loopback {
            return None;
        }
        let credential = user
            .credential(ScramMechanism::Sha256)
            .or_else(|| user.credentials.first())?;
        let digest = self.keyed_digest(&[
            b"verified",
            name.as_bytes(),
            &credential.salt,
            password.as_bytes(),
        ]);
        let revision = self.document.revision();
        let cached = {
            let mut verified = self.verified.lock();
            if verified.0 != revision {
                *verified = (revision, HashMap::new());
            }
            verified
                .1
                .get(name)
                .is_some_and(|known| bool::from(known.ct_eq(&digest)))
        };
        if !cached {
            if !credential.verify_password(password) {
                return None;
            }
            let mut verified = self.verified.lock();
            if verified.0 == revision {
                verified.1.insert(name.to_string(), digest);
            }
        }
        Some(Authenticated {
            name: user.name,
            tags: user.tags,
        })
    }

    /// A user's tags if the user exists and may connect from this peer (after a client
    /// certificate named it: TLS did the proving).
    pub fn certified(&self, name: &str, peer_is_loopback: bool) -> Option<Authenticated> {
        let user = self.get(name)?;
        if user.loopback_only && !peer_is_loopback {
            return None;
        }
        Some(Authenticated {
            name: user.name,
            tags: user.tags,
        })
    }

    /// The AMQP permissions of a user on a virtual host.
    pub fn permissions(&self, name: &str, vhost: &str) -> Option<VhostPermissions> {
        self.document
            .get()
            .users
            .get(name)
            .and_then(|user| user.permissions.get(vhost).cloned())
    }

    fn keyed_digest(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    async fn update(
        &self,
        name: &str,
        mut change: impl FnMut(&mut User) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        self.change(|users| {
            let user = users
                .get_mut(name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_string()))?;
            change(user)
        })
        .await
    }

    async fn change(
        &self,
        mut change: impl FnMut(&mut BTreeMap<String, User>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        self.document
            .change(|document: &mut Users| change(&mut document.users))
            .await
    }
}

fn default_user() -> User {
    User {
        name: DEFAULT_USER.to_string(),
        tags: vec![ADMINISTRATOR_TAG.to_string()],
        loopback_only: true,
        credentials: credentials_for(DEFAULT_USER),
        permissions: BTreeMap::from([("/".to_string(), VhostPermissions::full())]),
    }
}

fn credentials_for(password: &str) -> Vec<ScramCredential> {
    ScramMechanism::ALL
        .into_iter()
        .map(|mechanism| ScramCredential::from_password(mechanism, password, ITERATIONS_DEFAULT))
        .collect()
}

/// Names travel in SASL messages, AMQP tables, URLs and ACL principals: no control characters,
/// not empty, not absurdly long.
fn validate_name(name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(AuthError::InvalidName(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fresh_store_has_guest_on_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::open(dir.path()).unwrap();
        assert!(store.verify_password("guest", "guest", true).is_some());
        assert!(store.verify_password("guest", "guest", false).is_none());
        assert!(store.verify_password("guest", "wrong", true).is_none());
        assert!(dir.path().join(USERS_FILE).exists());
    }

    #[tokio::test]
    async fn changes_survive_a_reopen_and_no_password_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::open(dir.path()).unwrap();
        store
            .add("alice", "s3cret-pass", vec![ADMINISTRATOR_TAG.into()])
            .await
            .unwrap();
        assert!(matches!(
            store.add("alice", "x", vec![]).await,
            Err(AuthError::UserExists(_))
        ));
        store.delete("guest").await.unwrap();
        drop(store);
        let text = std::fs::read_to_string(dir.path().join(USERS_FILE)).unwrap();
        assert!(!text.contains("s3cret-pass"));
        let store = UserStore::open(dir.path()).unwrap();
        assert!(
            store.get("guest").is_none(),
            "a deleted guest stays deleted"
        );
        let alice = store
            .verify_password("alice", "s3cret-pass", false)
            .unwrap();
        assert!(alice.is_administrator());
        store.set_password("alice", "new").await.unwrap();
        assert!(store
            .verify_password("alice", "s3cret-pass", false)
            .is_none());
        assert!(store.verify_password("alice", "new", false).is_some());
        assert!(store
            .scram_credential("alice", ScramMechanism::Sha512)
            .is_some());
        store
            .delete_scram("alice", ScramMechanism::Sha512)
            .await
            .unwrap();
        assert!(store
            .scram_credential("alice", ScramMechanism::Sha512)
            .is_none());
        assert!(store
            .delete_scram("alice", ScramMechanism::Sha512)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn the_decoy_salt_is_stable_per_name() {
        let store = UserStore::in_memory();
        assert_eq!(store.decoy_salt("nobody"), store.decoy_salt("nobody"));
        assert_ne!(store.decoy_salt("nobody"), store.decoy_salt("other"));
    }
}
