//! The control plane's one owner: a thread that holds the repository state,
//! the traffic policies and the rollouts, and alone publishes the model table.
//! Everything else sends it a command through a [`Control`] handle and awaits
//! the reply with a timeout. Source listings, downloads, loads and warm-ups run
//! on threads of their own and report back, so a status read or a policy
//! change never waits behind a load.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::core::config::TrafficSpec;
use crate::core::error::{Error, Result};
use crate::core::tasks::{Scope, Supervisor};
use crate::serving::{Models, Publisher, Traffic};

use super::repository::source::ModelListing;
use super::repository::watcher::{Attempt, Built, ControlMode, Job, Loader, Options, Repository};
use super::repository::Source;
use super::rollout::{self, Policies, RolloutSpec, Rollouts};

/// How long a caller waits for the plane to answer a quick command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an explicit load may take before its caller is answered that it
/// still runs (it goes on; the repository index shows when it is done).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

type Reply<T> = oneshot::Sender<Result<T>>;
/// Answers whoever asked for a load, once it is published (or refused).
type Ack = Reply<()>;

enum Command {
    Load(String, Ack),
    /// Unload, and with `true` forget the model altogether (its source no
    /// longer offers it: SageMaker's DELETE).
    Unload(String, bool, Reply<()>),
    /// A policy, who sets it, and the store revision it must replace (`If-Match`).
    SetTraffic(
        String,
        TrafficSpec,
        String,
        Option<i64>,
        Reply<Arc<Traffic>>,
    ),
    RolloutStart(String, RolloutSpec, String, Reply<rollout::Status>),
    RolloutAbort(String, String, Reply<rollout::Status>),
    RolloutStatus(String, Reply<rollout::Status>),
    Rollouts(Reply<Vec<rollout::Status>>),
    /// Files under the source changed (the file watcher).
    Changed,
    /// Keys of the etcd policy store changed (relative to its prefix).
    StoreChanged(Vec<String>),
    /// A listing thread's answer.
    Listed(bool, Result<Vec<ModelListing>>),
    /// The listing of one model for an explicit load.
    ListedOne(String, Box<Result<Option<ModelListing>>>, Ack),
    /// A load thread's result (`Err`: it panicked, saying why), and who waits for it.
    Built(
        Attempt,
        Box<std::result::Result<Built, String>>,
        Option<Ack>,
    ),
    /// Stop, and hand back the publishing handle (for the shutdown's last step).
    Stop(oneshot::Sender<Publisher>),
}

/// The handle every other part holds: sends commands, awaits the answers.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Command>,
    store: Option<crate::control::policy::PolicyStore>,
    /// With an etcd store: rollouts are the fleet's, not this plane's.
    fleet: Option<Arc<crate::control::etcd::FleetRollouts>>,
}

impl Control {
    /// Starts the plane on its own thread: it lists the source and loads what
    /// it has. The receiver answers once that first load is published (the
    /// server is ready then), or with the error when the source cannot be
    /// listed and `mode` is not poll (poll mode retries every interval).
    pub fn start(
        source: Box<dyn Source>,
        table: Publisher,
        opts: Options,
        scope: Scope,
    ) -> Result<(Control, oneshot::Receiver<Result<()>>)> {
        let (tx, rx) = mpsc::channel();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let store = opts.policies.clone();
        let mut fleet = None;
        if let Some(crate::control::policy::PolicyStore::Etcd(e)) = &store {
            let tx = tx.clone();
            e.on_change(move |keys| {
                let _ = tx.send(Command::StoreChanged(keys));
            });
            fleet = Some(crate::control::etcd::FleetRollouts::start(
                e.clone(),
                table.models().clone(),
                &scope,
            ));
        }
        let repo = Repository::new(source, table, opts);
        let parallel = if repo.options().memory_limit.is_some() {
            // Each load checks the memory left before it starts: one at a time.
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
        };
        let plane = Plane {
            lists: Pool::start(&scope, "switchyard-list", 2)?,
            loads: Pool::start(&scope, "switchyard-load", parallel)?,
            scope: scope.clone(),
            loader: repo.loader(),
            repo,
            rollouts: Rollouts::default(),
            tx: tx.clone(),
            scan_at: None,
            sample_at: Instant::now(),
            listing: false,
            rescan: false,
            busy: Default::default(),
            queue: VecDeque::new(),
            running: 0,
            parallel,
            starting: Some(Starting {
                tx: loaded_tx,
                pending: None,
            }),
            waiting: HashMap::new(),
        };
        scope
            .spawn_thread("switchyard-control".into(), move || plane.run(rx))
            .map_err(|e| Error::Internal(format!("cannot start the control plane: {e}")))?;
        Ok((Control { tx, store, fleet }, loaded_rx))
    }

