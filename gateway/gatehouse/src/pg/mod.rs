//! The PostgreSQL side of the gateway: client handshake and identity, upstream login with the
//! vaulted credential, and the audited relay. Phases, in order, for every session:
//! `negotiate` (TLS, startup packet) → `authenticate` (OIDC token as password) →
//! `authorize` (connection lookup) → `connect_upstream` (vaulted login) → `relay`
//! (each statement audited before it is forwarded) → `finish` (session record).

pub mod cancel;
pub mod catalog;
pub mod error;
pub mod limits;
pub mod relay;
pub mod session;
pub mod upstream;
