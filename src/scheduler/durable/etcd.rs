//! The etcd state store, with leader election: several schedulers share one etcd prefix,
//! one of them holds the leadership (an etcd election on a lease) and is active, the
//! others wait in [`EtcdStore::open`] until its lease expires.
//!
//! Every write is a transaction that only succeeds while this scheduler's election key
//! is still the one it created: a scheduler that lost its lease (stopped, or cut off from
//! etcd) cannot overwrite what the new leader writes.

use std::time::Duration;

use prost::Message;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use super::{Change, StateError, StateStore, Stored};
use crate::proto::{StoredQuery, StoredTask};
use wire::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use wire::etcdserverpb::kv_client::KvClient;
use wire::etcdserverpb::lease_client::LeaseClient;
use wire::etcdserverpb::request_op::Request;
use wire::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use wire::v3electionpb::election_client::ElectionClient;
use wire::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest};

/// The parts of etcd's v3 API the store speaks (`proto/etcd/`).
#[allow(missing_docs, clippy::all)]
mod wire {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

/// Operations in one transaction at most (etcd's default limit is 128).
const MAX_TXN_OPS: usize = 100;

/// Bytes of values in one transaction at most (etcd's default request limit is 1.5 MiB).
const MAX_TXN_BYTES: usize = 1 << 20;

/// How long one write transaction may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys read per request when loading.
const PAGE: i64 = 500;

/// Where in etcd a scheduler keeps its state: `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdLocation {
    /// The etcd endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix of this cluster's state (several clusters may share one etcd).
    pub prefix: String,
}

impl std::str::FromStr for EtcdLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{s:?} is no etcd URL (etcd://HOST:PORT/PREFIX)"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, "baton"));
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        let prefix = prefix.trim_matches('/');
        if endpoints.is_empty() {
            return Err(format!("{s:?} names no etcd endpoint"));
        }
        Ok(Self {
            endpoints,
            prefix: if prefix.is_empty() { "baton" } else { prefix }.to_string(),
        })
    }
}

impl std::fmt::Display for EtcdLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}/{}", self.endpoints.join(","), self.prefix)
    }
}

/// What a leader knows of its leadership.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// Turns true when the lease was lost: the scheduler must stop.
    pub lost: watch::Receiver<bool>,
}

/// The state in etcd, written while this scheduler leads.
pub struct EtcdStore {
    kv: KvClient<Channel>,
    location: EtcdLocation,
    leader: LeaderKey,
    /// The journal thread writes through this runtime.
    runtime: Handle,
    /// What [`Self::open`] read once elected.
    loaded: Option<Stored>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("location", &self.location.to_string())
            .finish_non_exhaustive()
    }
}

fn etcd_error(location: &EtcdLocation, e: impl std::fmt::Display) -> StateError {
    StateError::Etcd {
        location: location.to_string(),
        message: e.to_string(),
    }
}

