//! A background client reading `GET /api/services/` every [`PERIOD`] as Admin, counting the
//! answers that did not come (error status, refused connection, no answer within
//! [`TIMEOUT`]). Failures while the test has said the root is down are counted apart: they are
//! the only ones tolerated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::lab::Api;

pub const PERIOD: Duration = Duration::from_millis(100);
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How many failures' errors are kept.
const MAX_EXAMPLES: usize = 100;

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub requests: u64,
    /// Failures while the root was up: each one breaks the "API answers throughout" invariant.
    pub failures: u64,
    /// Failures while the root was down on purpose.
    pub tolerated: u64,
    /// The first failures' errors.
    pub examples: Vec<String>,
}

impl Counts {
    /// What happened since `before`.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            requests: self.requests - before.requests,
            failures: self.failures - before.failures,
            tolerated: self.tolerated - before.tolerated,
            examples: self.examples[before.examples.len().min(self.examples.len())..].to_vec(),
        }
    }
}

pub struct Poller {
    stop: Arc<AtomicBool>,
    root_down: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub fn start(base: &str) -> anyhow::Result<Poller> {
        let api = Api::new(base, TIMEOUT);
        api.login()?;
        let stop = Arc::new(AtomicBool::new(false));
        let root_down = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let thread = {
            let (stop, root_down, counts) = (stop.clone(), root_down.clone(), counts.clone());
            std::thread::Builder::new().name("api-poller".into()).spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let down_before = root_down.load(Ordering::SeqCst);
                    let result = api.get("/api/services/");
                    let down = down_before || root_down.load(Ordering::SeqCst);
                    {
                        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                        c.requests += 1;
                        match result {
                            Ok(_) => {}
                            Err(_) if down => c.tolerated += 1,
                            Err(e) => {
                                c.failures += 1;
                                if c.examples.len() < MAX_EXAMPLES {
                                    c.examples.push(format!("{e:#}"));
                                }
                            }
                        }
                    }
                    std::thread::sleep(PERIOD.saturating_sub(started.elapsed()));
                }
            })?
        };
        Ok(Poller { stop, root_down, counts, thread: Some(thread) })
    }

    /// Says whether the root is down on purpose (failures then are tolerated).
    pub fn set_root_down(&self, down: bool) {
        self.root_down.store(down, Ordering::SeqCst);
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
