//! Smoke test of the cross-kernel harness (bench/kernels.sh, issue 5), so that it does not rot:
//! one Debian kernel booted under QEMU, ringcast with the io_uring driver and a 50-stream loadgen
//! inside, and a result file back with the guest's io_uring facts.
//!
//! It runs only where `qemu-system-x86_64` is installed (CI installs it with busybox-static and
//! cpio); elsewhere it prints why and passes. `RINGCAST_KERNELS_SMOKE=0` skips it too, for a
//! machine that must stay quiet (a TCG guest keeps two cores busy for a while). It needs Debian's
//! archive through apt and builds static binaries in their own target dir, so the whole run is
//! bounded by a generous deadline, after which the harness's process group is killed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(1800);

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

#[test]
fn one_kernel_under_qemu_reports_io_uring_facts() {
    if std::env::var("RINGCAST_KERNELS_SMOKE").is_ok_and(|v| v == "0") {
        eprintln!("skipped: RINGCAST_KERNELS_SMOKE=0");
        return;
    }
    if !on_path("qemu-system-x86_64") {
        eprintln!("skipped: qemu-system-x86_64 not installed (apt-get install qemu-system-x86 busybox-static cpio)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let results =
        std::env::temp_dir().join(format!("ringcast-kernels-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&results);
    let log_path = results.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("bash")
        .arg(root.join("bench/kernels.sh"))
        .arg("--smoke")
        .arg("--results")
        .arg(&results)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("run bench/kernels.sh");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > DEADLINE {
            // The harness and everything it started (cargo, apt, qemu) share its process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: String = output
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let status =
        status.unwrap_or_else(|| panic!("bench/kernels.sh --smoke ran over {DEADLINE:?}:\n{tail}"));
    assert!(
        status.success(),
        "bench/kernels.sh --smoke failed ({status}):\n{tail}"
    );

    let mut files = Vec::new();
    json_files(&results, &mut files);
    assert_eq!(
        files.len(),
        1,
        "expected one result file under {}:\n{tail}",
        results.display()
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(doc["schema"], "ringcast-kernels/result");
    assert_eq!(doc["status"], "ok", "{tail}");
    assert!(
        matches!(doc["virt"].as_str(), Some("tcg" | "kvm")),
        "virt: {}",
        doc["virt"]
    );

    // The guest's io_uring facts came back, from the booted kernel, not the host's.
    let facts = &doc["uring_facts"];
    let release = doc["kernel_release"].as_str().expect("kernel_release");
    assert_eq!(facts["kernel"], release);
    assert!(
        facts["io_uring_disabled"].is_number(),
        "io_uring_disabled: {facts}"
    );
    assert_eq!(
        facts["setup"], "ok",
        "Debian's cloud kernels build io_uring in: {facts}"
    );
    assert!(
        facts["features"].as_object().is_some_and(|f| !f.is_empty()),
        "{facts}"
    );
    assert!(
        facts["opcodes"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "ACCEPT")),
        "{facts}"
    );

    // The server ran the driver asked for, and the loadgen's streams all got their events.
    assert_eq!(doc["driver_requested"], "uring");
    assert_eq!(doc["server_driver"], "io_uring", "{}", doc["server_log"]);
    let counters = &doc["result"]["counters"];
    assert_eq!(counters["opened"], 50, "{counters}");
    assert!(counters["events"].as_u64().unwrap_or(0) >= 50, "{counters}");
    assert_eq!(
        doc["result"]["runs"][0]["environment"]["kernel_release"],
        release
    );

    let _ = std::fs::remove_dir_all(&results);
    let _ = std::fs::remove_file(&log_path);
}
