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

    /// Each sent value with the time since the start at which it went out.
    type Sent = Arc<Mutex<Vec<(u32, Duration)>>>;

    /// Records each sent value with the (virtual) time since `start` at which it went out.
    fn recording(
        start: Instant,
    ) -> (
        Sent,
        impl FnMut(u32) -> std::future::Ready<()> + Send + 'static,
    ) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let send = move |v: u32| {
            log.lock().unwrap().push((v, start.elapsed()));
            std::future::ready(())
        };
        (sent, send)
    }

    // Virtual time (`start_paused`): the runtime's clock moves only when every task waits, so
    // the times below are exact, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn coalesces_to_the_latest_value_and_keeps_the_gap() {
        let start = Instant::now();
        let (sent, send) = recording(start);
        let t = Throttled::spawn(Duration::from_millis(300), send);
        t.update(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // 49 more values over the next 196 ms, then quiet.
        for v in 2..=50 {
            t.update(v);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        t.finish().await;
        // The first value at once; everything else coalesced into the latest, sent exactly
        // one gap later; nothing after.
        assert_eq!(
            *sent.lock().unwrap(),
            vec![(1, Duration::ZERO), (50, Duration::from_millis(300))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_goes_out_once_per_gap_with_the_latest_value() {
        let start = Instant::now();
        let (sent, send) = recording(start);
        let t = Throttled::spawn(Duration::from_millis(100), send);
        // Value 0 at 0 ms, then value v at 15 + 30·(v−1) ms up to 975 ms: never at the same
        // instant as an edit (multiples of 100 ms), so the order of the two is not a tie.
        t.update(0);
        tokio::time::sleep(Duration::from_millis(15)).await;
        for v in 1..=33 {
            t.update(v);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        t.finish().await;
        let sent = sent.lock().unwrap().clone();
        let times: Vec<u64> = sent.iter().map(|(_, at)| at.as_millis() as u64).collect();
        assert_eq!(times, (0..=10).map(|n| n * 100).collect::<Vec<_>>());
        // Each edit carries the latest value at its time.
        let values: Vec<u32> = sent.iter().map(|(v, _)| *v).collect();
        assert_eq!(values, vec![0, 3, 7, 10, 13, 17, 20, 23, 27, 30, 33]);
    }

    #[tokio::test(start_paused = true)]
    async fn finish_drops_the_pending_value() {
        let start = Instant::now();
        let (sent, send) = recording(start);
        let t = Throttled::spawn(Duration::from_millis(500), send);
        t.update(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        t.update(2);
        t.finish().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(*sent.lock().unwrap(), vec![(1, Duration::ZERO)]);
    }

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_the_edit_in_flight() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let events = log.clone();
        let t = Throttled::spawn(Duration::from_millis(50), move |v: u32| {
            let events = events.clone();
            async move {
                events.lock().unwrap().push(format!("start {v}"));
                // A slow Discord edit.
                tokio::time::sleep(Duration::from_millis(200)).await;
                events.lock().unwrap().push(format!("end {v}"));
            }
        });
        t.update(7);
        while log.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        t.finish().await;
        log.lock().unwrap().push("finished".into());
        assert_eq!(*log.lock().unwrap(), ["start 7", "end 7", "finished"]);
    }
}
