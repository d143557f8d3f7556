//! etcd as the fleet's policy store: a small v3 client on the project's tonic
//! stack ([`client`]), the store that keeps a replica's copy of the policies
//! current through a watch ([`store`]), and rollouts driven by one elected
//! replica and judged on the whole fleet's counters ([`rollouts`]).

pub mod client;
pub mod rollouts;
pub mod store;

pub use client::EtcdConfig;
pub use rollouts::FleetRollouts;
pub use store::{EtcdStore, Settings};
