//! The `krab` command: parses flags (layered over env and the config file), sets up logging
//! and runs the chosen subcommand. Errors become messages here, at the edge.
pub mod args;
mod snapshot;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tokio_util::sync::CancellationToken;

use self::args::{Cli, Command};

fn parse() -> Result<Cli, String> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let command = Cli::command();
    let matches = match command.clone().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let path = matches
        .get_one::<std::path::PathBuf>("config")
        .cloned()
        .unwrap_or_else(|| "/etc/krab/config.yaml".into());
    let explicit = matches!(
        matches.value_source("config"),
        Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
    );
    let argv = crate::config::layer_file(&command, &argv, &matches, &path, explicit)
        .map_err(|e| e.to_string())?;
    let matches = match command.try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => {
            return Err(format!(
                "{} (after applying {})",
                e.to_string().trim_end(),
                path.display()
            ))
        }
    };
    Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("krab: {msg}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::telemetry::init(&cli.log_level, cli.log_format) {
        eprintln!("krab: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("krab")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("krab: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => {
            let shutdown = CancellationToken::new();
            crate::lifecycle::cancel_on_signals(shutdown.clone());
            crate::server::run(*args, shutdown).await
        }
        Command::Agent(args) => {
            let shutdown = CancellationToken::new();
            crate::lifecycle::cancel_on_signals(shutdown.clone());
            crate::agent::process::run(args, shutdown).await
        }
        Command::EtcdSnapshot(a) => snapshot::run(a).await,
        Command::CheckConfig(a) => check_config(a),
    }
}

/// Reports what this host has and lacks for running krab; fails when something required is
/// missing.
fn check_config(args: args::CheckConfigArgs) -> anyhow::Result<()> {
    let mut missing = 0;
    let mut check = |what: &str, ok: bool, required: bool| {
        let mark = if ok {
            "ok"
        } else if required {
            "MISSING"
        } else {
            "missing (optional)"
        };
        println!("{what:<48} {mark}");
        if !ok && required {
            missing += 1;
        }
    };
    let on_path = |bin: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false)
    };
    println!("config: ok (flags, environment and config file parsed)");
    check(
        "data dir parent writable",
        {
            let parent = args.data_dir.parent().unwrap_or(std::path::Path::new("/"));
            parent.exists()
        },
        true,
    );
    check(
        "cgroup v2 (/sys/fs/cgroup/cgroup.controllers)",
        std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        false,
    );
    check("containerd binary", on_path("containerd"), false);
    check("runc binary", on_path("runc"), false);
    check(
        "CNI plugins (/usr/lib/cni/bridge)",
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        false,
    );
    check(
        "nf_tables (/proc/net/netfilter or module)",
        std::path::Path::new("/proc/sys/net/netfilter").exists(),
        false,
    );
    if missing > 0 {
        anyhow::bail!("{missing} required item(s) missing");
    }
    Ok(())
}
