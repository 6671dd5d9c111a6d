//! The cluster network as the device sees it: the Services it may reach,
//! as aranya last sent them ([`catalogue`]). What serves them on the device
//! (DNS, interception, the relay to aranya) builds on this.

pub mod catalogue;

pub use catalogue::Catalogue;
