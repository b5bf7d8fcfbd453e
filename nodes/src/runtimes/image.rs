//! The node's side of image functions: the image bootstrap installed for sandboxes whose root
//! is an image's tree.
//!
//! An image brings its own `/usr` (or none), so the bootstrap ([`super::imageboot`], the
//! `fnmesh-imageboot` binary) cannot rely on anything in it, not even a C library. The node
//! copies the binary, the host libraries it links (read from `ldd`) and the host's dynamic
//! loader into one directory, mounted read-only at [`super::RUNTIME_DIR`], and starts the
//! bootstrap through that loader with `--library-path`, so the image's own libraries are never
//! consulted and the processes the bootstrap starts (the image's) see none of ours.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnmesh_core::registry::RegistryHost;
use fnmesh_core::{Function, ImageMode, Namespace};
use fnmesh_image::cache::{ImageCache, Lease};
use fnmesh_image::layout::Layout;
use fnmesh_image::process::{image_process, ImageProcess};
use fnmesh_image::registry::{Credentials, ImageRef};
use fnmesh_image::Digest;

use super::imageboot::Mode;
use super::RUNTIME_DIR;

/// What a node needs to run image functions: its image cache and the bootstrap program.
#[derive(Clone)]
pub struct ImageSupport {
    /// Blobs and trees of the images this node runs.
    pub cache: Arc<ImageCache>,
    /// The bootstrap: `fnmesh-imageboot`, or `fnmesh` itself with `args` `__imageboot`.
    pub program: PathBuf,
    /// Arguments before the mode's.
    pub args: Vec<String>,
    /// The registry credentials this node was given, by namespace and host.
    pub credentials: Arc<CredentialBook>,
}

/// The registry credentials a node knows, by namespace and registry host: what its pulls for
/// that namespace's functions use. Kept from the last word on each — an invocation of an image
/// function (which carries its namespace's credential for the image's registry, or none) or a
/// catalog entry (pre-pulling) — and never used across namespaces. Memory only.
#[derive(Default)]
pub struct CredentialBook {
    known: Mutex<HashMap<(Namespace, RegistryHost), Credentials>>,
}

/// Credentials a book keeps at most (emptied when full; the next invocations refill it).
const MAX_CREDENTIALS: usize = 4096;

impl CredentialBook {
    /// Records `namespace`'s credential for `host` (`None`: it has none).
    pub fn set(
        &self,
        namespace: &Namespace,
        host: &RegistryHost,
        credentials: Option<Credentials>,
    ) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.clone(), host.clone());
        match credentials {
            Some(c) => {
                if known.len() >= MAX_CREDENTIALS && !known.contains_key(&key) {
                    known.clear();
                }
                known.insert(key, c);
            }
            None => {
                known.remove(&key);
            }
        }
    }

    /// `namespace`'s credential for `host`, if known.
    pub fn get(&self, namespace: &Namespace, host: &RegistryHost) -> Option<Credentials> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&(namespace.clone(), host.clone())).cloned()
    }
}

/// The registry host of `function`'s image, when it is pulled from a registry.
pub fn registry_of(function: &Function) -> Option<(ImageRef, RegistryHost)> {
    let reference: ImageRef = function
        .image
        .as_ref()?
        .reference
        .as_deref()?
        .parse()
        .ok()?;
    let host = RegistryHost::parse(reference.registry()).ok()?;
    Some((reference, host))
}

impl std::fmt::Debug for ImageSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSupport")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cache_bytes", &self.cache.bytes())
            .finish()
    }
}

/// An image function's sandbox root, ready: the tree, the process the image describes, the
/// lease that keeps the tree from eviction while the sandbox lives, and what it took.
#[derive(Debug)]
pub struct PreparedImage {
    pub tree: PathBuf,
    pub process: ImageProcess,
    pub lease: Lease,
    pub pull: Duration,
    pub unpack: Duration,
}

/// Pulls (or finds) the image of `function` and reads its process. A registry image is pulled
/// by its pinned digest, with the namespace's credential for its registry if the book has one;
/// an uploaded one is read from the function's code at `code_dir` (an OCI image layout).
pub async fn prepare(
    support: &ImageSupport,
    function: &Function,
    code_dir: &Path,
) -> Result<PreparedImage, String> {
    let spec = function
        .image
        .as_ref()
        .ok_or("the function is of runtime image but names no image")?;
    let digest: Digest = spec
        .digest
        .parse()
        .map_err(|e| format!("the function's image digest: {e}"))?;
    let (prepared, lease) = match &spec.reference {
        Some(reference) => {
            let reference: ImageRef = reference
                .parse()
                .map_err(|e| format!("the function's image reference: {e}"))?;
            let credentials = RegistryHost::parse(reference.registry())
                .ok()
                .and_then(|host| support.credentials.get(&function.namespace, &host));
            support
                .cache
                .prepare(&reference, credentials.as_ref())
                .await
        }
        None => {
            let layout = Layout::open(code_dir).map_err(|e| format!("the uploaded image: {e}"))?;
            support.cache.prepare_from(&layout, &digest).await
        }
    }
    .map_err(|e| format!("preparing image {}: {e}", spec.digest))?;
    let tree = prepared.tree.clone();
    let config = prepared.image.config.clone();
    let environment = function.config.environment.clone();
    let process = tokio::task::spawn_blocking(move || image_process(&config, &tree, &environment))
        .await
        .map_err(|e| format!("reading the image's process: {e}"))?
        .map_err(|e| format!("the image's process: {e}"))?;
    Ok(PreparedImage {
        tree: prepared.tree,
        process,
        lease,
        pull: prepared.pull,
        unpack: prepared.unpack,
    })
}

