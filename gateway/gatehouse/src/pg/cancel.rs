//! Cancellation keys. Each client session gets a key minted by Gatehouse; the registry maps it
//! to the upstream session's own key and address, so a CancelRequest sent to Gatehouse cancels
//! the right upstream query. The upstream key never reaches the client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_pgwire::CancelKey;
use rand::Rng as _;

use crate::config::ConnectionConfig;

/// Where to send a cancel for one session.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub upstream_key: CancelKey,
    pub connection: Arc<ConnectionConfig>,
    pub session_id: String,
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    inner: Mutex<HashMap<i32, (i32, CancelTarget)>>,
}

impl CancelRegistry {
    /// Registers a session and returns the key to give its client. The returned guard
    /// removes the entry when the session ends.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> (CancelKey, CancelGuard) {
        let mut rng = rand::thread_rng();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let process_id = loop {
            let pid = rng.gen_range(1..i32::MAX);
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        let secret: i32 = rng.gen();
        map.insert(process_id, (secret, target));
        (
            CancelKey { process_id, secret },
            CancelGuard {
                registry: self.clone(),
                process_id,
            },
        )
    }

    /// The target for a client's key, if the key is current.
    pub fn lookup(&self, key: CancelKey) -> Option<CancelTarget> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (secret, target) = map.get(&key.process_id)?;
        // A single machine-word comparison: no early exit to time.
        (*secret ^ key.secret == 0).then(|| target.clone())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[derive(Debug)]
pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    process_id: i32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.process_id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conn() -> Arc<ConnectionConfig> {
        let c: crate::config::ConnectionConfig =
            toml::from_str("name = \"a\"\nkind = \"postgres\"\nhost = \"h\"\ndatabase = \"d\"")
                .unwrap();
        Arc::new(c)
    }

    #[test]
    fn lookup_needs_the_secret_and_guard_removes() {
        let reg = Arc::new(CancelRegistry::default());
        let up = CancelKey {
            process_id: 10,
            secret: 20,
        };
        let (key, guard) = reg.register(CancelTarget {
            upstream_key: up,
            connection: conn(),
            session_id: "s".into(),
        });
        assert_eq!(reg.lookup(key).unwrap().upstream_key, up);
        let wrong = CancelKey {
            process_id: key.process_id,
            secret: key.secret.wrapping_add(1),
        };
        assert!(reg.lookup(wrong).is_none());
        drop(guard);
        assert!(reg.lookup(key).is_none());
        assert_eq!(reg.len(), 0);
    }
}
