//! Device identity as aranya and arhat both see it, without I/O.
//!
//! A device proves who it is with a client certificate from aranya's device
//! CA: its CN is the EdgeDevice's name, and one URI SAN
//! (`urn:aranya.arhat.dev:device:<name>:<identity id>`) names the identity id
//! kept in the EdgeDevice's status. Rotating that id (or deleting and
//! recreating the EdgeDevice, which makes a new one) leaves every older
//! certificate naming a dead identity. A device without a certificate
//! bootstraps with a token bound to its EdgeDevice: it generates its key,
//! proves it holds the token, and gets its first certificate.
//!
//! - [`name`]: the names a certificate carries.
//! - [`token`]: bootstrap tokens (`<id>.<secret>`).
//! - [`proof`]: what a device signs (or MACs) in the handshake.
//! - [`key`]: the device's key and its signing requests.
//! - [`cert`]: a device certificate read: name, identity, serial, validity, renewal.
//! - [`trust`]: certificates verified against the device CAs.
//! - [`issue`]: the device CA, signing certificates.

pub mod cert;
pub mod issue;
pub mod key;
pub mod name;
pub mod proof;
pub mod token;
pub mod trust;

use std::time::Duration;

pub use cert::{CertError, DeviceCert};
pub use issue::{DeviceCa, IssueError};
pub use key::{DeviceKey, KeyError};
pub use proof::ProofError;
pub use token::{BootstrapToken, TokenError};
pub use trust::{TrustStore, VerifyError};

/// How far before its issuing a certificate's notBefore lies, so a device
/// whose clock runs a little behind can use it at once.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The signer name of the CertificateSigningRequests aranya files for devices.
pub const SIGNER_NAME: &str = "aranya.arhat.dev/device";
