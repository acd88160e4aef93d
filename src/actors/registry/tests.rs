use super::runs::session_agent;
use super::*;
use crate::protocol::{decode, GatewayEvent, Inbound};
use std::sync::Arc;

fn event(text: &str) -> EventMsg {
    match decode(text).unwrap() {
        Inbound::Event(f) => EventMsg(Arc::new(GatewayEvent::from_frame(&f).0)),
        _ => panic!(),
    }
}

#[actix_rt::test]
async fn run_lifecycle_moves_agent_running_then_idle() {
    let reg = AgentRegistry::new().start();
    reg.send(AgentsSnapshot {
        payload: RawValue::from_string(
            r#"{"defaultId":"main","agents":[{"id":"main","name":"Main"},{"id":"b"}]}"#.into(),
        )
        .unwrap(),
    })
    .await
    .unwrap();
    reg.send(LinkChanged {
        connected: true,
        detail: Value::Null,
    })
    .await
    .unwrap();
    reg.send(event(r#"{"type":"event","event":"agent","seq":1,"payload":{"runId":"r1","stream":"lifecycle","ts":10,"agentId":"main","data":{"phase":"start"}}}"#)).await.unwrap();
    let d = reg.send(GetAgent("main".into())).await.unwrap().unwrap();
    assert_eq!(d.agent.status, AgentStatus::Running);
    assert_eq!(d.agent.current_run_id.as_deref(), Some("r1"));
    assert_eq!(d.agent.name.as_deref(), Some("Main"));
    assert!(d.agent.is_default && !d.agent.stale);
    // chat events without agentId are attributed through the run id
    reg.send(event(r#"{"type":"event","event":"chat","payload":{"runId":"r1","sessionKey":"agent:main:main","state":"delta"}}"#)).await.unwrap();
    reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r1","stream":"lifecycle","ts":20,"agentId":"main","data":{"phase":"end","aborted":false}}}"#)).await.unwrap();
    // a late event of the finished run does not make it running again
    reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r1","stream":"assistant","ts":21,"agentId":"main","data":{"text":"x"}}}"#)).await.unwrap();
    let d = reg.send(GetAgent("main".into())).await.unwrap().unwrap();
    assert_eq!(d.agent.status, AgentStatus::Idle);
    assert_eq!(d.agent.current_run_id, None);
    assert_eq!(d.runs.len(), 1);
    assert_eq!(d.runs[0].status, RunStatus::Ok);
    assert_eq!(d.runs[0].ended_at, Some(20));
    let list = reg.send(ListAgents).await.unwrap();
    assert_eq!(list.agents.len(), 2);
    reg.send(LinkChanged {
        connected: false,
        detail: Value::Null,
    })
    .await
    .unwrap();
    let list = reg.send(ListAgents).await.unwrap();
    assert!(list.stale && list.agents.iter().all(|a| a.stale));
    assert!(reg.send(GetAgent("nope".into())).await.unwrap().is_none());
}

#[actix_rt::test]
async fn failed_and_aborted_runs() {
    let reg = AgentRegistry::new().start();
    reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r2","stream":"lifecycle","sessionKey":"agent:ops:main","data":{"phase":"start"}}}"#)).await.unwrap();
    reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r2","stream":"lifecycle","agentId":"ops","data":{"phase":"error","error":"LLM request failed"}}}"#)).await.unwrap();
    reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r3","stream":"lifecycle","agentId":"ops","data":{"phase":"start"}}}"#)).await.unwrap();
    reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r3","stream":"lifecycle","agentId":"ops","data":{"phase":"end","status":"cancelled","aborted":true}}}"#)).await.unwrap();
    reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r3","stream":"lifecycle","agentId":"ops","data":{"phase":"error","stopReason":"aborted"}}}"#)).await.unwrap();
    let d = reg.send(GetAgent("ops".into())).await.unwrap().unwrap();
    assert_eq!(d.agent.status, AgentStatus::Idle);
    assert!(!d.agent.listed);
    let statuses: Vec<RunStatus> = d.runs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![RunStatus::Aborted, RunStatus::Error]);
}

#[test]
fn session_keys() {
    assert_eq!(
        session_agent(Some("agent:main:main")).as_deref(),
        Some("main")
    );
    assert_eq!(session_agent(Some("agent::x")), None);
    assert_eq!(session_agent(Some("other:main")), None);
    assert_eq!(session_agent(None), None);
}
