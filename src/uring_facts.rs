//! What this kernel's io_uring offers, for `ringcast --probe-uring`: whether a ring can be set up
//! (and the error if not), `kernel.io_uring_disabled`, the IORING_FEAT_* flags of a fresh ring and
//! the opcodes IORING_REGISTER_PROBE reports, and which ring setup flag sets the kernel accepts
//! (what `--uring-flags auto` would choose). Printed as JSON so benchmark harnesses (e.g. the
//! cross-kernel matrix) can store it next to their results.

use crate::net::kernel_release;
use crate::ring_flags::{Choice, Flags};

/// IORING_OP_* names by opcode number (include/uapi/linux/io_uring.h).
const OPCODES: [&str; 62] = [
    "NOP",
    "READV",
    "WRITEV",
    "FSYNC",
    "READ_FIXED",
    "WRITE_FIXED",
    "POLL_ADD",
    "POLL_REMOVE",
    "SYNC_FILE_RANGE",
    "SENDMSG",
    "RECVMSG",
    "TIMEOUT",
    "TIMEOUT_REMOVE",
    "ACCEPT",
    "ASYNC_CANCEL",
    "LINK_TIMEOUT",
    "CONNECT",
    "FALLOCATE",
    "OPENAT",
    "CLOSE",
    "FILES_UPDATE",
    "STATX",
    "READ",
    "WRITE",
    "FADVISE",
    "MADVISE",
    "SEND",
    "RECV",
    "OPENAT2",
    "EPOLL_CTL",
    "SPLICE",
    "PROVIDE_BUFFERS",
    "REMOVE_BUFFERS",
    "TEE",
    "SHUTDOWN",
    "RENAMEAT",
    "UNLINKAT",
    "MKDIRAT",
    "SYMLINKAT",
    "LINKAT",
    "MSG_RING",
    "FSETXATTR",
    "SETXATTR",
    "FGETXATTR",
    "GETXATTR",
    "SOCKET",
    "URING_CMD",
    "SEND_ZC",
    "SENDMSG_ZC",
    "READ_MULTISHOT",
    "WAITID",
    "FUTEX_WAIT",
    "FUTEX_WAKE",
    "FUTEX_WAITV",
    "FIXED_FD_INSTALL",
    "FTRUNCATE",
    "BIND",
    "LISTEN",
    "RECV_ZC",
    "EPOLL_WAIT",
    "READV_FIXED",
    "WRITEV_FIXED",
];

/// The facts as a JSON value.
pub fn probe() -> serde_json::Value {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    let ring = match io_uring::IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            return serde_json::json!({
                "kernel": kernel_release(),
                "io_uring_disabled": disabled,
                "setup": "failed",
                "setup_error": e.to_string(),
                "monoio_usable": false,
            })
        }
    };
    let p = ring.params();
    let features = serde_json::json!({
        "SINGLE_MMAP": p.is_feature_single_mmap(),
        "NODROP": p.is_feature_nodrop(),
        "SUBMIT_STABLE": p.is_feature_submit_stable(),
        "RW_CUR_POS": p.is_feature_rw_cur_pos(),
        "CUR_PERSONALITY": p.is_feature_cur_personality(),
        "FAST_POLL": p.is_feature_fast_poll(),
        "POLL_32BITS": p.is_feature_poll_32bits(),
        "SQPOLL_NONFIXED": p.is_feature_sqpoll_nonfixed(),
        "EXT_ARG": p.is_feature_ext_arg(),
        "NATIVE_WORKERS": p.is_feature_native_workers(),
        "RSRC_TAGS": p.is_feature_resource_tagging(),
        "CQE_SKIP": p.is_feature_skip_cqe_on_success(),
        "LINKED_FILE": p.is_feature_linked_file(),
    });
    let mut probe = io_uring::Probe::new();
    let (opcodes, probe_error) = match ring.submitter().register_probe(&mut probe) {
        Ok(()) => {
            let ops: Vec<String> = (0..=255u8)
                .filter(|&op| probe.is_supported(op))
                .map(|op| match OPCODES.get(op as usize) {
                    Some(name) => (*name).to_owned(),
                    None => format!("OP_{op}"),
                })
                .collect();
            (ops, None)
        }
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    // The setup flag sets `--uring-flags auto` tries, and what `auto` would take.
    let mut setup_flags = serde_json::Map::new();
    let mut auto = None;
    for &f in Flags::chain(Choice::Auto) {
        let r = f.accepted();
        if r.is_ok() && auto.is_none() {
            auto = Some(f.to_string());
        }
        setup_flags.insert(
            f.to_string(),
            match r {
                Ok(()) => serde_json::json!("ok"),
                Err(e) => serde_json::json!(e.to_string()),
            },
        );
    }
    serde_json::json!({
        "kernel": kernel_release(),
        "io_uring_disabled": disabled,
        "setup": "ok",
        "setup_flags": setup_flags,
        "uring_flags_auto": auto,
        "features": features,
        "opcodes": opcodes,
        "probe_error": probe_error,
        "monoio_usable": monoio::utils::detect_uring(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_reports_setup_and_opcodes() {
        let v = super::probe();
        assert!(v["kernel"].is_string());
        if v["setup"] == "ok" {
            let ops = v["opcodes"].as_array().unwrap();
            // every kernel with a working ring has NOP
            assert!(ops.iter().any(|o| o == "NOP"), "{v}");
        } else {
            assert!(v["setup_error"].is_string(), "{v}");
        }
    }
}
