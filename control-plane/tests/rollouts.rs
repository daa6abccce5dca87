//! Rollouts end to end: control-plane processes on SQLite or Postgres, real
//! agents with traffic flowing through them, mock providers as the baseline
//! and the candidate. Stages are short and agents report every 100 ms, so a
//! whole rollout takes seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use serde_json::json;
use shepherd_proto::v1;
use shepherd_tests::agent::FleetAgent;
use shepherd_tests::control_plane::{PolicyClient, RolloutClient, rollout_client_of};
use shepherd_tests::mock::{MockProvider, Mode};
use shepherd_tests::pg::TestDb;
use tokio_stream::StreamExt;

use common::*;

use v1::RolloutEventKind as Kind;
use v1::RolloutState as State;

/// Flags that make the leader judge every 100 ms.
const FAST: &[&str] = &["--analysis-interval", "100ms"];

fn stage(weight: u32, bake: &str, min_requests: u64, max: &str) -> serde_json::Value {
    json!({"weight": weight, "min_bake_time": bake, "min_requests": min_requests, "max_stage_time": max})
}

/// Three stages (20%, 50%, 100%) and error-rate gates.
fn three_stages() -> serde_json::Value {
    json!({
        "stages": [stage(2000, "0.3s", 20, "30s"), stage(5000, "0.3s", 20, "30s"), stage(10000, "0.3s", 20, "30s")],
        "gates": {"max_error_rate_percent": 5.0, "significance": 0.01, "min_error_rate_effect_percent": 1.0},
        "ack_timeout": "5s"
    })
}

struct Rig {
    cps: Vec<Cp>,
    a: MockProvider,
    b: MockProvider,
    agents: Vec<FleetAgent>,
    policies: PolicyClient,
    rollouts: RolloutClient,
    _dirs: Vec<tempfile::TempDir>,
}

impl Rig {
    /// `replicas` control planes on `url`, two agents (one per replica when
    /// there are two, each knowing every replica), and policy "chat" with
    /// `extra` merged in, at weight 0.
    async fn start(url: &str, replicas: usize, extra: serde_json::Value) -> Rig {
        Self::start_with(url, replicas, extra, &[]).await
    }

