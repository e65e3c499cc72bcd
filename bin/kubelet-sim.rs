//! `kubelet-sim`: the kubelet simulator's command line. `serve` plays the
//! kubelet in a directory (and its plugin watcher, for device plugins and
//! DRA drivers) and takes commands on stdin; `demo` runs a device plugin
//! binary against it and narrates what happens.

use std::{io::BufRead, path::PathBuf, process::ExitCode, time::Instant};

use argh::FromArgs;
use kubelet_plugin::sim::{KubeletVersion, Sim, SimEvent, bench, demo, dra};

#[derive(FromArgs)]
/// A kubelet stand-in for device plugins: serves Registration on kubelet.sock,
/// dials plugins back, watches their devices and allocates.
struct Cli {
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Cmd>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Serve(Serve),
    Demo(Demo),
    Bench(Bench),
    #[cfg(feature = "dra")]
    BenchDra(BenchDra),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
/// Play the kubelet in DIR until stdin ends or says quit. Commands on stdin:
/// `allocate RESOURCE N`, `devices`, `restart`, `quit`; for a DRA driver
/// registered through --plugins-registry-dir, `prepare DRIVER
/// NAMESPACE/NAME/UID...` and `unprepare DRIVER NAMESPACE/NAME/UID...`
/// (one call for all the claims, as the kubelet makes one per pod).
struct Serve {
    /// the device plugin directory (default /var/lib/kubelet/device-plugins)
    #[argh(option, default = "PathBuf::from(\"/var/lib/kubelet/device-plugins\")")]
    dir: PathBuf,
    /// also play the kubelet's plugin watcher on this dir: register the
    /// plugins whose registration sockets are there
    #[argh(option)]
    plugins_registry_dir: Option<PathBuf>,
    /// the kubelet to play towards DRA drivers: 1.36 (default: v1 or
    /// v1beta1 from the driver's supported versions, health stream) or 1.32
    /// (always v1beta1, no health stream)
    #[argh(option, default = "KubeletVersion::V1_36")]
    kubelet_version: KubeletVersion,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "demo")]
/// Run a device plugin against the simulator in a temp dir and show its life.
struct Demo {
    /// the plugin binary (default: kubelet-plugin beside this binary)
    #[argh(option)]
    plugin_bin: Option<PathBuf>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "bench")]
/// Measure a device plugin binary against the simulator in temp dirs (needs
/// root): latencies, throughput, footprint, scale; prints a table against
/// the project's targets and writes the figures as JSON.
struct Bench {
    /// the plugin binary (default: kubelet-plugin beside this binary)
    #[argh(option)]
    plugin_bin: Option<PathBuf>,
    /// where to write the JSON results (default bench-results.json)
    #[argh(option, default = "PathBuf::from(\"bench-results.json\")")]
    out: PathBuf,
    /// health changes of each kind (default 200)
    #[argh(option, default = "200")]
    flips: usize,
    /// kubelet restarts (default 1000)
    #[argh(option, default = "1000")]
    restarts: usize,
    /// sequential Allocate calls (default 5000)
    #[argh(option, default = "5000")]
    allocates: usize,
    /// seconds of idle CPU measurement (default 10)
    #[argh(option, default = "10")]
    idle_secs: u64,
    /// the same plugin built without DRA (`--no-default-features`), whose
    /// size is reported beside it
    #[argh(option)]
    device_plugin_only_bin: Option<PathBuf>,
}

#[cfg(feature = "dra")]
#[derive(FromArgs)]
#[argh(subcommand, name = "bench-dra")]
/// Measure the DRA driver (`run --api dra`) against a real kube-apiserver
/// v1.36 and etcd started here (etcd on PATH, the API server from the
/// realnode kit), the simulator playing the kubelet.
struct BenchDra {
    /// the plugin binary (default: kubelet-plugin beside this binary)
    #[argh(option)]
    plugin_bin: Option<PathBuf>,
    /// the realnode kit: its `unpack` and `k8s-1.36/`
    #[argh(option)]
    kit: PathBuf,
    /// where to write the JSON results (default bench-dra-results.json)
    #[argh(option, default = "PathBuf::from(\"bench-dra-results.json\")")]
    out: PathBuf,
    /// calls of NodePrepareResources, each for a claim of its own (default 200)
    #[argh(option, default = "200")]
    prepares: usize,
    /// hot-plugged nodes (default 50)
    #[argh(option, default = "50")]
    hotplugs: usize,
    /// seconds the idle driver is watched (default 60)
    #[argh(option, default = "60")]
    idle_secs: u64,
    /// drivers started at once, each its own node (default 100)
    #[argh(option, default = "100")]
    instances: usize,
    /// devices of each of those drivers (default 100)
    #[argh(option, default = "100")]
    devices: usize,
}

