//! `fnmesh bench image`: image functions against their baselines, in one run.
//!
//! - **Cold start with the image cached**: an `exec` image (busybox, a shell hello) started
//!   cold through fnmesh's executor, interleaved with cold starts of the python3 runtime's
//!   hello (the target: ≤ 1.1× python3's cold start). A new function id per round makes
//!   every invocation a cold start; the image itself is pulled and unpacked once, before.
//! - **First pull**: a busybox image with an incompressible file of `--image-mb` MiB, pushed to
//!   Debian's `docker-registry` on a free loopback port; each round pulls it into an empty
//!   image cache (`ImageCache::prepare`: every blob checked, then unpacked) and, interleaved,
//!   copies it with `skopeo copy` into an empty OCI layout (download only; target: fnmesh's
//!   pull ≤ 1.2× skopeo's copy; the unpack is reported beside it).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fnmesh_core::{
    Checksum, CodeInfo, Function, FunctionConfig, FunctionId, FunctionName, ImageMode, ImageSpec,
    InvocationStatus, Namespace, Runtime,
};
use fnmesh_image::build::{self, Entry};
use fnmesh_image::cache::ImageCache;
use fnmesh_image::registry::{ImageRef, Registries};
use fnmesh_nodes::runtimes::image::ImageSupport;
use serde::{Deserialize, Serialize};

use super::sandbox::{
    bench_executor_with, bench_function, job, ms, scratch_dir, Series, Stats, HANDLER,
};
use crate::args::ImageBenchArgs;

const HELLO: &str = "#!/bin/sh\ncat >/dev/null\necho '{\"hello\":\"world\"}'\n";
const APPLETS: &[&str] = &["sh", "cat", "echo"];

/// Everything `fnmesh bench image` measured; `--json-out` writes this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageFigures {
    /// Cold start of the image function, request → result (ms).
    pub image_cold_ms: Series,
    /// Cold start of the python3 hello, request → result (ms).
    pub python_cold_ms: Series,
    /// image p50 / python3 p50; target ≤ 1.1.
    pub ratio_cold_image_vs_python: f64,
    /// Size of the pulled image's layer (bytes, compressed).
    pub pulled_bytes: u64,
    /// fnmesh's first pull into an empty cache, download and checks (ms).
    pub pull_ms: Series,
    /// Then unpacking it into a tree (ms).
    pub unpack_ms: Series,
    /// `skopeo copy` of the same image into an empty OCI layout (ms).
    pub skopeo_copy_ms: Series,
    /// pull p50 / skopeo p50; target ≤ 1.2.
    pub ratio_pull_vs_skopeo: f64,
}

/// Runs the benchmark, prints its table and writes `--json-out`.
pub async fn run(args: ImageBenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark creates sandboxes and must run as root");
    }
    let scratch = scratch_dir(args.work_dir.as_deref(), "fnmesh-bench-image-")?;
    let work = scratch.path();
    println!(
        "fnmesh bench image: {} cold rounds (image vs python3, interleaved), {} first pulls of a \
         {} MiB image (vs skopeo copy)",
        args.cold_rounds, args.pull_rounds, args.image_mb
    );
    let (image_cold, python_cold) = cold_starts(work, args.cold_rounds).await?;
    let pulls = first_pulls(work, args.pull_rounds, args.image_mb).await?;
    let figures = ImageFigures {
        ratio_cold_image_vs_python: image_cold.median() / python_cold.median(),
        image_cold_ms: Series::of(&image_cold),
        python_cold_ms: Series::of(&python_cold),
        pulled_bytes: pulls.bytes,
        ratio_pull_vs_skopeo: pulls.pull.median() / pulls.skopeo.median(),
        pull_ms: Series::of(&pulls.pull),
        unpack_ms: Series::of(&pulls.unpack),
        skopeo_copy_ms: Series::of(&pulls.skopeo),
    };
    print!("{}", table(&figures));
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn image_support(cache_dir: &Path, registries: Registries) -> Result<ImageSupport> {
    let cache = ImageCache::open(
        cache_dir,
        registries,
        fnmesh_image::Limits::default(),
        u64::MAX,
    )?;
    Ok(ImageSupport {
        cache: Arc::new(cache),
        program: std::env::current_exe().context("locating the fnmesh binary")?,
        args: vec!["__imageboot".to_owned()],
        credentials: Default::default(),
    })
}

/// An exec image function whose image is the layout at `layout` (read as its code).
fn image_function(digest: &str) -> Function {
    let now = chrono::Utc::now();
    Function {
        id: FunctionId::new(),
        namespace: Namespace::default_ns(),
        name: FunctionName::parse("bench-image").unwrap_or_else(|_| unreachable!()),
        version: 1,
        runtime: Runtime::Image,
        handler: String::new(),
        code: CodeInfo {
            checksum: Checksum::of(digest.as_bytes()),
            size: 0,
            source_type: "image".into(),
        },
        image: Some(ImageSpec {
            reference: None,
            requested: None,
            digest: digest.to_owned(),
            mode: ImageMode::Exec,
            port: None,
        }),
        config: FunctionConfig::default(),
        metadata: Default::default(),
        created_at: now,
        updated_at: now,
    }
}

