//! Pre-pulling: a node pulls (and unpacks) the images of the functions placed in its region
//! before their first invocation, so that invocation starts from a cached image.
//!
//! The node watches its region's [`Placements`] (the catalog its gateways publish, or the
//! in-process feed of `fnmesh up`): for each function whose latest version is an image
//! function pulled from a registry and placed in the node's region
//! ([`fnmesh_core::FunctionConfig::placed_in`]), the image is pulled into the node's image
//! cache unless it is there. Namespaces' registry credentials come from the same feed, sealed,
//! and are opened with the node's keyring into the [`CredentialBook`] that invocations' pulls
//! use too.
//!
//! Bounds: at most `concurrency` pulls at once, all of them together at most `bytes_per_sec`
//! ([`Throttle`]; an invocation that needs an image being pre-pulled lifts the bound for it,
//! see [`fnmesh_image::cache::ImageCache::prepare`]). An image is pre-pulled once: if the
//! cache later evicts it, its next invocation pulls it (pre-pulling it again would fight the
//! cache's cap), and none is started while the cache is at its cap. A failed pull is tried
//! again after [`RETRY_AFTER`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_bus::placements::{Placement, PlacementError, Placements};
use fnmesh_core::registry::RegistryHost;
use fnmesh_core::secrets::Keyring;
use fnmesh_core::{FunctionName, Namespace, Runtime};
use fnmesh_image::registry::{Credentials, ImageRef};
use fnmesh_image::throttle::{Pace, Throttle};
use fnmesh_image::Digest;
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runtimes::image::{CredentialBook, ImageSupport};

/// How long after a failed pre-pull the image is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// How often wanted images are looked at again (failed ones to retry).
const SWEEP: Duration = Duration::from_secs(30);

/// The longest pause between two watches of the feed.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How a node pre-pulls.
#[derive(Debug, Clone)]
pub struct PrepullConfig {
    /// The node's region: functions placed there are pre-pulled.
    pub region: String,
    /// Pulls at once (0: no pre-pulling).
    pub concurrency: usize,
    /// Bytes per second of all pre-pulls together (0: unbounded).
    pub bytes_per_sec: u64,
}

/// What became of an image.
#[derive(Debug, Clone, Copy)]
enum PullState {
    Pulling,
    Done,
    Failed(Instant),
}

type Pulls = Arc<Mutex<HashMap<Digest, PullState>>>;

/// Starts pre-pulling until `stop`; `None` when `config.concurrency` is 0.
pub fn start(
    config: PrepullConfig,
    support: ImageSupport,
    keyring: Option<Arc<Keyring>>,
    feed: Arc<dyn Placements>,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    if config.concurrency == 0 {
        return None;
    }
    let throttle = Arc::new(Throttle::new(match config.bytes_per_sec {
        0 => u64::MAX,
        rate => rate,
    }));
    let prepuller = Prepuller {
        permits: Arc::new(Semaphore::new(config.concurrency)),
        config,
        support,
        keyring,
        throttle,
        wanted: HashMap::new(),
        pulls: Arc::default(),
        tasks: JoinSet::new(),
    };
    Some(tokio::spawn(prepuller.run(feed, stop)))
}

struct Prepuller {
    config: PrepullConfig,
    support: ImageSupport,
    keyring: Option<Arc<Keyring>>,
    throttle: Arc<Throttle>,
    permits: Arc<Semaphore>,
    /// The image of each function placed here, with the namespace whose credential pulls it.
    wanted: HashMap<(Namespace, FunctionName), ImageRef>,
    pulls: Pulls,
    tasks: JoinSet<()>,
}

impl Prepuller {
    async fn run(mut self, feed: Arc<dyn Placements>, stop: CancellationToken) {
        let mut pause = Duration::from_millis(500);
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let watched = tokio::select! {
                () = stop.cancelled() => break,
                watched = feed.watch() => watched,
            };
            match watched {
                Ok(mut placements) => {
                    pause = Duration::from_millis(500);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => {
                                self.tasks.shutdown().await;
                                return;
                            }
                            item = placements.next() => match item {
                                Some(placement) => self.apply(placement),
                                None => break,
                            },
                            _ = sweep.tick() => self.sweep(),
                            Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                        }
                    }
                }
                Err(PlacementError::NoCatalog(detail)) => {
                    tracing::debug!(%detail, "pre-pulling waits for the region's catalog");
                }
                Err(e) => tracing::warn!(error = %e, "watching the region's placements failed"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
        self.tasks.shutdown().await;
    }

