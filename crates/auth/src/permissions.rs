//! AMQP permissions as RabbitMQ checks them: per user and virtual host, three regular
//! expressions (configure, write, read) matched, unanchored, against a resource's name. An
//! empty pattern matches nothing; the default exchange is checked as `amq.default`.

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What an AMQP operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// One pattern, kept compiled.
#[derive(Debug, Clone)]
pub struct Pattern(Option<Regex>, String);

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        if source.is_empty() {
            return Ok(Pattern(None, String::new()));
        }
        Ok(Pattern(Some(Regex::new(source)?), source.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.1
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.as_ref().is_some_and(|regex| regex.is_match(name))
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.1 == other.1
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.1)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

/// A user's permissions on one virtual host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostPermissions {
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl VhostPermissions {
    /// `.*` for all three.
    pub fn full() -> VhostPermissions {
        let all = Pattern(Regex::new(".*").ok(), ".*".to_string());
        VhostPermissions {
            configure: all.clone(),
            write: all.clone(),
            read: all,
        }
    }

    pub fn new(configure: &str, write: &str, read: &str) -> Result<VhostPermissions, regex::Error> {
        Ok(VhostPermissions {
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    /// Whether `access` to the exchange or queue `name` is allowed.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        // RabbitMQ checks the default exchange under this name.
        let name = if name.is_empty() { "amq.default" } else { name };
        match access {
            Access::Configure => self.configure.matches(name),
            Access::Write => self.write.matches(name),
            Access::Read => self.read.matches(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_rabbitmq_matches_them() {
        let permissions = VhostPermissions::new("^app-", "", "log").unwrap();
        assert!(permissions.allows(Access::Configure, "app-orders"));
        assert!(!permissions.allows(Access::Configure, "my-app-orders"));
        assert!(
            !permissions.allows(Access::Write, "anything"),
            "empty matches nothing"
        );
        assert!(
            permissions.allows(Access::Read, "audit-log-1"),
            "unanchored"
        );
        let full = VhostPermissions::full();
        assert!(full.allows(Access::Write, ""));
        let default_only = VhostPermissions::new("", "^amq\\.default$", "").unwrap();
        assert!(default_only.allows(Access::Write, ""));
        assert!(VhostPermissions::new("(", "", "").is_err());
        let json = serde_json::to_string(&permissions).unwrap();
        let back: VhostPermissions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, permissions);
    }
}
