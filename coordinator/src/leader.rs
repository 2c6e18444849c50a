//! Leader election on etcd: which coordinator schedules and writes.
//!
//! Each coordinator grants itself a lease, keeps it alive, and campaigns on `<prefix>/leader` with its
//! advertised address as the value (etcd's election: the candidate whose key has the lowest
//! create-revision leads). The winner restores the farm from the store and serves as leader; its
//! store is fenced with its leader key's create-revision, so once its lease is gone (it crashed, or
//! was paused past the lease) none of its writes land. It steps down when its lease cannot be
//! renewed or a write is fenced, and campaigns again. Followers observe the election to tell
//! clients where the leader is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Config;
use crate::api::Role;
use crate::contexts::ContextStore;
use crate::farm::Farm;
use crate::store::etcd::{EtcdStore, Fence, connect};

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct Election {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// Key prefix shared by the coordinators of one farm.
    pub prefix: String,
    /// Lease TTL: a leader silent this long loses the role.
    pub lease: Duration,
    /// This coordinator's address, as clients should dial it.
    pub advertise: String,
}

/// Campaigns, leads, steps down, campaigns again, until `shutdown`. `role` tells the API what
/// this coordinator is at every moment.
pub async fn run(
    config: Config,
    election: Election,
    contexts: ContextStore,
    role: watch::Sender<Role>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match term(&config, &election, &contexts, &role, &tasks, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(error = %e, "election round failed; retrying");
                role.send_replace(Role::Follower(None));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One round: campaign; if elected, lead until the lease or a write is lost.
async fn term(
    config: &Config,
    election: &Election,
    contexts: &ContextStore,
    role: &watch::Sender<Role>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // The campaign blocks until it wins: no request timeout on this client. The store's client
    // times out, so that an ambiguous write is retried through its compare.
    let mut client = connect(&election.endpoints, None).await?;
    let store_client = connect(&election.endpoints, Some(Duration::from_secs(5))).await?;
    let ttl = election.lease.as_secs().max(2) as i64;
    let lease = client.lease_grant(ttl, None).await?.id();
    let lease_lost = CancellationToken::new();
    let keeper = tasks.spawn(keep_alive(
        client.clone(),
        lease,
        election.lease,
        lease_lost.clone(),
    ));
    let observer = tasks.spawn(observe(
        client.clone(),
        leader_name(&election.prefix),
        role.clone(),
        lease_lost.clone(),
    ));
    let result = lead(
        config,
        election,
        contexts,
        role,
        tasks,
        shutdown,
        &mut client,
        store_client,
        lease,
        &lease_lost,
    )
    .await;
    observer.abort();
    keeper.abort();
    role.send_replace(Role::Follower(None));
    // Best effort: let the others take over at once instead of after the lease.
    let _ = client.lease_revoke(lease).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn lead(
    config: &Config,
    election: &Election,
    contexts: &ContextStore,
    role: &watch::Sender<Role>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    client: &mut Client,
    store_client: Client,
    lease: i64,
    lease_lost: &CancellationToken,
) -> anyhow::Result<()> {
    let won = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = lease_lost.cancelled() => anyhow::bail!("lost the lease while campaigning"),
        won = client.campaign(leader_name(&election.prefix), election.advertise.clone(), lease) => won?,
    };
    let leader = won
        .leader()
        .ok_or_else(|| anyhow::anyhow!("etcd answered the campaign without a leader key"))?;
    let elected = Instant::now();
    let fence = Fence {
        key: leader.key().to_vec(),
        revision: leader.rev(),
    };
    let store = Arc::new(EtcdStore::new(store_client, &election.prefix, Some(fence)));
    let term = CancellationToken::new();
    let farm = Farm::recover(
        config.farm.clone(),
        contexts.clone(),
        store,
        tasks.clone(),
        term.clone(),
    )
    .await?;
    tracing::info!(
        epoch = leader.rev(),
        restore_ms = elected.elapsed().as_millis() as u64,
        "elected leader; scheduling"
    );
    role.send_replace(Role::Leader(farm));
    tokio::select! {
        _ = shutdown.cancelled() => {
            term.cancel();
            let _ = client.resign(Some(etcd_client::ResignOptions::new().with_leader(leader.clone()))).await;
            Ok(())
        }
        _ = lease_lost.cancelled() => {
            term.cancel();
            tracing::warn!("leadership lease lost; stepping down");
            Ok(())
        }
        _ = term.cancelled() => {
            tracing::warn!("a write was fenced; stepped down");
            Ok(())
        }
    }
}

fn leader_name(prefix: &str) -> String {
    format!("{}/leader", prefix.trim_end_matches('/'))
}

/// Renews the lease every third of its TTL; cancels `lost` when etcd says the lease expired (as
/// after a long pause), or when no renewal succeeded for three TTLs (cut off from etcd). Safety does
/// not rest on this timer: every write is fenced in etcd itself; the timer only makes a cut-off
/// leader give up its role.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: CancellationToken) {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep the lease alive");
            lost.cancel();
            return;
        }
    };
    let mut last_renewed = Instant::now();
    let mut interval = tokio::time::interval(ttl / 3);
    loop {
        interval.tick().await;
        if last_renewed.elapsed() >= ttl * 3 {
            tracing::warn!(lease, "no lease renewal for three TTLs");
            lost.cancel();
            return;
        }
        if keeper.keep_alive().await.is_err() {
            continue;
        }
        match tokio::time::timeout(ttl / 3, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => last_renewed = Instant::now(),
            Ok(Ok(Some(_))) => {
                tracing::warn!(lease, "the lease has expired");
                lost.cancel();
                return;
            }
            _ => {}
        }
    }
}

/// Keeps the follower's idea of the leader's address current.
async fn observe(
    mut client: Client,
    name: String,
    role: watch::Sender<Role>,
    stop: CancellationToken,
) {
    let Ok(mut stream) = client.observe(name).await else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = stream.message() => m,
        };
        let Ok(Some(resp)) = msg else {
            return;
        };
        let Some(kv) = resp.kv() else { continue };
        let addr = String::from_utf8_lossy(kv.value()).into_owned();
        role.send_if_modified(|r| match r {
            Role::Follower(l) if l.as_deref() != Some(addr.as_str()) => {
                *l = Some(addr.clone());
                true
            }
            _ => false,
        });
    }
}
