//! The node's side of image functions: the image bootstrap installed for sandboxes whose root
//! is an image's tree.
//!
//! An image brings its own `/usr` (or none), so the bootstrap ([`super::imageboot`], the
//! `fnmesh-imageboot` binary) cannot rely on anything in it, not even a C library. The node
//! copies the binary, the host libraries it links (read from `ldd`) and the host's dynamic
//! loader into one directory, mounted read-only at [`super::RUNTIME_DIR`], and starts the
//! bootstrap through that loader with `--library-path`, so the image's own libraries are never
//! consulted and the processes the bootstrap starts (the image's) see none of ours.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::imageboot::Mode;
use super::RUNTIME_DIR;

/// File name of the bootstrap in its directory.
const BOOT: &str = "fnmesh-imageboot";

/// The installed image bootstrap.
#[derive(Debug, Clone)]
pub struct ImageBootstrap {
    dir: PathBuf,
    loader: String,
}

impl ImageBootstrap {
    /// Installs `program` (the `fnmesh-imageboot` binary), the host libraries it links and the
    /// dynamic loader into `dir` (replacing what an earlier install left).
    pub fn install(dir: &Path, program: &Path) -> io::Result<Self> {
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
        argv.extend(mode.to_args());
        argv
    }
}

/// Copies `from` (following symlinks) to `to` through a temporary sibling, mode 0755.
fn copy_into(from: &Path, to: &Path) -> io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
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
