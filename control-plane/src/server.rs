//! Assembles the gRPC server (PolicyService and RolloutService behind the
//! admin token, AgentService, gRPC
//! health, server reflection v1 and v1alpha) and runs it until shutdown.
//!
//! Shutdown phases: the token is cancelled (SIGINT/SIGTERM in `main`); the
//! server stops accepting connections and lets in-flight calls finish for up
//! to the grace period; background tasks are cancelled and awaited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shepherd_observe::conns::Connections;
use shepherd_proto::v1::agent_service_server::AgentServiceServer;
use shepherd_proto::v1::policy_service_server::PolicyServiceServer;
use shepherd_proto::v1::rollout_service_server::RolloutServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::api::{AgentApi, PolicyApi, RolloutApi};
use crate::auth::{Authenticate, Authenticator, Role};
use crate::config::{DatabaseArgs, ServeArgs};
use crate::fleet::{Fleet, FleetOptions};
use crate::store::{self, Store, StoreError, StoreOptions, redact_url};
use crate::tls::{Listener, TlsServer};

/// Everything that can stop the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub auth: Authenticator,
    /// Largest request accepted.
    pub max_message_bytes: usize,
    /// Longest wait for in-flight calls at shutdown.
    pub shutdown_grace: Duration,
    /// How often the database is checked for the health service.
    pub health_interval: Duration,
    /// Largest message an agent may send (telemetry reports).
    pub max_agent_message_bytes: usize,
    /// Largest message sent to an agent (snapshots).
    pub max_snapshot_bytes: usize,
    pub fleet: FleetOptions,
    /// TLS on both listeners, with client certificates when it has a
    /// client CA.
    pub tls: Option<TlsServer>,
    /// Time a new gRPC connection has to finish its TLS handshake and send
    /// the HTTP/2 preface.
    pub first_bytes_timeout: Duration,
    /// The gRPC listener's connections and their cap.
    pub connections: Connections,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            auth: Authenticator::default(),
            max_message_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            health_interval: Duration::from_secs(5),
            max_agent_message_bytes: 4 * 1024 * 1024,
            max_snapshot_bytes: 16 * 1024 * 1024,
            fleet: FleetOptions::default(),
            tls: None,
            first_bytes_timeout: crate::tls::FIRST_BYTES_TIMEOUT,
            connections: Connections::default(),
        }
    }
}