    /// As [`Rig::start`], with extra control-plane flags.
    async fn start_with(
        url: &str,
        replicas: usize,
        extra: serde_json::Value,
        flags: &[&str],
    ) -> Rig {
        let flags: Vec<&str> = FAST.iter().chain(flags).copied().collect();
        let a = MockProvider::new("a");
        let b = MockProvider::new("b");
        let (aa, ba) = (a.serve_tcp().await, b.serve_tcp().await);
        let cps: Vec<Cp> = (0..replicas)
            .map(|i| Cp::start_with(url, &format!("replica-{i}"), &flags))
            .collect();
        let (mut policies, _) = cps[0].clients().await;
        policies
            .create_policy(v1::CreatePolicyRequest {
                policy: Some(chat_policy(aa, ba, 0, extra)),
                ..Default::default()
            })
            .await
            .unwrap();
        let urls: Vec<String> = cps.iter().map(Cp::url).collect();
        let mut dirs = Vec::new();
        let mut agents = Vec::new();
        for i in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let mut endpoints = urls.clone();
            endpoints.rotate_left(i % urls.len());
            agents.push(start_agent(&endpoints, &format!("agent-{i}"), "chat", dir.path()).await);
            dirs.push(dir);
        }
        for agent in &agents {
            agent.wait_version(|v| v > 0).await;
        }
        let rollouts = rollout_client_of(&cps[0].addr(), Some(ADMIN)).await;
        Rig {
            cps,
            a,
            b,
            agents,
            policies,
            rollouts,
            _dirs: dirs,
        }
    }

    fn load(&self) -> Load {
        Load::start(&self.agents.iter().collect::<Vec<_>>())
    }

    async fn start_rollout(&mut self) -> v1::Rollout {
        self.rollouts
            .start_rollout(start_request("test"))
            .await
            .unwrap()
            .into_inner()
    }

    async fn get(&mut self) -> v1::Rollout {
        self.rollouts
            .get_rollout(v1::GetRolloutRequest {
                policy: "chat".into(),
                number: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until the latest rollout satisfies `ok`.
    async fn wait(&self, what: &str, ok: impl Fn(&v1::Rollout) -> bool) -> v1::Rollout {
        eventually(what, || {
            let mut client = self.rollouts.clone();
            let ok = &ok;
            async move {
                let r = client
                    .get_rollout(v1::GetRolloutRequest {
                        policy: "chat".into(),
                        number: 0,
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if ok(&r) { Ok(r) } else { Err(format!("{r:?}")) }
            }
        })
        .await
    }

    async fn wait_state(&self, state: State) -> v1::Rollout {
        self.wait(&format!("rollout {state:?}"), |r| r.state() == state)
            .await
    }

    /// The events of rollout `number` of "chat" after `after`, as
    /// WatchRollout streams them.
    async fn watch(&mut self, number: i64, after: i64) -> tonic::Streaming<v1::RolloutEvent> {
        self.rollouts
            .watch_rollout(v1::WatchRolloutRequest {
                policy: "chat".into(),
                number,
                after_sequence: after,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Every event of a rollout that has ended, through WatchRollout (which
    /// ends its stream after the last one).
    async fn events(&mut self, number: i64) -> Vec<v1::RolloutEvent> {
        let mut stream = self.watch(number, 0).await;
        let mut events = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the watch stream ended")
        {
            events.push(e.unwrap());
        }
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
        let expected: Vec<i64> = (1..=i64::try_from(events.len()).unwrap()).collect();
        assert_eq!(
            sequences, expected,
            "events are numbered without gaps or repeats"
        );
        events
    }

    async fn policy(&mut self) -> v1::Policy {
        self.policies
            .get_policy(v1::GetPolicyRequest {
                name: "chat".into(),
                revision: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits for every agent to apply `version`, then sends requests through
    /// each and returns how many reached the candidate.
    async fn candidate_share(&self, version: u64) -> usize {
        for agent in &self.agents {
            agent.wait_version(|v| v >= version).await;
        }
        self.b.clear();
        for agent in &self.agents {
            for _ in 0..40 {
                assert_eq!(agent.client().post(CHAT, BODY, &[]).await.status, 200);
            }
        }
        self.b.count()
    }

    async fn stop(self) {
        for agent in self.agents {
            agent.stop().await;
        }
        drop(self.cps);
    }
}

/// A command to rollout `number` (0: the latest) of "chat".
fn command(number: i64, reason: &str) -> v1::RolloutCommand {
    v1::RolloutCommand {
        policy: "chat".into(),
        number,
        reason: reason.into(),
    }
}

fn start_request(reason: &str) -> v1::StartRolloutRequest {
    v1::StartRolloutRequest {
        policy: "chat".into(),
        reason: reason.into(),
    }
}

fn kinds(events: &[v1::RolloutEvent]) -> Vec<Kind> {
    events.iter().map(v1::RolloutEvent::kind).collect()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("cp.db").display())
}

/// A healthy candidate goes through every stage to 100% and becomes the
/// baseline in a new policy revision; a second start while it runs is
/// refused naming the active rollout.
async fn healthy_candidate_promotes(url: &str) {
    let mut rig = Rig::start(url, 1, json!({"rollout": three_stages()})).await;
    let load = rig.load();
    let started = rig.start_rollout().await;
    assert_eq!((started.number, started.weight), (1, 2000));
    let second = rig
        .rollouts
        .start_rollout(start_request(""))
        .await
        .unwrap_err();
    assert_eq!(second.code(), tonic::Code::FailedPrecondition);
    assert!(second.message().contains("chat#1"), "{}", second.message());

    let done = rig.wait_state(State::Succeeded).await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    assert_eq!(done.weight, 10_000);
    let events = rig.events(1).await;
    assert_eq!(
        kinds(&events),
        [
            Kind::Started,
            Kind::ClockStarted,
            Kind::Promoted,
            Kind::ClockStarted,
            Kind::Promoted,
            Kind::ClockStarted,
            Kind::Succeeded
        ]
    );
    for e in events.iter().filter(|e| e.kind() == Kind::Promoted) {
        assert_eq!(e.verdict(), v1::Verdict::Pass);
        let c = e.figures.as_ref().unwrap().candidate.as_ref().unwrap();
        assert!(c.requests >= 20, "{c:?}");
    }
    let policy = rig.policy().await;
    let traffic = policy.traffic.unwrap();
    assert_eq!(
        (traffic.baseline.as_str(), traffic.candidate.as_str()),
        ("b", "")
    );
    // All traffic now goes to b, the new baseline.
    rig.a.clear();
    assert_eq!(rig.candidate_share(done.stage_version).await, rig.b.count());
    assert_eq!(rig.a.count(), 0);
    // Nothing left to roll out.
    let again = rig
        .rollouts
        .start_rollout(start_request(""))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(
        again.message().contains("no candidate"),
        "{}",
        again.message()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_candidate_promotes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    healthy_candidate_promotes(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_candidate_promotes_on_postgres() {
    let db = TestDb::create().await;
    healthy_candidate_promotes(&db.url).await;
}

/// A candidate answering 20% of requests with 503 is rolled back: the FAILED
/// event carries the numbers, every agent ends at weight 0, and with
/// fallback on the app sees no failure.
async fn failing_candidate_rolls_back(url: &str) {
    let extra = json!({"rollout": three_stages(), "fallback": ["a"]});
    let mut rig = Rig::start(url, 1, extra).await;
    rig.b.set(|x| x.error_rate = Some(0.2));
    let load = rig.load();
    rig.start_rollout().await;
    let done = rig.wait_state(State::RolledBack).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed for the app");
    assert_eq!(done.weight, 0);
    let events = rig.events(1).await;
    let failure = events.iter().find(|e| e.kind() == Kind::Failed).unwrap();
    assert_eq!(failure.verdict(), v1::Verdict::Fail);
    assert!(failure.reason.contains("error rate"), "{}", failure.reason);
    let c = failure.figures.as_ref().unwrap().candidate.clone().unwrap();
    assert!(c.errors >= 5 && c.error_rate_percent > 5.0, "{c:?}");
    assert_eq!(kinds(&events).last(), Some(&Kind::RolledBack));
    assert_eq!(rig.candidate_share(done.stage_version).await, 0);
    assert_eq!(rig.policy().await.traffic.unwrap().candidate_weight, 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_candidate_rolls_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    failing_candidate_rolls_back(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_candidate_rolls_back_on_postgres() {
    let db = TestDb::create().await;
    failing_candidate_rolls_back(&db.url).await;
}

/// The baseline at 1.00/2.00 per million tokens, the candidate at three
/// times that, and a ceiling of 1.5 on the ratio of their costs.
fn pricier_candidate() -> serde_json::Value {
    let price = |i: f64, o: f64| json!({"input_per_million": i, "output_per_million": o});
    json!({
        "currency": "EUR",
        "backend_prices": {"a": price(1.0, 2.0), "b": price(3.0, 6.0)},
        "rollout": {
            "stages": [stage(2000, "0.3s", 20, "60s"), stage(10000, "0.3s", 20, "60s")],
            "gates": {"max_cost_ratio": 1.5},
            "ack_timeout": "5s"
        }
    })
}

/// A candidate three times pricier per answer is rolled back by the cost
/// gate: the FAILED event names the regression, and the figures carry each
/// side's cost and the projection of a full move.
async fn pricier_candidate_rolls_back(url: &str) {
    let mut rig = Rig::start(url, 1, pricier_candidate()).await;
    let load = rig.load();
    rig.start_rollout().await;
    let done = rig.wait_state(State::RolledBack).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed for the app");
    assert_eq!(done.weight, 0);
    let events = rig.events(1).await;
    let failure = events.iter().find(|e| e.kind() == Kind::Failed).unwrap();
    assert!(
        failure.reason.starts_with("cost regression"),
        "{}",
        failure.reason
    );
    let figures = failure.figures.as_ref().unwrap();
    let gate = figures
        .gates
        .iter()
        .find(|g| g.gate == "max_cost_ratio")
        .unwrap();
    // 10 input and 5 output tokens per answer on both sides.
    assert!((gate.value - 3.0).abs() < 1e-9, "{gate:?}");
    let cost = |s: &Option<v1::SideFigures>| s.as_ref().unwrap().cost.clone().unwrap();
    let (c, b) = (cost(&figures.candidate), cost(&figures.baseline));
    assert_eq!((c.currency.as_str(), c.unpriced, b.unpriced), ("EUR", 0, 0));
    assert!(c.priced >= 100 && b.priced >= 100, "{c:?} {b:?}");
    assert!((c.per_request - 0.00006).abs() < 1e-12, "{c:?}");
    assert!((b.per_request - 0.00002).abs() < 1e-12, "{b:?}");
    assert!((c.per_1k_output_tokens - 0.012).abs() < 1e-9, "{c:?}");
    assert_eq!(
        shepherd_proto::cost::parse_exact(&c.spend),
        Some(u128::from(c.priced) * 60_000_000)
    );
    // Spend per attempt over the stage's rate: a report may hold an
    // answer's cost and not yet its outcome, so the ratio is near 3.
    let ratio = c.monthly_at_full / b.monthly_at_full;
    assert!((ratio - 3.0).abs() < 0.1, "{ratio}");
    let projection = &figures.cost_projection;
    let change: f64 = projection
        .strip_prefix("at 100% the candidate would cost ")
        .and_then(|rest| rest.rsplit_once(" EUR: +"))
        .and_then(|(_, pct)| pct.strip_suffix('%')?.parse().ok())
        .unwrap_or_else(|| panic!("{projection}"));
    assert!((change - 200.0).abs() <= 10.0, "{projection}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pricier_candidate_rolls_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    pricier_candidate_rolls_back(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pricier_candidate_rolls_back_on_postgres() {
    let db = TestDb::create().await;
    pricier_candidate_rolls_back(&db.url).await;
}

/// A stage's spend cap, once reached, pauses the rollout when on_failure
/// says so; the event shows the spend against the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_spend_cap_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = pricier_candidate();
    // 0.00006 per candidate answer: the cap is reached after 10 of them.
    extra["rollout"]["gates"] = json!({"max_stage_spend": 0.0006});
    extra["rollout"]["on_failure"] = json!("FAILURE_ACTION_PAUSE");
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    let load = rig.load();
    rig.start_rollout().await;
    let paused = rig.wait_state(State::Paused).await;
    load.stop().await;
    assert_eq!((paused.stage, paused.weight), (0, 2000));
    let events = rig
        .rollouts
        .get_rollout(v1::GetRolloutRequest {
            policy: "chat".into(),
            number: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(events.reason.contains("gate failed"), "{}", events.reason);
    let mut stream = rig.watch(1, 2).await;
    let e = stream.next().await.unwrap().unwrap();
    assert_eq!((e.kind(), e.state()), (Kind::Failed, State::Paused));
    assert!(
        e.reason.contains("reached its cap of 0.0006"),
        "{}",
        e.reason
    );
    let gate = e
        .figures
        .as_ref()
        .unwrap()
        .gates
        .iter()
        .find(|g| g.gate == "max_stage_spend")
        .unwrap()
        .clone();
    assert!(gate.value >= 0.0006 && gate.limit == 0.0006, "{gate:?}");
    rig.rollouts.abort_rollout(command(0, "")).await.unwrap();
    rig.stop().await;
}

/// An agent reaching the candidate's hourly spend cap sends its share to
/// the baseline, and the rollout tells it in a SPEND_CAPPED event with the
/// figures counting the trips.
async fn spend_cap_is_an_event(url: &str) {
    let mut extra = pricier_candidate();
    // 0.00006 per candidate answer: each agent's cap is reached at its
    // fifth; the stage cannot pass (it needs far more requests).
    extra["rollout"]["stages"] = json!([
        stage(2000, "0.3s", 1_000_000, "60s"),
        stage(10000, "0.3s", 20, "60s")
    ]);
    extra["rollout"]["gates"] = json!({});
    extra["traffic"] = json!({"max_candidate_spend_per_hour": 0.0003});
    let mut rig = Rig::start(url, 1, extra).await;
    let load = rig.load();
    rig.start_rollout().await;
    let mut stream = rig.watch(1, 0).await;
    let capped = loop {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("no SPEND_CAPPED event")
            .unwrap()
            .unwrap();
        if e.kind() == Kind::SpendCapped {
            break e;
        }
    };
    assert!(
        capped
            .reason
            .starts_with("an hourly spend cap on the candidate was reached"),
        "{}",
        capped.reason
    );
    // Each agent stops sending to the candidate after its 5 answers (the
    // event came with the first agent's; the other may trip later).
    eventually("both agents' caps reached", || async {
        match rig.b.count() {
            10 => Ok(()),
            n => Err(format!("{n} candidate requests")),
        }
    })
    .await;
    load.run_for(100).await;
    assert_eq!(rig.b.count(), 10);
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let r = rig.get().await;
    assert!(r.spend_cap_trips >= 1, "{r:?}");
    rig.rollouts.abort_rollout(command(0, "")).await.unwrap();
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_cap_is_an_event_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    spend_cap_is_an_event(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_cap_is_an_event_on_postgres() {
    let db = TestDb::create().await;
    spend_cap_is_an_event(&db.url).await;
}

/// A hard outage of the candidate (every answer a 503) with fallback and a
/// circuit breaker on: the app sees no failed request, and the rollout is
/// rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_outage_with_fallback_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({
        "rollout": three_stages(),
        "fallback": ["a"],
        "circuit_breaker": {"consecutive_failures": 5, "open_time": "1s"}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    rig.b.set(|x| x.error_rate = Some(1.0));
    let load = rig.load();
    rig.start_rollout().await;
    let done = rig.wait_state(State::RolledBack).await;
    load.run_for(200).await;
    let (sent, failed) = load.stop().await;
    println!("hard outage with fallback: {failed} of {sent} app requests failed");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed for the app");
    assert_eq!(rig.candidate_share(done.stage_version).await, 0);
    rig.stop().await;
}

/// A candidate ten times as slow as the baseline is rolled back by the p95
/// latency ratio gate (at 1.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_candidate_rolls_back_on_latency() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = json!({
        "stages": [stage(5000, "0.3s", 20, "30s"), stage(10000, "0.3s", 20, "30s")],
        "gates": {"max_latency_p95_ratio": 1.5}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, json!({"rollout": rollout})).await;
    // Ten times as slow: a loaded machine adds tens of milliseconds to the
    // baseline's tail, which takes a ratio of 2 under 1.5 but not one of 10.
    rig.a.set(|x| x.delay = Duration::from_millis(20));
    rig.b.set(|x| x.delay = Duration::from_millis(200));
    let load = rig.load();
    rig.start_rollout().await;
    rig.wait_state(State::RolledBack).await;
    load.stop().await;
    let events = rig.events(1).await;
    let failure = events.iter().find(|e| e.kind() == Kind::Failed).unwrap();
    assert!(failure.reason.contains("latency p95"), "{}", failure.reason);
    let gates = &failure.figures.as_ref().unwrap().gates;
    let gate = gates
        .iter()
        .find(|g| g.gate == "max_latency_p95_ratio")
        .unwrap();
    assert_eq!(gate.verdict(), v1::Verdict::Fail);
    assert!(gate.value > 1.5, "{gate:?}");
    rig.stop().await;
}

/// A candidate rate-limiting 30% of requests is caught by the 429 gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_candidate_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = json!({
        "stages": [stage(5000, "0.3s", 20, "30s"), stage(10000, "0.3s", 20, "30s")],
        "gates": {"max_rate_limited_percent": 5.0}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, json!({"rollout": rollout})).await;
    rig.b.set(|x| {
        x.error_rate = Some(0.3);
        x.error_status = 429;
    });
    let load = rig.load();
    rig.start_rollout().await;
    rig.wait_state(State::RolledBack).await;
    load.stop().await;
    let events = rig.events(1).await;
    let failure = events.iter().find(|e| e.kind() == Kind::Failed).unwrap();
    assert!(failure.reason.contains("429 rate"), "{}", failure.reason);
    rig.stop().await;
}

/// Without traffic a stage cannot pass or fail: at its time limit it is
/// INCONCLUSIVE and the rollout pauses, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_is_inconclusive() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = json!({
        "stages": [stage(2000, "0.2s", 50, "1s"), stage(10000, "0.2s", 50, "1s")],
        "gates": {"max_error_rate_percent": 5.0}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, json!({"rollout": rollout})).await;
    rig.start_rollout().await;
    let paused = rig.wait_state(State::Paused).await;
    assert_eq!((paused.stage, paused.weight), (0, 2000));
    let mut stream = rig.watch(1, 2).await;
    let e = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (e.kind(), e.verdict()),
        (Kind::Inconclusive, v1::Verdict::Inconclusive)
    );
    assert!(
        e.reason.contains("0 of 50 candidate requests"),
        "{}",
        e.reason
    );
    rig.stop().await;
}

/// Pause holds the stage even when it would pass; resume continues; abort
/// returns the candidate to 0% at once; retry starts a new rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_abort_retry() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let mut rig = Rig::start(&url, 1, json!({"rollout": three_stages()})).await;
    let load = rig.load();
    let started = rig.start_rollout().await;
    let paused = rig
        .rollouts
        .pause_rollout(command(0, "looking at dashboards"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.state(), State::Paused);
    // The stage holds although its telemetry would pass it: wait until the
    // windows under its version hold well past what it needs.
    let reader = shepherd_control_plane::store::open(&url, &Default::default())
        .await
        .unwrap();
    eventually("telemetry enough to pass the paused stage", || {
        let reader = reader.clone();
        async move {
            let rows = reader
                .read_telemetry("chat", 0, i64::MAX)
                .await
                .map_err(|e| e.to_string())?;
            let version = i64::try_from(started.stage_version).unwrap();
            let c = shepherd_control_plane::rollout::leader::backend_sums(&rows, "b", version);
            let n = shepherd_control_plane::analysis::judged(&c.outcomes);
            if n >= 200 {
                Ok(())
            } else {
                Err(format!("{n} candidate requests"))
            }
        }
    })
    .await;
    let held = rig.get().await;
    assert_eq!(
        (held.state(), held.stage, held.sequence),
        (State::Paused, 0, paused.sequence)
    );

    let resumed = rig
        .rollouts
        .resume_rollout(command(0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state(), State::Running);
    rig.wait("promotion after resume", |r| r.stage >= 1).await;

    let aborted = rig
        .rollouts
        .abort_rollout(command(0, "not today"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((aborted.state(), aborted.weight), (State::Aborted, 0));
    load.stop().await;
    assert_eq!(rig.candidate_share(aborted.stage_version).await, 0);
    let events = rig.events(1).await;
    let k = kinds(&events);
    assert!(
        k.contains(&Kind::Paused) && k.contains(&Kind::Resumed),
        "{k:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind(), last.actor.as_str()),
        (Kind::Aborted, "operator:admin")
    );
    assert!(last.reason.contains("not today"), "{}", last.reason);

    let retried = rig
        .rollouts
        .retry_rollout(command(1, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (retried.number, retried.retry_of, retried.state()),
        (2, 1, State::Running)
    );
    let refused = rig
        .rollouts
        .pause_rollout(command(1, ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("ABORTED"),
        "{}",
        refused.message()
    );
    rig.stop().await;
}

/// A control plane killed in the middle of a stage resumes the same stage
/// with its clock where it was; no event is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stage_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = json!({
        "stages": [stage(2000, "3s", 20, "60s"), stage(10000, "0.3s", 20, "60s")],
        "gates": {"max_error_rate_percent": 5.0}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, json!({"rollout": rollout})).await;
    let load = rig.load();
    rig.start_rollout().await;
    let clocked = rig
        .wait("the stage clock", |r| r.clock_start_time.is_some())
        .await;
    rig.cps[0].kill();
    rig.cps[0].restart();
    let after = rig.get().await;
    assert_eq!(
        (after.stage, after.clock_start_time, after.sequence),
        (0, clocked.clock_start_time, clocked.sequence)
    );
    rig.wait_state(State::Succeeded).await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let events = rig.events(1).await;
    assert_eq!(
        kinds(&events),
        [
            Kind::Started,
            Kind::ClockStarted,
            Kind::Promoted,
            Kind::ClockStarted,
            Kind::Succeeded
        ]
    );
    rig.stop().await;
}

/// Two replicas on Postgres: one leads; killed, the other takes over and
/// finishes the rollout without a double promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_handover_on_postgres() {
    let db = TestDb::create().await;
    let rollout = json!({
        "stages": [stage(2000, "1s", 20, "60s"), stage(5000, "1s", 20, "60s"), stage(10000, "0.5s", 20, "60s")],
        "gates": {"max_error_rate_percent": 5.0}
    });
    let mut rig = Rig::start(&db.url, 2, json!({"rollout": rollout})).await;
    let load = rig.load();
    rig.start_rollout().await;
    rig.wait("the first promotion", |r| r.stage >= 1).await;
    let leader = rig
        .cps
        .iter()
        .position(|cp| {
            cp.process
                .as_ref()
                .unwrap()
                .log()
                .contains("leading the rollout analysis")
        })
        .expect("a replica leads");
    rig.cps[leader].kill();
    let other = 1 - leader;
    rig.rollouts = rollout_client_of(&rig.cps[other].addr(), Some(ADMIN)).await;
    rig.wait_state(State::Succeeded).await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let log = rig.cps[other].process.as_ref().unwrap().log();
    assert!(log.contains("leading the rollout analysis"), "{log}");
    let events = rig.events(1).await;
    assert_eq!(
        kinds(&events),
        [
            Kind::Started,
            Kind::ClockStarted,
            Kind::Promoted,
            Kind::ClockStarted,
            Kind::Promoted,
            Kind::ClockStarted,
            Kind::Succeeded
        ]
    );
    rig.stop().await;
}

/// A shadow-only first stage (weight 0) is judged on the shadow's answers:
/// a candidate answering malformed JSON is rolled back by the default gate
/// on malformed answers before any user sees it; fixed and retried, it
/// passes the shadow stage and goes to 100%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_only_stage_gates_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({
        "shadow": {"percent": 100.0},
        "rollout": {
            "stages": [stage(0, "0.3s", 20, "30s"), stage(10000, "0.3s", 20, "30s")],
            "gates": {"max_shadow_schema_error_percent": 5.0, "max_error_rate_percent": 5.0}
        }
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    rig.b.set(|x| x.mode = Some(Mode::Malformed));
    let load = rig.load();
    let started = rig.start_rollout().await;
    assert_eq!(started.weight, 0);
    rig.wait_state(State::RolledBack).await;
    let events = rig.events(1).await;
    let failure = events.iter().find(|e| e.kind() == Kind::Failed).unwrap();
    assert!(
        failure
            .reason
            .contains("rejected or malformed answers 100.00%")
            && failure.reason.contains("malformed HTTP 200"),
        "{}",
        failure.reason
    );
    assert!(
        failure
            .figures
            .as_ref()
            .unwrap()
            .shadow
            .as_ref()
            .unwrap()
            .compared
            >= 5
    );

    rig.b.set(|x| x.mode = None);
    rig.rollouts
        .retry_rollout(command(0, "fixed"))
        .await
        .unwrap();
    rig.wait_state(State::Succeeded).await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let events = rig.events(2).await;
    let promoted = events.iter().find(|e| e.kind() == Kind::Promoted).unwrap();
    let shadow = promoted.figures.as_ref().unwrap().shadow.clone().unwrap();
    assert!(shadow.compared >= 20, "{shadow:?}");
    // Success hands the baseline over in a valid revision: the shadow stays
    // for the next candidate, resting meanwhile.
    let p = rig.policy().await;
    let t = p.traffic.unwrap();
    assert_eq!((t.baseline.as_str(), t.candidate.as_str()), ("b", ""));
    assert_eq!(p.shadow.unwrap().backend, "");
    assert!(p.rollout.is_some());
    let client = rig.agents[0].client();
    eventually("the agents serve from the new baseline", || async {
        let r = client.post(CHAT, BODY, &[]).await;
        match (r.status.as_u16(), r.backend()) {
            (200, "b") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    rig.stop().await;
}

/// With a gradual rollback, a failed stage steps the weight down through
/// the earlier stages' weights before reaching 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradual_rollback_steps_down() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = json!({
        "stages": [stage(2000, "0.3s", 20, "60s"), stage(5000, "30s", 20, "60s"), stage(10000, "0.3s", 20, "60s")],
        "gates": {"max_error_rate_percent": 5.0},
        "rollback_mode": "ROLLBACK_MODE_GRADUAL",
        "rollback_step_time": "0.5s"
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, json!({"rollout": rollout})).await;
    let load = rig.load();
    rig.start_rollout().await;
    rig.wait("stage 2", |r| r.stage == 1).await;
    rig.b.set(|x| x.error_rate = Some(0.5));
    let done = rig.wait_state(State::RolledBack).await;
    load.stop().await;
    let events = rig.events(1).await;
    let tail: Vec<(Kind, u32)> = events
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|e| (e.kind(), e.weight))
        .collect();
    assert_eq!(
        tail,
        [
            (Kind::Failed, 5000),
            (Kind::RollbackStep, 2000),
            (Kind::RolledBack, 0)
        ]
    );
    assert_eq!(rig.candidate_share(done.stage_version).await, 0);
    rig.stop().await;
}

/// With on_failure PAUSE a failed gate holds the weight for an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_gate_pauses_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut rollout = three_stages();
    rollout["on_failure"] = json!("FAILURE_ACTION_PAUSE");
    let mut rig = Rig::start(&sqlite_url(&dir), 1, json!({"rollout": rollout})).await;
    rig.b.set(|x| x.error_rate = Some(0.5));
    let load = rig.load();
    rig.start_rollout().await;
    let paused = rig.wait_state(State::Paused).await;
    load.stop().await;
    assert_eq!((paused.stage, paused.weight), (0, 2000));
    assert!(paused.reason.contains("gate failed"), "{}", paused.reason);
    let mut stream = rig.watch(1, 2).await;
    let e = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (e.kind(), e.state(), e.weight),
        (Kind::Failed, State::Paused, 2000)
    );
    rig.rollouts.abort_rollout(command(0, "")).await.unwrap();
    rig.stop().await;
}

/// Selected agents sending no telemetry during a stage is an event, and so
/// is telemetry arriving again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_telemetry_is_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = json!({
        "stages": [stage(2000, "0.3s", 1_000_000, "60s"), stage(10000, "0.3s", 20, "60s")],
        "gates": {"max_error_rate_percent": 5.0}
    });
    let mut rig = Rig::start_with(
        &sqlite_url(&dir),
        1,
        json!({"rollout": rollout}),
        &["--stale-telemetry-after", "300ms"],
    )
    .await;
    rig.start_rollout().await;
    rig.wait("telemetry marked stale", |r| r.telemetry_stale)
        .await;
    let load = rig.load();
    rig.wait("telemetry marked fresh", |r| !r.telemetry_stale)
        .await;
    load.stop().await;
    rig.rollouts.abort_rollout(command(0, "")).await.unwrap();
    let k = kinds(&rig.events(1).await);
    assert_eq!(
        &k[2..],
        [Kind::TelemetryStale, Kind::TelemetryResumed, Kind::Aborted]
    );
    rig.stop().await;
}

/// Bad requests are refused naming the field and the rule, and change
/// nothing; calls need the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_service_refuses_bad_input() {
    use shepherd_control_plane::auth::{Authenticator, Token};
    use shepherd_control_plane::server::ServerOptions;
    use shepherd_tests::control_plane::TestControlPlane;
    use tonic::Code;

    let store = shepherd_tests::stores::TestStore::sqlite().await;
    let options = ServerOptions {
        auth: Authenticator::new(Some(Token::new(ADMIN).unwrap()), None),
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(store.store.clone(), options).await;
    let addr = cp.addr.to_string();
    let mut policies = cp.policy_client(Some(ADMIN)).await;
    // A policy with no rollout spec.
    policies
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(shepherd_tests::fixtures::minimal_policy("plain")),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut anonymous = rollout_client_of(&addr, None).await;
    let err = anonymous
        .start_rollout(start_request(""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut api = rollout_client_of(&addr, Some(ADMIN)).await;
    let refused = |e: tonic::Status, code: Code, text: &str| {
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(text), "{}", e.message());
    };
    let bad_name = v1::StartRolloutRequest {
        policy: "Not A Name".into(),
        reason: String::new(),
    };
    refused(
        api.start_rollout(bad_name).await.unwrap_err(),
        Code::InvalidArgument,
        "policy: ",
    );
    refused(
        api.start_rollout(start_request("")).await.unwrap_err(),
        Code::NotFound,
        "\"chat\"",
    );
    let plain = v1::StartRolloutRequest {
        policy: "plain".into(),
        reason: String::new(),
    };
    refused(
        api.start_rollout(plain).await.unwrap_err(),
        Code::FailedPrecondition,
        "no rollout spec",
    );
    refused(
        api.pause_rollout(command(-1, "")).await.unwrap_err(),
        Code::InvalidArgument,
        "number: must be positive",
    );
    refused(
        api.abort_rollout(command(0, "")).await.unwrap_err(),
        Code::NotFound,
        "has no rollout",
    );
    let watch = v1::WatchRolloutRequest {
        policy: "plain".into(),
        number: 0,
        after_sequence: -1,
    };
    refused(
        api.watch_rollout(watch).await.unwrap_err(),
        Code::InvalidArgument,
        "after_sequence: ",
    );
    let page = v1::ListRolloutsRequest {
        page_size: -1,
        ..Default::default()
    };
    refused(
        api.list_rollouts(page).await.unwrap_err(),
        Code::InvalidArgument,
        "page_size: ",
    );
    let token = v1::ListRolloutsRequest {
        page_token: "garbage".into(),
        ..Default::default()
    };
    refused(
        api.list_rollouts(token).await.unwrap_err(),
        Code::InvalidArgument,
        "page_token: ",
    );
    // Nothing was created.
    let all = api
        .list_rollouts(v1::ListRolloutsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.rollouts.is_empty(), "{all:?}");
    cp.stop().await;
}

/// An agent that never applies the stage's snapshot holds the quorum back
/// until ack_timeout; the clock then starts with the agents that did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_time_limit_starts_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut rollout = three_stages();
    rollout["ack_timeout"] = json!("1s");
    let mut rig = Rig::start(&sqlite_url(&dir), 1, json!({"rollout": rollout})).await;
    // A selected agent that says hello and never ACKs.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
            agent_id: "silent".into(),
            hostname: "silent".into(),
            labels: labels("chat"),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {AGENT}").parse().unwrap());
    let mut silent = v1::agent_service_client::AgentServiceClient::new(
        shepherd_tests::control_plane::channel_to(&rig.cps[0].addr()).await,
    );
    let _stream = silent.connect(request).await.unwrap().into_inner();
    let (_, agents) = rig.cps[0].clients().await;
    eventually("the silent agent listed", || {
        let mut agents = agents.clone();
        async move {
            let listed = agents
                .list_agents(v1::ListAgentsRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .agents;
            if listed.iter().any(|a| a.agent_id == "silent" && a.connected) {
                Ok(())
            } else {
                Err(format!("{listed:?}"))
            }
        }
    })
    .await;
    rig.start_rollout().await;
    rig.wait("the stage clock", |r| r.clock_start_time.is_some())
        .await;
    rig.rollouts.abort_rollout(command(0, "")).await.unwrap();
    let events = rig.events(1).await;
    let clock = &events[1];
    assert_eq!(clock.kind(), Kind::ClockStarted);
    assert!(
        clock.reason.contains("quorum not reached in 1s") && clock.reason.contains("2 of 3"),
        "{}",
        clock.reason
    );
    let figures = clock.figures.as_ref().unwrap();
    assert_eq!((figures.acked_agents, figures.selected_agents), (2, 3));
    drop(tx);
    rig.stop().await;
}

/// Makes a mock provider fail in one way.
type Breaks = Box<dyn Fn(&MockProvider)>;

/// The ways a candidate fails the app that no gate in the policy names:
/// each mock mode, and a candidate answering 400 to everything.
fn failing_modes() -> Vec<(String, Breaks)> {
    let mut modes: Vec<(String, Breaks)> = Mode::ALL
        .into_iter()
        .map(|m| {
            let set: Breaks = Box::new(move |b: &MockProvider| b.set(|x| x.mode = Some(m)));
            (m.name().to_string(), set)
        })
        .collect();
    modes.push((
        "400 to everything".into(),
        Box::new(|b: &MockProvider| {
            b.set(|x| {
                x.fail = Some(shepherd_tests::mock::Fail {
                    status: 400,
                    retry_after: None,
                    times: None,
                })
            })
        }),
    ));
    modes
}

fn heal(b: &MockProvider) {
    b.set(|x| {
        x.mode = None;
        x.fail = None;
    });
}

/// A candidate with a wrong key, no access, an unknown model, a parameter
/// it refuses, exhausted quota, malformed or empty answers, or a 400 for
/// everything is rolled back at its first stage by the default gates (the
/// policy sets none), the FAILED event naming the class, the counts and an
/// example answer. With a fallback and a breaker the app sees no failure,
/// except the 400s: an answer that reads as the app's own mistake passes
/// through until the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_candidates_roll_back_at_the_first_stage() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({
        "fallback": ["a"],
        "circuit_breaker": {"consecutive_failures": 5, "open_time": "0.2s",
                            "open_time_multiplier": 1, "quota_open_time": "0.2s"},
        "rollout": {"stages": [stage(2000, "0.3s", 20, "30s"), stage(10000, "0.3s", 20, "30s")],
                    "ack_timeout": "5s"}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    let load = rig.load();
    for (i, (name, fail)) in failing_modes().into_iter().enumerate() {
        let failed_before = load.failed();
        fail(&rig.b);
        let number = i64::try_from(i).unwrap() + 1;
        if number == 1 {
            rig.start_rollout().await;
        } else {
            rig.rollouts.retry_rollout(command(0, &name)).await.unwrap();
        }
        let ended = rig
            .wait(&format!("{name}: rolled back"), |r| {
                r.number == number && r.state() == State::RolledBack
            })
            .await;
        heal(&rig.b);
        // The next mode is judged on its own answers: every agent runs the
        // weight-0 snapshot and its breaker's open time is over, so the
        // next rollout's first candidate request reaches the candidate.
        for agent in &rig.agents {
            agent.wait_version(|v| v >= ended.stage_version).await;
            eventually("the breaker's open time is over", || async {
                let open = "shepherd_agent_breaker_state{policy=\"chat\",backend=\"b\"} 1";
                if agent.agent.render_metrics().lines().any(|l| l == open) {
                    Err("open".to_string())
                } else {
                    Ok(())
                }
            })
            .await;
        }
        let events = rig.events(number).await;
        assert!(
            !kinds(&events).contains(&Kind::Promoted),
            "{name}: promoted before it failed"
        );
        let failed = events.iter().find(|e| e.kind() == Kind::Failed).unwrap();
        assert_eq!(failed.stage, 0, "{name}: failed at the first stage");
        let c = failed.figures.as_ref().unwrap().candidate.clone().unwrap();
        if name == "400 to everything" {
            assert!(
                failed.reason.starts_with("4xx rate regression"),
                "{name}: {}",
                failed.reason
            );
            assert!(
                c.app_errors > 0 && c.client_error_rate_percent > 50.0,
                "{c:?}"
            );
            assert!(
                failed.reason.contains("e.g. app_error HTTP 400"),
                "{}",
                failed.reason
            );
        } else {
            let class = if matches!(name.as_str(), "malformed" | "empty-choices") {
                "malformed"
            } else {
                "backend_rejected"
            };
            assert!(
                failed.reason.starts_with("rejected or malformed answers"),
                "{name}: {}",
                failed.reason
            );
            assert!(
                failed.reason.contains(&format!("e.g. {class} HTTP")),
                "{name}: {}",
                failed.reason
            );
            assert!(c.rejected_rate_percent > 50.0, "{name}: {c:?}");
            assert_eq!(c.examples[0].outcome, class, "{name}: {c:?}");
        }
        assert!(
            ended.reason.contains("gate failed at stage 1"),
            "{}",
            ended.reason
        );
        if name != "400 to everything" {
            assert_eq!(
                load.failed(),
                failed_before,
                "{name}: the fallback served every request"
            );
        }
    }
    let (sent, _) = load.stop().await;
    assert!(sent > 100);
    rig.stop().await;
}

/// A candidate that rejects the app is rolled back at a shadow stage before
/// any user sees it, by the default gates over the shadow's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_candidate_rolls_back_at_the_shadow_stage() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({
        "shadow": {"percent": 100.0},
        "rollout": {"stages": [stage(0, "0.3s", 20, "30s"), stage(10000, "0.3s", 20, "30s")]}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    rig.b.set(|x| x.mode = Some(Mode::ModelNotFound));
    let load = rig.load();
    rig.start_rollout().await;
    rig.wait_state(State::RolledBack).await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0, "the shadow never reaches the app");
    let events = rig.events(1).await;
    let failure = events.iter().find(|e| e.kind() == Kind::Failed).unwrap();
    assert_eq!(failure.stage, 0);
    assert!(
        failure.reason.contains("backend_rejected")
            && failure
                .reason
                .contains("e.g. backend_rejected HTTP 404 model_not_found"),
        "{}",
        failure.reason
    );
    rig.stop().await;
}

/// The control: a healthy candidate that answers the app's bad requests
/// with the same 400 the baseline gives (a fifth of the traffic here) is not
/// rolled back: it goes through a shadow stage and every live stage to
/// 100%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_bad_requests_roll_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({
        "shadow": {"percent": 100.0},
        "rollout": {"stages": [stage(0, "0.5s", 100, "30s"), stage(2000, "0.5s", 100, "30s"),
                               stage(5000, "0.5s", 100, "30s"), stage(10000, "0.5s", 100, "30s")]}
    });
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    let load = Load::with_bad_requests(&rig.agents.iter().collect::<Vec<_>>(), Some(5));
    rig.start_rollout().await;
    rig.wait_state(State::Succeeded).await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let events = rig.events(1).await;
    assert!(!kinds(&events).contains(&Kind::Failed), "{events:?}");
    let promoted: Vec<&v1::RolloutEvent> = events
        .iter()
        .filter(|e| e.kind() == Kind::Promoted)
        .collect();
    assert_eq!(promoted.len(), 3);
    // The live stages saw the app's 400s on both sides.
    let figures = promoted[1].figures.as_ref().unwrap();
    let (c, b) = (
        figures.candidate.as_ref().unwrap(),
        figures.baseline.as_ref().unwrap(),
    );
    assert!(c.app_errors > 0 && b.app_errors > 0, "{c:?} {b:?}");
    rig.stop().await;
}

/// Stages that pass on evidence: error-rate and 4xx tests with margins, the
/// stage's time limit `max`.
fn proven_not_worse(error_margin: f64, max: &str) -> serde_json::Value {
    json!({
        "stages": [stage(2000, "0.2s", 20, max), stage(10000, "0.2s", 20, max)],
        "gates": {
            "significance": 0.05,
            "min_error_rate_effect_percent": error_margin,
            "max_client_error_excess_percent": 5.0
        },
        "pass_rule": "PASS_RULE_PROVEN_NOT_WORSE",
        "ack_timeout": "5s"
    })
}

/// Under PASS_RULE_PROVEN_NOT_WORSE each stage of a healthy candidate
/// passes once every comparative gate has proven it not worse than the
/// baseline by more than its margin, well before the stage's time limit;
/// the events carry each gate's proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_driven_stages_pass_once_proven_not_worse() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({"rollout": proven_not_worse(2.0, "120s")});
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    let load = rig.load();
    rig.start_rollout().await;
    rig.wait_state(State::Succeeded).await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let events = rig.events(1).await;
    assert_eq!(
        kinds(&events),
        [
            Kind::Started,
            Kind::ClockStarted,
            Kind::Promoted,
            Kind::ClockStarted,
            Kind::Succeeded
        ]
    );
    // The first stage (20%) passed on the proofs; the last (100%) has no
    // baseline left to compare with, so its comparisons do not run.
    let promoted = &events[2];
    assert_eq!(promoted.verdict(), v1::Verdict::Pass, "{promoted:?}");
    let figures = promoted.figures.as_ref().unwrap();
    assert!(figures.elapsed_seconds < 120.0, "{figures:?}");
    for gate in ["significance", "max_client_error_excess_percent"] {
        let g = figures.gates.iter().find(|g| g.gate == gate).unwrap();
        assert_eq!(g.verdict(), v1::Verdict::Pass, "{g:?}");
        assert!(g.detail.contains("proven not worse"), "{}", g.detail);
    }
    assert_eq!(events[4].verdict(), v1::Verdict::Pass);
    rig.stop().await;
}

/// The same healthy candidate with no error-rate margin to prove: nothing
/// can show it is not worse at all, so the stage holds and is INCONCLUSIVE
/// at its time limit (where the default rule would pass it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_margin_nothing_is_proven_not_worse() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({"rollout": proven_not_worse(0.0, "2s")});
    let mut rig = Rig::start(&sqlite_url(&dir), 1, extra).await;
    let load = rig.load();
    rig.start_rollout().await;
    let paused = rig.wait_state(State::Paused).await;
    load.stop().await;
    assert_eq!((paused.stage, paused.weight), (0, 2000));
    // Paused, the rollout is still active: its stream does not end.
    let mut stream = rig.watch(1, 2).await;
    let last = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (last.kind(), last.verdict()),
        (Kind::Inconclusive, v1::Verdict::Inconclusive)
    );
    assert!(
        last.reason.contains("not yet proven not worse"),
        "{}",
        last.reason
    );
    let c = last.figures.as_ref().unwrap().candidate.as_ref().unwrap();
    assert!(c.requests >= 20 && c.errors == 0, "{c:?}");
    rig.stop().await;
}
