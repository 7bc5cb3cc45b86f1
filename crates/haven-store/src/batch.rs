//! Group commit for records written outside any unit of work (reads' audit records).
//!
//! A read answers only after its record is durable. Written in a transaction of its own, every
//! read would pay for a commit (and its round trips) of its own. Instead, callers hand records
//! to one batcher, which writes whatever has queued up with one `write` call and acknowledges
//! them all when it returns. While one batch commits the next one fills: the busier the server,
//! the larger the batches. Nothing is acknowledged before `write` returns `Ok`, so durability
//! is whatever `write` guarantees.
//!
//! Runtime-agnostic: [`Batcher::new`] returns the future that does the work; the caller spawns
//! it. It ends when every handle has been dropped and the queue is empty.

use std::future::Future;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt as _, StreamExt as _};

use crate::StoreError;

type Ack = oneshot::Sender<Result<(), String>>;

/// The handle callers use to have a record made durable.
#[derive(Debug)]
pub struct Batcher<T> {
    jobs: mpsc::Sender<(T, Ack)>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

/// How a [`Batcher`] groups records.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Records waiting to be written before callers wait to hand theirs in.
    pub queue: usize,
    /// Most records in one `write` call.
    pub max_batch: usize,
    /// `write` calls running at once. One is classic group commit: the next batch is what came
    /// while the last one was written. More overlap commits (a record waits for about one, not
    /// for the one before it too) at the price of smaller batches.
    pub in_flight: usize,
}

impl<T: Send + 'static> Batcher<T> {
    /// The handle, and the future that writes the batches (spawn it).
    pub fn new<W, F>(
        write: W,
        limits: BatchLimits,
    ) -> (Self, impl Future<Output = ()> + Send + 'static)
    where
        W: Fn(Vec<T>) -> F + Send + 'static,
        F: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(limits.queue);
        (Self { jobs: tx }, run(write, rx, limits))
    }

    /// Hands `item` to the batcher; returns once the `write` that took it has returned.
    pub async fn submit(&self, item: T) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.jobs
            .clone()
            .send((item, ack))
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

async fn run<T, W, F>(write: W, mut rx: mpsc::Receiver<(T, Ack)>, limits: BatchLimits)
where
    W: Fn(Vec<T>) -> F,
    F: Future<Output = Result<(), StoreError>>,
{
    use futures::stream::FuturesUnordered;
    let mut writing = FuturesUnordered::new();
    loop {
        if writing.len() >= limits.in_flight.max(1) {
            writing.next().await;
            continue;
        }
        futures::select! {
            job = rx.next() => {
                let Some(first) = job else { break };
                let mut batch = vec![first];
                while batch.len() < limits.max_batch {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (items, acks): (Vec<T>, Vec<Ack>) = batch.into_iter().unzip();
                let done = write(items);
                writing.push(async move {
                    let result = done.await.map_err(|e| e.to_string());
                    for ack in acks {
                        let _ = ack.send(result.clone());
                    }
                });
            }
            () = writing.select_next_some() => {}
        }
    }
    while writing.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn every_record_is_written_once_and_acknowledged_after_its_write() {
        let written = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let sink = written.clone();
        let (batcher, work) = Batcher::new(
            move |items: Vec<u32>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(items);
                    Ok(())
                }
            },
            BatchLimits {
                queue: 8,
                max_batch: 3,
                in_flight: 2,
            },
        );
        futures::executor::block_on(async move {
            let submit = async move {
                let all = (0..10u32).map(|i| batcher.submit(i));
                for r in futures::future::join_all(all).await {
                    r.unwrap();
                }
            };
            futures::join!(work, submit);
        });
        let batches = written.lock().unwrap();
        assert!(batches.iter().all(|b| b.len() <= 3), "{batches:?}");
        let mut all: Vec<u32> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_write_fails_every_record_of_its_batch() {
        let (batcher, work) = Batcher::new(
            |_items: Vec<u32>| async { Err(StoreError::Unavailable("disk full".into())) },
            BatchLimits {
                queue: 8,
                max_batch: 100,
                in_flight: 1,
            },
        );
        futures::executor::block_on(async move {
            let submit = async move {
                let all = (0..5u32).map(|i| batcher.submit(i));
                for r in futures::future::join_all(all).await {
                    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
                }
            };
            futures::join!(work, submit);
        });
    }
}
