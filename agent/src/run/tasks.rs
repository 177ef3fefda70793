//! The agent's background tasks (gRPC server, metrics server, peer followers), kept by
//! name so that one that ends or panics is named when the agent stops because of it.
use std::{
    collections::{HashMap, HashSet},
    future::Future,
};

use tokio::task::{AbortHandle, Id, JoinSet};

/// How a task ended: `Ok` when it returned normally, `Err` with why otherwise.
pub(super) type Outcome = Result<(), String>;

#[derive(Default)]
pub(super) struct Tasks {
    set: JoinSet<Outcome>,
    names: HashMap<Id, (String, AbortHandle)>,
    /// Stopped on purpose (a reload replacing peer followers): their end is no news.
    stopped: HashSet<Id>,
}

impl Tasks {
    pub(super) fn spawn(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = Outcome> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), (name.into(), handle));
    }

    /// Stops every task whose name starts with `prefix`; their ends are not reported.
    pub(super) fn stop_named(&mut self, prefix: &str) -> usize {
        let mut n = 0;
        for (id, (name, handle)) in &self.names {
            if name.starts_with(prefix) {
                handle.abort();
                self.stopped.insert(*id);
                n += 1;
            }
        }
        n
    }

    /// The next task to end, by name, and how; None once none is left.
    pub(super) async fn next_end(&mut self) -> Option<(String, Outcome)> {
        loop {
            let (id, outcome) = self.join_next().await?;
            let name = self
                .names
                .remove(&id)
                .map_or_else(|| "a task".to_owned(), |(name, _)| name);
            if !self.stopped.remove(&id) {
                return Some((name, outcome));
            }
        }
    }

    async fn join_next(&mut self) -> Option<(Id, Outcome)> {
        let (id, outcome) = match self.set.join_next_with_id().await? {
            Ok((id, outcome)) => (id, outcome),
            Err(e) if e.is_panic() => (
                e.id(),
                Err(format!(
                    "panicked: {}",
                    panic_message(e.into_panic().as_ref())
                )),
            ),
            Err(e) => (e.id(), Err("cancelled".to_owned())),
        };
        Some((id, outcome))
    }

    /// Aborts every task still running and waits until they are gone.
    pub(super) async fn abort_all(&mut self) {
        self.set.shutdown().await;
        self.names.clear();
        self.stopped.clear();
    }
}

/// The text a panic was raised with, if it was a string.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".to_owned())
}
