//! Steady traffic through an agent at a fixed rate, counting what the app
//! saw: for the demo and the benches that run whole rollouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::http::Client;

/// A chat completion request.
pub const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;

/// Counts of the requests sent so far.
#[derive(Default)]
pub struct Load {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    stop: AtomicBool,
    in_flight: AtomicU64,
    done: tokio::sync::Notify,
}

impl Load {
    /// Sends `rate` chat requests per second to `base` until
    /// [`Load::finish`].
    pub fn start(base: &str, rate: u64) -> (Arc<Load>, tokio::task::JoinHandle<()>) {
        let load = Arc::new(Load::default());
        let client = Arc::new(Client::tcp(base));
        let task = tokio::spawn({
            let load = load.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
                while !load.stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (client, load) = (client.clone(), load.clone());
                    load.in_flight.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let r = client.post("/v1/chat/completions", BODY, &[]).await;
                        load.sent.fetch_add(1, Ordering::Relaxed);
                        if r.status != 200 {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        load.in_flight.fetch_sub(1, Ordering::Relaxed);
                        load.done.notify_waiters();
                    });
                }
            }
        });
        (load, task)
    }

    /// Stops the traffic and waits for the requests in flight.
    pub async fn finish(&self, task: tokio::task::JoinHandle<()>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = task.await;
        loop {
            let done = self.done.notified();
            if self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            done.await;
        }
    }

    /// (sent, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
