//! Images on the node without a registry: the pause image krab builds, and the air-gap
//! archives in `<data-dir>/agent/images/`, imported into containerd at start.
pub mod archive;
pub mod import;
pub mod pause;
mod pause_elf;

use std::path::Path;

pub use self::import::Importer;

/// Imports the pause image and every archive in `dir`; returns the names of the images
/// imported (which the image collector never deletes). A bad archive is logged by name and
/// skipped; it never stops the agent.
pub async fn import_all(socket: &Path, dir: &Path) -> Result<Vec<String>, import::Error> {
    let importer = Importer::connect(socket).await?;
    let result = async {
        let pause = pause::archive().map_err(|e| import::Error::Connect(e.to_string()))?;
        let mut imported = importer.import(&pause, None).await?;
        for path in archive::archives_in(dir) {
            let owned = path.clone();
            let read = tokio::task::spawn_blocking(move || archive::read(&owned)).await;
            match read {
                Ok(Ok(a)) => match importer.import(&a, Some(&path)).await {
                    Ok(names) => {
                        tracing::info!(archive = %path.display(), images = ?names, "imported");
                        imported.extend(names);
                    }
                    Err(e) => {
                        tracing::warn!(archive = %path.display(), error = %e, "import failed")
                    }
                },
                Ok(Err(e)) => tracing::warn!(error = %e, "not imported"),
                Err(e) => tracing::warn!(archive = %path.display(), error = %e, "not imported"),
            }
        }
        Ok(imported)
    }
    .await;
    importer.close().await;
    result
}
