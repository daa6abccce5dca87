//! What each command does.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use shepherd_proto::v1;
use tokio_stream::StreamExt;

use crate::client::{Clients, connect, status};
use crate::view::{self, Watched};
use crate::{AgentsCommand, Cli, Command, Output, PolicyCommand, RolloutCommand, Steer};

/// Writes to standard output (a closed pipe ends the command quietly).
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
    }};
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    // A bad file is reported before the control plane is dialled.
    let applied = match &cli.command {
        Command::Policy(PolicyCommand::Apply { file, .. }) => Some(read_policies(file)?),
        _ => None,
    };
    let mut c = connect(&cli.conn).await?;
    match cli.command {
        Command::Policy(cmd) => policy(&mut c, cmd, applied, output).await,
        Command::Rollout(cmd) => rollout(&mut c, cmd, output).await,
        Command::Agents(AgentsCommand::List) => agents(&mut c, output).await,
    }
}

fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)?)
}

/// Reads the policies of a JSON or YAML file ("-": standard input): one
/// policy or a list, as the agent's policy files.
pub fn read_policies(path: &Path) -> anyhow::Result<Vec<v1::Policy>> {
    let name = path.display().to_string();
    let text = if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?
    };
    parse_policies(&text).with_context(|| format!("{name}: not a policy"))
}

/// Policies from JSON or YAML text (the protobuf JSON form either way): one
/// object, or a list of them.
pub fn parse_policies(text: &str) -> anyhow::Result<Vec<v1::Policy>> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_error) => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('{') || trimmed.starts_with('[') {
                bail!("invalid JSON: {json_error}");
            }
            serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("invalid YAML: {e}"))?
        }
    };
    let policies = shepherd_proto::file::policies_from_value(value).map_err(anyhow::Error::msg)?;
    if policies.is_empty() {
        bail!("the list holds no policy");
    }
    Ok(policies)
}

