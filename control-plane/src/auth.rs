//! Bearer tokens. Each token has a name and a role: `admin` (every
//! operator call), `viewer` (the read calls: Get, List, Watch) or `agent`
//! (the Connect stream). Several tokens of a role may be valid at once, so a
//! token is rotated by adding the new one, moving callers over and removing
//! the old one; the set is swapped whole when its files change. Tokens are
//! compared in constant time. Health and reflection stay open.
//!
//! Every call is checked once, by the [`Authenticate`] layer, against the
//! role its method needs ([`need_of`]); the admitted [`Caller`] travels in
//! the request's extensions, so a write can record which token made it (by
//! name, never by value).

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// A secret bearer token. Its `Debug` form never shows the value.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl Token {
    /// Wraps a token; refuses an empty one or one with characters that cannot
    /// travel in a header.
    pub fn new(value: &str) -> Result<Self, String> {
        let value = shepherd_proto::validate::check_token(value)?;
        Ok(Self(Arc::from(value.as_bytes())))
    }

    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_ref().ct_eq(presented).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An operator: every PolicyService, RolloutService and fleet call.
    Admin,
    /// A reader: the Get, List and Watch calls only.
    Viewer,
    /// An agent on its Connect stream.
    Agent,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }

    /// Whether a token of this role may make a call needing `need`.
    fn serves(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Role::Admin, Need::Write | Need::Read)
                | (Role::Viewer, Need::Read)
                | (Role::Agent, Need::Agent)
        )
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A change: the admin token.
    Write,
    /// A read: the admin or a viewer token.
    Read,
    /// The agent stream: an agent token.
    Agent,
}

impl Need {
    fn describe(self) -> &'static str {
        match self {
            Need::Write => "an admin token",
            Need::Read => "an admin or viewer token",
            Need::Agent => "an agent token",
        }
    }
}

/// The role a gRPC method needs, by its path; `None` for the open services
/// (health, reflection). A Shepherd method not named here is a write.
pub fn need_of(path: &str) -> Option<Need> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "shepherd.v1.PolicyService" => Some(match method {
            "GetPolicy" | "ListPolicies" | "ListPolicyRevisions" => Need::Read,
            _ => Need::Write,
        }),
        "shepherd.v1.RolloutService" => Some(match method {
            "GetRollout" | "ListRollouts" | "WatchRollout" => Need::Read,
            _ => Need::Write,
        }),
        "shepherd.v1.AgentService" => Some(match method {
            "Connect" => Need::Agent,
            "ListAgents" | "GetPolicyStatus" => Need::Read,
            _ => Need::Write,
        }),
        s if s.starts_with("shepherd.") => Some(Need::Write),
        _ => None,
    }
}

/// One valid token.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Recorded with each write the token makes; never secret.
    pub name: String,
    pub role: Role,
    token: Token,
}

impl Credential {
    pub fn new(name: &str, role: Role, token: Token) -> Result<Self, String> {
        check_token_name(name)?;
        Ok(Self {
            name: name.to_string(),
            role,
            token,
        })
    }
}

fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(format!(
            "token name {name:?}: 1 to 64 letters, digits and '-', '_', '.', '@'"
        ));
    }
    Ok(())
}

/// The tokens valid at one moment.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    credentials: Vec<Credential>,
}

impl TokenSet {
    pub fn new(credentials: Vec<Credential>) -> Result<Self, String> {
        for (i, c) in credentials.iter().enumerate() {
            if credentials[..i]
                .iter()
                .any(|o| o.name == c.name && o.role == c.role)
            {
                return Err(format!(
                    "two {} tokens are named {:?}; names tell writes apart",
                    c.role.name(),
                    c.name
                ));
            }
        }
        Ok(Self { credentials })
    }

    /// Whether any token of `role` is set.
    pub fn has(&self, role: Role) -> bool {
        self.credentials.iter().any(|c| c.role == role)
    }

    /// How many tokens of `role` are set.
    pub fn count(&self, role: Role) -> usize {
        self.credentials.iter().filter(|c| c.role == role).count()
    }

    /// True when a call needing `need` is admitted without a token: no
    /// token of a role serving it is configured.
    fn open_for(&self, need: Need) -> bool {
        !self.credentials.iter().any(|c| c.role.serves(need))
    }

