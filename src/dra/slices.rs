//! The ResourceSlices of the node's pool, as the API wants them: which
//! slices there should be for our devices now (at most [`MAX_DEVICES`]
//! per slice, several slices of one pool above that), in the shape of the
//! API version the server serves, and how to tell whether a slice on the
//! server already says the same. Pure: the `dra-publish` thread does the
//! writing.
//!
//! An unhealthy device must not be handed to a new claim. Where the server
//! has device taints (`resource.k8s.io/v1` with `DRADeviceTaints`, on by
//! default since 1.36) it stays in the slice with a `NoSchedule` taint:
//! claims that hold it keep seeing it, the scheduler skips it, and the
//! taint says why. Elsewhere (v1beta1 on 1.32, v1 without the gate) it is
//! left out of the slice until it recovers.

use serde_json::{Value, json};

use super::names::DraDevice;

/// The most devices a slice may hold (the API's limit).
pub const MAX_DEVICES: usize = 128;
/// The most devices a slice may hold when any device in it has a taint
/// (the API's lower limit for slices with "advanced" features).
pub const MAX_DEVICES_TAINTED: usize = 64;
/// The key of the taint an unhealthy device gets; its value is the reason
/// code (`missing`, `wrong_number`, ...).
pub const UNHEALTHY_TAINT: &str = "unhealthy";

/// The `resource.k8s.io` version the server serves that we speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `resource.k8s.io/v1` (Kubernetes 1.34 and later): device fields
    /// directly under `devices[]`.
    V1,
    /// `resource.k8s.io/v1beta1` (1.32, 1.33): device fields under
    /// `devices[].basic`.
    V1beta1,
}

impl ApiVersion {
    /// The path segment: `v1`, `v1beta1`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1",
            ApiVersion::V1beta1 => "v1beta1",
        }
    }

    /// The newest version of `served` we speak.
    pub fn newest(served: &[String]) -> Option<ApiVersion> {
        if served.iter().any(|v| v == "v1") {
            Some(ApiVersion::V1)
        } else if served.iter().any(|v| v == "v1beta1") {
            Some(ApiVersion::V1beta1)
        } else {
            None
        }
    }
}

/// How the pool is published.
#[derive(Clone, Debug)]
pub struct Pool {
    /// The driver (`--resource-domain`).
    pub driver: String,
    /// The node, which also names the pool.
    pub node: String,
    /// The Node's UID, for the slices' owner reference (the slices go when
    /// the Node goes).
    pub node_uid: String,
    /// The API version's shape.
    pub version: ApiVersion,
    /// Whether unhealthy devices are published tainted (else left out).
    pub taints: bool,
}

impl Pool {
    /// The name of slice `i` of the pool: fixed, so that a restart finds
    /// its own slices again.
    pub fn slice_name(&self, i: usize) -> String {
        format!("{}-{}-{i}", self.node, self.driver)
    }

    /// The API path of the slices, and of slice `name`.
    pub fn path(&self, name: Option<&str>) -> String {
        let base = format!(
            "/apis/resource.k8s.io/{}/resourceslices",
            self.version.as_str()
        );
        match name {
            Some(n) => format!("{base}/{n}"),
            None => base,
        }
    }

    /// The list of our slices: a node may list only with its own node
    /// name as a field selector.
    pub fn list_path(&self) -> String {
        format!(
            "{}?fieldSelector={}",
            self.path(None),
            crate::kube::query_escape(&format!(
                "spec.nodeName={},spec.driver={}",
                self.node, self.driver
            ))
        )
    }

    /// The `devices` of each slice there should be now, in order.
    pub fn desired(&self, devices: &[DraDevice]) -> Vec<Vec<Value>> {
        let shown: Vec<Value> = devices.iter().filter_map(|d| self.device(d)).collect();
        let per_slice = if self.taints {
            MAX_DEVICES_TAINTED
        } else {
            MAX_DEVICES
        };
        let mut slices: Vec<Vec<Value>> = shown.chunks(per_slice).map(<[Value]>::to_vec).collect();
        if slices.is_empty() {
            // An empty pool is still published: "this node has none now".
            slices.push(Vec::new());
        }
        slices
    }

