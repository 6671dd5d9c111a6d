//! Bootstrap tokens: `<id>.<secret>`, 6 and 16 characters of `[a-z0-9]`,
//! shaped like Kubernetes' bootstrap tokens. The id is public (it names the
//! Secret aranya keeps the token in); the secret never crosses the wire: the
//! device proves it holds it with an HMAC over aranya's challenge.

use std::fmt;

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `<6 chars>.<16 chars>` of `[a-z0-9]`; the text is not repeated,
    /// since it may be a secret.
    #[error("not a bootstrap token: expected <id>.<secret>, 6 and 16 characters of a-z and 0-9")]
    Malformed,
}

/// A bootstrap token. Its `Debug` shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl BootstrapToken {
    pub fn generate() -> Self {
        let pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
                .collect()
        };
        Self {
            id: pick(ID_LEN),
            secret: pick(SECRET_LEN),
        }
    }

    /// Parses `<id>.<secret>`, surrounding whitespace ignored (a file's newline).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let (id, secret) = text.trim().split_once('.').ok_or(TokenError::Malformed)?;
        let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
        if !ok(id, ID_LEN) || !ok(secret, SECRET_LEN) {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret half, for the MAC and for storing the token; never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// `<id>.<secret>`, for the file a device reads it from; never log it.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// Whether `id` could name a token (so a Secret name built from it is safe).
    pub fn is_id(id: &str) -> bool {
        id.len() == ID_LEN && id.bytes().all(|b| ALPHABET.contains(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back() {
        let token = BootstrapToken::generate();
        let parsed = BootstrapToken::parse(&format!("{}\n", token.expose())).expect("parses");
        assert_eq!(parsed, token);
        assert!(BootstrapToken::is_id(token.id()));
        assert_ne!(BootstrapToken::generate(), token);
    }

    #[test]
    fn malformed_tokens_are_refused_without_echo() {
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "abcde.0123456789abcdef",
            "abcdef.0123456789ABCDEF",
            "abcdef.0123456789abcdef0",
            "abc_ef.0123456789abcdef",
        ] {
            let e = BootstrapToken::parse(bad).expect_err(bad);
            assert!(!e.to_string().contains("0123456789"), "{e}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").expect("token");
        let shown = format!("{token:?}");
        assert!(shown.contains("abcdef"));
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