impl EtcdStore {
    /// Connects, campaigns with `address` (where this scheduler serves) on a lease of
    /// `lease` and waits until elected (a standby waits here while another leads),
    /// then reads the state. The lease is kept alive from then on; when that fails, the
    /// returned [`Leadership`] says so.
    /// While it waits, `active` follows where the scheduler that leads serves.
    pub async fn open(
        location: &EtcdLocation,
        address: &str,
        lease: Duration,
        active: &watch::Sender<Option<String>>,
    ) -> Result<(Self, Leadership), StateError> {
        let failed = |e: tonic::Status| etcd_error(location, e.message());
        let channel = connect(location).await?;
        let kv = KvClient::new(channel.clone());
        let mut leases = LeaseClient::new(channel.clone());
        let election = ElectionClient::new(channel);
        let ttl = lease.as_secs().max(2) as i64;
        let granted = leases
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .map_err(failed)?
            .into_inner();
        if !granted.error.is_empty() {
            return Err(etcd_error(location, granted.error));
        }
        let (lost_tx, lost) = watch::channel(false);
        keep_alive(leases, granted.id, ttl, lost_tx, location.clone()).await?;
        let name = election_name(location).into_bytes();
        let mut campaigning = election.clone();
        let campaign = campaigning.campaign(CampaignRequest {
            name: name.clone(),
            lease: granted.id,
            value: address.as_bytes().to_vec(),
        });
        let campaign = tokio::select! {
            campaign = campaign => campaign.map_err(failed)?.into_inner(),
            never = watch_leader(election, name, ttl, address, active) => match never {},
        };
        let leader = campaign
            .leader
            .ok_or_else(|| etcd_error(location, "the election answered no leader key"))?;
        active.send_replace(Some(address.to_string()));
        metrics::gauge!("baton_scheduler_leader").set(1.0);
        metrics::counter!("baton_scheduler_elections_won_total").increment(1);
        info!(%location, address, "elected: this scheduler is active");
        let mut store = Self {
            kv,
            location: location.clone(),
            leader,
            runtime: Handle::current(),
            loaded: None,
        };
        store.loaded = Some(store.read().await?);
        Ok((store, Leadership { lost }))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.location.prefix)
    }

    /// Every value under `prefix`, page by page.
    async fn values_under(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut values = Vec::new();
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let request = RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
            };
            let page = self
                .kv
                .range(request)
                .await
                .map_err(|e| etcd_error(&self.location, e.message()))?
                .into_inner();
            for kv in &page.kvs {
                values.push((
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.value.clone(),
                ));
            }
            match (page.more, page.kvs.last()) {
                (true, Some(last)) => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(values),
            }
        }
    }

    async fn read(&mut self) -> Result<Stored, StateError> {
        let mut stored = Stored::default();
        for (key, value) in self.values_under(&self.key("queries/")).await? {
            let query = StoredQuery::decode(value.as_slice())
                .map_err(|source| StateError::Corrupt { key, source })?;
            stored.queries.push(query);
        }
        stored.queries.sort_by_key(|q| q.seq);
        for (key, value) in self.values_under(&self.key("tasks/")).await? {
            let task = StoredTask::decode(value.as_slice())
                .map_err(|source| StateError::Corrupt { key, source })?;
            stored.tasks.push(task);
        }
        Ok(stored)
    }

    fn put(&self, key: String, value: Vec<u8>) -> (RequestOp, usize) {
        let len = value.len();
        let put = PutRequest {
            key: key.into_bytes(),
            value,
            lease: 0,
        };
        let op = RequestOp {
            request: Some(Request::RequestPut(put)),
        };
        (op, len)
    }

    /// Deletes `key`, or every key under it with `prefix`.
    fn delete(&self, key: String, prefix: bool) -> (RequestOp, usize) {
        let range_end = if prefix { prefix_end(&key) } else { Vec::new() };
        let delete = DeleteRangeRequest {
            key: key.into_bytes(),
            range_end,
        };
        let op = RequestOp {
            request: Some(Request::RequestDeleteRange(delete)),
        };
        (op, 0)
    }

    /// The operations of one change, with the bytes they write.
    fn ops(&self, change: &Change) -> Vec<(RequestOp, usize)> {
        match change {
            Change::PutQuery(query) => {
                let key = self.key(&format!("queries/{}", query.query_id));
                vec![self.put(key, query.encode_to_vec())]
            }
            Change::PutTask(task) => {
                let key = self.key(&format!(
                    "tasks/{}/{:08x}/{:08x}",
                    task.query_id, task.stage_id, task.partition
                ));
                vec![self.put(key, task.encode_to_vec())]
            }
            Change::DropTasks { query_id, stage_id } => {
                let key = self.key(&format!("tasks/{query_id}/{stage_id:08x}/"));
                vec![self.delete(key, true)]
            }
            Change::Forget(query_id) => vec![
                self.delete(self.key(&format!("tasks/{query_id}/")), true),
                self.delete(self.key(&format!("queries/{query_id}")), false),
            ],
        }
    }

    /// Writes the changes in transactions of bounded size, each only while this
    /// scheduler still leads.
    async fn write_guarded(&mut self, changes: &[Change]) -> Result<(), StateError> {
        let ops: Vec<(RequestOp, usize)> = changes.iter().flat_map(|c| self.ops(c)).collect();
        let mut batch = Batch::default();
        for (op, len) in ops {
            // etcd refuses a transaction that touches a key twice: the second write of a
            // key goes to the next one, which keeps the order.
            if !batch.ops.is_empty()
                && (batch.ops.len() >= MAX_TXN_OPS
                    || batch.bytes + len > MAX_TXN_BYTES
                    || batch.conflicts(&op))
            {
                self.commit(std::mem::take(&mut batch)).await?;
            }
            batch.add(op, len);
        }
        if !batch.ops.is_empty() {
            self.commit(batch).await?;
        }
        Ok(())
    }

    /// One transaction, applied only while the election key this scheduler created is
    /// still there.
    async fn commit(&mut self, batch: Batch) -> Result<(), StateError> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: self.leader.key.clone(),
                target_union: Some(TargetUnion::CreateRevision(self.leader.rev)),
            }],
            success: batch.ops,
            failure: Vec::new(),
        };
        let answer = tokio::time::timeout(WRITE_TIMEOUT, self.kv.txn(txn))
            .await
            .map_err(|_| etcd_error(&self.location, "etcd did not answer a write in time"))?
            .map_err(|e| etcd_error(&self.location, e.message()))?
            .into_inner();
        if !answer.succeeded {
            return Err(etcd_error(
                &self.location,
                "this scheduler no longer leads; another one is active",
            ));
        }
        Ok(())
    }
}

