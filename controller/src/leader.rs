//! Leader election on a `coordination.k8s.io/v1` Lease: the holder renews it; another replica
//! takes it over only after it expired, with the Lease's resourceVersion guarding every write so
//! two replicas can never both win one round.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration_secs: i32,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration_secs: i32) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration_secs,
        }
    }

    /// One round: `Ok(true)` when this replica holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(d)) => renewed.0.as_second() + i64::from(d) < now.0.as_second(),
            _ => true,
        };
        if !mine && !expired {
            return Ok(false);
        }
        let mut next = spec;
        if !mine {
            tracing::info!(lease = %lease.name_any(), from = ?next.holder_identity, to = %self.identity, "taking over the expired lease");
            next.holder_identity = Some(self.identity.clone());
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.renew_time = Some(now);
        next.lease_duration_seconds = Some(self.duration_secs);
        lease.spec = Some(next);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether this replica leads, shared by the loops that act only while it does. A loop also waits
/// on [`LeaderWatch::gained`], so it acts as soon as leadership comes, not at its next period
/// (an object created just before then would otherwise wait a whole period).
#[derive(Clone)]
pub struct Leadership {
    tx: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership {
            tx: std::sync::Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl Leadership {
    pub fn set(&self, leading: bool) {
        self.tx
            .send_if_modified(|now| std::mem::replace(now, leading) != leading);
    }

    pub fn leading(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn watch(&self) -> LeaderWatch {
        LeaderWatch {
            rx: self.tx.subscribe(),
        }
    }
}

pub struct LeaderWatch {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl LeaderWatch {
    /// Returns when this replica becomes the leader (at once if it did since the last call).
    pub async fn gained(&mut self) {
        loop {
            if self.rx.changed().await.is_err() {
                // The process is ending; nothing will change any more.
                std::future::pending::<()>().await;
            }
            if *self.rx.borrow_and_update() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_wakes_when_leadership_is_gained_not_when_lost() {
        let leadership = Leadership::default();
        let mut watch = leadership.watch();
        leadership.set(true);
        leadership.set(true);
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.gained())
            .await
            .expect("woken on gaining");
        assert!(leadership.leading());
        leadership.set(false);
        let lost = tokio::time::timeout(std::time::Duration::from_millis(50), watch.gained()).await;
        assert!(lost.is_err(), "losing leadership must not wake the loop");
        leadership.set(true);
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.gained())
            .await
            .expect("woken on gaining again");
    }
}
