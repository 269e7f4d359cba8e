//! Spare `/output` volumes: a few per runtime image, each with its keeper already started, so
//! a run does not wait for a keeper's container to start on its way to the app (see
//! `engine::output_volume`). A spare is used by exactly one attempt and removed with it, like a
//! volume made for that attempt; before, it holds nothing (an empty tmpfs of the configured caps,
//! a keeper that has only reported it empty). The pool refills in the background after each
//! take. Spares carry this daemon's executor label but no run's: the reaper removes them when
//! the daemon exits (a drain leaves them to it) or dies, the sweep when their daemon is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::engine::output_volume::OutputVolume;
use super::engine::{Engine, EngineError};
use super::profile::{LABEL_EXECUTOR, LABEL_PHASE};
use super::settings::SandboxSettings;

pub struct OutputPool {
    engine: Engine,
    settings: SandboxSettings,
    /// The labels of a spare: this daemon's, phase `output`.
    labels: HashMap<String, String>,
    /// Per image: ready spares and those being started.
    images: Mutex<HashMap<String, Spares>>,
}

#[derive(Default)]
struct Spares {
    ready: Vec<OutputVolume>,
    starting: usize,
    /// Woken whenever a start ends (with a spare or not).
    ended: Arc<tokio::sync::Notify>,
}

impl OutputPool {
    pub fn new(engine: Engine, settings: SandboxSettings, executor_id: &str) -> Arc<Self> {
        let labels = HashMap::from([
            (LABEL_EXECUTOR.to_owned(), executor_id.to_owned()),
            (LABEL_PHASE.to_owned(), "output".to_owned()),
        ]);
        Arc::new(Self {
            engine,
            settings,
            labels,
            images: Mutex::new(HashMap::new()),
        })
    }

    /// A volume for one attempt: a spare when one is ready, else one made now named `name`
    /// with the attempt's `labels`. Either way the pool then refills for `image`.
    pub async fn take(
        self: &Arc<Self>,
        image: &str,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<OutputVolume, EngineError> {
        let spare = loop {
            // A spare that is starting comes no later than one started now would, and costs
            // the host no third container start: wait for it.
            let ended = {
                let mut images = self
                    .images
                    .lock()
                    .expect("the pool's lock is never poisoned");
                let spares = images.entry(image.to_owned()).or_default();
                if let Some(spare) = spares.ready.pop() {
                    break Some(spare);
                }
                if spares.starting == 0 {
                    break None;
                }
                spares.ended.clone().notified_owned()
            };
            tracing::debug!(%image, "waiting for a spare /output volume being started");
            ended.await;
        };
        self.refill(image);
        match spare {
            Some(volume) => {
                tracing::debug!(volume = %volume.volume, %name, "a spare /output volume for the attempt");
                Ok(volume)
            }
            None => {
                self.engine
                    .create_output_volume(&self.settings, name, image, labels)
                    .await
            }
        }
    }

    /// Starts spares for `image` before any run asks (at start, for an image every run uses).
    pub fn warm(self: &Arc<Self>, image: &str) {
        self.refill(image);
    }

    /// Starts as many spares for `image` as `sandbox.output_spares` asks beyond those ready
    /// or starting.
    fn refill(self: &Arc<Self>, image: &str) {
        let missing = {
            let mut images = self
                .images
                .lock()
                .expect("the pool's lock is never poisoned");
            let spares = images.entry(image.to_owned()).or_default();
            let missing = self
                .settings
                .output_spares
                .saturating_sub(spares.ready.len() + spares.starting);
            spares.starting += missing;
            missing
        };
        for _ in 0..missing {
            let (pool, image) = (self.clone(), image.to_owned());
            tokio::spawn(async move {
                let name = format!(
                    "app-executor-spare-{}-output",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                );
                let made = pool
                    .engine
                    .create_output_volume(&pool.settings, &name, &image, &pool.labels)
                    .await;
                let mut images = pool
                    .images
                    .lock()
                    .expect("the pool's lock is never poisoned");
                let spares = images.entry(image).or_default();
                spares.starting -= 1;
                match made {
                    Ok(volume) => spares.ready.push(volume),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a spare /output volume; the next run starts its own")
                    }
                }
                // Under the lock, so a take that saw this start pending cannot miss its end.
                spares.ended.notify_waiters();
            });
        }
    }
}
