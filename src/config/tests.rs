//! Config layering: flag > env > file > default, and unknown keys are errors.
use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, FromArgMatches};

use super::*;
use crate::cli::args::{Cli, Command as Sub};

fn parse(args: &[&str], file: &str) -> Result<Cli, Error> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(file.as_bytes()).unwrap();
    let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&argv).unwrap();
    let argv = layer_file(&command, &argv, &matches, f.path(), true)?;
    let matches = command.try_get_matches_from(&argv).unwrap();
    Ok(Cli::from_arg_matches(&matches).unwrap())
}

fn server(cli: Cli) -> crate::cli::args::ServerArgs {
    match cli.command {
        Sub::Server(a) => *a,
        other => panic!("not a server command: {other:?}"),
    }
}

#[test]
fn file_values_apply_where_no_flag_was_given() {
    let cli = parse(
        &["krab", "server"],
        "data-dir: /srv/krab\nhttps-listen-port: 7443\ndisable-agent: true\n",
    )
    .unwrap();
    let s = server(cli);
    assert_eq!(s.data_dir, std::path::PathBuf::from("/srv/krab"));
    assert_eq!(s.https_listen_port, 7443);
    assert!(s.disable_agent);
}

#[test]
fn a_flag_beats_the_file() {
    let cli = parse(
        &["krab", "server", "--https-listen-port", "8443"],
        "https-listen-port: 7443\n",
    )
    .unwrap();
    assert_eq!(server(cli).https_listen_port, 8443);
}

#[test]
fn global_flags_come_from_the_file_too() {
    let cli = parse(&["krab", "server"], "log-level: debug\n").unwrap();
    assert_eq!(cli.log_level, "debug");
}

#[test]
fn an_unknown_key_names_the_key_and_the_file() {
    let err = parse(&["krab", "server"], "data-dir: /x\nno-such-flag: 1\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no-such-flag"), "{msg}");
    assert!(msg.contains("unknown key"), "{msg}");
    assert!(msg.contains(".tmp") || msg.contains("/tmp"), "{msg}");
}

#[test]
fn malformed_yaml_is_an_error_not_a_default() {
    let err = parse(&["krab", "server"], "data-dir: [unclosed\n").unwrap_err();
    assert!(err.to_string().contains("not valid YAML"), "{err}");
    let err = parse(&["krab", "server"], "- just\n- a list\n").unwrap_err();
    assert!(err.to_string().contains("mapping"), "{err}");
}

#[test]
fn an_explicit_missing_file_is_an_error_and_the_default_one_is_optional() {
    let argv: Vec<OsString> = ["krab", "server"].iter().map(OsString::from).collect();
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&argv).unwrap();
    let missing = std::path::Path::new("/nonexistent/krab.yaml");
    assert!(layer_file(&command, &argv, &matches, missing, true).is_err());
    assert_eq!(
        layer_file(&command, &argv, &matches, missing, false).unwrap(),
        argv
    );
}

#[test]
fn k3s_flannel_keys_and_address_lists_come_from_the_file() {
    let cli = parse(
        &["krab", "server"],
        "flannel-iface: eth1\nflannel-backend: host-gw\nnode-ip: [10.0.0.2, 'fd00::2']\nnode-external-ip: 203.0.113.7\n",
    )
    .unwrap();
    let net = server(cli).network;
    assert_eq!(net.pod_network_iface.as_deref(), Some("eth1"));
    assert_eq!(
        net.pod_network_backend,
        crate::agent::pod_network::Backend::HostGw
    );
    let ips: Vec<String> = net.node_ip.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["10.0.0.2", "fd00::2"]);
    assert_eq!(net.node_external_ip.len(), 1);
}
