//! One module per family of Kafka APIs. Each handler takes the decoded request and its version
//! and returns the response; the connection encodes it at the same version.

pub mod acls;
pub mod client_quotas;
pub mod cluster;
pub mod cluster_admin;
pub mod configs;
pub mod consumer_groups;
pub mod delete_records;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod producer_id;
pub mod producers;
pub mod reassignments;
pub mod scram_credentials;
pub mod share_groups;
pub mod topics;
pub mod transactions;
