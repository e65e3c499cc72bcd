//! `kubelet-plugin`: parses the flags, sets up logging, runs the supervisor
//! on its own thread and exits with its result.

use std::process::ExitCode;

use kubelet_plugin::{
    cli::{Cli, Command},
    error::chain,
    supervisor::Supervisor,
};
use simplelog::{ConfigBuilder, LevelFilter, ThreadLogMode, WriteLogger};

fn fail(msg: &str) -> ExitCode {
    eprintln!("kubelet-plugin: error: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    if cli.version {
        println!("kubelet-plugin {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        Some(Command::Cdi(args)) => {
            return match args.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&chain(&e)),
            };
        }
        Some(Command::Status(args)) => {
            return match kubelet_plugin::status::run(&args.device_plugin_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&chain(&e)),
            };
        }
        None => {
            return fail("no command given: try `kubelet-plugin run` or `kubelet-plugin --help`");
        }
    };
    let log_config = ConfigBuilder::new()
        .set_thread_mode(ThreadLogMode::Names)
        .set_thread_level(LevelFilter::Error)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339()
        .build();
    let _ = WriteLogger::init(args.log_level, log_config, std::io::stderr());

    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return fail(&chain(&e)),
    };
    let supervisor = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || Supervisor::new(config).and_then(Supervisor::run));
    let result = match supervisor {
        Ok(handle) => handle.join().unwrap_or_else(|_| {
            Err(kubelet_plugin::error::Error::Invalid(
                "supervisor panicked".into(),
            ))
        }),
        Err(e) => return fail(&format!("cannot start the supervisor thread: {e}")),
    };
    match result {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{}", chain(&e));
            fail(&chain(&e))
        }
    }
}
