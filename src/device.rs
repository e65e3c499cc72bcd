//! Pure device types: a device's ID and health, and the difference between
//! two device lists. No I/O and no gRPC here.

use std::fmt;

/// A device's health as the kubelet reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Usable: counted in the node's allocatable.
    Healthy,
    /// Present but not usable: counted in capacity only.
    Unhealthy,
}

impl Health {
    /// The exact string of the wire: the kubelet treats anything but
    /// "Healthy" as unhealthy, so case matters.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Unhealthy => "Unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device of a plugin, with its health and, when unhealthy, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The stable device ID sent to the kubelet, e.g. `crand1`.
    pub id: String,
    /// The current health.
    pub health: Health,
    /// Why the device is unhealthy; empty when healthy.
    pub reason: String,
}

impl Device {
    /// A healthy device.
    pub fn healthy(id: impl Into<String>) -> Self {
        Device {
            id: id.into(),
            health: Health::Healthy,
            reason: String::new(),
        }
    }

    /// An unhealthy device and the reason.
    pub fn unhealthy(id: impl Into<String>, reason: impl Into<String>) -> Self {
        Device {
            id: id.into(),
            health: Health::Unhealthy,
            reason: reason.into(),
        }
    }
}

/// The devices of `new` whose health or reason differs from `old`, in the
/// order of `new`. Devices are matched by ID; a device absent from `old`
/// counts as changed.
pub fn changed<'a>(old: &[Device], new: &'a [Device]) -> Vec<&'a Device> {
    new.iter()
        .enumerate()
        .filter(|(i, d)| {
            // Lists keep their order, so try the same index first.
            let before = old
                .get(*i)
                .filter(|o| o.id == d.id)
                .or_else(|| old.iter().find(|o| o.id == d.id));
            before != Some(*d)
        })
        .map(|(_, d)| d)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_health_strings_are_exact() {
        assert_eq!(Health::Healthy.as_str(), "Healthy");
        assert_eq!(Health::Unhealthy.as_str(), "Unhealthy");
    }

    #[test]
    fn test_changed_reports_only_differences() {
        let old = vec![Device::healthy("a"), Device::healthy("b")];
        let new = vec![Device::healthy("a"), Device::unhealthy("b", "missing")];
        let diff = changed(&old, &new);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].id, "b");
        assert!(changed(&new, &new).is_empty());
        assert_eq!(changed(&[], &new).len(), 2);
    }
}
