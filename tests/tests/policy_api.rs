//! PolicyService through real gRPC: an in-process control plane on a real
//! socket, driven by the generated client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use shepherd_control_plane::auth::{Authenticator, Token};
use shepherd_control_plane::server::ServerOptions;
use shepherd_control_plane::store::{self, StoreOptions};
use shepherd_proto::v1;
use shepherd_tests::control_plane::{PolicyClient, TestControlPlane};
use shepherd_tests::fixtures::{chat_policy, minimal_policy};
use shepherd_tests::net::Relay;
use shepherd_tests::pg::TestDb;
use shepherd_tests::stores::TestStore;
use tokio_stream::StreamExt;
use tonic::Code;

const ADMIN: &str = "admin-token-for-tests";

async fn start() -> (TestControlPlane, TestStore) {
    let t = TestStore::sqlite().await;
    let options = ServerOptions {
        auth: Authenticator::new(Some(Token::new(ADMIN).unwrap()), None),
        ..ServerOptions::default()
    };
    (TestControlPlane::start(t.store.clone(), options).await, t)
}

async fn client(cp: &TestControlPlane) -> PolicyClient {
    cp.policy_client(Some(ADMIN)).await
}

fn create(policy: v1::Policy) -> v1::CreatePolicyRequest {
    v1::CreatePolicyRequest {
        policy: Some(policy),
        validate_only: false,
    }
}

fn get(name: &str) -> v1::GetPolicyRequest {
    v1::GetPolicyRequest {
        name: name.into(),
        revision: 0,
    }
}

/// Every PolicyService call needs the admin token; health and reflection do not.
#[tokio::test]
async fn every_policy_call_needs_the_admin_token() {
    let (cp, _t) = start().await;
    for token in [None, Some("wrong-token")] {
        let mut c = cp.policy_client(token).await;
        let codes = [
            c.create_policy(create(minimal_policy("a")))
                .await
                .unwrap_err()
                .code(),
            c.get_policy(get("a")).await.unwrap_err().code(),
            c.list_policies(v1::ListPoliciesRequest::default())
                .await
                .unwrap_err()
                .code(),
            c.update_policy(v1::UpdatePolicyRequest::default())
                .await
                .unwrap_err()
                .code(),
            c.delete_policy(v1::DeletePolicyRequest::default())
                .await
                .unwrap_err()
                .code(),
            c.list_policy_revisions(v1::ListPolicyRevisionsRequest::default())
                .await
                .unwrap_err()
                .code(),
        ];
        assert_eq!(codes, [Code::Unauthenticated; 6], "token {token:?}");
    }
    // Nothing was created by the refused calls.
    let listed = client(&cp)
        .await
        .list_policies(v1::ListPoliciesRequest::default())
        .await;
    assert!(listed.unwrap().into_inner().policies.is_empty());

    let mut health = tonic_health::pb::health_client::HealthClient::new(cp.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "shepherd.v1.PolicyService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    cp.stop().await;
}

/// Server reflection answers on v1 and on v1alpha (which grpcurl 1.8 uses).
#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    use tonic_reflection::pb::{v1 as r1, v1alpha as r1a};
    let (cp, _t) = start().await;

    let mut c1 = r1::server_reflection_client::ServerReflectionClient::new(cp.channel().await);
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = c1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"shepherd.v1.PolicyService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let mut c1a = r1a::server_reflection_client::ServerReflectionClient::new(cp.channel().await);
    let request = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1a::server_reflection_request::MessageRequest::FileContainingSymbol(
                "shepherd.v1.Policy".into(),
            ),
        ),
    };
    let mut replies = c1a
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(r1a::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
                if !f.file_descriptor_proto.is_empty()
        ),
        "{reply:?}"
    );
    cp.stop().await;
}

/// A policy breaking rules is refused with every field path and rule, and
/// nothing is stored.
#[tokio::test]
async fn invalid_policy_names_fields_and_changes_nothing() {
    let (cp, _t) = start().await;
    let mut c = client(&cp).await;
    let mut bad = chat_policy("chat");
    bad.backends[1].base_url = "api.mistral.ai".into();
    bad.backends[0].credentials = "sk-proj-0123456789abcdefghij".into();
    bad.traffic.as_mut().unwrap().candidate_weight = 20_000;
    let err = c.create_policy(create(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "policy \"chat\": backends[0].credentials: must be a secret reference, env:NAME or \
         file:/absolute/path; it looks like a raw key, which is refused; \
         backends[1].base_url: must be an absolute http or https URL; \
         traffic.candidate_weight: must be 0 to 10000 basis points"
    );
    // The raw key is not echoed back.
    assert!(!err.message().contains("sk-proj"));
    let err = c
        .create_policy(v1::CreatePolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "policy: required")
    );
    let err = c.get_policy(get("Not A Name")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("name: "), "{}", err.message());
    let listed = c
        .list_policies(v1::ListPoliciesRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().policies.is_empty());
    cp.stop().await;
}