    /// One device in this version's shape; `None` for an unhealthy device
    /// where taints are not used.
    fn device(&self, d: &DraDevice) -> Option<Value> {
        let reason = d.device.health.reason();
        if reason.is_some() && !self.taints {
            return None;
        }
        let mut body = json!({ "attributes": d.attributes() });
        if let Some(why) = reason {
            body["taints"] = json!([{
                "key": format!("{}/{UNHEALTHY_TAINT}", self.driver),
                "value": why.code(),
                "effect": "NoSchedule",
            }]);
        }
        Some(match self.version {
            ApiVersion::V1 => {
                body["name"] = json!(d.name);
                body
            }
            ApiVersion::V1beta1 => json!({ "name": d.name, "basic": body }),
        })
    }

    /// Slice `i` of `count` with `devices`, at pool generation
    /// `generation`, as the body of a create or update.
    pub fn slice(&self, i: usize, count: usize, generation: i64, devices: &[Value]) -> Value {
        json!({
            "apiVersion": format!("resource.k8s.io/{}", self.version.as_str()),
            "kind": "ResourceSlice",
            "metadata": {
                "name": self.slice_name(i),
                "ownerReferences": [{
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": self.node,
                    "uid": self.node_uid,
                    "controller": true,
                }],
            },
            "spec": {
                "driver": self.driver,
                "nodeName": self.node,
                "pool": {
                    "name": self.node,
                    "generation": generation,
                    "resourceSliceCount": count,
                },
                "devices": devices,
            },
        })
    }
}

/// A slice as the server has it, reduced to what we compare.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// Its name.
    pub name: String,
    /// Its resourceVersion, for an update.
    pub resource_version: String,
    /// Its pool generation.
    pub generation: i64,
    /// Its pool's slice count.
    pub count: i64,
    /// Its devices, normalized (see [`normalize`]).
    pub devices: Vec<Value>,
}

impl Published {
    /// The slice the server returned (from a list, a create or an update).
    pub fn from_server(slice: &Value) -> Option<Published> {
        let spec = &slice["spec"];
        Some(Published {
            name: slice["metadata"]["name"].as_str()?.to_string(),
            resource_version: slice["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            generation: spec["pool"]["generation"].as_i64().unwrap_or(0),
            count: spec["pool"]["resourceSliceCount"].as_i64().unwrap_or(0),
            devices: spec["devices"]
                .as_array()
                .map(|ds| ds.iter().map(normalize).collect())
                .unwrap_or_default(),
        })
    }

    /// Whether the server dropped the taints we sent (the gate is off).
    pub fn lost_taints(&self, sent: &[Value]) -> bool {
        let tainted = |ds: &[Value]| {
            ds.iter()
                .filter(|d| !d["taints"].is_null() || !d["basic"]["taints"].is_null())
                .count()
        };
        tainted(sent) > tainted(&self.devices)
    }
}

/// A device with what the server adds removed (a taint's `timeAdded`,
/// null fields), so that the same content compares equal.
pub fn normalize(device: &Value) -> Value {
    let mut d = device.clone();
    if let Some(t) = d.get_mut("taints") {
        strip_time(t);
    }
    if let Some(t) = d.get_mut("basic").and_then(|b| b.get_mut("taints")) {
        strip_time(t);
    }
    drop_nulls(&mut d);
    d
}

fn strip_time(taints: &mut Value) {
    if let Some(list) = taints.as_array_mut() {
        for t in list {
            if let Some(t) = t.as_object_mut() {
                t.remove("timeAdded");
            }
        }
    }
}

fn drop_nulls(v: &mut Value) {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, x| !x.is_null());
        map.values_mut().for_each(drop_nulls);
    } else if let Some(list) = v.as_array_mut() {
        list.iter_mut().for_each(drop_nulls);
    }
}

/// What to write so that the server says `desired`, given what it has.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The pool generation every slice written gets.
    pub generation: i64,
    /// Slices to create: index.
    pub create: Vec<usize>,
    /// Slices to update: index and the resourceVersion it replaces.
    pub update: Vec<(usize, String)>,
    /// Slices of ours to delete: name.
    pub delete: Vec<String>,
}