/// The operations of one transaction, and the keys they touch.
#[derive(Default)]
struct Batch {
    ops: Vec<RequestOp>,
    bytes: usize,
    /// Key ranges written or deleted, as [start, end) (end empty: the one key).
    touched: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The key range an operation touches.
fn range_of(op: &RequestOp) -> (Vec<u8>, Vec<u8>) {
    match &op.request {
        Some(Request::RequestPut(put)) => (put.key.clone(), Vec::new()),
        Some(Request::RequestDeleteRange(delete)) => (delete.key.clone(), delete.range_end.clone()),
        Some(Request::RequestRange(range)) => (range.key.clone(), range.range_end.clone()),
        None => (Vec::new(), Vec::new()),
    }
}

/// Whether two key ranges share a key.
fn overlap(a: &(Vec<u8>, Vec<u8>), b: &(Vec<u8>, Vec<u8>)) -> bool {
    let end = |r: &(Vec<u8>, Vec<u8>)| {
        if r.1.is_empty() {
            let mut next = r.0.clone();
            next.push(0);
            next
        } else {
            r.1.clone()
        }
    };
    a.0 < end(b) && b.0 < end(a)
}

impl Batch {
    fn conflicts(&self, op: &RequestOp) -> bool {
        let range = range_of(op);
        self.touched.iter().any(|t| overlap(t, &range))
    }

    fn add(&mut self, op: RequestOp, len: usize) {
        self.touched.push(range_of(&op));
        self.ops.push(op);
        self.bytes += len;
    }
}

impl StateStore for EtcdStore {
    fn load(&mut self) -> Result<Stored, StateError> {
        Ok(self.loaded.take().unwrap_or_default())
    }

    fn write(&mut self, changes: &[Change]) -> Result<(), StateError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.write_guarded(changes))
    }
}

