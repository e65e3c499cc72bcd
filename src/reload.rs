//! SIGHUP with `--config`: the resources of the file's kind flags (the
//! `--device` lines) as the file is now replace those of before. One no
//! longer there, or changed, is unregistered by the front end first
//! (streams ended, socket removed), then leaves the inventory (its lock
//! released; its CDI spec stays for containers that still use it); a new
//! one is added like at start. A file that does not parse, or a resource
//! that clashes with one of the command line, changes nothing.

use std::fmt;

use crate::{
    error::{Result, chain},
    frontend::FrontEnd,
    inventory::{Inventory, kinds::Plugins},
};

/// How SIGHUP reloads the `--config` file's resources.
pub struct Reload {
    /// The identities ([`crate::inventory::kinds::Plugin::identity`]) of
    /// the plugins at start that come from the file.
    pub from_file: Vec<String>,
    /// Builds the file's plugins as it is now.
    pub load: Box<dyn Fn() -> Result<Plugins> + Send>,
}

impl fmt::Debug for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reload")
            .field("from_file", &self.from_file)
            .finish_non_exhaustive()
    }
}

impl Reload {
    /// Reads the file again and brings `inventory` and `front` in line with
    /// it; every outcome is logged.
    pub fn apply(&self, inventory: &mut Inventory, front: &mut dyn FrontEnd) {
        let wanted = match (self.load)() {
            Ok(w) => w,
            Err(e) => {
                log::error!("config not reloaded: {}", chain(&e));
                return;
            }
        };
        let (from_file, fixed) = inventory.split_reloadable();
        if let Some(clash) = wanted
            .iter()
            .find(|p| fixed.iter().any(|f| f == p.resource()))
        {
            log::error!(
                "config not reloaded: {} is also given on the command line",
                clash.resource()
            );
            return;
        }
        let keep: Vec<String> = wanted.iter().map(|p| p.identity()).collect();
        for r in inventory.resources() {
            let id = r.plugin.identity();
            if from_file.contains(&id) && !keep.contains(&id) {
                log::info!(
                    "resource no longer configured; unregistering resource={}",
                    r.name()
                );
                front.remove(r.name());
                inventory.remove(r.name());
            }
        }
        for plugin in wanted
            .into_iter()
            .filter(|p| !from_file.contains(&p.identity()))
        {
            let name = plugin.resource().to_string();
            match inventory.add(plugin, true, &|p| front.check(p)) {
                Ok(resource) => {
                    log::info!("resource added by the config resource={name}");
                    front.add(resource);
                }
                Err(e) => log::error!("cannot add resource={name}: {}", chain(&e)),
            }
        }
    }
}