/// Opens the store of `args`, waiting for the database to come up for up to
/// `database_connect_wait`, and applies migrations.
pub async fn open_store(args: &DatabaseArgs) -> Result<Arc<dyn Store>, ServeError> {
    let url = redact_url(&args.database_url);
    let fail = |source| ServeError::Store {
        url: url.clone(),
        source,
    };
    store::Engine::of_url(&args.database_url).map_err(ServeError::Config)?;
    let options = StoreOptions {
        max_connections: args.database_max_connections,
        acquire_timeout: args.database_timeout,
    };
    let deadline = tokio::time::Instant::now() + args.database_connect_wait;
    let mut backoff = Duration::from_millis(200);
    let store = loop {
        match store::open(&args.database_url, &options).await {
            Ok(store) => break store,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                warn!(database = %url, error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(fail(e)),
        }
    };
    store.migrate().await.map_err(fail)?;
    info!(database = %url, "database ready");
    Ok(store)
}

/// Runs `serve` with the settings of the command line until `shutdown`.
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> Result<(), ServeError> {
    let tokens = args.read_tokens().map_err(ServeError::Config)?;
    let tls = args
        .tls_files()
        .map(TlsServer::load)
        .transpose()
        .map_err(ServeError::Config)?;
    let agents_by_cert = tls.as_ref().is_some_and(TlsServer::verifies_clients);
    args.check_exposure(
        tokens.has(Role::Admin),
        tokens.has(Role::Agent) || agents_by_cert,
    )
    .map_err(ServeError::Config)?;
    if !tokens.has(Role::Admin) {
        warn!(
            "no admin token configured: every caller can change policies (loopback or --insecure only)"
        );
    }
    if !tokens.has(Role::Agent) && !agents_by_cert {
        warn!(
            "no agent token configured: every caller can connect as an agent (loopback or --insecure only)"
        );
    }
    // The ports first: a port that is taken stops the start before the
    // database is created or migrated.
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
    let admin_listener = match args.admin_listen.0 {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let store = open_store(&args.database).await?;
    let options = ServerOptions {
        auth: Authenticator::of_set(tokens),
        max_message_bytes: args.max_message_bytes,
        shutdown_grace: args.shutdown_grace,
        health_interval: args.database.database_health_interval,
        fleet: args.fleet.options(),
        tls: tls.clone(),
        connections: args
            .max_connections
            .map_or_else(Connections::default, Connections::new),
        ..ServerOptions::default()
    };
    if let Some(tls) = tls {
        tokio::spawn(crate::reload::run(
            "TLS files",
            crate::reload::Watch::new(tls.files().paths()),
            args.reload_interval,
            shutdown.clone(),
            move || tls.reload(),
        ));
    }
    let auth = options.auth.clone();
    let reload_args = args.clone();
    tokio::spawn(crate::reload::run(
        "tokens",
        crate::reload::Watch::new(args.token_files()),
        args.reload_interval,
        shutdown.clone(),
        move || {
            let set = reload_args.read_tokens()?;
            let loaded = format!(
                "{} admin, {} viewer and {} agent tokens",
                set.count(Role::Admin),
                set.count(Role::Viewer),
                set.count(Role::Agent)
            );
            auth.replace(set);
            Ok(loaded)
        },
    ));
    serve_with_admin(listener, admin_listener, store, options, shutdown).await
}

/// Serves gRPC on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    options: ServerOptions,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    serve_with_admin(listener, None, store, options, shutdown).await
}

/// [`serve`], with the admin endpoints (`/metrics`, `/healthz`) on
/// `admin` when given.
pub async fn serve_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    store: Arc<dyn Store>,
    options: ServerOptions,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let tasks = TaskTracker::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PolicyServiceServer<PolicyApi>>().await;
    tasks.spawn(watch_database(
        store.clone(),
        health.clone(),
        options.health_interval,
        shutdown.clone(),
    ));

    // grpcurl 1.8 asks for v1alpha, newer clients for v1.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(shepherd_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let fleet = Fleet::new(store.clone(), options.fleet.clone());
    info!(replica = %fleet.options.replica, "fleet replica");
    let fleet_done = tokio::spawn(fleet.clone().run(shutdown.clone()));
    let analysis = crate::rollout::AnalysisOptions {
        interval: options.fleet.analysis_interval,
        stale_after: options.fleet.stale_telemetry_after,
        replica: fleet.options.replica.clone(),
        telemetry_window: options.fleet.telemetry_window,
    };
    if let Some(admin) = admin {
        if let Ok(addr) = admin.local_addr() {
            info!(admin = %addr, "admin endpoints listening (/metrics, /healthz)");
        }
        tasks.spawn(crate::metrics::serve(
            admin,
            options.tls.clone(),
            options.connections.clone(),
            fleet.clone(),
            store.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(crate::rollout::leader::run(
        store.clone(),
        fleet.counters.clone(),
        analysis,
        options.fleet.replica_timeout,
        shutdown.clone(),
    ));
    health.set_serving::<AgentServiceServer<AgentApi>>().await;

    let agents_by_cert = options
        .tls
        .as_ref()
        .is_some_and(TlsServer::verifies_clients);
    let agents =
        AgentServiceServer::new(AgentApi::new(fleet.clone(), store.clone(), agents_by_cert))
            .max_decoding_message_size(options.max_agent_message_bytes)
            .max_encoding_message_size(options.max_snapshot_bytes);
    let rollouts = RolloutServiceServer::new(RolloutApi::new(store.clone(), fleet.clone()))
        .max_decoding_message_size(options.max_message_bytes);
    health
        .set_serving::<RolloutServiceServer<RolloutApi>>()
        .await;
    let policy = PolicyServiceServer::new(PolicyApi::new(store))
        .max_decoding_message_size(options.max_message_bytes);

    // Tell health watchers (load balancers) first that this replica is going.
    tasks.spawn({
        let health = health.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            for service in [
                "",
                "shepherd.v1.PolicyService",
                "shepherd.v1.RolloutService",
                "shepherd.v1.AgentService",
            ] {
                health
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
        }
    });

    let incoming = crate::tls::incoming(
        listener,
        options.tls.clone().map(|t| (t, Listener::Grpc)),
        options.first_bytes_timeout,
        options.connections.clone(),
        shutdown.clone(),
    );
    info!(%addr, tls = options.tls.is_some(), "control plane listening");
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(tower::layer::layer_fn(crate::api::trace::Traced))
        .layer(tower::layer::layer_fn({
            let auth = options.auth.clone();
            move |inner| Authenticate::new(inner, auth.clone())
        }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(policy)
        .add_service(rollouts)
        .add_service(agents)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(server);

    let result = tokio::select! {
        result = &mut server => result.map_err(ServeError::from),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(options.shutdown_grace).await;
        } => {
            warn!(grace = ?options.shutdown_grace, "in-flight calls did not finish in time; closing them");
            Ok(())
        }
    };
    shutdown.cancel();
    let _ = fleet_done.await;
    tasks.close();
    tasks.wait().await;
    info!("control plane stopped");
    result
}

/// Reports PolicyService as NOT_SERVING while the database does not answer
/// (the process itself, service "", stays SERVING). The ping also tells the
/// store's health tracker, which logs each outage once.
async fn watch_database(
    store: Arc<dyn Store>,
    health: tonic_health::server::HealthReporter,
    interval: Duration,
    shutdown: CancellationToken,
) {
    const SERVICE: &str = "shepherd.v1.PolicyService";
    let mut serving = true;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let answering = store.ping().await.is_ok();
        if answering != serving {
            let status = if answering {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(SERVICE, status).await;
            serving = answering;
        }
    }
}
