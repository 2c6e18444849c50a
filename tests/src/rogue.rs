//! A program holding a worker's certificate that speaks the worker protocol itself: what a team
//! that owns a worker machine can do with it, whatever it runs.

use std::time::Duration;

use manifold_proto::v1;

use crate::TestFarm;

/// An attached rogue worker; it heartbeats until dropped.
pub struct RogueWorker {
    to_farm: futures::channel::mpsc::UnboundedSender<v1::WorkerMessage>,
    from_farm: tonic::Streaming<v1::CoordinatorMessage>,
}

impl RogueWorker {
    /// Attaches with worker `name`'s certificate as a native worker of `platform` with one slot,
    /// heartbeating every 2 s.
    pub async fn attach(
        farm: &TestFarm,
        name: &str,
        platform: v1::Platform,
    ) -> anyhow::Result<Self> {
        use v1::worker_message::Msg;
        let (to_farm, rx) = futures::channel::mpsc::unbounded();
        let hello = v1::WorkerHello {
            name: name.to_owned(),
            platforms: vec![platform],
            slots: 1,
            docker_version: "26.1.5".into(),
            ..Default::default()
        };
        to_farm.unbounded_send(v1::WorkerMessage {
            msg: Some(Msg::Hello(hello)),
        })?;
        let beat = to_farm.clone();
        tokio::spawn(async move {
            let heartbeat = || v1::WorkerMessage {
                msg: Some(Msg::Heartbeat(v1::Heartbeat::default())),
            };
            while beat.unbounded_send(heartbeat()).is_ok() {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let mut c = v1::workers_client::WorkersClient::new(farm.worker_channel(name).await?);
        let from_farm = c.attach(rx).await?.into_inner();
        Ok(Self { to_farm, from_farm })
    }

    /// The next assignment (skipping other messages); fails after 60 s.
    pub async fn assignment(&mut self) -> anyhow::Result<v1::AssignJob> {
        self.assignment_within(Duration::from_secs(60))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no assignment reached the rogue within 60 s"))
    }

    /// The next assignment if one comes within `timeout`.
    pub async fn assignment_within(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<v1::AssignJob>> {
        use v1::coordinator_message::Msg;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.from_farm.message()).await {
                Err(_) => return Ok(None),
                Ok(m) => m?,
            };
            let m =
                m.ok_or_else(|| anyhow::anyhow!("the coordinator closed the rogue's stream"))?;
            if let Some(Msg::Assign(a)) = m.msg {
                return Ok(Some(a));
            }
        }
    }

    /// Sends `msg` to the coordinator.
    pub fn send(&self, msg: v1::worker_message::Msg) -> anyhow::Result<()> {
        Ok(self
            .to_farm
            .unbounded_send(v1::WorkerMessage { msg: Some(msg) })?)
    }
}
