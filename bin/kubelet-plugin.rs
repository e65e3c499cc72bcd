//! `kubelet-plugin`: parses the flags, sets up logging, runs the supervisor
//! on its own thread and exits with its result.

use std::process::ExitCode;

use kubelet_plugin::{
    cli::{self, Cli, Command, RunArgs},
    error::{Error, Result, chain},
    lockfile::PidFile,
    supervisor::Supervisor,
};
use simplelog::{ConfigBuilder, LevelFilter, ThreadLogMode, WriteLogger};

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("kubelet-plugin: error: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli: Cli = kubelet_plugin::cli::from_env();
    if cli.version {
        println!("kubelet-plugin {}", kubelet_plugin::VERSION);
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Some(Command::Run(args)) => run(args),
        Some(Command::Cdi(args)) => args.run(),
        Some(Command::Status(args)) => {
            return match args.options().and_then(|o| kubelet_plugin::status::run(&o)) {
                Ok(outcome) => ExitCode::from(outcome.exit_code()),
                Err(e) => fail(&chain(&e), 2),
            };
        }
        None => {
            return fail(
                "no command given: try `kubelet-plugin run` or `kubelet-plugin --help`",
                2,
            );
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&chain(&e), e.exit_code()),
    }
}

/// `run`: logging, then the supervisor on its own thread until it ends.
fn run(args: RunArgs) -> Result<()> {
    let log_config = ConfigBuilder::new()
        .set_thread_mode(ThreadLogMode::Names)
        .set_thread_level(LevelFilter::Error)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339()
        .build();
    let _ = WriteLogger::init(args.log_level, log_config, std::io::stderr());

    let config = args.config()?;
    cli::prepare_dirs(&config)?;
    // The supervisor takes each resource's lock before it makes anything.
    // The pid file: kept (and removed at the end) by the supervisor thread.
    let pid_file = args.pid_file.as_deref().map(PidFile::lock).transpose()?;
    let result = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            let supervisor = Supervisor::new(config)?;
            let _pid_file = match pid_file {
                Some(mut p) => p.ready().map(|()| Some(p))?,
                None => None,
            };
            supervisor.run()
        })
        .map_err(|e| Error::Thread(format!("cannot start the supervisor thread: {e}")))?
        .join()
        .unwrap_or_else(|_| Err(Error::Thread("supervisor panicked".into())));
    match &result {
        Ok(()) => log::info!("stopped"),
        Err(e) => log::error!("{}", chain(e)),
    }
    result
}
