//! Turns at the API server: at most N ADDs and DELs of this node work against it at once, the
//! others wait in the order they came (tokio's semaphore is fair). A saturated API server
//! otherwise answers a crowd in any order, and some pods wait for nearly the whole burst.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::ServiceError;

/// How long a request waits for its turn: half the plugin's call timeout
/// (`spiderpool_cni::agent::CALL_TIMEOUT`), so that the turn it gets is still worth taking; past
/// it, the runtime is told to try again rather than the agent working for a plugin that gave up.
pub const TURN_WAIT: Duration = Duration::from_secs(30);

pub struct Turns {
    /// `None`: no limit.
    slots: Option<Semaphore>,
    wait: Duration,
}

impl Turns {
    /// `in_flight` requests at work at once (0: no limit), each waiting at most `wait` for its turn.
    pub fn new(in_flight: usize, wait: Duration) -> Turns {
        Turns {
            slots: (in_flight > 0).then(|| Semaphore::new(in_flight)),
            wait,
        }
    }

    /// A turn, held until dropped; `None` without a limit.
    pub async fn take(&self) -> Result<Option<SemaphorePermit<'_>>, ServiceError> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        match tokio::time::timeout(self.wait, slots.acquire()).await {
            Ok(permit) => Ok(permit.ok()),
            Err(_) => Err(ServiceError::NotYet(format!(
                "no turn at the API server within {} s: this node's agent is still busy with earlier IPAM requests",
                self.wait.as_secs()
            ))),
        }
    }
}