/// The bootstrap's mode for `function`, running `process`.
pub fn mode_of(function: &Function, process: &ImageProcess) -> Mode {
    let (cwd, argv) = (process.cwd.clone(), process.argv.clone());
    match function.image.as_ref() {
        Some(spec) if spec.mode == ImageMode::Http => Mode::Http {
            cwd,
            port: spec.port(),
            argv,
        },
        _ => Mode::Exec { cwd, argv },
    }
}

/// The sandbox environment of an image function: the image's `Env` under the function's
/// variables (already merged in `process`), then `FUNCTION_NAME`, `FUNCTION_VERSION`,
/// `FUNCTION_MEMORY_MB` and `HOME=/tmp` when the image sets no `HOME`; never `FNMESH_*`.
pub fn image_env(function: &Function, process: &ImageProcess) -> Vec<String> {
    let mut env: std::collections::BTreeMap<String, String> = process
        .env
        .iter()
        .filter_map(|entry| entry.split_once('='))
        .filter(|(key, value)| {
            !key.is_empty()
                && !key.to_ascii_uppercase().starts_with("FNMESH_")
                && !key.starts_with("FUNCTION_")
                && !value.contains('\0')
        })
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    env.entry("HOME".to_owned())
        .or_insert_with(|| "/tmp".to_owned());
    env.insert(
        "FUNCTION_NAME".to_owned(),
        function.name.as_str().to_owned(),
    );
    env.insert("FUNCTION_VERSION".to_owned(), function.version.to_string());
    env.insert(
        "FUNCTION_MEMORY_MB".to_owned(),
        function.config.memory_mb.to_string(),
    );
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// File name of the bootstrap in its directory.
const BOOT: &str = "fnmesh-imageboot";

/// The installed image bootstrap.
#[derive(Debug, Clone)]
pub struct ImageBootstrap {
    dir: PathBuf,
    loader: String,
    /// Arguments before the mode's (`__imageboot` when the program is `fnmesh` itself).
    args: Vec<String>,
}

impl ImageBootstrap {
    /// Installs `program` (the `fnmesh-imageboot` binary, or `fnmesh` started with `args`
    /// `__imageboot`), the host libraries it links and the dynamic loader into `dir`
    /// (replacing what an earlier install left).
    pub fn install(dir: &Path, program: &Path, args: &[String]) -> io::Result<Self> {
        let output = Command::new("ldd").arg(program).output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "ldd {}: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let (libraries, loader) = parse_ldd(&String::from_utf8_lossy(&output.stdout))?;
        let lib = dir.join("lib");
        fs::create_dir_all(&lib)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o755))?;
        for (name, path) in libraries.iter().chain(std::iter::once(&loader)) {
            copy_into(path, &lib.join(name))?;
        }
        copy_into(program, &dir.join(BOOT))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            loader: loader.0,
            args: args.to_vec(),
        })
    }

    /// The directory to mount at [`RUNTIME_DIR`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sandbox process's argv for `mode`.
    pub fn argv(&self, mode: &Mode) -> Vec<String> {
        let mut argv = vec![
            format!("{RUNTIME_DIR}/lib/{}", self.loader),
            "--library-path".to_owned(),
            format!("{RUNTIME_DIR}/lib"),
            format!("{RUNTIME_DIR}/{BOOT}"),
        ];
        argv.extend(self.args.iter().cloned());
        argv.extend(mode.to_args());
        argv
    }
}

/// Copies `from` (following symlinks) to `to` through a temporary sibling, mode 0755.
fn copy_into(from: &Path, to: &Path) -> io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    fs::copy(from, &tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, to)
}

type Library = (String, PathBuf);

/// The libraries (`soname`, host path) and the loader (file name, host path) `ldd` lists.
fn parse_ldd(text: &str) -> io::Result<(Vec<Library>, Library)> {
    let mut libraries = Vec::new();
    let mut loader = None;
    for line in text.lines().map(str::trim) {
        if let Some((name, rest)) = line.split_once("=>") {
            let path = rest.split_whitespace().next().unwrap_or("");
            if path.starts_with('/') {
                libraries.push((name.trim().to_owned(), PathBuf::from(path)));
            } else if !name.contains("vdso") {
                return Err(io::Error::other(format!("ldd: {line}")));
            }
        } else if line.starts_with('/') {
            let path = PathBuf::from(line.split_whitespace().next().unwrap_or(""));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            loader = Some((name, path));
        }
    }
    let loader = loader.ok_or_else(|| io::Error::other("ldd named no dynamic loader"))?;
    Ok((libraries, loader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_read() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let (libraries, loader) = parse_ldd(text).unwrap();
        assert_eq!(
            libraries,
            vec![
                (
                    "libgcc_s.so.1".to_owned(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1")
                ),
                (
                    "libc.so.6".to_owned(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
                ),
            ]
        );
        assert_eq!(
            loader,
            (
                "ld-linux-x86-64.so.2".to_owned(),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            )
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }
}