/// Keeps `active` on the address of the scheduler that leads the election `name`,
/// asking etcd every half lease (`ttl` seconds); runs until dropped (a failed question
/// is asked again next time). `own` is where this scheduler serves.
async fn watch_leader(
    mut election: ElectionClient<Channel>,
    name: Vec<u8>,
    ttl: i64,
    own: &str,
    active: &watch::Sender<Option<String>>,
) -> std::convert::Infallible {
    let period = Duration::from_millis(ttl as u64 * 500);
    let mut reported = false;
    loop {
        if let Ok(current) = election.leader(LeaderRequest { name: name.clone() }).await {
            let leader = current
                .into_inner()
                .kv
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            if let Some(leader) = &leader
                && leader != own
                && !reported
            {
                info!(active = %leader, "standing by: another scheduler is active");
                metrics::gauge!("baton_scheduler_leader").set(0.0);
                reported = true;
            }
            active.send_replace(leader);
        }
        tokio::time::sleep(period).await;
    }
}

/// The election's name under the cluster's prefix.
fn election_name(location: &EtcdLocation) -> String {
    format!("{}/leader", location.prefix)
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A channel to the first of the location's endpoints that answers.
async fn connect(location: &EtcdLocation) -> Result<Channel, StateError> {
    let mut last = String::new();
    for endpoint in &location.endpoints {
        let url = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| etcd_error(location, e))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => last = e.to_string(),
        }
    }
    Err(etcd_error(location, format!("no endpoint answers: {last}")))
}

/// Keeps lease `id` alive every third of its `ttl`; when that fails or etcd says it
/// expired, `lost` turns true (the scheduler stops: another may lead by then).
async fn keep_alive(
    mut leases: LeaseClient<Channel>,
    id: i64,
    ttl: i64,
    lost: watch::Sender<bool>,
    location: EtcdLocation,
) -> Result<(), StateError> {
    let (requests, outgoing) = mpsc::channel(4);
    // etcd answers the call (its headers) with its first renewal: ask for one first.
    let _ = requests.send(LeaseKeepAliveRequest { id }).await;
    let mut answers = leases
        .lease_keep_alive(ReceiverStream::new(outgoing))
        .await
        .map_err(|e| etcd_error(&location, e.message()))?
        .into_inner();
    let every = Duration::from_millis((ttl as u64 * 1000 / 3).max(200));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            let alive = requests.send(LeaseKeepAliveRequest { id }).await.is_ok()
                && matches!(
                    tokio::time::timeout(every * 2, answers.message()).await,
                    Ok(Ok(Some(answer))) if answer.ttl > 0
                );
            if !alive {
                warn!(%location, "the scheduler's etcd lease was lost; it stops leading");
                metrics::gauge!("baton_scheduler_leader").set(0.0);
                lost.send_replace(true);
                return;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_name_endpoints_and_a_prefix() {
        let location: EtcdLocation = "etcd://10.0.0.1:2379,10.0.0.2:2379/prod/baton"
            .parse()
            .unwrap();
        assert_eq!(location.endpoints, vec!["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(location.prefix, "prod/baton");
        let bare: EtcdLocation = "etcd://127.0.0.1:2379".parse().unwrap();
        assert_eq!(bare.prefix, "baton");
        assert!("http://127.0.0.1:2379".parse::<EtcdLocation>().is_err());
        assert!("etcd:///x".parse::<EtcdLocation>().is_err());
    }

    #[test]
    fn a_key_written_twice_or_under_a_deleted_prefix_conflicts() {
        let key = |k: &str| (k.as_bytes().to_vec(), Vec::new());
        let prefix = |p: &str| (p.as_bytes().to_vec(), prefix_end(p));
        assert!(overlap(&key("a/1"), &key("a/1")));
        assert!(!overlap(&key("a/1"), &key("a/2")));
        assert!(overlap(&prefix("a/"), &key("a/1")));
        assert!(!overlap(&prefix("a/"), &key("b/1")));
        assert!(!overlap(&prefix("a/1/"), &key("a/1")));
    }

    #[test]
    fn a_prefix_range_ends_past_every_key_under_it() {
        assert_eq!(prefix_end("a/"), b"a0".to_vec());
        assert_eq!(prefix_end("ab"), b"ac".to_vec());
    }
}
