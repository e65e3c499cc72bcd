//! `kubelet-plugin`: parses the flags, sets up logging, runs the supervisor
//! thread, forwards signals to it while it runs, and ends the process with
//! the exit code of its result: the only place the process ends.

use std::process::ExitCode;

use kubelet_plugin::{
    cli::{self, Command, RunArgs},
    error::{Error, Result, chain},
    event::Event,
    inventory::kinds::KindValues,
    lockfile::PidFile,
    signals, supervisor,
};
use simplelog::{ConfigBuilder, LevelFilter, ThreadLogMode, WriteLogger};

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("kubelet-plugin: error: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let parsed = match cli::from_env() {
        Ok(p) => p,
        Err(exit) => {
            exit.print();
            return ExitCode::from(exit.code);
        }
    };
    if parsed.cli.version {
        println!("kubelet-plugin {}", kubelet_plugin::VERSION);
        return ExitCode::SUCCESS;
    }
    let result = match parsed.cli.command {
        Some(Command::Run(args)) => run(args, &parsed.kinds),
        Some(Command::Cdi(args)) => args.run(&parsed.kinds),
        Some(Command::Reload(args)) => args.run(),
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

/// `run`: logging, the dirs, the pid file, then the supervisor thread until
/// it ends.
fn run(args: RunArgs, kinds: &KindValues) -> Result<()> {
    let log_config = ConfigBuilder::new()
        .set_thread_mode(ThreadLogMode::Names)
        .set_thread_level(LevelFilter::Error)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339()
        // Ours only: the TLS and HTTP crates' own debug lines would drown
        // ours (and name every request twice).
        .add_filter_allow_str("kubelet_plugin")
        .build();
    let _ = WriteLogger::init(args.log_level, log_config, std::io::stderr());

    let config = args.config(kinds)?;
    cli::prepare_dirs(&config)?;
    // The supervisor takes each resource's lock before it makes anything;
    // it keeps the pid file (and removes it at the end).
    let pid_file = args.pid_file.as_deref().map(PidFile::lock).transpose()?;
    let signals = signals::Installed::new()?;
    let handle = signals.handle();
    let (exits, exited) = crossbeam_channel::bounded(1);
    let (join, inbox) = supervisor::spawn(config, pid_file, exits, handle)?;
    // This thread's job until the supervisor ends (and closes the handle).
    signals::forward(signals, &inbox);
    let result = match exited.recv() {
        Ok(Event::ThreadExited { result, .. }) => result,
        _ => Err(Error::Thread("the supervisor thread vanished".into())),
    };
    let _ = join.join();
    match &result {
        Ok(()) => log::info!("stopped"),
        Err(e) => log::error!("{}", chain(e)),
    }
    result
}