    async fn ask<T>(
        &self,
        timeout: Duration,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(command(tx))
            .map_err(|_| Error::Unavailable("the control plane has stopped".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Internal(
                "the control plane dropped the request".into(),
            )),
            Err(_) => Err(Error::Unavailable(format!(
                "the control plane did not answer within {} s; it goes on in the background",
                timeout.as_secs()
            ))),
        }
    }

    /// (Re)loads a model from its source (the repository API's load); answers
    /// once it is published.
    pub async fn load(&self, model: &str) -> Result<()> {
        let model = model.to_string();
        self.ask(LOAD_TIMEOUT, |r| Command::Load(model, r)).await
    }

    /// Takes a model out of service (the repository API's unload). It stays
    /// listed, as unavailable, so its state is visible; in-flight requests
    /// finish on the versions they hold.
    pub async fn unload(&self, model: &str) -> Result<()> {
        let model = model.to_string();
        self.ask(COMMAND_TIMEOUT, |r| Command::Unload(model, false, r))
            .await
    }

    /// Takes a model out of service and out of the table, as if it had never
    /// been loaded (SageMaker's multi-model `DELETE`: afterwards it is 404).
    /// In-flight requests finish on the versions they hold.
    pub async fn remove(&self, model: &str) -> Result<()> {
        let model = model.to_string();
        self.ask(COMMAND_TIMEOUT, |r| Command::Unload(model, true, r))
            .await
    }

    /// Validates, applies at once and keeps a model's traffic policy (the
    /// admin API's PUT); `who` says where the change came from, for the log.
    pub async fn set_traffic(
        &self,
        model: &str,
        spec: TrafficSpec,
        who: &str,
    ) -> Result<Arc<Traffic>> {
        self.set_traffic_if(model, spec, who, None).await
    }

    /// [`Control::set_traffic`], only if the stored policy is still at
    /// `revision` (the store's, as GET traffic shows it): a conditional
    /// write, 409 when it moved. Stores without revisions ignore it.
    pub async fn set_traffic_if(
        &self,
        model: &str,
        spec: TrafficSpec,
        who: &str,
        revision: Option<i64>,
    ) -> Result<Arc<Traffic>> {
        let (model, who) = (model.to_string(), who.to_string());
        self.ask(COMMAND_TIMEOUT, |r| {
            Command::SetTraffic(model, spec, who, revision, r)
        })
        .await
    }

    /// Where policies are kept, for the answers that describe it.
    pub fn policy_store(&self) -> Option<&crate::control::policy::PolicyStore> {
        self.store.as_ref()
    }

    pub async fn start_rollout(
        &self,
        model: &str,
        spec: RolloutSpec,
        who: &str,
    ) -> Result<rollout::Status> {
        if let Some(fleet) = &self.fleet {
            return fleet.start_rollout(model, spec, who).await;
        }
        let (model, who) = (model.to_string(), who.to_string());
        self.ask(COMMAND_TIMEOUT, |r| {
            Command::RolloutStart(model, spec, who, r)
        })
        .await
    }

    /// Stops a rollout in progress; the stable version gets all the traffic.
    pub async fn abort_rollout(&self, model: &str, who: &str) -> Result<rollout::Status> {
        if let Some(fleet) = &self.fleet {
            return fleet.abort(model, who).await;
        }
        let (model, who) = (model.to_string(), who.to_string());
        self.ask(COMMAND_TIMEOUT, |r| Command::RolloutAbort(model, who, r))
            .await
    }

    pub async fn rollout(&self, model: &str) -> Result<rollout::Status> {
        if let Some(fleet) = &self.fleet {
            return fleet.status(model);
        }
        let model = model.to_string();
        self.ask(COMMAND_TIMEOUT, |r| Command::RolloutStatus(model, r))
            .await
    }

    /// Every rollout this server ran or runs.
    pub async fn rollouts(&self) -> Result<Vec<rollout::Status>> {
        if let Some(fleet) = &self.fleet {
            return Ok(fleet.all());
        }
        self.ask(COMMAND_TIMEOUT, Command::Rollouts).await
    }

