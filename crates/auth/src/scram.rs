//! SCRAM (RFC 5802, RFC 7677): the stored credential and the server's side of one exchange.
//!
//! The store keeps only what RFC 5802 lets a server keep: the salt, the iteration count, the
//! stored key H(ClientKey) and the server key. A stolen store gives no password and cannot log
//! in (the client proof needs ClientKey, which H does not give back).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Kafka's bounds for a SCRAM credential's iterations (AlterUserScramCredentials refuses others).
pub const ITERATIONS_MIN: u32 = 4096;
pub const ITERATIONS_MAX: u32 = 16384;
/// Iterations of credentials made here from a password.
pub const ITERATIONS_DEFAULT: u32 = 4096;

/// A SCRAM hash function, by its SASL mechanism name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's code for the mechanism in Describe/AlterUserScramCredentials.
    pub fn kafka_code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_code(code: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|m| m.kafka_code() == code)
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                // HMAC takes a key of any length: new_from_slice cannot fail.
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// Hi(password, salt, i) of RFC 5802: PBKDF2 with this HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut out = vec![0; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out
            }
            ScramMechanism::Sha512 => {
                let mut out = vec![0; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// What the server keeps of one user's password for one mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub mechanism: ScramMechanism,
    #[serde(with = "base64_bytes")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "base64_bytes")]
    pub stored_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// A credential for `password` with a fresh random salt.
    pub fn from_password(mechanism: ScramMechanism, password: &str, iterations: u32) -> Self {
        let mut salt = vec![0; 32];
        rand::thread_rng().fill_bytes(&mut salt);
        let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
        ScramCredential::from_salted_password(mechanism, salt, &salted, iterations)
    }

    /// A credential from a client-computed salted password (Kafka's AlterUserScramCredentials
    /// sends the salt and Hi(password, salt, i), never the password).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salt: Vec<u8>,
        salted_password: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        ScramCredential {
            mechanism,
            salt,
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
        }
    }

    /// Whether `password` is the one this credential was made from (for SASL PLAIN and AMQP
    /// PLAIN, which send the password itself). Constant time in the comparison.
    pub fn verify_password(&self, password: &str) -> bool {
        let salted =
            self.mechanism
                .salted_password(password.as_bytes(), &self.salt, self.iterations);
        let client_key = self.mechanism.hmac(&salted, b"Client Key");
        let stored_key = self.mechanism.hash(&client_key);
        bool::from(stored_key.ct_eq(&self.stored_key))
    }
}

mod base64_bytes {
    use super::BASE64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Why an exchange failed. The texts go to the log only: the client is told just that it
/// failed, whatever the reason, so it cannot learn whether a user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("the final message's nonce is not the server's")]
    NonceMismatch,
    #[error("invalid client proof")]
    InvalidProof,
    #[error("the message arrived after the exchange ended")]
    OutOfOrder,
    #[error("authorization id '{0}' is not the user name")]
    AuthorizationId(String),
}

/// The server's side of one SCRAM exchange: client-first in, server-first out; client-final in,
/// server-final out and the user authenticated.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: ScramMechanism,
    state: ExchangeState,
}

