//! LISTEN on the jobs channel: a thread of its own holds one PostgreSQL connection and passes
//! every payload on to the async side. A lost connection is opened again (a worker also polls,
//! so a notification missed meanwhile only costs the poll interval).

use std::time::Duration;

use ::postgres::fallible_iterator::FallibleIterator;
use tokio::sync::mpsc;

use super::cluster::JOBS_CHANNEL;
use super::{postgres, StoreError};

/// Wait before connecting again after the listening connection failed.
const RETRY: Duration = Duration::from_secs(1);

/// Starts listening on [`JOBS_CHANNEL`] at `url`. The first connection is made before this
/// returns, so an unreachable server is an error here; the thread ends when the receiver is
/// dropped (checked at least every second).
pub fn listen(url: &str) -> Result<mpsc::UnboundedReceiver<String>, StoreError> {
    let first = subscribe(url)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let url = url.to_string();
    std::thread::Builder::new()
        .name("floor33-listen".into())
        .spawn(move || {
            let mut client = Some(first);
            while !tx.is_closed() {
                let Some(c) = client.as_mut() else {
                    std::thread::sleep(RETRY);
                    client = subscribe(&url)
                        .inspect_err(|e| tracing::warn!(error = %e, "LISTEN reconnect failed"))
                        .ok();
                    continue;
                };
                let mut lost = false;
                {
                    let mut notes = c.notifications();
                    let mut iter = notes.timeout_iter(Duration::from_secs(1));
                    loop {
                        match iter.next() {
                            Ok(Some(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %postgres::message(&e), "LISTEN connection lost");
                                lost = true;
                                break;
                            }
                        }
                    }
                }
                if lost || c.is_closed() {
                    client = None;
                }
            }
        })
        .map_err(|e| StoreError::Task(e.to_string()))?;
    Ok(rx)
}

fn subscribe(url: &str) -> Result<::postgres::Client, StoreError> {
    let mut client = postgres::connect(url)?;
    client.batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))?;
    Ok(client)
}