/// Huge values are quoted back cut to 64 characters (a gRPC client refuses
/// large error metadata); a Timestamp past what protobuf's JSON can write is
/// refused naming the field; nothing is stored.
#[tokio::test]
async fn huge_values_and_out_of_range_timestamps_are_refused_clearly() {
    let (cp, _t) = start().await;
    let mut c = client(&cp).await;
    let huge = "x".repeat(20_000);
    let mut bad = chat_policy("chat");
    bad.traffic.as_mut().unwrap().baseline = huge.clone();
    bad.selector = Some(v1::AgentSelector {
        match_labels: [(huge.clone(), "v".to_string())].into(),
    });
    let err = c.create_policy(create(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 1000, "{} bytes", err.message().len());
    assert!(
        err.message().contains(&format!(
            "traffic.baseline: no backend is named \"{}…(20000 bytes)\"",
            "x".repeat(64)
        )),
        "{}",
        err.message()
    );
    let mut named = chat_policy("chat");
    named.name = huge;
    let err = c.create_policy(create(named)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 200, "{}", err.message());

    let mut late = chat_policy("chat");
    late.faults = vec![v1::Fault {
        backend: "openai".into(),
        abort: Some(v1::AbortFault {
            percent: 1.0,
            status: 503,
            retry_after: None,
        }),
        expire_time: Some(pbjson_types::Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        }),
        ..Default::default()
    }];
    let err = c.create_policy(create(late)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("faults[0].expire_time: must be a valid timestamp from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z"),
        "{}",
        err.message()
    );
    let listed = c
        .list_policies(v1::ListPoliciesRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().policies.is_empty());
    cp.stop().await;
}