    fn apply(&mut self, placement: Placement) {
        match placement {
            Placement::Function {
                namespace,
                name,
                latest,
            } => {
                let image = latest
                    .filter(|f| {
                        f.runtime == Runtime::Image && f.config.placed_in(&self.config.region)
                    })
                    .and_then(|f| f.image)
                    .and_then(|spec| spec.reference)
                    .and_then(|r| r.parse::<ImageRef>().ok())
                    .filter(|r| r.digest().is_some());
                let key = (namespace.clone(), name);
                match image {
                    Some(reference) => {
                        self.wanted.insert(key, reference.clone());
                        self.ensure(&namespace, &reference);
                    }
                    None => {
                        self.wanted.remove(&key);
                    }
                }
            }
            Placement::Registry {
                namespace,
                host,
                sealed,
            } => {
                let credentials = match (sealed, self.keyring.as_deref()) {
                    (None, _) => None,
                    (Some(sealed), Some(keyring)) => {
                        match keyring.open_registry_credential(&namespace, &host, &sealed) {
                            Ok(c) => Some(Credentials {
                                username: c.username,
                                password: c.password,
                            }),
                            Err(e) => {
                                tracing::warn!(registry.host = %host, error = %e, "a registry credential of the catalog does not open here");
                                return;
                            }
                        }
                    }
                    (Some(_), None) => {
                        tracing::warn!(registry.host = %host, "a registry credential cannot be opened: this node has no secrets keyring (FNMESH_SECRETS_KEY)");
                        return;
                    }
                };
                let retry = credentials.is_some();
                self.book().set(&namespace, &host, credentials);
                if retry {
                    // Images of this namespace and registry that failed may pull now.
                    let failed: Vec<ImageRef> = self
                        .wanted
                        .iter()
                        .filter(|((ns, _), r)| *ns == namespace && r.registry() == host.as_str())
                        .map(|(_, r)| r.clone())
                        .collect();
                    for reference in failed {
                        if let Some(d) = reference.digest() {
                            let mut pulls = lock(&self.pulls);
                            if matches!(pulls.get(&d), Some(PullState::Failed(_))) {
                                pulls.remove(&d);
                            }
                        }
                        self.ensure(&namespace, &reference);
                    }
                }
            }
        }
    }

    fn book(&self) -> &CredentialBook {
        &self.support.credentials
    }

    /// Looks at every wanted image again (failed ones are retried once due).
    fn sweep(&mut self) {
        let wanted: Vec<(Namespace, ImageRef)> = self
            .wanted
            .iter()
            .map(|((ns, _), r)| (ns.clone(), r.clone()))
            .collect();
        for (namespace, reference) in wanted {
            self.ensure(&namespace, &reference);
        }
    }

    /// Starts pulling `reference` for `namespace` unless it is cached, pulled once already,
    /// being pulled, failed lately, or the cache is full.
    fn ensure(&mut self, namespace: &Namespace, reference: &ImageRef) {
        let Some(digest) = reference.digest() else {
            return;
        };
        let cache = &self.support.cache;
        {
            let mut pulls = lock(&self.pulls);
            match pulls.get(&digest) {
                Some(PullState::Pulling | PullState::Done) => return,
                Some(PullState::Failed(at)) if at.elapsed() < RETRY_AFTER => return,
                _ => {}
            }
            if cache.contains(&digest) {
                pulls.insert(digest, PullState::Done);
                return;
            }
            if cache.bytes() >= cache.max_bytes() {
                return;
            }
            pulls.insert(digest.clone(), PullState::Pulling);
        }
        let credentials = RegistryHost::parse(reference.registry())
            .ok()
            .and_then(|host| self.book().get(namespace, &host));
        let (cache, pulls, permits, reference) = (
            cache.clone(),
            self.pulls.clone(),
            self.permits.clone(),
            reference.clone(),
        );
        let pace = Pace::new(self.throttle.clone());
        self.tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let outcome = cache
                .prepull(&reference, credentials.as_ref(), pace)
                .await;
            let state = match outcome {
                Ok(Some(prepared)) => {
                    tracing::info!(
                        image.reference = %reference,
                        image.pull_ms = u64::try_from(prepared.pull.as_millis()).unwrap_or(u64::MAX),
                        image.unpack_ms = u64::try_from(prepared.unpack.as_millis()).unwrap_or(u64::MAX),
                        "image pre-pulled"
                    );
                    PullState::Done
                }
                Ok(None) => PullState::Done,
                Err(e) => {
                    tracing::warn!(image.reference = %reference, error = %e, retry_in_secs = RETRY_AFTER.as_secs(), "pre-pulling an image failed");
                    PullState::Failed(Instant::now())
                }
            };
            lock(&pulls).insert(digest, state);
        });
    }
}

fn lock(pulls: &Pulls) -> std::sync::MutexGuard<'_, HashMap<Digest, PullState>> {
    pulls.lock().unwrap_or_else(|e| e.into_inner())
}