#[derive(Debug)]
enum ExchangeState {
    Initial,
    SentFirst {
        user: String,
        /// None for an unknown user: the exchange goes on with made-up values and fails at
        /// the proof, as a wrong password would.
        credential: Option<ScramCredential>,
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Done,
}

/// A step's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramStep {
    /// Send this and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated as this user; send this (server-final) to the client.
    Authenticated { user: String, server_final: Vec<u8> },
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism) -> Self {
        ScramServer {
            mechanism,
            state: ExchangeState::Initial,
        }
    }

    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// Takes the client's next message. `lookup` gives a user's credential for this mechanism;
    /// `decoy_salt` a salt to show for a user that does not exist (stable per user, so two
    /// tries do not differ).
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        decoy_salt: impl FnOnce(&str) -> Vec<u8>,
    ) -> Result<ScramStep, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        match std::mem::replace(&mut self.state, ExchangeState::Done) {
            ExchangeState::Initial => self.client_first(text, lookup, decoy_salt),
            ExchangeState::SentFirst {
                user,
                credential,
                nonce,
                client_first_bare,
                server_first,
            } => {
                let final_message = ClientFinal::parse(text)?;
                if final_message.nonce != nonce {
                    return Err(ScramError::NonceMismatch);
                }
                // "biws" is base64("n,,"): no channel binding and no authorization id. Kafka's
                // clients send exactly this; "y,," is accepted as RFC 5802 allows.
                let binding = BASE64
                    .decode(final_message.channel_binding)
                    .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
                if !binding.starts_with(b"n,") && !binding.starts_with(b"y,") {
                    return Err(ScramError::ChannelBinding);
                }
                let credential = credential.ok_or(ScramError::InvalidProof)?;
                let auth_message = format!(
                    "{client_first_bare},{server_first},{}",
                    final_message.without_proof
                );
                let proof = BASE64
                    .decode(final_message.proof)
                    .map_err(|_| ScramError::Malformed("proof is not base64"))?;
                let signature = self
                    .mechanism
                    .hmac(&credential.stored_key, auth_message.as_bytes());
                if proof.len() != signature.len() {
                    return Err(ScramError::InvalidProof);
                }
                let client_key: Vec<u8> =
                    proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
                let stored_key = self.mechanism.hash(&client_key);
                if !bool::from(stored_key.ct_eq(&credential.stored_key)) {
                    return Err(ScramError::InvalidProof);
                }
                let server_signature = self
                    .mechanism
                    .hmac(&credential.server_key, auth_message.as_bytes());
                Ok(ScramStep::Authenticated {
                    user,
                    server_final: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
                })
            }
            ExchangeState::Done => Err(ScramError::OutOfOrder),
        }
    }

    fn client_first(
        &mut self,
        text: &str,
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        decoy_salt: impl FnOnce(&str) -> Vec<u8>,
    ) -> Result<ScramStep, ScramError> {
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        let mut user = None;
        let mut client_nonce = None;
        for (index, attribute) in bare.split(',').enumerate() {
            let (key, value) = attribute
                .split_once('=')
                .ok_or(ScramError::Malformed("attribute without '='"))?;
            match (index, key) {
                (0, "m") => return Err(ScramError::Malformed("mandatory extension")),
                (0, "n") => user = Some(decode_sasl_name(value)?),
                (1, "r") => client_nonce = Some(value),
                (0 | 1, _) => return Err(ScramError::Malformed("expected n= then r=")),
                // Extensions (Kafka's tokenauth among them) are ignored: delegation tokens are
                // not supported, so a token is just an unknown user.
                _ => {}
            }
        }
        let user = user.ok_or(ScramError::Malformed("no user name"))?;
        let client_nonce = client_nonce.ok_or(ScramError::Malformed("no nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ScramError::Malformed("bad nonce"));
        }
        if !authzid.is_empty() {
            let authzid = authzid
                .strip_prefix("a=")
                .ok_or(ScramError::Malformed("bad authorization id"))
                .and_then(decode_sasl_name)?;
            if authzid != user {
                return Err(ScramError::AuthorizationId(authzid));
            }
        }
        let credential = lookup(&user);
        let (salt, iterations) = match &credential {
            Some(credential) => (credential.salt.clone(), credential.iterations),
            None => (decoy_salt(&user), ITERATIONS_DEFAULT),
        };
        let mut server_nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", BASE64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(salt));
        let reply = server_first.clone().into_bytes();
        self.state = ExchangeState::SentFirst {
            user,
            credential,
            nonce,
            client_first_bare: bare.to_string(),
            server_first,
        };
        Ok(ScramStep::Continue(reply))
    }
}

/// client-final-message: c=..,r=..[,extensions],p=..
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: &'a str,
    without_proof: &'a str,
}

impl<'a> ClientFinal<'a> {
    fn parse(text: &'a str) -> Result<Self, ScramError> {
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let channel_binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        Ok(ClientFinal {
            channel_binding,
            nonce,
            proof,
            without_proof,
        })
    }
}