/// Creates `p`, or replaces it at its latest revision; returns the stored
/// policy and what was done.
async fn apply_one(
    c: &mut Clients,
    mut p: v1::Policy,
    dry_run: bool,
) -> anyhow::Result<(v1::Policy, &'static str)> {
    let name = p.name.clone();
    let current = match c
        .policies
        .get_policy(v1::GetPolicyRequest {
            name: name.clone(),
            revision: 0,
        })
        .await
    {
        Ok(r) => Some(r.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(status(&format!("reading policy {name:?}"), s)),
    };
    let (stored, verb) = match current {
        None => (
            c.policies
                .create_policy(v1::CreatePolicyRequest {
                    policy: Some(p),
                    validate_only: dry_run,
                })
                .await
                .map_err(|s| status(&format!("creating policy {name:?}"), s))?,
            "created",
        ),
        Some(cur) => {
            p.revision = cur.revision;
            (
                c.policies
                    .update_policy(v1::UpdatePolicyRequest {
                        policy: Some(p),
                        validate_only: dry_run,
                    })
                    .await
                    .map_err(|s| status(&format!("updating policy {name:?}"), s))?,
                "updated",
            )
        }
    };
    Ok((stored.into_inner(), verb))
}

async fn policy(
    c: &mut Clients,
    cmd: PolicyCommand,
    applied: Option<Vec<v1::Policy>>,
    output: Output,
) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Apply { dry_run, .. } => {
            let Some(policies) = applied else {
                bail!("no policy read");
            };
            // A list is applied in order; the first refusal stops it (the
            // policies before it are applied, and said so).
            let mut stored_all = Vec::with_capacity(policies.len());
            for p in policies {
                let name = p.name.clone();
                let (stored, verb) = apply_one(c, p, dry_run).await?;
                if output != Output::Json {
                    if dry_run {
                        say!("policy {name:?} is valid; it would be {verb} (nothing was stored)");
                    } else {
                        say!("policy {name:?} {verb}: revision {}", stored.revision);
                    }
                }
                stored_all.push(stored);
            }
            if output == Output::Json {
                match stored_all.as_slice() {
                    [one] => say!("{}", json(one)?),
                    many => say!("{}", json(&many)?),
                }
            }
        }
        PolicyCommand::Get { name, revision } => {
            let p = c
                .policies
                .get_policy(v1::GetPolicyRequest {
                    name: name.clone(),
                    revision,
                })
                .await
                .map_err(|s| status(&format!("reading policy {name:?}"), s))?
                .into_inner();
            // The policy's own form is its JSON, in either output.
            say!("{}", json(&p)?);
        }
        PolicyCommand::List => {
            let client = c.policies.clone();
            let all = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_policies(v1::ListPoliciesRequest {
                            page_size: 100,
                            page_token,
                        })
                        .await
                        .map_err(|s| status("listing policies", s))?
                        .into_inner();
                    Ok((page.policies, page.next_page_token))
                }
            })
            .await?;
            if output == Output::Json {
                say!("{}", json(&all)?);
                return Ok(());
            }
            say!(
                "{:<24} {:>8}  {:<16} {:<16} {:>8}",
                "NAME",
                "REVISION",
                "BASELINE",
                "CANDIDATE",
                "WEIGHT"
            );
            for p in all {
                let t = p.traffic.unwrap_or_default();
                say!(
                    "{:<24} {:>8}  {:<16} {:<16} {:>8}",
                    p.name,
                    p.revision,
                    t.baseline,
                    t.candidate,
                    view::percent(t.candidate_weight)
                );
            }
        }
        PolicyCommand::Delete { name } => {
            let r = c
                .policies
                .delete_policy(v1::DeletePolicyRequest {
                    name: name.clone(),
                    revision: 0,
                })
                .await
                .map_err(|s| status(&format!("deleting policy {name:?}"), s))?
                .into_inner();
            say!("policy {name:?} deleted: revision {}", r.revision);
        }
        PolicyCommand::History { name } => {
            let client = c.policies.clone();
            let all = all_pages(|page_token| {
                let (mut client, name) = (client.clone(), name.clone());
                async move {
                    let page = client
                        .list_policy_revisions(v1::ListPolicyRevisionsRequest {
                            name: name.clone(),
                            page_size: 100,
                            page_token,
                        })
                        .await
                        .map_err(|s| status(&format!("reading the history of {name:?}"), s))?
                        .into_inner();
                    Ok((page.revisions, page.next_page_token))
                }
            })
            .await?;
            if output == Output::Json {
                say!("{}", json(&all)?);
                return Ok(());
            }
            say!("{:>8}  {:<25} {:<8} REASON", "REVISION", "TIME", "DELETED");
            for r in all {
                let time = r
                    .create_time
                    .and_then(|t| {
                        chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
                    })
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                let deleted = if r.policy.is_none() { "yes" } else { "" };
                say!(
                    "{:>8}  {:<25} {:<8} {}",
                    r.revision,
                    time,
                    deleted,
                    r.reason
                );
            }
        }
    }
    Ok(())
}