/// The plugin binary named, or the one beside this binary.
fn plugin_bin(named: Option<PathBuf>) -> Result<PathBuf, String> {
    named
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|p| p.with_file_name("kubelet-plugin"))
        })
        .ok_or_else(|| "cannot find kubelet-plugin: pass --plugin-bin".into())
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("kubelet-sim: error: {msg}");
    ExitCode::from(2)
}

fn print_event(start: Instant, ev: &SimEvent) {
    let ms = |at: &Instant| at.duration_since(start).as_secs_f64() * 1000.0;
    match ev {
        SimEvent::Registered {
            request,
            options,
            at,
        } => println!(
            "[{:>9.1} ms] registered resource={} endpoint={} version={} preferred_allocation={} pre_start={}",
            ms(at),
            request.resource_name,
            request.endpoint,
            request.version,
            options.get_preferred_allocation_available,
            options.pre_start_required
        ),
        SimEvent::Rejected { request, error, at } => println!(
            "[{:>9.1} ms] rejected resource={} endpoint={}: {error}",
            ms(at),
            request.resource_name,
            request.endpoint
        ),
        SimEvent::Devices {
            resource,
            devices,
            at,
        } => {
            println!("[{:>9.1} ms] devices of {resource}:", ms(at));
            for (id, health) in devices {
                println!("                 {id:<12} {health}");
            }
        }
        SimEvent::StreamEnded { resource, at } => {
            println!(
                "[{:>9.1} ms] ListAndWatch ended resource={resource}",
                ms(at)
            )
        }
        ev => print_dra_event(start, ev),
    }
}

fn print_dra_event(start: Instant, ev: &SimEvent) {
    let ms = |at: &Instant| at.duration_since(start).as_secs_f64() * 1000.0;
    match ev {
        SimEvent::DraRegistered {
            driver,
            endpoint,
            service,
            at,
        } => println!(
            "[{:>9.1} ms] dra registered driver={driver} endpoint={endpoint} service={service}",
            ms(at)
        ),
        SimEvent::DraRejected {
            driver,
            socket,
            error,
            at,
        } => println!(
            "[{:>9.1} ms] dra rejected driver={driver} socket={}: {error}",
            ms(at),
            socket.display()
        ),
        SimEvent::DraHealth {
            driver,
            devices,
            at,
        } => {
            println!("[{:>9.1} ms] dra health of {driver}:", ms(at));
            for d in devices {
                println!(
                    "                 {:<24} {:<9} timeout={}s {}",
                    format!("{}/{}", d.pool, d.device),
                    d.health,
                    d.timeout_seconds,
                    d.message
                );
            }
        }
        SimEvent::DraHealthEnded { driver, error, at } => println!(
            "[{:>9.1} ms] dra health stream ended driver={driver}: {}; again in 5 s",
            ms(at),
            error.as_deref().unwrap_or("closed by the driver")
        ),
        SimEvent::DraDeregistered {
            driver,
            endpoint,
            at,
        } => println!(
            "[{:>9.1} ms] dra deregistered driver={driver} endpoint={endpoint}",
            ms(at)
        ),
        _ => {}
    }
}

/// `prepare` and `unprepare`: calls `driver` for the claims named
/// `NAMESPACE/NAME/UID` and prints each claim's answer.
fn dra_command(sim: &Sim, op: &str, driver: &str, args: &[&str]) -> Result<(), String> {
    let owned = args
        .iter()
        .map(|a| dra::claim_arg(a))
        .collect::<Result<Vec<_>, _>>()?;
    let claims: Vec<(&str, &str, &str)> = owned
        .iter()
        .map(|(ns, uid, name)| (ns.as_str(), uid.as_str(), name.as_str()))
        .collect();
    let via = sim
        .dra_registration(driver)
        .map_or_else(String::new, |r| format!(" via {}", r.service));
    let answers: Vec<(String, Result<Vec<String>, String>)> = if op == "prepare" {
        let answer = sim.prepare(driver, &claims)?;
        answer
            .into_iter()
            .map(|(uid, r)| {
                let lines = r.map(|devices| {
                    devices
                        .iter()
                        .map(|d| {
                            format!(
                                "device {}/{} requests={} cdi={}",
                                d.pool,
                                d.device,
                                d.request_names.join(","),
                                d.cdi_ids.join(",")
                            )
                        })
                        .collect()
                });
                (uid, lines)
            })
            .collect()
    } else {
        let answer = sim.unprepare(driver, &claims)?;
        answer
            .into_iter()
            .map(|(uid, r)| (uid, r.map(|()| Vec::new())))
            .collect()
    };
    println!("{op}d {driver}{via}:");
    for (ns, uid, name) in &claims {
        match answers.iter().find(|(u, _)| u == uid).map(|(_, r)| r) {
            Some(Ok(lines)) => {
                println!("    claim {ns}/{name}/{uid}: ok");
                lines.iter().for_each(|l| println!("        {l}"));
            }
            Some(Err(e)) => println!("    claim {ns}/{name}/{uid}: error: {e}"),
            None => {}
        }
    }
    Ok(())
}