async fn cold_starts(work: &Path, rounds: usize) -> Result<(Stats, Stats)> {
    let layout = work.join("hello-layout");
    let mut entries = build::busybox(APPLETS)?;
    entries.push(Entry::file("srv/hello", 0o755, HELLO));
    let digest = build::write_layout(
        &layout,
        "hello",
        &entries,
        serde_json::json!({"Entrypoint": ["/srv/hello"], "Env": ["PATH=/bin"]}),
    )?
    .to_string();
    let python_code = work.join("python-code");
    std::fs::create_dir_all(&python_code)?;
    std::fs::write(python_code.join("main.py"), HANDLER)?;
    let support = image_support(&work.join("images"), Registries::new(Vec::new()))?;
    let executor = bench_executor_with(&work.join("cold"), rounds * 2 + 8, Some(support)).await?;
    // The image is pulled (here: read from its layout) and unpacked once.
    let first = executor
        .execute(job(&image_function(&digest), &layout))
        .await;
    if first.status != InvocationStatus::Succeeded {
        bail!("the image hello failed: {:?}", first.error);
    }
    let (mut image, mut python) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (function, code, samples) in [
            (image_function(&digest), &layout, &mut image),
            (bench_function(), &python_code, &mut python),
        ] {
            let started = Instant::now();
            let out = executor.execute(job(&function, code)).await;
            let took = ms(started.elapsed());
            if out.status != InvocationStatus::Succeeded || !out.cold_start {
                bail!(
                    "a cold start of {} failed: {:?}",
                    function.runtime.as_str(),
                    out.error
                );
            }
            samples.push(took);
        }
    }
    executor.shutdown(Duration::from_secs(5)).await;
    Ok((Stats::new(image), Stats::new(python)))
}

struct Pulls {
    bytes: u64,
    pull: Stats,
    unpack: Stats,
    skopeo: Stats,
}

async fn first_pulls(work: &Path, rounds: usize, image_mb: usize) -> Result<Pulls> {
    for (bin, package) in [("docker-registry", "docker-registry"), ("skopeo", "skopeo")] {
        if which(bin).is_none() {
            bail!("`{bin}` is not on PATH: install it with `apt-get install {package}`");
        }
    }
    let registry = Registry::start(&work.join("registry"))?;
    let layout = work.join("big-layout");
    let mut entries = build::busybox(APPLETS)?;
    let mut filler = vec![0u8; image_mb << 20];
    // Incompressible, like the layers of real images' binaries.
    let mut state = rand::random::<u64>() | 1;
    for chunk in filler.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    entries.push(Entry::file("srv/filler", 0o644, filler));
    let digest = build::write_layout(
        &layout,
        "1",
        &entries,
        serde_json::json!({"Cmd": ["/bin/sh"]}),
    )?;
    skopeo(&[
        "copy".into(),
        "--quiet".into(),
        "--insecure-policy".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:1", layout.display()),
        format!("docker://{}/bench/big:1", registry.host),
    ])?;
    let bytes = std::fs::read_dir(layout.join("blobs/sha256"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    let reference: ImageRef = format!("{}/bench/big@{digest}", registry.host).parse()?;
    let (mut pull, mut unpack, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let cache = Arc::new(ImageCache::open(
            &work.join(format!("pull-{round}")),
            Registries::new(vec![registry.host.clone()]),
            fnmesh_image::Limits::default(),
            u64::MAX,
        )?);
        let (prepared, lease) = cache.prepare(&reference, None).await?;
        pull.push(ms(prepared.pull));
        unpack.push(ms(prepared.unpack));
        drop(lease);
        let target = work.join(format!("skopeo-{round}"));
        let started = Instant::now();
        skopeo(&[
            "copy".into(),
            "--quiet".into(),
            "--insecure-policy".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{}/bench/big:1", registry.host),
            format!("oci:{}:1", target.display()),
        ])?;
        copy.push(ms(started.elapsed()));
        let _ = std::fs::remove_dir_all(&target);
        let _ = std::fs::remove_dir_all(work.join(format!("pull-{round}")));
    }
    Ok(Pulls {
        bytes,
        pull: Stats::new(pull),
        unpack: Stats::new(unpack),
        skopeo: Stats::new(copy),
    })
}

fn skopeo(args: &[String]) -> Result<()> {
    let out = Command::new("skopeo").args(args).output()?;
    if !out.status.success() {
        bail!(
            "skopeo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// Debian's `docker-registry` on a free loopback port, storage under `dir`, killed on drop.
struct Registry {
    child: Child,
    host: String,
}

impl Registry {
    fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {host}\n",
                dir.join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let registry = Self { child, host };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&registry.host).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} in 10 s",
                    registry.host
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The human-readable table of `fnmesh bench image`.
pub fn table(f: &ImageFigures) -> String {
    let row = |label: &str, s: &Series| {
        format!(
            "{label:<44} {:>3} {:>7.1} {:>7.1} {:>7.1} {:>7.1}\n",
            s.n, s.min, s.p50, s.p90, s.max
        )
    };
    let mut out = String::from(
        "\ncold start, image cached (ms)                  n     min     p50     p90     max\n",
    );
    out += &row("image function (exec, busybox sh)", &f.image_cold_ms);
    out += &row("python3 runtime (hello)", &f.python_cold_ms);
    out += &format!(
        "ratio image / python3 cold (p50): {:.2}x   (target ≤ 1.1x)\n",
        f.ratio_cold_image_vs_python
    );
    out += &format!(
        "\nfirst pull of a {:.1} MiB layer (ms)             n     min     p50     p90     max\n",
        f.pulled_bytes as f64 / f64::from(1 << 20)
    );
    out += &row("fnmesh pull (download + digest checks)", &f.pull_ms);
    out += &row("  then unpack into the cache's tree", &f.unpack_ms);
    out += &row("skopeo copy to an OCI layout", &f.skopeo_copy_ms);
    out += &format!(
        "ratio fnmesh pull / skopeo copy (p50): {:.2}x   (target ≤ 1.2x)\n",
        f.ratio_pull_vs_skopeo
    );
    out
}
