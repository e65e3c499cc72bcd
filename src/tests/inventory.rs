//! The inventory alone, with no front end: the library's
//! `inventory::Inventory` on real device nodes in a temp dir, with its real
//! health thread. It makes nodes, writes CDI specs, takes locks, follows
//! hot-plug and health into the snapshots and says so on its event
//! channel; nothing of gRPC or the kubelet is involved.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, unbounded};
use kubelet_plugin::{
    event::Event,
    inventory::{
        Config, Inventory, Listener, Resource,
        device::{Device, Health, Reason},
        kinds::{self, Flags, KindValues},
    },
};
use nix::sys::stat::{Mode, SFlag, mknod, stat};

const WAIT: Duration = Duration::from_secs(5);

/// Waits for the health thread to publish `resource` anew.
fn published(events: &Receiver<Event>, resource: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match events.recv_deadline(deadline) {
            Ok(Event::Published(r)) if r == resource => return,
            Ok(_) => {}
            Err(_) => panic!("{resource} not published within {WAIT:?}"),
        }
    }
}

/// What the inventory told its listener, line by line.
#[derive(Default)]
struct Told(Mutex<Vec<String>>);

impl Listener for Told {
    fn added(&self, r: &Resource) {
        self.0.lock().unwrap().push(format!("added {}", r.name()));
    }
    fn removed(&self, name: &str) {
        self.0.lock().unwrap().push(format!("removed {name}"));
    }
    fn health_changed(&self, name: &str, changed: &[&Device]) {
        for d in changed {
            let line = format!("{name} {} {}", d.id, d.health);
            self.0.lock().unwrap().push(line);
        }
    }
}

fn ids_health(r: &Resource) -> Vec<(String, Health)> {
    r.devices
        .get()
        .iter()
        .map(|d| (d.id.clone(), d.health))
        .collect()
}

#[test]
fn test_the_inventory_runs_without_a_front_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (dev, cdi) = (tmp.path().join("dev"), tmp.path().join("cdi"));
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&cdi).unwrap();
    let mut values = KindValues::new();
    values.insert("--crand-count", vec!["2".into()]);
    values.insert("--device", vec!["serial=ttyUSB*:2".into()]);
    let chosen = ["crand".to_string()];
    let flags = Flags::new(&chosen, "example.com", &dev, &values);
    let plugins = kinds::build(&flags).unwrap();
    let cfg = Config {
        dev_dir: dev.clone(),
        cdi_dir: cdi.clone(),
        poll_interval: Duration::from_secs(60),
        owner: "none",
    };
    let told = Arc::new(Told::default());
    let mut inventory = Inventory::new(cfg.clone(), told.clone());
    let resources: Vec<Resource> = plugins
        .into_iter()
        .map(|p| inventory.add(p, false, &|_| Ok(())).unwrap())
        .collect();
    let (crand, serial) = (&resources[0], &resources[1]);
    assert_eq!(crand.name(), "example.com/crand");
    assert_eq!(serial.name(), "example.com/serial");

    // Added: crand's nodes made, both specs written, the first snapshots.
    let random = stat("/dev/random").unwrap().st_rdev;
    for n in ["crand0", "crand1"] {
        assert_eq!(stat(&dev.join(n)).unwrap().st_rdev, random, "{n}");
    }
    assert_eq!(
        ids_health(crand),
        [
            ("crand0".to_string(), Health::Healthy),
            ("crand1".to_string(), Health::Healthy)
        ]
    );
    assert!(serial.devices.get().is_empty(), "no ttyUSB yet");
    let spec = |name: &str| std::fs::read_to_string(cdi.join(name)).unwrap();
    assert!(spec("example.com-crand.json").contains("\"name\": \"crand1\""));
    assert!(!spec("example.com-serial.json").contains("ttyUSB0"));

    // One owner per resource: a second inventory on the same CDI dir is
    // refused, whatever front end it would have had.
    let mut second = Inventory::new(cfg, Arc::new(Told::default()));
    let again = kinds::build(&flags).unwrap().remove(0);
    let err = second.add(again, false, &|_| Ok(())).unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");

    let (events, inbox) = unbounded();
    let health = inventory.start(events, &[]).unwrap();

    // Hot-plug: the node appears, its spec is written, then the snapshot.
    let tty = dev.join("ttyUSB0");
    mknod(
        &tty,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        random,
    )
    .unwrap();
    published(&inbox, "example.com/serial");
    assert_eq!(
        ids_health(serial),
        [
            ("ttyUSB0-0".to_string(), Health::Healthy),
            ("ttyUSB0-1".to_string(), Health::Healthy)
        ]
    );
    let devices = serial.devices.get();
    assert!(
        Arc::ptr_eq(&devices[0].node, &devices[1].node),
        "one node, two slots"
    );
    assert_eq!(devices[0].node.host_path, tty);
    assert_eq!(devices[0].node.container_path, "/dev/ttyUSB0");
    assert!(spec("example.com-serial.json").contains("\"name\": \"ttyUSB0\""));

    // Health: a node removed is Unhealthy, with its reason, and stays listed.
    std::fs::remove_file(dev.join("crand1")).unwrap();
    published(&inbox, "example.com/crand");
    assert_eq!(
        ids_health(crand)[1],
        ("crand1".to_string(), Health::Unhealthy(Reason::Missing))
    );

    assert_eq!(
        *told.0.lock().unwrap(),
        [
            "added example.com/crand",
            "added example.com/serial",
            "example.com/serial ttyUSB0-0 Healthy",
            "example.com/serial ttyUSB0-1 Healthy",
            "example.com/crand crand1 Unhealthy",
        ]
    );
    inventory.remove("example.com/serial");
    assert!(!cdi.join(".kubelet-plugin-example.com_serial.lock").exists());
    assert_eq!(
        told.0.lock().unwrap().last().unwrap(),
        "removed example.com/serial"
    );

    // Stopped: the thread ends cleanly, its end on the channel.
    inventory.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        match inbox.recv_deadline(deadline) {
            Ok(Event::ThreadExited { name, result }) => {
                assert_eq!(name, "health");
                result.unwrap();
                break;
            }
            Ok(_) => {}
            Err(_) => panic!("the health thread did not stop"),
        }
    }
    health.join().unwrap();
    // The locks go with the inventory; the specs stay.
    drop(inventory);
    assert!(!Path::new(&cdi.join(".kubelet-plugin-example.com_crand.lock")).exists());
    assert!(cdi.join("example.com-crand.json").exists());
}