/// Create, read, update (and a stale update), history, delete: the whole
/// life of a policy over gRPC.
#[tokio::test]
async fn policy_lifecycle() {
    let (cp, _t) = start().await;
    let mut c = client(&cp).await;

    let created = c
        .create_policy(create(chat_policy("chat")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.revision, 1);
    assert!(created.create_time.is_some() && created.update_time.is_some());
    let dup = c
        .create_policy(create(chat_policy("chat")))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    let mut read = c.get_policy(get("chat")).await.unwrap().into_inner();
    assert_eq!(read, created);
    read.traffic.as_mut().unwrap().candidate_weight = 100;
    let updated = c
        .update_policy(v1::UpdatePolicyRequest {
            policy: Some(read.clone()),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.revision, 2);
    assert_eq!(updated.traffic.as_ref().unwrap().candidate_weight, 100);
    assert_eq!(updated.create_time, created.create_time);

    // The same stale read again: refused, nothing changes.
    read.traffic.as_mut().unwrap().candidate_weight = 9_999;
    let stale = c
        .update_policy(v1::UpdatePolicyRequest {
            policy: Some(read),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert!(
        stale.message().contains("revision 2, not 1"),
        "{}",
        stale.message()
    );
    assert_eq!(
        c.get_policy(get("chat")).await.unwrap().into_inner(),
        updated
    );

    // Revision 1 stays readable.
    let first = c
        .get_policy(v1::GetPolicyRequest {
            name: "chat".into(),
            revision: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, created);

    let deleted = c
        .delete_policy(v1::DeletePolicyRequest {
            name: "chat".into(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revision, 3);
    assert_eq!(
        c.get_policy(get("chat")).await.unwrap_err().code(),
        Code::NotFound
    );
    let deletion = c
        .get_policy(v1::GetPolicyRequest {
            name: "chat".into(),
            revision: 3,
        })
        .await
        .unwrap_err();
    assert_eq!(deletion.code(), Code::NotFound);
    assert!(deletion.message().contains("records its deletion"));

    let history = c
        .list_policy_revisions(v1::ListPolicyRevisionsRequest {
            name: "chat".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<(i64, i32)> = history
        .revisions
        .iter()
        .map(|r| (r.revision, r.change))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (3, v1::ChangeKind::Deleted as i32),
            (2, v1::ChangeKind::Updated as i32),
            (1, v1::ChangeKind::Created as i32)
        ]
    );
    assert!(history.revisions[0].policy.is_none());
    assert_eq!(history.revisions[1].policy.as_ref(), Some(&updated));
    cp.stop().await;
}

/// An update must say which revision it replaces.
#[tokio::test]
async fn update_without_revision_is_refused() {
    let (cp, _t) = start().await;
    let mut c = client(&cp).await;
    c.create_policy(create(minimal_policy("chat")))
        .await
        .unwrap();
    let err = c
        .update_policy(v1::UpdatePolicyRequest {
            policy: Some(minimal_policy("chat")),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("policy.revision: required"),
        "{}",
        err.message()
    );
    let err = c
        .update_policy(v1::UpdatePolicyRequest {
            policy: Some(v1::Policy {
                revision: 1,
                ..minimal_policy("ghost")
            }),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    cp.stop().await;
}

/// validate_only checks everything and stores nothing; server-set fields in a
/// create are ignored.
#[tokio::test]
async fn validate_only_stores_nothing() {
    let (cp, _t) = start().await;
    let mut c = client(&cp).await;
    let checked = c
        .create_policy(v1::CreatePolicyRequest {
            policy: Some(chat_policy("chat")),
            validate_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.revision, 0);
    assert_eq!(
        c.get_policy(get("chat")).await.unwrap_err().code(),
        Code::NotFound
    );

    let mut with_server_fields = chat_policy("chat");
    with_server_fields.revision = 77;
    let created = c
        .create_policy(create(with_server_fields))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.revision, 1);

    let mut change = created.clone();
    change.traffic.as_mut().unwrap().candidate_weight = 500;
    c.update_policy(v1::UpdatePolicyRequest {
        policy: Some(change),
        validate_only: true,
    })
    .await
    .unwrap();
    assert_eq!(
        c.get_policy(get("chat")).await.unwrap().into_inner(),
        created
    );
    cp.stop().await;
}

/// Listing pages through policies with tokens; foreign tokens are refused.
#[tokio::test]
async fn list_pages_with_tokens() {
    let (cp, _t) = start().await;
    let mut c = client(&cp).await;
    for name in ["p1", "p2", "p3", "p4", "p5"] {
        c.create_policy(create(minimal_policy(name))).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_policies(v1::ListPoliciesRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.policies.len() <= 2);
        seen.extend(page.policies.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["p1", "p2", "p3", "p4", "p5"]);

    let revisions_token = {
        for _ in 0..2 {
            let mut p = c.get_policy(get("p1")).await.unwrap().into_inner();
            p.traffic.as_mut().unwrap().sticky_header = "x-user".into();
            c.update_policy(v1::UpdatePolicyRequest {
                policy: Some(p),
                validate_only: false,
            })
            .await
            .unwrap();
        }
        let page = c
            .list_policy_revisions(v1::ListPolicyRevisionsRequest {
                name: "p1".into(),
                page_size: 2,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            page.revisions
                .iter()
                .map(|r| r.revision)
                .collect::<Vec<_>>(),
            [3, 2]
        );
        page.next_page_token
    };
    let rest = c
        .list_policy_revisions(v1::ListPolicyRevisionsRequest {
            name: "p1".into(),
            page_size: 2,
            page_token: revisions_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.revisions
            .iter()
            .map(|r| r.revision)
            .collect::<Vec<_>>(),
        [1]
    );
    assert!(rest.next_page_token.is_empty());

    // A revisions token is not a policies token, nor one for another policy.
    for (err, what) in [
        (
            c.list_policies(v1::ListPoliciesRequest {
                page_size: 2,
                page_token: revisions_token.clone(),
            })
            .await
            .unwrap_err(),
            "policies",
        ),
        (
            c.list_policy_revisions(v1::ListPolicyRevisionsRequest {
                name: "p2".into(),
                page_size: 2,
                page_token: revisions_token,
            })
            .await
            .unwrap_err(),
            "revisions of p2",
        ),
    ] {
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert!(
            err.message().starts_with("page_token: "),
            "{what}: {}",
            err.message()
        );
    }
    let err = c
        .list_policies(v1::ListPoliciesRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("page_size: "));
    cp.stop().await;
}

/// A request larger than the limit is refused before it is read.
#[tokio::test]
async fn oversized_requests_are_refused() {
    let t = TestStore::sqlite().await;
    let options = ServerOptions {
        max_message_bytes: 16 * 1024,
        ..ServerOptions::default()
    };
    let cp = TestControlPlane::start(t.store.clone(), options).await;
    let mut c = cp.policy_client(None).await;
    let mut big = minimal_policy("big");
    big.selector = Some(v1::AgentSelector {
        match_labels: [("k".to_string(), "v".repeat(32 * 1024))].into(),
    });
    let err = c.create_policy(create(big)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );
    assert_eq!(
        c.get_policy(get("big")).await.unwrap_err().code(),
        Code::NotFound
    );
    cp.stop().await;
}

/// With the database unreachable, writes fail with UNAVAILABLE and a clear
/// message, health reports PolicyService NOT_SERVING, and both recover when
/// it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_unavailable_then_recovers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let db = TestDb::create().await;
    let relay = Relay::start(db.server_addr()).await;
    let options = StoreOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_millis(500),
    };
    let store = store::open(&db.url_via(relay.addr), &options)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let cp = TestControlPlane::start(
        store,
        ServerOptions {
            health_interval: Duration::from_millis(50),
            ..ServerOptions::default()
        },
    )
    .await;
    let mut c = cp.policy_client(None).await;
    c.create_policy(create(minimal_policy("before")))
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(cp.channel().await);
    let mut statuses = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "shepherd.v1.PolicyService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    relay.cut();
    let err = c
        .create_policy(create(minimal_policy("during")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("database unavailable"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("nothing was changed"),
        "{}",
        err.message()
    );
    assert_eq!(
        statuses.next().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );

    relay.restore();
    assert_eq!(
        statuses.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    c.create_policy(create(minimal_policy("after")))
        .await
        .unwrap();
    let names: Vec<String> = c
        .list_policies(v1::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policies
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["after", "before"]);
    drop(statuses);
    cp.stop().await;
}
