//! Snapshots per group of agents with the same labels. Every catalog read
//! rebuilds each group's policy set; a group whose set did not change keeps
//! its version and its agents hear nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prost::Message;
use shepherd_proto::v1;
use shepherd_proto::validate::labels_match;
use tokio::sync::watch;

use super::lock;
use crate::store::Catalog;

pub type Labels = BTreeMap<String, String>;

/// One group's snapshot, shared by all its agents.
#[derive(Debug)]
pub struct Built {
    /// The generation of the catalog the set was first seen in: the set is
    /// the one in force as of this generation.
    pub version: u64,
    pub hash: u64,
    pub message: v1::ControlMessage,
}

struct Group {
    sender: watch::Sender<Arc<Built>>,
}

/// A policy ready to send, with the hash of its encoding.
struct Prepared {
    selector: Labels,
    policy: v1::Policy,
    /// The rollout stage that set its weight, if one did.
    stage: Option<String>,
    hash: u64,
}

#[derive(Default)]
struct State {
    /// The generation of the catalog in force; none before the first read.
    generation: Option<i64>,
    prepared: Vec<Prepared>,
    groups: HashMap<Labels, Group>,
}

/// Every group's current snapshot.
#[derive(Default)]
pub struct Snapshots {
    state: Mutex<State>,
    /// True once a catalog was read.
    loaded: watch::Sender<bool>,
}

/// FNV-1a, 64 bits: stable across builds and replicas.
pub fn fnv64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = if seed == 0 {
        0xcbf2_9ce4_8422_2325
    } else {
        seed
    };
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Snapshots {
    /// Takes a newly read catalog: each group whose set changed gets a new
    /// snapshot at the catalog's generation. Returns how many groups changed.
    pub fn update(&self, catalog: Catalog) -> usize {
        let generation = u64::try_from(catalog.generation).unwrap_or(0);
        let mut state = lock(&self.state);
        if state.generation.is_some_and(|g| g > catalog.generation) {
            // An older read finishing late; never go back.
            return 0;
        }
        let rollouts: HashMap<&str, &crate::rollout::model::Rollout> = catalog
            .rollouts
            .iter()
            .map(|r| (r.policy.as_str(), r))
            .collect();
        state.prepared = catalog
            .policies
            .iter()
            .map(|p| {
                let mut policy = p.to_proto();
                let stage = rollouts
                    .get(policy.name.as_str())
                    .and_then(|r| effective_weight(&mut policy, r));
                let mut hash = fnv64(&policy.encode_to_vec(), 0);
                if let Some(stage) = &stage {
                    hash = fnv64(stage.as_bytes(), hash);
                }
                Prepared {
                    stage,
                    selector: policy
                        .selector
                        .as_ref()
                        .map(|s| s.match_labels.clone())
                        .unwrap_or_default(),
                    policy,
                    hash,
                }
            })
            .collect();
        state.generation = Some(catalog.generation);
        state.groups.retain(|_, g| g.sender.receiver_count() > 0);
        let mut changed = 0;
        let State {
            prepared, groups, ..
        } = &mut *state;
        for (labels, group) in groups.iter() {
            let hash = set_hash(prepared, labels);
            if group.sender.borrow().hash != hash {
                group
                    .sender
                    .send_replace(Arc::new(build(prepared, labels, generation, hash)));
                changed += 1;
            }
        }
        drop(state);
        self.loaded.send_replace(true);
        changed
    }

    /// The current snapshot version of each group with agents.
    pub fn versions(&self) -> HashMap<Labels, u64> {
        lock(&self.state)
            .groups
            .iter()
            .filter(|(_, g)| g.sender.receiver_count() > 0)
            .map(|(labels, g)| (labels.clone(), g.sender.borrow().version))
            .collect()
    }

    /// Joins the group of `labels`, waiting for the first catalog read; the
    /// receiver holds the group's snapshot and sees each change.
    pub async fn join(&self, labels: &Labels) -> watch::Receiver<Arc<Built>> {
        let _ = self.loaded.subscribe().wait_for(|loaded| *loaded).await;
        let mut state = lock(&self.state);
        let generation = state
            .generation
            .map_or(0, |g| u64::try_from(g).unwrap_or(0));
        let State {
            prepared, groups, ..
        } = &mut *state;
        groups
            .entry(labels.clone())
            .or_insert_with(|| {
                let hash = set_hash(prepared, labels);
                Group {
                    sender: watch::channel(Arc::new(build(prepared, labels, generation, hash))).0,
                }
            })
            .sender
            .subscribe()
    }
}

/// Sets the weight an active rollout gives a policy, if the rollout is still
/// of the policy's baseline and candidate; returns the stage mark.
fn effective_weight(
    policy: &mut v1::Policy,
    rollout: &crate::rollout::model::Rollout,
) -> Option<String> {
    let traffic = policy.traffic.as_mut()?;
    if traffic.baseline != rollout.baseline || traffic.candidate != rollout.candidate {
        // The policy changed under the rollout; the leader ends it.
        return None;
    }
    traffic.candidate_weight = rollout.weight;
    Some(format!(
        "{}/{}/{}",
        rollout.number, rollout.stage, rollout.stage_version
    ))
}

fn set_hash(prepared: &[Prepared], labels: &Labels) -> u64 {
    let mut h = fnv64(b"shepherd.v1.Snapshot", 0);
    for p in prepared
        .iter()
        .filter(|p| labels_match(&p.selector, labels))
    {
        h = fnv64(&p.hash.to_le_bytes(), h);
    }
    h
}

fn build(prepared: &[Prepared], labels: &Labels, version: u64, hash: u64) -> Built {
    let selected = || {
        prepared
            .iter()
            .filter(|p| labels_match(&p.selector, labels))
    };
    let policies = selected().map(|p| p.policy.clone()).collect();
    let rollout_stages = selected()
        .filter_map(|p| Some((p.policy.name.clone(), p.stage.clone()?)))
        .collect();
    Built {
        version,
        hash,
        message: v1::ControlMessage {
            kind: Some(v1::control_message::Kind::Snapshot(v1::Snapshot {
                version,
                content_hash: hash,
                policies,
                rollout_stages,
            })),
        },
    }
}