    /// Stops the plane once the command it runs is done (rollouts stop where
    /// they are; loads running are not waited for) and returns the publishing
    /// handle; `None` when it had stopped already.
    async fn stop(&self) -> Option<Publisher> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Stop(tx)).ok()?;
        tokio::time::timeout(COMMAND_TIMEOUT, rx).await.ok()?.ok()
    }
}

/// The budget of a stop that began without one (a test's).
const STOP_BUDGET: Duration = Duration::from_secs(30);
/// The control layer's share: its threads only finish the job they run.
const STOP_CONTROL: Duration = Duration::from_secs(5);

/// Stops the server's task tree top-down, each stage within what is left of
/// the one budget [`Supervisor::stopping`] holds (begun here if it was not):
/// the edge (listeners close, open connections finish their requests, h2
/// connections get GOAWAY), then the control plane (no load, scan or rollout
/// step starts after it), then the serving layer (the table empties; each
/// version finishes what it holds and its workers exit, taking their runtime
/// sessions with them). Returns the threads and tasks left running past the
/// deadline.
pub async fn shutdown(tree: &Supervisor, control: &Control) -> usize {
    tree.stopping.begin(STOP_BUDGET);
    let left_of_budget = || tree.stopping.left().unwrap_or_default();
    let mut left = tree.edge.stop(left_of_budget()).await;
    let publisher = control.stop().await;
    left += tree.control.stop(STOP_CONTROL.min(left_of_budget())).await;
    if let Some(mut p) = publisher {
        p.clear();
    }
    left += tree.serving.stop(left_of_budget()).await;
    left + tree.telemetry.stop(left_of_budget()).await
}

/// A few threads that stay, each running the jobs it is given in turn: a
/// scan every poll interval (5 s) or a load starts no thread, and the threads
/// the plane can have at once are bounded.
struct Pool {
    tx: crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>,
}