fn command(sim: &mut Sim, line: &str) -> Result<bool, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => {}
        ["quit"] => return Ok(false),
        ["restart"] => {
            sim.restart()?;
            println!(
                "restarted: sockets deleted, {} made anew",
                sim.socket().display()
            );
        }
        ["devices"] => println!("use the device lists printed above"),
        [op @ ("prepare" | "unprepare"), driver, claims @ ..] if !claims.is_empty() => {
            dra_command(sim, op, driver, claims)?;
        }
        ["allocate", resource, n] => {
            let n: usize = n.parse().map_err(|_| format!("not a count: {n}"))?;
            let (ids, resp) = sim.allocate_healthy(resource, n)?;
            println!("allocated {resource} {}", ids.join(","));
            for c in &resp.container_responses {
                for cdi in &c.cdi_devices {
                    println!("    cdi {}", cdi.name);
                }
                for d in &c.devices {
                    println!(
                        "    device {} -> {} ({})",
                        d.host_path, d.container_path, d.permissions
                    );
                }
            }
        }
        _ => {
            return Err(format!(
                "unknown command {line:?}: allocate RESOURCE N | prepare DRIVER NAMESPACE/NAME/UID... | unprepare DRIVER NAMESPACE/NAME/UID... | restart | quit"
            ));
        }
    }
    Ok(true)
}

fn serve(args: Serve) -> Result<(), String> {
    if !args.dir.is_dir() {
        return Err(format!("--dir {}: not a directory", args.dir.display()));
    }
    let mut sim = Sim::start(&args.dir)?;
    println!("serving {}", sim.socket().display());
    if let Some(dir) = &args.plugins_registry_dir {
        if !dir.is_dir() {
            return Err(format!(
                "--plugins-registry-dir {}: not a directory",
                dir.display()
            ));
        }
        sim.watch_registry_as(dir, args.kubelet_version)?;
        println!(
            "watching {} for registration sockets (DRA as kubelet {})",
            dir.display(),
            args.kubelet_version
        );
    }
    let start = Instant::now();
    let events = sim.event_channel();
    std::thread::Builder::new()
        .name("sim-print".into())
        .spawn(move || events.iter().for_each(|ev| print_event(start, &ev)))
        .map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        match command(&mut sim, &line) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => eprintln!("kubelet-sim: {e}"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = match kubelet_plugin::cli::parse_plain(std::env::args().collect()) {
        Ok(cli) => cli,
        Err(exit) => {
            exit.print();
            return ExitCode::from(exit.code);
        }
    };
    if cli.version {
        println!("kubelet-sim {}", kubelet_plugin::VERSION);
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Some(Cmd::Serve(args)) => serve(args),
        Some(Cmd::Demo(args)) => plugin_bin(args.plugin_bin).and_then(|bin| demo::run(&bin)),
        Some(Cmd::Bench(args)) => plugin_bin(args.plugin_bin).and_then(|plugin_bin| {
            bench::run(&bench::Options {
                plugin_bin,
                out: args.out,
                flips: args.flips,
                restarts: args.restarts,
                allocates: args.allocates,
                idle_secs: args.idle_secs,
                device_plugin_only_bin: args.device_plugin_only_bin,
            })
        }),
        #[cfg(feature = "dra")]
        Some(Cmd::BenchDra(args)) => plugin_bin(args.plugin_bin).and_then(|plugin_bin| {
            kubelet_plugin::sim::bench_dra::run(&kubelet_plugin::sim::bench_dra::Options {
                plugin_bin,
                kit: args.kit,
                out: args.out,
                prepares: args.prepares,
                hotplugs: args.hotplugs,
                idle_secs: args.idle_secs,
                instances: args.instances,
                devices: args.devices,
            })
        }),
        None => Err("no command given: try `kubelet-sim serve` or `kubelet-sim --help`".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}
