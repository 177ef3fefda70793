//! The local gobgpd, driven through its gRPC API (v3): add a path for a prefix,
//! withdraw it, and list which of ours its table holds, so that what should be
//! announced can be compared with what is — after gobgpd restarts, for instance.
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use faultline_proto::gobgp::{
    self as api, AddPathRequest, DeletePathRequest, Family, IpAddressPrefix, ListPathRequest,
    MpReachNlriAttribute, NextHopAttribute, OriginAttribute, Path, TableLookupPrefix, TableType,
    family::Afi, family::Safi, gobgp_api_client::GobgpApiClient, table_lookup_prefix,
};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use super::config::{GobgpTarget, Prefix};

/// How long one call may take: gobgpd answers in milliseconds; a hung one must not hold
/// the announcer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Gobgp {
    target: GobgpTarget,
    client: Option<GobgpApiClient<Channel>>,
}

fn any<M: Message>(name: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/apipb.{name}"),
        value: m.encode_to_vec(),
    }
}

fn family(p: Prefix) -> Family {
    Family {
        afi: if p.addr.is_ipv4() { Afi::Ip } else { Afi::Ip6 } as i32,
        safi: Safi::Unicast as i32,
    }
}

fn nlri(p: Prefix) -> prost_types::Any {
    any(
        "IPAddressPrefix",
        &IpAddressPrefix {
            prefix_len: u32::from(p.len),
            prefix: p.addr.to_string(),
        },
    )
}

impl Gobgp {
    pub(super) fn new(target: GobgpTarget) -> Self {
        Self {
            target,
            client: None,
        }
    }

    pub(super) fn endpoint(&self) -> &str {
        &self.target.endpoint
    }

    async fn client(&mut self) -> Result<GobgpApiClient<Channel>, tonic::Status> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(self.target.endpoint.clone())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
        let client = GobgpApiClient::new(channel);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Forgets the connection after a failed call: the next call connects afresh.
    fn failed<T>(&mut self, r: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
        if r.is_err() {
            self.client = None;
        }
        r
    }

    /// The path announcing `p`: origin IGP, and the configured next hop (unspecified:
    /// gobgpd puts its own address on the session).
    fn path(&self, p: Prefix) -> Path {
        let origin = any("OriginAttribute", &OriginAttribute { origin: 0 });
        let hop = match p.addr {
            IpAddr::V4(_) => any(
                "NextHopAttribute",
                &NextHopAttribute {
                    next_hop: self.target.next_hop_v4.to_string(),
                },
            ),
            IpAddr::V6(_) => any(
                "MpReachNLRIAttribute",
                &MpReachNlriAttribute {
                    family: Some(family(p)),
                    next_hops: vec![self.target.next_hop_v6.to_string()],
                    nlris: vec![nlri(p)],
                },
            ),
        };
        Path {
            nlri: Some(nlri(p)),
            pattrs: vec![origin, hop],
            family: Some(family(p)),
            ..Path::default()
        }
    }

    pub(super) async fn announce(&mut self, p: Prefix) -> Result<(), tonic::Status> {
        let request = AddPathRequest {
            table_type: TableType::Global as i32,
            path: Some(self.path(p)),
            ..AddPathRequest::default()
        };
        let r = async { self.client().await?.add_path(request).await.map(drop) }.await;
        self.failed(r)
    }

    pub(super) async fn withdraw(&mut self, p: Prefix) -> Result<(), tonic::Status> {
        let request = DeletePathRequest {
            table_type: TableType::Global as i32,
            family: Some(family(p)),
            path: Some(Path {
                nlri: Some(nlri(p)),
                family: Some(family(p)),
                is_withdraw: true,
                ..Path::default()
            }),
            ..DeletePathRequest::default()
        };
        let r = async { self.client().await?.delete_path(request).await.map(drop) }.await;
        self.failed(r)
    }

    /// Which of `prefixes` gobgpd's global table holds a path for that was added
    /// here (through the API), not learned from a peer.
    pub(super) async fn announced(
        &mut self,
        prefixes: &BTreeSet<Prefix>,
    ) -> Result<BTreeSet<Prefix>, tonic::Status> {
        let r = self.list(prefixes).await;
        self.failed(r)
    }

    async fn list(
        &mut self,
        prefixes: &BTreeSet<Prefix>,
    ) -> Result<BTreeSet<Prefix>, tonic::Status> {
        let mut found = BTreeSet::new();
        for v4 in [true, false] {
            let wanted: Vec<Prefix> = prefixes
                .iter()
                .copied()
                .filter(|p| p.addr.is_ipv4() == v4)
                .collect();
            let Some(&first) = wanted.first() else {
                continue;
            };
            let request = ListPathRequest {
                table_type: TableType::Global as i32,
                family: Some(family(first)),
                prefixes: wanted
                    .iter()
                    .map(|p| TableLookupPrefix {
                        prefix: p.to_string(),
                        r#type: table_lookup_prefix::Type::Exact as i32,
                    })
                    .collect(),
                ..ListPathRequest::default()
            };
            let mut stream = self.client().await?.list_path(request).await?.into_inner();
            while let Some(item) = stream.message().await? {
                let Some(d) = item.destination else { continue };
                let ours = d.paths.iter().any(local);
                if let Ok(p) = d.prefix.parse::<Prefix>()
                    && ours
                    && wanted.contains(&p)
                {
                    found.insert(p);
                }
            }
        }
        Ok(found)
    }
}

/// A path added through the API: gobgpd names no neighbor for it.
fn local(p: &api::Path) -> bool {
    !p.is_from_external && (p.neighbor_ip.is_empty() || p.neighbor_ip == "<nil>")
}
