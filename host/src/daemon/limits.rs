//! Bounds on the work one tenant can put on the daemon: a few policy uploads or dry runs
//! in progress per tenant (more are answered 429 at once, before their body is read), and
//! one small pool of threads that compiles and runs them for all tenants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counts what each tenant has in progress, up to a limit.
pub struct TenantSlots {
    per_tenant: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One tenant's unit of work in progress; dropping it frees the slot.
pub struct Slot {
    slots: Arc<TenantSlots>,
    tenant: String,
}

impl TenantSlots {
    pub fn new(per_tenant: usize) -> Arc<TenantSlots> {
        Arc::new(TenantSlots {
            per_tenant: per_tenant.max(1),
            held: Mutex::default(),
        })
    }

    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    /// A slot for `tenant`, or None when it has all of its slots in use.
    pub fn try_take(self: &Arc<Self>, tenant: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(tenant.to_string()).or_insert(0);
        if *n >= self.per_tenant {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TenantSlots;

    #[test]
    fn a_tenant_gets_its_slots_and_no_more_others_are_not_affected() {
        let s = TenantSlots::new(2);
        let a1 = s.try_take("a").unwrap();
        let _a2 = s.try_take("a").unwrap();
        assert!(s.try_take("a").is_none());
        assert!(s.try_take("b").is_some());
        drop(a1);
        assert!(s.try_take("a").is_some());
    }
}
