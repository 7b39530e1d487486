//! The one user store behind every protocol and the HTTP API: names, tags, salted SCRAM keys
//! (never a password) and AMQP permissions per virtual host, in `users.json` in the data
//! directory, rewritten whole (write, fsync, rename) on every change.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::permissions::VhostPermissions;
use crate::persist::{read_json, write_json_atomically};
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<User>,
}

/// Users, loaded once and kept in memory; every change is written through before it returns.
#[derive(Debug)]
pub struct UserStore {
    /// None: in memory only (tests).
    path: Option<PathBuf>,
    users: RwLock<BTreeMap<String, User>>,
    /// Serializes writers so the file always matches the latest state.
    write_lock: Mutex<()>,
    /// Counts changes, so holders of a user's permissions know when to read them again.
    generation: AtomicU64,
    /// Per-process key for the decoy salts of unknown users and the verified-password cache.
    secret: [u8; 32],
    /// name → keyed digest of the password last verified for it: a client that reconnects
    /// with the right password costs one HMAC, not PBKDF2's thousands. Memory only; cleared
    /// for a user on any change to it.
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl UserStore {
    /// Opens `users.json` in `data_dir`; a directory without one starts with guest/guest.
    pub fn open(data_dir: &Path) -> Result<Arc<UserStore>, AuthError> {
        let path = data_dir.join(USERS_FILE);
        let users = match read_json::<UsersFile>(&path)? {
            Some(file) => file.users,
            None => vec![default_user()],
        };
        let store = UserStore::with_users(Some(path.clone()), users);
        if !path.exists() {
            store.save(&store.users.read())?;
        }
        Ok(Arc::new(store))
    }

    /// A store that lives in memory only, starting with guest/guest.
    pub fn in_memory() -> Arc<UserStore> {
        Arc::new(UserStore::with_users(None, vec![default_user()]))
    }

    fn with_users(path: Option<PathBuf>, users: Vec<User>) -> UserStore {
        let mut secret = [0; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        UserStore {
            path,
            users: RwLock::new(users.into_iter().map(|u| (u.name.clone(), u)).collect()),
            write_lock: Mutex::new(()),
            generation: AtomicU64::new(1),
            secret,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Changes made so far (starts at 1): equal numbers mean nothing changed in between.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn list(&self) -> Vec<User> {
        self.users.read().values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<User> {
        self.users.read().get(name).cloned()
    }

    /// Adds a user with both SCRAM credentials for `password`.
    pub fn add(&self, name: &str, password: &str, tags: Vec<String>) -> Result<(), AuthError> {
        validate_name(name)?;
        self.change(|users| {
            if users.contains_key(name) {
                return Err(AuthError::UserExists(name.to_string()));
            }
            users.insert(
                name.to_string(),
                User {
                    name: name.to_string(),
                    tags,
                    loopback_only: false,
                    credentials: credentials_for(password),
                    permissions: BTreeMap::new(),
                },
            );
            Ok(())
        })
    }

    /// Creates or replaces a user declared in the configuration (`--amqp-users`), with full
    /// permissions on the default virtual host, as such users always had.
    pub fn declare(
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
        self.change(|users| {
            let user = users.entry(name.to_string()).or_insert_with(|| User {
                name: name.to_string(),
                tags: Vec::new(),
                loopback_only,
                credentials: Vec::new(),
                permissions: BTreeMap::new(),
            });
            user.tags = tags;
            user.loopback_only = loopback_only;
            user.credentials = credentials_for(password);
            user.permissions
                .entry("/".to_string())
                .or_insert_with(VhostPermissions::full);
            Ok(())
        })
    }

    pub fn delete(&self, name: &str) -> Result<(), AuthError> {
        self.change(|users| {
            users
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| AuthError::NoSuchUser(name.to_string()))
        })
    }

    pub fn set_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        self.update(name, |user| {
            user.credentials = credentials_for(password);
            Ok(())
        })
    }

    pub fn set_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AuthError> {
        self.update(name, |user| {
            user.tags = tags;
            Ok(())
        })
    }

    pub fn set_permissions(
        &self,
        name: &str,
        vhost: &str,
        permissions: VhostPermissions,
    ) -> Result<(), AuthError> {
        self.update(name, |user| {
            user.permissions.insert(vhost.to_string(), permissions);
            Ok(())
        })
    }

    pub fn clear_permissions(&self, name: &str, vhost: &str) -> Result<(), AuthError> {
        self.update(name, |user| {
            user.permissions
                .remove(vhost)
                .map(|_| ())
                .ok_or_else(|| AuthError::NoPermissions(name.to_string(), vhost.to_string()))
        })
    }

    /// Sets one SCRAM credential (Kafka's AlterUserScramCredentials upsertion); a user that
    /// does not exist yet is created, as Kafka's SCRAM users need nothing else.
    pub fn upsert_scram(&self, name: &str, credential: ScramCredential) -> Result<(), AuthError> {
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
            user.credentials.push(credential);
            user.credentials.sort_by_key(|c| c.mechanism);
            Ok(())
        })
    }

    /// Removes one SCRAM credential (AlterUserScramCredentials deletion).
    pub fn delete_scram(&self, name: &str, mechanism: ScramMechanism) -> Result<(), AuthError> {
        self.update(name, |user| {
            let before = user.credentials.len();
            user.credentials.retain(|c| c.mechanism != mechanism);
            if user.credentials.len() == before {
                return Err(AuthError::NoSuchCredential(name.to_string()));
            }
            Ok(())
        })
    }

    pub fn scram_credential(
        &self,
        name: &str,
        mechanism: ScramMechanism,
    ) -> Option<ScramCredential> {
        self.users
            .read()
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
        let cached = self
            .verified
            .lock()
            .get(name)
            .is_some_and(|known| bool::from(known.ct_eq(&digest)));
        if !cached {
            if !credential.verify_password(password) {
                return None;
            }
            self.verified.lock().insert(name.to_string(), digest);
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
        self.users
            .read()
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

    fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut User) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        self.change(|users| {
            let user = users
                .get_mut(name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_string()))?;
            change(user)
        })
    }

