//! `--peers 1@10.0.0.1:9093,2@10.0.0.2:9093,3@10.0.0.3:9093`: every member of the cluster (this
//! node included) with its `--cluster-listen` address. The same list on every node bootstraps
//! the metadata group.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    pub cluster_addr: SocketAddr,
}

/// A parsed `--peers` list, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerList(Vec<Peer>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerListError {
    #[error("the peer list is empty")]
    Empty,
    #[error("peer `{0}` is not ID@IP:PORT")]
    MissingAt(String),
    #[error("peer `{0}`: the node id is not an unsigned integer")]
    BadNodeId(String),
    #[error("peer `{0}`: the address is not IP:PORT")]
    BadAddress(String),
    #[error("node id {0} appears twice")]
    DuplicateNodeId(NodeId),
    #[error("address {0} appears twice")]
    DuplicateAddress(SocketAddr),
    #[error("this node's id {0} is not in the peer list")]
    OwnIdMissing(NodeId),
    #[error(
        "this node listens on {listen} but the peer list gives node {node_id} the address {listed}"
    )]
    OwnAddressMismatch {
        node_id: NodeId,
        listen: SocketAddr,
        listed: SocketAddr,
    },
}

impl FromStr for PeerList {
    type Err = PeerListError;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut peers = Vec::new();
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for item in list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (id, addr) = item
                .split_once('@')
                .ok_or_else(|| PeerListError::MissingAt(item.to_string()))?;
            let node_id: NodeId = id
                .trim()
                .parse()
                .map_err(|_| PeerListError::BadNodeId(item.to_string()))?;
            let cluster_addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|_| PeerListError::BadAddress(item.to_string()))?;
            if !ids.insert(node_id) {
                return Err(PeerListError::DuplicateNodeId(node_id));
            }
            if !addrs.insert(cluster_addr) {
                return Err(PeerListError::DuplicateAddress(cluster_addr));
            }
            peers.push(Peer {
                node_id,
                cluster_addr,
            });
        }
        if peers.is_empty() {
            return Err(PeerListError::Empty);
        }
        Ok(Self(peers))
    }
}

impl PeerList {
    pub fn new(peers: Vec<Peer>) -> Result<Self, PeerListError> {
        let text: Vec<String> = peers
            .iter()
            .map(|p| format!("{}@{}", p.node_id, p.cluster_addr))
            .collect();
        text.join(",").parse()
    }

    pub fn peers(&self) -> &[Peer] {
        &self.0
    }

    /// Checks that `node_id` is a member, listening where the list says when `listen` has a
    /// specific IP (a wildcard listen address matches any listed IP on the same port).
    pub fn validate_for(
        &self,
        node_id: NodeId,
        listen: Option<SocketAddr>,
    ) -> Result<(), PeerListError> {
        let own = self
            .0
            .iter()
            .find(|p| p.node_id == node_id)
            .ok_or(PeerListError::OwnIdMissing(node_id))?;
        if let Some(listen) = listen {
            let port_differs = listen.port() != 0 && listen.port() != own.cluster_addr.port();
            let ip_differs = !listen.ip().is_unspecified() && listen.ip() != own.cluster_addr.ip();
            if port_differs || ip_differs {
                return Err(PeerListError::OwnAddressMismatch {
                    node_id,
                    listen,
                    listed: own.cluster_addr,
                });
            }
        }
        Ok(())
    }

    /// As `ClusterConfig::peers` wants them.
    pub fn to_vec(&self) -> Vec<(NodeId, SocketAddr)> {
        self.0.iter().map(|p| (p.node_id, p.cluster_addr)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let list: PeerList = "1@10.0.0.1:9093,2@10.0.0.2:9093, 3@[::1]:9093"
            .parse()
            .unwrap();
        assert_eq!(list.to_vec()[2], (3, "[::1]:9093".parse().unwrap()));
        assert_eq!(list.peers().len(), 3);
        assert!(list
            .validate_for(2, Some("10.0.0.2:9093".parse().unwrap()))
            .is_ok());
        assert!(list
            .validate_for(2, Some("0.0.0.0:9093".parse().unwrap()))
            .is_ok());
    }

    #[test]
    fn rejects_malformed_and_inconsistent_lists() {
        let err = |s: &str| s.parse::<PeerList>().unwrap_err();
        assert_eq!(err(""), PeerListError::Empty);
        assert!(matches!(err("10.0.0.1:9093"), PeerListError::MissingAt(_)));
        assert!(matches!(
            err("x@10.0.0.1:9093"),
            PeerListError::BadNodeId(_)
        ));
        assert!(matches!(err("1@host:9093"), PeerListError::BadAddress(_)));
        assert_eq!(
            err("1@10.0.0.1:1,1@10.0.0.2:1"),
            PeerListError::DuplicateNodeId(1)
        );
        assert!(matches!(
            err("1@10.0.0.1:1,2@10.0.0.1:1"),
            PeerListError::DuplicateAddress(_)
        ));
        let list: PeerList = "1@10.0.0.1:9093,2@10.0.0.2:9093".parse().unwrap();
        assert_eq!(
            list.validate_for(3, None),
            Err(PeerListError::OwnIdMissing(3))
        );
        assert!(matches!(
            list.validate_for(1, Some("10.0.0.1:9999".parse().unwrap())),
            Err(PeerListError::OwnAddressMismatch { .. })
        ));
    }
}
