//! Bearer tokens: who is calling, and which accounts they may see.
//!
//! A token is scoped to one account or, without an account, to all of them (an operator).
//! Tokens are compared in constant time: the table keeps the SHA-256 digest of each token, the
//! presented token is hashed the same way, and every digest is compared with `subtle` without
//! stopping at a match — so neither the position of a match, nor how many leading bytes of a
//! guess are right, nor the length of the real tokens shows in the response time.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::{RateLimitConfig, TokenConfig};
use crate::error::ApiError;
use crate::limits::TokenRates;

/// What a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every account.
    Operator,
    /// This account only.
    Account(String),
}

/// The authenticated caller of a request (an extractor: a handler that takes it answers 401
/// to requests without a valid token before it runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    scope: Scope,
}

impl Caller {
    /// A caller with this scope.
    pub fn new(scope: Scope) -> Self {
        Self { scope }
    }

    /// The caller's scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Whether the caller may see (and act on) what belongs to `account_id`.
    pub fn sees(&self, account_id: &str) -> bool {
        match &self.scope {
            Scope::Operator => true,
            Scope::Account(own) => own == account_id,
        }
    }

    /// The account a listing covers: an account token's own account, whatever was asked; an
    /// operator's `?account_id=` if given, else every account (`None`). An account token asking
    /// for another account gets its own account's listing narrowed by that filter — nothing —
    /// rather than an error that would confirm the other account exists.
    pub fn list_account(&self, requested: Option<&str>) -> ListAccount {
        match (&self.scope, requested) {
            (Scope::Operator, None) => ListAccount::All,
            (Scope::Operator, Some(requested)) => ListAccount::One(requested.to_owned()),
            (Scope::Account(own), None) => ListAccount::One(own.clone()),
            (Scope::Account(own), Some(requested)) if requested == own => {
                ListAccount::One(own.clone())
            }
            (Scope::Account(_), Some(_)) => ListAccount::Nothing,
        }
    }
}

/// Which accounts a listing covers; see [`Caller::list_account`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListAccount {
    /// Every account (operators only).
    All,
    /// One account.
    One(String),
    /// No account: the listing is empty.
    Nothing,
}

/// The configured tokens, by digest, and each one's request-rate budget.
pub struct TokenTable {
    entries: Vec<([u8; 32], Scope)>,
    /// Keyed by position in `entries`: a token's budget is found without keeping the token.
    rates: TokenRates,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable")
            .field("tokens", &self.entries.len())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TokenTable {
    /// The table of these tokens (already validated: non-empty, unique), each with the
    /// request rate of `rate_limit`.
    pub fn new(tokens: &[TokenConfig], rate_limit: &RateLimitConfig) -> Self {
        let entries = tokens
            .iter()
            .map(|token| {
                let scope = match &token.account_id {
                    Some(account_id) => Scope::Account(account_id.clone()),
                    None => Scope::Operator,
                };
                (digest(token.token.as_bytes()), scope)
            })
            .collect();
        Self {
            entries,
            rates: TokenRates::new(tokens.len(), rate_limit),
        }
    }

    /// The caller a token stands for, if it is one of ours.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let index = self.position(presented)?;
        let (_, scope) = self.entries.get(index)?;
        Some(Caller::new(scope.clone()))
    }

    /// Where a token is in the table, if it is one of ours.
    fn position(&self, presented: &str) -> Option<usize> {
        let presented = digest(presented.as_bytes());
        let mut found = subtle::Choice::from(0);
        let mut index = 0_u32;
        for (position, (known, _)) in self.entries.iter().enumerate() {
            let matches = known.ct_eq(&presented);
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            index.conditional_assign(&position, matches);
            found |= matches;
        }
        if bool::from(found) {
            usize::try_from(index).ok()
        } else {
            None
        }
    }

