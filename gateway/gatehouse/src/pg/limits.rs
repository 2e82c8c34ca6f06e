//! Session limits (`[limits]`): slots per listener, taken at accept, and logged-in sessions
//! per user, taken after authentication. A slot is a guard: dropping it (the session task
//! ending, however it ends) gives it back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections over a listener's session limit that are being answered (negotiated as usual,
/// then told 53300 and closed) at the same time. When all are busy the listener stops
/// accepting until one is free: further connections wait in the kernel's accept queue, so a
/// flood costs at most this many short-lived tasks.
pub const REFUSAL_SLOTS: usize = 256;

/// How long an over-limit connection may take to reach its StartupMessage (or cancel
/// request) before it is closed without an answer.
pub const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The connection slots of one PostgreSQL listener.
#[derive(Debug)]
pub struct ListenerSlots {
    limit: u32,
    sessions: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
}

/// What to do with a connection just accepted.
#[derive(Debug)]
pub enum Admission {
    /// Within the limit: run the session, holding the slot until it ends.
    Session(OwnedSemaphorePermit),
    /// Over the limit: negotiate, answer 53300, close (holding a refusal slot).
    Refuse(OwnedSemaphorePermit),
}

impl ListenerSlots {
    pub fn new(limit: u32) -> ListenerSlots {
        ListenerSlots {
            limit,
            sessions: Arc::new(Semaphore::new(limit as usize)),
            refusals: Arc::new(Semaphore::new(REFUSAL_SLOTS)),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes a slot for a connection just accepted: a session slot if one is free, else a
    /// refusal slot; with neither free, waits for the first of either.
    pub async fn admit(&self) -> Admission {
        if let Ok(p) = self.sessions.clone().try_acquire_owned() {
            return Admission::Session(p);
        }
        if let Ok(p) = self.refusals.clone().try_acquire_owned() {
            return Admission::Refuse(p);
        }
        loop {
            // The semaphores are never closed, so neither arm fails; if one did, the other
            // is still waited for.
            tokio::select! {
                biased;
                Ok(p) = self.sessions.clone().acquire_owned() => return Admission::Session(p),
                Ok(p) = self.refusals.clone().acquire_owned() => return Admission::Refuse(p),
                else => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Connections holding a slot (sessions and refusals in progress).
    pub fn in_use(&self) -> usize {
        (self.limit as usize - self.sessions.available_permits())
            + (REFUSAL_SLOTS - self.refusals.available_permits())
    }

    /// Waits until every session and refusal of this listener has ended.
    pub async fn drained(&self) {
        // Taking every permit succeeds only once all are back; they are given back at once.
        let _s = self.sessions.acquire_many(self.limit).await;
        let _r = self.refusals.acquire_many(REFUSAL_SLOTS as u32).await;
    }
}

/// A user as counted by `sessions_per_user`: the token's issuer and user name.
type Principal = (String, String);

/// Logged-in PostgreSQL sessions per user, across all listeners (and, with another instance,
/// statements held for approval per user).
#[derive(Debug, Default)]
pub struct UserSessions {
    counts: Arc<Mutex<HashMap<Principal, u32>>>,
}

/// One logged-in session (or held statement) of a user; counted until dropped.
#[derive(Debug)]
pub struct UserSlot {
    counts: Arc<Mutex<HashMap<Principal, u32>>>,
    key: Principal,
}

impl UserSessions {
    /// Counts a session of (`issuer`, `user`), unless that user already has `limit`.
    pub fn try_acquire(&self, issuer: &str, user: &str, limit: u32) -> Option<UserSlot> {
        let key = (issuer.to_owned(), user.to_owned());
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(UserSlot {
            counts: Arc::clone(&self.counts),
            key,
        })
    }

    /// Sessions `user` of `issuer` has now.
    #[cfg(test)]
    pub fn count(&self, issuer: &str, user: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .get(&(issuer.to_owned(), user.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn listener_slots_admit_up_to_the_limit_then_refuse_then_wait() {
        let slots = Arc::new(ListenerSlots::new(2));
        let a = slots.admit().await;
        let b = slots.admit().await;
        assert!(matches!(a, Admission::Session(_)));
        assert!(matches!(b, Admission::Session(_)));
        let mut refusals = Vec::new();
        for _ in 0..REFUSAL_SLOTS {
            let r = slots.admit().await;
            assert!(matches!(r, Admission::Refuse(_)));
            refusals.push(r);
        }
        assert_eq!(slots.in_use(), 2 + REFUSAL_SLOTS);
        // Everything busy: the next admission waits, and a freed session slot wins.
        let s2 = Arc::clone(&slots);
        let waiting = tokio::spawn(async move { s2.admit().await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let c = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(c, Admission::Session(_)));
        // Then a freed refusal slot.
        let s3 = Arc::clone(&slots);
        let waiting = tokio::spawn(async move { s3.admit().await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        refusals.pop();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(r, Admission::Refuse(_)));
    }

    #[tokio::test]
    async fn drained_waits_for_every_slot() {
        let slots = Arc::new(ListenerSlots::new(3));
        let held = slots.admit().await;
        let s2 = Arc::clone(&slots);
        let waiter = tokio::spawn(async move { s2.drained().await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn user_slots_count_per_issuer_and_name() {
        let users = UserSessions::default();
        let a1 = users.try_acquire("iss", "alice", 2).unwrap();
        let a2 = users.try_acquire("iss", "alice", 2).unwrap();
        assert!(users.try_acquire("iss", "alice", 2).is_none());
        // Another user, or the same name at another issuer, is someone else.
        let _b = users.try_acquire("iss", "bob", 2).unwrap();
        let _other = users.try_acquire("other-iss", "alice", 2).unwrap();
        assert_eq!(users.count("iss", "alice"), 2);
        drop(a1);
        let _a3 = users.try_acquire("iss", "alice", 2).unwrap();
        drop(a2);
        assert_eq!(users.count("iss", "alice"), 1);
        assert!(users.try_acquire("iss", "carol", 0).is_none());
        assert_eq!(users.counts.lock().unwrap().len(), 3);
    }
}
