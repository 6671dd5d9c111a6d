//! The cluster network as the device sees it: the Services it may reach,
//! as aranya last sent them ([`catalogue`]), their names ([`names`]) served
//! by arhat's DNS server ([`dns`]). Interception and the relay to aranya
//! build on these.

pub mod catalogue;
pub mod dns;
pub mod names;

pub use catalogue::Catalogue;
