//! Settings from the config file, layered under flags and environment variables:
//! flag > `KRAB_*` env > `/etc/krab/config.yaml` > default. The file's keys are flag names
//! (as in k3s); an unknown key is an error naming the key and the file, reported before
//! anything starts.
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{path}: the config file must be a mapping of flag names to values")]
    NotAMapping { path: PathBuf },
    #[error("{path}: unknown key `{key}` (not a flag of `krab {command}`)")]
    UnknownKey {
        path: PathBuf,
        key: String,
        command: String,
    },
    #[error("{path}: key `{key}`: {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Returns `argv` extended with the config file's settings for every flag that was not
/// given on the command line or through the environment.
pub fn layer_file(
    command: &Command,
    argv: &[OsString],
    matches: &ArgMatches,
    path: &Path,
    explicit: bool,
) -> Result<Vec<OsString>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(argv.to_vec()),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|source| Error::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    let map = match doc {
        serde_yaml::Value::Null => return Ok(argv.to_vec()),
        serde_yaml::Value::Mapping(m) => m,
        _ => {
            return Err(Error::NotAMapping {
                path: path.to_path_buf(),
            })
        }
    };
    let Some((sub_name, sub_matches)) = matches.subcommand() else {
        return Ok(argv.to_vec());
    };
    let mut sub = command
        .find_subcommand(sub_name)
        .cloned()
        .unwrap_or_else(|| Command::new(sub_name.to_string()));
    // Leaf subcommands (etcd-snapshot save) hold their own flags.
    let mut leaf_matches = sub_matches;
    let mut leaf_name = sub_name.to_string();
    if let Some((n, m)) = sub_matches.subcommand() {
        if let Some(s) = sub.find_subcommand(n).cloned() {
            sub = s;
            leaf_matches = m;
            leaf_name = format!("{sub_name} {n}");
        }
    }
    let mut extra: Vec<OsString> = Vec::new();
    for (k, v) in map {
        let key = match k {
            serde_yaml::Value::String(s) => s,
            other => {
                return Err(Error::BadValue {
                    path: path.to_path_buf(),
                    key: format!("{other:?}"),
                    reason: "keys must be flag names".into(),
                })
            }
        };
        let named = |a: &&clap::Arg| {
            a.get_long() == Some(key.as_str())
                || a.get_all_aliases()
                    .is_some_and(|al| al.contains(&key.as_str()))
        };
        // A flag of the subcommand is asked about in its matches, a global one in the
        // top-level matches (clap panics when asked about an argument it does not hold).
        let arg = match sub.get_arguments().find(named) {
            Some(a) => Some((a, leaf_matches)),
            None => command.get_arguments().find(named).map(|a| (a, matches)),
        };
        let Some((arg, arg_matches)) = arg else {
            return Err(Error::UnknownKey {
                path: path.to_path_buf(),
                key,
                command: leaf_name,
            });
        };
        let id = arg.get_id().as_str();
        let source = arg_matches.value_source(id);
        if matches!(
            source,
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        ) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let bad = |reason: &str| Error::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            reason: reason.into(),
        };
        let values: Vec<String> = match v {
            serde_yaml::Value::Bool(b) if !takes_value => {
                if b {
                    extra.push(format!("--{key}").into());
                }
                continue;
            }
            serde_yaml::Value::Sequence(items) => items
                .into_iter()
                .map(|i| scalar(i).ok_or_else(|| bad("list items must be plain values")))
                .collect::<Result<_, _>>()?,
            other => vec![scalar(other).ok_or_else(|| bad("expected a plain value"))?],
        };
        if !takes_value {
            return Err(bad("this flag takes true or false"));
        }
        for value in values {
            extra.push(format!("--{key}={value}").into());
        }
    }
    let mut out = argv.to_vec();
    out.extend(extra);
    Ok(out)
}

fn scalar(v: serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
