//! An in-process control plane on `127.0.0.1:0`, and clients for it.

use std::net::SocketAddr;
use std::sync::Arc;

use shepherd_control_plane::server::{self, ServeError, ServerOptions};
use shepherd_control_plane::store::Store;
use shepherd_proto::v1::agent_service_client::AgentServiceClient;
use shepherd_proto::v1::policy_service_client::PolicyServiceClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A running control plane.
pub struct TestControlPlane {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), ServeError>>,
}

/// Adds "authorization: Bearer <token>" to every call, if a token is set.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Bearer {
    /// Sends `token`, if any.
    pub fn new(token: Option<&str>) -> Self {
        Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()))
    }
}

/// A PolicyService client sending a bearer token.
pub type PolicyClient = PolicyServiceClient<InterceptedService<Channel, Bearer>>;

/// An AgentService client sending a bearer token.
pub type AgentClient = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// A RolloutService client sending a bearer token.
pub type RolloutClient = shepherd_proto::v1::rollout_service_client::RolloutServiceClient<
    InterceptedService<Channel, Bearer>,
>;

/// A RolloutService client of a control plane at `addr`, sending `token`.
pub async fn rollout_client_of(addr: &str, token: Option<&str>) -> RolloutClient {
    shepherd_proto::v1::rollout_service_client::RolloutServiceClient::with_interceptor(
        channel_to(addr).await,
        Bearer::new(token),
    )
}

/// Replaces a policy at whatever revision it is now (read first); returns
/// the stored result.
pub async fn update_latest(
    policies: &mut PolicyClient,
    policy: shepherd_proto::v1::Policy,
) -> shepherd_proto::v1::Policy {
    use shepherd_proto::v1;
    let current = policies
        .get_policy(v1::GetPolicyRequest {
            name: policy.name.clone(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    policies
        .update_policy(v1::UpdatePolicyRequest {
            policy: Some(v1::Policy {
                revision: current.revision,
                ..policy
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// A channel to a control plane at `addr` (host:port).
pub async fn channel_to(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Clients of a control plane at `addr`, sending `token`.
pub async fn clients_of(addr: &str, token: Option<&str>) -> (PolicyClient, AgentClient) {
    let channel = channel_to(addr).await;
    (
        PolicyServiceClient::with_interceptor(channel.clone(), Bearer::new(token)),
        AgentServiceClient::with_interceptor(channel, Bearer::new(token)),
    )
}

impl TestControlPlane {
    /// Starts a control plane serving `store`.
    pub async fn start(store: Arc<dyn Store>, options: ServerOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server::serve(listener, store, options, shutdown.clone()));
        Self {
            addr,
            shutdown,
            handle,
        }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A PolicyService client sending `token`, if any.
    pub async fn policy_client(&self, token: Option<&str>) -> PolicyClient {
        PolicyServiceClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// An AgentService client sending `token`, if any.
    pub async fn agent_client(&self, token: Option<&str>) -> AgentClient {
        AgentServiceClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}
