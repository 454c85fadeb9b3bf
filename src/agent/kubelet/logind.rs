//! logind on the system D-Bus, as the kubelet's graceful node shutdown uses it: a "delay"
//! inhibitor lock on shutdown, the `PrepareForShutdown` signal, and logind's
//! `InhibitDelayMaxSec` (raised through a logind.conf drop-in when it is shorter than the
//! shutdown grace period). The bus is `DBUS_SYSTEM_BUS_ADDRESS` or the standard socket.
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use zbus::proxy::CacheProperties;

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";
const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// The drop-in the kubelet writes (k3s's embedded kubelet writes the same one).
pub const DROP_IN: &str = "99-kubelet.conf";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("logind on the system bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("cannot write {}: {source}", path.display())]
    DropIn {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A connection to logind (and to systemd, to make logind reload its configuration).
pub struct Logind {
    conn: zbus::Connection,
    manager: zbus::Proxy<'static>,
}

/// A delay inhibitor lock on shutdown: logind holds the shutdown back (at most
/// `InhibitDelayMaxSec`) until this is dropped.
#[derive(Debug)]
pub struct InhibitLock(#[allow(dead_code)] OwnedFd);

impl Logind {
    pub async fn connect() -> Result<Logind, Error> {
        let conn = zbus::Connection::system().await?;
        let manager = proxy(&conn, LOGIND, LOGIND_PATH, LOGIND_MANAGER).await?;
        Ok(Logind { conn, manager })
    }

    /// logind's `InhibitDelayMaxUSec`: how long a delay lock may hold a shutdown back.
    pub async fn inhibit_delay(&self) -> Result<Duration, Error> {
        let usec: u64 = self.manager.get_property("InhibitDelayMaxUSec").await?;
        Ok(Duration::from_micros(usec))
    }

    /// Takes a delay lock on shutdown, under the kubelet's name and reason.
    pub async fn inhibit_shutdown(&self) -> Result<InhibitLock, Error> {
        let fd: zbus::zvariant::OwnedFd = self
            .manager
            .call(
                "Inhibit",
                &(
                    "shutdown",
                    "kubelet",
                    "Kubelet needs time to handle node shutdown",
                    "delay",
                ),
            )
            .await?;
        Ok(InhibitLock(fd.into()))
    }

    /// `PrepareForShutdown`: true when a shutdown begins, false when it was cancelled. The
    /// stream ends when the bus connection does.
    pub async fn shutdown_signals(&self) -> Result<impl Stream<Item = bool> + Send, Error> {
        let signals = self.manager.receive_signal("PrepareForShutdown").await?;
        Ok(signals.filter_map(|m| async move {
            match m.body().deserialize::<bool>() {
                Ok(start) => Some(start),
                Err(e) => {
                    tracing::debug!(error = %e, "a PrepareForShutdown signal without its flag");
                    None
                }
            }
        }))
    }

    /// Makes logind read its configuration again (SIGHUP through systemd, as the kubelet).
    pub async fn reload_config(&self) -> Result<(), Error> {
        let systemd = proxy(&self.conn, SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER).await?;
        let _: () = systemd
            .call("KillUnit", &("systemd-logind.service", "all", 1i32))
            .await?;
        Ok(())
    }
}

async fn proxy(
    conn: &zbus::Connection,
    destination: &'static str,
    path: &'static str,
    interface: &'static str,
) -> Result<zbus::Proxy<'static>, zbus::Error> {
    zbus::proxy::Builder::<zbus::Proxy<'static>>::new(conn)
        .destination(destination)?
        .path(path)?
        .interface(interface)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// Writes the logind.conf drop-in that raises `InhibitDelayMaxSec` to `period`, in `dir`
/// (`/etc/systemd/logind.conf.d`).
pub fn override_inhibit_delay(dir: &Path, period: Duration) -> Result<PathBuf, Error> {
    let path = dir.join(DROP_IN);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(&path, drop_in(period))
    };
    write().map_err(|source| Error::DropIn {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn drop_in(period: Duration) -> String {
    format!(
        "# Kubelet logind override\n[Login]\nInhibitDelayMaxSec={}\n",
        period.as_secs_f64().round()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_raises_the_inhibit_delay_in_whole_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("logind.conf.d");
        let path = override_inhibit_delay(&conf, Duration::from_secs(45)).unwrap();
        assert_eq!(path, conf.join("99-kubelet.conf"));
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "# Kubelet logind override\n[Login]\nInhibitDelayMaxSec=45\n"
        );
    }
}
