//! The election on paused tokio time, against an in-memory Lease API with the API
//! server's semantics (resourceVersion bumped on every write, `409` on a stale one).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde_json::json;

use super::*;

#[derive(Default)]
struct Store {
    version: u64,
    object: Option<serde_json::Value>,
}

/// One client of a shared in-memory Lease; faults are per client.
#[derive(Clone)]
struct MemApi {
    store: Arc<Mutex<Store>>,
    /// Every call fails, as for a client cut off from the API server.
    partitioned: Arc<AtomicBool>,
    /// The next N writes are applied but their answer is lost.
    lose_answers: Arc<AtomicU32>,
    latency: Duration,
}

impl MemApi {
    fn new(store: &Arc<Mutex<Store>>) -> MemApi {
        MemApi {
            store: store.clone(),
            partitioned: Arc::default(),
            lose_answers: Arc::default(),
            latency: Duration::from_millis(5),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    async fn reach(&self) -> Result<(), ApiError> {
        tokio::time::sleep(self.latency).await;
        if self.partitioned.load(Ordering::SeqCst) {
            return Err(ApiError::Other("connection refused".into()));
        }
        Ok(())
    }

    fn store_object(
        &self,
        store: &mut Store,
        mut object: serde_json::Value,
    ) -> Result<LeaseObject, ApiError> {
        store.version += 1;
        object["metadata"]["resourceVersion"] = json!(store.version.to_string());
        store.object = Some(object.clone());
        if self
            .lose_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ApiError::Other("the answer was lost".into()));
        }
        LeaseObject::from_json(object)
    }
}

impl LeaseApi for MemApi {
    async fn get(&self) -> Result<Option<LeaseObject>, ApiError> {
        self.reach().await?;
        let store = self.store();
        match &store.object {
            None => Ok(None),
            Some(object) => LeaseObject::from_json(object.clone()).map(Some),
        }
    }

    async fn create(&self, record: &Record) -> Result<LeaseObject, ApiError> {
        self.reach().await?;
        let mut store = self.store();
        if store.object.is_some() {
            return Err(ApiError::Conflict);
        }
        let template =
            LeaseObject::from_json(json!({"metadata": {"name": "l", "resourceVersion": "0"}}))?;
        let object = template.with_record(record);
        self.store_object(&mut store, object)
    }

    async fn replace(
        &self,
        previous: &LeaseObject,
        record: &Record,
    ) -> Result<LeaseObject, ApiError> {
        self.reach().await?;
        let mut store = self.store();
        if previous.resource_version() != store.version.to_string() {
            return Err(ApiError::Conflict);
        }
        let object = previous.with_record(record);
        self.store_object(&mut store, object)
    }
}

const TIMINGS: Timings = Timings {
    lease_duration: Duration::from_secs(15),
    renew_deadline: Duration::from_secs(10),
    retry_period: Duration::from_secs(2),
};