async fn rollout(c: &mut Clients, cmd: RolloutCommand, output: Output) -> anyhow::Result<()> {
    let print = |r: &v1::Rollout| -> anyhow::Result<()> {
        if output == Output::Json {
            say!("{}", json(r)?);
        } else {
            say!(
                "rollout {}#{}: {} at stage {}, weight {}{}",
                r.policy,
                r.number,
                view::state_name(r.state()),
                r.stage + 1,
                view::percent(r.weight),
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.reason)
                }
            );
        }
        Ok(())
    };
    let command = |s: Steer| v1::RolloutCommand {
        policy: s.policy,
        number: s.number,
        reason: s.reason,
    };
    match cmd {
        RolloutCommand::Start {
            policy,
            reason,
            watch: then_watch,
        } => {
            let r = c
                .rollouts
                .start_rollout(v1::StartRolloutRequest {
                    policy: policy.clone(),
                    reason,
                })
                .await
                .map_err(|s| status(&format!("starting a rollout of {policy:?}"), s))?
                .into_inner();
            print(&r)?;
            if then_watch {
                watch(c, &policy, r.number).await?;
            }
        }
        RolloutCommand::Status { policy, number } => {
            let w = load(c, &policy, number).await?;
            if output == Output::Json {
                say!("{}", json(&w.rollout)?);
            } else {
                say!("{}", view::render(&w, chrono::Utc::now(), 10));
            }
        }
        RolloutCommand::Pause(s) => {
            let what = format!("pausing the rollout of {:?}", s.policy);
            let r = c.rollouts.pause_rollout(command(s)).await;
            print(&r.map_err(|e| status(&what, e))?.into_inner())?;
        }
        RolloutCommand::Resume(s) => {
            let what = format!("resuming the rollout of {:?}", s.policy);
            let r = c.rollouts.resume_rollout(command(s)).await;
            print(&r.map_err(|e| status(&what, e))?.into_inner())?;
        }
        RolloutCommand::Abort(s) => {
            let what = format!("aborting the rollout of {:?}", s.policy);
            let r = c.rollouts.abort_rollout(command(s)).await;
            print(&r.map_err(|e| status(&what, e))?.into_inner())?;
        }
        RolloutCommand::Retry(s) => {
            let what = format!("retrying the rollout of {:?}", s.policy);
            let r = c.rollouts.retry_rollout(command(s)).await;
            print(&r.map_err(|e| status(&what, e))?.into_inner())?;
        }
        RolloutCommand::Promote { steer, full } => {
            let what = format!("promoting the rollout of {:?}", steer.policy);
            let r = c
                .rollouts
                .promote_rollout(v1::PromoteRolloutRequest {
                    policy: steer.policy,
                    number: steer.number,
                    full,
                    reason: steer.reason,
                })
                .await;
            print(&r.map_err(|e| status(&what, e))?.into_inner())?;
        }
        RolloutCommand::Watch { policy, number } => watch(c, &policy, number).await?,
    }
    Ok(())
}

/// A rollout, the stages of the policy revision it runs, and its events.
async fn load(c: &mut Clients, policy: &str, number: i64) -> anyhow::Result<Watched> {
    let rollout = c
        .rollouts
        .get_rollout(v1::GetRolloutRequest {
            policy: policy.into(),
            number,
        })
        .await
        .map_err(|s| status(&format!("reading the rollout of {policy:?}"), s))?
        .into_inner();
    let stages = c
        .policies
        .get_policy(v1::GetPolicyRequest {
            name: policy.into(),
            revision: rollout.policy_revision,
        })
        .await
        .ok()
        .and_then(|p| p.into_inner().rollout)
        .map(|spec| spec.stages)
        .unwrap_or_default();
    let mut w = Watched {
        rollout,
        stages,
        events: Vec::new(),
    };
    // Events so far: the stream replays them, then waits for more; stop
    // at the rollout's latest sequence.
    let last = w.rollout.sequence;
    let mut stream = c
        .rollouts
        .watch_rollout(v1::WatchRolloutRequest {
            policy: policy.into(),
            number: w.rollout.number,
            after_sequence: 0,
        })
        .await
        .map_err(|s| status("reading the rollout's events", s))?
        .into_inner();
    while let Some(e) = stream.next().await {
        let e = e.map_err(|s| status("reading the rollout's events", s))?;
        let seq = e.sequence;
        w.events.push(e);
        if seq >= last {
            break;
        }
    }
    Ok(w)
}

/// Follows a rollout until it ends: redraws the view on a terminal, or
/// prints each event as a line otherwise.
async fn watch(c: &mut Clients, policy: &str, number: i64) -> anyhow::Result<()> {
    let mut w = load(c, policy, number).await?;
    let tty = std::io::stdout().is_terminal();
    let draw = |w: &Watched| {
        if tty {
            let mut out = std::io::stdout().lock();
            // Home, clear, then the view.
            let _ = write!(
                out,
                "\x1b[H\x1b[2J{}",
                view::render(w, chrono::Utc::now(), 12)
            );
            let _ = out.flush();
        }
    };
    if !tty {
        for e in &w.events {
            say!("{}", view::event_line(e));
        }
    }
    draw(&w);
    if !w.ended() {
        let mut stream = c
            .rollouts
            .watch_rollout(v1::WatchRolloutRequest {
                policy: policy.into(),
                number: w.rollout.number,
                after_sequence: w.rollout.sequence,
            })
            .await
            .map_err(|s| status("watching the rollout", s))?
            .into_inner();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                e = stream.next() => match e {
                    Some(Ok(e)) => {
                        if !tty {
                            say!("{}", view::event_line(&e));
                        }
                        w.absorb(e);
                        draw(&w);
                    }
                    Some(Err(s)) => return Err(status("watching the rollout", s)),
                    None => break,
                },
                _ = tick.tick(), if tty => {
                    // The clock and staleness move between events.
                    if let Ok(r) = c.rollouts.get_rollout(v1::GetRolloutRequest {
                        policy: policy.into(),
                        number: w.rollout.number,
                    }).await {
                        let r = r.into_inner();
                        if r.sequence >= w.rollout.sequence {
                            w.rollout = r;
                        }
                    }
                    draw(&w);
                }
            }
        }
    }
    let r = &w.rollout;
    say!(
        "rollout {}#{} ended: {} at weight {} ({})",
        r.policy,
        r.number,
        view::state_name(r.state()),
        view::percent(r.weight),
        r.reason
    );
    Ok(())
}

