//! Kafka ACLs: bindings as CreateAcls/DescribeAcls/DeleteAcls carry them (Kafka's numeric
//! codes), the store (`acls.json` in the data directory) and the check Kafka's
//! StandardAuthorizer makes: a matching DENY wins, then a matching ALLOW (with its implied
//! operations), and a resource no ACL names at all is open only if
//! `allow.everyone.if.no.acl.found`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::replication::{Document, DocumentKind, ReplicatedDocument};
use crate::AuthError;

pub const ACLS_FILE: &str = "acls.json";
/// The one name a CLUSTER resource has.
pub const CLUSTER_RESOURCE_NAME: &str = "kafka-cluster";
/// A literal resource name or principal that matches every name.
pub const WILDCARD: &str = "*";
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The principal of a client that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

// Kafka's codes (org.apache.kafka.common.resource.ResourceType, acl.AclOperation, ...).
pub mod code {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
    DelegationToken,
    User,
}

impl ResourceType {
    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
            ResourceType::DelegationToken => 6,
            ResourceType::User => 7,
        }
    }

    pub fn from_code(code: i8) -> Option<ResourceType> {
        Some(match code {
            2 => ResourceType::Topic,
            3 => ResourceType::Group,
            4 => ResourceType::Cluster,
            5 => ResourceType::TransactionalId,
            6 => ResourceType::DelegationToken,
            7 => ResourceType::User,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
    CreateTokens,
    DescribeTokens,
    TwoPhaseCommit,
}

impl Operation {
    const CODES: [(Operation, i8); 14] = [
        (Operation::All, 2),
        (Operation::Read, 3),
        (Operation::Write, 4),
        (Operation::Create, 5),
        (Operation::Delete, 6),
        (Operation::Alter, 7),
        (Operation::Describe, 8),
        (Operation::ClusterAction, 9),
        (Operation::DescribeConfigs, 10),
        (Operation::AlterConfigs, 11),
        (Operation::IdempotentWrite, 12),
        (Operation::CreateTokens, 13),
        (Operation::DescribeTokens, 14),
        (Operation::TwoPhaseCommit, 15),
    ];

    pub fn code(self) -> i8 {
        Operation::CODES
            .iter()
            .find(|(op, _)| *op == self)
            .map_or(0, |(_, code)| *code)
    }

    pub fn from_code(code: i8) -> Option<Operation> {
        Operation::CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(op, _)| *op)
    }

    /// Whether an ALLOW for `self` also allows `wanted` (Kafka: READ, WRITE, DELETE and ALTER
    /// imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS; ALL implies everything).
    fn implies(self, wanted: Operation) -> bool {
        self == wanted
            || self == Operation::All
            || (wanted == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
            || (wanted == Operation::DescribeConfigs && self == Operation::AlterConfigs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PatternType {
    Literal,
    Prefixed,
}

impl PatternType {
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => code::LITERAL,
            PatternType::Prefixed => code::PREFIXED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permission {
    Deny,
    Allow,
}

impl Permission {
    pub fn code(self) -> i8 {
        match self {
            Permission::Deny => code::DENY,
            Permission::Allow => code::ALLOW,
        }
    }
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    pub principal: String,
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclBinding {
    /// Builds a binding from CreateAcls' codes, refusing what Kafka refuses (its message).
    pub fn from_codes(
        resource_type: i8,
        resource_name: &str,
        pattern_type: i8,
        principal: &str,
        host: &str,
        operation: i8,
        permission: i8,
    ) -> Result<AclBinding, String> {
        let resource_type = ResourceType::from_code(resource_type)
            .ok_or_else(|| format!("Invalid resource type {resource_type}"))?;
        let pattern_type = match pattern_type {
            code::LITERAL => PatternType::Literal,
            code::PREFIXED => PatternType::Prefixed,
            other => return Err(format!("Invalid pattern type {other}")),
        };
        let operation = Operation::from_code(operation)
            .ok_or_else(|| format!("Invalid operation {operation}"))?;
        let permission = match permission {
            code::DENY => Permission::Deny,
            code::ALLOW => Permission::Allow,
            other => return Err(format!("Invalid permission type {other}")),
        };
        match principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => return Err(format!("Could not parse principal from `{principal}`")),
        }
        if resource_name.is_empty() {
            return Err("Resource name should not be empty".into());
        }
        if resource_type == ResourceType::Cluster && resource_name != CLUSTER_RESOURCE_NAME {
            return Err(format!(
                "The only valid name for the CLUSTER resource is {CLUSTER_RESOURCE_NAME}"
            ));
        }
        if host.is_empty() {
            return Err("Invalid host: empty".into());
        }
        Ok(AclBinding {
            resource_type,
            resource_name: resource_name.to_string(),
            pattern_type,
            principal: principal.to_string(),
            host: host.to_string(),
            operation,
            permission,
        })
    }

    /// Whether this ACL is about the resource `name` of `resource_type`.
    fn covers(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => {
                    self.resource_name == name || self.resource_name == WILDCARD
                }
                PatternType::Prefixed => name.starts_with(&self.resource_name),
            }
    }

    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == WILDCARD_PRINCIPAL)
            && (self.host == host || self.host == WILDCARD)
    }
}

/// DescribeAcls' and DeleteAcls' filter, in Kafka's codes (ANY = 1); None matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

impl AclFilter {
    /// Kafka refuses filters with UNKNOWN codes.
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type != code::ANY && ResourceType::from_code(self.resource_type).is_none()
        {
            return Err(format!("Invalid resource type {}", self.resource_type));
        }
        if !(code::ANY..=code::PREFIXED).contains(&self.pattern_type) {
            return Err(format!("Invalid pattern type {}", self.pattern_type));
        }
        if self.operation != code::ANY && Operation::from_code(self.operation).is_none() {
            return Err(format!("Invalid operation {}", self.operation));
        }
        if !(code::ANY..=code::ALLOW).contains(&self.permission) {
            return Err(format!("Invalid permission type {}", self.permission));
        }
        Ok(())
    }

    /// Kafka's AclBindingFilter.matches.
    pub fn matches(&self, acl: &AclBinding) -> bool {
        if self.resource_type != code::ANY && self.resource_type != acl.resource_type.code() {
            return false;
        }
        let pattern_ok = match self.pattern_type {
            code::ANY | code::MATCH => true,
            other => other == acl.pattern_type.code(),
        };
        if !pattern_ok {
            return false;
        }
        if let Some(name) = &self.resource_name {
            let name_ok = if self.pattern_type == code::MATCH {
                match acl.pattern_type {
                    PatternType::Literal => {
                        acl.resource_name == *name || acl.resource_name == WILDCARD
                    }
                    PatternType::Prefixed => name.starts_with(&acl.resource_name),
                }
            } else {
                acl.resource_name == *name
            };
            if !name_ok {
                return false;
            }
        }
        self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.host.as_ref().is_none_or(|h| *h == acl.host)
            && (self.operation == code::ANY || self.operation == acl.operation.code())
            && (self.permission == code::ANY || self.permission == acl.permission.code())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Acls {
    acls: Vec<AclBinding>,
}

/// The ACLs, in memory and in `acls.json`.
pub struct AclStore {
    document: Document<Acls>,
}

impl std::fmt::Debug for AclStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclStore")
            .field("acls", &self.document.get().acls.len())
            .finish()
    }
}

impl AclStore {
    pub fn open(data_dir: &Path) -> Result<Arc<AclStore>, AuthError> {
        let path = data_dir.join(ACLS_FILE);
        let document = Document::open(DocumentKind::Acls, Some(path), Acls::default, false)?;
        Ok(Arc::new(AclStore { document }))
    }

    pub fn in_memory() -> Arc<AclStore> {
        let document = Document::open(DocumentKind::Acls, None, Acls::default, false)
            .unwrap_or_else(|_| unreachable!("a store in memory reads and writes no file"));
        Arc::new(AclStore { document })
    }

    /// The store as the cluster replicates it.
    pub fn replicated(&self) -> &dyn ReplicatedDocument {
        &self.document
    }

    fn acls(&self) -> Arc<Acls> {
        self.document.get()
    }

    pub fn all(&self) -> Vec<AclBinding> {
        self.acls().acls.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.acls().acls.is_empty()
    }

    /// Adds ACLs (an existing one is not duplicated).
    pub async fn create(&self, bindings: &[AclBinding]) -> Result<(), AuthError> {
        self.document
            .change(|document: &mut Acls| {
                for binding in bindings {
                    if !document.acls.contains(binding) {
                        document.acls.push(binding.clone());
                    }
                }
                Ok::<_, AuthError>(())
            })
            .await
    }

    pub fn describe(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.acls()
            .acls
            .iter()
            .filter(|acl| filter.matches(acl))
            .cloned()
            .collect()
    }

    /// Deletes what each filter matches; returns, per filter, the ACLs it deleted.
    pub async fn delete(&self, filters: &[AclFilter]) -> Result<Vec<Vec<AclBinding>>, AuthError> {
        self.document
            .change(|document: &mut Acls| {
                let matched: Vec<Vec<AclBinding>> = filters
                    .iter()
                    .map(|filter| {
                        document
                            .acls
                            .iter()
                            .filter(|acl| filter.matches(acl))
                            .cloned()
                            .collect()
                    })
                    .collect();
                document
                    .acls
                    .retain(|acl| !filters.iter().any(|filter| filter.matches(acl)));
                Ok::<_, AuthError>(matched)
            })
            .await
    }
}

/// Decides whether a principal may do something to a resource.
#[derive(Debug, Clone)]
pub struct Authorizer {
    acls: Arc<AclStore>,
    super_users: Arc<Vec<String>>,
    allow_everyone_if_no_acl_found: bool,
}

impl Authorizer {
    pub fn new(
        acls: Arc<AclStore>,
        super_users: Vec<String>,
        allow_everyone_if_no_acl_found: bool,
    ) -> Authorizer {
        Authorizer {
            acls,
            super_users: Arc::new(super_users),
            allow_everyone_if_no_acl_found,
        }
    }

    /// Everyone may do everything unless an ACL says otherwise (tests, embedded use).
    pub fn open_by_default() -> Authorizer {
        Authorizer::new(AclStore::in_memory(), Vec::new(), true)
    }

    pub fn store(&self) -> &Arc<AclStore> {
        &self.acls
    }

    pub fn is_super_user(&self, principal: &str) -> bool {
        self.super_users.iter().any(|s| s == principal)
    }

    /// Whether every request of every principal is allowed: no ACL exists, and
    /// `allow.everyone.if.no.acl.found` is on.
    pub fn allows_everyone(&self) -> bool {
        self.allow_everyone_if_no_acl_found && self.acls.is_empty()
    }

    /// Whether the principal may do `operation` on some resource of the type (Kafka's
    /// authorizeByResourceType, used for an idempotent producer's WRITE on "any topic"): an
    /// ALLOW for it exists and no DENY covers every name, or no ACL names the type at all and
    /// everyone is allowed.
    pub fn allows_any(
        &self,
        principal: &str,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        if self.is_super_user(principal) {
            return true;
        }
        let acls = self.acls.acls();
        let of_type: Vec<&AclBinding> = acls
            .acls
            .iter()
            .filter(|acl| acl.resource_type == resource_type && acl.applies_to(principal, host))
            .collect();
        let denied_everywhere = of_type.iter().any(|acl| {
            acl.permission == Permission::Deny
                && (acl.operation == operation || acl.operation == Operation::All)
                && ((acl.pattern_type == PatternType::Literal && acl.resource_name == WILDCARD)
                    || (acl.pattern_type == PatternType::Prefixed && acl.resource_name.is_empty()))
        });
        if denied_everywhere {
            return false;
        }
        let allowed = of_type
            .iter()
            .any(|acl| acl.permission == Permission::Allow && acl.operation.implies(operation));
        allowed
            || (self.allow_everyone_if_no_acl_found
                && !acls
                    .acls
                    .iter()
                    .any(|acl| acl.resource_type == resource_type))
    }

    /// `super_user` is for principals the caller knows to be super users beyond the
    /// configured list (an administrator-tagged user).
    pub fn authorize(
        &self,
        principal: &str,
        super_user: bool,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if super_user || self.is_super_user(principal) {
            return true;
        }
        let acls = self.acls.acls();
        let mut any_for_resource = false;
        let mut allowed = false;
        for acl in acls
            .acls
            .iter()
            .filter(|acl| acl.covers(resource_type, name))
        {
            any_for_resource = true;
            if !acl.applies_to(principal, host) {
                continue;
            }
            match acl.permission {
                Permission::Deny
                    if acl.operation == operation || acl.operation == Operation::All =>
                {
                    return false
                }
                Permission::Allow if acl.operation.implies(operation) => allowed = true,
                _ => {}
            }
        }
        allowed || (!any_for_resource && self.allow_everyone_if_no_acl_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        resource_type: ResourceType,
        name: &str,
        pattern: PatternType,
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    #[tokio::test]
    async fn deny_wins_allow_implies_describe_and_no_acl_follows_the_setting() {
        let store = AclStore::in_memory();
        store
            .create(&[
                acl(
                    ResourceType::Topic,
                    "orders",
                    PatternType::Literal,
                    "User:alice",
                    Operation::Read,
                    Permission::Allow,
                ),
                acl(
                    ResourceType::Topic,
                    "pay-",
                    PatternType::Prefixed,
                    "User:*",
                    Operation::Write,
                    Permission::Allow,
                ),
                acl(
                    ResourceType::Topic,
                    "pay-secret",
                    PatternType::Literal,
                    "User:bob",
                    Operation::All,
                    Permission::Deny,
                ),
            ])
            .await
            .unwrap();
        let closed = Authorizer::new(Arc::clone(&store), vec!["User:admin".into()], false);
        let open = Authorizer::new(Arc::clone(&store), vec![], true);
        let check = |a: &Authorizer, who: &str, op, name: &str| {
            a.authorize(who, false, "10.0.0.1", op, ResourceType::Topic, name)
        };
        assert!(check(&closed, "User:alice", Operation::Read, "orders"));
        assert!(check(&closed, "User:alice", Operation::Describe, "orders"));
        assert!(!check(&closed, "User:alice", Operation::Write, "orders"));
        assert!(!check(&closed, "User:bob", Operation::Read, "orders"));
        assert!(check(&closed, "User:bob", Operation::Write, "pay-in"));
        assert!(!check(&closed, "User:bob", Operation::Write, "pay-secret"));
        assert!(check(&closed, "User:carol", Operation::Write, "pay-secret"));
        assert!(!check(&closed, "User:carol", Operation::Read, "unnamed"));
        assert!(check(&open, "User:carol", Operation::Read, "unnamed"));
        assert!(
            !check(&open, "User:carol", Operation::Read, "orders"),
            "an ACL names it"
        );
        assert!(check(&closed, "User:admin", Operation::Delete, "orders"));
    }

    #[tokio::test]
    async fn filters_match_as_kafka_matches_them() {
        let store = AclStore::in_memory();
        let literal = acl(
            ResourceType::Topic,
            "topic",
            PatternType::Literal,
            "User:test",
            Operation::Read,
            Permission::Allow,
        );
        let prefixed = acl(
            ResourceType::Topic,
            "to",
            PatternType::Prefixed,
            "User:test",
            Operation::Write,
            Permission::Allow,
        );
        let wildcard = acl(
            ResourceType::Topic,
            "*",
            PatternType::Literal,
            "User:x",
            Operation::Read,
            Permission::Allow,
        );
        store
            .create(&[
                literal.clone(),
                prefixed.clone(),
                wildcard.clone(),
                literal.clone(),
            ])
            .await
            .unwrap();
        assert_eq!(store.all().len(), 3, "no duplicate");
        let filter = |name: Option<&str>, pattern: i8| AclFilter {
            resource_type: ResourceType::Topic.code(),
            resource_name: name.map(String::from),
            pattern_type: pattern,
            principal: None,
            host: Some("*".into()),
            operation: code::ANY,
            permission: code::ANY,
        };
        assert_eq!(
            store.describe(&filter(Some("topic"), code::LITERAL)),
            vec![literal.clone()]
        );
        assert_eq!(store.describe(&filter(Some("topic"), code::MATCH)).len(), 3);
        assert_eq!(store.describe(&filter(None, code::ANY)).len(), 3);
        assert_eq!(
            store.describe(&filter(Some("to"), code::PREFIXED)),
            vec![prefixed]
        );
        let deleted = store
            .delete(&[filter(Some("topic"), code::LITERAL)])
            .await
            .unwrap();
        assert_eq!(deleted, vec![vec![literal]]);
        assert_eq!(store.all().len(), 2);
    }

    #[tokio::test]
    async fn creation_refuses_what_kafka_refuses() {
        assert!(AclBinding::from_codes(1, "t", 3, "User:a", "*", 3, 3).is_err());
        assert!(AclBinding::from_codes(2, "t", 2, "User:a", "*", 3, 3).is_err());
        assert!(AclBinding::from_codes(2, "t", 3, "nocolon", "*", 3, 3).is_err());
        assert!(AclBinding::from_codes(2, "t", 3, "User:a", "*", 1, 3).is_err());
        assert!(AclBinding::from_codes(4, "other", 3, "User:a", "*", 7, 3).is_err());
        assert!(AclBinding::from_codes(4, "kafka-cluster", 3, "User:a", "*", 7, 3).is_ok());
    }

    #[tokio::test]
    async fn acls_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = AclStore::open(dir.path()).unwrap();
        let one = acl(
            ResourceType::Group,
            "g",
            PatternType::Literal,
            "User:a",
            Operation::Read,
            Permission::Allow,
        );
        store.create(std::slice::from_ref(&one)).await.unwrap();
        drop(store);
        assert_eq!(AclStore::open(dir.path()).unwrap().all(), vec![one]);
    }
}
