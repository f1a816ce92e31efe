//! The CNI plugin's network configuration, which the runtime passes on stdin: any bytes into
//! `NetConf::parse`. A panic is a bug, and so is a config it accepts whose accessors then
//! disagree with what it validated (an MTU out of range, a version it cannot compare).

#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack_cni::config::{parse_version, NetConf};

fuzz_target!(|data: &[u8]| {
    let Ok(conf) = NetConf::parse(data) else {
        return;
    };
    assert!((576..=65535).contains(&conf.mtu()), "mtu {}", conf.mtu());
    assert!(
        parse_version(&conf.cni_version).is_some(),
        "accepted version {:?} does not parse",
        conf.cni_version
    );
    assert!(conf.version_at_least((0, 4, 0)));
    let _ = conf.link_mode();
    let _ = conf.status_wait();
    let _ = conf.socket();
    if let Some(valid) = conf.gc_valid_attachments() {
        assert!(
            valid.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
    }
});
