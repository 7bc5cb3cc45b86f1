//! Group commit for the audit records of reads.
//!
//! A read answers only after its record is durable. Written one unit of work per read, every
//! read would pay for a unit of its own (on SQLite four statements on the one writer task, on
//! PostgreSQL a transaction commit). Instead, reads hand their records to one batcher, which
//! writes whatever has queued up in one unit with multi-row inserts and acknowledges them all
//! when it is durable. While one batch commits the next one fills: the busier the server, the
//! larger the batches. Nothing is acknowledged before its commit, so durability is unchanged.
//!
//! Runtime-agnostic: `AuditBatcher::new` returns the future that does the work; the binary
//! spawns it.

use std::sync::Arc;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt as _, StreamExt as _};
use haven_store::{AuditEntry, ResourceStore, StoreError, WriteTx, run_write};

/// Most records in one unit of work.
const MAX_BATCH: usize = 2_000;

type Ack = oneshot::Sender<Result<(), String>>;

/// The handle requests use to have a record made durable.
#[derive(Clone, Debug)]
pub struct AuditBatcher {
    jobs: mpsc::Sender<(AuditEntry, Ack)>,
}

impl AuditBatcher {
    /// The handle, and the future that writes the batches (run it on the runtime; it ends when
    /// every handle has been dropped and the queue is empty).
    pub fn new(
        store: Arc<dyn ResourceStore>,
        queue: usize,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(queue);
        (Self { jobs: tx }, run(store, rx))
    }

    /// Makes `entry` durable; returns once its batch has committed.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.jobs
            .clone()
            .send((entry, ack))
            .await
            .map_err(|_| StoreError::Unavailable("the audit writer has stopped".into()))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Unavailable(message)),
            Err(_) => Err(StoreError::Unavailable(
                "the audit writer stopped before answering".into(),
            )),
        }
    }
}

/// Batches being written at once. More than one: while one waits for its disk sync, the next
/// can be on its way (on SQLite the writer then commits them together; on PostgreSQL their
/// commits overlap), so a read waits for at most about one sync, not for the one before too.
const IN_FLIGHT: usize = 4;

async fn run(store: Arc<dyn ResourceStore>, mut rx: mpsc::Receiver<(AuditEntry, Ack)>) {
    use futures::stream::FuturesUnordered;
    let mut writing = FuturesUnordered::new();
    loop {
        if writing.len() >= IN_FLIGHT {
            writing.next().await;
            continue;
        }
        futures::select! {
            job = rx.next() => {
                let Some(first) = job else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                writing.push(write(store.clone(), batch));
            }
            () = writing.select_next_some() => {}
        }
    }
    while writing.next().await.is_some() {}
}

/// Writes one batch as one unit of work and answers every record of it.
async fn write(store: Arc<dyn ResourceStore>, batch: Vec<(AuditEntry, Ack)>) {
    let (entries, acks): (Vec<AuditEntry>, Vec<Ack>) = batch.into_iter().unzip();
    let result = run_write(store.as_ref(), move |tx: &mut dyn WriteTx| {
        Box::pin(async move { tx.audit_many(entries).await })
    })
    .await
    .map_err(|e| e.to_string());
    for ack in acks {
        let _ = ack.send(result.clone());
    }
}