    /// The caller named by an `Authorization: Bearer <token>` header value, once the token's
    /// request rate allows one more request (429 `rate_limited` otherwise).
    pub fn authenticate_header(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::unauthorized("send `Authorization: Bearer <token>` with every request")
        })?;
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let index = self
            .position(token)
            .ok_or_else(|| ApiError::unauthorized("the bearer token is not valid"))?;
        let (_, scope) = self
            .entries
            .get(index)
            .ok_or_else(|| ApiError::unauthorized("the bearer token is not valid"))?;
        let who = match scope {
            Scope::Operator => "operator",
            Scope::Account(account_id) => account_id.as_str(),
        };
        self.rates.check(index, who)?;
        Ok(Caller::new(scope.clone()))
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<TokenTable>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tokens = Arc::<TokenTable>::from_ref(state);
        let header = match parts.headers.get(AUTHORIZATION) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::unauthorized("the Authorization header is not visible ASCII")
            })?),
        };
        tokens.authenticate_header(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TokenTable {
        table_with_rate(&RateLimitConfig::default())
    }

    fn table_with_rate(rate_limit: &RateLimitConfig) -> TokenTable {
        TokenTable::new(
            &[
                TokenConfig {
                    token: "acct-a-token".into(),
                    account_id: Some("acc_a".into()),
                },
                TokenConfig {
                    token: "acct-b-token".into(),
                    account_id: Some("acc_b".into()),
                },
                TokenConfig {
                    token: "ops-token".into(),
                    account_id: None,
                },
            ],
            rate_limit,
        )
    }

    #[test]
    fn each_token_maps_to_its_scope() {
        let table = table();
        assert_eq!(
            table
                .authenticate("acct-a-token")
                .map(|c| c.scope().clone()),
            Some(Scope::Account("acc_a".into()))
        );
        assert_eq!(
            table
                .authenticate("acct-b-token")
                .map(|c| c.scope().clone()),
            Some(Scope::Account("acc_b".into()))
        );
        assert_eq!(
            table.authenticate("ops-token").map(|c| c.scope().clone()),
            Some(Scope::Operator)
        );
    }

    #[test]
    fn near_misses_are_refused() {
        let table = table();
        for guess in [
            "",
            "ops",
            "ops-token ",
            "OPS-TOKEN",
            "ops-tokenx",
            "acct-a-toke",
        ] {
            assert_eq!(table.authenticate(guess), None, "{guess:?}");
        }
        assert_eq!(
            TokenTable::new(&[], &RateLimitConfig::default()).authenticate("anything"),
            None
        );
    }

    #[test]
    fn the_header_must_be_a_bearer_token() {
        let table = table();
        let unauthorized = |header: Option<&str>| {
            let error = table.authenticate_header(header).expect_err("refused");
            assert_eq!(error.status(), axum::http::StatusCode::UNAUTHORIZED);
            assert_eq!(error.code(), "unauthorized");
            error.message().to_owned()
        };
        assert!(unauthorized(None).contains("Bearer"));
        assert!(unauthorized(Some("Basic b3BzOnRva2Vu")).contains("Bearer <token>"));
        assert!(unauthorized(Some("ops-token")).contains("Bearer <token>"));
        assert!(unauthorized(Some("Bearer wrong")).contains("not valid"));
        for accepted in ["Bearer ops-token", "bearer ops-token", "BEARER  ops-token "] {
            assert_eq!(
                table
                    .authenticate_header(Some(accepted))
                    .ok()
                    .map(|c| c.scope().clone()),
                Some(Scope::Operator),
                "{accepted:?}"
            );
        }
    }

    #[test]
    fn each_token_spends_its_own_request_budget() {
        let table = table_with_rate(&RateLimitConfig {
            requests_per_second_per_token: 1,
            burst_requests: 1,
        });
        assert!(
            table
                .authenticate_header(Some("Bearer acct-a-token"))
                .is_ok()
        );
        let refused = table
            .authenticate_header(Some("Bearer acct-a-token"))
            .expect_err("past the budget");
        assert_eq!(refused.code(), "rate_limited");
        assert!(
            !refused.message().contains("acct-a-token"),
            "never repeat a token: {refused}"
        );
        assert!(
            table
                .authenticate_header(Some("Bearer acct-b-token"))
                .is_ok()
        );
        // An invalid token is refused as such, not counted against anyone.
        assert_eq!(
            table
                .authenticate_header(Some("Bearer wrong"))
                .expect_err("invalid")
                .code(),
            "unauthorized"
        );
    }

    #[test]
    fn accounts_see_their_own_and_operators_everything() {
        let account = Caller::new(Scope::Account("acc_a".into()));
        let operator = Caller::new(Scope::Operator);
        assert!(account.sees("acc_a"));
        assert!(!account.sees("acc_b"));
        assert!(operator.sees("acc_a") && operator.sees("acc_b"));
    }

    #[test]
    fn listings_are_bounded_by_the_scope() {
        let account = Caller::new(Scope::Account("acc_a".into()));
        let operator = Caller::new(Scope::Operator);
        assert_eq!(account.list_account(None), ListAccount::One("acc_a".into()));
        assert_eq!(
            account.list_account(Some("acc_a")),
            ListAccount::One("acc_a".into())
        );
        assert_eq!(account.list_account(Some("acc_b")), ListAccount::Nothing);
        assert_eq!(operator.list_account(None), ListAccount::All);
        assert_eq!(
            operator.list_account(Some("acc_b")),
            ListAccount::One("acc_b".into())
        );
    }
}