struct Candidate {
    ha: Arc<Ha>,
    api: MemApi,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(store: &Arc<Mutex<Store>>, name: &str) -> Candidate {
    let ha = Arc::new(Ha::new(name.to_owned(), TIMINGS));
    let api = MemApi::new(store);
    let stop = CancellationToken::new();
    let elector = Elector::new(api.clone(), ha.clone(), Arc::new(Telemetry::default()));
    let task = tokio::spawn(elector.run(stop.clone()));
    Candidate {
        ha,
        api,
        stop,
        task,
    }
}

fn holder(store: &Arc<Mutex<Store>>) -> String {
    let store = store.lock().unwrap();
    store.object.as_ref().map_or(String::new(), |o| {
        o["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    })
}

/// Advances paused time in small steps, checking after each that at most one
/// candidate may write; returns when `done` holds or after `limit`.
async fn run_until(
    candidates: &[&Candidate],
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let writers: Vec<&str> = candidates
            .iter()
            .filter(|c| c.ha.write_window(now).is_some())
            .map(|c| c.ha.identity())
            .collect();
        assert!(writers.len() <= 1, "two writers at once: {writers:?}");
        if done() {
            break;
        }
    }
    start.elapsed()
}

#[test]
fn the_rule() {
    let now = Instant::now();
    let seen = |holder: &str, secs_ago: u64| Observed {
        record: Record {
            holder: holder.into(),
            lease_duration_s: 15,
            ..Record::default()
        },
        resource_version: "1".into(),
        at: now - Duration::from_secs(secs_ago),
    };
    assert_eq!(decide(None, "a", now), Action::Create);
    assert_eq!(decide(Some(&seen("a", 100)), "a", now), Action::Renew);
    assert_eq!(decide(Some(&seen("", 0)), "a", now), Action::Take);
    assert_eq!(decide(Some(&seen("b", 14)), "a", now), Action::Wait);
    assert_eq!(decide(Some(&seen("b", 15)), "a", now), Action::Take);
}

#[tokio::test(start_paused = true)]
async fn the_first_candidate_creates_the_lease_and_leads() {
    let store = Arc::new(Mutex::new(Store::default()));
    let a = candidate(&store, "a");
    run_until(&[&a], Duration::from_secs(1), || a.ha.is_leader()).await;
    assert_eq!(a.ha.role(), Role::Leader { term: 1 });
    let window = a.ha.write_window(Instant::now()).unwrap();
    assert!(
        window <= TIMINGS.renew_deadline && window > Duration::from_secs(9),
        "{window:?}"
    );
    // Renewals keep the window open for as long as the API answers.
    run_until(&[&a], Duration::from_secs(60), || false).await;
    assert!(a.ha.write_window(Instant::now()).is_some());
    assert_eq!(holder(&store), "a");
    assert_eq!(a.ha.status().holder.as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn candidates_agree_on_one_leader() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (a, b, c) = (
        candidate(&store, "a"),
        candidate(&store, "b"),
        candidate(&store, "c"),
    );
    let all = [&a, &b, &c];
    run_until(&all, Duration::from_secs(60), || false).await;
    let leaders: Vec<&str> = all
        .iter()
        .filter(|c| c.ha.is_leader())
        .map(|c| c.ha.identity())
        .collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_eq!(holder(&store), leaders[0]);
    for other in all.iter().filter(|c| !c.ha.is_leader()) {
        assert_eq!(other.ha.role(), Role::Standby);
        assert_eq!(other.ha.status().holder.as_deref(), Some(leaders[0]));
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_leader_stops_before_anyone_takes_over() {
    let store = Arc::new(Mutex::new(Store::default()));
    let a = candidate(&store, "a");
    run_until(&[&a], Duration::from_secs(1), || a.ha.is_leader()).await;
    let b = candidate(&store, "b");
    run_until(&[&a, &b], Duration::from_secs(10), || false).await;
    assert_eq!(b.ha.role(), Role::Standby);

    a.api.partitioned.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    // `a` may write for at most renew_deadline after its last renewal began.
    run_until(&[&a, &b], Duration::from_secs(30), || !a.ha.is_leader()).await;
    let stopped = cut.elapsed();
    assert!(
        stopped <= TIMINGS.renew_deadline + Duration::from_millis(100),
        "{stopped:?}"
    );
    assert!(a.ha.write_window(Instant::now()).is_none());
    // `b` takes over only after the record has been still for lease_duration.
    run_until(&[&a, &b], Duration::from_secs(30), || b.ha.is_leader()).await;
    let took = cut.elapsed();
    assert!(
        took >= TIMINGS.lease_duration - TIMINGS.retry_period,
        "{took:?}"
    );
    assert!(
        took <= TIMINGS.lease_duration + TIMINGS.retry_period * 2,
        "{took:?}"
    );
    assert!(
        took > stopped + Duration::from_secs(3),
        "the margin: {stopped:?} then {took:?}"
    );
    assert_eq!(holder(&store), "b");
    // Back on the network, `a` follows.
    a.api.partitioned.store(false, Ordering::SeqCst);
    run_until(&[&a, &b], Duration::from_secs(10), || false).await;
    assert_eq!(a.ha.role(), Role::Standby);
    assert_eq!(a.ha.status().holder.as_deref(), Some("b"));
    assert!(b.ha.is_leader());
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_does_not_cost_the_lease() {
    let store = Arc::new(Mutex::new(Store::default()));
    let a = candidate(&store, "a");
    run_until(&[&a], Duration::from_secs(1), || a.ha.is_leader()).await;
    // The renewal is applied but its answer is lost: the next PUT carries a stale
    // resourceVersion, gets 409, reads the Lease, finds itself the holder and renews.
    a.api.lose_answers.store(2, Ordering::SeqCst);
    run_until(&[&a], Duration::from_secs(20), || false).await;
    assert_eq!(a.ha.role(), Role::Leader { term: 1 }, "never stepped down");
    assert!(a.ha.write_window(Instant::now()).is_some());
}

#[tokio::test(start_paused = true)]
async fn release_hands_over_at_once() {
    let store = Arc::new(Mutex::new(Store::default()));
    let a = candidate(&store, "a");
    run_until(&[&a], Duration::from_secs(1), || a.ha.is_leader()).await;
    let b = candidate(&store, "b");
    run_until(&[&a, &b], Duration::from_secs(5), || false).await;
    a.stop.cancel();
    a.task.await.unwrap();
    assert_eq!(holder(&store), "");
    let waited = run_until(&[&b], Duration::from_secs(30), || b.ha.is_leader()).await;
    assert!(waited <= TIMINGS.retry_period * 2, "{waited:?}");
    let spec = store.lock().unwrap().object.clone().unwrap()["spec"].clone();
    assert_eq!(spec["leaseTransitions"], 1);
}

#[tokio::test(start_paused = true)]
async fn the_pending_operation_is_recorded_and_inherited() {
    let store = Arc::new(Mutex::new(Store::default()));
    let a = candidate(&store, "a");
    run_until(&[&a], Duration::from_secs(1), || a.ha.is_leader()).await;
    let b = candidate(&store, "b");
    run_until(&[&a, &b], Duration::from_secs(3), || false).await;
    a.ha.record_operation(Some("op-7"));
    // Recorded at once, not at the next renewal.
    let recorded = || {
        store.lock().unwrap().object.as_ref().unwrap()["metadata"]["annotations"]
            [lease::OPERATION_ANNOTATION]
            == "op-7"
    };
    run_until(&[&a, &b], Duration::from_millis(500), recorded).await;
    assert!(recorded());
    // The leader dies without releasing: `b` takes over and inherits the operation.
    a.task.abort();
    run_until(&[&b], Duration::from_secs(30), || b.ha.is_leader()).await;
    assert_eq!(b.ha.take_inherited().as_deref(), Some("op-7"));
    assert_eq!(b.ha.take_inherited(), None, "once per term");
    b.ha.record_operation(None);
    run_until(&[&b], Duration::from_secs(3), || false).await;
    let annotations =
        store.lock().unwrap().object.clone().unwrap()["metadata"]["annotations"].clone();
    assert!(
        annotations.get(lease::OPERATION_ANNOTATION).is_none(),
        "{annotations}"
    );
}

#[tokio::test(start_paused = true)]
async fn only_one_of_two_creators_wins() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (a, b) = (candidate(&store, "a"), candidate(&store, "b"));
    run_until(&[&a, &b], Duration::from_secs(10), || false).await;
    assert!(a.ha.is_leader() ^ b.ha.is_leader());
}
