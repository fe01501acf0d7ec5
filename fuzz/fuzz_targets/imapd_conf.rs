#![no_main]
//! Config::parse must never panic; includes are served from memory (never the disk).
use cyrkit::spool::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // An @include of any name reads the input again, so include handling is exercised
    // (loops must be refused, not recursed into).
    let mut loader = |_: &Path| Ok(data.to_vec());
    if let Ok(config) =
        Config::parse_with_loader(data, Path::new("/f/imapd.conf"), Path::new("/f"), &mut loader)
    {
        // Every typed accessor must work on anything the parser accepted.
        let _ = config.partitions();
        let _ = (config.hashimapspool(), config.virtdomains(), config.metapartition_files());
        let _ = (config.mboxlist_db(), config.quota_db_path(), config.mboxname_lockpath());
        let _ = (config.maxheaderlines(), config.uidl_format(), config.admins());
        let _ = cyrkit::spool::paths::Layout::from_config(&config);
        let _ = config.with_service("lmtp");
    }
});