    /// Applies a change to a copy, writes the copy, and only then makes it current: a failed
    /// write changes nothing.
    fn change(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, User>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let _writer = self.write_lock.lock();
        let mut users = self.users.read().clone();
        change(&mut users)?;
        self.save(&users)?;
        *self.users.write() = users;
        self.generation.fetch_add(1, Ordering::Release);
        self.verified.lock().clear();
        Ok(())
    }

    fn save(&self, users: &BTreeMap<String, User>) -> Result<(), AuthError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = UsersFile {
            users: users.values().cloned().collect(),
        };
        write_json_atomically(path, &file)
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

    #[test]
    fn a_fresh_store_has_guest_on_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::open(dir.path()).unwrap();
        assert!(store.verify_password("guest", "guest", true).is_some());
        assert!(store.verify_password("guest", "guest", false).is_none());
        assert!(store.verify_password("guest", "wrong", true).is_none());
        assert!(dir.path().join(USERS_FILE).exists());
    }

    #[test]
    fn changes_survive_a_reopen_and_no_password_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::open(dir.path()).unwrap();
        store
            .add("alice", "s3cret-pass", vec![ADMINISTRATOR_TAG.into()])
            .unwrap();
        assert!(matches!(
            store.add("alice", "x", vec![]),
            Err(AuthError::UserExists(_))
        ));
        store.delete("guest").unwrap();
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
        store.set_password("alice", "new").unwrap();
        assert!(store
            .verify_password("alice", "s3cret-pass", false)
            .is_none());
        assert!(store.verify_password("alice", "new", false).is_some());
        assert!(store
            .scram_credential("alice", ScramMechanism::Sha512)
            .is_some());
        store.delete_scram("alice", ScramMechanism::Sha512).unwrap();
        assert!(store
            .scram_credential("alice", ScramMechanism::Sha512)
            .is_none());
        assert!(store.delete_scram("alice", ScramMechanism::Sha512).is_err());
    }

    #[test]
    fn the_decoy_salt_is_stable_per_name() {
        let store = UserStore::in_memory();
        assert_eq!(store.decoy_salt("nobody"), store.decoy_salt("nobody"));
        assert_ne!(store.decoy_salt("nobody"), store.decoy_salt("other"));
    }
}