/// saslname of RFC 5802: "=2C" is ',' and "=3D" is '='; any other '=' is an error.
fn decode_sasl_name(value: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in a name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty name"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's side, as RFC 5802 computes it, for the tests.
    fn client_final(
        mechanism: ScramMechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        let mut salt = None;
        let mut iterations = None;
        let mut nonce = None;
        for attribute in server_first.split(',') {
            let (key, value) = attribute.split_once('=').unwrap();
            match key {
                "r" => nonce = Some(value.to_string()),
                "s" => salt = Some(BASE64.decode(value).unwrap()),
                "i" => iterations = Some(value.parse().unwrap()),
                _ => {}
            }
        }
        let salted =
            mechanism.salted_password(password.as_bytes(), &salt.unwrap(), iterations.unwrap());
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let stored_key = mechanism.hash(&client_key);
        let without_proof = format!("c=biws,r={}", nonce.unwrap());
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = mechanism.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = mechanism.hmac(&salted, b"Server Key");
        let expected_server = mechanism.hmac(&server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", BASE64.encode(proof)),
            format!("v={}", BASE64.encode(expected_server)).into_bytes(),
        )
    }

    fn run(
        mechanism: ScramMechanism,
        stored: Option<&ScramCredential>,
        user: &str,
        password: &str,
    ) -> Result<ScramStep, ScramError> {
        let mut server = ScramServer::new(mechanism);
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let first = server.step(
            format!("n,,{bare}").as_bytes(),
            |_| stored.cloned(),
            |_| vec![7; 16],
        )?;
        let ScramStep::Continue(server_first) = first else {
            panic!("expected server-first");
        };
        let server_first = String::from_utf8(server_first).unwrap();
        let (final_message, expected) = client_final(mechanism, password, &bare, &server_first);
        let outcome = server.step(final_message.as_bytes(), |_| None, |_| vec![])?;
        if let ScramStep::Authenticated { server_final, .. } = &outcome {
            assert_eq!(server_final, &expected, "the client verifies the server");
        }
        Ok(outcome)
    }

    #[test]
    fn the_right_password_authenticates_with_both_hashes() {
        for mechanism in ScramMechanism::ALL {
            let credential = ScramCredential::from_password(mechanism, "pencil", 4096);
            let outcome = run(mechanism, Some(&credential), "user", "pencil").unwrap();
            assert!(matches!(outcome, ScramStep::Authenticated { user, .. } if user == "user"));
        }
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_fail_alike() {
        let credential = ScramCredential::from_password(ScramMechanism::Sha256, "pencil", 4096);
        assert_eq!(
            run(ScramMechanism::Sha256, Some(&credential), "user", "pen"),
            Err(ScramError::InvalidProof)
        );
        assert_eq!(
            run(ScramMechanism::Sha256, None, "nobody", "pencil"),
            Err(ScramError::InvalidProof)
        );
    }

    #[test]
    fn rfc_7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil", the given salt and nonces.
        let mechanism = ScramMechanism::Sha256;
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = mechanism.salted_password(b"pencil", &salt, 4096);
        let credential = ScramCredential::from_salted_password(mechanism, salt, &salted, 4096);
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (final_message, server_final) = client_final(mechanism, "pencil", bare, server_first);
        assert_eq!(
            final_message,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
        assert!(credential.verify_password("pencil"));
        assert!(!credential.verify_password("pencil2"));
    }

    #[test]
    fn malformed_messages_are_refused() {
        for message in [
            &b"x,,n=user,r=abc"[..],
            b"n,,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=user",
            b"p=tls-unique,,n=user,r=abc",
            b"n,a=other,n=user,r=abc",
            b"\xff\xfe",
            b"",
        ] {
            let mut server = ScramServer::new(ScramMechanism::Sha512);
            assert!(
                server.step(message, |_| None, |_| vec![1]).is_err(),
                "{message:?} must be refused"
            );
        }
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        server
            .step(b"n,,n=user,r=abc", |_| None, |_| vec![1])
            .unwrap();
        assert_eq!(
            server.step(b"c=biws,r=other,p=AAAA", |_| None, |_| vec![1]),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            server.step(b"anything", |_| None, |_| vec![1]),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn names_are_unescaped() {
        assert_eq!(decode_sasl_name("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(decode_sasl_name("a=4").is_err());
    }
}
