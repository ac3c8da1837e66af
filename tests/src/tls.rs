//! Test certificates made with the `openssl` command: a CA, a server
//! certificate for 127.0.0.1 and localhost, and a client certificate, for the
//! daemons' `--tls-cert`, `--tls-key` and `--client-ca`.

use std::path::Path;
use std::process::Command;

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Writes `ca.pem`, `server.pem` + `server.key` (for 127.0.0.1 and
/// localhost) and `client.pem` + `client.key` into `dir`, signed by the CA.
pub fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subject = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sidestream-test-ca",
    ];
    openssl(dir, &[&["req", "-x509"][..], &key, &subject].concat())?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for name in ["server", "client"] {
        let (key_file, csr, pem, ext, cn) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
            format!("/CN={name}"),
        );
        openssl(
            dir,
            &[
                &["req"][..],
                &key,
                &["-keyout", &key_file, "-out", &csr, "-subj", &cn],
            ]
            .concat(),
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}
