//! `status` of a DRA driver of ours: asked on its DRA socket (our status
//! service's `Dra` call), shown with its registration, its slices, every
//! device with its name in the pool and its health, and the claims it
//! prepared with their pods.

use std::{path::Path, sync::Arc};

use grpcio::{CallOption, ChannelBuilder, Environment};

use super::TIMEOUT;
use crate::{
    api::{status, status_grpc},
    json::json_str,
};

/// What one DRA driver answered.
pub type Answer = status::DraResponse;

/// Asks the driver on the DRA socket `sock`.
pub fn ask(env: &Arc<Environment>, sock: &Path) -> std::result::Result<Answer, String> {
    let channel = ChannelBuilder::new(env.clone()).connect(&format!("unix:{}", sock.display()));
    status_grpc::StatusClient::new(channel)
        .dra_opt(
            &status::DraRequest::new(),
            CallOption::default().timeout(TIMEOUT),
        )
        .map_err(|e| e.to_string())
}

/// Whether a device of the driver is unhealthy.
pub fn unhealthy(a: &Answer) -> bool {
    a.devices.iter().any(|d| d.status.health != "Healthy")
}

/// The driver's answer as text.
pub fn print_text(a: &Answer) {
    let healthy = a
        .devices
        .iter()
        .filter(|d| d.status.health == "Healthy")
        .count();
    let api = if a.api_version.is_empty() {
        "API version not known yet"
    } else {
        &a.api_version
    };
    println!(
        "{} (DRA driver, node {}, {api}, {}): {} devices, {healthy} healthy, {} slices",
        a.driver,
        a.node,
        a.state,
        a.devices.len(),
        a.slices.len()
    );
    if !a.publish_error.is_empty() {
        println!("    not published: {}", a.publish_error);
    }
    for s in &a.slices {
        println!(
            "    slice {} generation {}: {} devices",
            s.name, s.generation, s.devices
        );
    }
    for d in &a.devices {
        let mut line = format!(
            "    {:<28} {:<20} {:<9}",
            d.resource, d.name, d.status.health
        );
        if !d.status.reason.is_empty() {
            line.push_str(&format!(" {}: {}", d.status.reason, d.status.why));
        }
        println!("{}", line.trim_end());
    }
    for c in &a.claims {
        println!(
            "    claim {}/{} uid={} pods={} devices={}",
            c.namespace,
            c.name,
            c.uid,
            if c.pods.is_empty() {
                "-".to_string()
            } else {
                c.pods.join(",")
            },
            c.devices.join(",")
        );
    }
}

fn strings(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| json_str(s)).collect();
    format!("[{}]", items.join(", "))
}

/// The driver's answer as a JSON object.
pub fn to_json(a: &Answer) -> String {
    let opt = |s: &str| {
        if s.is_empty() {
            "null".to_string()
        } else {
            json_str(s)
        }
    };
    let slices: Vec<String> = a
        .slices
        .iter()
        .map(|s| {
            format!(
                "{{\"name\": {}, \"generation\": {}, \"devices\": {}}}",
                json_str(&s.name),
                s.generation,
                s.devices
            )
        })
        .collect();
    let devices: Vec<String> = a
        .devices
        .iter()
        .map(|d| {
            format!(
                "{{\"resource\": {}, \"name\": {}, \"id\": {}, \"health\": {}, \"reason\": {}, \"why\": {}}}",
                json_str(&d.resource),
                json_str(&d.name),
                json_str(&d.status.id),
                json_str(&d.status.health),
                opt(&d.status.reason),
                opt(&d.status.why)
            )
        })
        .collect();
    let claims: Vec<String> = a
        .claims
        .iter()
        .map(|c| {
            format!(
                "{{\"uid\": {}, \"namespace\": {}, \"name\": {}, \"pods\": {}, \"devices\": {}}}",
                json_str(&c.uid),
                json_str(&c.namespace),
                json_str(&c.name),
                strings(&c.pods),
                strings(&c.devices)
            )
        })
        .collect();
    format!(
        "{{\"driver\": {}, \"node\": {}, \"apiVersion\": {}, \"state\": {}, \"publishError\": {}, \"slices\": [{}], \"devices\": [{}], \"claims\": [{}]}}",
        json_str(&a.driver),
        json_str(&a.node),
        opt(&a.api_version),
        json_str(&a.state),
        opt(&a.publish_error),
        slices.join(", "),
        devices.join(", "),
        claims.join(", ")
    )
}
