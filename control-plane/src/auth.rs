//! Bearer tokens. Operators (PolicyService and later RolloutService) and
//! agents (the Connect stream) use separate tokens, each compared in constant
//! time. Health and reflection stay open.

use std::fmt;
use std::sync::Arc;

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

/// The kinds of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An operator: grpcurl, the CLI.
    Admin,
    /// An agent on its Connect stream.
    Agent,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

/// Checks the bearer token of each call against the token of the role the
/// service needs.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    admin: Option<Token>,
    agent: Option<Token>,
}

impl Authenticator {
    pub fn new(admin: Option<Token>, agent: Option<Token>) -> Self {
        Self { admin, agent }
    }

    /// True when no token at all is configured: every call is accepted.
    pub fn is_open(&self) -> bool {
        self.admin.is_none() && self.agent.is_none()
    }

    fn token(&self, role: Role) -> Option<&Token> {
        match role {
            Role::Admin => self.admin.as_ref(),
            Role::Agent => self.agent.as_ref(),
        }
    }

    /// Admits or refuses a call needing `role`. A role without a configured
    /// token admits every caller.
    pub fn check(&self, role: Role, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(expected) = self.token(role) else {
            return Ok(());
        };
        let Some(header) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(format!(
                "missing credentials: send the header \"authorization: Bearer <{} token>\"",
                role.name()
            )));
        };
        let presented = header
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| header.as_bytes().strip_prefix(b"bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be \"Bearer <token>\"")
            })?;
        if expected.matches(presented) {
            return Ok(());
        }
        let other = match role {
            Role::Admin => Role::Agent,
            Role::Agent => Role::Admin,
        };
        if self.token(other).is_some_and(|t| t.matches(presented)) {
            return Err(Status::permission_denied(format!(
                "this call needs the {} token; the {} token was given",
                role.name(),
                other.name()
            )));
        }
        Err(Status::unauthenticated(format!(
            "invalid {} token",
            role.name()
        )))
    }

    /// A tonic interceptor admitting callers with the token of `role`.
    pub fn interceptor(
        &self,
        role: Role,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let auth = self.clone();
        move |request: Request<()>| {
            auth.check(role, request.metadata())?;
            Ok(request)
        }
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
        assert!(
            a.check(Role::Admin, &metadata(Some("Bearer admin-secret")))
                .is_ok()
        );
        let missing = a.check(Role::Admin, &metadata(None)).unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert!(missing.message().contains("authorization: Bearer"));
        let malformed = a
            .check(Role::Admin, &metadata(Some("admin-secret")))
            .unwrap_err();
        assert_eq!(malformed.code(), Code::Unauthenticated);
        let wrong = a
            .check(Role::Admin, &metadata(Some("Bearer nope")))
            .unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert!(!wrong.message().contains("admin-secret"));
    }

    /// The other role's token is refused as the wrong kind.
    #[test]
    fn wrong_kind_of_token_is_permission_denied() {
        let a = auth();
        let err = a
            .check(Role::Admin, &metadata(Some("Bearer agent-secret")))
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = a
            .check(Role::Agent, &metadata(Some("Bearer admin-secret")))
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    /// With no token configured every call is admitted.
    #[test]
    fn no_token_admits_everyone() {
        let a = Authenticator::default();
        assert!(a.is_open());
        assert!(a.check(Role::Admin, &metadata(None)).is_ok());
    }

    /// Tokens never print, and empty ones are refused.
    #[test]
    fn token_hygiene() {
        assert_eq!(format!("{:?}", Token::new("s3cret").unwrap()), "Token(***)");
        assert!(Token::new("  \n").is_err());
        assert!(Token::new("two words").is_err());
    }
}
