//! `sidestream-wasm-image`: flags → the OCI archive; prints the manifest digest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sidestream_wasm_image::{build, ImageError, ImageReference};

/// Exit code for bad flags or input (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// Packs the sidestream Wasm filter as an OCI image in Istio's Wasm image
/// format (compat variant: one tar+gzip layer holding plugin.wasm) and writes
/// it as an OCI archive. Prints the manifest digest (sha256:<hex>) on stdout:
/// Istio checks a WasmPlugin's sha256 against it for an oci:// URL.
#[derive(Debug, Parser)]
#[command(name = "sidestream-wasm-image", version)]
struct Cli {
    /// The Wasm module (`make filter` builds
    /// target/wasm32-wasip1/wasm-release/sidestream_filter.wasm).
    #[arg(long)]
    module: PathBuf,
    /// Where to write the OCI archive (an OCI image layout in one tar).
    #[arg(long)]
    out: PathBuf,
    /// Where the image will be pushed, registry/repository:tag. Its tag names
    /// the image inside the archive; none of it is in the manifest digest.
    #[arg(long)]
    image: String,
}

enum Failure {
    Usage(anyhow::Error),
    Io(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(error)) => {
            eprintln!("sidestream-wasm-image: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Io(error)) => {
            eprintln!("sidestream-wasm-image: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let reference = ImageReference::parse(&cli.image)
        .map_err(|e| Failure::Usage(anyhow::Error::new(e).context("--image")))?;
    let module = std::fs::read(&cli.module)
        .with_context(|| {
            format!(
                "reading the module {} (build it with `make filter`)",
                cli.module.display()
            )
        })
        .map_err(Failure::Usage)?;
    let image = build(&module, &reference.tag).map_err(|e| match e {
        ImageError::NotWasm { .. } => {
            Failure::Usage(anyhow::Error::new(e).context(cli.module.display().to_string()))
        }
        other => Failure::Io(other.into()),
    })?;
    write_atomically(&cli.out, &image.archive)
        .with_context(|| format!("writing {}", cli.out.display()))
        .map_err(Failure::Io)?;
    println!("{}", image.manifest_digest);
    eprintln!(
        "sidestream-wasm-image: wrote {} ({} bytes): {reference}, manifest {}, layer {} \
         (plugin.wasm, {} bytes); push it with: skopeo copy oci-archive:{} docker://{reference}",
        cli.out.display(),
        image.archive.len(),
        image.manifest_digest,
        image.layer_digest,
        module.len(),
        cli.out.display(),
    );
    Ok(())
}

/// Writes beside `path`, then renames: a reader never sees half an archive.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}