    /// The credential whose token is `presented`. Every token is compared,
    /// each in constant time, so the time taken does not tell which matched.
    fn find(&self, presented: &[u8]) -> Option<&Credential> {
        let mut found = None;
        for c in &self.credentials {
            if c.token.matches(presented) && found.is_none() {
                found = Some(c);
            }
        }
        found
    }
}

/// Reads the tokens of `role` from a token file: one token per line, either
/// alone (it is then named after the role, as with a single token) or as
/// `NAME TOKEN`. Blank lines and lines starting with `#` are skipped.
/// Errors name the file and line, never a token.
pub fn parse_token_file(role: Role, path: &Path, text: &str) -> Result<Vec<Credential>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let mut fields = line.split_whitespace();
        let (name, token) = match (fields.next(), fields.next(), fields.next()) {
            (Some(token), None, None) => (role.name(), token),
            (Some(name), Some(token), None) => (name, token),
            _ => {
                return Err(format!("{}: expected \"TOKEN\" or \"NAME TOKEN\"", at()));
            }
        };
        let token = Token::new(token).map_err(|rule| format!("{}: token {rule}", at()))?;
        out.push(Credential::new(name, role, token).map_err(|e| format!("{}: {e}", at()))?);
    }
    if out.is_empty() {
        return Err(format!(
            "{}: holds no {} token",
            path.display(),
            role.name()
        ));
    }
    Ok(out)
}

/// Who made an admitted call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name; `None` when no token was needed.
    pub token: Option<String>,
}

impl Caller {
    /// The actor recorded with an operator's write: `operator:<token name>`,
    /// or `operator` when no token is configured.
    pub fn actor(&self) -> String {
        match &self.token {
            Some(name) => format!("operator:{name}"),
            None => crate::rollout::OPERATOR.to_string(),
        }
    }

    /// The caller of `request` (set by [`Authenticate`]); a request that did
    /// not pass through it is an open one.
    pub fn of<T>(request: &Request<T>) -> Self {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller { token: None })
    }
}

/// Checks the bearer token of each call against the tokens of the role the
/// call needs. Cloning shares the token set, which [`Authenticator::replace`]
/// swaps for every clone at once.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: Arc<ArcSwap<TokenSet>>,
}

impl Authenticator {
    /// One admin and one agent token at most, named after their roles.
    pub fn new(admin: Option<Token>, agent: Option<Token>) -> Self {
        let mut credentials = Vec::new();
        for (role, token) in [(Role::Admin, admin), (Role::Agent, agent)] {
            if let Some(token) = token {
                credentials.push(Credential {
                    name: role.name().to_string(),
                    role,
                    token,
                });
            }
        }
        Self::of_set(TokenSet { credentials })
    }

    pub fn of_set(set: TokenSet) -> Self {
        Self {
            tokens: Arc::new(ArcSwap::from_pointee(set)),
        }
    }

    /// Makes `set` the valid tokens from the next call on.
    pub fn replace(&self, set: TokenSet) {
        self.tokens.store(Arc::new(set));
    }

    /// The tokens valid now.
    pub fn tokens(&self) -> Arc<TokenSet> {
        self.tokens.load_full()
    }

    /// True when no token at all is configured: every call is accepted.
    pub fn is_open(&self) -> bool {
        self.tokens.load().credentials.is_empty()
    }

    /// Admits or refuses a call needing `need`.
    pub fn check(&self, need: Need, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.check_header(need, metadata.get("authorization").map(|v| v.as_bytes()))
    }

    /// [`Self::check`], given the call's `authorization` header.
    fn check_header(&self, need: Need, header: Option<&[u8]>) -> Result<Caller, Status> {
        let set = self.tokens.load();
        if set.open_for(need) {
            return Ok(Caller { token: None });
        }
        let Some(header) = header else {
            return Err(Status::unauthenticated(format!(
                "missing credentials: send the header \"authorization: Bearer <token>\" with {}",
                need.describe()
            )));
        };
        let presented = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be \"Bearer <token>\"")
            })?;
        match set.find(presented) {
            Some(c) if c.role.serves(need) => Ok(Caller {
                token: Some(c.name.clone()),
            }),
            Some(c) => Err(Status::permission_denied(format!(
                "this call needs {}; the {} token {:?} was given",
                need.describe(),
                c.role.name(),
                c.name
            ))),
            None => Err(Status::unauthenticated(format!(
                "invalid token: this call needs {}",
                need.describe()
            ))),
        }
    }
}