impl Pool {
    /// Starts `threads` threads in `scope`; they end when the pool is dropped
    /// (the plane stops) or the scope is cancelled, after the job they run.
    fn start(scope: &Scope, name: &str, threads: usize) -> Result<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        for i in 0..threads.max(1) {
            let (rx, stop) = (rx.clone(), scope.token().clone());
            scope
                .spawn_thread(format!("{name}-{i}"), move || {
                    for job in rx {
                        if stop.is_cancelled() {
                            return;
                        }
                        // The jobs catch their own panics; this keeps the
                        // thread should one slip through.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start a {name} thread: {e}")))?;
        }
        Ok(Pool { tx })
    }

    fn run(&self, job: impl FnOnce() + Send + 'static) -> Result<()> {
        self.tx
            .send(Box::new(job))
            .map_err(|_| Error::Internal("the control plane's threads have stopped".into()))
    }
}

/// The plane's state, owned by its thread.
struct Plane {
    /// Listings of the source: a scan (one at a time) and explicit loads.
    lists: Pool,
    /// Downloads, loads and warm-ups: `parallel` threads.
    loads: Pool,
    /// The control layer's scope: the plane, listing and load threads.
    scope: Scope,
    repo: Repository,
    loader: Arc<Loader>,
    rollouts: Rollouts,
    /// For the threads it starts to report back.
    tx: mpsc::Sender<Command>,
    /// When the next scan is due (poll mode, or a change seen).
    scan_at: Option<Instant>,
    /// When the versions' recent windows next close (`Stats::sample`).
    sample_at: Instant,
    /// A listing thread runs.
    listing: bool,
    /// A scan skipped a model that was loading: scan again once it is published.
    rescan: bool,
    /// Models with a load queued or running.
    busy: std::collections::HashSet<String>,
    /// Loads waiting for a thread, each with the explicit load that asked for it.
    queue: VecDeque<(Job, Option<Ack>)>,
    running: usize,
    parallel: usize,
    /// Until the first scan is published.
    starting: Option<Starting>,
    /// Explicit loads of models that a load was running for: retried after it.
    waiting: HashMap<String, Vec<Ack>>,
}

/// Who waits for the first scan to be published, and the models it still
/// loads (`None` until the source has been listed).
struct Starting {
    tx: oneshot::Sender<Result<()>>,
    pending: Option<std::collections::HashSet<String>>,
}

/// How long each of a version's recent windows is: the console's and
/// `switchyard models`' resolution (5 minutes of them are kept).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// `now + d`, or `None` past the end of time (an interval of centuries).
fn after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

fn sooner(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a panic says, for the log and the answer.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

impl Policies for Repository {
    fn models(&self) -> &Models {
        Repository::models(self)
    }

    fn set_traffic(&mut self, model: &str, spec: TrafficSpec, who: &str) -> Result<()> {
        Repository::set_traffic(self, model, spec, who, None).map(|_| ())
    }
}

impl Plane {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let _watch = (self.repo.options().mode == ControlMode::Poll).then(|| self.watch());
        self.list(true);
        loop {
            // A scan that falls due while a listing runs waits for it.
            let scan_at = self.scan_at.filter(|_| !self.listing);
            let due = sooner(
                sooner(scan_at, self.rollouts.next_due()),
                Some(self.sample_at),
            );
            let command = match due {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match command {
                Ok(Command::Stop(reply)) => {
                    tracing::info!("control plane stopping");
                    let _ = reply.send(self.repo.into_publisher());
                    return;
                }
                Ok(c) => self.guarded("a command", |plane| plane.handle(c)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if self.scan_at.is_some_and(|at| at <= now) && !self.listing {
                self.scan_at = None;
                self.list(false);
            }
            self.guarded("a rollout step", |plane| {
                plane.rollouts.tick(&mut plane.repo, now)
            });
            if self.sample_at <= now {
                self.sample_at = now + SAMPLE_EVERY;
                // Read now: a scan or a rollout step above may have taken a while.
                let now = Instant::now();
                for m in self.repo.models().snapshot().models.values() {
                    for v in m.ready_versions() {
                        v.stats.sample(now);
                    }
                }
            }
        }
    }

    /// Runs `f`, and logs a panic in it instead of losing the plane: every
    /// later command would go unanswered. The caller of the command that
    /// panicked gets an error (its reply is dropped).
    fn guarded(&mut self, what: &str, f: impl FnOnce(&mut Self)) {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            tracing::error!(error = %panic_message(&*p), "the control plane failed in {what}; it goes on");
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Load(model, ack) => self.load(model, ack),
            Command::Unload(model, forget, r) => {
                let loading = self.busy.contains(&model);
                let _ = r.send(self.repo.unload(&model, loading, forget));
            }
            Command::SetTraffic(model, spec, who, expect, r) => {
                let _ = r.send(self.repo.set_traffic(&model, spec, &who, expect));
            }
            Command::RolloutStart(model, spec, who, r) => {
                let _ = r.send(self.rollouts.start(&mut self.repo, &model, spec, &who));
            }
            Command::RolloutAbort(model, who, r) => {
                let _ = r.send(self.rollouts.abort(&mut self.repo, &model, &who));
            }
            Command::RolloutStatus(model, r) => {
                let _ = r.send(self.rollouts.status(&model));
            }
            Command::Rollouts(r) => {
                let _ = r.send(Ok(self.rollouts.all()));
            }
            Command::Changed => {
                // A burst of events is one change: let it finish.
                self.scan_at = sooner(self.scan_at, after(Duration::from_millis(50)));
            }
            Command::StoreChanged(keys) => {
                for model in keys.iter().filter_map(|k| k.strip_prefix("traffic/")) {
                    self.repo.sync_traffic(model);
                }
            }
            Command::Listed(first, listings) => self.listed(first, listings),
            Command::ListedOne(model, listing, ack) => self.listed_one(model, *listing, ack),
            Command::Built(attempt, built, ack) => self.built(attempt, *built, ack),
            // The loop takes it before this.
            Command::Stop(_) => {}
        }
    }

    /// Lists the source on a thread of its own (a registry can be slow).
    fn list(&mut self, first: bool) {
        let (source, tx) = (self.repo.source().clone(), self.tx.clone());
        let started = self.lists.run(move || {
            let listed = caught(|| source.list());
            let _ = tx.send(Command::Listed(first, listed));
        });
        match started {
            Ok(()) => self.listing = true,
            Err(e) => self.listed(first, Err(e)),
        }
    }

    fn listed(&mut self, first: bool, listings: Result<Vec<ModelListing>>) {
        self.listing = false;
        let poll = self.repo.options().poll_interval;
        let mode = self.repo.options().mode;
        let settling = match listings {
            Ok(listings) => {
                let mut jobs = Vec::new();
                if mode == ControlMode::Poll && listings.iter().any(|l| self.busy.contains(&l.name))
                {
                    self.rescan = true;
                }
                // A model gone from the source while it loads is not published.
                let listed: std::collections::HashSet<&str> =
                    listings.iter().map(|l| l.name.as_str()).collect();
                for name in self.busy.iter().filter(|n| !listed.contains(n.as_str())) {
                    self.repo.forget(name);
                }
                let busy = |m: &str| self.busy.contains(m);
                let settling = self.repo.scan(&listings, first, &busy, &mut jobs);
                if first {
                    if let Some(s) = self.starting.as_mut() {
                        s.pending = Some(jobs.iter().map(|j| j.name.to_string()).collect());
                    }
                }
                for job in jobs {
                    self.enqueue(job, None);
                }
                settling
            }
            Err(e) => {
                tracing::warn!(error = %e, source = %self.repo.describe(), "cannot list models; what is loaded keeps serving");
                if first && mode != ControlMode::Poll {
                    if let Some(s) = self.starting.take() {
                        let _ = s.tx.send(Err(e));
                    }
                    return;
                }
                if first {
                    if let Some(s) = self.starting.as_mut() {
                        s.pending = Some(Default::default());
                    }
                }
                false
            }
        };
        if mode == ControlMode::Poll {
            let wait = if settling {
                super::repository::watcher::SETTLE.min(poll)
            } else {
                poll
            };
            self.scan_at = sooner(self.scan_at, after(wait));
        }
        self.started_if_done();
    }

    /// Marks the server ready once the first scan's loads are all published.
    fn started_if_done(&mut self) {
        if !self
            .starting
            .as_ref()
            .is_some_and(|s| s.pending.as_ref().is_some_and(|p| p.is_empty()))
        {
            return;
        }
        let Some(Starting { tx, .. }) = self.starting.take() else {
            return;
        };
        let table = self.repo.models().snapshot();
        let ready = table
            .models
            .values()
            .filter(|m| m.default_version().is_some())
            .count();
        tracing::info!(
            models = table.models.len(),
            ready,
            source = %self.repo.describe(),
            model_control = ?self.repo.options().mode,
            "repository loaded"
        );
        self.repo.set_loaded();
        let _ = tx.send(Ok(()));
    }

    fn load(&mut self, model: String, ack: Ack) {
        if self.repo.options().mode == ControlMode::None {
            let _ = ack.send(Err(Error::invalid(
                "models are not loaded on request: the server runs with --model-control none",
            )));
            return;
        }
        let (source, tx) = (self.repo.source().clone(), self.tx.clone());
        // On a failed start the answer (an ack dropped) is an error too.
        let _ = self.lists.run(move || {
            let listing = caught(|| source.list_one(&model));
            let _ = tx.send(Command::ListedOne(model, Box::new(listing), ack));
        });
    }

    fn listed_one(&mut self, model: String, listing: Result<Option<ModelListing>>, ack: Ack) {
        let listing = match listing {
            Ok(Some(l)) => l,
            Ok(None) => {
                let _ = ack.send(Err(Error::not_found(format!(
                    "the {} has no model '{model}'",
                    self.repo.describe()
                ))));
                return;
            }
            Err(e) => {
                let _ = ack.send(Err(e));
                return;
            }
        };
        if self.busy.contains(&model) {
            // It takes the files as they are once the running load is published.
            self.waiting.entry(model).or_default().push(ack);
            return;
        }
        match self.repo.reload(&listing) {
            Some(job) => self.enqueue(job, Some(ack)),
            None => {
                let _ = ack.send(self.repo.load_outcome(&model));
            }
        }
    }

    fn enqueue(&mut self, job: Job, ack: Option<Ack>) {
        self.busy.insert(job.name.to_string());
        self.queue.push_back((job, ack));
        self.start_loads();
    }

    /// Starts queued loads, up to `parallel` at once.
    fn start_loads(&mut self) {
        while self.running < self.parallel && !self.scope.is_cancelled() {
            let Some((job, ack)) = self.queue.pop_front() else {
                return;
            };
            self.running += 1;
            let (loader, tx) = (self.loader.clone(), self.tx.clone());
            let attempt = job.attempt();
            let kept = attempt.clone();
            let started = self.loads.run(move || {
                // A backend that panics on a model file must not leave the
                // model marked as loading forever.
                let built =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader.build(job)))
                        .map_err(|p| panic_message(&*p));
                let _ = tx.send(Command::Built(attempt, Box::new(built), ack));
            });
            if let Err(e) = started {
                // Its explicit load, if any, is answered by the dropped ack.
                self.built(kept, Err(e.to_string()), None);
            }
        }
    }

    fn built(
        &mut self,
        attempt: Attempt,
        built: std::result::Result<Built, String>,
        ack: Option<Ack>,
    ) {
        self.running = self.running.saturating_sub(1);
        let name = attempt.name.clone();
        let answer = match built {
            Ok(built) => self.repo.commit(built),
            Err(why) => Err(self.repo.crashed(attempt, &why)),
        };
        if let Some(ack) = ack {
            let _ = ack.send(answer);
        }
        self.busy.remove(&name);
        for ack in self.waiting.remove(&name).unwrap_or_default() {
            self.load(name.clone(), ack);
        }
        if let Some(p) = self.starting.as_mut().and_then(|s| s.pending.as_mut()) {
            p.remove(&name);
        }
        self.started_if_done();
        if self.rescan && self.busy.is_empty() {
            self.rescan = false;
            self.scan_at = sooner(self.scan_at, after(super::repository::watcher::SETTLE));
        }
        self.start_loads();
    }

    /// Starts a file watcher on the source's paths, sending a change to the
    /// plane; `None` (poll only) when there is nothing to watch or it cannot.
    fn watch(&self) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let mut paths = self.repo.source().watch_paths();
        paths.extend(
            self.repo
                .options()
                .policies
                .as_ref()
                .and_then(|p| p.watch_path()),
        );
        if paths.is_empty() {
            return None;
        }
        let tx = self.tx.clone();
        let handler = move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(Command::Changed);
            }
        };
        let mut w = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the repository for changes; polling only");
                return None;
            }
        };
        for p in paths {
            if let Err(e) = w.watch(&p, notify::RecursiveMode::Recursive) {
                tracing::warn!(path = %p.display(), error = %e, "cannot watch; polling only");
            }
        }
        Some(w)
    }
}

