//! The Diffie-Hellman pool: threads that run the IKE engine's exponentiations
//! (`vpngw_ike::DhWork`), so that the loop thread keeps answering DPD, quick modes, the API and
//! the control socket while many peers negotiate, and establishment uses every core.
//!
//! Bounded both ways: at most `queue` pieces of work wait for a thread and at most `queue`
//! results wait for the loop. When the work queue is full the loop runs the work itself
//! (`inline_total`): slower, never lost, and the engine's own bounds (DH admission per second,
//! half-open SAs) keep the work that can exist small. Each result carries the epoch of the
//! engine that asked, so a result that comes back after hot backup replaced the engine is
//! dropped instead of reaching an SA of the new one that happens to have the same handle.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use tokio::sync::mpsc;
use vpngw_ike::{DhDone, DhWork};

/// Work and results that may wait, each way.
const QUEUE: usize = 1024;

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct DhPoolCounters {
    /// Computations run by the pool's threads.
    pub pooled: AtomicU64,
    /// Computations the loop ran itself, the pool's queue being full.
    pub inline: AtomicU64,
}

pub struct DhPool {
    to_threads: crossbeam_channel::Sender<(u64, DhWork)>,
    threads: usize,
    pub counters: Arc<DhPoolCounters>,
}

/// The pool's results, each with the epoch of the engine that asked; read by the loop.
pub type DhResults = mpsc::Receiver<(u64, DhDone)>;

impl DhPool {
    /// Starts `threads` threads (named `vpngw-dh-N`); their results come out of the receiver.
    pub fn start(threads: NonZeroUsize) -> std::io::Result<(Self, DhResults)> {
        let (to_threads, work) = crossbeam_channel::bounded::<(u64, DhWork)>(QUEUE);
        let (results_tx, results) = mpsc::channel(QUEUE);
        let counters = Arc::new(DhPoolCounters::default());
        for n in 0..threads.get() {
            let (work, results_tx, counters) = (work.clone(), results_tx.clone(), counters.clone());
            thread::Builder::new().name(format!("vpngw-dh-{n}")).spawn(move || {
                // Ends when the loop drops its sender (shutdown) or its receiver.
                while let Ok((epoch, w)) = work.recv() {
                    let done = w.run();
                    counters.pooled.fetch_add(1, Ordering::Relaxed);
                    if results_tx.blocking_send((epoch, done)).is_err() {
                        return;
                    }
                }
            })?;
        }
        Ok((Self { to_threads, threads: threads.get(), counters }, results))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Hands `work` to the threads; when their queue is full, runs it here and returns the
    /// result for the caller to give to the engine at once.
    pub fn submit(&self, epoch: u64, work: DhWork) -> Option<DhDone> {
        match self.to_threads.try_send((epoch, work)) {
            Ok(()) => None,
            Err(
                crossbeam_channel::TrySendError::Full((_, w)) | crossbeam_channel::TrySendError::Disconnected((_, w)),
            ) => {
                self.counters.inline.fetch_add(1, Ordering::Relaxed);
                Some(w.run())
            }
        }
    }

    /// Work waiting for a thread.
    pub fn queued(&self) -> usize {
        self.to_threads.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use vpngw_crypto::FastRng;
    use vpngw_ike::testing::{configs, engine_config};
    use vpngw_ike::{Endpoint, EngineConfig};

    use super::*;

    /// Two engines with offloaded Diffie-Hellman establish through the pool: every piece of
    /// work goes out to a thread and comes back with its epoch.
    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_on_the_threads_and_comes_back() {
        let config = EngineConfig { dh_offload: true, ..engine_config() };
        let (a_cfg, b_cfg) = configs();
        let mut a = Endpoint::new(config.clone(), FastRng::from_seed_for_tests(1));
        let mut b = Endpoint::new(config, FastRng::from_seed_for_tests(2));
        a.add_peer(a_cfg).unwrap();
        b.add_peer(b_cfg).unwrap();
        let now = Instant::now();
        let (pool, mut results) = DhPool::start(NonZeroUsize::new(2).unwrap()).unwrap();
        a.initiate(now, "to-b").unwrap();
        let mut pending = 0;
        for _ in 0..100 {
            let mut moved = false;
            while let Some(t) = a.poll_transmit() {
                b.handle(now, t.remote, t.local, &t.payload);
                moved = true;
            }
            while let Some(t) = b.poll_transmit() {
                a.handle(now, t.remote, t.local, &t.payload);
                moved = true;
            }
            while let Some(w) = a.poll_dh_work() {
                assert!(pool.submit(1, w).is_none(), "the queue has room");
                pending += 1;
            }
            while let Some(w) = b.poll_dh_work() {
                assert!(pool.submit(2, w).is_none());
                pending += 1;
            }
            if pending > 0 {
                let (epoch, done) =
                    tokio::time::timeout(Duration::from_secs(10), results.recv()).await.unwrap().unwrap();
                pending -= 1;
                match epoch {
                    1 => a.complete_dh_work(now, done),
                    _ => b.complete_dh_work(now, done),
                }
                moved = true;
            }
            if !moved {
                break;
            }
        }
        let up = |e: &Endpoint| e.ike_sas().iter().filter(|s| s.state.as_str() == "established").count();
        assert_eq!((up(&a), up(&b)), (1, 1));
        // A: MM3's public value and MM4's g^xy; B: MM4's both.
        assert_eq!(pool.counters.pooled.load(Ordering::Relaxed), 3);
        assert_eq!(pool.counters.inline.load(Ordering::Relaxed), 0);
    }
}
