//! Readiness: the process can take work only when every probe passes (the models are loaded, the
//! store answers). The app registers the probes; this module knows nothing of what they check,
//! so the listener has no dependency on the engine or the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// One condition the process needs before it is ready. `check` says why it is not, in a line
/// an operator can act on (no secrets: it is served over HTTP).
#[async_trait::async_trait]
pub trait ReadinessProbe: Send + Sync {
    /// A short name shown in `/readyz` (`models`, `store`).
    fn name(&self) -> &str;
    async fn check(&self) -> Result<(), String>;
}

type CheckFn = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

struct FnProbe {
    name: String,
    check: Box<CheckFn>,
}

#[async_trait::async_trait]
impl ReadinessProbe for FnProbe {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> Result<(), String> {
        (self.check)().await
    }
}

/// A probe from a closure returning a future, e.g.
/// `probe_fn("store", move || { let s = store.clone(); async move { s.ping().await } })`.
pub fn probe_fn<F, Fut>(name: impl Into<String>, check: F) -> Arc<dyn ReadinessProbe>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(FnProbe {
        name: name.into(),
        check: Box::new(move || Box::pin(check())),
    })
}

/// How long one probe may take before it counts as failed: a store that hangs is not ready.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probes `/readyz` runs, all of them on every request.
#[derive(Clone)]
pub struct Readiness {
    probes: Vec<Arc<dyn ReadinessProbe>>,
    timeout: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            probes: Vec::new(),
            timeout: PROBE_TIMEOUT,
        }
    }
}

/// The answer to one readiness check: every probe's name with its failure, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessReport {
    pub results: Vec<(String, Result<(), String>)>,
}

impl ReadinessReport {
    pub fn ready(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }

    /// One line per probe: `models: ok`, `store: not reachable (…)`.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (name, result) in &self.results {
            match result {
                Ok(()) => text.push_str(&format!("{name}: ok\n")),
                Err(why) => text.push_str(&format!("{name}: {why}\n")),
            }
        }
        if self.results.is_empty() {
            text.push_str("no readiness probes\n");
        }
        text
    }
}

impl Readiness {
    pub fn new() -> Self {
        Readiness::default()
    }

    pub fn with(mut self, probe: Arc<dyn ReadinessProbe>) -> Self {
        self.probes.push(probe);
        self
    }

    /// How long each probe may take (default [`PROBE_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn add(&mut self, probe: Arc<dyn ReadinessProbe>) {
        self.probes.push(probe);
    }

    /// Runs every probe at once, each bounded by the timeout.
    pub async fn check(&self) -> ReadinessReport {
        let timeout = self.timeout;
        let checks = self.probes.iter().map(|probe| async move {
            let result = match tokio::time::timeout(timeout, probe.check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
            };
            (probe.name().to_string(), result)
        });
        ReadinessReport {
            results: futures_util::future::join_all(checks).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_probe_passes() {
        let loaded = Arc::new(AtomicBool::new(false));
        let flag = loaded.clone();
        let readiness = Readiness::new()
            .with(probe_fn("models", move || {
                let ok = flag.load(Ordering::SeqCst);
                async move { ok.then_some(()).ok_or_else(|| "still loading".to_string()) }
            }))
            .with(probe_fn("store", || async { Ok(()) }));
        let report = readiness.check().await;
        assert!(!report.ready());
        assert_eq!(report.to_text(), "models: still loading\nstore: ok\n");
        loaded.store(true, Ordering::SeqCst);
        assert!(readiness.check().await.ready());
    }

    #[tokio::test]
    async fn a_hanging_probe_fails_after_the_timeout() {
        let readiness = Readiness::new()
            .with_timeout(Duration::from_millis(50))
            .with(probe_fn("store", || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }));
        let started = std::time::Instant::now();
        let report = readiness.check().await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!report.ready());
        assert_eq!(report.to_text(), "store: no answer within 0.05 s\n");
    }
}