impl Plan {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// The writes that take the server from `have` to `desired`, with the
/// pool generation rules of the API: every slice of a pool carries the
/// pool's generation and slice count, and consumers use only the slices of
/// the highest generation. A change to one slice that leaves the slice
/// count alone keeps the generation (a consumer sees the old or the new
/// slice, each complete); any other change bumps it and writes every slice,
/// so a consumer never mixes old and new slices. Nothing changed: no write.
pub fn plan(pool: &Pool, desired: &[Vec<Value>], have: &[Published]) -> Plan {
    let count = desired.len() as i64;
    let top = have.iter().map(|p| p.generation).max().unwrap_or(0);
    let names: Vec<String> = (0..desired.len()).map(|i| pool.slice_name(i)).collect();
    let find = |name: &str| have.iter().find(|p| p.name == name);
    let differs: Vec<usize> = (0..desired.len())
        .filter(|&i| {
            let want: Vec<Value> = desired[i].iter().map(normalize).collect();
            find(&names[i])
                .is_none_or(|p| p.devices != want || p.count != count || p.generation != top)
        })
        .collect();
    let delete: Vec<String> = have
        .iter()
        .filter(|p| !names.contains(&p.name))
        .map(|p| p.name.clone())
        .collect();
    let missing = names.iter().any(|n| find(n).is_none());
    let mut plan = Plan {
        generation: top.max(1),
        delete,
        ..Plan::default()
    };
    if differs.is_empty() && plan.delete.is_empty() {
        return plan;
    }
    let rewrite_all = missing || !plan.delete.is_empty() || differs.len() > 1 || top == 0;
    if rewrite_all {
        plan.generation = top + 1;
    }
    let touched: Vec<usize> = if rewrite_all {
        (0..desired.len()).collect()
    } else {
        differs
    };
    for i in touched {
        match find(&names[i]) {
            Some(p) => plan.update.push((i, p.resource_version.clone())),
            None => plan.create.push(i),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::device::{Reason, tests::device};

    fn pool(version: ApiVersion, taints: bool) -> Pool {
        Pool {
            driver: "example.com".into(),
            node: "node1".into(),
            node_uid: "uid-1".into(),
            version,
            taints,
        }
    }

    fn dra(n: usize, unhealthy: &[usize]) -> Vec<DraDevice> {
        (0..n)
            .map(|i| {
                let check = if unhealthy.contains(&i) {
                    Err(Reason::Missing)
                } else {
                    Ok(())
                };
                DraDevice {
                    name: format!("crand{i}"),
                    resource: "example.com/crand".into(),
                    resource_name: "crand".into(),
                    kind: "crand",
                    device: device(&format!("crand{i}"), check),
                }
            })
            .collect()
    }

    /// What the server would return for `plan` applied to `desired`.
    fn apply(
        pool: &Pool,
        desired: &[Vec<Value>],
        have: &[Published],
        plan: &Plan,
    ) -> Vec<Published> {
        let mut now: Vec<Published> = have
            .iter()
            .filter(|p| !plan.delete.contains(&p.name))
            .cloned()
            .collect();
        let written = plan.create.iter().chain(plan.update.iter().map(|(i, _)| i));
        for &i in written {
            let body = pool.slice(i, desired.len(), plan.generation, &desired[i]);
            let mut p = Published::from_server(&body).unwrap();
            p.resource_version = format!("rv{}", plan.generation);
            now.retain(|x| x.name != p.name);
            now.push(p);
        }
        now
    }

    #[test]
    fn test_shapes_of_v1_and_v1beta1() {
        let devices = dra(1, &[]);
        let v1 = pool(ApiVersion::V1, true).desired(&devices);
        assert_eq!(v1[0][0]["name"], "crand0");
        assert_eq!(v1[0][0]["attributes"]["resource"]["string"], "crand");
        assert_eq!(v1[0][0]["attributes"]["major"]["int"], 1);
        let beta = pool(ApiVersion::V1beta1, false).desired(&devices);
        assert_eq!(beta[0][0]["name"], "crand0");
        assert_eq!(beta[0][0]["basic"]["attributes"]["kind"]["string"], "crand");
        assert!(beta[0][0].get("attributes").is_none());
        let slice = pool(ApiVersion::V1, true).slice(0, 1, 3, &v1[0]);
        assert_eq!(slice["apiVersion"], "resource.k8s.io/v1");
        assert_eq!(slice["spec"]["pool"]["generation"], 3);
        assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Node");
    }

    #[test]
    fn test_unhealthy_devices_are_tainted_or_left_out() {
        let devices = dra(3, &[1]);
        let tainted = pool(ApiVersion::V1, true).desired(&devices);
        assert_eq!(tainted[0].len(), 3);
        assert_eq!(tainted[0][1]["taints"][0]["effect"], "NoSchedule");
        assert_eq!(tainted[0][1]["taints"][0]["value"], "missing");
        assert!(tainted[0][0].get("taints").is_none());
        let left_out = pool(ApiVersion::V1beta1, false).desired(&devices);
        let names: Vec<_> = left_out[0].iter().map(|d| d["name"].clone()).collect();
        assert_eq!(names, [json!("crand0"), json!("crand2")]);
    }

    #[test]
    fn test_slices_split_at_the_api_limit() {
        let p = pool(ApiVersion::V1beta1, false);
        let sizes: Vec<usize> = p.desired(&dra(300, &[])).iter().map(Vec::len).collect();
        assert_eq!(sizes, [128, 128, 44]);
        let p = pool(ApiVersion::V1, true);
        let sizes: Vec<usize> = p.desired(&dra(130, &[])).iter().map(Vec::len).collect();
        assert_eq!(sizes, [64, 64, 2]);
        assert_eq!(
            p.desired(&[]),
            vec![Vec::<Value>::new()],
            "an empty pool is published"
        );
    }

    #[test]
    fn test_generation_rules_and_no_writes_when_nothing_changed() {
        let p = pool(ApiVersion::V1, true);
        // First publish: created, generation 1.
        let want = p.desired(&dra(200, &[]));
        let first = plan(&p, &want, &[]);
        assert_eq!(
            (first.generation, first.create.clone()),
            (1, vec![0, 1, 2, 3])
        );
        let have = apply(&p, &want, &[], &first);
        // The same again: nothing to write.
        assert!(plan(&p, &want, &have).is_empty());
        // One device of one slice changes: that slice alone, same generation.
        let want2 = p.desired(&dra(200, &[70]));
        let one = plan(&p, &want2, &have);
        assert_eq!(one.generation, 1);
        assert_eq!(one.update.iter().map(|u| u.0).collect::<Vec<_>>(), [1]);
        assert!(one.create.is_empty() && one.delete.is_empty());
        let have = apply(&p, &want2, &have, &one);
        assert!(plan(&p, &want2, &have).is_empty());
        // Fewer devices, fewer slices: generation bumped, every slice
        // rewritten, the extra one deleted.
        let want3 = p.desired(&dra(100, &[]));
        let shrink = plan(&p, &want3, &have);
        assert_eq!(shrink.generation, 2);
        assert_eq!(
            shrink.update.iter().map(|u| u.0).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(
            shrink.delete,
            ["node1-example.com-2", "node1-example.com-3"]
        );
        let have = apply(&p, &want3, &have, &shrink);
        assert!(plan(&p, &want3, &have).is_empty());
        // A slice deleted behind our back (the kubelet's start): recreated,
        // generation bumped.
        let gone: Vec<Published> = have
            .iter()
            .filter(|x| !x.name.ends_with("-0"))
            .cloned()
            .collect();
        let again = plan(&p, &want3, &gone);
        assert_eq!((again.generation, again.create.clone()), (3, vec![0]));
    }

    #[test]
    fn test_the_servers_additions_compare_equal() {
        let p = pool(ApiVersion::V1, true);
        let want = p.desired(&dra(2, &[0]));
        let mut body = p.slice(0, 1, 1, &want[0]);
        body["metadata"]["resourceVersion"] = json!("7");
        body["spec"]["devices"][0]["taints"][0]["timeAdded"] = json!("2026-12-04T08:02:01Z");
        let have = vec![Published::from_server(&body).unwrap()];
        assert!(plan(&p, &want, &have).is_empty());
        assert!(!have[0].lost_taints(&want[0]));
        body["spec"]["devices"][0]
            .as_object_mut()
            .unwrap()
            .remove("taints");
        assert!(Published::from_server(&body).unwrap().lost_taints(&want[0]));
    }
}