/// A tower layer checking every gRPC call against [`need_of`] its method,
/// answering a refused call with its status (nothing reaches the service),
/// and handing an admitted one its [`Caller`] in the extensions.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Authenticator,
}

impl<S> Authenticate<S> {
    pub fn new(inner: S, auth: Authenticator) -> Self {
        Self { inner, auth }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(need) = need_of(req.uri().path()) {
            let header = req.headers().get("authorization").map(|v| v.as_bytes());
            match self.auth.check_header(need, header) {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                }
                Err(status) => {
                    let response = status.into_http::<tonic::body::Body>();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    fn cred(name: &str, role: Role, token: &str) -> Credential {
        Credential::new(name, role, Token::new(token).unwrap()).unwrap()
    }

    fn auth() -> Authenticator {
        Authenticator::new(
            Some(Token::new("admin-secret").unwrap()),
            Some(Token::new("agent-secret").unwrap()),
        )
    }

    /// The right token is admitted; missing, malformed or wrong ones are not.
    #[test]
    fn checks_admin_token() {
        let a = auth();
        let caller = a
            .check(Need::Write, &metadata(Some("Bearer admin-secret")))
            .unwrap();
        assert_eq!(caller.actor(), "operator:admin");
        let missing = a.check(Need::Write, &metadata(None)).unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert!(missing.message().contains("authorization: Bearer"));
        let malformed = a
            .check(Need::Write, &metadata(Some("admin-secret")))
            .unwrap_err();
        assert_eq!(malformed.code(), Code::Unauthenticated);
        let wrong = a
            .check(Need::Write, &metadata(Some("Bearer nope")))
            .unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert!(!wrong.message().contains("admin-secret"));
    }

    /// The other role's token is refused as the wrong kind.
    #[test]
    fn wrong_kind_of_token_is_permission_denied() {
        let a = auth();
        let err = a
            .check(Need::Write, &metadata(Some("Bearer agent-secret")))
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = a
            .check(Need::Agent, &metadata(Some("Bearer admin-secret")))
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    /// A viewer token reads but cannot write; the admin token does both; a
    /// viewer's refusal names the token, never its value.
    #[test]
    fn viewer_reads_only() {
        let a = Authenticator::of_set(
            TokenSet::new(vec![
                cred("ops", Role::Admin, "admin-1"),
                cred("dashboard", Role::Viewer, "view-1"),
            ])
            .unwrap(),
        );
        let read = a
            .check(Need::Read, &metadata(Some("Bearer view-1")))
            .unwrap();
        assert_eq!(read.token.as_deref(), Some("dashboard"));
        let err = a
            .check(Need::Write, &metadata(Some("Bearer view-1")))
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("\"dashboard\""), "{}", err.message());
        assert!(!err.message().contains("view-1"));
        assert!(
            a.check(Need::Read, &metadata(Some("Bearer admin-1")))
                .is_ok()
        );
        // Agents stay open: no agent token is set.
        assert!(a.check(Need::Agent, &metadata(None)).is_ok());
    }

    /// Two admin tokens are valid at once; a replaced set takes effect for
    /// every clone at the next call.
    #[test]
    fn rotation_by_replacing_the_set() {
        let a = Authenticator::of_set(
            TokenSet::new(vec![
                cred("old", Role::Admin, "one"),
                cred("new", Role::Admin, "two"),
            ])
            .unwrap(),
        );
        let clone = a.clone();
        assert_eq!(
            clone
                .check(Need::Write, &metadata(Some("Bearer one")))
                .unwrap()
                .token
                .as_deref(),
            Some("old")
        );
        assert_eq!(
            clone
                .check(Need::Write, &metadata(Some("Bearer two")))
                .unwrap()
                .token
                .as_deref(),
            Some("new")
        );
        a.replace(TokenSet::new(vec![cred("new", Role::Admin, "two")]).unwrap());
        let err = clone
            .check(Need::Write, &metadata(Some("Bearer one")))
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(
            clone
                .check(Need::Write, &metadata(Some("Bearer two")))
                .is_ok()
        );
    }

    /// With no token configured every call is admitted, as "operator".
    #[test]
    fn no_token_admits_everyone() {
        let a = Authenticator::default();
        assert!(a.is_open());
        let caller = a.check(Need::Write, &metadata(None)).unwrap();
        assert_eq!(caller.actor(), "operator");
    }

    /// Reads need a token once an admin or viewer token is set; a viewer
    /// token alone leaves writes open (the start refuses that off loopback).
    #[test]
    fn openness_follows_the_roles_serving_the_call() {
        let viewer_only = TokenSet::new(vec![cred("dashboard", Role::Viewer, "view-1")]).unwrap();
        assert!(!viewer_only.open_for(Need::Read));
        assert!(viewer_only.open_for(Need::Write));
        let admin_only = TokenSet::new(vec![cred("ops", Role::Admin, "a")]).unwrap();
        assert!(!admin_only.open_for(Need::Read));
        assert!(admin_only.open_for(Need::Agent));
    }

    /// Each method's need; unknown Shepherd methods are writes; health and
    /// reflection are open.
    #[test]
    fn needs_by_method() {
        for (path, need) in [
            ("/shepherd.v1.PolicyService/GetPolicy", Some(Need::Read)),
            (
                "/shepherd.v1.PolicyService/ListPolicyRevisions",
                Some(Need::Read),
            ),
            ("/shepherd.v1.PolicyService/CreatePolicy", Some(Need::Write)),
            ("/shepherd.v1.RolloutService/WatchRollout", Some(Need::Read)),
            (
                "/shepherd.v1.RolloutService/AbortRollout",
                Some(Need::Write),
            ),
            ("/shepherd.v1.AgentService/Connect", Some(Need::Agent)),
            ("/shepherd.v1.AgentService/ListAgents", Some(Need::Read)),
            ("/shepherd.v1.AgentService/Unknown", Some(Need::Write)),
            ("/shepherd.v2.Future/Anything", Some(Need::Write)),
            ("/grpc.health.v1.Health/Check", None),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
            ),
            ("", None),
        ] {
            assert_eq!(need_of(path), need, "{path}");
        }
    }

    /// Token files: bare tokens take the role's name, named lines their
    /// name; comments and blanks are skipped; errors name the line and never
    /// the token.
    #[test]
    fn token_files() {
        let path = Path::new("/etc/shepherd/admin-tokens");
        let creds = parse_token_file(
            Role::Admin,
            path,
            "# rotation in progress\n\nalice s3cret-1\n  bob   s3cret-2  \n",
        )
        .unwrap();
        let names: Vec<_> = creds.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        let single = parse_token_file(Role::Agent, path, "only-token\n").unwrap();
        assert_eq!(single[0].name, "agent");

        let err = parse_token_file(Role::Admin, path, "a b c-secret-d\n").unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("NAME TOKEN"),
            "{err}"
        );
        assert!(!err.contains("c-secret-d"));
        let err = parse_token_file(Role::Admin, path, "ok t1\nbad/name t2\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("token name"),
            "{err}"
        );
        let err = parse_token_file(Role::Admin, path, "# none\n").unwrap_err();
        assert!(err.contains("holds no admin token"), "{err}");
        let err = TokenSet::new(vec![
            cred("alice", Role::Admin, "x1"),
            cred("alice", Role::Admin, "x2"),
        ])
        .unwrap_err();
        assert!(err.contains("named \"alice\""), "{err}");
    }

    /// Tokens never print, and empty ones are refused.
    #[test]
    fn token_hygiene() {
        assert_eq!(format!("{:?}", Token::new("s3cret").unwrap()), "Token(***)");
        assert!(Token::new("  \n").is_err());
        assert!(Token::new("two words").is_err());
        let set = TokenSet::new(vec![cred("n", Role::Admin, "s3cret")]).unwrap();
        assert!(!format!("{set:?}").contains("s3cret"));
    }
}