/// Every item of a paged list: `page(token)` returns a page's items and
/// the next token (empty at the end).
async fn all_pages<T, F, Fut>(mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

async fn agents(c: &mut Clients, output: Output) -> anyhow::Result<()> {
    let client = c.agents.clone();
    let all = all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let page = client
                .list_agents(v1::ListAgentsRequest {
                    page_size: 1000,
                    page_token,
                })
                .await
                .map_err(|s| status("listing agents", s))?
                .into_inner();
            Ok((page.agents, page.next_page_token))
        }
    })
    .await?;
    if output == Output::Json {
        say!("{}", json(&all)?);
        return Ok(());
    }
    say!(
        "{:<28} {:<10} {:>8}  {:<24} {:<20} LABELS",
        "AGENT",
        "STATE",
        "VERSION",
        "REPLICA",
        "HOST"
    );
    for a in all {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = if a.connected { "connected" } else { "gone" };
        say!(
            "{:<28} {:<10} {:>8}  {:<24} {:<20} {}",
            a.agent_id,
            state,
            a.applied_version,
            a.replica,
            a.hostname,
            labels.join(",")
        );
        if a.nack_version > 0 {
            say!("    refused version {}: {}", a.nack_version, a.nack_reason);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_and_yaml_policies() {
        let yaml = "name: chat\nbackends:\n  - name: a\n    base_url: http://127.0.0.1:1\ntraffic:\n  baseline: a\n";
        let p = parse_policy(yaml).unwrap();
        let list = format!("- {}", yaml.replace('\n', "\n  ").trim_end());
        assert_eq!(parse_policies(&list).unwrap().len(), 1);
        assert_eq!(p.name, "chat");
        assert_eq!(p.backends[0].base_url, "http://127.0.0.1:1");
        let json = r#"{"name": "chat", "traffic": {"baseline": "a", "candidateWeight": 250}}"#;
        assert_eq!(
            parse_policy(json)
                .unwrap()
                .traffic
                .unwrap()
                .candidate_weight,
            250
        );
        let bad = parse_policy("{\"name\": ").unwrap_err().to_string();
        assert!(bad.starts_with("invalid JSON"), "{bad}");
        let bad = parse_policy("name: chat\nbackends: 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("backends") || bad.contains("sequence"),
            "{bad}"
        );
        let bad = parse_policies("- a\n- b\n").unwrap_err().to_string();
        assert!(bad.starts_with("[0]: "), "{bad}");
        let bad = parse_policies("[]").unwrap_err().to_string();
        assert!(bad.contains("no policy"), "{bad}");
        let bad = parse_policies(r#"[{"name": "a"}, {"traffic": {"candidate_weight": "10%"}}]"#)
            .unwrap_err()
            .to_string();
        assert!(bad.starts_with("[1].traffic.candidate_weight: "), "{bad}");
    }

    /// One policy of a text, for the tests.
    fn parse_policy(text: &str) -> anyhow::Result<v1::Policy> {
        let mut all = parse_policies(text)?;
        anyhow::ensure!(all.len() == 1, "{} policies", all.len());
        Ok(all.remove(0))
    }

    /// Every example policy in deploy/examples reads as a policy.
    #[test]
    fn reads_the_example_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json" || e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let policies =
                    read_policies(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert_eq!(policies.is_empty(), text.trim().is_empty());
            }
        }
    }
}
