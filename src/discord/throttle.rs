//! Coalesced message edits: at most one edit per `min_gap` per message, and the one that goes
//! out is always the latest state. Progress arrives every diffusion step; Discord only needs to
//! see it every second or two, and a flood of edits would exhaust the rate limit shared by all
//! jobs' interaction edits.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Owns a task that sends the latest value given to [`Throttled::update`] through `send`.
pub struct Throttled<V> {
    latest: watch::Sender<Option<V>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl<V: Clone + Send + Sync + 'static> Throttled<V> {
    /// Starts the sender task. `send` is awaited before the next value is taken, so edits of one
    /// message never overlap or arrive out of order.
    pub fn spawn<F, Fut>(min_gap: Duration, mut send: F) -> Self
    where
        F: FnMut(V) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (latest, mut rx) = watch::channel::<Option<V>>(None);
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut last_sent: Option<Instant> = None;
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = &mut stop_rx => break,
                }
                if let Some(at) = last_sent {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at + min_gap) => {}
                        _ = &mut stop_rx => break,
                    }
                }
                // Whatever arrived during the wait replaces what woke us.
                let value = rx.borrow_and_update().clone();
                if let Some(value) = value {
                    send(value).await;
                    last_sent = Some(Instant::now());
                }
            }
        });
        Throttled {
            latest,
            stop: Some(stop_tx),
            task,
        }
    }

    /// Replaces the pending value; returns at once.
    pub fn update(&self, value: V) {
        self.latest.send_replace(Some(value));
    }

    /// Drops any pending value and waits until an edit in flight has finished, so a final
    /// message sent afterwards cannot be overwritten by a stale progress edit.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl<V> Drop for Throttled<V> {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn coalesces_to_the_latest_value_and_keeps_the_gap() {
        let sent = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
        let log = sent.clone();
        let t = Throttled::spawn(Duration::from_millis(300), move |v: u32| {
            let log = log.clone();
            async move { log.lock().unwrap().push((v, Instant::now())) }
        });
        let start = Instant::now();
        t.update(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        for v in 2..=50 {
            t.update(v);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        t.finish().await;
        let sent = sent.lock().unwrap().clone();
        let values: Vec<u32> = sent.iter().map(|(v, _)| *v).collect();
        assert_eq!(values.first(), Some(&1), "{values:?}");
        assert_eq!(
            values.last(),
            Some(&50),
            "latest state must go out: {values:?}"
        );
        assert!(values.len() <= 3, "{values:?}");
        for pair in sent.windows(2) {
            assert!(pair[1].1 - pair[0].1 >= Duration::from_millis(300));
        }
        assert!(sent[0].1 - start < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn finish_drops_the_pending_value() {
        let sent = Arc::new(Mutex::new(Vec::<u32>::new()));
        let log = sent.clone();
        let t = Throttled::spawn(Duration::from_millis(500), move |v: u32| {
            let log = log.clone();
            async move { log.lock().unwrap().push(v) }
        });
        t.update(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        t.update(2);
        t.finish().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(*sent.lock().unwrap(), vec![1]);
    }
}