/// Runs `f`, turning a panic in it (a source's bug) into an error.
fn caught<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Error::Internal(format!(
            "the source failed: {}",
            panic_message(&*p)
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::repository::FsSource;
    use std::path::{Path, PathBuf};

    /// The filesystem source, except that each version of `gated` waits for
    /// the test to let it through (a registry that downloads slowly), and
    /// fetching `panics` panics.
    struct Slow {
        fs: FsSource,
        gated: &'static str,
        gate: std::sync::Mutex<mpsc::Receiver<()>>,
        panics: &'static str,
    }

    impl Source for Slow {
        fn describe(&self) -> String {
            self.fs.describe()
        }
        fn list(&self) -> Result<Vec<ModelListing>> {
            self.fs.list()
        }
        fn list_one(&self, name: &str) -> Result<Option<ModelListing>> {
            self.fs.list_one(name)
        }
        fn materialize(&self, model: &str, version: u64) -> Result<PathBuf> {
            if model == self.gated {
                let _ = self.gate.lock().unwrap().recv();
            }
            if model == self.panics {
                panic!("a backend bug");
            }
            self.fs.materialize(model, version)
        }
    }

    /// Models `fast` and `slow`, two versions each, both serving.
    fn repository(test: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("switchyard-plane-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let onnx = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/identity/1/model.onnx");
        for m in ["fast", "slow"] {
            for v in ["1", "2"] {
                let d = root.join(m).join(v);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::copy(&onnx, d.join("model.onnx")).unwrap();
            }
            std::fs::write(
                root.join(m).join("config.toml"),
                "[version_policy]\nall = true\n",
            )
            .unwrap();
        }
        root
    }

    fn split(a: u64, b: u64) -> TrafficSpec {
        serde_json::from_value(serde_json::json!({ "weights": { "1": a, "2": b } })).unwrap()
    }

    /// Awaits `f` for at most a second: what must never wait behind a load.
    async fn at_once<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(1), f)
            .await
            .expect("answered while a load runs")
    }

    fn start(source: Slow) -> (Arc<Models>, Control, oneshot::Receiver<Result<()>>) {
        let (models, publisher) = Models::new(Scope::new("test"));
        let opts = Options {
            mode: ControlMode::Explicit,
            poll_interval: Duration::from_secs(3600),
            memory_limit: None,
            policies: None,
            warmup_decoder: |_, _, _| Err(Error::invalid("no warm-up files here")),
        };
        let (control, loaded) =
            Control::start(Box::new(source), publisher, opts, Scope::new("test")).unwrap();
        (models, control, loaded)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_that_panics_is_answered_and_the_plane_goes_on() {
        let root = repository("panics");
        let (_release, gate) = mpsc::channel();
        let (models, control, loaded) = start(Slow {
            fs: FsSource::new(root.clone()),
            gated: "",
            gate: std::sync::Mutex::new(gate),
            panics: "slow",
        });
        loaded.await.unwrap().unwrap();
        // Its reason shown if not: a load can fail on a machine short of something.
        assert_eq!(models.model("fast").unwrap().unavailable_reason(), None);
        // Shown as failed, so that a scan does not load it again.
        let slow = models.model("slow").unwrap();
        let why = slow.unavailable_reason().unwrap();
        assert!(why.contains("crashed: a backend bug"), "{why}");
        assert!(!slow.versions.is_empty(), "its versions are listed");
        let answer = control.load("slow").await.unwrap_err().to_string();
        assert!(answer.contains("crashed: a backend bug"), "{answer}");
        at_once(control.set_traffic("fast", split(50, 50), "test"))
            .await
            .unwrap();
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A server of `fast` and `slow` whose first load of `slow` waits for
    /// the sender returned (twice: one per version); returns once `fast` serves.
    async fn slow_start(
        test: &str,
    ) -> (
        PathBuf,
        mpsc::Sender<()>,
        Arc<Models>,
        Control,
        oneshot::Receiver<Result<()>>,
    ) {
        let root = repository(test);
        let (release, gate) = mpsc::channel();
        let (models, control, loaded) = start(Slow {
            fs: FsSource::new(root.clone()),
            gated: "slow",
            gate: std::sync::Mutex::new(gate),
            panics: "",
        });
        // Both loads were queued by the first scan: `slow` is loading.
        let deadline = Instant::now() + Duration::from_secs(60);
        while models.model("fast").is_err() {
            assert!(Instant::now() < deadline, "fast never loaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (root, release, models, control, loaded)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unload_during_a_first_load_wins() {
        let (root, release, models, control, loaded) = slow_start("unload-first").await;
        at_once(control.unload("slow")).await.unwrap();
        release.send(()).unwrap();
        release.send(()).unwrap();
        loaded.await.unwrap().unwrap();
        let slow = models.model("slow").unwrap();
        assert_eq!(
            slow.unavailable_reason().as_deref(),
            Some("unloaded by request")
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_are_answered_while_a_load_runs_and_a_policy_set_meanwhile_is_kept() {
        let (root, release, models, control, mut loaded) = slow_start("slow").await;
        // `slow` is still loading: the server is not ready, and the plane answers.
        assert!(loaded.try_recv().is_err());
        assert!(!models.is_loaded());
        at_once(control.set_traffic("fast", split(70, 30), "test"))
            .await
            .unwrap();
        assert!(at_once(control.rollouts()).await.unwrap().is_empty());
        release.send(()).unwrap();
        release.send(()).unwrap();
        loaded.await.unwrap().unwrap();
        assert!(models.is_loaded());

        // A reload of `slow`, and a policy set while it loads: it survives the swap.
        let reload = tokio::spawn({
            let control = control.clone();
            async move { control.load("slow").await }
        });
        at_once(control.set_traffic("slow", split(90, 10), "test"))
            .await
            .unwrap();
        release.send(()).unwrap();
        release.send(()).unwrap();
        reload.await.unwrap().unwrap();
        let slow = models.model("slow").unwrap();
        assert_eq!(slow.ready_numbers(), vec![1, 2]);
        assert_eq!(slow.traffic.spec.weights, split(90, 10).weights);

        // An unload while a load runs wins: the load is dropped when it ends.
        let reload = tokio::spawn({
            let control = control.clone();
            async move { control.load("slow").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        at_once(control.unload("slow")).await.unwrap();
        release.send(()).unwrap();
        release.send(()).unwrap();
        let answer = reload.await.unwrap().unwrap_err().to_string();
        assert!(
            answer.contains("unloaded or removed while it loaded"),
            "{answer}"
        );
        let slow = models.model("slow").unwrap();
        assert_eq!(
            slow.unavailable_reason().as_deref(),
            Some("unloaded by request")
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
