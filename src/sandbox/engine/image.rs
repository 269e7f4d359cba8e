//! Images: the runtime image's id, pulled first when absent and the policy allows it (with the
//! registry login when one is configured).

use super::{docker, is_not_found, Engine, EngineError};
use std::time::{Duration, Instant};

use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use crate::sandbox::settings::{PullPolicy, RegistryAuth};

impl Engine {
    /// The image's id (`sha256:…`), pulling it first when absent and allowed (with `auth` when
    /// the registry needs a login).
    pub async fn ensure_image(
        &self,
        image: &str,
        pull: PullPolicy,
        auth: Option<&RegistryAuth>,
    ) -> Result<String, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(found) => return Ok(found.id.unwrap_or_else(|| image.to_owned())),
            Err(e) if !is_not_found(&e) => return Err(docker("inspect an image")(e)),
            Err(_) => {}
        }
        if pull == PullPolicy::Never {
            return Err(EngineError::ImageMissing {
                image: image.to_owned(),
            });
        }
        tracing::info!(%image, "image not on this host; pulling it");
        let (from_image, tag) = split_tag(image);
        let options = CreateImageOptions {
            from_image: Some(from_image.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.expose().to_owned()),
            serveraddress: Some(registry_host(image).to_owned()),
            ..Default::default()
        });
        let mut progress = self.long.create_image(Some(options), None, credentials);
        let mut last_report = Instant::now();
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| EngineError::PullFailed {
                image: image.to_owned(),
                detail: e.to_string(),
            })?;
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                tracing::info!(%image, status = info.status.as_deref().unwrap_or(""), layer = info.id.as_deref().unwrap_or(""), current = ?info.progress_detail.as_ref().and_then(|p| p.current), total = ?info.progress_detail.as_ref().and_then(|p| p.total), "pulling");
            }
        }
        let found =
            self.docker
                .inspect_image(image)
                .await
                .map_err(|e| EngineError::PullFailed {
                    image: image.to_owned(),
                    detail: e.to_string(),
                })?;
        tracing::info!(%image, "image pulled");
        Ok(found.id.unwrap_or_else(|| image.to_owned()))
    }
}

/// `repo[:tag]` (a registry port is not a tag) → (repo, tag or `latest`).
/// The registry an image reference names: its first path component when that looks like a
/// host (has a `.` or `:`, or is `localhost`), else Docker Hub.
fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

fn split_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_split_without_mistaking_a_registry_port() {
        assert_eq!(
            split_tag("node:20-bookworm-slim"),
            ("node", "20-bookworm-slim")
        );
        assert_eq!(split_tag("node"), ("node", "latest"));
        assert_eq!(
            split_tag("registry:5000/team/node"),
            ("registry:5000/team/node", "latest")
        );
        assert_eq!(
            split_tag("registry:5000/team/node:20"),
            ("registry:5000/team/node", "20")
        );
    }

    #[test]
    fn the_registry_is_the_first_component_when_it_looks_like_a_host() {
        assert_eq!(registry_host("node:20"), "docker.io");
        assert_eq!(registry_host("library/node:20"), "docker.io");
        assert_eq!(registry_host("ghcr.io/acme/node:20"), "ghcr.io");
        assert_eq!(registry_host("127.0.0.1:5000/node:20"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/node"), "localhost");
    }
}
