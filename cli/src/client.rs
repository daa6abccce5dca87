//! The gRPC clients, with the admin token on every call.

use anyhow::{Context, bail};
use shepherd_proto::v1::agent_service_client::AgentServiceClient;
use shepherd_proto::v1::policy_service_client::PolicyServiceClient;
use shepherd_proto::v1::rollout_service_client::RolloutServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::Conn;

/// Adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// Clients of one control plane.
pub struct Clients {
    pub policies: PolicyServiceClient<Authed>,
    pub rollouts: RolloutServiceClient<Authed>,
    pub agents: AgentServiceClient<Authed>,
}

/// The token of `conn`: the flag or variable, else the file.
fn token(conn: &Conn) -> anyhow::Result<Option<String>> {
    if let Some(t) = &conn.token {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(path) = &conn.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    token_of_file(&text)
        .map(Some)
        .map_err(|why| anyhow::anyhow!("--token-file {}: {why}", path.display()))
}

/// The token of a token file: the token alone, or one `NAME TOKEN` line
/// (comments and blank lines skipped).
fn token_of_file(text: &str) -> Result<String, &'static str> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines.as_slice() {
        [] => Err("the file is empty"),
        [line] => {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [token] | [_, token] => Ok((*token).to_string()),
                _ => Err("expected the token alone, or \"NAME TOKEN\""),
            }
        }
        _ => Err("holds several tokens; give a file with the one to use"),
    }
}

/// The server address as a URL (`HOST:PORT` gets `http://`).
pub fn server_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

pub async fn connect(conn: &Conn) -> anyhow::Result<Clients> {
    let url = server_url(&conn.server);
    let bearer = match token(conn)? {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the token holds characters a header cannot carry")?,
        ),
        None => None,
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("--server {url:?}: not a valid URL"))?;
    if url.starts_with("https://") {
        let tls = match &conn.ca_file {
            Some(ca) => {
                let pem =
                    std::fs::read(ca).with_context(|| format!("--ca-file {}", ca.display()))?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    } else if conn.ca_file.is_some() {
        bail!("--ca-file needs an https:// --server");
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {url}"))?;
    let b = Bearer(bearer);
    Ok(Clients {
        policies: PolicyServiceClient::with_interceptor(channel.clone(), b.clone()),
        rollouts: RolloutServiceClient::with_interceptor(channel.clone(), b.clone()),
        agents: AgentServiceClient::with_interceptor(channel, b),
    })
}

/// A failed call as a message: the gRPC code and the server's words.
pub fn status(what: &str, s: tonic::Status) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Unauthenticated => {
            " (set SHEPHERD_ADMIN_TOKEN_FILE, SHEPHERD_ADMIN_TOKEN or --token-file)"
        }
        tonic::Code::Unavailable => " (is the control plane running, and is --server right?)",
        _ => "",
    };
    anyhow::anyhow!("{what}: {:?}: {}{hint}", s.code(), s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token file holds the token alone or one named line.
    #[test]
    fn token_files() {
        assert_eq!(token_of_file("s3cret\n"), Ok("s3cret".into()));
        assert_eq!(token_of_file("# ops\nops s3cret\n"), Ok("s3cret".into()));
        assert!(token_of_file("\n").is_err());
        assert!(token_of_file("a t1\nb t2\n").is_err());
        assert!(token_of_file("a b c\n").is_err());
    }

    #[test]
    fn a_bare_address_gets_http() {
        assert_eq!(server_url("127.0.0.1:4100"), "http://127.0.0.1:4100");
        assert_eq!(
            server_url("https://cp.example:443"),
            "https://cp.example:443"
        );
    }
}
